"""Pipeline benchmark: ``unsam.label`` stages beside a published-style baseline, same process.

Run: ``pytest benchmarks/ --benchmark -s -k pipeline``. The baseline runs the same
stages the way the published code does them: a dense generalized eigensolver per
cut, the Python merge loop per region, and per-mask full-resolution work (one
mask at a time: upsampling, inside test, windowed NMS on the next 4 masks by area,
RLE encoding), with the published conquer (the patch grid of every region and
of the whole image, no atoms). Ours runs the label defaults (for ``classic``:
atoms instead of the grid). Backbone time is reported but excluded from the
ratio (the target is about the labeling core, which includes the atom stage).
``UNSAM_BENCH_IMAGES`` limits the images.
"""

from __future__ import annotations

import os
import time
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
from pycocotools import mask as mask_utils

from benchmarks._util import DATA, record
from unsam import conquer as conquer_mod
from unsam import divide as divide_mod
from unsam.io import load_image
from unsam.kernels import dense_affinity, fix_sign, merge_levels_reference
from unsam.pipeline import LabelConfig, Labeler, config_from_dict

pytestmark = pytest.mark.benchmark
CORE = ("divide", "merge", "atoms_segment", "atoms_merge", "masks", "output")


def _dense_lanczos(bits, deg, eps=1e-5, tol=None, max_iter=None, x0=None):
    """Drop-in for lanczos_fiedler with the published solver (scipy's dense generalized eigh)."""
    if bits.dim() == 3:  # batched: one dense solve per graph, as the published code would
        outs = [_dense_lanczos(b, d, eps) for b, d in zip(bits, deg)]
        return tuple(torch.stack([o[k] for o in outs]) for k in range(3))
    a = dense_affinity(bits, deg, eps).numpy()
    d = np.diag(a.sum(1))
    vals, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])
    x = fix_sign(vecs[:, 0])
    return torch.from_numpy(x), torch.tensor(vals[0]), torch.tensor(0)


def _python_merge(feats, thresholds):
    return torch.stack([merge_levels_reference(f, thresholds) for f in feats.cpu()])


