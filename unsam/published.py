"""Ports of the published loops: the speed baseline of the benchmarks and the oracle of the parity tests.

Written from the semantics of the released code (read, not copied), with its
costs kept as they are there, so that "published" in a benchmark table means
the published code's own way of doing the same work:

- :func:`maskcut_forward` — CutLER ``maskcut/maskcut.py`` (``maskcut_forward``):
  per cut a dense float32 affinity from the features (features of covered
  patches zeroed), ``A = (S > tau)`` with ``eps`` where 0, and a dense
  generalized eigensolver ``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])``;
  the bipartition (mean split, seed, three-corner flip, the seed's 4-connected
  component), the drop rule (IoU > 0.5 with the previous mask or <= 1 % of the
  patches, never for the first cut) and its quirk (a dropped cut leaves the
  features unchanged, so the next cut sees the same graph).
- :func:`iterative_merge` — UnSAM ``divide_and_conquer/iterative_merging.py``:
  the merge loop as written (a Python ``max`` over every edge before each
  merge, a new cluster record per merge, the similarities of the new cluster
  to its neighbours one ``torch.dot`` at a time), with its output quirks
  (after each threshold, every cluster that still has an edge and has
  ``min_size`` patches is emitted again).
- :func:`resize_mask`, :func:`windowed_nms`, :func:`annotation` — UnSAM
  ``divide_conquer.py`` / CutLER ``create_annotation_info``: per-mask work on
  full-size arrays (PIL resize of each grid mask, the coverage test, a
  full-image paste, NMS against the next masks by area, RLE of the full mask).

Composed, they run the presets' work the published way:

- :func:`run_maskcut` — the ``maskcut`` preset: :func:`maskcut_forward`, then the
  masks written as ``maskcut.py`` writes them (no CRF).
- :func:`run_unsam` — the ``unsam`` preset: the divide's cuts (this project's
  extra cuts, background parts and recursion, which the released code does
  not have: it runs a detector) each with a dense affinity and the dense
  solver, then per region :func:`iterative_merge`. ``per_mask="released"``
  does the per-mask work as ``divide_conquer.py`` does (every level's masks
  resized with PIL, windowed NMS per region, RLE of full-size masks): the speed
  baseline. ``per_mask="preset"`` follows the preset's documented rules
  instead (each distinct cluster once with its merge-tree parent, bilinear
  upsampling, mask NMS over the image): the parity tests' oracle, still one
  full-size mask at a time.

Nothing in the labeling core imports this module.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

__all__ = [
    "affinity_matrix",
    "annotation",
    "bipartition",
    "coverage",
    "iterative_merge",
    "mask_iou",
    "maskcut_forward",
    "resize_mask",
    "second_smallest_eigenvector",
    "windowed_nms",
]


# ---------------------------------------------------------------- MaskCut (CutLER)


def affinity_matrix(feats: torch.Tensor, tau: float, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Dense MaskCut graph of feats [C, N]: A (float64 [N, N], 1 or eps) and the degrees d."""
    f = F.normalize(feats, p=2, dim=0)
    s = (f.transpose(0, 1) @ f).cpu().numpy()  # float32, as published
    a = s > tau
    a = np.where(a.astype(float) == 0, eps, a)  # bool -> float64: 1 where an edge, eps elsewhere
    return a, a.sum(1)


def second_smallest_eigenvector(a: np.ndarray, d: np.ndarray, sign=None) -> np.ndarray:
    """The published dense generalized solver: eigh(D - A, D) restricted to eigenpairs 1..2.

    ``sign``: a function fixing the eigenvector's sign (LAPACK's is arbitrary; the
    parity tests pass the kernels' rule so both sides cut the same way)."""
    dm = np.diag(d)
    _, vecs = scipy.linalg.eigh(dm - a, dm, subset_by_index=[1, 2])
    x = np.copy(vecs[:, 0])
    return sign(x) if sign is not None else x


