"""``python -m unsam.predict``: a trained model -> per-image JSONs in the labeler's format.

    python -m unsam.predict --checkpoint RUN/checkpoints/last.pt --input IMAGES --output DIR
    python -m unsam.predict --checkpoint PROMPT.pt --input IMAGE.jpg --output DIR --points 120,80 300,200

Whole-image checkpoints give the top-K masks of each image (score = P(object) ×
mean mask probability); promptable checkpoints give, for every ``--points``
click (x,y in the original image's pixels), the model's masks of that click
with their predicted IoU as score and ``point`` / ``point_index`` /
``granularity`` fields. Files are ``DIR/<relative path>.json`` as written by
``unsam.label`` (``source`` is ``"model"`` when ``unsam.io`` knows it, else
``"conquer"``; ``origin: "model"`` marks them either way), so ``unsam.evaluate``,
``unsam.train.selftrain`` and ``unsam.train`` read them unchanged. ``level`` /
``parent_id`` come from containment (a parent holds >= 90 % of its child;
predicted masks are not clipped). ``DIR/config.yaml`` records the input
folder, as the labeler does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unsam.io import (
    SOURCES,
    ImageError,
    InputError,
    discover_images,
    image_record,
    load_image,
    write_json_atomic,
)

__all__ = ["PRED_SOURCE", "Predictor", "annotations_from_items", "annotations_from_masks", "load_model", "main"]

log = logging.getLogger("unsam.models.predict")

# The label format's `source` is checked against unsam.io.SOURCES; until that set has a
# value for model predictions, they are written as "conquer" and marked origin="model".
PRED_SOURCE = "model" if "model" in SOURCES else "conquer"


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from a training checkpoint (``unsam.train``'s ``last.pt`` / ``step_*.pt`` / ``model.pt``).

    Returns:
        (model in eval mode on ``device``, the run's resolved config dict).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint of ``unsam.train``.
    """
    from unsam.models import create_model

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and IO errors all mean "not ours"
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not an unsam.train checkpoint (needs 'model' and 'config' entries)")
    cfg = ckpt["config"]
    mcfg = cfg["model"]
    # Weights come from the checkpoint: no download, no backbone file needed.
    kwargs = {**(mcfg.get("kwargs") or {}), "pretrained": False, "checkpoint": None}
    model = create_model(mcfg["name"], **kwargs)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def _levels(parents: list[int], areas: list[int]) -> list[int]:
    levels = [0] * len(parents)
    for i in sorted(range(len(parents)), key=lambda k: -areas[k]):
        if parents[i] >= 0:
            levels[i] = levels[parents[i]] + 1
    return levels


def _item(mask: np.ndarray, score: float):
    from unsam.label.items import MaskItem

    ys = np.flatnonzero(mask.any(1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(0))
    box = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
    return MaskItem(box, np.ascontiguousarray(mask[box[1] : box[3], box[0] : box[2]].astype(bool)), float(score), PRED_SOURCE)


def annotations_from_items(items: list, height: int, width: int, extras: list[dict] | None = None, contain: float = 0.9) -> list[dict]:
    """Label-format annotations (ids 1..K) of ``unsam.label.items.MaskItem`` s, in their order.

    Parents and levels from containment (:func:`unsam.label.masks.parents_from_intersections`);
    the masks are kept as they are (not clipped).
    """
    from unsam.label.masks import (
        pairwise_intersections,
        parents_from_intersections,
        to_annotations,
    )

    if not items:
        return []
    parents = parents_from_intersections(pairwise_intersections(items, height, width), contain)
    levels = _levels(parents, [it.area for it in items])
    anns = to_annotations(items, parents, levels, height, width)
    for i, a in enumerate(anns):
        a["origin"] = "model"
        if extras is not None:
            a.update(extras[i])
    return anns


def annotations_from_masks(
    masks: np.ndarray | Tensor, scores: np.ndarray | Tensor, extras: list[dict] | None = None, contain: float = 0.9
) -> list[dict]:
    """Label-format annotations from full-size binary masks ``[K, H, W]`` and scores ``[K]``; empty masks dropped."""
    m = masks.cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    s = scores.cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores)
    if m.ndim != 3:
        raise ValueError(f"masks should be [K, H, W], got shape {m.shape}")
    items, ex = [], []
    for i in range(m.shape[0]):
        it = _item(m[i], s[i])
        if it is not None:
            items.append(it)
            ex.append(extras[i] if extras is not None else {})
    return annotations_from_items(items, m.shape[1], m.shape[2], ex, contain)


