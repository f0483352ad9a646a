"""BSDS500 hierarchy metrics: covering, PRI and VI at ODS and OIS (:func:`evaluate_bsds`).

BSDS500 (Arbeláez et al., TPAMI 2011; their benchmark's ``evaluation_reg_image.m``
and ``collect_eval_reg.m``)
    Partition rule: level l of a hierarchy becomes a partition in which each
    pixel takes the deepest mask with ``level <= l`` covering it (among
    overlapping masks of one level: the smaller, then the later in the file);
    each 4-connected component of pixels no such mask covers is a segment of
    its own. Components rather than one "rest" segment because two separate
    uncovered areas carry no evidence of being one region, and human
    segmentations are made of connected regions (``--uncovered rest``
    makes them one segment instead, for sensitivity checks). An image
    without a prediction is one segment.

    Metrics, per partition S, against every human segmentation G_a of the image:
    covering = sum_a sum_{R in G_a} |R| max_{R' in S} IoU(R, R') / sum_a sum_R |R|
    (covering *of the humans by S*, pooled over annotators), PRI = mean_a Rand
    index(S, G_a), VI = mean_a (H(S) + H(G_a) - 2 I(S, G_a)), bits (log2).
    Human label 0 (unlabelled, if any) is left out as in the benchmark code.

    Scale (``--scale``, default ``level``): the rule that picks which
    partition of each image is scored at the optimal dataset scale (ODS).

    ``level`` (default; the BSDS500 benchmark's rule, ``collect_eval_reg.m``):
    the scale is the level index t, the same for every image, as the
    benchmark's t-th UCM threshold or t-th segmentation of a ``segs`` cell.
    An image with fewer levels repeats its last (finest) one at larger t
    (the benchmark itself needs equal counts; this is our extension). At
    each t, covering = sum over images of the covering numerators above /
    sum of their denominators (the benchmark adds ``cntR`` and ``sumR``
    over images, so larger images and images with more annotators weigh
    more); PRI(t) and VI(t) are plain means over images. ODS = the best t
    for the set, each metric its own (MATLAB ``max`` / ``min``: the first,
    i.e. coarsest, t among ties). Level 0 is our coarsest level.

    ``count`` (non-standard, kept for comparison with earlier numbers): the
    scale is a target segment count k; at scale k each image uses its level
    whose segment count is nearest to k in log ratio (equal counts: the
    coarser level). ODS = the best single k for the whole set, searched
    exactly (one k inside every interval between the breakpoints where some
    image switches level), pooled and averaged as above. It lets each image
    pick a different level index, which flatters hierarchies whose levels
    mean different granularities on different images, so its numbers are
    not comparable with published ones.

    OIS (both rules) = each image at its own best level, per metric: covering
    pools that level's numerator and denominator over images (the benchmark
    takes the last level among ties; the value does not depend on it),
    PRI and VI are means of the per-image best. VI: lower is better.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from unsam.evaluate.predictions import (
    MATCH_RULE,
    EvalError,
    _is_int,
    load_predictions,
    pred_rles,
)
from unsam.io.datasets import rle_areas

__all__ = [
    "BSDS_KEYS",
    "SCALES",
    "BsdsResult",
    "evaluate_bsds",
    "level_partitions",
    "load_bsds_gt",
    "ods_ois",
    "probabilistic_rand_index",
    "segmentation_covering",
    "variation_of_information",
]

BSDS_KEYS = ("covering_ods", "covering_ois", "pri_ods", "pri_ois", "vi_ods", "vi_ois", "images", "scale")
#: ODS rules of ``evaluate bsds``: "level" is the BSDS500 benchmark's, "count" is non-standard.
SCALES = ("level", "count")
SCALE_RULES = {
    "level": "scale = level index t, one for the whole set (BSDS500 benchmark, collect_eval_reg.m); "
    "an image with fewer levels repeats its last; ODS: best t for the set, OIS: best level per image",
    "count": "NON-STANDARD scale = target segment count k (each image at its level nearest k in log count), "
    "not comparable with published numbers; ODS: best k for the set, OIS: best level per image",
}


def level_partitions(
    anns: Sequence[dict], height: int, width: int, where: str = "predictions", uncovered: str = "components"
) -> list[np.ndarray]:
    """One partition per level of a hierarchy (the rule of the module docstring).

    ``uncovered`` = ``"components"`` (default: each 4-connected area no mask
    covers is a segment) or ``"rest"`` (all uncovered pixels form one segment;
    for sensitivity checks). Returns ``[L_0, ..., L_D]``, int64
    ``[height, width]`` label maps with labels 1..n (D = the deepest
    ``level``); ``[ones]`` when there are no masks.
    """
    from scipy import ndimage

    if uncovered not in ("components", "rest"):
        raise ValueError(f"uncovered should be 'components' or 'rest', got {uncovered!r}")

    if not anns:
        return [np.ones((height, width), np.int64)]
    levels = []
    for i, a in enumerate(anns):
        lv = a.get("level")
        if not _is_int(lv) or lv < 0:
            raise EvalError(
                f"{where}: annotations[{i}].level should be a non-negative int (BSDS needs the hierarchy), got {lv!r}"
            )
        levels.append(lv)
    rles = pred_rles(anns, height, width)
    areas = rle_areas(rles)
    # Paint coarse to fine; inside a level larger first, so the smaller (finer) mask wins overlaps.
    order = sorted(range(len(anns)), key=lambda i: (levels[i], -int(areas[i]), i))
    canvas = np.zeros((height, width), np.int64)
    out = []
    pos = 0
    for lv in range(max(levels) + 1):
        while pos < len(order) and levels[order[pos]] == lv:
            i = order[pos]
            canvas[mask_utils.decode(rles[i]).astype(bool)] = i + 1
            pos += 1
        part = canvas.copy()
        free = part == 0
        if free.any():
            if uncovered == "rest":
                part[free] = len(anns) + 1
            else:
                comp, _ = ndimage.label(free)  # 4-connectivity
                part[free] = len(anns) + comp[free]
        _, inv = np.unique(part, return_inverse=True)
        out.append(inv.reshape(height, width).astype(np.int64) + 1)
    return out


def load_bsds_gt(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """The human segmentations of one BSDS500 ``groundTruth/<id>.mat``: a list of int64 [H, W] label maps."""
    from scipy.io import loadmat

    p = Path(path)
    try:
        m = loadmat(p)
    except Exception as e:  # noqa: BLE001 - scipy raises assorted types for bad files
        raise EvalError(f"{p}: cannot read as a MATLAB file ({e})") from None
    if "groundTruth" not in m:
        raise EvalError(f"{p}: no 'groundTruth' variable (keys: {', '.join(k for k in m if not k.startswith('__'))})")
    cell = m["groundTruth"]
    segs = []
    try:
        for i in range(cell.shape[1]):
            segs.append(np.asarray(cell[0, i]["Segmentation"][0, 0]).astype(np.int64))
    except (IndexError, KeyError, ValueError, TypeError) as e:
        raise EvalError(f"{p}: groundTruth is not a cell of structs with 'Segmentation' ({e})") from None
    if not segs:
        raise EvalError(f"{p}: groundTruth holds no segmentation")
    if any(s.ndim != 2 or s.shape != segs[0].shape for s in segs):
        raise EvalError(f"{p}: the human segmentations differ in shape: {[s.shape for s in segs]}")
    return segs


def _contingency(seg: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """n[i, j] = #pixels with seg label i and gt label j (label 0 included as row/column 0)."""
    ns, ng = int(seg.max()) + 1, int(gt.max()) + 1
    return np.bincount((seg.ravel() * ng + gt.ravel()), minlength=ns * ng).reshape(ns, ng)


