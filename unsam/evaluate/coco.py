"""Class-agnostic COCO mask AR/AP (:func:`evaluate_coco`).

COCO (ALGORITHM.md §6)
    pycocotools' ``COCOeval`` on masks (``segm``), class-agnostic: every GT
    category is mapped to one class and ``params.useCats = 0``; maxDets
    (10, 100, N) with N = ``--max-dets`` (default 1000). AR@k is the mean
    recall over IoU 0.50:0.05:0.95 with the k best-scored masks per image;
    AR_small/medium/large use COCO's GT area ranges; AP (IoU 0.50:0.95) and
    AP50 are taken at N masks per image (the paper scores the top 1000). The
    numbers are read from ``COCOeval.eval['recall' | 'precision']`` (their
    ``summarize()`` prints only its fixed layout). GT images without a
    prediction count as misses (recall 0); prediction files for images not in
    the GT are listed and ignored.

    Score rule: a mask's ``score`` ranks it. A mask without a (finite) score
    gets ``area / (height * width)``, i.e. larger masks first;
    ``--rank area`` applies that rule to every mask. Ties keep file order.

"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from unsam.evaluate.predictions import (
    MATCH_RULE,
    EvalError,
    _check_anns,
    _is_int,
    _key,
    _read_json,
    load_predictions,
    pred_rles,
)
from unsam.io.datasets import rle_areas

__all__ = ["CocoResult", "coco_keys", "coco_metrics", "evaluate_coco"]

log = logging.getLogger("unsam.evaluate")

SCORE_RULE = "masks without a score are ranked by area (score = area / (height * width), larger first)"
AREA_RULE = "every mask ranked by area (score = area / (height * width), larger first; --rank area)"


def coco_keys(max_dets: int = 1000) -> tuple[str, ...]:
    """Keys of the COCO metrics JSON for a given largest maxDets (default: the issue's exact keys)."""
    ks = [k for k in (10, 100) if k < max_dets] + [max_dets]
    return (
        *(f"AR@{k}" for k in ks),
        f"AR_small@{max_dets}",
        f"AR_medium@{max_dets}",
        f"AR_large@{max_dets}",
        "AP",
        "AP50",
        "images",
        "masks_per_image",
    )



def _scores(anns: Sequence[dict], areas: np.ndarray, h: int, w: int, rank: str) -> tuple[np.ndarray, int]:
    """Ranking scores and how many masks fell back to the area rule."""
    area_score = areas / float(h * w)
    if rank == "area":
        return area_score, len(anns)
    sc = np.empty(len(anns))
    missing = 0
    for i, a in enumerate(anns):
        s = a.get("score")
        if s is None or not math.isfinite(float(s)):
            sc[i] = area_score[i]
            missing += 1
        else:
            sc[i] = float(s)
    return sc, missing



@dataclass
class CocoResult:
    """What :func:`evaluate_coco` found. ``metrics`` has exactly :func:`coco_keys` (fractions 0-1, None = undefined)."""

    metrics: dict[str, Any]
    curve: dict[int, float]  #: AR@k for every k evaluated (masks per image -> AR)
    notes: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  #: prediction sources for images not in the GT
    missing: list[str] = field(default_factory=list)  #: GT images without a prediction (misses)


@contextlib.contextmanager
def _quiet():
    # pycocotools prints progress to stdout; keep our table readable.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _load_gt(gt: str | os.PathLike[str], limit: int | None, image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    path = Path(gt)
    if not path.is_file():
        raise EvalError(f"GT annotation file {path} does not exist")
    obj = _read_json(path)
    if not (isinstance(obj, dict) and isinstance(obj.get("images"), list) and isinstance(obj.get("annotations"), list)):
        raise EvalError(f"{path}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    images = []
    for i, im in enumerate(obj["images"]):
        if not (
            isinstance(im, dict)
            and _is_int(im.get("id"))
            and isinstance(im.get("file_name"), str)
            and _is_int(im.get("width"))
            and _is_int(im.get("height"))
        ):
            raise EvalError(f"{path}: images[{i}] needs int id, width, height and a file_name")
        images.append(im)
    images.sort(key=lambda im: (im["file_name"], im["id"]))
    if image_ids is not None:
        wanted = set(image_ids)
        unknown = wanted - {im["id"] for im in images}
        if unknown:
            raise EvalError(f"{path}: image_ids not in this GT file: {sorted(unknown)[:10]}")
        images = [im for im in images if im["id"] in wanted]
    if limit is not None:
        images = images[: max(0, limit)]
    all_ids = {im["id"] for im in obj["images"]}
    all_names = {_key(im["file_name"], False) for im in obj["images"]}
    keep = {im["id"] for im in images}
    anns = []
    for i, a in enumerate(obj["annotations"]):
        if not isinstance(a, dict) or "segmentation" not in a or not _is_int(a.get("image_id")):
            raise EvalError(f"{path}: annotations[{i}] needs an int image_id and a segmentation")
        if a["image_id"] in keep:
            # Class-agnostic: every category becomes the one class "fg" (id 1).
            anns.append(dict(a, category_id=1))
    return {"path": path, "images": images, "annotations": anns, "all_ids": all_ids, "all_names": all_names}


def coco_metrics(E, max_dets: int) -> dict[str, float | None]:
    """The AR/AP numbers from an accumulated ``COCOeval`` (``E.eval``) with ``max_dets`` among its maxDets.

    Mirrors ``COCOeval.summarize``: the mean over the entries that are not -1
    (None where all are -1, e.g. no GT in an area range).
    """
    p = E.params
    m_of = {m: i for i, m in enumerate(p.maxDets)}
    a_of = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}

    def mean(x: np.ndarray) -> float | None:
        v = x[x > -1]
        return float(v.mean()) if v.size else None

    def ar(k: int, area: str = "all") -> float | None:
        return mean(E.eval["recall"][:, :, a_of[area], m_of[k]])

    def ap(k: int, iou: float | None = None) -> float | None:
        s = E.eval["precision"][:, :, :, a_of["all"], m_of[k]]
        if iou is not None:
            s = s[np.flatnonzero(np.isclose(p.iouThrs, iou))]
        return mean(s)

    out: dict[str, float | None] = {}
    for k in (10, 100):
        if k < max_dets:
            out[f"AR@{k}"] = ar(k)
    out[f"AR@{max_dets}"] = ar(max_dets)
    for area in ("small", "medium", "large"):
        out[f"AR_{area}@{max_dets}"] = ar(max_dets, area)
    out["AP"] = ap(max_dets)
    out["AP50"] = ap(max_dets, 0.5)
    return out


def evaluate_coco(
    pred: str | os.PathLike[str],
    gt: str | os.PathLike[str],
    max_dets: int = 1000,
    limit: int | None = None,
    rank: str = "score",
    curve: Iterable[int] = (),
    progress: bool = False,
    image_ids: Iterable[int] | None = None,
) -> CocoResult:
    """Class-agnostic mask AR/AP of predictions against a COCO GT file (see the module docstring).

    Args:
        pred: folder of per-image JSONs, a COCO-style set, or a COCO results list (GT image ids).
        gt: COCO instances JSON.
        max_dets: the largest maxDets N (AR@N, AR_small/medium/large@N, AP, AP50 at N).
        limit: evaluate only the first ``limit`` GT images (sorted by file name).
        rank: ``"score"`` (a mask's score; area for masks without one) or ``"area"``.
        curve: extra maxDets values k for which AR@k is reported in ``CocoResult.curve``.
        progress: progress bar while reading predictions.
        image_ids: evaluate only these GT images (e.g. :data:`unsam.evaluate.splits.COCO_MINI_EVAL_IDS`),
            before ``limit``; predictions for the other GT images are ignored without a note.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if max_dets < 1:
        raise EvalError(f"--max-dets should be >= 1, got {max_dets}")
    if rank not in ("score", "area"):
        raise ValueError(f"rank should be 'score' or 'area', got {rank!r}")
    g = _load_gt(gt, limit, image_ids)
    gt_path: Path = g["path"]
    if not g["images"]:
        raise EvalError(f"{gt_path}: no images to evaluate")
    by_name: dict[str, dict] = {}
    by_id = {im["id"]: im for im in g["images"]}
    for im in g["images"]:
        k = _key(im["file_name"], False)
        if k in by_name:
            raise EvalError(f"{gt_path}: two GT images share the file name '{k}' (matching is by basename)")
        by_name[k] = im
    items, notes = load_predictions(pred, stem=False, progress=progress)
    notes = list(notes)

    # (GT image, annotation list, where it came from)
    matched: dict[int, tuple[list[dict], str]] = {}
    unmatched: list[str] = []
    if items and isinstance(items[0], dict):  # a COCO results list, keyed by GT image id
        per: dict[int, list[dict]] = {}
        for i, r in enumerate(items):
            if not isinstance(r, dict) or not _is_int(r.get("image_id")):
                raise EvalError(f"{pred}: results[{i}] should be an object with an int image_id")
            if "segmentation" not in r:
                raise EvalError(f"{pred}: results[{i}] has no 'segmentation' (mask results are needed, not boxes)")
            per.setdefault(r["image_id"], []).append(r)
        for iid, rs in per.items():
            if iid in by_id:
                im = by_id[iid]
                _check_anns(rs, im["height"], im["width"], f"{pred} (image_id {iid})")
                matched[iid] = (rs, f"{pred} (image_id {iid})")
            elif iid not in g["all_ids"]:  # beyond --limit is not a mismatch
                unmatched.append(f"image_id {iid}")
        notes.append("results matched to GT images by image_id")
    else:
        notes.append(MATCH_RULE)
        for p in items:
            im = by_name.get(p.key)
            if im is None:
                if p.key not in g["all_names"]:  # beyond --limit is not a mismatch
                    unmatched.append(p.source)
                continue
            if (p.width, p.height) != (im["width"], im["height"]):
                raise EvalError(
                    f"{p.source}: image size {p.width}x{p.height} (width x height) does not match the GT image "
                    f"{im['file_name']} ({im['width']}x{im['height']}) in {gt_path}"
                )
            matched[im["id"]] = (p.anns, p.source)

    # Detections: each image's masks ranked by score and cut to the largest maxDets
    # (COCOeval cuts the same way: stable sort by -score, so the result is identical).
    dets: list[dict] = []
    n_masks = 0
    n_missing_score = 0
    for iid, (anns, _src) in matched.items():
        im = by_id[iid]
        h, w = im["height"], im["width"]
        n_masks += len(anns)
        if not anns:
            continue
        rles = pred_rles(anns, h, w)
        areas = rle_areas(rles).astype(np.float64)
        sc, miss = _scores(anns, areas, h, w, rank)
        n_missing_score += miss
        order = np.argsort(-sc, kind="mergesort")[:max_dets]
        boxes = mask_utils.toBbox([rles[i] for i in order])
        for j, i in enumerate(order.tolist()):
            dets.append(
                {
                    "id": len(dets) + 1,
                    "image_id": iid,
                    "category_id": 1,
                    "segmentation": rles[i],
                    "score": float(sc[i]),
                    "area": float(areas[i]),
                    "bbox": [float(v) for v in boxes[j]],
                    "iscrowd": 0,
                }
            )
    missing = [im["file_name"] for im in g["images"] if im["id"] not in matched]
    if rank == "area":
        notes.append(AREA_RULE)
    else:
        notes.append(SCORE_RULE + f": {n_missing_score} of {n_masks} masks had none")
    if missing:
        notes.append(f"{len(missing)} GT image(s) without a prediction, counted as misses")
    if unmatched:
        notes.append(f"{len(unmatched)} prediction(s) for images not in the GT, ignored")

    cats = [{"id": 1, "name": "fg", "supercategory": "fg"}]
    if progress:
        print(f"COCOeval: {len(g['images'])} images, {len(dets)} masks ...", file=sys.stderr, flush=True)
    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = {"images": g["images"], "annotations": g["annotations"], "categories": cats}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": g["images"], "annotations": dets, "categories": cats}
        coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, "segm")
        E.params.useCats = 0
        E.params.imgIds = sorted(by_id)
        extra = {int(k) for k in curve if 0 < int(k) <= max_dets}
        E.params.maxDets = sorted({k for k in (10, 100) if k < max_dets} | {max_dets} | extra)
        t0 = time.perf_counter()
        E.evaluate()
        E.accumulate()
    log.debug("COCOeval: %.1f s", time.perf_counter() - t0)
    metrics: dict[str, Any] = coco_metrics(E, max_dets)
    metrics["images"] = len(g["images"])
    metrics["masks_per_image"] = n_masks / len(g["images"])
    a_all = E.params.areaRngLbl.index("all")
    rec = E.eval["recall"]
    curve_out = {}
    for mi, k in enumerate(E.params.maxDets):
        v = rec[:, :, a_all, mi]
        v = v[v > -1]
        curve_out[int(k)] = float(v.mean()) if v.size else 0.0
    return CocoResult(metrics, curve_out, notes, unmatched, missing)