def bipartition(x: np.ndarray, dims: tuple[int, int]) -> tuple[np.ndarray, int]:
    """MaskCut's bipartition of a Fiedler vector (all N patches): the seed's component [gh, gw] and the seed."""
    fg = x > np.sum(x) / len(x)
    seed = int(np.argmax(np.abs(x)))
    grid = fg.reshape(dims)
    corners = int(grid[0, 0]) + int(grid[0, -1]) + int(grid[-1, 0]) + int(grid[-1, -1])
    reverse = True if corners >= 3 else not fg[seed]
    if reverse:
        fg = np.logical_not(fg)
        seed = int(np.argmax(-x))
    else:
        seed = int(np.argmax(x))
    objects, _ = ndimage.label(fg.reshape(dims).astype(float))  # default structure: 4-connectivity
    cc = objects[np.unravel_index(seed, dims)]
    return objects == cc, seed


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def maskcut_forward(feats: torch.Tensor, dims: tuple[int, int], tau: float, n: int = 3, eps: float = 1e-5, sign=None):
    """MaskCut on one image's patch features feats [C, N] (N = gh * gw).

    Returns the ``n`` grid masks ([gh, gw] bool; all False where the cut was
    dropped), in cut order, before upsampling and before the later masks lose
    the pixels claimed by earlier ones.
    """
    feats = feats.clone()
    painting = torch.zeros(dims, dtype=feats.dtype)
    current = None
    out = []
    for i in range(n):
        if i > 0:
            painting = ((painting + current) > 0).to(feats.dtype)
            feats = (feats.view(-1, *dims) * (1 - painting)).view(feats.shape[0], -1)
        a, d = affinity_matrix(feats, tau, eps)
        x = second_smallest_eigenvector(a, d, sign)
        mask, _ = bipartition(x, dims)
        if i >= 1 and (mask_iou(current.numpy() > 0, mask) > 0.5 or mask.mean() <= 0.01):
            mask = np.zeros(dims, bool)
        current = torch.from_numpy(mask).to(feats.dtype)
        out.append(mask)
    return out


# ---------------------------------------------------------------- merging (UnSAM)


def _merged(i: int, j: int, clusters: list[dict], dtype: torch.dtype) -> dict:
    c1, c2 = clusters[i], clusters[j]
    mean = ((c1["feature"] + c2["feature"]) / (c1["num_of_patch"] + c2["num_of_patch"])).to(dtype)
    return {
        "feature": c1["feature"] + c2["feature"],
        "normalized_feature": F.normalize(mean, dim=0),
        "mask": (c1["mask"] + c2["mask"]) > 0,
        "num_of_patch": c1["num_of_patch"] + c2["num_of_patch"],
        "neighbors": c1["neighbors"].union(c2["neighbors"]).difference({i, j}),
    }


