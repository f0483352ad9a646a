"""Point-prompt evaluation (ALGORITHM.md §6): one click at the centre of each ground-truth mask.

    python -m unsam.evaluate_points --checkpoint PROMPT.pt --gt instances_val2017.json --image-root val2017 [--json OUT]

(also reachable as ``python -m unsam.evaluate points ...``, which calls :func:`main`).

The click of a mask is its interior point farthest from the background: the
maximum of the Euclidean distance transform, outside the image counting as
background, ties to the first pixel in row-major order, at the pixel's centre
(x + 0.5, y + 0.5). Unlike the centroid or the box centre it lies inside every
mask, convex or not (a ring, a C shape).

For each click the model returns several masks with predicted IoUs:
``MaxIoU`` is the mean, over all GT masks, of the IoU of the mask the model
ranks first; ``OracleIoU`` the mean of the best IoU among its masks (as in
Semantic-SAM / UnSAM). Values are fractions in [0, 1].

Ground truth: a COCO JSON (polygons or RLE; crowd regions skipped) or a label
folder of per-image JSONs (:func:`unsam.io.datasets.load_records`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.ndimage import distance_transform_edt

__all__ = ["centre_point", "evaluate_points", "main"]


def centre_point(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the pixel of ``mask`` farthest from the background (see the module docstring).

    Works on the mask's bounding box plus a one-pixel background ring, which
    gives the same distances as the whole image.

    Raises:
        ValueError: empty mask.
    """
    m = np.asarray(mask, bool)
    ys = np.flatnonzero(m.any(1))
    if ys.size == 0:
        raise ValueError("centre_point: the mask is empty")
    xs = np.flatnonzero(m.any(0))
    crop = np.pad(m[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1], 1)
    dt = distance_transform_edt(crop)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return float(xs[0] + x) + 0.5, float(ys[0] + y) + 0.5


PredictFn = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def evaluate_points(
    predict_fn: PredictFn,
    records: Sequence[Any],
    max_masks_per_image: int | None = None,
    min_area: int = 1,
    chunk: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """MaxIoU and OracleIoU of a point-promptable predictor.

    Args:
        predict_fn: ``(image uint8 [H, W, 3], points float [P, 2] (x, y)) -> (masks bool
            [P, M, H, W], scores [P, M])`` — e.g. ``unsam.models.predict.Predictor.predict_points``;
            any model (SAM, ...) can be wrapped to this.
        records: ``unsam.io.datasets.Record`` s (image path + GT RLEs).
        max_masks_per_image: evaluate at most this many GT masks per image (spread
            evenly over the image's list), None = all.
        min_area: skip GT masks smaller than this (pixels).
        chunk: clicks per ``predict_fn`` call (bounds the memory of the returned masks).

    Returns:
        ``{"MaxIoU", "OracleIoU", "masks", "images", "outputs_per_click"}``.

    Raises:
        ValueError: no GT mask to evaluate.
    """
    from tqdm import tqdm

    from unsam.io import load_image

    max_ious: list[float] = []
    oracle: list[float] = []
    n_img = 0
    n_out = 0
    for rec in tqdm(records, desc="points", unit="img", disable=not progress):
        idx = [i for i, a in enumerate(rec.areas) if a >= min_area]
        if max_masks_per_image is not None and len(idx) > max_masks_per_image:
            pick = np.linspace(0, len(idx) - 1, max_masks_per_image).round().astype(int)
            idx = [idx[j] for j in pick]
        if not idx:
            continue
        img = load_image(rec.path)
        n_img += 1
        gts = [mask_utils.decode(rec.rles[i]).astype(bool) for i in idx]
        pts = np.array([centre_point(g) for g in gts], np.float32)
        for s in range(0, len(gts), chunk):
            masks, scores = predict_fn(img, pts[s : s + chunk])
            masks, scores = torch.as_tensor(masks), torch.as_tensor(scores).float()
            n_out = masks.shape[1]
            for k in range(masks.shape[0]):
                g = torch.from_numpy(gts[s + k])
                inter = (masks[k] & g).flatten(1).sum(1).float()
                union = (masks[k] | g).flatten(1).sum(1).float()
                iou = inter / union.clamp_min(1)
                max_ious.append(float(iou[int(scores[k].argmax())]))
                oracle.append(float(iou.max()))
    if not max_ious:
        raise ValueError(f"no ground-truth mask to evaluate (of {len(records)} images, none has a mask of >= {min_area} pixels)")
    return {
        "MaxIoU": float(np.mean(max_ious)),
        "OracleIoU": float(np.mean(oracle)),
        "masks": len(max_ious),
        "images": n_img,
        "outputs_per_click": int(n_out),
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unsam.evaluate points", description="Point-prompt MaxIoU / OracleIoU: one click at the centre of each GT mask.")
    ap.add_argument("--checkpoint", "-c", required=True, type=Path, help="promptable unsam.train checkpoint")
    ap.add_argument("--gt", required=True, help="COCO JSON or label folder with the ground-truth masks")
    ap.add_argument("--image-root", default=None, help="folder the GT file_names are relative to (default: the JSON's folder)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--max-masks-per-image", type=int, default=None, help="GT masks (clicks) per image at most")
    ap.add_argument("--min-area", type=int, default=1, help="skip GT masks below this many pixels")
    ap.add_argument("--size", type=int, default=None, help="model input side (default: the training crop size)")
    ap.add_argument("--json", type=Path, default=None, help="write the metrics here")
    ap.add_argument("--gpu", action="store_true", help="run on the GPU")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from unsam.io.datasets import DatasetError, load_records
    from unsam.models.predict import Predictor

    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu given but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    try:
        pred = Predictor.from_checkpoint(args.checkpoint, "cuda" if args.gpu else "cpu", size=args.size)
        if pred.task != "prompt":
            raise ValueError(f"{args.checkpoint} is a whole-image model; point evaluation needs a promptable one (use `unsam.evaluate coco` for it)")
        records = load_records(args.gt, args.image_root, limit=args.limit)
        res = evaluate_points(pred.predict_points, records, args.max_masks_per_image, args.min_area, progress=sys.stderr.isatty())
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"point prompts: MaxIoU {100 * res['MaxIoU']:.1f}  OracleIoU {100 * res['OracleIoU']:.1f}  ({res['masks']} masks, {res['images']} images, {res['outputs_per_click']} masks per click)")
    if args.json is not None:
        from unsam.io import write_json_atomic

        write_json_atomic(args.json, res, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
