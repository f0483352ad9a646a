"""Lanczos Normalized Cut (``torch.ops.unsam.lanczos_fiedler``) and references."""

from __future__ import annotations

import torch

from unsam.kernels._ext import check_device, load, ops
from unsam.kernels.affinity import affinity

load()

__all__ = ["lanczos_fiedler", "ncut_fiedler"]

#: Default residual tolerance |M y - theta y| of the Ritz pair (|y| = 1).
DEFAULT_TOL = 1e-6
#: Default cap on Lanczos steps (one matvec each); also capped at N - 1.
DEFAULT_MAX_ITER = 300


def lanczos_fiedler(
    bits: torch.Tensor,
    deg: torch.Tensor,
    eps: float = 1e-5,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fiedler vectors of bit-packed MaskCut graphs (from :func:`affinity`).

    Solves (D - A) x = lam D x for the second-smallest lam by Lanczos on
    M = D^-1/2 A D^-1/2 with sqrt(d) deflated and full reorthogonalisation.

    Args:
        bits (Tensor[B, N, W] int32), deg (Tensor[B, N] float64): the graph.
        eps: the graph's eps (must match the one given to :func:`affinity`).
        tol: stop when the Ritz residual |M y - theta y| <= tol (|y| = 1).
        max_iter: at most this many Lanczos steps (and at most N - 1).
        x0 (Tensor[B, N], optional): start vector, e.g. the previous cut's x (warm start).

    Returns:
        x (Tensor[B, N] float64): x^T D x = 1; sign: the entry of largest |x|
            (lowest index among equals) is positive.
        lam (Tensor[B] float64): the generalized eigenvalue lam_2 (= 1 - theta).
        iters (Tensor[B] int64): Lanczos steps taken (= matvecs).
    """
    if bits.dim() == 2:
        x, lam, it = lanczos_fiedler(bits[None], deg[None], eps, tol, max_iter, None if x0 is None else x0[None])
        return x[0], lam[0], it[0]
    check_device(bits, "bits", "lanczos_fiedler")
    return ops().lanczos_fiedler(bits, deg, x0, float(eps), float(tol), int(max_iter))


def ncut_fiedler(
    feats: torch.Tensor,
    tau: float = 0.15,
    eps: float = 1e-5,
    valid: torch.Tensor | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskCut's Normalized Cut eigenvector from patch features.

    Args:
        feats (Tensor[N, C] or [B, N, C]): patch features.
        tau, eps, valid: as in :func:`unsam.kernels.affinity`.
        tol, max_iter, x0: as in :func:`lanczos_fiedler`.

    Returns:
        x (Tensor[N] or [B, N] float64) and lam (Tensor[] or [B] float64).
    """
    if not isinstance(feats, torch.Tensor):
        raise TypeError(f"ncut_fiedler: feats should be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() not in (2, 3):
        raise ValueError(f"ncut_fiedler: feats should have shape [N, C] or [B, N, C], got {tuple(feats.shape)}")
    if feats.shape[-2] < 2:
        raise ValueError(f"ncut_fiedler: a Normalized Cut needs N >= 2 patches, got N = {feats.shape[-2]}")
    bits, deg = affinity(feats, tau=tau, eps=eps, valid=valid)
    x, lam, _ = lanczos_fiedler(bits, deg, eps=eps, tol=tol, max_iter=max_iter, x0=x0)
    return x, lam


@torch.library.register_fake("unsam::lanczos_fiedler")
def _lanczos_fake(bits, deg, x0, eps, tol, max_iter):
    b, n = deg.shape
    return (
        deg.new_empty((b, n)),
        deg.new_empty((b,)),
        deg.new_empty((b,), dtype=torch.int64),
    )
