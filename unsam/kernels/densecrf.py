"""Dense CRF refinement of many masks of one image (``torch.ops.unsam.dense_crf``).

The fully connected CRF of Krähenbühl & Koltun (2011) with the settings of CutLER's
MaskCut step 5 (``maskcut/crf.py``; ALGORITHM.md §2.5): Gaussian kernel sxy 3 /
compat 7, bilateral kernel sxy 50 / srgb 5 / compat 10, 10 mean-field iterations,
the unary of ``unary_from_softmax`` on the softmax of the logits (1 - m, m). One
permutohedral lattice per kernel is built for the image and every mask goes through
it; masks are independent CRFs. The slow Python reference (``tests/reference/densecrf.py``)
is the tests' oracle; ``pydensecrf2`` (the published way) agrees with both.

A host op for now: no CUDA kernel has been written yet (that waits for a session with
a GPU), so CUDA inputs are moved to the CPU and the result comes back on their device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unsam.kernels._ext import check_finite, load, ops

load()

__all__ = ["CRFParams", "PUBLISHED_CRF", "dense_crf"]


@dataclass(frozen=True)
class CRFParams:
    """The CRF's settings (defaults: CutLER's ``maskcut/crf.py``)."""

    gaussian_sxy: float = 3.0  #: std of the position-only kernel, pixels
    gaussian_compat: float = 7.0  #: its Potts weight
    bilateral_sxy: float = 50.0  #: std of the bilateral kernel's position term, pixels
    bilateral_srgb: float = 5.0  #: std of its colour term, RGB levels (0-255)
    bilateral_compat: float = 10.0  #: its Potts weight
    iterations: int = 10  #: mean-field iterations


#: The published settings.
PUBLISHED_CRF = CRFParams()


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    # A writable, contiguous array (a decoded image may be read-only; torch warns on those).
    return torch.from_numpy(np.require(np.asarray(x), requirements=("C", "W")))


def dense_crf(
    image: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    params: CRFParams = PUBLISHED_CRF,
    return_logits: bool = False,
) -> torch.Tensor:
    """Mean-field dense CRF of each mask against the image.

    Args:
        image (Tensor[H, W, 3] uint8): RGB.
        masks (Tensor[K, H, W] or [H, W], bool or float in [0, 1]): the masks to refine
            (float: CutLER's soft input; its unary is the softmax of (1 - m, m)).
        params: kernel widths, weights and iterations (:data:`PUBLISHED_CRF`).
        return_logits: return log(Q_fg / Q_bg) (float32) instead of the MAP.

    Returns:
        Tensor[K, H, W] bool (foreground where Q_fg > Q_bg) or float32 log-odds, shaped
        like ``masks`` and on its device.
    """
    op = "dense_crf"
    img = _as_tensor(image)
    m = _as_tensor(masks)
    device = m.device
    if img.dim() != 3 or img.shape[-1] != 3:
        raise ValueError(f"{op}: image should have shape [H, W, 3], got {tuple(img.shape)}")
    if img.dtype != torch.uint8:
        raise TypeError(f"{op}: image should be uint8 RGB, got dtype {img.dtype}")
    single = m.dim() == 2
    if single:
        m = m[None]
    if m.dim() != 3:
        raise ValueError(f"{op}: masks should have shape [K, H, W] or [H, W], got {tuple(m.shape)}")
    if tuple(m.shape[1:]) != tuple(img.shape[:2]):
        raise ValueError(f"{op}: masks should have the image's H x W {tuple(img.shape[:2])}, got {tuple(m.shape)}")
    if m.dtype == torch.uint8:
        m = m.bool()
    elif m.dtype != torch.bool:
        if not m.is_floating_point():
            raise TypeError(f"{op}: masks should be bool or float, got dtype {m.dtype}")
        m = m.float()
        check_finite(m, "masks", op)
    p = params
    for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
        v = float(getattr(p, name))
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{op}: {name} should be finite and > 0, got {v}")
    for name in ("gaussian_compat", "bilateral_compat"):
        if not np.isfinite(float(getattr(p, name))):
            raise ValueError(f"{op}: {name} should be finite, got {getattr(p, name)}")
    if int(p.iterations) != p.iterations or p.iterations < 0:
        raise ValueError(f"{op}: iterations should be an integer >= 0, got {p.iterations!r}")
    out = ops().dense_crf(
        img.cpu().contiguous(),
        m.cpu().contiguous(),
        float(p.gaussian_sxy),
        float(p.gaussian_compat),
        float(p.bilateral_sxy),
        float(p.bilateral_srgb),
        float(p.bilateral_compat),
        int(p.iterations),
        bool(return_logits),
    )
    out = out[0] if single else out
    return out.to(device)


def _fake_dense_crf(image, masks, gs, gc, bs, br, bc, iterations, logits):
    return masks.new_empty(masks.shape, dtype=torch.float32 if logits else torch.bool)


torch.library.register_fake("unsam::dense_crf")(_fake_dense_crf)
