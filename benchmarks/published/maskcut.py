"""CutLER's MaskCut as released (``maskcut/maskcut.py``), read and rewritten: the baseline of
the benchmarks and the oracle of the ``maskcut`` preset's parity.

Its costs are kept as they are there: per cut a dense float32 affinity from the
features (those of covered patches zeroed) and a dense generalized eigensolver
``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])``; step 5, the dense CRF
with pydensecrf2 one mask at a time (:mod:`~.crf`); the masks written one
full-size array at a time. Where a rule departs from the release,
:class:`~.rules.Rules` names it.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from benchmarks.published.rules import RELEASED, Rules

__all__ = [
    "affinity_matrix",
    "annotation",
    "bipartition",
    "mask_iou",
    "maskcut_forward",
    "run_maskcut",
    "second_smallest_eigenvector",
    "write_masks",
]


def affinity_matrix(feats: torch.Tensor, tau: float, eps: float = 1e-5) -> np.ndarray:
    """``get_affinity_matrix`` of feats [C, N]: A (float64 [N, N], 1 where cos > tau, eps elsewhere)."""
    f = F.normalize(feats, p=2, dim=0)
    s = (f.transpose(0, 1) @ f).cpu().numpy()  # float32, as released
    a = s > tau
    return np.where(a.astype(float) == 0, eps, a)


def second_smallest_eigenvector(a: np.ndarray) -> np.ndarray:
    """The released dense generalized solver: eigh(D - A, D), eigenpairs 1..2, the first."""
    d = np.diag(np.sum(a, axis=1))
    _, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])
    return np.copy(vecs[:, 0])


def _argmax(v: np.ndarray, rules: Rules) -> int:
    if rules.tie_rtol is None:
        return int(np.argmax(v))
    top = v.max()
    return int(np.flatnonzero(v >= top - rules.tie_rtol * max(np.abs(v).max(), 1e-300))[0])


def _signed(x: np.ndarray, rules: Rules) -> np.ndarray:
    if rules.sign == "lapack":
        return x
    return -x if x[_argmax(np.abs(x), rules)] < 0 else x


def bipartition(x: np.ndarray, dims: tuple[int, int], rules: Rules = RELEASED) -> np.ndarray:
    """MaskCut's bipartition of an eigenvector x [N]: foreground above the mean; seed argmax |x|;
    reversed when >= 3 corners are foreground, else when the seed is not; after a reversal
    the seed is argmax(-x), else argmax(x); the mask is the seed's 4-connected foreground
    component (TokenCut's ``detect_box``). Returns [gh, gw] bool."""
    avg = np.sum(x) / len(x)
    if rules.tie_rtol is None:
        fg = x > avg
    else:
        fg = (x - avg) > rules.tie_rtol * np.abs(x - avg).max()
    seed = _argmax(np.abs(x), rules)
    grid = fg.reshape(dims)
    corners = int(grid[0][0]) + int(grid[0][-1]) + int(grid[-1][0]) + int(grid[-1][-1])
    reverse = True if corners >= 3 else not fg[seed]
    if reverse:
        fg = np.logical_not(fg)
        seed = _argmax(-x, rules)
    else:
        seed = _argmax(x, rules)
    objects, _ = ndimage.label(fg.reshape(dims).astype(float))  # default structure: 4-connectivity
    return objects == objects[np.unravel_index(seed, dims)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """``metric.IoU`` of two binary masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def maskcut_forward(
    feats: torch.Tensor, dims: tuple[int, int], tau: float, n: int = 3, eps: float = 1e-5, rules: Rules = RELEASED
) -> list[np.ndarray]:
    """``maskcut_forward`` on one image's patch features feats [C, N] (N = gh * gw): the ``n``
    grid masks ([gh, gw] bool; all False where a cut was dropped), in cut order.

    A later cut is dropped when its IoU with the previous mask is > 0.5 or it covers
    <= 1 % of the patches; the dropped cut's zeros then become the "previous mask", so
    the next cut zeroes nothing new and sees the same graph (as released)."""
    feats = feats.clone()
    painting = torch.zeros(dims, dtype=feats.dtype)
    current = None
    out = []
    for i in range(n):
        if i > 0:
            painting = ((painting + current) > 0).to(feats.dtype)
            feats = (feats.view(-1, *dims) * (1 - painting)).view(feats.shape[0], -1)
        x = _signed(second_smallest_eigenvector(affinity_matrix(feats, tau, eps)), rules)
        mask = bipartition(x, dims, rules)
        if i >= 1 and (mask_iou(current.numpy() > 0, mask) > 0.5 or mask.mean() <= 0.01):
            mask = np.zeros(dims, bool)
        current = torch.from_numpy(mask).to(feats.dtype)
        out.append(mask)
    return out


def write_masks(
    grids: list[np.ndarray], divide_size: int, height: int, width: int, image: np.ndarray | None = None, rules: Rules = RELEASED
) -> list[np.ndarray]:
    """The image's masks as ``maskcut.py`` writes them: each grid mask nearest-upsampled to
    divide_size x divide_size, minus what earlier masks hold; with ``rules.crf`` step 5 on
    it (:func:`~.crf.refine_step` against ``image`` resized to divide_size x divide_size
    with PIL's LANCZOS, the released ``I_new``); PIL's default resize of the uint8 mask to
    the image size, and ``create_annotation_info``'s threshold at half the maximum; empty
    masks are not written."""
    if rules.crf:
        from benchmarks.published.crf import refine_step

        if image is None:
            raise ValueError("write_masks: the CRF step needs the image")
        i_new = np.array(Image.fromarray(image).resize((divide_size, divide_size), Image.LANCZOS))
    out, taken = [], None
    for g in grids:
        big = F.interpolate(torch.from_numpy(g.astype(np.float64))[None, None], size=(divide_size, divide_size), mode="nearest")[0, 0].numpy()
        masked = big - (taken if taken is not None else 0)
        masked[masked <= 0] = 0
        taken = masked if taken is None else taken + masked
        pseudo = refine_step(i_new, masked) if rules.crf else masked
        a = np.asarray(Image.fromarray(np.uint8(pseudo * 255)).resize((width, height)))
        upper, lower = int(a.max()), int(a.min())
        m = np.where(a > upper / 2.0, upper, lower) != 0
        if m.any():
            out.append(m)
    return out


def annotation(mask: np.ndarray) -> dict | None:
    """``create_annotation_info`` of a full-size mask: area, bbox and compressed RLE (None when empty)."""
    from pycocotools import mask as mask_utils

    m = np.asfortranarray(mask.astype(np.uint8))
    rle = mask_utils.encode(m)
    area = mask_utils.area(rle)
    if area < 1:
        return None
    bbox = mask_utils.toBbox(rle)
    rle = mask_utils.encode(np.array(m[..., None], order="F", dtype="uint8"))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"area": int(area), "bbox": bbox.tolist(), "segmentation": rle}


def run_maskcut(
    feats: torch.Tensor,
    image_hw: tuple[int, int],
    divide_size: int,
    tau: float,
    n: int = 3,
    eps: float = 1e-5,
    rules: Rules = RELEASED,
    image: np.ndarray | None = None,
) -> list[np.ndarray]:
    """MaskCut on patch features [gh, gw, C] of an image resized to divide_size^2 -> its masks
    at image_hw ([H, W] bool each), as released (the CRF step needs ``image``, [H, W, 3] uint8)."""
    gh, gw, c = feats.shape
    grids = maskcut_forward(feats.reshape(gh * gw, c).T.contiguous(), (gh, gw), tau, n, eps, rules)
    return write_masks(grids, divide_size, *image_hw, image=image, rules=rules)
