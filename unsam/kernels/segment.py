"""Pixel-accurate atoms and their merge hierarchy (``torch.ops.unsam.graph_segment``,
``torch.ops.unsam.merge_graph``), with slow references beside them.

Both are host ops: a region adjacency graph of a few thousand atoms is
latency-bound pointer chasing that a GPU does not speed up, so CUDA inputs are
moved to the CPU (the outputs come back on the input's device).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unsam.kernels._ext import load, ops

load()

__all__ = [
    "adjacent_pairs",
    "graph_segment",
    "merge_graph",
]


def _scales(ks: float | Sequence[float], op: str) -> list[float]:
    vals = [float(ks)] if np.isscalar(ks) else [float(k) for k in ks]
    if not vals:
        raise ValueError(f"{op}: ks should be a number or a non-empty sequence, got {ks!r}")
    for k in vals:
        if not np.isfinite(k) or k < 0:
            raise ValueError(f"{op}: every k should be finite and >= 0, got {ks!r}")
    return vals


def _image(image, op: str) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        t = image
    else:
        a = np.asarray(image)
        if a.dtype == bool or np.iscomplexobj(a):
            raise TypeError(f"{op}: image should be real-valued, got dtype {a.dtype}")
        t = torch.from_numpy(np.array(a, np.float32))  # a writable copy (inputs may be read-only)
    if t.dim() == 2:
        t = t.unsqueeze(-1)
    if t.dim() != 3:
        raise ValueError(f"{op}: image should have shape [H, W] or [H, W, C], got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{op}: image should be real-valued, got dtype {t.dtype}")
    return t.float()


def graph_segment(image, ks: float | Sequence[float] = 100.0, min_size: int = 20, sigma: float = 0.8) -> torch.Tensor:
    """Felzenszwalb–Huttenlocher segmentation at one or several scales (one sort for all).

    Args:
        image ([H, W, C] or [H, W], uint8 or float): pixel values on the 0-255 scale
            (k is in those units, as in the FH paper and scikit-image's ``scale``).
        ks: FH's k, one or several (larger: larger segments).
        min_size: components smaller than this many pixels join a neighbour.
        sigma: Gaussian pre-smoothing of each channel (0: none).

    Returns:
        labels (Tensor[H, W] int64, or [S, H, W] for a sequence of ks): 0..n-1, raster
        order of each segment's first pixel; on the input's device.
    """
    op = "graph_segment"
    single = np.isscalar(ks)
    vals = _scales(ks, op)
    if int(min_size) != min_size or min_size < 0:
        raise ValueError(f"{op}: min_size should be an integer >= 0, got {min_size!r}")
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{op}: sigma should be finite and >= 0, got {sigma!r}")
    device = image.device if isinstance(image, torch.Tensor) else torch.device("cpu")
    t = _image(image.cpu() if isinstance(image, torch.Tensor) else image, op)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        t = torch.from_numpy(gaussian_filter(t.numpy(), sigma=(sigma, sigma, 0), mode="reflect"))
    out = ops().graph_segment(t.contiguous(), vals, int(min_size))
    out = out[0] if single else out
    return out.to(device)


def merge_graph(
    hist: torch.Tensor,
    area: torch.Tensor,
    edges: torch.Tensor,
    feats: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    w_hist: float = 1.0,
    w_feat: float = 0.0,
    w_size: float = 0.5,
    w_fill: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy agglomeration of a region adjacency graph to the end (a dendrogram).

    similarity(a, b) = w_hist * histogram intersection (each histogram normalised)
    + w_feat * cosine of summed features + w_size * (1 - (area_a + area_b) / A)
    + w_fill * (1 - (box(a u b) - area_a - area_b) / A); the most similar adjacent
    pair merges first (ties: the smallest (a, b)); a merge adds histograms,
    features and areas and unites boxes.

    Args:
        hist (Tensor[N, B]): per-node histogram counts.
        area (Tensor[N]): per-node pixel counts.
        edges (Tensor[E, 2] int): adjacent pairs (any order; duplicates ignored).
        feats (Tensor[N, C], optional): summed features (needed when w_feat != 0).
        boxes (Tensor[N, 4] int, optional): x0, y0, x1, y1 (needed when w_fill != 0).

    Returns:
        merges (Tensor[M, 2] int64): merge i makes node N + i from (a, b), a < b.
        sims (Tensor[M] float64): the similarity at which each merge happened.
    """
    op = "merge_graph"
    device = hist.device
    hist = torch.as_tensor(hist).cpu().float()
    if hist.dim() != 2:
        raise ValueError(f"{op}: hist should have shape [N, B], got {tuple(hist.shape)}")
    n = hist.shape[0]
    area = torch.as_tensor(area).cpu().double()
    edges = torch.as_tensor(edges).cpu()
    if edges.numel() == 0:
        edges = edges.reshape(0, 2)
    if edges.is_floating_point():
        raise TypeError(f"{op}: edges should be an integer tensor, got dtype {edges.dtype}")
    edges = edges.long()
    if feats is not None:
        feats = torch.as_tensor(feats).cpu().float()
    if boxes is not None:
        boxes = torch.as_tensor(boxes).cpu().long()
    if area.shape != (n,):
        raise ValueError(f"{op}: area should have shape [{n}], got {tuple(area.shape)}")
    merges, sims = ops().merge_graph(
        hist, feats, area, boxes, edges, float(w_hist), float(w_feat), float(w_size), float(w_fill)
    )
    return merges.to(device), sims.to(device)


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique (a, b), a < b, of labels that touch (4-neighbourhood): int64 [E, 2]."""
    lab = np.asarray(labels, np.int64)
    n = int(lab.max()) + 1 if lab.size else 0
    h = np.stack([lab[:, :-1].ravel(), lab[:, 1:].ravel()], 1)
    v = np.stack([lab[:-1, :].ravel(), lab[1:, :].ravel()], 1)
    pairs = np.concatenate([h, v])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(1)
    # Unique through one int64 key (faster than np.unique(axis=0)).
    key = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([key // max(n, 1), key % max(n, 1)], 1).astype(np.int64)


