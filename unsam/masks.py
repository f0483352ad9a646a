"""Masks: de-duplication, hierarchy and RLE of one image's pseudo-masks.

Masks are kept as (box, crop) pairs, never as full-image arrays: an SA-1B
image is 3.4 Mpx and carries hundreds of masks. Pairwise work (NMS IoU,
containment) is pre-filtered with areas and boxes in numpy and computed
exactly on box intersections only; RLE is written straight from the crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class MaskItem:
    """One mask: crop [y1 - y0, x1 - x0] bool inside box (x0, y0, x1, y1), x1/y1 exclusive."""

    box: tuple[int, int, int, int]
    crop: np.ndarray
    score: float
    source: str  #: "divide" or "conquer"
    meta: dict = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    def tighten(self) -> MaskItem | None:
        """Shrink the box to the mask (None when empty)."""
        ys = np.flatnonzero(self.crop.any(1))
        xs = np.flatnonzero(self.crop.any(0))
        if ys.size == 0:
            return None
        x0, y0 = self.box[0], self.box[1]
        crop = self.crop[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
        self.box = (x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)
        self.crop = np.ascontiguousarray(crop)
        return self


def intersection(a: MaskItem, b: MaskItem) -> int:
    """|a ∩ b| in pixels, computed on the boxes' intersection only."""
    x0, y0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    x1, y1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if x1 <= x0 or y1 <= y0:
        return 0
    ca = a.crop[y0 - a.box[1] : y1 - a.box[1], x0 - a.box[0] : x1 - a.box[0]]
    cb = b.crop[y0 - b.box[1] : y1 - b.box[1], x0 - b.box[0] : x1 - b.box[0]]
    return int(np.count_nonzero(ca & cb))


def _box_inter_area(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def mask_nms(items: list[MaskItem], iou_threshold: float = 0.9) -> list[int]:
    """Greedy mask NMS over the whole image: indices kept, best score first.

    Order: score, then area (larger first), then index. IoU > threshold needs
    min(area)/max(area) > threshold and boxes overlapping by more than
    threshold * max(area), so only such pairs are compared exactly.
    """
    if not items:
        return []
    areas = np.array([m.area for m in items], np.float64)
    boxes = np.array([m.box for m in items], np.int64)
    scores = np.array([m.score for m in items], np.float64)
    order = np.lexsort((np.arange(len(items)), -areas, -scores))
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            ratio = np.minimum(areas[k], areas[i]) / np.maximum(areas[k], areas[i])
            cand = k[(ratio > iou_threshold) & (_box_inter_area(boxes[i], boxes[k]) > iou_threshold * np.maximum(areas[k], areas[i]))]
            dup = False
            for j in cand:
                inter = intersection(items[i], items[j])
                if inter / (areas[i] + areas[j] - inter) > iou_threshold:
                    dup = True
                    break
            if dup:
                continue
        kept.append(int(i))
    return kept


def build_hierarchy(items: list[MaskItem], contain: float = 0.9, clip: bool = True) -> tuple[list[int], list[int]]:
    """Parent and level of each mask; optionally clip each mask to its parent.

    The parent of a mask is the smallest strictly larger mask holding at least
    ``contain`` of its pixels; level = depth in that forest (0 = no parent).
    With ``clip`` (default) children are intersected with their parents, from
    the roots down, so the hierarchy is exactly nested.
    Returns (parents with -1 for roots, levels), indices into ``items``.
    """
    n = len(items)
    areas = np.array([m.area for m in items], np.float64)
    boxes = np.array([m.box for m in items], np.int64).reshape(n, 4)
    by_area = np.lexsort((np.arange(n), areas))  # ascending area
    rank = np.empty(n, np.int64)
    rank[by_area] = np.arange(n)
    parents = [-1] * n
    for i in range(n):
        larger = by_area[rank[i] + 1 :]
        larger = larger[areas[larger] > areas[i]]
        if larger.size == 0:
            continue
        cand = larger[_box_inter_area(boxes[i], boxes[larger]) >= contain * areas[i]]
        for j in cand:  # ascending area: the first that contains it is the smallest
            if intersection(items[i], items[j]) >= contain * areas[i]:
                parents[i] = int(j)
                break
    levels = [0] * n
    for i in by_area[::-1]:  # parents are larger, so they come first here
        p = parents[i]
        if p >= 0:
            levels[i] = levels[p] + 1
            if clip:
                _clip_to(items[i], items[p])
    return parents, levels


def _clip_to(child: MaskItem, parent: MaskItem) -> None:
    x0, y0, x1, y1 = child.box
    px0, py0 = parent.box[0], parent.box[1]
    win = np.zeros_like(child.crop)
    ix0, iy0 = max(x0, px0), max(y0, py0)
    ix1, iy1 = min(x1, parent.box[2]), min(y1, parent.box[3])
    if ix1 > ix0 and iy1 > iy0:
        win[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = parent.crop[iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0]
    child.crop = child.crop & win


def crop_to_rle(crop: np.ndarray, box: tuple[int, int, int, int], height: int, width: int) -> dict:
    """COCO compressed RLE of a mask given as a crop inside box, without a full-image array.

    Runs are counted column-major over the box's column strip only; the columns
    before and after the box add to the first and last zero runs.
    """
    x0, y0, x1, y1 = box
    bh, bw = crop.shape
    strip = np.zeros((bw, height), np.uint8)
    strip[:, y0 : y0 + bh] = crop.T
    flat = strip.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat.size and flat[0]:
        runs = np.concatenate(([0], runs))
    runs = runs.astype(np.int64)
    runs[0] += x0 * height
    trailing = (width - x1) * height
    if runs.size % 2 == 1:  # the last run is a zero run
        runs[-1] += trailing
    elif trailing:
        runs = np.concatenate((runs, [trailing]))
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def to_annotations(
    items: list[MaskItem], parents: list[int], levels: list[int], height: int, width: int, start_id: int = 1
) -> list[dict]:
    """SA-1B style annotation records (ids start_id.., parent_id refers to these ids)."""
    ids = [start_id + i for i in range(len(items))]
    out = []
    for i, m in enumerate(items):
        rle = crop_to_rle(m.crop, m.box, height, width)
        enc = dict(rle, counts=rle["counts"].encode("ascii"))
        bbox = [float(v) for v in mask_utils.toBbox(enc)]
        out.append(
            {
                "id": ids[i],
                "area": int(mask_utils.area(enc)),
                "bbox": bbox,
                "segmentation": rle,
                "level": int(levels[i]),
                "parent_id": ids[parents[i]] if parents[i] >= 0 else None,
                "score": round(float(m.score), 6),
                "source": m.source,
            }
        )
    return out
