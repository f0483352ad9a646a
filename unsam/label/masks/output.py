"""SA-1B annotation records of one image's masks, written at the image's full size."""

from __future__ import annotations

from unsam.label.items import MaskItem
from unsam.label.masks.ops import COMPILED

__all__ = ["to_annotations"]


def to_annotations(
    items: list[MaskItem],
    parents: list[int],
    levels: list[int],
    height: int,
    width: int,
    start_id: int = 1,
    work_hw: tuple[int, int] | None = None,
    ops=COMPILED,
) -> list[dict]:
    """SA-1B style annotation records (ids start_id.., parent_id refers to these ids).

    ``work_hw``: the resolution the crops are at, when it is not (height, width); at most
    the image's size (masks are formed at the working resolution and upscaled by nearest
    neighbour, which keeps nested masks nested).
    """
    work = (height, width) if work_hw is None else (int(work_hw[0]), int(work_hw[1]))
    if work[0] > height or work[1] > width:
        raise ValueError(f"to_annotations: work_hw {work} should be at most the image size ({height}, {width})")
    if not items:
        return []
    ids = [start_id + i for i in range(len(items))]
    strings, areas, bboxes = ops.rle(items, work, height, width)
    areas, bboxes = areas.tolist(), bboxes.tolist()
    out = []
    for i, m in enumerate(items):
        out.append(
            {
                "id": ids[i],
                "area": int(areas[i]),
                "bbox": bboxes[i],
                "segmentation": {"size": [height, width], "counts": strings[i]},
                "level": int(levels[i]),
                "parent_id": ids[parents[i]] if parents[i] >= 0 else None,
                "score": round(float(m.score), 6),
                "source": m.source,
            }
        )
    return out
