"""CutLER's dense CRF step as released (``maskcut/crf.py`` and step 5 of ``maskcut/maskcut.py``),
read and rewritten, with ``pydensecrf2`` as the release uses ``pydensecrf``: the "published way"
of the CRF benchmarks and the oracle of the op's and the presets' CRF parity.

One mask at a time, as released: the mask as logits (1 - m, m), bilinearly resized to the
image (the identity when the sizes agree, as in MaskCut), softmax, ``unary_from_softmax``,
a fresh ``DenseCRF2D`` (its two lattices built for every mask), ``addPairwiseGaussian(sxy=3,
compat=7)``, ``addPairwiseBilateral(sxy=50, srgb=5, compat=10)``, 10 iterations, argmax.
MaskCut then fills the holes of ``MAP >= 0.5`` and drops the refined mask (writes nothing
for it) when its IoU with the unrefined one (TokenCut's ``metric.IoU``) is below 0.5.

``pydensecrf2`` is a benchmark and test dependency only (it compiles from source, about a
minute here; ``pip install pydensecrf2``): importing this module without it raises.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

try:
    import pydensecrf.densecrf as dcrf
    import pydensecrf.utils as dcrf_utils
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("benchmarks.published.crf needs pydensecrf2 (`pip install pydensecrf2`)") from e

__all__ = ["MAX_ITER", "densecrf", "metric_iou", "refine_step"]

MAX_ITER = 10
POS_W, POS_XY_STD = 7, 3
BI_W, BI_XY_STD, BI_RGB_STD = 10, 50, 5


def densecrf(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``crf.densecrf``: the MAP [h, w] float32 (0/1) of one mask against image [H, W, 3] uint8."""
    h, w = mask.shape
    fg = mask.reshape(1, h, w).astype(float)
    logits = torch.from_numpy(np.concatenate((1 - fg, fg), axis=0))
    H, W = image.shape[:2]
    image = np.ascontiguousarray(image)
    logits = F.interpolate(logits.unsqueeze(0), size=(H, W), mode="bilinear").squeeze()
    probs = F.softmax(logits, dim=0).cpu().numpy()
    c, h, w = probs.shape
    u = np.ascontiguousarray(dcrf_utils.unary_from_softmax(probs))
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(u)
    d.addPairwiseGaussian(sxy=POS_XY_STD, compat=POS_W)
    d.addPairwiseBilateral(sxy=BI_XY_STD, srgb=BI_RGB_STD, rgbim=image, compat=BI_W)
    q = np.array(d.inference(MAX_ITER)).reshape((c, h, w))
    return np.argmax(q, axis=0).reshape((h, w)).astype(np.float32)


def metric_iou(mask1: np.ndarray, mask2: np.ndarray) -> float:
    """TokenCut's ``metric.IoU`` (both thresholded at 0.5; NaN when both are empty)."""
    a, b = mask1 > 0.5, mask2 > 0.5
    union = np.logical_or(a, b).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float32(np.logical_and(a, b).sum()) / np.float32(union))


def refine_step(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MaskCut's step 5 on one mask at the CRF's resolution: the CRF, hole filling of
    ``MAP >= 0.5``, and the mask emptied when its IoU with the input is < 0.5 (a NaN IoU,
    two empty masks, is not < 0.5). Returns [h, w] bool."""
    refined = ndimage.binary_fill_holes(densecrf(image, mask) >= 0.5)
    if metric_iou(mask, refined) < 0.5:
        return np.zeros_like(refined)
    return refined