class Predictor:
    """Runs a trained model on images of any size.

    The image is resized so that its longer side is ``size`` (the training crop
    size by default) and zero-padded to a ``size`` square, as in training.

    Args:
        model: a ``MaskFormer`` or ``PromptSegmenter`` (eval mode).
        size: input side.
        device: where it runs.
        topk: whole-image: masks per image at most.
        min_score: whole-image: drop masks scoring below.
        amp: bf16 autocast on CUDA.
    """

    def __init__(self, model: torch.nn.Module, size: int, device: str | torch.device = "cpu", topk: int = 1000, min_score: float = 0.0, amp: bool = True) -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        self.task = getattr(model, "task", "whole")
        p = model.patch_size
        self.size = max(p, int(size) // p * p)
        self.topk, self.min_score, self.amp = int(topk), float(min_score), bool(amp)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str | torch.device = "cpu", size: int | None = None, **kwargs) -> Predictor:
        model, cfg = load_model(checkpoint, device)
        return cls(model, size or int(cfg["data"]["crop_size"]), device, **kwargs)

    def _prep(self, image: np.ndarray | Tensor) -> tuple[Tensor, tuple[int, int], float]:
        t = torch.as_tensor(image)
        if t.dim() != 3 or t.shape[-1] != 3:
            raise ValueError(f"image should be H x W x 3 RGB, got shape {tuple(t.shape)}")
        h0, w0 = t.shape[:2]
        scale = self.size / max(h0, w0)
        h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        x = t.to(self.device).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=scale < 1, align_corners=False).round().clamp(0, 255) / 255.0
        x = F.pad(x, (0, self.size - w, 0, self.size - h))
        return x, (h, w), scale

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda")

    @torch.inference_mode()
    def predict_masks(self, image: np.ndarray | Tensor) -> list:
        """Whole-image model: ``unsam.label.items.MaskItem`` s (box + crop at the image's size, score), best first.

        Masks are upsampled a chunk at a time and kept as crops, so memory stays
        bounded for 1000 masks on large images.
        """
        from unsam.models.mask2former import select_queries, upsample_masks

        if self.task != "whole":
            raise ValueError("this is a promptable model: use predict_points(image, points)")
        x, valid, _ = self._prep(image)
        with self._autocast():
            out = self.model(x)
        h0, w0 = torch.as_tensor(image).shape[:2]
        idx, scores = select_queries(out["pred_logits"][0], out["pred_masks"][0], valid, self.model.mask_stride, self.topk, self.min_score)
        scores = scores.float().cpu().numpy()
        items, k = [], 0
        for chunk in upsample_masks(out["pred_masks"][0][idx], valid, self.model.mask_stride, (h0, w0)):
            for m in chunk.cpu().numpy():
                it = _item(m, scores[k])
                k += 1
                if it is not None:
                    items.append(it)
        return items

    @torch.inference_mode()
    def predict_points(self, image: np.ndarray | Tensor, points: np.ndarray | Tensor, chunk: int = 64) -> tuple[Tensor, Tensor]:
        """Promptable model: masks ``bool[P, M, H, W]`` at the image's size and predicted IoUs ``float[P, M]``.

        ``points``: ``[P, 2]`` (x, y) in the image's pixels (pixel centres at +0.5).
        """
        if self.task != "prompt":
            raise ValueError("this is a whole-image model: it takes no points (use predict_masks)")
        pts = torch.as_tensor(np.asarray(points, np.float32) if not isinstance(points, Tensor) else points, dtype=torch.float32)
        if pts.dim() != 2 or pts.shape[-1] != 2:
            raise ValueError(f"points should be [P, 2] (x, y), got shape {tuple(pts.shape)}")
        x, (h, w), scale = self._prep(image)
        h0, w0 = torch.as_tensor(image).shape[:2]
        p = pts.shape[0]
        m = self.model.num_outputs
        if p == 0:
            return torch.zeros(0, m, h0, w0, dtype=torch.bool), torch.zeros(0, m)
        with self._autocast():
            feats = self.model.forward_features(x)
        masks, ious = [], []
        s = self.model.mask_stride
        for i in range(0, p, chunk):
            q = (pts[i : i + chunk] * scale).to(self.device)[None]
            with self._autocast():
                out = self.model.forward_head(feats, q)
            lg = out["pred_masks"][0].float()  # [c, M, gh, gw]
            c = lg.shape[0]
            lg = F.interpolate(lg.flatten(0, 1)[None], size=(lg.shape[-2] * s, lg.shape[-1] * s), mode="bilinear", align_corners=False)
            lg = F.interpolate(lg[..., :h, :w], size=(h0, w0), mode="bilinear", align_corners=False)[0]
            masks.append((lg > 0).view(c, m, h0, w0).cpu())
            ious.append(out["pred_iou"][0].float().cpu())
        return torch.cat(masks), torch.cat(ious)

    def annotations(self, image: np.ndarray, points: np.ndarray | None = None) -> list[dict]:
        """Label-format annotations of one image (see the module docstring)."""
        if self.task == "whole":
            if points is not None:
                raise ValueError("--points needs a promptable checkpoint; this one is a whole-image model")
            h, w = np.asarray(image).shape[:2]
            return annotations_from_items(self.predict_masks(image), h, w)
        if points is None or len(points) == 0:
            raise ValueError("a promptable checkpoint needs clicks: --points x,y [x,y ...]")
        masks, ious = self.predict_points(image, points)
        p, m = ious.shape
        extras = [
            {"point": [float(points[i][0]), float(points[i][1])], "point_index": i, "granularity": g, "predicted_iou": round(float(ious[i, g]), 6)}
            for i in range(p)
            for g in range(m)
        ]
        return annotations_from_masks(masks.flatten(0, 1), ious.flatten(), extras)


