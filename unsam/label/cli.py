"""``python -m unsam.label``: a folder of images -> hierarchical pseudo-masks (SA-1B JSON).

    python -m unsam.label --input IMAGES --output DIR [--gpu] [--backbone classic] ...
    torchrun --nproc-per-node G -m unsam.label --input IMAGES --output DIR --gpu

Each image gets ``DIR/<relative path>.json`` (written atomically); rerunning the
same command resumes (finished images are skipped). ``DIR/config.yaml`` holds
the resolved configuration, ``DIR/summary.json`` the run's summary.
The library holds every default (``unsam.label.config.LabelConfig``); the CLI and
``--config FILE.yaml`` only override them.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from unsam.io import (
    ImageDataset,
    InputError,
    collate_images,
    discover_images,
    image_record,
    read_label_json,
    write_json_atomic,
)
from unsam.label.config import PRESETS, LabelConfig, default_preset, label_config
from unsam.label.masks import REFINE_MODES

log = logging.getLogger("unsam.label")


def build_parser() -> argparse.ArgumentParser:
    d = LabelConfig()  # the library's defaults, shown in the help (the CLI keeps none of its own)
    ap = argparse.ArgumentParser(
        prog="python -m unsam.label",
        description="Label a folder of images with hierarchical pseudo-masks (UnSAM, no human annotation).",
        epilog="Multi-GPU / multi-node: torchrun --nproc-per-node G -m unsam.label ... --gpu",
    )
    g = ap.add_argument_group("input and output")
    g.add_argument("--input", "-i", required=True, help="image folder (recursive), glob pattern, or text file of paths")
    g.add_argument("--output", "-o", required=True, type=Path, help="output folder (one JSON per image)")
    g.add_argument("--save-vis", action="store_true", help="also write an overlay picture per image under DIR/vis")
    g.add_argument("--limit", type=int, default=None, help="label at most this many images (after sorting)")
    g.add_argument("--overwrite", action="store_true", help="relabel images that already have a valid JSON")
    g = ap.add_argument_group("model and device")
    g.add_argument("--gpu", action="store_true", help="run on the GPU (cuda:LOCAL_RANK under torchrun)")
    g.add_argument("--backbone", default=None, help=f"feature backbone (default {d.backbone}; 'classic' needs no weights)")
    g.add_argument("--checkpoint", default=None, help="local weights file for the backbone (no download)")
    g.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="the algorithm: maskcut (CutLER's MaskCut as published), unsam (the paper's divide and conquer), "
        f"full (unsam + atoms and partition levels); default: {default_preset('classic')} for classic, "
        f"{default_preset(d.backbone)} for ViT backbones",
    )
    g.add_argument(
        "--config", type=Path, default=None, help="YAML file overriding the preset (a run's config.yaml works too)"
    )
    g = ap.add_argument_group("pipeline (override the config)")
    g.add_argument("--divide-size", type=int, default=None, help=f"divide resolution, square (default {d.divide_size})")
    g.add_argument("--max-cuts", type=int, default=None, help="MaskCut cuts per image (default: the preset's; maskcut 3, unsam and full 10)")
    g.add_argument("--tau", type=float, default=None, help="affinity threshold (default: the backbone's)")
    g.add_argument(
        "--refine",
        choices=list(REFINE_MODES),
        default=None,
        help=f"mask refinement: edge (guided filter), snap (SLIC superpixels), crf (CutLER's dense CRF) (default {d.refine})",
    )
    g.add_argument("--max-masks", type=int, default=None, help=f"masks per image at most (default {d.masks.max_masks})")
    g.add_argument("--max-pixels", type=int, default=None, help=f"skip larger images (default {d.max_pixels})")
    g = ap.add_argument_group("throughput")
    g.add_argument("--batch-size", type=int, default=1, help="images per batch (default 1)")
    g.add_argument("--workers", type=int, default=2, help="DataLoader decoding workers, 0: in the main process (default 2)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for the kernels (default: torch's)")
    g.add_argument(
        "--cpu-workers",
        type=int,
        default=None,
        help="processes for the per-image CPU stages (atoms, masks, RLE), overlapping the next batch's GPU work "
        "(default: with --gpu and the atom stage on, the CPU cores left after the decoding workers, at most 16; else 0)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def make_config(args: argparse.Namespace) -> LabelConfig:
    """The run's settings: the preset, then ``--config``, then the flags."""
    over: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        if not args.config.is_file():
            raise InputError(f"--config {args.config}: no such file")
        try:
            data = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"--config {args.config}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise InputError(f"--config {args.config}: should be a mapping of settings")
        over = data
    for name in ("backbone", "checkpoint", "divide_size", "tau", "refine", "max_pixels"):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    if args.max_cuts is not None:
        over["divide"] = {**(over.get("divide") or {}), "max_cuts": args.max_cuts}
    if args.max_masks is not None:
        over["masks"] = {**(over.get("masks") or {}), "max_masks": args.max_masks}
    return label_config(over, preset=args.preset)


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _input_root(spec: str, paths: list[Path]) -> Path:
    p = Path(spec)
    if p.is_dir():
        return p.resolve()
    parents = [str(q.resolve().parent) for q in paths]
    return Path(os.path.commonpath(parents)) if parents else Path(".").resolve()


