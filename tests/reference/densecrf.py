"""Python references of the dense CRF (``unsam.kernels.dense_crf``): the tests' oracles.

Two references, proving different things:

- :func:`dense_crf_reference` with ``exact=False`` — the same algorithm as the op and as
  Krähenbühl's densecrf (what ``pydensecrf2`` runs): the permutohedral lattice of Adams et
  al. (2010) in plain numpy, float32 throughout, with the library's arithmetic step by step
  (elevation, rounding to the nearest remainder-0 point, barycentric weights, splat in pixel
  order, one blur pass per lattice axis, slice scaled by alpha = 1 / (1 + 2^-d)), symmetric
  normalisation, Potts compatibility and the two-label mean field carried as two channels.
  It shows that the op computes *this* lattice and *this* mean field (the op carries one
  channel per mask, the foreground: the lattice filter is linear, so the background's
  filtered field is the filtered constant minus the foreground's).
- ``exact=True`` — the mean field with the Gaussian kernels evaluated exactly,
  k(i, j) = exp(-|f_i - f_j|^2 / 2) over all pairs (the image itself included, as the
  library's lattice includes it), O(N^2): small images only. It shows what the lattice
  approximates, in particular the units of the parameters (sxy and srgb are standard
  deviations in pixels and intensity levels) and the sign of the compatibility; the two
  agree only approximately (the lattice's interpolation blurs a little more).

Both take CutLER's unary (``maskcut/crf.py``): logits (1 - m, m) of a mask m, softmax,
``unary_from_softmax`` (clipped at 1e-5), float32.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "PUBLISHED",
    "bilateral_features",
    "dense_crf_reference",
    "gaussian_features",
    "lattice_filter",
    "unary_from_mask",
]

#: CutLER's ``maskcut/crf.py``: (gaussian sxy, compat), (bilateral sxy, srgb, compat), iterations.
PUBLISHED = {"gaussian_sxy": 3.0, "gaussian_compat": 7.0, "bilateral_sxy": 50.0, "bilateral_srgb": 5.0,
             "bilateral_compat": 10.0, "iterations": 10}

F32 = np.float32


def gaussian_features(h: int, w: int, sxy: float) -> np.ndarray:
    """[N, 2] float32 (x / sxy, y / sxy), pixels in raster order (``DenseCRF2D``)."""
    yy, xx = np.mgrid[0:h, 0:w]
    s = F32(sxy)
    return np.stack([xx.ravel().astype(F32) / s, yy.ravel().astype(F32) / s], 1)


def bilateral_features(image: np.ndarray, sxy: float, srgb: float) -> np.ndarray:
    """[N, 5] float32 (x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)."""
    h, w = image.shape[:2]
    pos = gaussian_features(h, w, sxy)
    rgb = image.reshape(-1, 3).astype(F32) / F32(srgb)
    return np.concatenate([pos, rgb], 1)


class _Lattice:
    """The permutohedral lattice of features [N, d]: each point's d + 1 enclosing vertices
    and barycentric weights, and each vertex's two neighbours along each of the d + 1 axes."""

    def __init__(self, f: np.ndarray):
        n, d = f.shape
        self.d = d
        f = f.astype(F32)
        inv_std = F32(math.sqrt(2.0 / 3.0) * (d + 1))
        scale = np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std) for i in range(d)], F32)
        # Elevate onto the plane x . 1 = 0 of R^(d+1) (Adams et al. p.5).
        el = np.zeros((n, d + 1), F32)
        sm = np.zeros(n, F32)
        for j in range(d, 0, -1):
            cf = f[:, j - 1] * scale[j - 1]
            el[:, j] = sm - F32(j) * cf
            sm = sm + cf
        el[:, 0] = sm
        # Nearest remainder-0 point: each coordinate rounded (half to even) to a multiple of d + 1.
        down, up = F32(1.0) / F32(d + 1), F32(d + 1)
        v = np.rint(el * down)
        rem0 = v * up
        total = v.sum(1).astype(np.int64)
        diff = el - rem0
        rank = np.zeros((n, d + 1), np.int64)
        for i in range(d):
            for j in range(i + 1, d + 1):
                c = diff[:, i] < diff[:, j]
                rank[:, i] += c
                rank[:, j] += ~c
        # Back onto the plane when the rounded coordinates do not sum to 0.
        rank += total[:, None]
        lo, hi = rank < 0, rank > d
        rank[lo] += d + 1
        rem0[lo] += up
        rank[hi] -= d + 1
        rem0[hi] -= up
        bary = np.zeros((n, d + 2), F32)
        rows = np.arange(n)
        for i in range(d + 1):
            vv = (el[:, i] - rem0[:, i]) * down
            p = d - rank[:, i]
            bary[rows, p] += vv
            bary[rows, p + 1] -= vv
        bary[:, 0] += F32(1.0) + bary[:, d + 1]
        # The d + 1 vertices (keys: the first d coordinates; the last is minus their sum).
        canonical = np.array([[r if j <= d - r else r - (d + 1) for j in range(d + 1)] for r in range(d + 1)], np.int64)
        rem0i = rem0.astype(np.int64)
        keys = np.stack([rem0i[:, :d] + canonical[r][rank[:, :d]] for r in range(d + 1)], 1)  # [N, d+1, d]
        flat = keys.reshape(-1, d)
        lo_k = flat.min(0) - d - 1
        span = flat.max(0) + d + 2 - lo_k
        assert float(np.prod(span.astype(np.float64))) < 2.0**62, "lattice keys too spread for the reference's packing"
        radix = np.concatenate([[1], np.cumprod(span[:-1])]).astype(np.int64)

        def pack(k):
            return ((k - lo_k) * radix).sum(-1)

        uniq, inv = np.unique(pack(flat), return_inverse=True)
        self.m = uniq.size
        self.offset = inv.reshape(n, d + 1).astype(np.int64) + 1  # row 0: the empty vertex (zeros)
        self.weight = bary[:, : d + 1].copy()
        # Vertex keys back from the packed values, then their neighbours along each axis.
        vk = np.empty((self.m, d), np.int64)
        rest = uniq.copy()
        for i in range(d - 1, -1, -1):
            vk[:, i] = rest // radix[i] + lo_k[i]
            rest = rest % radix[i]
        self.nbr = np.zeros((d + 1, 2, self.m), np.int64)
        for j in range(d + 1):
            n1, n2 = vk - 1, vk + 1
            if j < d:
                n1[:, j] = vk[:, j] + d
                n2[:, j] = vk[:, j] - d
            for s, nk in enumerate((n1, n2)):
                pk = pack(nk)
                pos = np.clip(np.searchsorted(uniq, pk), 0, self.m - 1)
                self.nbr[j, s] = np.where(uniq[pos] == pk, pos + 1, 0)

    def filter(self, values: np.ndarray) -> np.ndarray:
        """values [N, V] float32 -> [N, V]: splat, blur, slice (the library's order of additions)."""
        n, vsz = values.shape
        lat = np.zeros((self.m + 1, vsz), F32)
        # Splat: each vertex sums its points in raster order (np.add.at is sequential).
        idx = self.offset.reshape(-1)
        contrib = (self.weight.reshape(-1, 1) * np.repeat(values.astype(F32), self.d + 1, 0)).astype(F32)
        np.add.at(lat, idx, contrib)
        half = F32(0.5)
        for j in range(self.d + 1):
            new = lat.copy()
            new[1:] = lat[1:] + half * (lat[self.nbr[j, 0]] + lat[self.nbr[j, 1]])
            lat = new
        alpha = F32(1.0) / (F32(1.0) + F32(2.0) ** F32(-self.d))
        out = np.zeros((n, vsz), F32)
        for r in range(self.d + 1):
            out = out + (self.weight[:, r : r + 1] * lat[self.offset[:, r]]) * alpha
        return out


