"""Evaluation during training: whole-image models by class-agnostic COCO mask AR, promptable
models by point prompts (:mod:`unsam.evaluate.points`)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch

from unsam.train.data import Record

log = logging.getLogger("unsam.train")


def coco_mask_ar(gt: dict[str, Any], results: list[dict[str, Any]], max_dets: tuple[int, int, int] = (10, 100, 1000)) -> dict[str, float]:
    """Class-agnostic mask AR/AP with pycocotools (ALGORITHM.md §6): ``useCats = 0``, maxDets (10, 100, 1000).

    Args:
        gt: COCO dict (images, annotations with RLE or polygon ``segmentation``, categories).
        results: ``{image_id, segmentation (RLE), score}`` rows.

    Returns:
        ``AR@10, AR@100, AR@1000, AR_small@1000, AR_medium@1000, AR_large@1000, AP, AP50``
        (fractions) and ``images``, ``masks_per_image`` — the keys of ``unsam.evaluate coco``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n_img = len(gt.get("images", []))
    out = {
        f"AR@{max_dets[0]}": 0.0, f"AR@{max_dets[1]}": 0.0, f"AR@{max_dets[2]}": 0.0,
        f"AR_small@{max_dets[2]}": 0.0, f"AR_medium@{max_dets[2]}": 0.0, f"AR_large@{max_dets[2]}": 0.0,
        "AP": 0.0, "AP50": 0.0, "images": n_img, "masks_per_image": len(results) / max(n_img, 1),
    }  # fmt: skip
    if not results or not gt.get("annotations"):
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "categories": gt.get("categories") or [{"id": 1, "name": "fg"}]}
        coco_gt.createIndex()
        cat = coco_gt.getCatIds()[0]
        coco_dt = coco_gt.loadRes([{**r, "category_id": cat} for r in results])
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.useCats = 0
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    st = [max(0.0, float(v)) for v in ev.stats]  # -1 = "no GT of that size": reported as 0
    out.update({
        "AP": st[0], "AP50": st[1], f"AR@{max_dets[0]}": st[6], f"AR@{max_dets[1]}": st[7], f"AR@{max_dets[2]}": st[8],
        f"AR_small@{max_dets[2]}": st[9], f"AR_medium@{max_dets[2]}": st[10], f"AR_large@{max_dets[2]}": st[11],
    })  # fmt: skip
    return out


def gt_coco_from_records(records: list[Record]) -> dict[str, Any]:
    """A COCO ground-truth dict of label-set records (every mask one class)."""
    from pycocotools import mask as mask_utils

    ids = [r.image_id for r in records]
    keep_ids = len(set(ids)) == len(ids)
    images, anns = [], []
    for n, r in enumerate(records, start=1):
        iid = r.image_id if keep_ids else n
        images.append({"id": iid, "file_name": r.file_name, "width": r.width, "height": r.height})
        for rle, area, box in zip(r.rles, r.areas, r.boxes):
            counts = rle["counts"]
            anns.append({
                "id": len(anns) + 1, "image_id": iid, "category_id": 1, "iscrowd": 0, "area": int(area),
                "bbox": [float(v) for v in box],
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts},
            })  # fmt: skip
    del mask_utils
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "fg", "supercategory": "fg"}]}


def evaluate_whole(model: torch.nn.Module, records: list[Record], crop_size: int, device: torch.device, out_dir: Path, topk: int = 100) -> dict[str, Any]:
    """Predict ``records``' images into ``out_dir`` (per-image JSONs) and score them against their masks.

    Scoring uses ``python -m unsam.evaluate coco`` when that module is installed
    (same numbers as the evaluation CLI), else :func:`coco_mask_ar`; the result's
    ``evaluator`` says which.
    """
    from unsam.io import image_record, load_image, write_json_atomic
    from unsam.models.predict import Predictor

    pred = Predictor(model, crop_size, device, topk=topk)
    gt = gt_coco_from_records(records)
    results = []
    pred_dir = out_dir / "predictions"
    for rec, img_entry in zip(records, gt["images"]):
        img = load_image(rec.path)
        anns = pred.annotations(img)
        write_json_atomic(pred_dir / Path(rec.file_name).with_suffix(".json"), {"image": image_record(img_entry["id"], rec.file_name, rec.width, rec.height), "annotations": anns})
        results.extend({"image_id": img_entry["id"], "segmentation": a["segmentation"], "score": a["score"]} for a in anns)
    metrics, evaluator = None, "pycocotools"
    try:
        import unsam.evaluate as ev  # written alongside; optional here
    except ImportError:
        ev = None
    if ev is not None and hasattr(ev, "main"):
        gt_path, js = out_dir / "gt.json", out_dir / "metrics.json"
        write_json_atomic(gt_path, gt)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                rc = ev.main(["coco", "--pred", str(pred_dir), "--gt", str(gt_path), "--json", str(js)])
            if rc in (0, None) and js.is_file():
                metrics, evaluator = json.loads(js.read_text()), "unsam.evaluate"
        except (Exception, SystemExit) as e:  # noqa: BLE001 - evaluation must not end a training run
            log.warning("unsam.evaluate coco failed (%s); scoring with pycocotools directly", e)
    if metrics is None:
        metrics = coco_mask_ar(gt, results)
    return {**metrics, "evaluator": evaluator}


def evaluate_prompt(model: torch.nn.Module, records: list[Record], crop_size: int, device: torch.device, max_clicks: int = 50) -> dict[str, Any]:
    """Point-prompt MaxIoU / OracleIoU of ``model`` on ``records`` (see :mod:`unsam.evaluate.points`)."""
    from unsam.evaluate.points import evaluate_points
    from unsam.models.predict import Predictor

    pred = Predictor(model, crop_size, device)
    return {**evaluate_points(pred.predict_points, records, max_masks_per_image=max_clicks), "evaluator": "unsam.evaluate.points"}
