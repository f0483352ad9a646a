"""``python -m unsam.train``: train a whole-image or promptable model on pseudo-masks.

    python -m unsam.train --config unsam/configs/train_smoke.yaml --output runs/smoke
    torchrun --nproc-per-node 8 -m unsam.train --config unsam/configs/whole_gpu.yaml --output runs/whole \\
        --train labels/ --val coco/annotations/instances_val2017.json --val-image-root coco/val2017

The YAML file has one mapping per group (``model``, ``data``, ``optim``,
``sched``, ``loss``, ``train``, ``eval``); :class:`TrainConfig` holds every
default once and the file and the command line only override it (``--set
group.key=value`` reaches any key). ``{output}`` in a data path is the run's
``--output``. ``--output DIR`` receives:

- ``config.yaml``: the resolved configuration (and how the run was launched);
- ``checkpoints/last.pt`` (every ``train.ckpt_every`` steps and at the end,
  written atomically) and ``step_NNNNNNN.pt`` copies (``train.keep_checkpoints``);
  ``model.pt`` (weights + config) at the end, for ``unsam.predict``;
- ``log.txt``, ``metrics.jsonl`` (one row per log line), ``eval.jsonl``.

Rerunning the same command after a kill resumes from ``checkpoints/last.pt``:
same step, model, optimizer, scheduler and RNG state, and - because the data
stream is a function of the step (``unsam.train_data.GlobalBatchSampler``) and
every sample's randomness is seeded by (seed, epoch, index) - the same batches.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
import types
import typing
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from unsam.train_data import (
    DatasetError,
    GlobalBatchSampler,
    MaskDataset,
    Record,
    collate,
    load_records,
)

__all__ = [
    "ConfigError",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "coco_mask_ar",
    "config_from_dict",
    "load_config",
    "lr_factor",
    "main",
]

log = logging.getLogger("unsam.train")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


# ---------------------------------------------------------------------------------- config


@dataclass
class ModelConfig:
    name: str = "unsam_whole_tiny"  #: a name of unsam.models.list_models()
    kwargs: dict[str, Any] = field(default_factory=dict)  #: constructor overrides (backbone, pretrained, checkpoint, num_queries, ...)
    init: str | None = None  #: start from the weights of an earlier run (tensors that fit; the rest stay random)


@dataclass
class DataConfig:
    train: str | None = None  #: label folder (per-image JSONs) or COCO JSON
    image_root: str | None = None  #: where train file_names point (default: the label folder's recorded input)
    val: str | None = None  #: held-out set for periodic evaluation (label folder or COCO JSON with ground truth)
    val_image_root: str | None = None
    make_labels: dict[str, Any] | None = None  #: {images: DIR, args: [...]}: run unsam.label into `train` when it is missing
    crop_size: int = 512  #: square training crop (a multiple of the patch size)
    scale_range: tuple[float, float] = (0.5, 2.0)  #: scale jitter of "longer side = crop_size"
    hflip: bool = True
    max_masks: int = 200  #: masks per crop at most (published 200-500)
    min_mask_area: int = 8  #: pixels in the crop
    clicks: int = 8  #: promptable model: clicks per crop
    max_click_targets: int = 12  #: promptable model: masks supervising one click at most
    workers: int = 2  #: DataLoader workers per process
    limit: int | None = None  #: use the first N images only


@dataclass
class OptimConfig:
    lr: float = 5e-5  #: published (AdamW, batch 16)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 0.1  #: Mask2Former's backbone multiplier
    clip_grad: float = 1.0  #: max global gradient norm (0: no clipping)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  #: cosine | step | constant (after the warm-up)
    warmup_steps: int = 0
    warmup_factor: float = 0.001  #: lr factor at step 0, rising linearly to 1
    min_lr_ratio: float = 0.0  #: cosine: final lr / base lr
    milestones: tuple[int, ...] = ()  #: step: multiply by gamma at each
    gamma: float = 0.1


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    iou_weight: float = 1.0  #: promptable model: predicted-IoU regression
    num_points: int = 12544  #: points per mask (112 x 112)
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    aux_loss: bool = True  #: deep supervision of every decoder layer


@dataclass
class RunConfig:
    steps: int = 1000  #: optimizer steps in all
    batch_size: int = 16  #: global batch (all processes together)
    seed: int = 0
    device: str = "auto"  #: auto | cpu | cuda
    amp: bool = True  #: bf16 autocast (CUDA only)
    grad_checkpointing: bool = False  #: recompute ViT blocks in the backward pass
    threads: int | None = None  #: torch CPU threads
    log_every: int = 20
    ckpt_every: int = 500
    keep_checkpoints: int = 2  #: step_*.pt files kept besides last.pt


@dataclass
class EvalConfig:
    every: int = 0  #: evaluate on data.val every N steps (0: at the end only)
    max_images: int = 50
    topk: int = 100  #: whole-image model: masks per image
    max_clicks: int = 50  #: promptable model: GT masks (clicks) per image at most


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list):
                return [plain(x) for x in v]
            return v

        return plain(dataclasses.asdict(self))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"config: {where} should be {_hint_name(hint)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif origin is list or hint is list:
        if isinstance(value, list):
            return list(value)
    raise ConfigError(f"config: {where} should be {_hint_name(hint)}, got {value!r}")


def _hint_name(hint: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _hint_name(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args) if args[-1] is not Ellipsis else 'any number of'} values"
    if origin is dict or hint is dict:
        return "a mapping"
    return str(hint)


def config_from_dict(data: dict[str, Any] | None, base: TrainConfig | None = None) -> TrainConfig:
    """Overlay a nested dict (YAML) on a config; unknown groups/keys and wrong types are a :class:`ConfigError`."""
    cfg = TrainConfig() if base is None else config_from_dict(base.to_dict())
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"config: the top level should be a mapping of groups, got {type(data).__name__}")
    groups = {f.name for f in dataclasses.fields(TrainConfig)}
    for gname, gval in data.items():
        if gname not in groups:
            raise ConfigError(f"config: unknown group '{gname}' (known: {', '.join(sorted(groups))})")
        if gval is None:
            continue
        if not isinstance(gval, dict):
            raise ConfigError(f"config: '{gname}' should be a mapping, got {type(gval).__name__}")
        group = getattr(cfg, gname)
        hints = typing.get_type_hints(type(group))
        for k, v in gval.items():
            if k not in hints:
                raise ConfigError(f"config: unknown key '{gname}.{k}' (known: {', '.join(sorted(hints))})")
            setattr(group, k, _coerce(v, hints[k], f"{gname}.{k}"))
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Range checks that need no files; raises :class:`ConfigError` naming the key."""
    from unsam.models import is_model, list_models

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(f"config: {msg}")

    need(is_model(cfg.model.name), f"model.name '{cfg.model.name}' is not a registered model (known: {', '.join(list_models())})")
    d, o, s, lo, r, e = cfg.data, cfg.optim, cfg.sched, cfg.loss, cfg.train, cfg.eval
    need(d.train is not None, "data.train is not set (a label folder or COCO JSON; --train PATH)")
    need(d.crop_size >= 16, f"data.crop_size should be >= 16, got {d.crop_size}")
    need(0 < d.scale_range[0] <= d.scale_range[1], f"data.scale_range should be [min, max] with 0 < min <= max, got {list(d.scale_range)}")
    need(d.max_masks >= 1, f"data.max_masks should be >= 1, got {d.max_masks}")
    need(d.clicks >= 1, f"data.clicks should be >= 1, got {d.clicks}")
    need(d.max_click_targets >= 1, f"data.max_click_targets should be >= 1, got {d.max_click_targets}")
    need(d.workers >= 0, f"data.workers should be >= 0, got {d.workers}")
    need(d.limit is None or d.limit >= 1, f"data.limit should be >= 1, got {d.limit}")
    if d.make_labels is not None:
        need("images" in d.make_labels, "data.make_labels needs 'images' (the folder to label)")
        unknown = set(d.make_labels) - {"images", "args"}
        need(not unknown, f"data.make_labels: unknown key(s) {sorted(unknown)} (known: images, args)")
    need(o.lr > 0 and math.isfinite(o.lr), f"optim.lr should be > 0, got {o.lr}")
    need(o.weight_decay >= 0, f"optim.weight_decay should be >= 0, got {o.weight_decay}")
    need(all(0 <= b < 1 for b in o.betas), f"optim.betas should be in [0, 1), got {list(o.betas)}")
    need(o.backbone_lr_mult >= 0, f"optim.backbone_lr_mult should be >= 0, got {o.backbone_lr_mult}")
    need(o.clip_grad >= 0, f"optim.clip_grad should be >= 0 (0 = off), got {o.clip_grad}")
    need(s.name in ("cosine", "step", "constant"), f"sched.name should be cosine, step or constant, got '{s.name}'")
    need(s.warmup_steps >= 0, f"sched.warmup_steps should be >= 0, got {s.warmup_steps}")
    need(0 < s.warmup_factor <= 1, f"sched.warmup_factor should be in (0, 1], got {s.warmup_factor}")
    need(0 <= s.min_lr_ratio <= 1, f"sched.min_lr_ratio should be in [0, 1], got {s.min_lr_ratio}")
    need(list(s.milestones) == sorted(set(s.milestones)) and all(m > 0 for m in s.milestones), f"sched.milestones should be increasing positive steps, got {list(s.milestones)}")
    need(0 < s.gamma <= 1, f"sched.gamma should be in (0, 1], got {s.gamma}")
    for k in ("class_weight", "mask_weight", "dice_weight", "iou_weight"):
        need(getattr(lo, k) >= 0, f"loss.{k} should be >= 0, got {getattr(lo, k)}")
    need(0 < lo.no_object_weight <= 1, f"loss.no_object_weight should be in (0, 1], got {lo.no_object_weight}")
    need(lo.num_points >= 1, f"loss.num_points should be >= 1, got {lo.num_points}")
    need(lo.oversample_ratio >= 1, f"loss.oversample_ratio should be >= 1, got {lo.oversample_ratio}")
    need(0 <= lo.importance_ratio <= 1, f"loss.importance_ratio should be in [0, 1], got {lo.importance_ratio}")
    need(r.steps >= 1, f"train.steps should be >= 1, got {r.steps}")
    need(r.batch_size >= 1, f"train.batch_size should be >= 1, got {r.batch_size}")
    need(r.device in ("auto", "cpu", "cuda"), f"train.device should be auto, cpu or cuda, got '{r.device}'")
    need(r.log_every >= 1, f"train.log_every should be >= 1, got {r.log_every}")
    need(r.ckpt_every >= 1, f"train.ckpt_every should be >= 1, got {r.ckpt_every}")
    need(r.keep_checkpoints >= 0, f"train.keep_checkpoints should be >= 0, got {r.keep_checkpoints}")
    need(r.threads is None or r.threads >= 1, f"train.threads should be >= 1, got {r.threads}")
    need(e.every >= 0 and e.max_images >= 1 and e.topk >= 1 and e.max_clicks >= 1, "eval: every >= 0, max_images, topk and max_clicks >= 1")


