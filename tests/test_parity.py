"""Parity of the presets with the ports of the released code (``benchmarks/published``).

The ports are written from the released code alone and import nothing from ``unsam``
but image I/O; each departure from the release that a preset makes is a named field of
``benchmarks.published.rules.Rules``, and the first tests check that those fields say
what the presets do. The quick parity below runs on the committed example images (no
shared data needed) at a reduced size, so it runs on every clone:
``divide_size`` 240 (30 x 30 patches) and conquer crops of 128 px (16 x 16 patches);
the full-size parity on 10 BSDS500 images per feature kind is the benchmark
``benchmarks/test_parity_bench.py``. Two kinds of features: ``classic`` and a
random-weight ViT with DINO ViT-B/8's patch (8) and key size (C = 768), 2 blocks.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.parity import (
    decode,
    maskcut_parity,
    match,
    settings,
    unsam_parity,
    unsam_regions,
)
from benchmarks.published import MASKCUT_PRESET, RELEASED, UNSAM_PRESET
from benchmarks.published import unsam as released_unsam
from benchmarks.published.maskcut import _signed, mask_iou
from unsam.io import load_image
from unsam.label import Labeler, label_config
from unsam.label import conquer as conquer_mod
from unsam.label import divide as divide_mod

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "images").glob("*.jpg"))
QUICK = {"divide_size": 240, "conquer": {"size": 128}}


# ---------------------------------------------------------------- the ports stand alone


def test_the_ports_import_nothing_from_unsam_but_io():
    files = sorted((ROOT / "benchmarks" / "published").glob("*.py")) + [ROOT / "tests" / "reference" / "divide.py"]
    assert len(files) >= 4
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert not n.startswith("unsam") or n.startswith("unsam.io"), (f.name, n)


# ---------------------------------------------------------------- the named deviations are the presets'


def test_maskcut_rules_are_the_preset_s():
    cfg = Labeler(label_config({"backbone": "classic"}, preset="maskcut")).cfg
    assert MASKCUT_PRESET.tie_rtol == divide_mod.TIE_RTOL
    # Step 5: the released CRF, with crf.py's settings, on both sides.
    assert MASKCUT_PRESET.crf and RELEASED.crf and cfg.divide.crf and cfg.refine == "none"
    src = (ROOT / "benchmarks" / "published" / "crf.py").read_text()
    c = cfg.crf
    for const, value in (("MAX_ITER", c.iterations), ("POS_W", c.gaussian_compat), ("POS_XY_STD", c.gaussian_sxy),
                         ("BI_W", c.bilateral_compat), ("BI_XY_STD", c.bilateral_sxy), ("BI_RGB_STD", c.bilateral_srgb)):
        assert _const(src, const) == value, const
    assert (c.min_iou, c.fill_holes) == (0.5, True)
    assert (cfg.divide.rule, cfg.divide.upsample, cfg.divide.max_cuts, cfg.divide.eps, cfg.divide_size) == ("published", "published", 3, 1e-5, 480)
    assert (cfg.divide.max_prev_iou, cfg.divide.min_area) == (0.5, 0.01)  # the released drop rule
    # The sign rule: the same vector as the divide's, also with exact ties in |x|.
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = rng.normal(size=40)
        x[rng.integers(40)] = -np.abs(x).max()  # a tie for the largest |x|, negative
        assert np.array_equal(_signed(x, MASKCUT_PRESET), divide_mod.canonical_sign(x))
    assert RELEASED.sign == "lapack" and RELEASED.tie_rtol is None


def _const(src: str, name: str):
    """A module-level constant of a source file (``A = 1`` or ``A, B = 1, 2``), without importing it."""
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                names = [t] if isinstance(t, ast.Name) else list(t.elts) if isinstance(t, ast.Tuple) else []
                values = [node.value] if isinstance(t, ast.Name) else list(node.value.elts)
                for n, v in zip(names, values):
                    if isinstance(n, ast.Name) and n.id == name:
                        return ast.literal_eval(v)
    raise KeyError(name)


def test_unsam_rules_are_the_preset_s():
    from tests.reference import divide as ref_divide

    cfg = Labeler(label_config({"backbone": "dino_vitb8"}, preset="unsam"), extractor=_vit()).cfg
    r = UNSAM_PRESET
    assert r.tie_rtol == divide_mod.TIE_RTOL == ref_divide.TIE_RTOL
    assert r.divide == "cuts" and cfg.conquer_regions and not cfg.conquer_whole_image and cfg.divide.rule == "uncovered"
    assert r.local_size == cfg.conquer.size and tuple(r.thresholds) == tuple(cfg.conquer.thresholds)
    assert (r.min_size, r.inside_frac) == (cfg.conquer.min_size, cfg.conquer.inside_frac)
    assert (r.nms, r.nms_iou) == ("image", cfg.masks.nms_iou)
    assert (r.min_area, r.min_area_frac, r.max_masks) == (cfg.masks.min_area, cfg.masks.min_area_frac, cfg.masks.max_masks)
    assert r.score == "stability" and r.score_floor == conquer_mod.SCORE_FLOOR
    assert r.parents == "merge_tree" and cfg.masks.levels == "tree"
    assert (r.emit, r.upsample, r.crop_box, r.channels, r.crop_resize) == ("distinct", "bilinear", "inclusive", "rgb", "bilinear")
    assert r.merge_dtype == "float64"  # merge_levels runs in float64 (README "Kernels")
    assert not cfg.atoms.enabled and cfg.refine == "none"
    # Everything else is the release's.
    same = {k for k in RELEASED.__dataclass_fields__ if getattr(RELEASED, k) == getattr(r, k)}
    # (crf is MaskCut's step 5: UnSAM's release has no CRF and its port reads no such rule.)
    assert same == {"crf", "local_size", "thresholds", "min_size", "inside_frac", "nms_iou", "nms_step", "score_floor"}


# ---------------------------------------------------------------- parity on the example images


def _vit():
    pytest.importorskip("timm")
    from benchmarks._util import vit_b8_shaped

    return vit_b8_shaped()


@pytest.fixture(scope="module")
def examples():
    return [load_image(p) for p in EXAMPLES]


@pytest.fixture(scope="module", params=["classic", "vitb8"])
def features(request):
    return ("classic", None) if request.param == "classic" else ("dino_vitb8", _vit())


def _labeler(preset: str, features) -> Labeler:
    backbone, extractor = features
    return Labeler(label_config({"backbone": backbone, **QUICK}, preset=preset), extractor=extractor)


def _maskcut_parity(examples, features, crf: bool) -> None:
    backbone, extractor = features
    lab = Labeler(label_config({"backbone": backbone, **QUICK, "divide": {"crf": crf}}, preset="maskcut"), extractor=extractor)
    for img in examples:
        p = maskcut_parity(lab, img, replace(MASKCUT_PRESET, crf=crf))
        assert p["ref"] >= 1 and p["ours"] == p["ref"] and p["matched"] == p["ref"], p


def test_maskcut_preset_gives_the_released_masks(examples, features):
    """The CRF step on both sides: pydensecrf2 on the port's (skipped where it is not installed)."""
    pytest.importorskip("pydensecrf")
    _maskcut_parity(examples, features, crf=True)


