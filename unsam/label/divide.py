"""Divide: MaskCut (iterative Normalized Cut) on the patch graph of one image.

ALGORITHM.md §2. One affinity per image; each further cut clears the rows and
columns of covered patches in the bit graph (MaskCut's zeroed features) and
warm-starts Lanczos from the previous vector. The published pipeline ran a
trained detector here (up to 100 regions); we have none, so after the
MaskCut cuts the uncovered background is split into its connected parts and
every large region is cut again inside its own graph (recursion), until the
regions cover the image or the cuts stop being meaningful.

Entry point: :func:`divide_images` (settings: :class:`DivideConfig`) — patch
features in, each image's regions as pixel masks (:class:`~unsam.label.items.MaskItem`)
out. :func:`divide_batch` is its first half (the regions on the patch grid).

Two bipartition rules (``DivideConfig.rule``):

- ``"published"`` — MaskCut as released (CutLER ``maskcut.py``): the mean
  split, the seed and the three-corner flip over all N patches (covered ones,
  whose features are zeroed, included), the seed's 4-connected component; a
  cut whose IoU with the previous cut's mask is above ``max_prev_iou`` or that
  covers at most ``min_area`` of the patches is dropped (never the first) and,
  as published, leaves the graph as it was, so the next cut sees the same graph.
- ``"uncovered"`` — the same rule restricted to the patches no earlier cut
  covers (mean, seed and component among them); a dropped cut's patches count
  as covered, and two drops end the image. With many cuts the published rule
  lets the covered patches (which all share one eigenvector value) join and
  dominate later cuts; this rule keeps each cut about the rest of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import torch

from unsam.kernels import affinity, lanczos_fiedler
from unsam.kernels.graph import mask_graph, pack_bits, popcount_rows, subgraph
from unsam.label.items import MaskItem, upsample_grid_masks

_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


@dataclass
class DivideConfig:
    """Settings of the divide stage (defaults: the published MaskCut ones where they exist)."""

    tau: float = 0.15  #: affinity threshold on cosine similarity
    eps: float = 1e-5  #: weight of non-edges (exact eps graph)
    max_cuts: int = 10  #: MaskCut cuts on the whole image (published: 3)
    min_area: float = 0.01  #: a region must cover more than this fraction of the patches
    max_prev_iou: float = 0.5  #: drop a cut whose IoU with the previous mask is above this
    background_regions: bool = True  #: uncovered connected parts become regions too
    recursive_depth: int = 2  #: cut regions again inside their own graph, this deep
    recursive_min_area: float = 0.04  #: only regions larger than this fraction are cut again
    # A recursive cut whose NCut value is near 1 splits a region with no structure
    # (on an unstructured graph every balanced cut scores 1); such graphs also have
    # near-equal eigenvalues, so their "Fiedler vector" is not even defined.
    recursive_max_ncut: float | None = None  #: keep a recursive cut only when its NCut value is below this (None: any)
    max_regions: int = 60  #: cap on regions per image
    tol: float = 1e-5  #: Lanczos residual tolerance
    max_iter: int = 200  #: Lanczos step cap
    rule: str = "uncovered"  #: bipartition and drop rule: "uncovered" or "published" (module docstring)
    # Grid -> pixels. "bilinear": bilinear upsample of the grid mask to the working
    # resolution, threshold 0.5. "published": as MaskCut writes its masks: nearest
    # upsample to the divide resolution, later masks lose the patches of earlier ones
    # there, then PIL's default resize (bicubic) to the image size, threshold at half
    # the maximum.
    upsample: str = "bilinear"  #: "bilinear" or "published"
    # MaskCut's step 5 (ALGORITHM.md §2.5, unsam.label.crf): each mask, nearest-upsampled
    # to the divide resolution, refined by the dense CRF against the image resized there
    # with PIL's LANCZOS (the released I_new), its holes filled, dropped when its IoU with
    # the unrefined mask is < 0.5; then written as "published" writes it.
    crf: bool = False  #: MaskCut's dense CRF step (needs upsample "published")


DIVIDE_RULES = ("uncovered", "published")
UPSAMPLE_RULES = ("bilinear", "published")


def check_divide_config(cfg: DivideConfig) -> None:
    """Raise ValueError for settings the stage cannot run with (checked once per run)."""
    if cfg.rule not in DIVIDE_RULES:
        raise ValueError(f"config: divide.rule should be one of {', '.join(DIVIDE_RULES)}, got {cfg.rule!r}")
    if cfg.upsample not in UPSAMPLE_RULES:
        raise ValueError(f"config: divide.upsample should be one of {', '.join(UPSAMPLE_RULES)}, got {cfg.upsample!r}")
    if cfg.crf and cfg.upsample != "published":
        raise ValueError("config: divide.crf (MaskCut's CRF step) needs divide.upsample 'published'")
    if cfg.max_cuts < 0 or cfg.max_regions < 0 or cfg.recursive_depth < 0:
        raise ValueError("config: divide.max_cuts, max_regions and recursive_depth should be >= 0")


@dataclass
class Region:
    """One divide region on the patch grid."""

    mask: np.ndarray  #: [gh, gw] bool
    lam: float  #: lambda_2 of the cut that produced it (relaxed NCut value)
    ncut: float  #: NCut value of the bipartition that produced it
    depth: int  #: 0: cut of the whole image (or background part); d: d-th recursive cut
    parent: int  #: index of the region it was cut out of, -1 for none

    @property
    def area(self) -> float:
        return float(self.mask.mean())


def _component(fg: np.ndarray, seed: int) -> np.ndarray:
    lab, _ = scipy.ndimage.label(fg, structure=_FOUR)
    s = lab.flat[seed]
    return lab == s if s else np.zeros_like(fg)


#: Ties in reading an eigenvector: entries within TIE_RTOL x max|x - mean| of the mean
#: are not above it, and entries within TIE_RTOL of a maximum tie with it (the first
#: wins). Degenerate graphs (symmetric or nearly isolated patches) have exactly equal
#: entries, which rounding would otherwise split differently in every solver.
TIE_RTOL = 1e-9


def first_max(v: np.ndarray) -> int:
    """Index of the first entry within TIE_RTOL of the maximum (NaN and -inf ignored)."""
    fin = v[np.isfinite(v)]
    top = fin.max()
    return int(np.argmax(np.where(np.isfinite(v), v, -np.inf) >= top - TIE_RTOL * max(np.abs(fin).max(), 1e-300)))


def canonical_sign(x: np.ndarray) -> np.ndarray:
    """x with the divide's sign rule: the first entry of largest |x| (within TIE_RTOL) is positive."""
    return -x if x[first_max(np.abs(x))] < 0 else x


