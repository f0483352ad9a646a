"""Exact greedy region merging (``torch.ops.unsam.merge_levels``) and its reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unsam.kernels._ext import check_device, check_finite, load, ops

load()

__all__ = ["merge_levels", "merge_levels_reference", "DEFAULT_THRESHOLDS"]

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
    if feats.device.type != "cpu":  # the CPU kernel checks while it reads (a separate pass cost 2 ms per 32 x 32 x 768)
        check_finite(feats, "feats", op)
    labels = ops().merge_levels(feats.float(), valid, thr)
    return labels[0] if single else labels


def _dot8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products in the kernels' fixed summation order (8 interleaved lanes)."""
    c = a.shape[-1]
    pad = (-c) % 8
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,))], -1)
        b = np.concatenate([b, np.zeros(b.shape[:-1] + (pad,))], -1)
    acc = np.zeros(a.shape[:-1] + (8,))
    for i in range(0, a.shape[-1], 8):
        acc = acc + a[..., i : i + 8] * b[..., i : i + 8]
    return ((acc[..., 0] + acc[..., 1]) + (acc[..., 2] + acc[..., 3])) + (
        (acc[..., 4] + acc[..., 5]) + (acc[..., 6] + acc[..., 7])
    )


def _sim(dot, na2, nb2):
    den = na2 * nb2
    return dot / np.sqrt(den) if den > 0 else 0.0


def merge_levels_reference(
    feats: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Straightforward oracle: scan every edge for the best pair before each merge.

    feats [H, W, C] -> labels [L, H, W] (one region; slow, for tests and baselines).
    """
    thr = _check_thresholds(thresholds, "merge_levels_reference")
    f = feats.detach().cpu().double().numpy()
    h, w, c = f.shape
    n = h * w
    ok = np.ones(n, bool) if valid is None else valid.cpu().numpy().reshape(n)
    sums = {p: f.reshape(n, c)[p].copy() for p in range(n) if ok[p]}
    norm2 = {p: float(_dot8(s[None], s[None])[0]) for p, s in sums.items()}
    member = np.arange(n)
    edges = set()
    for y in range(h):
        for x in range(w):
            p = y * w + x
            if not ok[p]:
                continue
            if x + 1 < w and ok[p + 1]:
                edges.add((p, p + 1))
            if y + 1 < h and ok[p + w]:
                edges.add((p, p + w))
    sim = {e: _sim(float(_dot8(sums[e[0]][None], sums[e[1]][None])[0]), norm2[e[0]], norm2[e[1]]) for e in edges}
    out = np.empty((len(thr), n), np.int64)
    for li, t in enumerate(thr):
        while sim:
            # Python edge scan: best similarity, then the smallest (a, b).
            (a, b), s = min(sim.items(), key=lambda kv: (-kv[1], kv[0]))
            if not s >= t:
                break
            sums[a] = sums[a] + sums.pop(b)
            norm2[a] = float(_dot8(sums[a][None], sums[a][None])[0])
            del norm2[b]
            member[member == b] = a
            new_edges = {}
            for e in list(sim):
                if a in e or b in e:
                    del sim[e]
                    other = e[0] if e[1] in (a, b) else e[1]
                    if other not in (a, b):
                        new_edges[(min(a, other), max(a, other))] = other
            for e, other in new_edges.items():
                sim[e] = _sim(float(_dot8(sums[a][None], sums[other][None])[0]), norm2[a], norm2[other])
        out[li] = np.where(ok, member, -1)
    return torch.from_numpy(out.reshape(len(thr), h, w))


@torch.library.register_fake("unsam::merge_levels")
def _merge_fake(feats, valid, thresholds):
    b, h, w, _ = feats.shape
    return feats.new_empty((b, len(thresholds), h, w), dtype=torch.int64)