def _covering_counts(n: np.ndarray) -> tuple[float, float]:
    """(sum_R |R| max IoU, sum_R |R|) over the GT regions R (label >= 1), as ``match_segmentations.m``."""
    seg_size = n.sum(1)[1:, None].astype(np.float64)  # all pixels of each segment
    gt_size = n.sum(0)[None, 1:].astype(np.float64)
    inter = n[1:, 1:].astype(np.float64)
    if inter.size == 0:
        return 0.0, float(gt_size.sum())
    iou = inter / np.maximum(seg_size + gt_size - inter, 1.0)
    best = iou.max(0)
    return float((gt_size[0] * best).sum()), float(gt_size.sum())


def _rand_index(n: np.ndarray) -> float:
    """Rand index from a contingency table, label 0 ignored (``match_segmentations2.m``)."""
    n = n[1:, 1:].astype(np.float64)
    total = n.sum()
    if total < 2:
        return 1.0
    pairs = total * (total - 1) / 2
    disagree = (n.sum(1) ** 2).sum() / 2 + (n.sum(0) ** 2).sum() / 2 - (n**2).sum()
    return float(1 - disagree / pairs)


def _vi(n: np.ndarray) -> float:
    """Variation of information in bits from a contingency table, label 0 ignored."""
    n = n[1:, 1:].astype(np.float64)
    total = n.sum()
    if total == 0:
        return 0.0
    p = n / total
    p1, p2 = p.sum(1), p.sum(0)

    def ent(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log2(q)).sum())

    nz = p > 0
    mi = float((p[nz] * np.log2(p[nz] / np.outer(p1, p2)[nz])).sum())
    return ent(p1) + ent(p2) - 2 * mi