def _published_masks(items, image, h, w, nms_iou=0.9):
    """Per-mask full-resolution work as in the published conquer code."""
    full = []
    for m in items:  # one full-image array per mask
        a = np.zeros((h, w), bool)
        x0, y0, x1, y1 = m.box
        a[y0:y1, x0:x1] = m.crop
        full.append(a)
    order = np.argsort([-a.sum() for a in full], kind="stable")
    keep = np.ones(len(full), bool)
    for r, i in enumerate(order):  # windowed NMS: the next 4 masks by area
        for j in order[r + 1 : r + 5]:
            if keep[j]:
                inter = np.logical_and(full[i], full[j]).sum()
                union = np.logical_or(full[i], full[j]).sum()
                if union and inter / union > nms_iou:
                    keep[j] = False
    out = []
    for k in np.flatnonzero(keep):
        rle = mask_utils.encode(np.asfortranarray(full[k].astype(np.uint8)))
        out.append({"area": int(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return out


def _run(labeler, images, published: bool) -> dict[str, float]:
    labeler.timings.clear()
    if not published:
        for im in images:
            labeler.label_batch([im])
        return {k: v / len(images) for k, v in labeler.timings.items()}
    finish = labeler._finish

    def pub_finish(items, image, h, w, work_hw=None, times=None):
        t0 = time.perf_counter()
        out = _published_masks(items, image, h, w)
        times = labeler.timings if times is None else times
        times["masks"] = times.get("masks", 0.0) + time.perf_counter() - t0
        return out

    with mock.patch.object(divide_mod, "lanczos_fiedler", _dense_lanczos), \
         mock.patch.object(conquer_mod, "merge_levels", _python_merge), \
         mock.patch.object(labeler, "_finish", pub_finish):
        for im in images:
            labeler.label_batch([im])
    labeler._finish = finish
    return {k: v / len(images) for k, v in labeler.timings.items()}


def _images(sub: str, n: int) -> list[np.ndarray]:
    files = sorted((DATA / sub).glob("*.jpg"))
    if not files:
        pytest.skip(f"no images under {DATA / sub}")
    n = min(n, int(os.environ.get("UNSAM_BENCH_IMAGES", n)))
    return [load_image(f) for f in files[:n]]


@pytest.fixture(scope="module")
def labeler():
    lab = Labeler(LabelConfig(backbone="classic"))
    lab.label_batch([np.zeros((64, 64, 3), np.uint8) + 100])  # warm-up (threads, imports)
    return lab


@pytest.fixture(scope="module")
def published_labeler():
    """The published pipeline's stages: grid conquer of every region and the whole image, no atoms."""
    cfg = config_from_dict(
        {"conquer_regions": True, "conquer_whole_image": True, "atoms": {"enabled": False}},
        LabelConfig(backbone="classic"),
    )
    return Labeler(cfg)


def test_pipeline_bsds(labeler, published_labeler):
    ours_imgs = _images("bsds500/images/val", 10)
    t0 = time.perf_counter()
    ours = _run(labeler, ours_imgs, published=False)
    wall = (time.perf_counter() - t0) / len(ours_imgs)
    pub = _run(published_labeler, ours_imgs[:2], published=True)
    core_ours = sum(ours.get(k, 0.0) for k in CORE)
    core_pub = sum(pub.get(k, 0.0) for k in CORE)
    rows = [
        dict(method="unsam", images=len(ours_imgs), images_per_s=1 / wall, core_s_per_image=core_ours,
             **{f"{k}_s": v for k, v in ours.items()}),
        dict(method="published-style", images=2, core_s_per_image=core_pub, **{f"{k}_s": v for k, v in pub.items()}),
    ]
    rows[0]["core_speedup"] = core_pub / core_ours
    record("pipeline_bsds500_classic", rows)
    assert core_ours <= 1.0, rows[0]
    assert rows[0]["core_speedup"] >= 20, rows


def test_pipeline_sa1b_full_size(labeler, published_labeler):
    imgs = _images("sa1b-samples", 3)
    t0 = time.perf_counter()
    ours = _run(labeler, imgs, published=False)
    wall = (time.perf_counter() - t0) / len(imgs)
    rows = [dict(method="unsam", images=len(imgs), size=f"{imgs[0].shape[1]}x{imgs[0].shape[0]}", images_per_s=1 / wall,
                 core_s_per_image=sum(ours.get(k, 0.0) for k in CORE), **{f"{k}_s": v for k, v in ours.items()})]
    if os.environ.get("UNSAM_BENCH_SA1B_BASELINE") == "1":  # minutes per image
        pub = _run(published_labeler, imgs[:1], published=True)
        rows.append(dict(method="published-style", images=1, core_s_per_image=sum(pub.get(k, 0.0) for k in CORE),
                         **{f"{k}_s": v for k, v in pub.items()}))
        rows[0]["core_speedup"] = rows[1]["core_s_per_image"] / rows[0]["core_s_per_image"]
    record("pipeline_sa1b_classic", rows)
    assert rows[0]["images_per_s"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pipeline_gpu_dino_vitb8():
    """dino_vitb8 with random weights of the right shape (speed does not depend on weights).

    Batches of 8, with the per-image CPU stages in this process (``cpu_workers=0``)
    or on worker processes with enough batches in flight to keep them busy (what
    ``unsam.label --gpu`` does), with the label defaults and without the atom stage. The baseline in
    the same process is the CPU ``classic`` labeler.
    """
    from unsam.kernels import cuda_available

    if not cuda_available():
        pytest.skip("CUDA kernels not built")
    from unsam.features import build_extractor

    ex = build_extractor("dino_vitb8", pretrained=False, device="cuda")
    rows = []
    imgs = _images("bsds500/images/val", 32)
    batch = 8
    workers = min(16, max(1, (os.cpu_count() or 2) - 2))
    for name, over in (("defaults", {}), ("atoms off", {"atoms": {"enabled": False}})):
        cfg = config_from_dict(over, LabelConfig(backbone="dino_vitb8"))
        for nw in (0, workers):
            with Labeler(cfg, device="cuda", extractor=ex, cpu_workers=nw) as lab:
                lab.label_batch(imgs[:batch])  # warm-up (and the workers' start)
                lab.timings.clear()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                depth = lab.batches_in_flight(batch)  # as unsam.label does
                pending = []
                for s in range(0, len(imgs), batch):
                    pending.append(lab.submit_batch(imgs[s : s + batch]))
                    while len(pending) > depth:
                        lab.collect(pending.pop(0))
                for futs in pending:
                    lab.collect(futs)
                wall = time.perf_counter() - t0
            rows.append(dict(config=name, batch=batch, cpu_workers=nw, images_per_s=len(imgs) / wall,
                             **{f"{k}_ms": 1e3 * v / len(imgs) for k, v in lab.timings.items()}))
    cpu = Labeler(LabelConfig(backbone="classic"))
    t0 = time.perf_counter()
    cpu.label_batch(imgs[:2])
    cpu_ips = 2 / (time.perf_counter() - t0)
    for r in rows:
        r["x_vs_cpu_classic"] = r["images_per_s"] / cpu_ips
    record("pipeline_gpu_dino_vitb8", rows)
