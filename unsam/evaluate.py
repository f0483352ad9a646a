"""``python -m unsam.evaluate``: class-agnostic COCO AR/AP and BSDS500 hierarchy metrics.

    python -m unsam.evaluate coco --pred LABELS --gt instances_val2017.json [--max-dets 1000] [--json OUT]
    python -m unsam.evaluate bsds --pred LABELS --gt-dir bsds500/groundTruth/val [--scale level|count] [--json OUT]

``--pred`` is a folder of per-image JSONs as written by ``python -m unsam.label``
or ``python -m unsam.baselines`` (searched recursively; JSON files without an
``image`` entry, such as the run's ``summary.json``, are skipped), a COCO-style
set written by ``python -m unsam.export``, or (``coco`` only) a COCO results
file: a list of ``{image_id, segmentation, score}`` with GT image ids.
Prediction files are matched to GT images by **file name without folders**
(``image.file_name``'s basename; for BSDS its stem, ``101085.jpg`` <->
``101085.mat``). Both modes take ``--limit N`` (the first N GT images in
sorted file-name order) and show a progress bar on a terminal.

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

import argparse
import contextlib
import io
import itertools
import json
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

__all__ = [
    "BSDS_KEYS",
    "SCALES",
    "BsdsResult",
    "CocoResult",
    "EvalError",
    "PredImage",
    "coco_keys",
    "coco_metrics",
    "evaluate_bsds",
    "evaluate_coco",
    "level_partitions",
    "load_bsds_gt",
    "load_predictions",
    "main",
    "ods_ois",
    "probabilistic_rand_index",
    "segmentation_covering",
    "variation_of_information",
]

log = logging.getLogger("unsam.evaluate")

BSDS_KEYS = ("covering_ods", "covering_ois", "pri_ods", "pri_ois", "vi_ods", "vi_ois", "images", "scale")
#: ODS rules of ``evaluate bsds``: "level" is the BSDS500 benchmark's, "count" is non-standard.
SCALES = ("level", "count")
SCALE_RULES = {
    "level": "scale = level index t, one for the whole set (BSDS500 benchmark, collect_eval_reg.m); "
    "an image with fewer levels repeats its last; ODS: best t for the set, OIS: best level per image",
    "count": "NON-STANDARD scale = target segment count k (each image at its level nearest k in log count), "
    "not comparable with published numbers; ODS: best k for the set, OIS: best level per image",
}
SCORE_RULE = "masks without a score are ranked by area (score = area / (height * width), larger first)"
AREA_RULE = "every mask ranked by area (score = area / (height * width), larger first; --rank area)"
MATCH_RULE = "predictions matched to GT images by file name without folders (basename)"


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


class EvalError(ValueError):
    """Evaluation input that cannot be used; the message names the file."""


# --------------------------------------------------------------------------- predictions


@dataclass
class PredImage:
    """The predictions for one image."""

    key: str  #: basename of ``file_name`` (COCO) or its stem (BSDS): what GT is matched on
    source: str  #: file the predictions came from (for messages)
    file_name: str
    width: int
    height: int
    anns: list[dict[str, Any]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not a UTF-8 JSON file ({e})") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: malformed JSON ({e})") from None
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror or e})") from None


def _check_anns(anns: Any, h: int, w: int, where: str) -> None:
    """Structural checks an evaluation needs (RLE of the right size, score a number if given)."""
    if not isinstance(anns, list):
        raise EvalError(f"{where}: 'annotations' should be a list, got {type(anns).__name__}")
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise EvalError(f"{where}: annotations[{i}] should be an object, got {type(a).__name__}")
        seg = a.get("segmentation")
        if not (
            isinstance(seg, dict) and isinstance(seg.get("counts"), (str, list)) and isinstance(seg.get("size"), list)
        ):
            raise EvalError(
                f"{where}: annotations[{i}].segmentation should be a COCO RLE {{size: [H, W], counts}}, got {type(seg).__name__}"
            )
        if seg["size"] != [h, w]:
            raise EvalError(
                f"{where}: annotations[{i}].segmentation.size {seg['size']} does not match the image's "
                f"[height, width] [{h}, {w}]"
            )
        s = a.get("score")
        if s is not None and not (isinstance(s, (int, float)) and not isinstance(s, bool)):
            raise EvalError(f"{where}: annotations[{i}].score should be a number, got {s!r}")


def _key(file_name: str, stem: bool) -> str:
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if stem and "." in base else base


def _pred_from_label(obj: dict, path: Path, stem: bool) -> PredImage:
    img = obj.get("image")
    if not isinstance(img, dict):
        raise EvalError(f"{path}: 'image' should be an object with file_name, width, height")
    fn, w, h = img.get("file_name"), img.get("width"), img.get("height")
    if not isinstance(fn, str) or not fn:
        raise EvalError(f"{path}: image.file_name should be a non-empty string, got {fn!r}")
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        raise EvalError(f"{path}: image.width / image.height should be positive ints, got {w!r} / {h!r}")
    if "annotations" not in obj:
        raise EvalError(f"{path}: missing 'annotations' list")
    _check_anns(obj["annotations"], h, w, str(path))
    return PredImage(_key(fn, stem), str(path), fn, w, h, obj["annotations"])


def _preds_from_set(obj: dict, path: Path, stem: bool) -> list[PredImage]:
    """A COCO-style set (``python -m unsam.export``): images + annotations with image_id."""
    images, anns = obj.get("images"), obj.get("annotations")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise EvalError(f"{path}: a COCO-style set needs 'images' and 'annotations' lists")
    by_id: dict[int, PredImage] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise EvalError(f"{path}: images[{i}] should have an int 'id' and a 'file_name'")
        w, h = im.get("width"), im.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            raise EvalError(f"{path}: images[{i}] ({im['file_name']}) needs positive int width and height")
        by_id[im["id"]] = PredImage(
            _key(im["file_name"], stem), f"{path} [{im['file_name']}]", im["file_name"], w, h, []
        )
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or a.get("image_id") not in by_id:
            got = a.get("image_id") if isinstance(a, dict) else a
            raise EvalError(f"{path}: annotations[{i}].image_id {got!r} is not an image of this file")
        by_id[a["image_id"]].anns.append(a)
    for p in by_id.values():
        _check_anns(p.anns, p.height, p.width, p.source)
    return list(by_id.values())


def _json_files(folder: Path) -> list[Path]:
    out = []
    for p in folder.rglob("*.json"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(rel)
    return [folder / r for r in sorted(out, key=lambda r: r.as_posix())]


def load_predictions(
    pred: str | os.PathLike[str], stem: bool = False, progress: bool = False
) -> tuple[list[PredImage] | list[dict[str, Any]], list[str]]:
    """Read predictions: a folder of per-image JSONs, one per-image JSON, a COCO-style set, or a results list.

    Returns ``(items, notes)``: ``items`` is a list of :class:`PredImage`, or,
    for a COCO results file (a JSON list), that list of result dicts; notes say
    what was skipped. ``stem`` keys images by file name without extension
    (BSDS) instead of the basename.

    Raises:
        EvalError: missing path, malformed or mismatched JSON, an empty folder,
            two prediction files for the same image; the message names the file.
    """
    path = Path(pred)
    notes: list[str] = []
    if path.is_dir():
        files = _json_files(path)
        if not files:
            raise EvalError(f"prediction folder {path} is empty: no .json files (searched recursively)")
        items: list[PredImage] = []
        other = 0
        from tqdm import tqdm

        for f in tqdm(files, desc="reading predictions", unit="file", disable=not progress):
            obj = _read_json(f)
            if isinstance(obj, dict) and "image" in obj:
                items.append(_pred_from_label(obj, f, stem))
            elif isinstance(obj, dict) and "images" in obj and "annotations" in obj:
                items.extend(_preds_from_set(obj, f, stem))
            else:
                other += 1  # the run's summary.json and the like
        if not items:
            raise EvalError(
                f"prediction folder {path} holds no per-image label JSON ({len(files)} .json file(s), "
                "none with an 'image' entry)"
            )
        if other:
            notes.append(f"{other} JSON file(s) in {path} are not label files (no 'image' entry) and were skipped")
    elif path.is_file():
        obj = _read_json(path)
        if isinstance(obj, list):
            return obj, notes
        if isinstance(obj, dict) and "image" in obj:
            items = [_pred_from_label(obj, path, stem)]
        elif isinstance(obj, dict) and "images" in obj and "annotations" in obj:
            items = _preds_from_set(obj, path, stem)
        else:
            raise EvalError(
                f"{path}: not a prediction file (expected a per-image label JSON with 'image', a COCO-style set "
                "with 'images' and 'annotations', or a COCO results list)"
            )
    else:
        raise EvalError(f"prediction path {path} does not exist (expected a folder of per-image JSONs or a JSON file)")
    seen: dict[str, PredImage] = {}
    for p in items:
        if p.key in seen:
            raise EvalError(
                f"two predictions for image '{p.key}': {seen[p.key].source} and {p.source} "
                "(images are matched by file name without folders)"
            )
        seen[p.key] = p
    return items, notes


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


def _rles(anns: Sequence[dict], h: int, w: int) -> list[dict]:
    out = []
    for a in anns:
        seg = a["segmentation"]
        c = seg["counts"]
        if isinstance(c, list):
            out.append(mask_utils.frPyObjects({"size": [h, w], "counts": c}, h, w))
        else:
            out.append({"size": [h, w], "counts": c.encode("ascii") if isinstance(c, str) else c})
    return out


def _areas(rles: Sequence[dict]) -> np.ndarray:
    """Pixel areas of RLEs. In chunks: pycocotools 2.0.11's ``area`` of a list longer
    than 255 fails under numpy 2 (it sizes an array with a uint8)."""
    out = [np.asarray(mask_utils.area(list(rles[i : i + 200])), np.int64) for i in range(0, len(rles), 200)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- COCO


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
        image_ids: evaluate only these GT images (e.g. :data:`unsam.splits.COCO_MINI_EVAL_IDS`),
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
        rles = _rles(anns, h, w)
        areas = _areas(rles).astype(np.float64)
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


# --------------------------------------------------------------------------- BSDS


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
    rles = _rles(anns, height, width)
    areas = _areas(rles)
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


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m unsam.evaluate",
        description="Evaluate pseudo-masks: class-agnostic COCO AR/AP, or BSDS500 covering / PRI / VI at ODS and OIS.",
    )
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--pred",
            required=True,
            help="folder of per-image label JSONs, a COCO-style set file, or (coco) a COCO results list",
        )
        p.add_argument("--json", type=Path, default=None, help="write the metrics to this JSON file")
        p.add_argument(
            "--limit", type=int, default=None, help="evaluate only the first N GT images (sorted by file name)"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser(
        "points",
        add_help=False,
        help="point prompts: MaxIoU / OracleIoU of a promptable model (python -m unsam.evaluate points --help)",
    )
    c = sub.add_parser(
        "coco", help="class-agnostic mask AR@10/100/N, AR small/medium/large, AP, AP50 (COCOeval, useCats=0)"
    )
    common(c)
    c.add_argument("--gt", required=True, help="COCO instances JSON (e.g. instances_val2017.json)")
    c.add_argument("--max-dets", type=int, default=1000, help="largest number of masks per image scored (N)")
    c.add_argument(
        "--rank",
        choices=["score", "area"],
        default="score",
        help="rank masks by their score (area where missing) or all by area",
    )
    b = sub.add_parser("bsds", help="BSDS500 segmentation covering, PRI, VI at ODS and OIS over hierarchy levels")
    common(b)
    b.add_argument("--gt-dir", required=True, help="folder of BSDS500 groundTruth/<id>.mat files")
    b.add_argument(
        "--uncovered",
        choices=["components", "rest"],
        default="components",
        help="pixels no mask covers: one segment per 4-connected area, or one segment in all",
    )
    b.add_argument(
        "--scale",
        choices=list(SCALES),
        default="level",
        help="ODS rule. level (default): the BSDS500 benchmark's (collect_eval_reg.m): one level index t for the "
        "whole set, an image with fewer levels repeats its last. count: NON-STANDARD, each image at its level "
        "nearest a target segment count k; not comparable with published numbers",
    )
    return ap


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_table(title: str, metrics: dict[str, Any], notes: Sequence[str]) -> None:
    print(title)
    w = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"  {k.ljust(w)}  {_fmt(v)}")
    for n in notes:
        print(f"  note: {n}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run an evaluation; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "points":  # point-prompt evaluation of a promptable model
        from unsam.evaluate_points import main as points_main

        return points_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.quiet and (sys.stderr.isatty() or os.environ.get("UNSAM_PROGRESS") == "1")
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit should be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.mode == "coco":
            res = evaluate_coco(
                args.pred, args.gt, max_dets=args.max_dets, limit=args.limit, rank=args.rank, progress=progress
            )
            title = f"unsam.evaluate coco: {args.pred} vs {args.gt} (class-agnostic segm, useCats=0)"
        else:
            res = evaluate_bsds(
                args.pred, args.gt_dir, limit=args.limit, progress=progress, uncovered=args.uncovered, scale=args.scale
            )
            std = "BSDS500 benchmark rule" if args.scale == "level" else "NON-STANDARD count rule"
            title = f"unsam.evaluate bsds: {args.pred} vs {args.gt_dir} (scale: {args.scale}, {std})"
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(title, res.metrics, res.notes)
    for u in res.unmatched[:10]:
        print(f"  not in GT (ignored): {u}")
    if len(res.unmatched) > 10:
        print(f"  ... {len(res.unmatched) - 10} more not in GT")
    print(f"  ({time.perf_counter() - t0:.1f} s)")
    if args.json is not None:
        from unsam.io import write_json_atomic

        write_json_atomic(args.json, res.metrics, indent=1)
        print(f"  metrics written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
