"""``python -m unsam.view``: a local web viewer for hierarchical mask labels.

    python -m unsam.view LABELS [--images ROOT] [--compare LABELS2] [--checkpoint FILE] [--port 8000] [--host 127.0.0.1]
    python -m unsam.view labels                          # the quick start's output, then open the printed address

``LABELS`` is a folder written by ``unsam.label``, ``unsam.evaluate.baselines`` or
``unsam.models.predict`` (one JSON per image, searched recursively; the run's
``summary.json`` is skipped). The page lists the images (name, masks, levels;
filter by name; pages of at most 500 entries, so a folder of 100 000 images is
never sent at once; keyboard left/right for the previous/next image, up/down
for the level) and shows the selected image at full resolution with its masks
over it:

- a level slider: the partition of level l by the evaluation rule of
  :func:`unsam.evaluate.level_partitions` (each pixel takes its deepest mask of
  level <= l, inside a level the smaller; each 4-connected uncovered area is a
  segment of its own), with its segment count;
- hover highlights the mask under the pointer at that level; click selects it
  and shows its id, source, score, area, level, its chain of ancestors
  (``parent_id``) and its children, each clickable to walk the tree;
- filters by source and minimum score, outlines or filled, opacity, zoom;
- ``--compare LABELS2``: a second labeled folder of the same images side by
  side (a preset against a baseline, say), levels and hover linked;
- ``--checkpoint FILE``: a promptable model trained by ``unsam.train``;
  shift-click runs it on that point (on the server) and lists its masks, one
  per granularity, as candidates.

Images are found through ``image.file_name`` under ``--images ROOT``, else
under the input recorded in ``LABELS/config.yaml`` (``unsam.label`` and
``unsam.models.predict`` write it; a relative input is tried against the current
folder, then against LABELS' parent). The server binds 127.0.0.1 unless
``--host`` says otherwise, serves only the indexed label files, the images
they name inside the image root and its own page (anything else is a 404),
and answers only requests addressed to the host it listens on (no DNS
rebinding). A bad label file, a missing image or a mask whose size does not
match its image is reported on the page for that image; the rest keeps
working. The model is loaded once at start; a bad checkpoint is an error
there (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from unsam.view.labels import LabelSet, ViewError
from unsam.view.server import Viewer, address, make_server

__all__ = ["build_parser", "main"]


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m unsam.view",
        description="A local web viewer for hierarchical mask labels (what unsam.label, unsam.evaluate.baselines and "
        "unsam.models.predict write): level slider, hover and click through the mask tree, compare two folders, "
        "and click a promptable model.",
        epilog="Example: python -m unsam.view labels   (then open the printed address; Ctrl-C stops it)",
    )
    ap.add_argument("labels", metavar="LABELS", help="labeled folder (one JSON per image, searched recursively)")
    ap.add_argument("--images", metavar="ROOT", help="image root that image.file_name is relative to (default: the input recorded in LABELS/config.yaml)")
    ap.add_argument("--compare", metavar="LABELS2", help="a second labeled folder of the same images, shown side by side")
    ap.add_argument("--checkpoint", metavar="FILE", help="promptable unsam.train checkpoint: shift-click runs it on that point")
    ap.add_argument("--gpu", action="store_true", help="run the --checkpoint model on the GPU")
    ap.add_argument("--port", type=int, default=8000, help="port (0: any free port; the printed address is the real one) [8000]")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback exposes your files to the network [127.0.0.1]")
    ap.add_argument("--verbose", action="store_true", help="log every request")
    return ap


def _load_predictor(checkpoint: str, gpu: bool):
    import torch

    from unsam.models.predict import Predictor

    if gpu and not torch.cuda.is_available():
        raise ViewError("--gpu given but torch sees no CUDA GPU")
    try:
        pred = Predictor.from_checkpoint(checkpoint, "cuda" if gpu else "cpu")
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ViewError(f"--checkpoint {checkpoint}: {e}") from None
    if pred.task != "prompt":
        raise ViewError(f"--checkpoint {checkpoint}: a whole-image model; the viewer needs a promptable one (model unsam_prompt_*)")
    return pred


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    # Import the label checks (unsam.io imports torch: seconds) now, not on the first page.
    import PIL.Image  # noqa: F401

    import unsam.io  # noqa: F401

    try:
        labels = LabelSet(args.labels, args.images)
        compare = LabelSet(args.compare, args.images) if args.compare else None
        if compare is not None and compare.images_root is None:
            compare.images_root, compare.images_how = labels.images_root, labels.images_how
        predictor = _load_predictor(args.checkpoint, args.gpu) if args.checkpoint else None
        server = make_server(Viewer(labels, compare, predictor, args.checkpoint), args.host, args.port)
    except ViewError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the port is taken, the address is not ours
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    if not labels.keys:
        print(f"warning: no label files (*.json) in {labels.root}", file=sys.stderr)
    if labels.images_root is None:
        print(f"warning: images not found ({labels.images_how})", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read these labels and images", file=sys.stderr)
    extra = (f", compare {compare.root}" if compare else "") + (f", model {args.checkpoint}" if predictor else "")
    print(f"unsam.view: {len(labels)} label files in {labels.root}{extra}", flush=True)
    print(f"unsam.view: serving at {address(server)}  (Ctrl-C to stop)", flush=True)
    # SIGTERM ends the server like Ctrl-C does (a test or a process manager stopping it), and
    # SIGINT does even when the server was started with it ignored (a non-interactive shell
    # ignores SIGINT in the jobs it starts with `&`, and children inherit that: Python then
    # installs no KeyboardInterrupt handler).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        print("unsam.view: stopped", flush=True)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