def iterative_merge(
    features: torch.Tensor, thresholds, min_size: int = 4, tree: dict | None = None, dtype: torch.dtype = torch.float32
) -> list[np.ndarray]:
    """The published merge loop on features [H, W, C]: per threshold, a [K, H, W] stack of masks.

    ``dtype``: of the normalised features and their dot products (published: float32);
    the parity tests pass float64, the precision of the ``merge_levels`` kernel, so that
    near-ties (within float32 rounding) do not decide between the two.

    ``tree`` (optional dict, filled in, for the parity tests; costs nothing
    measurable): ``"levels"`` — per threshold the cluster indices emitted;
    ``"into"`` — cluster index -> the index of the cluster it merged into;
    ``"created"`` — per threshold, how many clusters existed at its end;
    ``"clusters"`` — every cluster record (``"mask"``, ``"num_of_patch"``).
    """
    clusters: list[dict] = []
    sims: dict[tuple[int, int], float] = {}
    h, w = features.shape[:2]
    idx = 0
    for y in range(h):
        for x in range(w):
            m = np.zeros((h, w))
            m[y, x] = 1
            clusters.append({
                "feature": features[y, x],
                "normalized_feature": F.normalize(features[y, x].to(dtype), dim=0),
                "mask": m,
                "num_of_patch": 1,
                "neighbors": set(),
            })
            if idx % w != 0:
                clusters[idx]["neighbors"].add(idx - 1)
                clusters[idx - 1]["neighbors"].add(idx)
                sims[(idx - 1, idx)] = torch.dot(clusters[idx - 1]["normalized_feature"], clusters[idx]["normalized_feature"]).item()
            if idx - w >= 0:
                clusters[idx]["neighbors"].add(idx - w)
                clusters[idx - w]["neighbors"].add(idx)
                sims[(idx - w, idx)] = torch.dot(clusters[idx - w]["normalized_feature"], clusters[idx]["normalized_feature"]).item()
            idx += 1
    into = {} if tree is None else tree.setdefault("into", {})
    emitted = [] if tree is None else tree.setdefault("levels", [])
    created = [] if tree is None else tree.setdefault("created", [])
    if tree is not None:
        tree["clusters"] = clusters
    all_masks = []
    for t in thresholds:
        while len(sims):
            i, j = max(sims, key=sims.get)
            if sims[(i, j)] < t:
                break
            merged = _merged(i, j, clusters, dtype)
            clusters.append(merged)
            into[i] = into[j] = idx
            del sims[(i, j)]
            for nb in merged["neighbors"]:
                if i in clusters[nb]["neighbors"]:
                    del sims[(nb, i) if nb < i else (i, nb)]
                    clusters[nb]["neighbors"].discard(i)
                if j in clusters[nb]["neighbors"]:
                    del sims[(nb, j) if nb < j else (j, nb)]
                    clusters[nb]["neighbors"].discard(j)
                sims[(nb, idx)] = torch.dot(clusters[nb]["normalized_feature"], clusters[idx]["normalized_feature"]).item()
                clusters[nb]["neighbors"].add(idx)
            idx += 1
        level, seen, ids = [], set(), []
        for m, n_ in sims:
            for c in (m, n_):
                if c not in seen:
                    seen.add(c)
                    if clusters[c]["num_of_patch"] >= min_size:
                        level.append(clusters[c]["mask"])
                        ids.append(c)
        emitted.append(ids)
        created.append(idx)
        if level:
            all_masks.append(np.stack(level))
    return all_masks


# ---------------------------------------------------------------- per-mask work (UnSAM / CutLER)