def _fmt_time(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rank, world, local_rank = _dist_info()
    if args.threads:
        torch.set_num_threads(args.threads)
    # ---------------------------------------------------------------- device
    if args.gpu:
        from unsam.kernels import has_cuda

        if not torch.cuda.is_available():
            print("error: --gpu given but torch sees no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
            return 2
        if not has_cuda():
            print(
                "error: --gpu given but unsam was built without CUDA kernels; rebuild with a CUDA toolkit: "
                "UNSAM_CUDA=ON pip install --no-build-isolation -e .",
                file=sys.stderr,
            )
            return 2
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist = None
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if args.gpu else "gloo")
    try:
        return _run(args, device, rank, world, dist)
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def auto_cpu_workers(gpu: bool, atoms: bool, cores: int, world: int = 1, decode_workers: int = 2) -> int:
    """The default of ``--cpu-workers``: this rank's share of the cores, less itself and
    its decoding workers, at most 16, on a GPU run with the atom stage; else 0.

    Workers pay off where the per-image host stages are heavy. On an H200 with
    dino_vitb8, 14 workers took the defaults from 1.3 to 4.3 images/s but slowed a
    run without atoms from 14.3 to 9.8 (shipping masks between processes costs more
    than the light mask stage they share out); on a CPU run the kernels already use
    every core.
    """
    if not (gpu and atoms):
        return 0
    return min(16, max(0, cores // max(1, world) - 1 - max(0, decode_workers)))


def _run(args, device, rank: int, world: int, dist) -> int:
    try:
        cfg = make_config(args)
        paths = discover_images(args.input)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        paths = paths[: args.limit]
    root = _input_root(args.input, paths)
    out_dir: Path = args.output
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{rank}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        print(f"error: output folder {out_dir} is not writable: {e}", file=sys.stderr)
        return 2
    from unsam.label.pipeline import Labeler

    cpu_workers = args.cpu_workers
    if cpu_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cpu_workers = auto_cpu_workers(device.type == "cuda", cfg.atoms.enabled, cores, world, args.workers)
    if cpu_workers < 0:
        print(f"error: --cpu-workers should be >= 0, got {cpu_workers}", file=sys.stderr)
        return 2
    try:
        labeler = Labeler(cfg, device=device, cpu_workers=cpu_workers)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _label_all(args, labeler, device, paths, root, out_dir, rank, world, dist)
    finally:
        labeler.close()


def _label_all(args, labeler, device, paths, root, out_dir, rank: int, world: int, dist) -> int:
    if rank == 0:
        import yaml

        write_text = yaml.safe_dump(
            {**labeler.cfg.to_dict(), "_run": {"input": str(args.input), "device": str(device), "world_size": world}},
            sort_keys=False,
        )
        (out_dir / "config.yaml").write_text(write_text)

    # Each rank takes every world-th image of the sorted list: no two ranks share one.
    jobs = []
    done_before = 0
    for idx in range(rank, len(paths), world):
        p = paths[idx]
        rel = p.resolve().relative_to(root) if p.resolve().is_relative_to(root) else Path(p.name)
        out = out_dir / rel.with_suffix(".json")
        if not args.overwrite and read_label_json(out) is not None:
            done_before += 1
            continue
        jobs.append((idx, p, rel, out))

    ds = ImageDataset([j[1] for j in jobs], max_pixels=labeler.cfg.max_pixels)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=max(1, args.batch_size),
        num_workers=max(0, args.workers),
        collate_fn=collate_images,
        persistent_workers=False,
    )
    from tqdm import tqdm

    bar = tqdm(
        total=len(jobs),
        desc=f"unsam.label[{rank}/{world}]" if world > 1 else "unsam.label",
        unit="img",
        disable=args.quiet or not sys.stderr.isatty() and os.environ.get("UNSAM_PROGRESS") != "1",
        position=rank if world > 1 else None,
    )
    skipped: list[tuple[str, str]] = []
    n_done = n_masks = 0
    t_start = time.perf_counter()
    t_wait = 0.0
    t_write = 0.0
    t_mark = time.perf_counter()
    def submit(good: list) -> list:
        """The batch's futures; if its batched stages fail, one image at a time."""
        try:
            return labeler.submit_batch([it["image"].numpy() for it in good])
        except Exception as e:  # one failing batch must not end the run: retry one by one
            log.warning("batch failed (%s); retrying its images one by one", e)
            futs = []
            for it in good:
                try:
                    futs.extend(labeler.submit_batch([it["image"].numpy()]))
                except Exception as e1:  # noqa: BLE001
                    f: Future = Future()
                    f.set_exception(e1)
                    futs.append(f)
            return futs

    def drain(good: list, futs: list) -> None:
        nonlocal n_done, n_masks, t_write
        for it, anns in zip(good, labeler.collect(futs, errors="return")):
            idx, p, rel, out = jobs[it["index"]]
            if isinstance(anns, Exception):
                skipped.append((str(p), f"error: {type(anns).__name__}: {anns}"))
                bar.update(1)
                continue
            t0 = time.perf_counter()
            h, w = it["image"].shape[:2]
            record = {"image": image_record(idx + 1, rel.as_posix(), w, h), "annotations": anns}
            try:
                write_json_atomic(out, record)
                if args.save_vis:
                    from unsam.label.vis import save_overlay

                    save_overlay(it["image"].numpy(), anns, out_dir / "vis" / rel.with_suffix(".jpg"))
            except OSError as e:
                skipped.append((str(p), f"unwritable: {e}"))
                bar.update(1)
                continue
            t_write += time.perf_counter() - t0
            n_done += 1
            n_masks += len(anns)
            bar.update(1)
            bar.set_postfix(masks_per_img=f"{n_masks / n_done:.0f}")

    # Batches in flight: while the workers run the CPU stages of earlier batches, this
    # process runs the next batch's batched stages; with no workers submit() has done
    # everything already.
    depth = labeler.batches_in_flight(args.batch_size)
    pending: collections.deque = collections.deque()
    for batch in loader:
        t_wait += time.perf_counter() - t_mark
        good = []
        for item in batch:
            if item["error"] is not None:
                skipped.append((item["path"], item["error"]))
                bar.update(1)
            else:
                good.append(item)
        if good:
            pending.append((good, submit(good)))
        while len(pending) > depth:
            drain(*pending.popleft())
        t_mark = time.perf_counter()
    while pending:
        drain(*pending.popleft())
    bar.close()
    wall = time.perf_counter() - t_start
    times = dict(labeler.timings)
    times["decode_wait"] = t_wait
    times["write"] = t_write + times.pop("output", 0.0)
    summary = {
        "rank": rank,
        "world_size": world,
        "images_found": len(paths),
        "images_labeled": n_done,
        "images_done_before": done_before,
        "images_skipped": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "masks": n_masks,
        "masks_per_image": n_masks / n_done if n_done else 0.0,
        "wall_s": wall,
        "images_per_s": n_done / wall if wall > 0 else 0.0,
        "stage_s": times,
        "device": str(device),
        "backbone": labeler.cfg.backbone,
    }
    summaries = [summary]
    if dist is not None:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, summary)
        summaries = gathered
    if rank == 0:
        total = _combine(summaries)
        write_json_atomic(out_dir / "summary.json", total)
        _print_summary(total, out_dir)
    labeled = sum(s["images_labeled"] + s["images_done_before"] for s in summaries)
    return 0 if labeled > 0 or not paths else 1


def _combine(summaries: list[dict]) -> dict:
    if len(summaries) == 1:
        return summaries[0]
    keys = ("images_labeled", "images_done_before", "images_skipped", "masks")
    total = {k: sum(s[k] for s in summaries) for k in keys}
    total["images_found"] = summaries[0]["images_found"]
    total["world_size"] = len(summaries)
    total["skipped"] = [x for s in summaries for x in s["skipped"]]
    total["masks_per_image"] = total["masks"] / total["images_labeled"] if total["images_labeled"] else 0.0
    total["wall_s"] = max(s["wall_s"] for s in summaries)
    total["images_per_s"] = total["images_labeled"] / total["wall_s"] if total["wall_s"] > 0 else 0.0
    stages: dict[str, float] = {}
    for s in summaries:
        for k, v in s["stage_s"].items():
            stages[k] = stages.get(k, 0.0) + v
    total["stage_s"] = stages
    total["per_rank"] = summaries
    total["backbone"] = summaries[0]["backbone"]
    return total


def _print_summary(s: dict, out_dir: Path) -> None:
    n = max(1, s["images_labeled"])
    print(
        f"unsam.label: {s['images_labeled']} labeled, {s['images_done_before']} already done, "
        f"{s['images_skipped']} skipped, of {s['images_found']} found; "
        f"{s['masks_per_image']:.0f} masks/image; {s['images_per_s']:.2f} images/s ({s['wall_s']:.1f} s)"
    )
    if s["stage_s"]:
        print("  per image: " + ", ".join(f"{k} {_fmt_time(v / n)}" for k, v in s["stage_s"].items()))
    for x in s["skipped"][:20]:
        print(f"  skipped {x['path']}: {x['reason']}")
    if len(s["skipped"]) > 20:
        print(f"  ... {len(s['skipped']) - 20} more in {out_dir / 'summary.json'}")
    print(f"  output: {out_dir} (one JSON per image; config.yaml, summary.json" + (", vis/)" if (out_dir / "vis").exists() else ")"))


if __name__ == "__main__":
    raise SystemExit(main())
