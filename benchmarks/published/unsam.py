"""UnSAM's divide-and-conquer as released (``divide_and_conquer/divide_conquer.py`` and
``iterative_merging.py``), read and rewritten: the baseline of the benchmarks and the oracle
of the ``unsam`` preset's parity.

The costs are kept as they are there: the merge loop scans every edge with a
Python ``max`` before each merge and computes the new cluster's similarities one
``torch.dot`` at a time; every collected mask is resized with PIL, tested for
coverage, pasted into a full-size array and RLE-encoded one at a time; NMS compares
full-size masks. The released divide is a trained detector, which cannot be run
here: the regions are given (``Rules.divide == "cuts"``; the preset's are made by
``tests/reference/divide.py``). The release's CascadePSP refinement is not ported.
Every other departure is a named field of :class:`~.rules.Rules`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.published.maskcut import annotation, mask_iou
from benchmarks.published.rules import RELEASED, Rules

__all__ = ["coverage", "iterative_merge", "resize_mask", "run_unsam", "windowed_nms"]


# ---------------------------------------------------------------- iterative_merging.py


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
    """The released merge loop on features [H, W, C]: per threshold, a [K, H, W] stack of the
    clusters that still have an edge and at least ``min_size`` patches (levels without one
    are left out, as released).

    ``dtype``: of the normalised features and their dot products (released: float32).
    ``tree`` (optional dict, filled in; costs nothing measurable): ``"levels"`` — per
    threshold the cluster indices collected; ``"into"`` — cluster index -> the cluster it
    merged into; ``"created"`` — per threshold, how many clusters existed at its end;
    ``"clusters"`` — every cluster record.
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
    tree = {} if tree is None else tree
    into = tree.setdefault("into", {})
    emitted = tree.setdefault("levels", [])
    created = tree.setdefault("created", [])
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


# ---------------------------------------------------------------- divide_conquer.py


def resize_mask(grid_mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``resize_mask`` then ``> 0.5 * 255``: a grid mask resized to size (width, height) with
    PIL's default filter, values above half the resized maximum set to the maximum and
    the rest to the minimum. Returns bool [height, width]."""
    a = np.asarray(Image.fromarray(np.uint8(grid_mask * 255)).resize(size)).astype(np.uint8)
    upper, lower = a.max(), a.min()
    a = np.where(a > upper / 2.0, upper, lower)
    return a > 0.5 * 255


def _bilinear_rows(n_out: int, n_in: int) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        s = max((o + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        lam = np.float32(s - i0)
        m[o, i0] += 1.0 - lam
        m[o, min(i0 + 1, n_in - 1)] += lam
    return m


def _upsample(grid: np.ndarray, height: int, width: int, rules: Rules) -> np.ndarray:
    if rules.upsample == "pil_bicubic":
        return resize_mask(grid, (width, height))
    g = np.asarray(grid, np.float32)
    return (_bilinear_rows(height, g.shape[0]) @ g @ _bilinear_rows(width, g.shape[1]).T) > 0.5


def coverage(mask: np.ndarray, region: np.ndarray) -> float:
    """Share of the mask inside the region (0 for an empty mask)."""
    n = np.count_nonzero(mask)
    return np.count_nonzero(np.logical_and(mask, region)) / n if n else 0.0


def windowed_nms(masks: list[np.ndarray], threshold: float = 0.9, step: int = 5) -> list[np.ndarray]:
    """The released ``NMS``: masks sorted by area, each kept one compared with the next step - 1 only."""
    order = sorted(masks, key=lambda m: np.count_nonzero(m) / m.size, reverse=True)
    kept = list(range(len(masks)))
    for i in range(len(order)):
        if i in kept:
            for j in range(i + 1, min(len(order), i + step)):
                if mask_iou(order[i] > 0, order[j] > 0) > threshold and j in kept:
                    kept.remove(j)
    return [order[i] for i in kept]


def _box(mask: np.ndarray, rules: Rules) -> tuple[int, int, int, int] | None:
    """``smallest_square_containing_mask``: (y0, y1, x0, x1) with y1/x1 the last row/col
    (released: the slice [y0:y1] drops it) or one past it (inclusive)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if rules.crop_box == "inclusive":
        y1, x1 = y1 + 1, x1 + 1
    return y0, y1, x0, x1


def _crop(image: np.ndarray, box: tuple[int, int, int, int], rules: Rules) -> torch.Tensor:
    """The region's crop as the backbone's input [1, 3, S, S], float in [0, 1] (the backbone normalises)."""
    y0, y1, x0, x1 = box
    s = rules.local_size
    src = image[..., ::-1] if rules.channels == "bgr" else image
    if rules.crop_resize == "pil_bicubic":
        local = Image.fromarray(np.ascontiguousarray(src[y0:y1, x0:x1])).resize([s, s])
        return torch.from_numpy(np.asarray(local).copy()).permute(2, 0, 1)[None].float() / 255.0
    # Bilinear sampling of the box's pixel edges from the whole float image.
    img = torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1).float() / 255.0
    _, h, w = img.shape
    b = torch.tensor([x0, y0, x1, y1]).to(img.dtype)
    theta = torch.zeros(1, 2, 3, dtype=img.dtype)
    theta[0, 0, 0], theta[0, 0, 2] = (b[2] - b[0]) / w, (b[0] + b[2]) / w - 1
    theta[0, 1, 1], theta[0, 1, 2] = (b[3] - b[1]) / h, (b[1] + b[3]) / h - 1
    grid = F.affine_grid(theta, [1, 3, s, s], align_corners=False)
    return F.grid_sample(img[None], grid, mode="bilinear", padding_mode="border", align_corners=False)


