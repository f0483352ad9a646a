"""Python reference of the RLE crop ops (``unsam.kernels.rlecrop``): each mask decoded at full
size by pycocotools, then indexed by the crop's rows and columns in numpy. The oracle of
``tests/test_rlecrop.py``; it imports nothing from unsam."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["rle_crop_area_reference", "rle_crop_at_reference", "rle_crop_reference"]


def rle_crop_reference(rles: list[dict], rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """masks bool [K, R, C] (``full[rows][:, cols]``, -1: a padding row or column) and their
    tight boxes int64 [K, 4] (x0, y0, x1, y1), x1/y1 exclusive, zeros when empty."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    masks = np.zeros((len(rles), rows.size, cols.size), bool)
    boxes = np.zeros((len(rles), 4), np.int64)
    for k, rle in enumerate(rles):
        full = mask_utils.decode(rle).astype(bool)
        # One extra row and column of background: where the maps' -1 entries land.
        padded = np.pad(full, ((0, 1), (0, 1)))
        m = padded[rows][:, cols]
        masks[k] = m
        ys, xs = np.nonzero(m)
        if ys.size:
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return masks, boxes


def rle_crop_area_reference(rles: list[dict], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return rle_crop_reference(rles, rows, cols)[0].sum((1, 2)).astype(np.int64)


def rle_crop_at_reference(rles: list[dict], rows: np.ndarray, cols: np.ndarray, points: np.ndarray) -> np.ndarray:
    masks = rle_crop_reference(rles, rows, cols)[0]
    points = np.asarray(points, np.int64).reshape(-1, 2)
    return masks[:, points[:, 0], points[:, 1]]
