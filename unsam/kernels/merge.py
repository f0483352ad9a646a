"""Exact greedy region merging (``torch.ops.unsam.merge_levels``) and its reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unsam.kernels._ext import check_device, load, ops

load()

__all__ = ["merge_levels", "DEFAULT_THRESHOLDS"]

#: UnSAM's published similarity ladder (fine -> coarse).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def _check_thresholds(thresholds: Sequence[float], op: str) -> list[float]:
    thr = [float(t) for t in thresholds]
    if not thr:
        raise ValueError(f"{op}: thresholds should be a non-empty descending sequence, got {thresholds!r}")
    if any(not np.isfinite(t) for t in thr):
        raise ValueError(f"{op}: thresholds should be finite, got {thresholds!r}")
    if any(b > a for a, b in zip(thr, thr[1:])):
        raise ValueError(f"{op}: thresholds should be descending (fine to coarse), got {thresholds!r}")
    return thr


def merge_levels(
    feats: torch.Tensor,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy agglomeration of grid patches into nested clusters, one level per threshold.

    Repeatedly merges the most similar pair of 4-adjacent clusters while its
    similarity >= theta, for each theta in turn (state carried over, so levels
    nest). Representative = sum of members' raw features; similarity = cosine
    in float64. Ties: highest similarity, then the smallest (a, b) cluster ids.

    Args:
        feats (Tensor[H, W, C] or [B, H, W, C]): raw patch features (float32).
        thresholds: descending similarity thresholds, one output level each.
        valid (Tensor[H, W] or [B, H, W] bool, optional): False patches take no part.

    Returns:
        labels (Tensor[L, H, W] or [B, L, H, W] int64): cluster id = smallest member
        patch index (row-major), -1 where invalid.
    """
    op = "merge_levels"
    if not isinstance(feats, torch.Tensor):
        raise TypeError(f"{op}: feats should be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() not in (3, 4):
        raise ValueError(f"{op}: feats should have shape [H, W, C] or [B, H, W, C], got {tuple(feats.shape)}")
    if not feats.is_floating_point():
        raise TypeError(f"{op}: feats should be floating point, got dtype {feats.dtype}")
    thr = _check_thresholds(thresholds, op)
    single = feats.dim() == 3
    if single:
        feats = feats.unsqueeze(0)
        valid = None if valid is None else valid.unsqueeze(0)
    if valid is not None:
        if valid.dtype != torch.bool:
            raise TypeError(f"{op}: valid should be a bool tensor, got dtype {valid.dtype}")
        if tuple(valid.shape) != tuple(feats.shape[:3]):
            raise ValueError(f"{op}: valid should have shape {tuple(feats.shape[:3])}, got {tuple(valid.shape)}")
        if valid.device != feats.device:
            raise ValueError(f"{op}: valid is on {valid.device} but feats is on {feats.device}")
    check_device(feats, "feats", op)
    labels = ops().merge_levels(feats.float(), valid, thr)
    return labels[0] if single else labels


@torch.library.register_fake("unsam::merge_levels")
def _merge_fake(feats, valid, thresholds):
    b, h, w, _ = feats.shape
    return feats.new_empty((b, len(thresholds), h, w), dtype=torch.int64)
