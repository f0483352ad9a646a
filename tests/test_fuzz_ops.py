"""Fuzzing every compiled op: on random valid inputs it equals its Python reference; on random
invalid inputs (NaN and infinity, wrong dtypes and shapes, values out of range, sizes whose
counts overflow) it raises an error that names the op, never returns, crashes or hangs.

``N_PER_OP`` random inputs per op function here (1 000, about half of them invalid; the
five mask ops share 2 000, the three RLE crop ops 2 000, each op seeing more than 1 000; the
dense CRF 1 000), the fuzz benchmark
(``benchmarks/test_fuzz_bench.py``) ten times more. Small sizes keep the references fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.densecrf import dense_crf_reference
from tests.reference.kernels import (
    affinity_reference,
    fiedler_reference,
    graph_segment_reference,
    merge_graph_reference,
    merge_levels_reference,
)
from tests.reference.maskops import (
    cell_overlaps,
    nms_from_intersections_reference,
    parents_from_intersections_reference,
    rle_reference,
)
from tests.reference.rlecrop import (
    rle_crop_area_reference,
    rle_crop_at_reference,
    rle_crop_reference,
)
from unsam.kernels import (
    affinity,
    graph_segment,
    lanczos_fiedler,
    merge_graph,
    merge_levels,
    unpack_bits,
)
from unsam.kernels.densecrf import CRFParams, dense_crf
from unsam.kernels.maskops import mask_nms, mask_overlaps_upper, mask_parents, mask_rle
from unsam.kernels.rlecrop import pack_rles, rle_crop, rle_crop_area, rle_crop_at
from unsam.kernels.segment import adjacent_pairs
from unsam.label.items import MaskItem

N_PER_OP = 1000
ERRORS = (ValueError, TypeError, RuntimeError, IndexError)


def _nonfinite(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64 if a.dtype == np.float64 else np.float32, copy=True)
    if a.size:
        a.flat[rng.integers(a.size)] = rng.choice([np.nan, np.inf, -np.inf])
    return a


def expect_error(fn, op: str) -> None:
    with pytest.raises(ERRORS) as info:
        fn()
    assert op in str(info.value), str(info.value)


def fuzz_affinity(rng: np.random.Generator) -> None:
    b, n, c = int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 8))
    f = rng.normal(size=(b, n, c)).astype(np.float32)
    f[:, rng.random(n) < 0.1] = 0.0  # zero features: no edges
    tau = float(rng.uniform(-1, 1))
    valid = torch.from_numpy(rng.random((b, n)) < 0.8)
    bad = rng.integers(6)
    if bad == 0:
        return expect_error(lambda: affinity(torch.from_numpy(_nonfinite(rng, f)), tau), "affinity")
    if bad == 1:
        return expect_error(lambda: affinity(torch.from_numpy(f), float(rng.choice([np.nan, 1.5, -2.0]))), "affinity")
    if bad == 2:
        return expect_error(lambda: affinity(torch.from_numpy(f), tau, valid=valid[:, :-1] if n > 1 else valid.int()), "affinity")
    bits, deg = affinity(torch.from_numpy(f), tau, valid=valid)
    ref_b, ref_d = affinity_reference(torch.from_numpy(f), tau, valid=valid)
    assert torch.equal(unpack_bits(bits, n), ref_b)
    torch.testing.assert_close(deg, ref_d, rtol=0, atol=1e-9)


def fuzz_lanczos(rng: np.random.Generator) -> None:
    n, c = int(rng.integers(2, 30)), int(rng.integers(2, 8))
    f = torch.from_numpy(rng.normal(size=(n, c)).astype(np.float32))
    bits, deg = affinity(f, float(rng.uniform(-0.3, 0.6)))
    bad = rng.integers(6)
    if bad == 0:
        return expect_error(lambda: lanczos_fiedler(bits, torch.from_numpy(_nonfinite(rng, deg.numpy()))), "lanczos_fiedler")
    if bad == 1:
        return expect_error(lambda: lanczos_fiedler(bits, -deg), "lanczos_fiedler")
    if bad == 2:
        return expect_error(lambda: lanczos_fiedler(bits, deg, tol=float(rng.choice([0.0, np.nan, -1.0]))), "lanczos_fiedler")
    x, lam, _ = lanczos_fiedler(bits, deg, tol=1e-9)
    _, ref_lam = fiedler_reference(bits, deg)
    assert abs(float(lam) - ref_lam) < 1e-6 * max(1.0, abs(ref_lam)), (float(lam), ref_lam)
    a = (1 - 1e-5) * unpack_bits(bits, n).double() + 1e-5
    d = a.sum(1)
    r = (torch.diag(d) - a) @ x.double() - float(lam) * d * x.double()
    assert float(r.norm()) < 1e-5 and abs(float(x @ (d * x)) - 1.0) < 1e-8  # an eigenvector, D-normalised


def fuzz_merge(rng: np.random.Generator) -> None:
    h, w, c = int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 6))
    k = int(rng.integers(1, 4))
    centers = rng.normal(size=(k, c))
    f = (centers[rng.integers(k, size=(h, w))] + rng.uniform(0, 1) * rng.normal(size=(h, w, c))).astype(np.float32)
    f[rng.random((h, w)) < 0.05] = 0.0
    thr = sorted(rng.uniform(-1, 1, int(rng.integers(1, 5))), reverse=True)
    valid = torch.from_numpy(rng.random((h, w)) < 0.9)
    bad = rng.integers(6)
    if bad == 0:
        return expect_error(lambda: merge_levels(torch.from_numpy(_nonfinite(rng, f)), thr), "merge_levels")
    if bad == 1:
        return expect_error(lambda: merge_levels(torch.from_numpy(f), [np.nan] + thr), "merge_levels")
    if bad == 2:
        return expect_error(lambda: merge_levels(torch.from_numpy(f), thr[::-1] + [2.0]), "merge_levels")
    got = merge_levels(torch.from_numpy(f), thr, valid=valid)
    assert torch.equal(got, merge_levels_reference(torch.from_numpy(f), thr, valid=valid))


def fuzz_segment(rng: np.random.Generator) -> None:
    h, w, c = int(rng.integers(1, 9)), int(rng.integers(1, 9)), int(rng.choice([1, 3]))
    img = (rng.integers(0, int(rng.integers(1, 8)), (h, w, c)) * 30).astype(np.float32)
    k, min_size = float(rng.uniform(0, 300)), int(rng.integers(0, 6))
    bad = rng.integers(6)
    if bad == 0:
        return expect_error(lambda: graph_segment(_nonfinite(rng, img), k, min_size, sigma=0), "graph_segment")
    if bad == 1:
        return expect_error(lambda: graph_segment(img, float(rng.choice([np.nan, -1.0, np.inf])), min_size), "graph_segment")
    if bad == 2:
        return expect_error(lambda: graph_segment(img, k, -1), "graph_segment")
    got = graph_segment(img, k, min_size=min_size, sigma=0).numpy()
    assert np.array_equal(got[0] if got.ndim == 3 else got, graph_segment_reference(img, k, min_size))


def fuzz_merge_graph(rng: np.random.Generator) -> None:
    raw = rng.integers(0, int(rng.integers(1, 7)), (int(rng.integers(2, 8)), int(rng.integers(2, 8))))
    lab = np.unique(raw, return_inverse=True)[1].reshape(raw.shape)  # labels 0..n-1
    n = int(lab.max()) + 1
    edges = adjacent_pairs(lab)
    hist = rng.random((n, 4)).astype(np.float32)
    area = np.bincount(lab.ravel(), minlength=n).astype(np.float64)
    feats = rng.normal(size=(n, 3)).astype(np.float32)
    ys, xs = np.indices(lab.shape)
    boxes = np.array([[xs[lab == i].min(), ys[lab == i].min(), xs[lab == i].max() + 1, ys[lab == i].max() + 1] for i in range(n)], np.int64)
    wts = [float(v) for v in rng.uniform(0, 1, 4)]
    bad = rng.integers(6)
    if bad == 0:
        return expect_error(lambda: merge_graph(_nonfinite(rng, hist), area, edges, feats, boxes, *wts), "merge_graph")
    if bad == 1:
        return expect_error(lambda: merge_graph(hist, area, edges, _nonfinite(rng, feats), boxes, *wts), "merge_graph")
    if bad == 2:
        e = edges.copy() if len(edges) else np.zeros((1, 2), np.int64)
        e[0, 0] = n + 3
        return expect_error(lambda: merge_graph(hist, area, e, feats, boxes, *wts), "merge_graph")
    m, s = merge_graph(hist, area, edges, feats, boxes, *wts)
    mr, sr = merge_graph_reference(hist, area, edges, feats, boxes, *wts)
    assert np.array_equal(m.numpy(), mr)
    np.testing.assert_allclose(s.numpy(), sr, rtol=0, atol=1e-9)


def _items(rng: np.random.Generator, h: int, w: int) -> list[MaskItem]:
    out = []
    for _ in range(int(rng.integers(0, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = int(rng.integers(x0, w + 1)), int(rng.integers(y0, h + 1))
        out.append(MaskItem((x0, y0, x1, y1), rng.random((y1 - y0, x1 - x0)) < rng.uniform(0, 1), float(rng.random()), "atoms"))
    return out


def fuzz_maskops(rng: np.random.Generator) -> None:
    h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    items = _items(rng, h, w)
    boxes, crops = [m.box for m in items], [m.crop for m in items]
    bad = rng.integers(12)
    if bad == 0 and items:
        b = list(boxes)
        b[0] = (0, 0, w + 1, h)
        return expect_error(lambda: mask_overlaps_upper(b, crops, h, w), "mask_overlaps")
    if bad == 1:
        return expect_error(lambda: mask_overlaps_upper(boxes, crops, 1 << 16, 1 << 16), "mask_overlaps")
    ref = cell_overlaps(items, h, w)
    up = mask_overlaps_upper(boxes, crops, h, w)
    assert np.array_equal(up.dense(), ref)
    k = len(items)
    scores = rng.choice([0.1, 0.5, 0.9], size=k) if rng.random() < 0.5 else rng.random(k)
    prot = rng.random(k) < 0.2
    iou, contain = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
    if bad == 2 and k:
        return expect_error(lambda: mask_nms(up, _nonfinite(rng, scores).astype(np.float64), iou), "mask_nms")
    if bad == 3:
        return expect_error(lambda: mask_nms(up, scores, float(rng.choice([np.nan, 1.5, -0.1]))), "mask_nms")
    if bad == 4:
        return expect_error(lambda: mask_parents(ref, float(rng.choice([np.nan, 2.0, -1.0]))), "mask_parents")
    if bad == 5:
        return expect_error(lambda: mask_rle(boxes, crops, (h, w), h - 1 if h > 1 else 1 << 17, w if h > 1 else 1 << 17), "mask_rle")
    if k:
        assert mask_nms(up, scores, iou, prot) == nms_from_intersections_reference(ref, scores, iou, prot)
        assert mask_parents(ref, contain) == parents_from_intersections_reference(ref, contain)
    full = (h + int(rng.integers(0, 20)), w + int(rng.integers(0, 20)))
    got = mask_rle(boxes, crops, (h, w), *full)
    want = rle_reference(items, (h, w), *full)
    assert got[0] == want[0] and np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])


def fuzz_rlecrop(rng: np.random.Generator) -> None:
    """rle_crop_area, rle_crop and rle_crop_at on one input: random masks, a random crop map
    (scaled, flipped, padded with -1)."""
    from pycocotools import mask as mask_utils

    h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    masks = rng.random((int(rng.integers(0, 8)), h, w)) < rng.uniform(0, 1)
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    packed = pack_rles([r["counts"] for r in rles], h, w)
    rows = np.sort(rng.integers(-1, h, int(rng.integers(0, 25))))
    cols = np.sort(rng.integers(-1, w, int(rng.integers(0, 25))))[:: 1 if rng.random() < 0.5 else -1].copy()
    points = np.stack([rng.integers(0, max(1, len(rows)), 6), rng.integers(0, max(1, len(cols)), 6)], 1) if len(rows) and len(cols) else np.zeros((0, 2), np.int64)
    bad = rng.integers(8)
    if bad == 0:
        return expect_error(lambda: rle_crop(packed, np.append(rows, h), cols), "rle_crop")
    if bad == 1:
        return expect_error(lambda: rle_crop_area(packed, rows, np.append(cols, -2)), "rle_crop_area")
    if bad == 2 and len(rles):
        junk = pack_rles([b"\x7f!!"] + [r["counts"] for r in rles[1:]], h, w)  # not a COCO counts string
        return expect_error(lambda: rle_crop(junk, rows, cols), "rle_crop")
    if bad == 3 and len(points):
        return expect_error(lambda: rle_crop_at(packed, rows, cols, points + len(rows) + len(cols) + 1), "rle_crop_at")
    got, boxes = rle_crop(packed, rows, cols)
    want, want_boxes = rle_crop_reference(rles, rows, cols)
    assert np.array_equal(got.numpy(), want) and np.array_equal(boxes.numpy(), want_boxes)
    assert np.array_equal(rle_crop_area(packed, rows, cols).numpy(), rle_crop_area_reference(rles, rows, cols))
    assert np.array_equal(rle_crop_at(packed, rows, cols, points).numpy(), rle_crop_at_reference(rles, rows, cols, points))


def fuzz_dense_crf(rng: np.random.Generator) -> None:
    """dense_crf on a small random image: bool or soft masks (empty and full ones too), random
    kernel widths, weights (negative ones included) and iterations; against the lattice
    reference as tests/test_densecrf.py compares them (log-odds within float32 rounding, the
    MAP wherever the reference is not a near tie)."""
    h, w = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if rng.random() < 0.5:  # flat patches: many points on one lattice vertex
        image = (image // 64 * 64).astype(np.uint8)
    k = int(rng.integers(0, 6))
    masks = rng.random((k, h, w)) < rng.uniform(0, 1)
    if k and rng.random() < 0.3:
        masks[0] = rng.random() < 0.5
    soft = rng.random() < 0.3
    m = np.clip(masks + rng.normal(0, 0.3, masks.shape), 0, 1).astype(np.float32) if soft else masks
    params = CRFParams(float(rng.uniform(0.3, 10)), float(rng.uniform(-5, 12)), float(rng.uniform(0.3, 60)),
                       float(rng.uniform(0.5, 40)), float(rng.uniform(-5, 12)), int(rng.integers(0, 6)))  # fmt: skip
    bad = rng.integers(8)
    if bad == 0 and k:
        return expect_error(lambda: dense_crf(image, _nonfinite(rng, masks)), "dense_crf")
    if bad == 1:
        wrong = {"gaussian_sxy": float(rng.choice([0.0, -1.0, np.nan, np.inf]))}
        return expect_error(lambda: dense_crf(image, m, CRFParams(**{**params.__dict__, **wrong})), "dense_crf")
    if bad == 2:
        return expect_error(lambda: dense_crf(image[:, :, :2], m), "dense_crf")
    if bad == 3:
        return expect_error(lambda: dense_crf(image.astype(np.float32), m), "dense_crf")
    if bad == 4:
        return expect_error(lambda: dense_crf(image, np.zeros((k, h + 1, w), bool)), "dense_crf")
    if bad == 5:
        return expect_error(lambda: dense_crf(image, m, CRFParams(**{**params.__dict__, "iterations": -1})), "dense_crf")
    got = dense_crf(image, m, params, return_logits=True).numpy()
    got_map = dense_crf(image, m, params).numpy()
    assert got.shape == (k, h, w) and got_map.dtype == bool
    for j in range(k):
        q = dense_crf_reference(image, m[j], **params.__dict__).astype(np.float64)
        ref = np.log(q[1]) - np.log(q[0])
        assert np.abs(got[j] - ref).max() < 5e-4 * max(1.0, np.abs(ref).max()), (j, params)
        sure = np.abs(ref) > 1e-3
        assert np.array_equal(got_map[j][sure], ref[sure] > 0), (j, params)


OPS = {
    "dense_crf": fuzz_dense_crf,
    "affinity": fuzz_affinity,
    "lanczos_fiedler": fuzz_lanczos,
    "merge_levels": fuzz_merge,
    "graph_segment": fuzz_segment,
    "merge_graph": fuzz_merge_graph,
    "maskops": fuzz_maskops,  # mask_overlaps, mask_dense, mask_nms, mask_parents, mask_rle on each input
    "rlecrop": fuzz_rlecrop,  # rle_crop_area, rle_crop, rle_crop_at on each input
}


#: Functions whose inputs several ops share get more, so that each of those ops sees over 1 000.
SHARED = {"maskops": 2, "rlecrop": 2}


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_fuzz(op):
    fn = OPS[op]
    for seed in range(N_PER_OP * SHARED.get(op, 1)):
        try:
            fn(np.random.default_rng([seed, sorted(OPS).index(op)]))
        except AssertionError as e:
            raise AssertionError(f"{op}, seed {seed}: {e}") from None
