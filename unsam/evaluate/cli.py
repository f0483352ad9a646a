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


The metrics and their rules: :mod:`unsam.evaluate.coco` and :mod:`unsam.evaluate.bsds`;
point prompts: :mod:`unsam.evaluate.points` (``python -m unsam.evaluate points``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unsam.evaluate.bsds import SCALES, evaluate_bsds
from unsam.evaluate.coco import evaluate_coco
from unsam.evaluate.predictions import EvalError

__all__ = ["build_parser", "main", "print_table"]

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
        from unsam.evaluate.points import main as points_main

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