def above_mean(x: np.ndarray, mean: float, spread: float) -> np.ndarray:
    """x > mean, with entries within TIE_RTOL x spread of the mean counting as not above."""
    return (x - mean) > TIE_RTOL * spread


def bipartition(x: np.ndarray, allowed: np.ndarray, corners: bool = True) -> tuple[np.ndarray, int]:
    """MaskCut's rule (ALGORITHM.md §2.3) on a 2-D eigenvector.

    x [gh, gw]; allowed [gh, gw] bool (uncovered patches). Foreground = x above
    its mean; seed = argmax |x|; flip if >= 3 of the 4 corners are foreground,
    else flip if the seed is not foreground; the mask is the 4-connected
    component of the (allowed) foreground containing the seed (argmax of the
    signed vector after the rule). Returns (mask, seed index).
    """
    xm = np.where(allowed, x, np.nan)
    mean = np.nanmean(xm)
    fg = above_mean(x, mean, np.nanmax(np.abs(xm - mean)))
    seed = first_max(np.abs(xm))
    flip = False
    if corners:
        c = [fg[0, 0], fg[0, -1], fg[-1, 0], fg[-1, -1]]
        flip = sum(bool(v) for v in c) >= 3
    if not flip and not fg.flat[seed]:
        flip = True
    if flip:
        fg = ~fg
        seed = first_max(-xm)
    else:
        seed = first_max(xm)
    fg &= allowed
    return _component(fg, seed), seed


def bipartition_published(x: np.ndarray) -> np.ndarray:
    """MaskCut's rule as released, over all patches of a 2-D eigenvector x [gh, gw]:
    foreground = x above its mean; seed = argmax |x|; flip if >= 3 corners are
    foreground, else if the seed is not; after a flip the seed is argmax(-x),
    else argmax(x); the mask is the seed's 4-connected foreground component."""
    flat = x.reshape(-1)
    mean = flat.sum() / flat.size
    fg = above_mean(flat, mean, np.abs(flat - mean).max())
    seed = first_max(np.abs(flat))
    grid = fg.reshape(x.shape)
    corners = int(grid[0, 0]) + int(grid[0, -1]) + int(grid[-1, 0]) + int(grid[-1, -1])
    if corners >= 3 or not fg[seed]:
        fg = ~fg
        seed = first_max(-flat)
    else:
        seed = first_max(flat)
    return _component(fg.reshape(x.shape), seed)


