"""One mask of one image as a (box, crop) pair, and grid masks brought to pixels.

:class:`MaskItem` is what every stage hands on (divide regions, conquer clusters,
atoms, refined masks): masks are never full-image arrays, since an SA-1B image
is 3.4 Mpx and carries hundreds of masks. A mask may carry its place in a
stage's tree: ``meta["key"]`` (unique per image) and ``meta["up"]`` (the key of
its parent in that tree, or absent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["MaskItem", "interp_matrix", "interp_spans", "upsample_grid_masks"]


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
        # Cached per crop object: the stage asks often, and every change replaces the crop.
        cache = self.__dict__.get("_area")
        if cache is None or cache[0] is not self.crop:
            cache = (self.crop, int(np.count_nonzero(self.crop)))
            self.__dict__["_area"] = cache
        return cache[1]

    def crop_tensor(self) -> torch.Tensor:
        """The crop as a bool tensor sharing its memory, for the compiled ops (cached like ``area``)."""
        cache = self.__dict__.get("_tensor")
        if cache is None or cache[0] is not self.crop:
            c = self.crop
            ok = c.dtype == np.bool_ and c.flags.c_contiguous
            cache = (c, torch.from_numpy(c if ok else np.ascontiguousarray(c, dtype=bool)))
            self.__dict__["_tensor"] = cache
        return cache[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_tensor", None)  # a second copy of the crop's bytes
        return state

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


# ------------------------------------------------------------ grid masks -> pixels


def interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Rows of bilinear weights (align_corners=False, edge-clamped), as F.interpolate uses."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m


def interp_spans(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each input index i: the output index range [lo, hi) with nonzero weight on i."""
    nz = r > 0
    lo = nz.argmax(0)
    hi = nz.shape[0] - nz[::-1].argmax(0)
    return lo, hi


def upsample_grid_masks(grids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Grid masks [K, g, g'] -> [K, height, width] bool: bilinear upsample, threshold 0.5.

    Bilinear interpolation is separable, so it is two small matrix products
    (Ry G Rx^T) per mask instead of a gather per output pixel.
    """
    ry = interp_matrix(height, grids.shape[1])
    rx = interp_matrix(width, grids.shape[2])
    return (ry @ grids @ rx.T) > 0.5