def resize_mask(grid_mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A grid mask resized to size (width, height) with PIL's default filter (bicubic), as published:
    values above half the resized maximum are set to the maximum, the rest to the minimum, then
    the mask is what exceeds 127.5. Returns uint8 0/1."""
    a = np.asarray(Image.fromarray(np.uint8(grid_mask * 255)).resize(size)).astype(np.uint8)
    upper, lower = a.max(), a.min()
    a = np.where(a > upper / 2.0, upper, lower)
    return (a > 0.5 * 255).astype(np.uint8)


def coverage(mask: np.ndarray, region: np.ndarray) -> float:
    """Share of the mask inside the region."""
    n = np.count_nonzero(mask)
    return np.count_nonzero(np.logical_and(mask, region)) / n if n else 0.0


def windowed_nms(masks: list[np.ndarray], threshold: float = 0.9, step: int = 5) -> list[np.ndarray]:
    """The published conquer NMS: masks sorted by area, each compared with the next step - 1 only."""
    order = sorted(masks, key=lambda m: np.count_nonzero(m) / m.size, reverse=True)
    kept = list(range(len(masks)))
    for i in range(len(order)):
        if i in kept:
            for j in range(i + 1, min(len(order), i + step)):
                if mask_iou(order[i] > 0, order[j] > 0) > threshold and j in kept:
                    kept.remove(j)
    return [order[i] for i in kept]


def annotation(mask: np.ndarray) -> dict | None:
    """``create_annotation_info`` of a full-size mask: area, bbox and compressed RLE (None when empty)."""
    from pycocotools import mask as mask_utils

    m = np.asfortranarray(mask.astype(np.uint8))
    rle = mask_utils.encode(m)
    area = mask_utils.area(rle)
    if area < 1:
        return None
    bbox = mask_utils.toBbox(rle)
    rle = mask_utils.encode(np.array(m[..., None], order="F", dtype="uint8"))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"area": int(area), "bbox": bbox.tolist(), "segmentation": rle}


# ---------------------------------------------------------------- the presets' work, the published way


def write_maskcut_masks(grids: list[np.ndarray], divide_size: int, height: int, width: int) -> list[np.ndarray]:
    """``maskcut.py``'s masks of one image from its grid masks (no CRF): each nearest-upsampled
    to divide_size x divide_size, minus what earlier masks hold, resized with PIL to the image
    size, foreground above half the maximum; empty masks are not written."""
    out, taken = [], None
    for g in grids:
        big = F.interpolate(torch.from_numpy(g.astype(np.float64))[None, None], size=(divide_size, divide_size), mode="nearest")[0, 0].numpy()
        masked = big - (taken if taken is not None else 0)
        masked[masked <= 0] = 0
        taken = masked if taken is None else taken + masked
        a = np.asarray(Image.fromarray(np.uint8(masked * 255)).resize((width, height)))
        upper = a.max()
        m = a > upper / 2.0
        if upper > 0 and m.any():
            out.append(m)
    return out


def run_maskcut(feats: torch.Tensor, cfg, image_hw: tuple[int, int], divide_size: int, sign=None) -> list[np.ndarray]:
    """The ``maskcut`` preset the published way: patch features [gh, gw, C] -> the image's masks."""
    gh, gw, c = feats.shape
    grids = maskcut_forward(feats.reshape(gh * gw, c).T.contiguous(), (gh, gw), cfg.divide.tau, cfg.divide.max_cuts, cfg.divide.eps, sign)
    return write_maskcut_masks(grids, divide_size, *image_hw)


_RTOL = 1e-9  # the divide's documented tie tolerance (unsam.label.divide.TIE_RTOL)


def _first_max(v: np.ndarray) -> int:
    ok = np.isfinite(v)
    top = v[ok].max()
    return int(np.flatnonzero(ok & (v >= top - _RTOL * max(np.abs(v[ok]).max(), 1e-300)))[0])


def tie_sign(x: np.ndarray) -> np.ndarray:
    """The divide's sign rule: the first entry of largest |x| (ties within 1e-9) positive."""
    return -x if x[_first_max(np.abs(x))] < 0 else x


def _above(v: np.ndarray, mean: float, spread: float) -> np.ndarray:
    return (v - mean) > _RTOL * spread


def _component4(fg: np.ndarray, seed: int) -> np.ndarray:
    lab, _ = ndimage.label(fg)  # 4-connectivity
    s = lab.flat[seed]
    return lab == s if s else np.zeros_like(fg)


def _ncut(a: np.ndarray, inside: np.ndarray) -> float:
    """NCut value of the bipartition (inside, rest) of the dense graph a."""
    if not inside.any() or inside.all():
        return 1.0
    d = a.sum(1)
    cut = a[np.ix_(inside, ~inside)].sum()
    return float(cut / max(d[inside].sum(), 1e-12) + cut / max(d[~inside].sum(), 1e-12))


def divide_regions(feats: torch.Tensor, dcfg, sign=None) -> list[dict]:
    """This project's divide (``unsam.label.divide``, rule "uncovered" or "published") with MaskCut's
    published cost per cut: features of covered patches zeroed, a dense float32 affinity, the
    dense generalized solver. Background parts and recursive cuts (on the region's rows and
    columns of the image's graph) as in ``unsam.label.divide``. feats [gh, gw, C] ->
    ``{"mask", "ncut", "lam", "depth", "parent"}`` per region, in the order found."""
    gh, gw, c = feats.shape
    n = gh * gw
    f = feats.reshape(n, c).T.contiguous()
    full, _ = affinity_matrix(f, dcfg.tau, dcfg.eps)
    covered = np.zeros((gh, gw), bool)
    regions: list[dict] = []
    prev, failures = None, 0
    for step in range(dcfg.max_cuts):
        if dcfg.rule != "published" and covered.mean() > 1 - dcfg.min_area:
            break
        if len(regions) >= dcfg.max_regions:
            break
        zeroed = (f.view(c, gh, gw) * torch.from_numpy(~covered).to(f.dtype)).view(c, n)
        a, d = affinity_matrix(zeroed, dcfg.tau, dcfg.eps)
        dm = np.diag(d)
        vals, vecs = scipy.linalg.eigh(dm - a, dm, subset_by_index=[1, 2])
        x = vecs[:, 0].copy()
        x = sign(x) if sign is not None else x
        if dcfg.rule == "published":
            mask, _ = bipartition(x, (gh, gw))
            if step > 0 and ((prev is not None and mask_iou(prev, mask) > dcfg.max_prev_iou) or mask.mean() <= dcfg.min_area):
                prev = None
                continue
        else:
            allowed = ~covered
            xg = x.reshape(gh, gw)
            xm = np.where(allowed, xg, np.nan)
            mean = np.nanmean(xm)
            fg = _above(xg, mean, np.nanmax(np.abs(xm - mean)))
            seed = _first_max(np.abs(xm))
            corners = [fg[0, 0], fg[0, -1], fg[-1, 0], fg[-1, -1]]
            flip = sum(bool(v) for v in corners) >= 3 or not fg.flat[seed]
            if flip:
                fg = ~fg
                seed = _first_max(-xm)
            else:
                seed = _first_max(xm)
            mask = _component4(fg & allowed, seed)
            if mask.mean() <= dcfg.min_area or (prev is not None and mask_iou(mask, prev) > dcfg.max_prev_iou):
                failures += 1
                covered |= mask
                if failures >= 2 or not mask.any():
                    break
                continue
        regions.append({"mask": mask, "ncut": _ncut(a, mask.reshape(-1)), "lam": float(vals[0]), "depth": 0, "parent": -1})
        covered |= mask
        prev = mask
    if dcfg.background_regions:
        lab, k = ndimage.label(~covered)
        for i in range(1, k + 1):
            m = lab == i
            if m.mean() > dcfg.min_area and len(regions) < dcfg.max_regions:
                regions.append({"mask": m, "ncut": 1.0, "lam": 1.0, "depth": 0, "parent": -1})
    todo = list(range(len(regions)))
    while todo and len(regions) < dcfg.max_regions:
        ri = todo.pop(0)
        r = regions[ri]
        if r["depth"] >= dcfg.recursive_depth or r["mask"].mean() <= dcfg.recursive_min_area:
            continue
        idx = np.flatnonzero(r["mask"].reshape(-1))
        if idx.size < 8:
            continue
        sub = full[np.ix_(idx, idx)]
        ds = np.diag(sub.sum(1))
        vals, vecs = scipy.linalg.eigh(ds - sub, ds, subset_by_index=[1, 2])
        sx = vecs[:, 0].copy()
        sx = sign(sx) if sign is not None else sx
        xs = np.full(n, np.nan)
        xs[idx] = sx
        xs = xs.reshape(gh, gw)
        allowed = r["mask"]
        for sg in (1.0, -1.0):
            v = sg * xs[allowed]
            fg = _above(sg * xs, v.mean(), np.abs(v - v.mean()).max()) & allowed
            seed = _first_max(np.where(allowed, sg * xs, -np.inf))
            part = _component4(fg, seed)
            if part.mean() <= dcfg.min_area or part.sum() >= 0.95 * allowed.sum():
                continue
            if len(regions) >= dcfg.max_regions:
                break
            ncut = _ncut(sub, part.reshape(-1)[idx])
            if dcfg.recursive_max_ncut is not None and not ncut < dcfg.recursive_max_ncut:
                continue
            regions.append({"mask": part, "ncut": ncut, "lam": float(vals[0]), "depth": r["depth"] + 1, "parent": ri})
            todo.append(len(regions) - 1)
    return regions


def _bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """One grid mask upsampled to height x width, threshold 0.5, by the preset's bilinear rule
    (``unsam.label.masks.interp_matrix``: align_corners=False, edges clamped), over the whole mask.
    (Pixels exactly between two patches are exactly 0.5 there; ``F.interpolate`` rounds its
    weights differently and would split such ties its own way.)"""
    from unsam.label.masks import interp_matrix

    return (interp_matrix(height, grid.shape[0]) @ grid.astype(np.float32) @ interp_matrix(width, grid.shape[1]).T) > 0.5


def _distinct_clusters(tree: dict, min_size: int) -> list[dict]:
    """Each distinct cluster of one merge run once: its grid mask, the levels it lives through
    and its parent (the cluster holding it at the level after its last; -1: a top cluster)."""
    into, created, clusters = tree["into"], tree["created"], tree["clusters"]
    nlev = len(created)

    def alive(cidx: int, lv: int) -> bool:
        return cidx < created[lv] and (cidx not in into or into[cidx] >= created[lv])

    out, where = [], {}
    for lv in range(nlev):
        for cidx in range(created[lv]):
            if not alive(cidx, lv) or clusters[cidx]["num_of_patch"] < min_size:
                continue
            if cidx in where:
                out[where[cidx]]["last"] = lv
                continue
            where[cidx] = len(out)
            out.append({"index": cidx, "mask": np.asarray(clusters[cidx]["mask"]) > 0, "first": lv, "last": lv, "parent": -1})
    for cl in out:
        if cl["last"] + 1 < nlev:
            p = cl["index"]
            while not alive(p, cl["last"] + 1):
                p = into[p]
            cl["parent"] = where[p]
    return out


def run_unsam(
    image: torch.Tensor,
    feats: torch.Tensor,
    extractor,
    cfg,
    divide_size: int,
    per_mask: str = "preset",
    sign=None,
    times: dict | None = None,
    merge_dtype: torch.dtype = torch.float32,
) -> dict:
    """The ``unsam`` preset's work the published way (see the module docstring).

    image [3, H, W] float in [0, 1] (the crops' source); feats [gh, gw, C]: the divide
    stage's patch features; extractor: the crops' feature extractor; cfg: the resolved
    ``LabelConfig``. Masks are formed at the image's size (the preset's working
    resolution for images up to ``masks.max_side``). ``merge_dtype``: the merge loop's
    precision (published float32; the parity tests use float64, the kernel's). Returns ``{"masks", "parents",
    "levels", "sources", "scores"}`` (per_mask "preset") or ``{"annotations"}``
    (per_mask "released"); stage times in seconds go into ``times``.
    """
    import time as _time

    from unsam.label.conquer import crop_resize

    times = {} if times is None else times
    _, h, w = image.shape
    t0 = _time.perf_counter()
    regions = divide_regions(feats, cfg.divide, sign)
    # Divide regions at full resolution, one at a time.
    pix, claimed = [], {}
    for r in regions:
        m = _bilinear(r["mask"], h, w)
        c = claimed.setdefault(r["depth"], np.zeros((h, w), bool))
        m &= ~c
        if r["parent"] >= 0:
            m &= pix[r["parent"]]
        c |= m
        pix.append(m)
    t1 = _time.perf_counter()
    times["divide"] = times.get("divide", 0.0) + t1 - t0
    thr, nlev = cfg.conquer.thresholds, len(cfg.conquer.thresholds)
    cands = []  # (mask, score, source, key, up)
    for i, (r, m) in enumerate(zip(regions, pix)):
        if m.any():
            cands.append((m, float(np.clip(1.0 - r["ncut"] / 2.0, 0.0, 1.0)), "divide", ("d", i), ("d", r["parent"]) if r["parent"] >= 0 else None))
    released = []
    t_merge = t_masks = 0.0
    for i, (r, m) in enumerate(zip(regions, pix)):
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if ys.size == 0:
            continue
        x0, y0, x1, y1 = int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1
        with torch.inference_mode():
            crop = crop_resize(image, torch.tensor([[x0, y0, x1, y1]]), cfg.conquer.size)
            cf = extractor(crop).float()[0].cpu()
        ta = _time.perf_counter()
        tree: dict = {}
        levels = iterative_merge(cf.to(merge_dtype), thr, cfg.conquer.min_size, tree, merge_dtype)
        tb = _time.perf_counter()
        t_merge += tb - ta
        region_crop = m[y0:y1, x0:x1]
        if per_mask == "released":
            found = []
            for layer in levels:
                for k in range(layer.shape[0]):
                    mk = resize_mask(layer[k], [x1 - x0, y1 - y0])
                    if coverage(mk, region_crop) <= cfg.conquer.inside_frac:
                        continue
                    big = np.zeros((h, w), np.uint8)
                    big[y0:y1, x0:x1] = mk
                    found.append(big)
            released.extend(windowed_nms(found, cfg.masks.nms_iou, 5))
        else:
            kept = {}
            clusters = _distinct_clusters(tree, cfg.conquer.min_size)
            for ci, cl in enumerate(clusters):
                mk = _bilinear(cl["mask"], y1 - y0, x1 - x0)
                area = np.count_nonzero(mk)
                if area == 0 or np.count_nonzero(mk & region_crop) <= cfg.conquer.inside_frac * area:
                    continue
                big = np.zeros((h, w), bool)
                big[y0:y1, x0:x1] = mk
                kept[ci] = big
            for ci, big in kept.items():
                p = clusters[ci]["parent"]
                while p >= 0 and p not in kept:
                    p = clusters[p]["parent"]
                score = 0.25 + 0.75 * (clusters[ci]["last"] - clusters[ci]["first"] + 1) / nlev
                cands.append((big, score, "conquer", ("c", i, ci), ("c", i, p) if p >= 0 else ("d", i)))
        t_masks += _time.perf_counter() - tb
    times["merge"] = times.get("merge", 0.0) + t_merge
    t2 = _time.perf_counter()
    if per_mask == "released":
        anns = [a for a in (annotation(m.astype(np.uint8)) for m in [p.astype(np.uint8) for p in pix if p.any()] + released) if a]
        times["masks"] = times.get("masks", 0.0) + t_masks + _time.perf_counter() - t2
        return {"annotations": anns}
    out = _preset_masks(cands, cfg.masks, h, w)
    times["masks"] = times.get("masks", 0.0) + t_masks + _time.perf_counter() - t2
    return out


def _preset_masks(cands: list, mcfg, h: int, w: int) -> dict:
    """The preset's mask stage on full-size masks, one pair at a time: tiny masks dropped,
    score x sqrt(area fraction), NMS over the image (score, then area, then order), the
    best ``max_masks``, parents = nearest kept ancestor in the trees, level = depth."""
    up_of = {c[3]: c[4] for c in cands}  # before any mask is dropped: kept masks climb past dropped ones
    min_area = max(mcfg.min_area, mcfg.min_area_frac * h * w)
    cands = [c for c in cands if np.count_nonzero(c[0]) >= min_area]
    area = np.array([np.count_nonzero(c[0]) for c in cands], np.float64)
    score = np.array([c[1] * np.sqrt(a / (h * w)) for c, a in zip(cands, area)])
    boxes = []
    for c in cands:
        ys, xs = np.flatnonzero(c[0].any(1)), np.flatnonzero(c[0].any(0))
        boxes.append((xs[0], ys[0], xs[-1] + 1, ys[-1] + 1))
    order = np.lexsort((np.arange(len(cands)), -area, -score))
    kept: list[int] = []
    for i in order:
        dup = False
        for j in kept:
            bi, bj = boxes[i], boxes[j]
            if min(bi[2], bj[2]) <= max(bi[0], bj[0]) or min(bi[3], bj[3]) <= max(bi[1], bj[1]):
                continue
            inter = np.count_nonzero(cands[i][0] & cands[j][0])
            if inter / (area[i] + area[j] - inter) > mcfg.nms_iou:
                dup = True
                break
        if not dup:
            kept.append(int(i))
    kept = kept[: mcfg.max_masks]
    where = {cands[i][3]: k for k, i in enumerate(kept)}
    parents = []
    for i in kept:
        p = up_of[cands[i][3]]
        while p is not None and p not in where:
            p = up_of.get(p)
        parents.append(where[p] if p is not None else -1)
    levels = []
    for k in range(len(kept)):
        d, p = 0, parents[k]
        while p >= 0:
            d, p = d + 1, parents[p]
        levels.append(d)
    return {
        "masks": [cands[i][0] for i in kept],
        "parents": parents,
        "levels": levels,
        "sources": [cands[i][2] for i in kept],
        "scores": [float(score[i]) for i in kept],
    }
