"""``python -m unsam.train``: train a whole-image or promptable model on pseudo-masks.

    python -m unsam.train --config unsam/train/configs/train_smoke.yaml --output runs/smoke
    torchrun --nproc-per-node 8 -m unsam.train --config unsam/train/configs/whole_gpu.yaml --output runs/whole \\
        --train labels/ --val coco/annotations/instances_val2017.json --val-image-root coco/val2017

The YAML file has one mapping per group (``model``, ``data``, ``optim``,
``sched``, ``loss``, ``train``, ``eval``); :class:`TrainConfig` holds every
default once and the file and the command line only override it (``--set
group.key=value`` reaches any key). ``{output}`` in a data path is the run's
``--output``. ``--output DIR`` receives:

- ``config.yaml``: the resolved configuration (and how the run was launched);
- ``checkpoints/last.pt`` (every ``train.ckpt_every`` steps and at the end,
  written atomically) and ``step_NNNNNNN.pt`` copies (``train.keep_checkpoints``);
  ``model.pt`` (weights + config) at the end, for ``unsam.models.predict``;
- ``log.txt``, ``metrics.jsonl`` (one row per log line), ``eval.jsonl``.

Rerunning the same command after a kill resumes from ``checkpoints/last.pt``:
same step, model, optimizer, scheduler and RNG state, and - because the data
stream is a function of the step (``unsam.train.data.GlobalBatchSampler``) and
every sample's randomness is seeded by (seed, epoch, index) - the same batches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from unsam.train.config import ConfigError, config_from_dict, load_config
from unsam.train.data import DatasetError
from unsam.train.loop import Trainer


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