def test_maskcut_preset_without_its_crf_gives_the_released_masks_without_it(examples):
    """Steps 1-4 checked everywhere, pydensecrf2 or not: the CRF step off on both sides."""
    _maskcut_parity(examples, ("classic", None), crf=False)


def test_unsam_preset_matches_the_released_loops(examples, features):
    lab = _labeler("unsam", features)
    total = {"ref": 0, "ours": 0, "matched": 0, "same_parents": 0}
    deep = 0
    for img in examples:
        p = unsam_parity(lab, img)
        assert {"divide", "conquer"} <= set(p["sources"]), p
        for k in total:
            total[k] += p[k]
        deep = max(deep, p["max_level"])
    assert total["ref"] >= 30, total
    assert total["matched"] >= 0.98 * total["ref"] and total["matched"] >= 0.98 * total["ours"], total
    assert total["same_parents"] >= 0.98 * total["matched"], total
    assert deep >= 2  # the merge tree gives a hierarchy several levels deep


def test_released_path_writes_the_released_masks(examples):
    """The released per-mask path (after each threshold every cluster that still has an edge,
    again at every level; PIL's bicubic upsampling; NMS against the next 4 masks by area; RLE
    of every mask), checked against the distinct clusters of the same merge run upsampled
    the same way: each conquer mask it writes is exactly one of them,
    every distinct cluster of the run is
    written or covered by a written one, and every record is a valid RLE of the image with
    its area and box."""
    from pycocotools import mask as mask_utils

    lab = _labeler("unsam", ("classic", None))
    img = examples[0]
    regions = unsam_regions(lab, img)
    released = replace(settings(lab), emit="released", upsample="pil_bicubic", nms="windowed", score="none", parents="none")
    everything = replace(settings(lab), upsample="pil_bicubic", nms_iou=1.0, min_area=1, min_area_frac=0.0, max_masks=None)
    checked = 0
    for ri, r in enumerate(regions):
        if not r["pixels"].any():
            continue
        one = [dict(r, parent=-1)]
        anns = released_unsam.run_unsam(img, one, lab.extractor, released)["annotations"]
        masks = decode([dict(a, segmentation=a["segmentation"]) for a in anns])
        assert np.array_equal(masks[0], r["pixels"])  # the region first
        conquer = masks[1:]
        clusters = [m for m, s in zip(*(lambda o: (o["masks"], o["sources"]))(released_unsam.run_unsam(img, one, lab.extractor, everything))) if s == "conquer"]
        iou = match(conquer, clusters, 1.0)[1]
        assert len(conquer) <= len(clusters) and (iou.max(1) == 1.0).all(), (ri, iou.max(1))
        assert (iou.max(0) > released.nms_iou).all(), (ri, iou.max(0))  # written, or a near-copy written
        for a in anns:
            rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
            assert a["area"] == int(mask_utils.area(rle)) >= 1 and a["bbox"] == mask_utils.toBbox(rle).tolist()
        checked += len(conquer)
    assert checked >= 10