def _distinct(tree: dict, min_size: int) -> list[dict]:
    """Each distinct cluster of a merge run once: its grid mask, the first and last levels it
    lives through, and its parent (the cluster holding it at the level after its last)."""
    into, created, clusters = tree["into"], tree["created"], tree["clusters"]
    nlev = len(created)

    def alive(c: int, lv: int) -> bool:
        return c < created[lv] and (c not in into or into[c] >= created[lv])

    out, where = [], {}
    for lv in range(nlev):
        for c in range(created[lv]):
            if not alive(c, lv) or clusters[c]["num_of_patch"] < min_size:
                continue
            if c in where:
                out[where[c]]["last"] = lv
                continue
            where[c] = len(out)
            out.append({"index": c, "mask": np.asarray(clusters[c]["mask"]) > 0, "first": lv, "last": lv, "parent": -1})
    for cl in out:
        if cl["last"] + 1 < nlev:
            p = cl["index"]
            while not alive(p, cl["last"] + 1):
                p = into[p]
            cl["parent"] = where[p]
    return out


def _conquer_region(image, region, extractor, rules: Rules, ri: int, cands: list, released: list, times: dict) -> None:
    """One region's conquer: crop, features, the merge loop, the masks back at full size."""
    h, w = region["pixels"].shape
    box = _box(region["pixels"], rules)
    if box is None or box[1] - box[0] <= 0 or box[3] - box[2] <= 0:
        return
    y0, y1, x0, x1 = box
    with torch.inference_mode():
        cf = extractor(_crop(image, box, rules)).float()[0].cpu()
    dtype = torch.float64 if rules.merge_dtype == "float64" else torch.float32
    ta = time.perf_counter()
    tree: dict = {}
    levels = iterative_merge(cf.to(dtype), rules.thresholds, rules.min_size, tree, dtype)
    tb = time.perf_counter()
    times["merge"] = times.get("merge", 0.0) + tb - ta
    inside = region["pixels"][y0:y1, x0:x1]
    if rules.emit == "released":
        found = []
        for layer in levels:
            for k in range(layer.shape[0]):
                mk = _upsample(layer[k], y1 - y0, x1 - x0, rules)
                if coverage(mk, inside) <= rules.inside_frac:
                    continue
                big = np.zeros((h, w), np.uint8)
                big[y0:y1, x0:x1] = mk
                found.append(big)
        released.extend(windowed_nms(found, rules.nms_iou, rules.nms_step) if rules.nms == "windowed" else found)
    else:
        nlev = len(rules.thresholds)
        clusters = _distinct(tree, rules.min_size)
        kept = {}
        for ci, cl in enumerate(clusters):
            mk = _upsample(cl["mask"], y1 - y0, x1 - x0, rules)
            area = np.count_nonzero(mk)
            if area == 0 or np.count_nonzero(mk & inside) <= rules.inside_frac * area:
                continue
            big = np.zeros((h, w), bool)
            big[y0:y1, x0:x1] = mk
            kept[ci] = big
        for ci, big in kept.items():
            p = clusters[ci]["parent"]
            while p >= 0 and p not in kept:
                p = clusters[p]["parent"]
            score = rules.score_floor + (1.0 - rules.score_floor) * (clusters[ci]["last"] - clusters[ci]["first"] + 1) / nlev
            cands.append((big, score, "conquer", ("c", ri, ci), ("c", ri, p) if p >= 0 else ("d", ri)))
    times["masks"] = times.get("masks", 0.0) + time.perf_counter() - tb


