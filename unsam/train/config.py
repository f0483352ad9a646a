"""Training settings: :class:`TrainConfig` (one dataclass per YAML group) holds every default once;
a YAML file and the command line only override it (:func:`load_config`, :func:`config_from_dict`)."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