def test_windowed_nms_compares_each_mask_with_the_next_four_by_area_only():
    """The released NMS: masks sorted by area; a kept mask suppresses a near-copy among the
    next 4 of the sorted list, not one 6 places down."""

    def block(y0, x0, hgt, wid, drop=0):
        m = np.zeros((40, 80), np.uint8)
        m[y0 : y0 + hgt, x0 : x0 + wid] = 1
        m.flat[np.flatnonzero(m)[:drop]] = 0
        return m

    a = block(0, 0, 10, 10)  # area 100
    near = block(0, 0, 10, 10, drop=1)  # 99, IoU 0.99 with a, next after it: suppressed
    others = [block(20, 16 * k, 7, 14, drop=k) for k in range(4)]  # 98, 97, 96, 95, apart from a
    far = block(0, 0, 10, 10, drop=6)  # 94, IoU 0.94 with a, 6 places after it: kept
    masks = [far, *others, near, a]
    assert sorted((int(m.sum()) for m in masks), reverse=True) == [100, 99, 98, 97, 96, 95, 94]
    kept = released_unsam.windowed_nms(masks, 0.9, 5)
    assert [int(m.sum()) for m in kept] == [100, 98, 97, 96, 95, 94]
    assert mask_iou(kept[0], kept[-1]) > 0.9


def test_merge_loop_port_partitions_like_the_kernel():
    """The released loop (run in float64) and merge_levels make the same clusters at every
    threshold on features that merge at several thresholds."""
    from benchmarks._util import part_feats
    from unsam.kernels import merge_levels

    f = part_feats(seed=3, c=32, h=12, w=12)
    thr = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    labels = merge_levels(f, thr).numpy()
    tree: dict = {}
    released_unsam.iterative_merge(f.double(), thr, 1, tree, torch.float64)
    clusters = tree["clusters"]
    for lv, ids in enumerate(tree["levels"]):
        alive = [c for c in range(tree["created"][lv]) if c not in tree["into"] or tree["into"][c] >= tree["created"][lv]]
        port = {frozenset(np.flatnonzero(np.asarray(clusters[c]["mask"]).ravel() > 0)) for c in alive}
        ours = {frozenset(np.flatnonzero(labels[lv].ravel() == v)) for v in np.unique(labels[lv])}
        assert port == ours, lv
        # The released collection quirk: only clusters that still have an edge are emitted.
        assert set(ids) <= set(alive)
    assert len({len(np.unique(level)) for level in labels}) >= 3