def _ncut_value(bits: torch.Tensor, deg: torch.Tensor, a: np.ndarray, eps: float) -> float:
    """cut(A, B)/assoc(A) + cut(A, B)/assoc(B) on the exact eps graph (B = all the rest)."""
    n = deg.shape[0]
    ia = torch.from_numpy(np.flatnonzero(a)).to(bits.device)
    if ia.numel() == 0 or ia.numel() == n:
        return 1.0
    inside = torch.zeros(n, dtype=torch.bool, device=bits.device)
    inside[ia] = True
    rows = bits.index_select(0, ia) & pack_bits(inside[None])  # A-to-A bits only
    within = float(popcount_rows(rows).sum()) * (1 - eps) + eps * ia.numel() ** 2
    assoc_a = float(deg[ia].sum())
    assoc_b = float(deg.sum()) - assoc_a
    cut = assoc_a - within
    return cut / max(assoc_a, 1e-12) + cut / max(assoc_b, 1e-12)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


def divide(feats: torch.Tensor, cfg: DivideConfig | None = None) -> list[Region]:
    """Divide one image into regions. feats [gh, gw, C] (any device) -> regions, in order found."""
    if feats.dim() != 3:
        raise ValueError(f"divide: feats should have shape [gh, gw, C], got {tuple(feats.shape)}")
    return divide_batch(feats[None], cfg)[0]


class _CutState:
    """Per-image state of the MaskCut loop."""

    def __init__(self, gh: int, gw: int):
        self.covered = np.zeros((gh, gw), bool)
        self.regions: list[Region] = []
        self.prev: np.ndarray | None = None
        self.failures = 0
        self.done = False


def divide_batch(feats: torch.Tensor, cfg: DivideConfig | None = None) -> list[list[Region]]:
    """Divide several images at once: feats [B, gh, gw, C] -> regions per image.

    The whole-image cuts of all images run in lockstep, one batched affinity and
    one batched Lanczos call per cut (a GPU solves the batch as cheaply as one
    graph); the bipartition rules run per image on the CPU (a 60 x 60 grid).
    """
    cfg = cfg or DivideConfig()
    if feats.dim() != 4:
        raise ValueError(f"divide_batch: feats should have shape [B, gh, gw, C], got {tuple(feats.shape)}")
    nb, gh, gw, c = feats.shape
    n = gh * gw
    if n < 2 or nb == 0:
        return [[] for _ in range(nb)]
    bits_all, deg_all = affinity(feats.reshape(nb, n, c), tau=cfg.tau, eps=cfg.eps)
    states = [_CutState(gh, gw) for _ in range(nb)]
    x_all: torch.Tensor | None = None
    for step in range(cfg.max_cuts):
        for st in states:
            # The published loop makes its N cuts whatever they cover.
            full = cfg.rule != "published" and st.covered.mean() > 1 - cfg.min_area
            if full or len(st.regions) >= cfg.max_regions:
                st.done = True
        active = [i for i, st in enumerate(states) if not st.done]
        if not active:
            break
        ia = torch.tensor(active, device=bits_all.device)
        bits, deg0 = bits_all.index_select(0, ia), deg_all.index_select(0, ia)
        if step == 0:
            b, d = bits, deg0
        else:
            keep = torch.from_numpy(np.stack([~states[i].covered.reshape(-1) for i in active])).to(bits.device)
            b, d = mask_graph(bits, keep, cfg.eps)
        x0 = None if x_all is None else x_all.index_select(0, ia.to(x_all.device))
        x, lam, _ = lanczos_fiedler(b, d, eps=cfg.eps, tol=cfg.tol, max_iter=cfg.max_iter, x0=x0)
        if x_all is None:
            x_all = torch.zeros(nb, n, dtype=x.dtype, device=x.device)
        x_all[ia.to(x.device)] = x
        xs = np.stack([canonical_sign(v) for v in x.cpu().numpy()]).reshape(len(active), gh, gw)
        lams = lam.cpu().numpy()
        for j, i in enumerate(active):
            st = states[i]
            if cfg.rule == "published":
                mask = bipartition_published(xs[j])
                dropped = step > 0 and (
                    (st.prev is not None and _iou(mask, st.prev) > cfg.max_prev_iou) or mask.mean() <= cfg.min_area
                )
                if dropped:
                    st.prev = None  # as published: the next cut sees the same graph, compared with nothing
                    continue
                ncut = _ncut_value(b[j], d[j], mask.reshape(-1), cfg.eps)
                st.regions.append(Region(mask, float(lams[j]), ncut, 0, -1))
                st.covered |= mask
                st.prev = mask
                continue
            mask, _ = bipartition(xs[j], ~st.covered)
            too_small = mask.mean() <= cfg.min_area
            duplicate = st.prev is not None and _iou(mask, st.prev) > cfg.max_prev_iou
            if too_small or duplicate:
                st.failures += 1
                st.covered |= mask  # move on: the next cut must look elsewhere
                if st.failures >= 2 or not mask.any():
                    st.done = True
                continue
            ncut = _ncut_value(b[j], d[j], mask.reshape(-1), cfg.eps)
            st.regions.append(Region(mask, float(lams[j]), ncut, 0, -1))
            st.covered |= mask
            st.prev = mask
    return [_finish_regions(st, bits_all[i], cfg) for i, st in enumerate(states)]


