"""Merge a labeled folder into one COCO-style JSON.

    python -m unsam.export --labels OUT_DIR --output OUT_DIR/coco.json [--image-root IMAGES]

Per-image label JSONs (written by ``python -m unsam.label``) are read
recursively; files that are not valid label JSON are skipped and counted. The
result loads with ``pycocotools.coco.COCO`` (one category ``fg``, unique image
and annotation ids, ``parent_id`` remapped). The merging itself is
:func:`unsam.io.export_coco`; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from unsam.io import InputError, export_coco


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m unsam.export",
        description="Merge per-image unsam label JSONs into one COCO-style JSON (category 'fg').",
    )
    p.add_argument("--labels", required=True, help="folder of per-image label JSONs (searched recursively)")
    p.add_argument("--output", required=True, help="COCO JSON file to write (atomically)")
    p.add_argument(
        "--image-root",
        default=None,
        help="image folder: absolute file_name values inside it are written relative to it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; returns the exit status (0 ok, 1 nothing exported, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        coco = export_coco(args.labels, args.output, image_root=args.image_root, progress=not args.no_progress)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    info = coco["info"]
    n_img, n_ann = len(coco["images"]), len(coco["annotations"])
    print(
        f"exported {n_img} images, {n_ann} annotations from {args.labels} -> {args.output} "
        f"({info['skipped_files']} invalid files skipped, {info['ignored_files']} other JSON ignored, "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    if n_img == 0:
        print(f"error: no valid label JSON found in {args.labels}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