def run_unsam(image: np.ndarray, regions: list[dict], extractor, rules: Rules = RELEASED, times: dict | None = None) -> dict:
    """UnSAM's divide-and-conquer on one image, the released way where ``rules`` says so.

    image: [H, W, 3] uint8 RGB (as decoded); regions: the divide's masks, each a dict with
    ``"pixels"`` ([H, W] bool) and, for the preset's scores and parents, ``"ncut"``,
    ``"parent"`` (index of the region it was cut from, -1: none); extractor: the
    conquer's backbone ([B, 3, S, S] float in [0, 1] -> [B, S/p, S/p, C]).

    Returns ``{"annotations"}`` (emit "released": every divide and conquer mask as
    ``create_annotation_info`` writes it, in that order) or, with emit "distinct",
    ``{"masks", "parents", "levels", "sources", "scores"}`` after the mask rules
    (min area, score, NMS over the image, max_masks, parents). Stage seconds go into
    ``times`` ("merge": the merge loop; "masks": the per-mask work).
    """
    if rules.divide != "cuts":
        raise ValueError("run_unsam: the released divide is a trained detector; give the regions (Rules.divide='cuts')")
    times = {} if times is None else times
    cands, released = [], []
    for i, r in enumerate(regions):
        if r["pixels"].any():
            up = ("d", r["parent"]) if r.get("parent", -1) >= 0 else None
            cands.append((r["pixels"], float(np.clip(1.0 - r.get("ncut", 1.0) / 2.0, 0.0, 1.0)), "divide", ("d", i), up))
    for i, r in enumerate(regions):
        _conquer_region(image, r, extractor, rules, i, cands, released, times)
    t0 = time.perf_counter()
    if rules.emit == "released":
        divide = [r["pixels"].astype(np.uint8) for r in regions if r["pixels"].any()]
        anns = [a for a in (annotation(m) for m in divide + released) if a]
        times["masks"] = times.get("masks", 0.0) + time.perf_counter() - t0
        return {"annotations": anns}
    out = _mask_rules(cands, rules, *image.shape[:2])
    times["masks"] = times.get("masks", 0.0) + time.perf_counter() - t0
    return out


def _mask_rules(cands: list, rules: Rules, h: int, w: int) -> dict:
    """The preset's mask rules on full-size masks, one pair at a time: tiny masks dropped,
    score x sqrt(area fraction), NMS over the image (score, then area, then order), the best
    ``max_masks``, parents = the nearest kept ancestor in the trees, level = depth."""
    up_of = {c[3]: c[4] for c in cands}  # before any mask is dropped: kept masks climb past dropped ones
    min_area = max(rules.min_area, rules.min_area_frac * h * w)
    cands = [c for c in cands if np.count_nonzero(c[0]) >= min_area]
    area = np.array([np.count_nonzero(c[0]) for c in cands], np.float64)
    score = np.array([c[1] * np.sqrt(a / (h * w)) for c, a in zip(cands, area)]) if rules.score == "stability" else area
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
            if inter / (area[i] + area[j] - inter) > rules.nms_iou:
                dup = True
                break
        if not dup:
            kept.append(int(i))
    kept = kept[: rules.max_masks]
    where = {cands[i][3]: k for k, i in enumerate(kept)}
    parents = []
    for i in kept:
        p = up_of[cands[i][3]] if rules.parents == "merge_tree" else None
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