def _finish_regions(st: _CutState, bits: torch.Tensor, cfg: DivideConfig) -> list[Region]:
    """Background parts and recursive cuts of one image (graph bits [N, W])."""
    regions = st.regions
    gh, gw = st.covered.shape
    n = gh * gw
    if cfg.background_regions:
        lab, k = scipy.ndimage.label(~st.covered, structure=_FOUR)
        for i in range(1, k + 1):
            m = lab == i
            if m.mean() > cfg.min_area and len(regions) < cfg.max_regions:
                regions.append(Region(m, 1.0, 1.0, 0, -1))
    # Recursion: cut large regions inside their own induced graph.
    todo = list(range(len(regions)))
    while todo and len(regions) < cfg.max_regions:
        ri = todo.pop(0)
        r = regions[ri]
        if r.depth >= cfg.recursive_depth or r.area <= cfg.recursive_min_area:
            continue
        idx = np.flatnonzero(r.mask.reshape(-1))
        if idx.size < 8:
            continue
        it = torch.from_numpy(idx).to(bits.device)
        sb, sd = subgraph(bits, it, cfg.eps)
        sx, lam, _ = lanczos_fiedler(sb, sd, eps=cfg.eps, tol=cfg.tol, max_iter=cfg.max_iter)
        xs = np.full(n, np.nan)
        xs[idx] = canonical_sign(sx.cpu().numpy())
        xs = xs.reshape(gh, gw)
        allowed = r.mask
        for sign in (1.0, -1.0):
            v = sign * xs[allowed]
            mean = v.mean()
            fg = above_mean(sign * xs, mean, np.abs(v - mean).max()) & allowed
            seed = first_max(np.where(allowed, sign * xs, -np.inf))
            part = _component(fg, seed)
            if part.mean() <= cfg.min_area or part.sum() >= 0.95 * r.mask.sum():
                continue
            if len(regions) >= cfg.max_regions:
                break
            ncut = _ncut_value(sb, sd, part.reshape(-1)[idx], cfg.eps)
            if cfg.recursive_max_ncut is not None and not ncut < cfg.recursive_max_ncut:
                continue
            regions.append(Region(part, float(lam), ncut, r.depth + 1, ri))
            todo.append(len(regions) - 1)
    return regions


# ------------------------------------------------------------------ pixels


def _published_big(grid: np.ndarray, divide_size: int) -> np.ndarray:
    """A grid mask nearest-upsampled to the divide resolution (MaskCut's ``bipartition``)."""
    rep = divide_size // grid.shape[0], divide_size // grid.shape[1]
    return np.repeat(np.repeat(grid, rep[0], 0), rep[1], 1)


