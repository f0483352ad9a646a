"""Parity of the presets with the ports of the released code, one image at a time.

Used by the quick parity test on the committed example images (``tests/test_parity.py``)
and by the parity benchmark on BSDS500 val (``benchmarks/test_parity_bench.py``). Both
sides see the same image and the same backbone:

- ``maskcut``: :func:`benchmarks.published.maskcut.run_maskcut` with
  :data:`~benchmarks.published.rules.MASKCUT_PRESET` on the preset's divide features (the
  CRF step with pydensecrf2 on the port's side, ``unsam.kernels.dense_crf`` on the
  preset's); the same count of masks, each matched one to one at IoU >= 0.99.
- ``unsam``: the preset's divide written with dense solvers (``tests/reference/divide.py``)
  feeding :func:`benchmarks.published.unsam.run_unsam` with
  :data:`~benchmarks.published.rules.UNSAM_PRESET`; masks matched one to one at
  IoU >= 0.95 both ways, and the matched masks' parents.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from benchmarks.published import MASKCUT_PRESET, UNSAM_PRESET
from benchmarks.published.maskcut import run_maskcut
from benchmarks.published.unsam import run_unsam
from tests.reference.divide import dense_divide, region_pixels

__all__ = ["decode", "match", "maskcut_parity", "settings", "unsam_parity", "unsam_regions"]


def decode(anns: list[dict]) -> list[np.ndarray]:
    """Full-size bool masks of annotation records."""
    return [mask_utils.decode(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())).astype(bool) for a in anns]


def match(ref: list[np.ndarray], ours: list[np.ndarray], thr: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """One-to-one matching with the highest total IoU; pairs below thr are not matches."""
    if not ref or not ours:
        return [], np.zeros((len(ref), len(ours)))
    a = np.stack([m.ravel() for m in ref]).astype(np.float32)
    b = np.stack([m.ravel() for m in ours]).astype(np.float32)
    inter = a @ b.T
    iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1.0)
    rows, cols = linear_sum_assignment(-iou)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if iou[i, j] >= thr], iou


def _divide_feats(lab, image: np.ndarray) -> torch.Tensor:
    t = lab.to_device([image])[0]
    with torch.inference_mode():
        return lab.divide_features([t])[0].cpu()


def maskcut_parity(lab, image: np.ndarray, rules=MASKCUT_PRESET) -> dict:
    """The ``maskcut`` preset (``lab``) against the released MaskCut (with ``rules``) on one image."""
    ours = decode(lab.label_batch([image])[0])
    d = lab.cfg.divide
    ref = run_maskcut(_divide_feats(lab, image), image.shape[:2], lab.divide_side(), d.tau, d.max_cuts, d.eps, rules, image=image)
    pairs, iou = match(ref, ours, 0.99)
    return {"ref": len(ref), "ours": len(ours), "matched": len(pairs), "min_iou": float(min((iou[i, j] for i, j in pairs), default=1.0))}


def unsam_regions(lab, image: np.ndarray) -> list[dict]:
    """The preset's divide regions by the dense reference, as the port takes them."""
    regions = dense_divide(_divide_feats(lab, image), lab.cfg.divide)
    pixels = region_pixels(regions, *image.shape[:2])
    return [{"pixels": p, "ncut": r["ncut"], "parent": r["parent"]} for r, p in zip(regions, pixels)]


def settings(lab, rules=UNSAM_PRESET):
    """``rules`` with the run's settings that are not departures from the release: the
    backbone's merge thresholds (DINO's are the released ones) and the crop size."""
    return replace(rules, thresholds=tuple(lab.cfg.conquer.thresholds), local_size=lab.cfg.conquer.size)


def unsam_parity(lab, image: np.ndarray, rules=UNSAM_PRESET) -> dict:
    """The ``unsam`` preset (``lab``) against the dense divide + the released conquer port
    (``rules`` with the run's thresholds and crop size, :func:`settings`)."""
    anns = lab.label_batch([image])[0]
    ours = decode(anns)
    ref = run_unsam(image, unsam_regions(lab, image), lab.extractor, settings(lab, rules))
    pairs, _ = match(ref["masks"], ours, 0.95)
    index = {a["id"]: k for k, a in enumerate(anns)}
    our_parent = [index[a["parent_id"]] if a["parent_id"] is not None else -1 for a in anns]
    to_ours = dict(pairs)
    same = sum(
        (ref["parents"][i] < 0 and our_parent[j] < 0) or (ref["parents"][i] >= 0 and to_ours.get(ref["parents"][i]) == our_parent[j])
        for i, j in pairs
    )
    return {
        "ref": len(ref["masks"]),
        "ours": len(ours),
        "matched": len(pairs),
        "same_parents": int(same),
        "sources": sorted(set(ref["sources"])),
        "max_level": max((a["level"] for a in anns), default=0),
    }
