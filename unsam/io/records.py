"""The per-image label JSON: record builders and the schema check.

Layout (ALGORITHM.md §4)::

    {"image": {"image_id": int, "file_name": str, "width": W, "height": H},
     "annotations": [{"id": int, "area": int, "bbox": [x, y, w, h],
                      "segmentation": {"size": [H, W], "counts": str},
                      "level": int, "parent_id": int | None, "score": float,
                      "source": "divide" | "conquer" | "atoms" | "partition" | "model", ...optional extras}]}
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unsam.io.rle import _rle_to_json, _to_coco_rle, mask_to_rle, rle_area, rle_bbox

__all__ = ["SOURCES", "annotation_record", "image_record", "validate_label_json"]

# atoms, partition: unsam.label.atoms (partition: a region of the partition-level ladder); model: unsam.models.predict
SOURCES: frozenset[str] = frozenset({"divide", "conquer", "atoms", "partition", "model"})

def image_record(image_id: int, file_name: str | os.PathLike[str], width: int, height: int) -> dict[str, Any]:
    """The ``image`` entry of a per-image JSON.

    ``file_name`` should be the image path relative to the input root, with
    ``/`` separators (what COCO tools join onto an image folder).
    """
    name = Path(file_name).as_posix() if not isinstance(file_name, str) else file_name.replace(os.sep, "/")
    return {"image_id": int(image_id), "file_name": name, "width": int(width), "height": int(height)}


def annotation_record(
    ann_id: int,
    segmentation: dict[str, Any] | np.ndarray | torch.Tensor,
    *,
    level: int,
    parent_id: int | None,
    score: float,
    source: str,
    area: int | None = None,
    bbox: Sequence[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One annotation of a per-image JSON, with plain Python types (JSON-ready).

    Args:
        ann_id: id, unique within the image.
        segmentation: COCO RLE dict (``size``, ``counts``) or a binary mask ``[H, W]``.
        level: granularity level (0 = coarsest; see the README's output format).
        parent_id: id of the parent mask (a partition region: the region holding it one level up;
            another mask: the smallest larger mask holding ``contain`` of it), or ``None`` for a root.
        score: confidence.
        source: ``"divide"``, ``"conquer"``, ``"atoms"`` or ``"partition"``.
        area, bbox: computed from the RLE when omitted.
        extra: optional fields (e.g. ``predicted_iou``, ``ncut``), numpy scalars
            converted to Python numbers.
    """
    if source not in SOURCES:
        raise ValueError(f"annotation_record: source should be one of {sorted(SOURCES)}, got {source!r}")
    # Normalise any RLE flavour (bytes or uncompressed list counts) to the stored form.
    rle = _rle_to_json(_to_coco_rle(segmentation)) if isinstance(segmentation, dict) else mask_to_rle(segmentation)
    rec: dict[str, Any] = {
        "id": int(ann_id),
        "area": int(rle_area(rle) if area is None else area),
        "bbox": [float(v) for v in (rle_bbox(rle) if bbox is None else bbox)],
        "segmentation": rle,
        "level": int(level),
        "parent_id": None if parent_id is None else int(parent_id),
        "score": float(score),
        "source": source,
    }
    for k, v in extra.items():
        rec[k] = v.item() if isinstance(v, (np.generic, torch.Tensor)) else v
    return rec


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_label_json(obj: Any, check_masks: bool = False) -> list[str]:
    """Problems with a per-image label JSON (empty list = valid).

    Checks the layout of the module docstring: types, ``segmentation.size ==
    [height, width]``, unique ids, ``parent_id`` naming another annotation of
    the same image, ``source`` in {divide, conquer, atoms, model}. With ``check_masks`` the
    RLEs are also decoded (via pycocotools' area/bbox) and compared with the
    stored ``area`` and ``bbox``.
    """
    if not isinstance(obj, dict):
        return [f"top level should be an object, got {type(obj).__name__}"]
    problems: list[str] = []
    img = obj.get("image")
    h = w = None
    if not isinstance(img, dict):
        problems.append("missing 'image' object")
    else:
        if not _is_int(img.get("image_id")):
            problems.append(f"image.image_id should be an int, got {img.get('image_id')!r}")
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            problems.append(f"image.file_name should be a non-empty string, got {img.get('file_name')!r}")
        for key in ("width", "height"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                problems.append(f"image.{key} should be a positive int, got {img.get(key)!r}")
        if not problems:
            h, w = img["height"], img["width"]
    anns = obj.get("annotations")
    if not isinstance(anns, list):
        problems.append("missing 'annotations' list")
        return problems
    ids: set[int] = set()
    for i, a in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            problems.append(f"{where} should be an object")
            continue
        aid = a.get("id")
        if not _is_int(aid):
            problems.append(f"{where}.id should be an int, got {aid!r}")
        elif aid in ids:
            problems.append(f"{where}.id {aid} is duplicated")
        else:
            ids.add(aid)
        if not _is_num(a.get("area")) or a["area"] < 0:
            problems.append(f"{where}.area should be a non-negative number, got {a.get('area')!r}")
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(_is_num(v) for v in bb) and bb[2] >= 0 and bb[3] >= 0):
            problems.append(f"{where}.bbox should be [x, y, w, h] with w, h >= 0, got {bb!r}")
        seg = a.get("segmentation")
        if not (isinstance(seg, dict) and isinstance(seg.get("counts"), str) and isinstance(seg.get("size"), list)):
            problems.append(f"{where}.segmentation should be compressed RLE {{size, counts: str}}")
        elif h is not None and seg["size"] != [h, w]:
            problems.append(f"{where}.segmentation.size {seg['size']} != image [height, width] [{h}, {w}]")
        elif check_masks:
            try:
                area, box = rle_area(seg), rle_bbox(seg)
            except Exception as e:  # noqa: BLE001 - any decode failure is a problem to report
                problems.append(f"{where}.segmentation does not decode ({e})")
            else:
                if _is_num(a.get("area")) and area != a["area"]:
                    problems.append(f"{where}.area {a['area']} != RLE area {area}")
                if isinstance(bb, list) and len(bb) == 4 and not np.allclose(bb, box, atol=0.5):
                    problems.append(f"{where}.bbox {bb} != RLE bbox {box}")
        if not _is_int(a.get("level")) or a["level"] < 0:
            problems.append(f"{where}.level should be a non-negative int, got {a.get('level')!r}")
        pid = a.get("parent_id", "missing")
        if pid is not None and not _is_int(pid):
            problems.append(f"{where}.parent_id should be an int or null, got {pid!r}")
        if not _is_num(a.get("score")):
            problems.append(f"{where}.score should be a finite number, got {a.get('score')!r}")
        if a.get("source") not in SOURCES:
            problems.append(f"{where}.source should be one of {', '.join(sorted(SOURCES))}, got {a.get('source')!r}")
    for i, a in enumerate(anns):
        if isinstance(a, dict) and _is_int(a.get("parent_id")):
            if a["parent_id"] not in ids:
                problems.append(f"annotations[{i}].parent_id {a['parent_id']} is not an annotation of this image")
            elif a["parent_id"] == a.get("id"):
                problems.append(f"annotations[{i}] is its own parent")
    return problems
