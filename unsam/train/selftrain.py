"""``python -m unsam.selftrain``: one self-training round (ALGORITHM.md §5).

    python -m unsam.selftrain --labels LABELS --checkpoint RUN/model.pt --output LABELS_R2
    python -m unsam.selftrain --labels LABELS --predictions PREDS --output LABELS_R2

The model's confident masks (score > ``--score``, default 0.7) become labels;
every old pseudo-mask with IoU > ``--iou`` (default 0.5) to one of them is
replaced by it; the other old masks stay. Confident predictions that
duplicate each other (IoU > ``--nms``, default 0.9, the labeler's NMS
threshold) are reduced to the best one first. The hierarchy (``level``,
``parent_id``) is then rebuilt as the labeler builds it: a parent holds >= 90 %
of its child and children are clipped to their parents, so the masks stay
exactly nested. Kept masks keep their ``source`` and ``score``; new ones get
the prediction's score and ``origin: "model"``.

Predictions come from ``--checkpoint`` (run here on each labeled image) or
from a folder written by ``unsam.models.predict`` (same relative paths as the labels).
The output folder has the labels' layout and a ``config.yaml`` naming the
same image folder, so ``unsam.train --train LABELS_R2`` reads it directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from unsam.io import image_record, load_image, write_json_atomic

__all__ = ["SelfTrainConfig", "main", "merge_round"]


@dataclass
class SelfTrainConfig:
    score: float = 0.7  #: predictions scoring above this become labels (published 0.7)
    iou: float = 0.5  #: old pseudo-masks with IoU above this to a new label are replaced (published 0.5)
    nms: float = 0.9  #: confident predictions overlapping a better one by more than this are dropped
    contain: float = 0.9  #: hierarchy: a parent holds at least this fraction of its child


def _rle(seg: dict) -> dict:
    c = seg["counts"]
    return {"size": [int(s) for s in seg["size"]], "counts": c.encode("ascii") if isinstance(c, str) else c}


def _iou(a: list[dict], b: list[dict]) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), np.float64).reshape(len(a), len(b))


def merge_round(labels: list[dict], predictions: list[dict], height: int, width: int, cfg: SelfTrainConfig | None = None) -> tuple[list[dict], dict[str, int]]:
    """New annotations of one image from its old pseudo-labels and the model's predictions.

    Args:
        labels, predictions: label-format annotations (``segmentation`` RLE, ``score``).
        height, width: the image size.

    Returns:
        (annotations with ids 1..n and rebuilt hierarchy, counts ``{kept, replaced, added}``).
    """
    from unsam.label.items import MaskItem
    from unsam.label.masks import (
        clip_to_parents,
        pairwise_intersections,
        parents_from_intersections,
        to_annotations,
    )
    from unsam.models.predict import PRED_SOURCE

    cfg = cfg or SelfTrainConfig()
    conf = sorted((p for p in predictions if float(p.get("score", 0.0)) > cfg.score), key=lambda p: -float(p["score"]))
    conf_rles = [_rle(p["segmentation"]) for p in conf]
    # Greedy NMS among the confident predictions (best score first).
    iou_cc = _iou(conf_rles, conf_rles)
    keep: list[int] = []
    for i in range(len(conf)):
        if all(iou_cc[i, j] <= cfg.nms for j in keep):
            keep.append(i)
    conf = [conf[i] for i in keep]
    conf_rles = [conf_rles[i] for i in keep]
    old_rles = [_rle(a["segmentation"]) for a in labels]
    iou_oc = _iou(old_rles, conf_rles)
    replaced = iou_oc.max(1) > cfg.iou if conf_rles and old_rles else np.zeros(len(labels), bool)
    entries = [(a, r, a.get("source", "conquer"), False) for a, r, rep in zip(labels, old_rles, replaced) if not rep]
    entries += [(p, r, PRED_SOURCE, True) for p, r in zip(conf, conf_rles)]
    items, new_flags = [], []
    for a, r, src, is_new in entries:
        m = mask_utils.decode(r).astype(bool)
        ys = np.flatnonzero(m.any(1))
        if ys.size == 0:
            continue
        xs = np.flatnonzero(m.any(0))
        box = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
        items.append(MaskItem(box, np.ascontiguousarray(m[box[1] : box[3], box[0] : box[2]]), float(a.get("score", 1.0)), src))
        new_flags.append(is_new)
    counts = {"kept": int(len(labels) - replaced.sum()), "replaced": int(replaced.sum()), "added": len(conf)}
    if not items:
        return [], counts
    parents = parents_from_intersections(pairwise_intersections(items, height, width), cfg.contain)
    if clip_to_parents(items, parents):
        alive = [i for i, it in enumerate(items) if it.area > 0]
        items = [items[i].tighten() or items[i] for i in alive]
        new_flags = [new_flags[i] for i in alive]
        parents = parents_from_intersections(pairwise_intersections(items, height, width), cfg.contain)
    areas = [it.area for it in items]
    levels = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda k: -areas[k]):
        if parents[i] >= 0:
            levels[i] = levels[parents[i]] + 1
    anns = to_annotations(items, parents, levels, height, width)
    for a, is_new in zip(anns, new_flags):
        if is_new:
            a["origin"] = "model"
    return anns, counts


def _label_files(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(obj, dict) and isinstance(obj.get("image"), dict) and isinstance(obj.get("annotations"), list)
    return obj if ok else None


def build_parser() -> argparse.ArgumentParser:
    d = SelfTrainConfig()
    ap = argparse.ArgumentParser(prog="python -m unsam.selftrain", description="One self-training round: confident predictions replace the pseudo-masks they match.")
    ap.add_argument("--labels", required=True, type=Path, help="current pseudo-labels (per-image JSON folder)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="whole-image model (unsam.train) to predict with")
    src.add_argument("--predictions", type=Path, help="folder written by unsam.models.predict for the same images")
    ap.add_argument("--output", "-o", required=True, type=Path, help="new label folder")
    ap.add_argument("--image-root", type=Path, default=None, help="image folder (default: the one recorded in LABELS/config.yaml)")
    ap.add_argument("--score", type=float, default=None, help=f"confidence threshold (default {d.score})")
    ap.add_argument("--iou", type=float, default=None, help=f"replacement IoU (default {d.iou})")
    ap.add_argument("--nms", type=float, default=None, help=f"duplicate IoU among predictions (default {d.nms}; 1 = off)")
    ap.add_argument("--topk", type=int, default=1000, help="with --checkpoint: masks per image")
    ap.add_argument("--gpu", action="store_true", help="with --checkpoint: predict on the GPU")
    ap.add_argument("--limit", type=int, default=None, help="first N label files only")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = SelfTrainConfig()
    for k in ("score", "iou", "nms"):
        if getattr(args, k) is not None:
            v = getattr(args, k)
            if not 0.0 <= v <= 1.0:
                print(f"error: --{k} should be in [0, 1], got {v}", file=sys.stderr)
                return 2
            setattr(cfg, k, v)
    from unsam.io.datasets import image_root_of_label_dir

    if not args.labels.is_dir():
        print(f"error: --labels {args.labels}: not a folder of per-image label JSONs", file=sys.stderr)
        return 2
    files = [f for f in _label_files(args.labels) if f.name not in ("config.json", "summary.json")]
    if args.limit is not None:
        files = files[: args.limit]
    image_root = args.image_root or image_root_of_label_dir(args.labels) or args.labels
    predictor = None
    if args.checkpoint is not None:
        from unsam.models.predict import Predictor

        try:
            predictor = Predictor.from_checkpoint(args.checkpoint, "cuda" if args.gpu else "cpu", topk=args.topk, min_score=cfg.score)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if predictor.task != "whole":
            print("error: self-training needs a whole-image model; this checkpoint is promptable", file=sys.stderr)
            return 2
    elif not args.predictions.is_dir():
        print(f"error: --predictions {args.predictions}: not a folder", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    totals = {"images": 0, "kept": 0, "replaced": 0, "added": 0, "skipped": 0}
    problems: list[str] = []
    for f in files:
        obj = _read(f)
        if obj is None:
            continue
        rel = f.relative_to(args.labels)
        img = obj["image"]
        h, w = int(img["height"]), int(img["width"])
        if predictor is not None:
            p = Path(img["file_name"])
            p = p if p.is_absolute() else Path(image_root) / p
            try:
                preds = predictor.annotations(load_image(p))
            except Exception as e:  # noqa: BLE001 - one bad image must not end the round
                problems.append(f"{f}: {e}")
                totals["skipped"] += 1
                continue
        else:
            pobj = _read(args.predictions / rel)
            if pobj is None:
                problems.append(f"{f}: no prediction file {args.predictions / rel}")
                totals["skipped"] += 1
                continue
            if (pobj["image"].get("height"), pobj["image"].get("width")) != (h, w):
                problems.append(f"{f}: prediction is for a {pobj['image'].get('width')}x{pobj['image'].get('height')} image, labels for {w}x{h}")
                totals["skipped"] += 1
                continue
            preds = pobj["annotations"]
        anns, counts = merge_round(obj["annotations"], preds, h, w, cfg)
        write_json_atomic(args.output / rel, {"image": image_record(img.get("image_id", 0), img["file_name"], w, h), "annotations": anns})
        totals["images"] += 1
        for k, v in counts.items():
            totals[k] += v
    import yaml

    run: dict[str, Any] = {"input": str(Path(image_root).resolve()), "labels": str(args.labels), "score": cfg.score, "iou": cfg.iou, "nms": cfg.nms,
                           "predictions": str(args.checkpoint or args.predictions)}  # fmt: skip
    (args.output / "config.yaml").write_text(yaml.safe_dump({"_run": run}, sort_keys=False))
    write_json_atomic(args.output / "summary.json", {**totals, "problems": problems}, indent=1)
    for p in problems[:10]:
        print(f"  skipped {p}", file=sys.stderr)
    print(
        f"unsam.train.selftrain: {totals['images']} images; {totals['kept']} pseudo-masks kept, {totals['replaced']} replaced, "
        f"{totals['added']} model masks added (score > {cfg.score}); {totals['skipped']} skipped -> {args.output}"
    )
    return 0 if totals["images"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
