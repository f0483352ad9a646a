"""Bit-packed MaskCut affinity (``torch.ops.unsam.affinity``) and its reference."""

from __future__ import annotations

import torch

from unsam.kernels._ext import check_device, load, ops

load()  # registers torch.ops.unsam.* before the fake kernels below

__all__ = ["affinity", "unpack_bits", "dense_affinity"]


def _as_batched(feats: torch.Tensor, valid: torch.Tensor | None, op: str):
    if not isinstance(feats, torch.Tensor):
        raise TypeError(f"{op}: feats should be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() not in (2, 3):
        raise ValueError(f"{op}: feats should have shape [N, C] or [B, N, C], got {tuple(feats.shape)}")
    single = feats.dim() == 2
    if single:
        feats = feats.unsqueeze(0)
    if valid is not None:
        if not isinstance(valid, torch.Tensor):
            raise TypeError(f"{op}: valid should be a torch.Tensor or None, got {type(valid).__name__}")
        if valid.dtype != torch.bool:
            raise TypeError(f"{op}: valid should be a bool tensor, got dtype {valid.dtype}")
        if single and valid.dim() == 1:
            valid = valid.unsqueeze(0)
        if tuple(valid.shape) != tuple(feats.shape[:2]):
            raise ValueError(
                f"{op}: valid should have shape {tuple(feats.shape[:2]) if not single else (feats.shape[1],)}, "
                f"got {tuple(valid.shape)}"
            )
        if valid.device != feats.device:
            raise ValueError(f"{op}: valid is on {valid.device} but feats is on {feats.device}")
    return feats, valid, single


def affinity(
    feats: torch.Tensor,
    tau: float = 0.15,
    eps: float = 1e-5,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thresholded cosine graph of MaskCut, bit-packed.

    Args:
        feats (Tensor[B, N, C] or [N, C]): patch features (float32; bf16/fp16 also on CUDA).
        tau: an edge joins i and j when cos(f_i, f_j) > tau (diagonal included).
        eps: weight of the non-edges in the exact graph A = (1 - eps) B + eps 1 1^T.
        valid (Tensor[B, N] bool, optional): False patches act as MaskCut's zeroed features.

    Returns:
        bits (Tensor[B, N, ceil(N/32)] int32): bit j % 32 of word j // 32 of row i is B_ij.
        deg (Tensor[B, N] float64): degrees of A (strictly positive when eps > 0).
        A leading B is dropped when feats was [N, C].
    """
    feats, valid, single = _as_batched(feats, valid, "affinity")
    check_device(feats, "feats", "affinity")
    if not feats.is_cuda and feats.dtype not in (torch.float32, torch.float64):
        feats = feats.float()
    bits, deg = ops().affinity(feats, valid, float(tau), float(eps))
    if single:
        return bits[0], deg[0]
    return bits, deg


def unpack_bits(bits: torch.Tensor, n: int) -> torch.Tensor:
    """Bit-packed rows [..., N, W] int32 -> dense bool [..., N, N]."""
    shifts = torch.arange(32, device=bits.device, dtype=torch.int32)
    b = (bits.unsqueeze(-1) >> shifts) & 1
    return b.flatten(-2)[..., :n].bool()


def dense_affinity(bits: torch.Tensor, deg: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The exact dense float64 graph A = (1 - eps) B + eps 1 1^T (for tests and baselines)."""
    n = deg.shape[-1]
    b = unpack_bits(bits, n).double()
    return (1.0 - eps) * b + eps


@torch.library.register_fake("unsam::affinity")
def _affinity_fake(feats, valid, tau, eps):
    b, n, _ = feats.shape
    w = (n + 31) // 32
    return feats.new_empty((b, n, w), dtype=torch.int32), feats.new_empty((b, n), dtype=torch.float64)