def lattice_filter(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The permutohedral approximation of sum_j exp(-|f_i - f_j|^2 / 2) v_j (up to a constant
    gain): features [N, d], values [N, V] -> [N, V] float32."""
    return _Lattice(np.asarray(features, F32)).filter(np.asarray(values, F32))


class _Exact:
    """The Gaussian kernel of features [N, d] as a dense matrix (small N only)."""

    def __init__(self, f: np.ndarray):
        f = f.astype(np.float64)
        d2 = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
        self.k = np.exp(-0.5 * d2)

    def filter(self, values: np.ndarray) -> np.ndarray:
        return (self.k @ values.astype(np.float64)).astype(F32)


def unary_from_mask(mask: np.ndarray) -> np.ndarray:
    """CutLER's unary of a mask [H, W] (bool or float in [0, 1]): [2, N] float32 energies
    (background, foreground) = -log(clip(softmax(1 - m, m), 1e-5))."""
    m = np.asarray(mask, np.float64).reshape(-1)
    logits = np.stack([1.0 - m, m])
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    return (-np.log(np.clip(p, 1e-5, 1.0))).astype(F32)


def _exp_normalize(x: np.ndarray) -> np.ndarray:
    b = np.exp(x - x.max(0))
    return (b / b.sum(0)).astype(F32)


def dense_crf_reference(
    image: np.ndarray,
    mask: np.ndarray,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 7.0,
    bilateral_sxy: float = 50.0,
    bilateral_srgb: float = 5.0,
    bilateral_compat: float = 10.0,
    iterations: int = 10,
    exact: bool = False,
) -> np.ndarray:
    """Mean-field marginals Q [2, H, W] float32 (background, foreground) of CutLER's CRF on one
    mask: image [H, W, 3] uint8, mask [H, W]. ``exact``: dense Gaussian kernels instead of
    the lattice. MAP: ``Q.argmax(0)`` (ties: background)."""
    h, w = mask.shape
    unary = unary_from_mask(mask)
    make = _Exact if exact else _Lattice
    kernels = []
    for feats, compat in (
        (gaussian_features(h, w, gaussian_sxy), gaussian_compat),
        (bilateral_features(np.asarray(image, np.uint8), bilateral_sxy, bilateral_srgb), bilateral_compat),
    ):
        k = make(feats)
        # Symmetric normalisation: D^-1/2 K D^-1/2 with D = K 1 (the lattice's gain cancels).
        deg = k.filter(np.ones((h * w, 1), F32))[:, 0]
        norm = (1.0 / np.sqrt(deg.astype(np.float64) + 1e-20)).astype(F32)
        kernels.append((k, norm, F32(compat)))
    q = _exp_normalize(-unary)
    for _ in range(iterations):
        tmp = -unary
        for k, norm, compat in kernels:
            filt = (k.filter((q * norm[None]).T).T * norm[None]).astype(F32)
            # Potts: the library's compatibility is -w, subtracted: same label attracts.
            tmp = tmp - (-compat * filt)
        q = _exp_normalize(tmp)
    return q.reshape(2, h, w)