def _published_resize(big: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask at the divide resolution as MaskCut writes it at the image's size: PIL's default
    resize (bicubic) of the uint8 mask, foreground above half the maximum."""
    from PIL import Image

    a = np.asarray(Image.fromarray(np.uint8(big * 255)).resize((width, height)))
    top = int(a.max())
    return a > top / 2.0 if top > 0 else np.zeros((height, width), bool)


def _published_pixels(grid: np.ndarray, divide_size: int, height: int, width: int) -> np.ndarray:
    """A grid mask as MaskCut writes it without its CRF step: nearest upsample to the divide
    resolution, PIL's default resize (bicubic) to the image size, foreground above half the
    maximum."""
    return _published_resize(_published_big(grid, divide_size), height, width)


def _crf_image(image: np.ndarray, divide_size: int) -> np.ndarray:
    """The image the released CRF step sees: resized to the divide resolution with PIL's LANCZOS."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((divide_size, divide_size), Image.LANCZOS))


def region_pixels(
    regions: list[Region],
    work_hw: tuple[int, int],
    image_hw: tuple[int, int],
    divide_size: int,
    cfg: DivideConfig,
    image: np.ndarray | None = None,
    crf=None,
) -> list[np.ndarray]:
    """Pixel masks [h, w] (the working resolution ``work_hw``) of one image's regions, disjoint
    among regions of the same depth (later masks lose what earlier ones claimed) and inside
    their parents. ``divide_size``: the side of the square the features were taken at.

    With ``cfg.upsample == "published"`` the claiming happens on the grid (as MaskCut does
    at its nearest-upsampled resolution) and each mask is made at the image's size first:
    exactly MaskCut's mask when the working resolution is the image's. With ``cfg.crf``
    MaskCut's CRF step runs in between, on ``image`` ([H, W, 3] uint8) with the settings
    ``crf`` (:class:`~unsam.label.crf.CRFConfig`); a mask it drops comes out empty.
    """

    h, w = work_hw
    claimed: dict[int, np.ndarray] = {}
    out: list[np.ndarray] = []
    if cfg.upsample == "published":
        grids = []
        for r in regions:
            g = r.mask.copy()
            c = claimed.setdefault(r.depth, np.zeros_like(g))
            g &= ~c
            if r.parent >= 0:
                g &= regions[r.parent].mask
            c |= g
            grids.append(g)
        bigs = [_published_big(g, divide_size) for g in grids]
        if cfg.crf and bigs:
            from unsam.label.crf import crf_refine

            if image is None:
                raise ValueError("region_pixels: divide.crf needs the image")
            refined = crf_refine(_crf_image(image, divide_size), np.stack(bigs), crf)
            bigs = [np.zeros_like(b) if r is None else r for b, r in zip(bigs, refined)]
        for big in bigs:
            m = _published_resize(big, *image_hw)
            if tuple(image_hw) != tuple(work_hw):  # nearest sampling down to the working resolution
                ys = ((np.arange(h) + 0.5) * image_hw[0] / h).astype(np.int64)
                xs = ((np.arange(w) + 0.5) * image_hw[1] / w).astype(np.int64)
                m = m[ys][:, xs]
            out.append(m)
        return out
    for r in regions:
        m = upsample_grid_masks(r.mask[None].astype(np.float32), h, w)[0]
        c = claimed.setdefault(r.depth, np.zeros((h, w), bool))
        m &= ~c
        if r.parent >= 0:
            m &= out[r.parent]
        c |= m
        out.append(m)
    return out


def region_items(
    regions: list[Region],
    work_hw: tuple[int, int],
    image_hw: tuple[int, int],
    divide_size: int,
    cfg: DivideConfig,
    image: np.ndarray | None = None,
    crf=None,
) -> list[MaskItem]:
    """One image's regions as masks at the working resolution (source "divide"), empty ones
    dropped. Score: 1 - NCut / 2 (a clean cut scores near 1). ``meta``: the cut's depth,
    lambda_2 and NCut value, ``key`` ("divide", index) and ``up`` (the region it was cut
    out of, for the recursive cuts)."""
    items = []
    for i, (r, m) in enumerate(zip(regions, region_pixels(regions, work_hw, image_hw, divide_size, cfg, image, crf))):
        item = MaskItem((0, 0, m.shape[1], m.shape[0]), m, float(np.clip(1.0 - r.ncut / 2.0, 0.0, 1.0)), "divide")
        if item.tighten() is None:
            continue
        item.meta = {"depth": r.depth, "lam": r.lam, "ncut": r.ncut, "key": ("divide", i)}
        if r.parent >= 0:
            item.meta["up"] = ("divide", r.parent)
        items.append(item)
    return items


def divide_images(
    feats: torch.Tensor,
    image_sizes: list[tuple[int, int]],
    work_sizes: list[tuple[int, int]],
    divide_size: int,
    cfg: DivideConfig | None = None,
    images: list[np.ndarray] | None = None,
    crf=None,
) -> list[list[MaskItem]]:
    """The divide stage: patch features [B, gh, gw, C] of B images (taken at
    ``divide_size`` x ``divide_size``) -> each image's regions as masks at its working
    resolution (see :func:`region_items`). ``images`` ([H, W, 3] uint8) and ``crf``
    (:class:`~unsam.label.crf.CRFConfig`): for MaskCut's CRF step (``cfg.crf``)."""
    cfg = cfg or DivideConfig()
    regions = divide_batch(feats, cfg)
    ims = images if images is not None else [None] * len(regions)
    return [region_items(r, wk, hw, divide_size, cfg, im, crf) for r, wk, hw, im in zip(regions, work_sizes, image_sizes, ims)]
