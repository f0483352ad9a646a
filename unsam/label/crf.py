"""Dense CRF refinement of pseudo-masks: MaskCut's step 5 as published and ``--refine crf``.

CutLER's MaskCut refines each mask with a fully connected CRF (ALGORITHM.md §2.5;
``maskcut/crf.py``): Gaussian kernel sxy 3 / compat 7, bilateral kernel sxy 50 / srgb 5 /
compat 10, 10 mean-field iterations; then the holes of the MAP are filled, and a refined
mask whose IoU with its input is below 0.5 is dropped. :func:`crf_refine` is that step
for all masks of an image at once (:func:`unsam.kernels.dense_crf`: one lattice per
image); the ``maskcut`` preset runs it inside the divide stage at the divide resolution
(:mod:`unsam.label.divide`), and :func:`crf_masks` runs it in the mask stage for
``--refine crf``, on the masks that survive a first NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage

from unsam.kernels.densecrf import CRFParams, dense_crf
from unsam.label.items import MaskItem

__all__ = ["CRFConfig", "crf_masks", "crf_refine"]


@dataclass
class CRFConfig:
    """Settings of the dense CRF step (defaults: CutLER's ``maskcut/crf.py`` and ``maskcut.py``)."""

    gaussian_sxy: float = 3.0  #: std of the position-only kernel, pixels
    gaussian_compat: float = 7.0  #: its Potts weight
    bilateral_sxy: float = 50.0  #: std of the bilateral kernel's position term, pixels
    bilateral_srgb: float = 5.0  #: std of its colour term, RGB levels
    bilateral_compat: float = 10.0  #: its Potts weight
    iterations: int = 10  #: mean-field iterations
    fill_holes: bool = True  #: fill the holes of the refined mask (published)
    min_iou: float = 0.5  #: a refined mask with a lower IoU with its input is dropped (published)

    def params(self) -> CRFParams:
        return CRFParams(
            float(self.gaussian_sxy),
            float(self.gaussian_compat),
            float(self.bilateral_sxy),
            float(self.bilateral_srgb),
            float(self.bilateral_compat),
            int(self.iterations),
        )


def check_crf_config(cfg: CRFConfig) -> None:
    """Raise ValueError for settings the step cannot run with (checked once per run)."""
    for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise ValueError(f"config: crf.{name} should be a number > 0, got {v!r}")
    if int(cfg.iterations) != cfg.iterations or cfg.iterations < 0:
        raise ValueError(f"config: crf.iterations should be an integer >= 0, got {cfg.iterations!r}")
    if not 0.0 <= cfg.min_iou <= 1.0:
        raise ValueError(f"config: crf.min_iou should be in [0, 1], got {cfg.min_iou!r}")


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """scipy's binary_fill_holes of a full mask, computed on its bounding box only: the
    background outside the box touches the box's border everywhere, so a hole of the box
    is a hole of the image."""
    ys = np.flatnonzero(mask.any(1))
    if ys.size == 0:
        return mask
    xs = np.flatnonzero(mask.any(0))
    sl = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    out = mask.copy()
    out[sl] = scipy.ndimage.binary_fill_holes(mask[sl])
    return out


def crf_refine(image: np.ndarray, masks: np.ndarray, cfg: CRFConfig | None = None) -> list[np.ndarray | None]:
    """The published step on masks [K, H, W] bool of image [H, W, 3] uint8: the CRF's MAP, its
    holes filled (``cfg.fill_holes``); None for a mask whose refined version has IoU <
    ``cfg.min_iou`` with it (dropped, as MaskCut drops it). An empty mask stays empty
    (the CRF of an all-background unary is all background): it is not run."""
    cfg = cfg or CRFConfig()
    masks = np.asarray(masks, bool)
    out: list[np.ndarray | None] = [m for m in masks]
    if not len(masks):
        return out
    areas = np.count_nonzero(masks.reshape(len(masks), -1), axis=1)
    todo = np.flatnonzero(areas)
    if not todo.size:
        return out
    refined = dense_crf(image, masks if todo.size == len(masks) else masks[todo], cfg.params()).numpy()
    for i, r in zip(todo.tolist(), refined):
        r_area = np.count_nonzero(r)
        if r_area and cfg.fill_holes:
            r = _fill_holes(r)
            r_area = np.count_nonzero(r)
        inter = np.count_nonzero(masks[i] & r) if r_area else 0
        union = int(areas[i]) + r_area - inter
        # TokenCut's metric.IoU, as MaskCut calls it: float32 division.
        iou = np.float32(inter) / np.float32(union)
        out[i] = None if iou < cfg.min_iou else r
    return out


def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W, 3] uint8 at h x w, antialiased bilinear (as the pipeline's atoms see the image)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


#: Masks per call of the CRF in :func:`crf_masks`: at most this many mask pixels (bool) at once
#: (64 M: ~200 masks of a 640 x 480 image), in whole groups of eight (the op's lanes). The
#: lattices are built once per call: a few per image at most, a few % of the CRF's time.
CHUNK_PIXELS = 64 << 20


def crf_masks(image: np.ndarray, items: list[MaskItem], work_hw: tuple[int, int], cfg: CRFConfig | None = None) -> list[MaskItem]:
    """``--refine crf``: every mask of one image refined by :func:`crf_refine` at the working
    resolution (the image resized there); masks it drops, or that come out empty, are
    removed, the others get their refined pixels (in place; the box may grow). The masks go
    in chunks of at most :data:`CHUNK_PIXELS` mask pixels, so memory stays bounded however
    many masks an image has (a mask's result does not depend on the masks beside it)."""
    h, w = work_hw
    if not items:
        return items
    if tuple(image.shape[:2]) != (h, w):
        image = _resized(image, h, w)
    image = np.ascontiguousarray(image)
    step = max(8, CHUNK_PIXELS // max(1, h * w) // 8 * 8)
    kept = []
    for c0 in range(0, len(items), step):
        chunk = items[c0 : c0 + step]
        full = np.zeros((len(chunk), h, w), bool)
        for k, m in enumerate(chunk):
            x0, y0, x1, y1 = m.box
            full[k, y0:y1, x0:x1] = m.crop
        for m, r in zip(chunk, crf_refine(image, full, cfg)):
            if r is None:
                continue
            m.box, m.crop = (0, 0, w, h), r
            if m.tighten() is not None:
                kept.append(m)
    return kept
