"""COCO compressed RLE: masks to JSON-ready RLE and back (column-major, what pycocotools writes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["mask_to_rle", "masks_to_rles", "rle_area", "rle_bbox", "rle_to_mask"]

def _as_binary_uint8(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    m = np.asarray(masks)
    # pycocotools' encoder toggles on every change of value, so a 0/255 mask
    # would give garbage runs: make it strictly 0/1 first.
    return m.astype(np.uint8) if m.dtype == np.bool_ else (m != 0).astype(np.uint8)


def _rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_to_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Encode one binary mask ``[H, W]`` (bool, or any dtype with nonzero = foreground) as COCO compressed RLE.

    Returns:
        ``{"size": [H, W], "counts": str}`` — JSON-ready, identical to what
        pycocotools writes (column-major run lengths).
    """
    m = _as_binary_uint8(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_to_rle: mask should be 2-D [H, W], got shape {tuple(m.shape)}")
    return _rle_to_json(mask_utils.encode(np.asfortranarray(m)))


def masks_to_rles(masks: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
    """Encode ``K`` binary masks ``[K, H, W]`` (numpy or torch, nonzero = foreground) in one pycocotools call.

    Returns:
        list of K ``{"size": [H, W], "counts": str}``; ``[]`` when K == 0.
    """
    m = _as_binary_uint8(masks)
    if m.ndim != 3:
        raise ValueError(f"masks_to_rles: masks should be 3-D [K, H, W], got shape {tuple(m.shape)}")
    if m.shape[0] == 0:
        return []
    # pycocotools wants [H, W, K] in Fortran order: each mask column-major and
    # contiguous. One copy here, then a single C call for all K masks.
    hwk = np.asfortranarray(m.transpose(1, 2, 0))
    return [_rle_to_json(r) for r in mask_utils.encode(hwk)]


def _to_coco_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """A pycocotools-ready compressed RLE (accepts str counts and uncompressed list counts)."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed str/bytes counts or uncompressed list) to ``bool[H, W]``."""
    return mask_utils.decode(_to_coco_rle(rle)).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of a COCO RLE, without decoding it."""
    return int(mask_utils.area(_to_coco_rle(rle)))


def rle_bbox(rle: dict[str, Any]) -> list[float]:
    """Tight box ``[x, y, w, h]`` (floats, pixel units) of a COCO RLE; ``[0, 0, 0, 0]`` if empty."""
    return [float(v) for v in mask_utils.toBbox(_to_coco_rle(rle))]
