"""``python -m unsam.label``: a folder of images -> hierarchical pseudo-masks (SA-1B JSON).

    python -m unsam.label --input IMAGES --output DIR [--gpu] [--backbone classic] ...
    torchrun --nproc-per-node G -m unsam.label --input IMAGES --output DIR --gpu

Each image gets ``DIR/<relative path>.json`` (written atomically); rerunning the
same command resumes (finished images are skipped). ``DIR/config.yaml`` holds
the resolved configuration, ``DIR/summary.json`` the run's summary, with the
images that failed (``failed``: path, stage, reason); ``--retry-failed`` labels
only those. Each rank labels in a watched child process (:mod:`unsam.label.supervise`):
an exception, a crash or a stage over ``--image-timeout`` fails that image only.
The library holds every default (``unsam.label.config.LabelConfig``); the CLI and
``--config FILE.yaml`` only override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from unsam.io import (
    InputError,
    atomic_writer,
    discover_images,
    remove_temp_files,
    write_json_atomic,
)
from unsam.label.config import PRESETS, LabelConfig, default_preset, label_config
from unsam.label.masks import REFINE_MODES
from unsam.label.run import (
    LocalEvents,
    failures,
    label_jobs,
    select_jobs,
    state_dir,
    tmp_dir,
)
from unsam.label.supervise import SupervisorError, run_supervised

log = logging.getLogger("unsam.label")

#: Default of --image-timeout: far above the slowest stage of the largest image the defaults accept
#: (README "Labeling at scale"), far below what a hang costs in a run of millions.
IMAGE_TIMEOUT = 300.0


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
    g.add_argument("--overwrite", action="store_true", help="relabel images that already have a valid JSON (and those that failed)")
    g.add_argument(
        "--retry-failed", action="store_true", help="label only the images an earlier run failed on (summary.json 'failed')"
    )
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
    g = ap.add_argument_group("isolation")
    g.add_argument(
        "--image-timeout",
        type=float,
        default=IMAGE_TIMEOUT,
        help="seconds an image may spend in one stage before it is recorded as failed and the run goes on "
        f"(a batched stage of B images gets B times that); 0: label in this process, no time limit (default {IMAGE_TIMEOUT:g})",
    )
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


def write_text_atomic(path: Path, text: str, tmp: Path | None = None) -> None:
    with atomic_writer(path, tmp_dir=tmp) as f:
        f.write(text)


def _fmt_time(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rank, world, local_rank = _dist_info()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_timeout < 0:
        print(f"error: --image-timeout should be >= 0 (0: no watching child), got {args.image_timeout}", file=sys.stderr)
        return 2
    if args.overwrite and args.retry_failed:
        print("error: --overwrite relabels everything; --retry-failed only the failed images: give one", file=sys.stderr)
        return 2
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
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    else:
        device = "cpu"
    try:
        cfg = make_config(args)
        paths = discover_images(args.input)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        paths = paths[: args.limit]
    out_dir: Path = args.output
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{rank}-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        print(f"error: output folder {out_dir} is not writable: {e}", file=sys.stderr)
        return 2
    # No process group: the ranks share nothing but the output folder (each takes every
    # world-th image; each writes its summary and they are combined there), so a rank that
    # dies and is restarted by torchrun, or a node that does, holds nobody up.
    return _run(args, cfg, paths, out_dir, device, rank, world)


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


def _run(args, cfg: LabelConfig, paths: list[Path], out_dir: Path, device: str, rank: int, world: int) -> int:
    root = _input_root(args.input, paths)
    # What a killed run left: this rank's temporary files and summary (rank 0 also those of
    # ranks a larger earlier run had), before this rank writes anything.
    remove_temp_files(tmp_dir(out_dir, rank))
    _rank_summary(out_dir, rank).unlink(missing_ok=True)
    if rank == 0:
        import yaml

        for d in state_dir(out_dir).glob("tmp-r*"):
            if int(d.name[len("tmp-r") :] or 0) >= world:
                remove_temp_files(d)
        for f in state_dir(out_dir).glob("summary-r*.json"):
            if int(f.stem[len("summary-r") :] or 0) >= world:
                f.unlink(missing_ok=True)
        text = yaml.safe_dump(
            {**cfg.to_dict(), "_run": {"input": str(args.input), "device": device.split(":")[0], "world_size": world}},
            sort_keys=False,
        )
        write_text_atomic(out_dir / "config.yaml", text, tmp_dir(out_dir, rank))
    jobs, done_before, failed_before = select_jobs(paths, root, out_dir, rank, world, args.overwrite, args.retry_failed)
    cpu_workers = args.cpu_workers
    if cpu_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cpu_workers = auto_cpu_workers(device.startswith("cuda"), cfg.atoms.enabled, cores, world, args.workers)
    if cpu_workers < 0:
        print(f"error: --cpu-workers should be >= 0, got {cpu_workers}", file=sys.stderr)
        return 2
    try:
        if not jobs:
            res = {"labeled": 0, "masks": 0, "failed": [], "stage_s": {}, "wall_s": 0.0, "restarts": 0}
        elif args.image_timeout > 0:
            res = run_supervised(args, cfg, jobs, out_dir, rank, world, device, cpu_workers, args.image_timeout)
        else:
            res = _in_process(args, cfg, jobs, out_dir, rank, world, device, cpu_workers)
    except (SupervisorError, RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    else:
        code = 0
    summary = {
        "rank": rank,
        "world_size": world,
        "images_found": len(paths),
        "images_labeled": res["labeled"] if code == 0 else 0,
        "images_done_before": done_before,
        "images_failed_now": len(res["failed"]) if code == 0 else 0,
        "images_failed_before": failed_before,
        "restarts": res.get("restarts", 0) if code == 0 else 0,
        "masks": res["masks"] if code == 0 else 0,
        "wall_s": res["wall_s"] if code == 0 else 0.0,
        "stage_s": res["stage_s"] if code == 0 else {},
        "peak_rss_gib": res.get("peak_rss_gib", 0.0) if code == 0 else 0.0,
        "device": device,
        "backbone": cfg.backbone,
        "error": code,
    }
    summary["masks_per_image"] = summary["masks"] / summary["images_labeled"] if summary["images_labeled"] else 0.0
    summary["images_per_s"] = summary["images_labeled"] / summary["wall_s"] if summary["wall_s"] > 0 else 0.0
    write_json_atomic(_rank_summary(out_dir, rank), summary, indent=1, tmp_dir=tmp_dir(out_dir, rank))
    total = _write_summary(out_dir, world, tmp_dir(out_dir, rank))
    if total["ranks_reported"] == world:
        _print_summary(total, out_dir)  # the whole run's (printed by the rank that saw it complete)
    else:
        print(f"unsam.label[{rank}/{world}]: {summary['images_labeled']} labeled, {summary['images_failed_now']} failed; "
              f"{total['ranks_reported']} of {world} ranks done")
    failed_here = summary["images_failed_now"] + summary["images_failed_before"]
    if code:
        return code
    if failed_here:
        print(
            f"unsam.label{f'[{rank}/{world}]' if world > 1 else ''}: {failed_here} image(s) failed (listed in "
            f"{out_dir / 'summary.json'} under 'failed'); rerun with --retry-failed to label only those",
            file=sys.stderr,
        )
        return 1
    return 0


def _rank_summary(out_dir: Path, rank: int) -> Path:
    return state_dir(out_dir) / f"summary-r{rank}.json"


def _write_summary(out_dir: Path, world: int, tmp: Path) -> dict:
    """summary.json from the ranks' summaries written so far. Every rank writes it when it
    ends and again while new rank summaries appear, so the last writer saw them all."""
    seen: set[int] = set()
    while True:
        summaries = []
        for r in range(world):
            try:
                summaries.append(json.loads(_rank_summary(out_dir, r).read_text()))
            except (OSError, ValueError):
                continue
        ranks = {s["rank"] for s in summaries}
        total = _combine(summaries)
        total["ranks_reported"] = len(ranks)
        total["failed"] = sorted(failures(out_dir).values(), key=lambda f: f["file"])
        total["images_failed"] = len(total["failed"])
        write_json_atomic(out_dir / "summary.json", total, indent=1, tmp_dir=tmp)
        if ranks == seen:
            return total
        seen = ranks


def _in_process(args, cfg: LabelConfig, jobs: list, out_dir: Path, rank: int, world: int, device: str, cpu_workers: int) -> dict:
    """--image-timeout 0: label in this process (exceptions are still per image; no time limit)."""
    from unsam.label.pipeline import Labeler

    labeler = Labeler(cfg, device=device, cpu_workers=cpu_workers)
    events = LocalEvents(out_dir, rank)
    try:
        res = label_jobs(args, labeler, jobs, out_dir, rank, world, events)
    finally:
        labeler.close()
    res["failed"] = events.failed_list
    return res


def _combine(summaries: list[dict]) -> dict:
    summaries = sorted(summaries, key=lambda s: s["rank"])
    keys = ("images_labeled", "images_done_before", "images_failed_now", "images_failed_before", "masks", "restarts")
    total = {k: sum(s[k] for s in summaries) for k in keys}
    total["images_found"] = summaries[0]["images_found"]
    total["world_size"] = summaries[0]["world_size"]
    total["masks_per_image"] = total["masks"] / total["images_labeled"] if total["images_labeled"] else 0.0
    total["wall_s"] = max(s["wall_s"] for s in summaries)
    total["peak_rss_gib"] = max(s["peak_rss_gib"] for s in summaries)  # of one rank's labeling process
    total["images_per_s"] = total["images_labeled"] / total["wall_s"] if total["wall_s"] > 0 else 0.0
    stages: dict[str, float] = {}
    for s in summaries:
        for k, v in s["stage_s"].items():
            stages[k] = stages.get(k, 0.0) + v
    total["stage_s"] = stages
    total["device"] = summaries[0]["device"]
    total["backbone"] = summaries[0]["backbone"]
    if len(summaries) > 1:
        total["per_rank"] = summaries
    return total


def _print_summary(s: dict, out_dir: Path) -> None:
    n = max(1, s["images_labeled"])
    print(
        f"unsam.label: {s['images_labeled']} labeled, {s['images_done_before']} already done, "
        f"{s['images_failed']} failed, of {s['images_found']} found; "
        f"{s['masks_per_image']:.0f} masks/image; {s['images_per_s']:.2f} images/s ({s['wall_s']:.1f} s); "
        f"peak memory {s['peak_rss_gib']:.2f} GiB"
    )
    if s["stage_s"]:
        print("  per image: " + ", ".join(f"{k} {_fmt_time(v / n)}" for k, v in s["stage_s"].items()))
    for x in s["failed"][:20]:
        print(f"  failed {x['path']} ({x['stage']}): {x['reason']}")
    if len(s["failed"]) > 20:
        print(f"  ... {len(s['failed']) - 20} more in {out_dir / 'summary.json'}")
    print(f"  output: {out_dir} (one JSON per image; config.yaml, summary.json" + (", vis/)" if (out_dir / "vis").exists() else ")"))


if __name__ == "__main__":
    raise SystemExit(main())