def segmentation_covering(seg: np.ndarray, gts: Sequence[np.ndarray]) -> float:
    """Covering of the human segmentations ``gts`` by ``seg``, pooled over annotators (BSDS benchmark)."""
    cnt = tot = 0.0
    for g in gts:
        c, t = _covering_counts(_contingency(np.asarray(seg, np.int64), np.asarray(g, np.int64)))
        cnt += c
        tot += t
    return cnt / tot if tot else 0.0


def probabilistic_rand_index(seg: np.ndarray, gts: Sequence[np.ndarray]) -> float:
    """PRI: the Rand index of ``seg`` against each human segmentation, averaged."""
    return float(np.mean([_rand_index(_contingency(np.asarray(seg, np.int64), np.asarray(g, np.int64))) for g in gts]))


def variation_of_information(seg: np.ndarray, gts: Sequence[np.ndarray]) -> float:
    """VI (bits) of ``seg`` against each human segmentation, averaged."""
    return float(np.mean([_vi(_contingency(np.asarray(seg, np.int64), np.asarray(g, np.int64))) for g in gts]))


def _level_scores(parts: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per level: covering counts, PRI, VI and the number of segments."""
    out = {k: np.zeros(len(parts)) for k in ("cnt", "sum", "pri", "vi", "nseg")}
    for li, seg in enumerate(parts):
        cnt = tot = ri = vi = 0.0
        for g in gts:
            n = _contingency(seg, g)
            c, t = _covering_counts(n)
            cnt, tot = cnt + c, tot + t
            ri += _rand_index(n)
            vi += _vi(n)
        out["cnt"][li], out["sum"][li] = cnt, tot
        out["pri"][li], out["vi"][li] = ri / len(gts), vi / len(gts)
        out["nseg"][li] = int(seg.max())
    return out


def _select(nseg: np.ndarray, k: float) -> int:
    """The level whose segment count is nearest to k in log ratio; equal counts: the coarser (lower) level."""
    d = np.abs(np.log(nseg) - math.log(k))
    return int(np.flatnonzero(d == d.min())[0])


def _candidate_scales(all_nseg: Sequence[np.ndarray]) -> list[float]:
    """One k inside every interval between the breakpoints where some image changes level."""
    bps = set()
    for ns in all_nseg:
        u = np.unique(ns)
        bps.update(np.sqrt(u[:-1] * u[1:]).tolist())  # geometric midpoints of neighbouring counts
    b = sorted(bps)
    if not b:
        return [1.0]
    return [b[0] / 2] + [math.sqrt(x * y) for x, y in itertools.pairwise(b)] + [b[-1] * 2]


@dataclass
class BsdsResult:
    """What :func:`evaluate_bsds` found. ``metrics`` has exactly :data:`BSDS_KEYS` (``scale`` included)."""

    metrics: dict[str, Any]
    #: per metric, the scale chosen by ODS: the level index t (``scale="level"``) or the target segment count k
    ods_scale: dict[str, float]
    per_image: dict[str, dict[str, list[float]]]  #: per GT image: per-level cnt, sum, pri, vi, nseg
    notes: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    scale: str = "level"  #: the ODS rule: "level" (the benchmark's) or "count" (non-standard)


def _ratio(cnt: np.ndarray | float, tot: np.ndarray | float) -> np.ndarray:
    # The benchmark's cnt ./ (sum + (sum == 0)): 0 where nothing is counted.
    tot = np.asarray(tot, np.float64)
    return np.asarray(cnt, np.float64) / (tot + (tot == 0))


def _ods_level(per_image: Sequence[dict[str, np.ndarray]]) -> tuple[dict[str, float], dict[str, float]]:
    """ODS at one level index t for the whole set (``collect_eval_reg.m``); shorter hierarchies repeat their last."""
    depth = max(len(s["cnt"]) for s in per_image)

    def table(key: str) -> np.ndarray:  # [images, depth], each row padded with its last value
        return np.stack([np.concatenate([s[key], np.repeat(s[key][-1:], depth - len(s[key]))]) for s in per_image])

    cov = _ratio(table("cnt").sum(0), table("sum").sum(0))
    pri, vi = table("pri").mean(0), table("vi").mean(0)
    # argmax / argmin give the first t among ties, as MATLAB's max / min.
    at = {"covering": int(np.argmax(cov)), "pri": int(np.argmax(pri)), "vi": int(np.argmin(vi))}
    ods = {"covering": cov[at["covering"]], "pri": pri[at["pri"]], "vi": vi[at["vi"]]}
    return ods, {m: float(t) for m, t in at.items()}


def _ods_count(per_image: Sequence[dict[str, np.ndarray]]) -> tuple[dict[str, float], dict[str, float]]:
    """ODS at one target segment count k for the whole set (non-standard; see the module docstring)."""
    nimg = len(per_image)
    best = {"covering": (-1.0, 0.0), "pri": (-1.0, 0.0), "vi": (math.inf, 0.0)}
    for k in _candidate_scales([s["nseg"] for s in per_image]):
        sel = [_select(s["nseg"], k) for s in per_image]
        cov = float(
            _ratio(sum(s["cnt"][l] for s, l in zip(per_image, sel)), sum(s["sum"][l] for s, l in zip(per_image, sel)))
        )
        pri = sum(s["pri"][l] for s, l in zip(per_image, sel)) / nimg
        vi = sum(s["vi"][l] for s, l in zip(per_image, sel)) / nimg
        # Strict comparisons: among equal values the smallest k (coarsest) is kept.
        if cov > best["covering"][0]:
            best["covering"] = (cov, k)
        if pri > best["pri"][0]:
            best["pri"] = (pri, k)
        if vi < best["vi"][0]:
            best["vi"] = (vi, k)
    return {m: v for m, (v, _) in best.items()}, {m: k for m, (_, k) in best.items()}


def ods_ois(
    per_image: Sequence[dict[str, np.ndarray]], scale: str = "level"
) -> tuple[dict[str, float], dict[str, float]]:
    """ODS / OIS numbers, and the scale ODS chose per metric, from per-image per-level scores.

    ``per_image``: one dict per image with per-level arrays ``cnt``, ``sum``
    (covering numerator and denominator), ``pri``, ``vi`` and ``nseg``.
    ``scale``: ``"level"`` (the benchmark's rule) or ``"count"`` (non-standard);
    see the module docstring.
    """
    if scale not in SCALES:
        raise ValueError(f"scale should be one of {SCALES}, got {scale!r}")
    if not per_image:
        raise EvalError("no images to evaluate")
    ods, at = _ods_level(per_image) if scale == "level" else _ods_count(per_image)
    cov_cnt = cov_sum = 0.0
    for s in per_image:
        r = _ratio(s["cnt"], s["sum"])
        i = int(np.flatnonzero(r == r.max())[-1])  # the benchmark's ff(end): the last level among ties
        cov_cnt += s["cnt"][i]
        cov_sum += s["sum"][i]
    metrics = {
        "covering_ods": ods["covering"],
        "covering_ois": _ratio(cov_cnt, cov_sum),
        "pri_ods": ods["pri"],
        "pri_ois": np.mean([s["pri"].max() for s in per_image]),
        "vi_ods": ods["vi"],
        "vi_ois": np.mean([s["vi"].min() for s in per_image]),
    }
    return {k: float(v) for k, v in metrics.items()}, at


def evaluate_bsds(
    pred: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    limit: int | None = None,
    progress: bool = False,
    uncovered: str = "components",
    scale: str = "level",
) -> BsdsResult:
    """Segmentation covering, PRI and VI at ODS and OIS of hierarchical predictions on BSDS500.

    Args:
        pred: folder of per-image JSONs (``level`` needed) or a COCO-style set.
        gt_dir: folder of ``<id>.mat`` human segmentations (e.g. ``groundTruth/val``).
        limit: only the first ``limit`` GT files (sorted by name).
        progress: progress bar over the images.
        uncovered: how pixels no mask covers become segments (see :func:`level_partitions`).
        scale: the ODS rule: ``"level"`` (default, the BSDS500 benchmark's: one
            level index for the whole set) or ``"count"`` (non-standard: each
            image at its level nearest a segment count); see the module docstring.
    """
    from tqdm import tqdm

    if scale not in SCALES:
        raise ValueError(f"scale should be one of {SCALES}, got {scale!r}")
    gdir = Path(gt_dir)
    if not gdir.is_dir():
        raise EvalError(f"GT folder {gdir} does not exist")
    gt_files = sorted(gdir.glob("*.mat"))
    if not gt_files:
        raise EvalError(f"GT folder {gdir} holds no .mat files (expected BSDS500 groundTruth/<id>.mat)")
    all_stems = {f.stem for f in gt_files}
    if limit is not None:
        gt_files = gt_files[: max(0, limit)]
        if not gt_files:
            raise EvalError(f"limit {limit} leaves no GT image to evaluate")
    items, notes = load_predictions(pred, stem=True, progress=False)
    if items and isinstance(items[0], dict):
        raise EvalError(f"{pred}: a COCO results list has no file names or hierarchy; BSDS needs per-image label JSONs")
    notes = list(notes) + [MATCH_RULE.replace("(basename)", "(stem: 101085.jpg <-> 101085.mat)")]
    preds = {p.key: p for p in items}
    unmatched = [p.source for p in items if p.key not in all_stems]
    missing: list[str] = []
    per_image: dict[str, dict[str, np.ndarray]] = {}
    for f in tqdm(gt_files, desc="bsds", unit="img", disable=not progress):
        gts = load_bsds_gt(f)
        h, w = gts[0].shape
        p = preds.get(f.stem)
        if p is None:
            missing.append(f.stem)
            parts = [np.ones((h, w), np.int64)]
        else:
            if (p.height, p.width) != (h, w):
                raise EvalError(
                    f"{p.source}: image size {p.width}x{p.height} (width x height) does not match the human "
                    f"segmentations in {f} ({w}x{h})"
                )
            parts = level_partitions(p.anns, h, w, where=p.source, uncovered=uncovered)
        per_image[f.stem] = _level_scores(parts, gts)
    metrics, scales = ods_ois(list(per_image.values()), scale)
    metrics["images"] = len(per_image)
    metrics["scale"] = scale
    rest = (
        "each 4-connected uncovered area is one segment"
        if uncovered == "components"
        else "all uncovered pixels form one segment"
    )
    notes.append(f"partition of level l: deepest mask with level <= l per pixel; {rest}")
    notes.append(SCALE_RULES[scale])
    if missing:
        notes.append(f"{len(missing)} GT image(s) without a prediction, scored as one segment")
    if unmatched:
        notes.append(f"{len(unmatched)} prediction(s) for images not in the GT folder, ignored")
    per_list = {k: {m: v.tolist() for m, v in s.items()} for k, s in per_image.items()}
    return BsdsResult({k: metrics[k] for k in BSDS_KEYS}, scales, per_list, notes, unmatched, missing, scale)