def load_config(path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides (nested dict). A bare name (``train_smoke``) means a shipped config."""
    import yaml

    cfg = TrainConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file() and (CONFIG_DIR / p.name).is_file() and not p.parent.name:
            p = CONFIG_DIR / p.name
        if not p.is_file() and (CONFIG_DIR / f"{p.name}.yaml").is_file():
            p = CONFIG_DIR / f"{p.name}.yaml"
        if not p.is_file():
            shipped = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
            raise ConfigError(f"--config {path}: no such file (shipped configs: {shipped})")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {p}: not valid YAML: {e}") from None
        cfg = config_from_dict(data, cfg)
    if overrides:
        cfg = config_from_dict(overrides, cfg)
    return cfg


# ------------------------------------------------------------------------------- schedule


def lr_factor(step: int, sched: ScheduleConfig, total_steps: int) -> float:
    """Multiplier of the base learning rates after ``step`` optimizer steps."""
    f = 1.0
    w = sched.warmup_steps
    if step < w:
        f = sched.warmup_factor + (1.0 - sched.warmup_factor) * step / w
    if sched.name == "cosine" and step >= w:
        progress = min(1.0, (step - w) / max(1, total_steps - w))
        f *= sched.min_lr_ratio + (1.0 - sched.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif sched.name == "step":
        f *= sched.gamma ** bisect_right(list(sched.milestones), step)
    return f


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with four groups: backbone / rest x decay / no decay (norms, biases, embeddings, queries)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list] = {(b, d): [] for b in (True, False) for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bb = name.startswith("backbone.")
        no_decay = p.ndim <= 1 or name in skip or name.endswith(("pos_embed", "cls_token", "reg_token"))
        groups[(is_bb, not no_decay)].append(p)
    param_groups = []
    for (is_bb, decay), params in groups.items():
        if params:
            lr = optim.lr * (optim.backbone_lr_mult if is_bb else 1.0)
            param_groups.append({"params": params, "lr": lr, "weight_decay": optim.weight_decay if decay else 0.0, "name": f"{'backbone' if is_bb else 'head'}{'' if decay else '_no_decay'}"})
    # foreach: one kernel per group instead of one per tensor (5x faster on CPU for small models).
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, foreach=True)


# ----------------------------------------------------------------------------- evaluation


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
    from unsam.predict import Predictor

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
    """Point-prompt MaxIoU / OracleIoU of ``model`` on ``records`` (see :mod:`unsam.evaluate_points`)."""
    from unsam.evaluate_points import evaluate_points
    from unsam.predict import Predictor

    pred = Predictor(model, crop_size, device)
    return {**evaluate_points(pred.predict_points, records, max_masks_per_image=max_clicks), "evaluator": "unsam.evaluate_points"}


# ---------------------------------------------------------------------------------- trainer


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _resolve_path(value: str | None, output: Path) -> str | None:
    if value is None:
        return None
    v = value.replace("{output}", str(output))
    p = Path(v).expanduser()
    if not p.is_absolute() and not p.exists() and (PROJECT_ROOT / p).exists():
        # Shipped configs name the repository's sample images relative to its root.
        p = PROJECT_ROOT / p
    return str(p)


class Trainer:
    """One training run (one process of it under torchrun). ``Trainer(cfg, output).fit()``."""

    def __init__(
        self,
        cfg: TrainConfig,
        output: str | os.PathLike[str],
        resume: str = "auto",
        argv: list[str] | None = None,
        on_step: typing.Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        validate(cfg)
        self.cfg = cfg
        self.on_step = on_step  # called after every optimizer step with (step, losses); tests use it to simulate a kill
        self.output = Path(output)
        self.resume = resume
        self.argv = argv
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cfg.train.batch_size % self.world:
            raise ConfigError(f"config: train.batch_size ({cfg.train.batch_size}) is the global batch and should be a multiple of the number of processes ({self.world})")
        d = cfg.data
        d.train = _resolve_path(d.train, self.output)
        d.val = _resolve_path(d.val, self.output)
        d.image_root = _resolve_path(d.image_root, self.output)
        d.val_image_root = _resolve_path(d.val_image_root, self.output)
        if d.make_labels is not None:
            d.make_labels = {**d.make_labels, "images": _resolve_path(str(d.make_labels["images"]), self.output)}
        cfg.model.init = _resolve_path(cfg.model.init, self.output)

    # ------------------------------------------------------------------ setup
    def _device(self) -> torch.device:
        want = self.cfg.train.device
        if want == "cuda" and not torch.cuda.is_available():
            raise ConfigError("config: train.device is cuda but torch sees no CUDA GPU")
        if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
            dev = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)
            return dev
        return torch.device("cpu")

    def _setup_logging(self) -> None:
        log.setLevel(logging.INFO if self.rank == 0 else logging.WARNING)
        log.propagate = False
        for h in list(log.handlers):
            log.removeHandler(h)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        log.addHandler(sh)
        if self.rank == 0:
            fh = logging.FileHandler(self.output / "log.txt")
            fh.setFormatter(fmt)
            log.addHandler(fh)

    def _barrier(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()

    def _ensure_labels(self) -> None:
        d = self.cfg.data
        if Path(d.train).exists() or d.make_labels is None:
            return
        if self.rank == 0:
            images = d.make_labels["images"]
            if not Path(images).exists():
                raise DatasetError(f"data.make_labels.images {images} does not exist")
            args = [str(a) for a in (d.make_labels.get("args") or [])]
            log.info("labels %s missing: labelling %s with unsam.label %s", d.train, images, " ".join(args))
            # A clean environment: under torchrun the labeler would otherwise join our process group.
            env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")}
            cmd = [sys.executable, "-m", "unsam.label", "--input", str(Path(images).resolve()), "--output", d.train, "--workers", "0", "--quiet", *args]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise DatasetError(f"making labels failed ({' '.join(cmd)}):\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
            log.info("%s", res.stdout.strip().splitlines()[0] if res.stdout.strip() else "labels written")
        self._barrier()

    def _build(self) -> None:
        from unsam.models import (
            PromptCriterion,
            SetCriterion,
            checkpoint_filter_fn,
            create_model,
        )

        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        kwargs = dict(cfg.model.kwargs)
        if cfg.train.grad_checkpointing:
            kwargs["grad_checkpointing"] = True
        self.model = create_model(cfg.model.name, **kwargs)
        self.task = self.model.task
        if cfg.model.init:
            if not Path(cfg.model.init).is_file():
                raise FileNotFoundError(f"model.init: no such file {cfg.model.init}")
            state = checkpoint_filter_fn(torch.load(cfg.model.init, map_location="cpu", weights_only=True), self.model)
            missing = self.model.load_state_dict(state, strict=False).missing_keys
            log.info("initialised %d tensors from %s (%d left as they were)", len(state), cfg.model.init, len(missing))
        p = self.model.patch_size
        if cfg.data.crop_size % p:
            raise ConfigError(f"config: data.crop_size ({cfg.data.crop_size}) should be a multiple of the backbone's patch size {p}")
        self.model.to(self.device)
        if self.task == "whole" and self.model.num_queries < cfg.data.max_masks:
            log.warning("data.max_masks (%d) > num_queries (%d): masks beyond the number of queries are never matched",
                        cfg.data.max_masks, self.model.num_queries)  # fmt: skip
        lo = cfg.loss
        if self.task == "whole":
            self.criterion = SetCriterion(lo.class_weight, lo.mask_weight, lo.dice_weight, lo.no_object_weight, lo.num_points, lo.oversample_ratio, lo.importance_ratio, lo.aux_loss)
        else:
            self.criterion = PromptCriterion(lo.mask_weight, lo.dice_weight, lo.iou_weight, lo.num_points, lo.oversample_ratio, lo.importance_ratio)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg.sched, cfg.train.steps))
        self.ddp = self.model
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _data(self) -> None:
        d = self.cfg.data
        self.records = load_records(d.train, d.image_root, min_area=d.min_mask_area, limit=d.limit)
        n_masks = sum(len(r.rles) for r in self.records)
        if n_masks == 0:
            raise DatasetError(f"label set {d.train} has {len(self.records)} images but no masks: nothing to learn from")
        self.dataset = MaskDataset(
            self.records, d.crop_size, True, d.scale_range, d.hflip, d.max_masks, d.min_mask_area,
            clicks=d.clicks if self.task == "prompt" else 0, max_click_targets=d.max_click_targets, seed=self.cfg.train.seed,
        )  # fmt: skip
        self.val_records = None
        if d.val:
            self.val_records = load_records(d.val, d.val_image_root, limit=self.cfg.eval.max_images)
        log.info("data: %d training images (%.0f masks/image) from %s%s", len(self.records), n_masks / len(self.records), d.train,
                 f"; {len(self.val_records)} held-out images from {d.val}" if self.val_records else "")  # fmt: skip

    def _loader(self, start_step: int):
        cfg = self.cfg
        sampler = GlobalBatchSampler(len(self.dataset), cfg.train.batch_size, self.world, self.rank, cfg.train.seed, start_step)
        w = cfg.data.workers
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=cfg.train.batch_size // self.world, sampler=sampler, collate_fn=collate,
            num_workers=w, pin_memory=self.device.type == "cuda", persistent_workers=False, prefetch_factor=2 if w else None,
        )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.output / "checkpoints"

    def _checkpoint(self, step: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": step,
            "config": self.cfg.to_dict(),
            "task": self.task,
            "world_size": self.world,
            "rng": _rng_state(),
        }

    def save(self, step: int) -> None:
        if self.rank != 0:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        ck = self._checkpoint(step)
        last = self.ckpt_dir / "last.pt"
        _save_atomic(ck, last)
        keep = self.cfg.train.keep_checkpoints
        if keep > 0:
            _save_atomic(ck, self.ckpt_dir / f"step_{step:07d}.pt")
            old = sorted(self.ckpt_dir.glob("step_*.pt"))[:-keep]
            for p in old:
                p.unlink(missing_ok=True)

    def _load(self, path: Path) -> int:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        saved = ck.get("config", {})
        mine = self.cfg.to_dict()["model"]
        theirs = saved.get("model") or {}
        if (theirs.get("name"), theirs.get("kwargs")) != (mine["name"], mine["kwargs"]):
            raise ConfigError(
                f"cannot resume from {path}: it holds model {theirs.get('name')} {theirs.get('kwargs')}, the config says "
                f"{mine['name']} {mine['kwargs']} (use another --output, or --resume none to start over)"
            )
        for key in ("batch_size", "seed"):
            if saved.get("train", {}).get(key) != getattr(self.cfg.train, key):
                log.warning("resuming with train.%s = %s (the checkpoint used %s): the data stream differs from the original run",
                            key, getattr(self.cfg.train, key), saved.get("train", {}).get(key))  # fmt: skip
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        return int(ck["step"])

    # ------------------------------------------------------------------ loop
    def _forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev = self.device
        images = batch["image"].to(dev, non_blocking=True).float().div_(255.0)
        targets = [m.to(dev, non_blocking=True) for m in batch["masks"]]
        amp = self.cfg.train.amp and dev.type == "cuda"
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            if self.task == "whole":
                out = self.ddp(images)
            else:
                out = self.ddp(images, batch["points"].to(dev, non_blocking=True))
        if self.task == "whole":
            return self.criterion(out, targets, batch["seed"])
        return self.criterion(out, targets, [c.to(dev) for c in batch["click_targets"]], batch["seed"])

    def _evaluate(self, step: int) -> dict[str, Any] | None:
        if not self.val_records:
            return None
        res = None
        if self.rank == 0:
            self.model.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                if self.task == "whole":
                    res = evaluate_whole(self.model, self.val_records, self.cfg.data.crop_size, self.device, self.output / "eval" / f"step_{step:07d}", self.cfg.eval.topk)
                else:
                    res = evaluate_prompt(self.model, self.val_records, self.cfg.data.crop_size, self.device, self.cfg.eval.max_clicks)
            res = {"step": step, **res, "seconds": round(time.perf_counter() - t0, 2)}
            with open(self.output / "eval.jsonl", "a") as f:
                f.write(json.dumps(res) + "\n")
            shown = {k: v for k, v in res.items() if isinstance(v, float) and k != "seconds"}
            log.info("eval step %d: %s (%s, %d images)", step, ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), res["evaluator"], len(self.val_records))
            self.model.train()
        self._barrier()
        return res

    def fit(self) -> list[dict[str, Any]]:
        """Run (or resume) training; returns the metric rows logged by this call."""
        cfg = self.cfg
        threads = torch.get_num_threads()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.output.mkdir(parents=True, exist_ok=True)
        self._setup_logging()
        self.device = self._device()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)
            for h in list(log.handlers):
                h.close()
                log.removeHandler(h)

    def _fit(self) -> list[dict[str, Any]]:
        import yaml

        cfg = self.cfg
        self._ensure_labels()
        self._build()
        self._data()
        start = 0
        last = self.ckpt_dir / "last.pt"
        if self.resume not in ("auto", "none"):
            if not Path(self.resume).is_file():
                raise FileNotFoundError(f"--resume {self.resume}: no such checkpoint")
            start = self._load(Path(self.resume))
        elif self.resume == "auto" and last.is_file():
            start = self._load(last)
        if start:
            log.info("resumed from step %d", start)
        if self.rank == 0:
            run = {"output": str(self.output), "world_size": self.world, "device": str(self.device), "resumed_from_step": start,
                   "torch": str(torch.__version__), "argv": self.argv}  # fmt: skip
            (self.output / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "_run": run}, sort_keys=False))
            _truncate_jsonl(self.output / "metrics.jsonl", start)
            _truncate_jsonl(self.output / "eval.jsonl", start)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model %s (%s, %.1fM parameters) on %s x %d; global batch %d, %d steps from %d",
                 cfg.model.name, self.task, n_params / 1e6, self.device, self.world, cfg.train.batch_size, cfg.train.steps, start)  # fmt: skip
        rows: list[dict[str, Any]] = []
        if start >= cfg.train.steps:
            log.info("nothing to do: the checkpoint is at step %d of %d", start, cfg.train.steps)
            return rows
        self.model.train()
        loader = iter(self._loader(start))
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, initial=start, unit="step", desc="unsam.train", dynamic_ncols=True,
                   disable=self.rank != 0 or not sys.stderr.isatty())  # fmt: skip
        sums: dict[str, torch.Tensor] = {}
        count = 0
        t_mark = time.perf_counter()
        t_data = 0.0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        for step in range(start + 1, cfg.train.steps + 1):
            t0 = time.perf_counter()
            batch = next(loader)
            t_data += time.perf_counter() - t0
            losses = self._forward(batch)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            clip = cfg.optim.clip_grad if cfg.optim.clip_grad > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            if not torch.isfinite(gnorm):
                # Gradients are all-reduced, so every rank sees the same norm and stops together.
                raise FloatingPointError(f"step {step}: the gradient norm is {gnorm.item()} (loss {losses['loss'].item():.4g}); lower optim.lr or enable optim.clip_grad")
            lr = self.optimizer.param_groups[-1]["lr"]  # the rate this step used
            self.optimizer.step()
            self.scheduler.step()
            for k, v in losses.items():
                if k == "loss" or not k[-1].isdigit():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
            count += 1
            bar.update(1)
            if self.on_step is not None:
                self.on_step(step, {k: float(v.detach()) for k, v in losses.items() if k == "loss" or not k[-1].isdigit()})
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                row = self._log_row(step, sums, count, time.perf_counter() - t_mark, t_data, gnorm, lr)
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
                sums, count, t_data = {}, 0, 0.0
                t_mark = time.perf_counter()
            if step % cfg.train.ckpt_every == 0 or step == cfg.train.steps:
                self.save(step)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                self._evaluate(step)
                t_mark = time.perf_counter()
        bar.close()
        self._evaluate(cfg.train.steps)
        if self.rank == 0:
            _save_atomic({"model": self.model.state_dict(), "config": cfg.to_dict(), "task": self.task, "step": cfg.train.steps}, self.output / "model.pt")
            log.info("done: %s", self.output / "model.pt")
        return rows

    def _log_row(self, step: int, sums: dict[str, torch.Tensor], count: int, seconds: float, t_data: float, gnorm: torch.Tensor, lr: float) -> dict[str, Any]:
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys]) / count
        if self.world > 1:
            dist.all_reduce(vec)
            vec /= self.world
        vals = dict(zip(keys, vec.tolist()))
        ips = count * self.cfg.train.batch_size / max(seconds, 1e-9)
        mem = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else _rss_gib()
        row = {"step": step, **{k: round(v, 5) for k, v in vals.items()}, "lr": lr, "grad_norm": round(float(gnorm), 4),
               "images_per_s": round(ips, 3), "data_s": round(t_data / count, 4), "mem_gib": round(mem, 3)}  # fmt: skip
        parts = " ".join(f"{k[5:]} {vals[k]:.3f}" for k in keys if k != "loss")
        log.info("step %d/%d  loss %.4f (%s)  lr %.2e  %.1f img/s  data %.0f ms/step  mem %.2f GiB",
                 step, self.cfg.train.steps, vals["loss"], parts, lr, ips, 1000 * t_data / count, mem)  # fmt: skip
        if self.rank == 0:
            with open(self.output / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row


def _rss_gib() -> float:
    """Peak resident memory of this process (CPU runs)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a killed run logged past its last checkpoint)."""
    if not path.is_file():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in rows if _row_step(ln) <= step]
    if len(kept) != len(rows):
        path.write_text("".join(ln + "\n" for ln in kept))


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


# -------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m unsam.train",
        description="Train a whole-image or promptable segmentation model on pseudo-masks (UnSAM §5).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every key of the YAML groups (model, data, optim, sched, loss, train, eval) can be set with --set group.key=value.",
    )
    g = ap.add_argument_group("run")
    g.add_argument("--config", "-c", default=None, help="YAML file (or a shipped name: train_smoke, whole_gpu, promptable_gpu)")
    g.add_argument("--output", "-o", required=True, type=Path, help="run folder: checkpoints, logs, resolved config")
    g.add_argument("--resume", default="auto", help="auto (default: continue DIR/checkpoints/last.pt if present), none, or a checkpoint path")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="GROUP.KEY=VALUE", help="override any config key (YAML value)")
    g = ap.add_argument_group("data")
    g.add_argument("--train", default=None, help="training labels: label folder or COCO JSON (data.train)")
    g.add_argument("--image-root", default=None, help="folder the training file_names are relative to (data.image_root)")
    g.add_argument("--val", default=None, help="held-out set for evaluation (data.val)")
    g.add_argument("--val-image-root", default=None, help="(data.val_image_root)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers per process (data.workers)")
    g = ap.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=None, help="base learning rate (optim.lr)")
    g.add_argument("--batch-size", type=int, default=None, help="global batch size (train.batch_size)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (train.steps)")
    g = ap.add_argument_group("runtime")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="(train.device)")
    g.add_argument("--seed", type=int, default=None, help="(train.seed)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA (train.amp)")
    g.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None, help="(train.grad_checkpointing)")
    return ap


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    flat = {
        ("data", "train"): args.train, ("data", "image_root"): args.image_root, ("data", "val"): args.val,
        ("data", "val_image_root"): args.val_image_root, ("data", "workers"): args.workers, ("optim", "lr"): args.lr,
        ("train", "batch_size"): args.batch_size, ("train", "steps"): args.steps, ("train", "device"): args.device,
        ("train", "seed"): args.seed, ("train", "amp"): args.amp, ("train", "grad_checkpointing"): args.grad_checkpointing,
    }  # fmt: skip
    for (g, k), v in flat.items():
        if v is not None:
            out.setdefault(g, {})[k] = v
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise ConfigError(f"--set {item!r}: expected GROUP.KEY=VALUE, e.g. optim.lr=1e-4")
        group, _, name = key.partition(".")
        node = out.setdefault(group, {})
        *path, last = name.split(".")
        for p in path:  # model.kwargs.num_queries=200
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value) if value != "" else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        over = _overrides(args)
        # model.kwargs given on the command line extend (not replace) the file's.
        cfg = load_config(args.config)
        if "model" in over and "kwargs" in over["model"]:
            over["model"]["kwargs"] = {**cfg.model.kwargs, **over["model"]["kwargs"]}
        cfg = config_from_dict(over, cfg)
        trainer = Trainer(cfg, args.output, args.resume, argv=list(sys.argv[1:] if argv is None else argv))
        trainer.fit()
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
