"""The training loop: :class:`Trainer` (one process of a run; DDP under torchrun), checkpoints and
exact resume, logs."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from unsam.train.config import (
    PROJECT_ROOT,
    ConfigError,
    TrainConfig,
    validate,
)
from unsam.train.data import (
    DatasetError,
    GlobalBatchSampler,
    MaskDataset,
    collate,
    load_records,
)
from unsam.train.optim import build_optimizer, lr_factor
from unsam.train.validate import evaluate_prompt, evaluate_whole

log = logging.getLogger("unsam.train")


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
