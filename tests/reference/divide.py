"""The ``unsam`` preset's divide written the slow, plain way: the reference of ``unsam.label.divide``.

The released UnSAM code runs a trained CutLER detector at this step, which cannot
be had here, so the preset divides with Normalized Cuts (README "Differences from
the published code"). This is that divide with MaskCut's published cost per cut:
the features of covered patches zeroed, a dense float32 affinity, the dense
generalized eigensolver ``scipy.linalg.eigh(D - A, D)``; the background's parts and
the recursive cuts on the region's rows and columns of the image's dense graph.
It is "our dense-solver variant" of the divide, not a published loop.

The reading of an eigenvector follows the preset's documented rules with their
tolerance as a parameter (``tie_rtol``; ``tests/test_parity.py`` checks it equals
``unsam.label.divide.TIE_RTOL``). Imports nothing from ``unsam``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["TIE_RTOL", "dense_divide", "region_pixels"]

#: The tie tolerance of the preset's eigenvector reading (README "Differences from the published code").
TIE_RTOL = 1e-9


def _affinity(feats: torch.Tensor, tau: float, eps: float) -> np.ndarray:
    """Dense MaskCut graph of feats [C, N]: 1 where cos > tau, eps elsewhere (float64)."""
    f = F.normalize(feats, p=2, dim=0)
    s = (f.transpose(0, 1) @ f).cpu().numpy()  # float32, as MaskCut
    return np.where(s > tau, 1.0, eps)


def _first_max(v: np.ndarray, rtol: float) -> int:
    ok = np.isfinite(v)
    top = v[ok].max()
    return int(np.flatnonzero(ok & (v >= top - rtol * max(np.abs(v[ok]).max(), 1e-300)))[0])


def _sign(x: np.ndarray, rtol: float) -> np.ndarray:
    return -x if x[_first_max(np.abs(x), rtol)] < 0 else x


def _component4(fg: np.ndarray, seed: int) -> np.ndarray:
    lab, _ = ndimage.label(fg)  # 4-connectivity
    s = lab.flat[seed]
    return lab == s if s else np.zeros_like(fg)


def _ncut(a: np.ndarray, inside: np.ndarray) -> float:
    if not inside.any() or inside.all():
        return 1.0
    d = a.sum(1)
    cut = a[np.ix_(inside, ~inside)].sum()
    return float(cut / max(d[inside].sum(), 1e-12) + cut / max(d[~inside].sum(), 1e-12))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


def _eig(a: np.ndarray) -> tuple[float, np.ndarray]:
    dm = np.diag(a.sum(1))
    vals, vecs = scipy.linalg.eigh(dm - a, dm, subset_by_index=[1, 2])
    return float(vals[0]), vecs[:, 0].copy()


def dense_divide(feats: torch.Tensor, cfg, tie_rtol: float = TIE_RTOL) -> list[dict]:
    """The preset's divide on patch features [gh, gw, C] with ``cfg`` a DivideConfig-like object
    (tau, eps, max_cuts, min_area, max_prev_iou, background_regions, recursive_depth,
    recursive_min_area, recursive_max_ncut, max_regions; the "uncovered" rule) ->
    ``{"mask", "ncut", "lam", "depth", "parent"}`` per region, in the order found."""
    gh, gw, c = feats.shape
    n = gh * gw
    f = feats.reshape(n, c).T.contiguous()
    full = _affinity(f, cfg.tau, cfg.eps)
    covered = np.zeros((gh, gw), bool)
    regions: list[dict] = []
    prev, failures = None, 0
    for _ in range(cfg.max_cuts):
        if covered.mean() > 1 - cfg.min_area or len(regions) >= cfg.max_regions:
            break
        zeroed = (f.view(c, gh, gw) * torch.from_numpy(~covered).to(f.dtype)).view(c, n)
        a = _affinity(zeroed, cfg.tau, cfg.eps)
        lam, x = _eig(a)
        xg = _sign(x, tie_rtol).reshape(gh, gw)
        allowed = ~covered
        xm = np.where(allowed, xg, np.nan)
        mean = np.nanmean(xm)
        fg = (xg - mean) > tie_rtol * np.nanmax(np.abs(xm - mean))
        seed = _first_max(np.abs(xm), tie_rtol)
        flip = sum(bool(v) for v in (fg[0, 0], fg[0, -1], fg[-1, 0], fg[-1, -1])) >= 3 or not fg.flat[seed]
        if flip:
            fg, seed = ~fg, _first_max(-xm, tie_rtol)
        else:
            seed = _first_max(xm, tie_rtol)
        mask = _component4(fg & allowed, seed)
        if mask.mean() <= cfg.min_area or (prev is not None and _iou(mask, prev) > cfg.max_prev_iou):
            failures += 1
            covered |= mask
            if failures >= 2 or not mask.any():
                break
            continue
        regions.append({"mask": mask, "ncut": _ncut(a, mask.reshape(-1)), "lam": lam, "depth": 0, "parent": -1})
        covered |= mask
        prev = mask
    if cfg.background_regions:
        lab, k = ndimage.label(~covered)
        for i in range(1, k + 1):
            m = lab == i
            if m.mean() > cfg.min_area and len(regions) < cfg.max_regions:
                regions.append({"mask": m, "ncut": 1.0, "lam": 1.0, "depth": 0, "parent": -1})
    todo = list(range(len(regions)))
    while todo and len(regions) < cfg.max_regions:
        ri = todo.pop(0)
        r = regions[ri]
        if r["depth"] >= cfg.recursive_depth or r["mask"].mean() <= cfg.recursive_min_area:
            continue
        idx = np.flatnonzero(r["mask"].reshape(-1))
        if idx.size < 8:
            continue
        sub = full[np.ix_(idx, idx)]
        lam, sx = _eig(sub)
        xs = np.full(n, np.nan)
        xs[idx] = _sign(sx, tie_rtol)
        xs = xs.reshape(gh, gw)
        allowed = r["mask"]
        for sg in (1.0, -1.0):
            v = sg * xs[allowed]
            fg = ((sg * xs - v.mean()) > tie_rtol * np.abs(v - v.mean()).max()) & allowed
            part = _component4(fg, _first_max(np.where(allowed, sg * xs, -np.inf), tie_rtol))
            if part.mean() <= cfg.min_area or part.sum() >= 0.95 * allowed.sum():
                continue
            if len(regions) >= cfg.max_regions:
                break
            ncut = _ncut(sub, part.reshape(-1)[idx])
            if cfg.recursive_max_ncut is not None and not ncut < cfg.recursive_max_ncut:
                continue
            regions.append({"mask": part, "ncut": ncut, "lam": lam, "depth": r["depth"] + 1, "parent": ri})
            todo.append(len(regions) - 1)
    return regions


def _bilinear_rows(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear weights [n_out, n_in] of an align_corners=False resize, edges clamped."""
    m = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        s = max((o + 0.5) * (n_in / n_out) - 0.5, 0.0)  # as F.interpolate: scale = n_in / n_out first
        i0 = min(int(np.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = np.float32(s - i0)
        m[o, i0] += 1.0 - lam
        m[o, i1] += lam
    return m


def region_pixels(regions: list[dict], height: int, width: int) -> list[np.ndarray]:
    """The regions at height x width: each grid mask upsampled bilinearly (threshold 0.5),
    minus what earlier regions of the same depth hold, inside its parent."""
    out, claimed = [], {}
    for r in regions:
        g = r["mask"].astype(np.float32)
        m = (_bilinear_rows(height, g.shape[0]) @ g @ _bilinear_rows(width, g.shape[1]).T) > 0.5
        c = claimed.setdefault(r["depth"], np.zeros((height, width), bool))
        m &= ~c
        if r["parent"] >= 0:
            m &= out[r["parent"]]
        c |= m
        out.append(m)
    return out
