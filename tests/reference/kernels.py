"""Python references of the compiled graph kernels (``unsam.kernels``): the tests' oracles.

Each is the plain version of its op's documented rule, slow on purpose:

- :func:`affinity_reference` — MaskCut's dense thresholded cosine graph;
- :func:`fiedler_reference` — the published dense generalized eigensolver, ``eigh(D - A, D)``;
- :func:`merge_levels_reference` — a Python scan over every edge before each merge;
- :func:`graph_segment_reference` — the Felzenszwalb–Huttenlocher recursion;
- :func:`merge_graph_reference` — a region graph merged to the end, edge scan per merge.

They import nothing from ``unsam`` but the kernels' documented constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unsam.kernels.merge import DEFAULT_THRESHOLDS

__all__ = [
    "affinity_reference",
    "dense_graph",
    "fiedler_reference",
    "fix_sign",
    "graph_segment_reference",
    "merge_graph_reference",
    "merge_levels_reference",
]


def dense_graph(bits: torch.Tensor, deg: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The exact dense float64 graph A = (1 - eps) B + eps 1 1^T from the bit rows [N, W] int32."""
    n = deg.shape[-1]
    shifts = torch.arange(32, device=bits.device, dtype=torch.int32)
    b = ((bits.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :n].double()
    return (1.0 - eps) * b + eps


def affinity_reference(
    feats: torch.Tensor, tau: float = 0.15, eps: float = 1e-5, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense pure-torch reference (MaskCut's own construction): bool B [B, N, N], deg [B, N]."""
    single = feats.dim() == 2
    if single:
        feats = feats.unsqueeze(0)
        valid = None if valid is None else valid.unsqueeze(0)
    f = torch.nn.functional.normalize(feats.float(), p=2, dim=-1)
    if valid is not None:
        f = f * valid.unsqueeze(-1).float()
    s = f @ f.transpose(-1, -2)
    b = s > tau
    deg = b.double().sum(-1) * (1.0 - eps) + eps * feats.shape[1]
    if single:
        return b[0], deg[0]
    return b, deg


def fix_sign(x: np.ndarray) -> np.ndarray:
    """The documented sign rule: the entry of largest |x| (first index) is positive."""
    i = int(np.argmax(np.abs(x)))
    return -x if x[i] < 0 else x


def fiedler_reference(bits: torch.Tensor, deg: torch.Tensor, eps: float = 1e-5) -> tuple[np.ndarray, float]:
    """The published way: dense generalized eigh of (D - A, D) on the exact graph (O(N^3)).

    bits [N, W], deg [N] -> (x [N] with x^T D x = 1 and the sign rule, lam_2).
    """
    import scipy.linalg

    a = dense_graph(bits, deg, eps).numpy()
    d = np.diag(a.sum(1))
    vals, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 1])
    return fix_sign(vecs[:, 0]), float(vals[0])


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
    thr = [float(t) for t in thresholds]
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


def graph_segment_reference(image, k: float, min_size: int = 20) -> np.ndarray:
    """The FH recursion written out in Python, without smoothing (slow; tests only).

    Same edge set, order and union rule as the kernel: [H, W(, C)] -> labels [H, W].
    """
    a = np.asarray(image, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    h, w, _ = a.shape
    edges = []
    for y in range(h):
        for x in range(w):
            p = y * w + x
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w:
                    d = a[y, x].astype(np.float64) - a[yy, xx].astype(np.float64)
                    edges.append((np.float32(np.sqrt((d * d).sum())), len(edges), p, yy * w + xx))
    edges.sort(key=lambda e: (e[0], e[1]))
    n = h * w
    parent = list(range(n))
    size = [1] * n
    thresh = [float(k)] * n

    def find(p):
        while parent[p] != p:
            p = parent[p]
        return p

    def join(x, y):
        if size[x] < size[y]:
            x, y = y, x
        parent[y] = x
        size[x] += size[y]
        return x

    for wgt, _, p, q in edges:
        x, y = find(p), find(q)
        if x != y and wgt <= thresh[x] and wgt <= thresh[y]:
            r = join(x, y)
            thresh[r] = float(wgt) + k / size[r]
    for _, _, p, q in edges:
        x, y = find(p), find(q)
        if x != y and (size[x] < min_size or size[y] < min_size):
            join(x, y)
    ids: dict[int, int] = {}
    out = np.empty(n, np.int64)
    for p in range(n):
        out[p] = ids.setdefault(find(p), len(ids))
    return out.reshape(h, w)


def merge_graph_reference(hist, area, edges, feats=None, boxes=None, w_hist=1.0, w_feat=0.0, w_size=0.5, w_fill=0.0):
    """Scan every live edge for the best pair before each merge (slow; tests only)."""
    hist = [np.asarray(r, np.float64) for r in np.asarray(hist, np.float32)]
    n = len(hist)
    area = [float(x) for x in np.asarray(area, np.float64)]
    feats = None if feats is None else [np.asarray(r, np.float64) for r in np.asarray(feats, np.float32)]
    boxes = None if boxes is None else [tuple(int(v) for v in b) for b in np.asarray(boxes)]
    total = sum(area)

    def sim(a, b):
        s = 0.0
        ha, hb = hist[a].sum(), hist[b].sum()
        if w_hist != 0 and ha > 0 and hb > 0:
            s += w_hist * float(np.minimum(hist[a] * (1.0 / ha), hist[b] * (1.0 / hb)).sum())
        if w_feat != 0:
            den = float(feats[a] @ feats[a]) * float(feats[b] @ feats[b])
            if den > 0:
                s += w_feat * float(feats[a] @ feats[b]) / np.sqrt(den)
        if total > 0:
            if w_size != 0:
                s += w_size * (1.0 - (area[a] + area[b]) / total)
            if w_fill != 0:
                ba, bb = boxes[a], boxes[b]
                bw = max(ba[2], bb[2]) - min(ba[0], bb[0])
                bh = max(ba[3], bb[3]) - min(ba[1], bb[1])
                s += w_fill * (1.0 - (bw * bh - area[a] - area[b]) / total)
        return s

    live = {tuple(sorted((int(a), int(b)))) for a, b in np.asarray(edges).reshape(-1, 2)}
    merges, sims = [], []
    while live:
        (a, b), s = max(((e, sim(*e)) for e in live), key=lambda es: (es[1], -es[0][0], -es[0][1]))
        c = n + len(merges)
        hist.append(hist[a] + hist[b])
        area.append(area[a] + area[b])
        if feats is not None:
            feats.append(feats[a] + feats[b])
        if boxes is not None:
            ba, bb = boxes[a], boxes[b]
            boxes.append((min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])))
        merges.append((a, b))
        sims.append(s)
        nxt = set()
        for x, y in live:
            x2 = c if x in (a, b) else x
            y2 = c if y in (a, b) else y
            if x2 != y2:
                nxt.add((min(x2, y2), max(x2, y2)))
        live = nxt
    return np.asarray(merges, np.int64).reshape(-1, 2), np.asarray(sims, np.float64)