def _parse_points(values: list[str] | None) -> np.ndarray | None:
    if not values:
        return None
    pts = []
    for v in values:
        try:
            x, y = (float(s) for s in v.split(","))
        except ValueError:
            raise InputError(f"--points: each point should be x,y (pixels), got {v!r}") from None
        pts.append((x, y))
    return np.asarray(pts, np.float32)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unsam.predict", description="Masks from a model trained with unsam.train, in the labeler's JSON format.")
    ap.add_argument("--checkpoint", "-c", required=True, type=Path, help="unsam.train checkpoint (checkpoints/last.pt or model.pt)")
    ap.add_argument("--input", "-i", required=True, help="image, folder (recursive), glob or list file")
    ap.add_argument("--output", "-o", required=True, type=Path, help="output folder (one JSON per image)")
    ap.add_argument("--points", nargs="+", default=None, metavar="X,Y", help="promptable model: clicks in image pixels, applied to every image")
    ap.add_argument("--topk", type=int, default=1000, help="whole-image model: masks per image at most")
    ap.add_argument("--min-score", type=float, default=0.0, help="whole-image model: drop masks scoring below")
    ap.add_argument("--size", type=int, default=None, help="input side (default: the training crop size)")
    ap.add_argument("--gpu", action="store_true", help="run on the GPU")
    ap.add_argument("--limit", type=int, default=None, help="at most this many images")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu given but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.gpu else "cpu")
    try:
        points = _parse_points(args.points)
        paths = discover_images(args.input)
        pred = Predictor.from_checkpoint(args.checkpoint, device, size=args.size, topk=args.topk, min_score=args.min_score)
        if pred.task == "whole" and points is not None:
            raise InputError("--points needs a promptable checkpoint; this one is a whole-image model")
        if pred.task == "prompt" and points is None:
            raise InputError("this checkpoint is a promptable model: give clicks with --points x,y [x,y ...]")
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        paths = paths[: args.limit]
    inp = Path(args.input)
    root = inp.resolve() if inp.is_dir() else Path(os.path.commonpath([str(q.resolve().parent) for q in paths]))
    out_dir: Path = args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    (out_dir / "config.yaml").write_text(
        yaml.safe_dump({"_run": {"input": str(root), "checkpoint": str(args.checkpoint), "task": pred.task, "size": pred.size, "topk": pred.topk}}, sort_keys=False)
    )
    from tqdm import tqdm

    done = skipped = n_masks = 0
    t0 = time.perf_counter()
    for idx, p in enumerate(tqdm(paths, desc="unsam.models.predict", unit="img", disable=args.quiet or not sys.stderr.isatty())):
        try:
            img = load_image(p)
        except ImageError as e:
            print(f"  skipped {p}: {e}", file=sys.stderr)
            skipped += 1
            continue
        anns = pred.annotations(img, points)
        rp = Path(p).resolve()
        rel = rp.relative_to(root) if rp.is_relative_to(root) else Path(rp.name)
        h, w = img.shape[:2]
        write_json_atomic(out_dir / rel.with_suffix(".json"), {"image": image_record(idx + 1, rel.as_posix(), w, h), "annotations": anns})
        done += 1
        n_masks += len(anns)
    dt = time.perf_counter() - t0
    print(f"unsam.models.predict: {done} images, {skipped} skipped, {n_masks / max(done, 1):.0f} masks/image, {done / max(dt, 1e-9):.2f} images/s -> {out_dir}")
    return 0 if done or not paths else 1


if __name__ == "__main__":
    raise SystemExit(main())
