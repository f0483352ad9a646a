import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from tests.reference.maskops import (
    build_hierarchy,
    crop_to_rle,
    intersection,
    mask_nms_items,
    upscale_crop,
)
from unsam.label.conquer import clusters_from_labels, crop_resize
from unsam.label.items import MaskItem
from unsam.label.masks import (
    Overlaps,
    nms_from_intersections,
    pairwise_intersections,
    parents_from_intersections,
)
from unsam.label.masks.hierarchy import _clip_to


@settings(max_examples=200, deadline=None)
@given(
    h=st.integers(1, 30), w=st.integers(1, 30), seed=st.integers(0, 10**6), density=st.floats(0, 1), full_height=st.booleans()
)
def test_crop_rle_equals_pycocotools_on_the_full_mask(h, w, seed, density, full_height):
    rng = np.random.default_rng(seed)
    x0 = int(rng.integers(0, w))
    x1 = int(rng.integers(x0 + 1, w + 1))
    y0, y1 = (0, h) if full_height else sorted(int(v) for v in rng.integers(0, h + 1, 2))
    y1 = max(y1, y0 + 1) if y0 < h else h
    y0 = min(y0, y1 - 1)
    crop = rng.random((y1 - y0, x1 - x0)) < density
    full = np.zeros((h, w), np.uint8)
    full[y0:y1, x0:x1] = crop
    ref = mask_utils.encode(np.asfortranarray(full))
    assert crop_to_rle(crop, (x0, y0, x1, y1), h, w) == {"size": [h, w], "counts": ref["counts"].decode()}


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), fy=st.floats(1.0, 4.0), fx=st.floats(1.0, 4.0), seed=st.integers(0, 10**6))
def test_upscale_crop_is_the_global_nearest_mapping(h, w, fy, fx, seed):
    rng = np.random.default_rng(seed)
    full = rng.random((h, w)) < 0.5
    ys, xs = np.nonzero(full)
    if ys.size == 0:
        return
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    crop = full[box[1] : box[3], box[0] : box[2]]
    H, W = max(h, round(h * fy)), max(w, round(w * fx))
    c2, b2 = upscale_crop(crop, box, W / w, H / h, H, W)
    big = np.zeros((H, W), bool)
    big[b2[1] : b2[3], b2[0] : b2[2]] = c2
    ry = np.floor((np.arange(H) + 0.5) / (H / h)).astype(int)
    rx = np.floor((np.arange(W) + 0.5) / (W / w)).astype(int)
    assert np.array_equal(big, full[ry][:, rx])


def _items(seed, k=25, h=40, w=50):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        x0, y0 = int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2))
        x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
        crop = rng.random((y1 - y0, x1 - x0)) < 0.8
        if crop.any():
            out.append(MaskItem((x0, y0, x1, y1), crop, float(rng.random()), "conquer"))
    # near-duplicates and nested copies
    out.append(MaskItem(out[0].box, out[0].crop.copy(), 0.99, "conquer"))
    c = out[1].crop.copy()
    c[0] = False
    out.append(MaskItem(out[1].box, c, 0.5, "divide"))
    return out


def test_pairwise_intersections_exact():
    for seed in range(3):
        items = _items(seed)
        inter = pairwise_intersections(items, 40, 50)
        ref = np.array([[intersection(a, b) for b in items] for a in items])
        assert np.array_equal(inter, ref)


def test_overlaps_update_after_clipping_and_after_any_change():
    items = _items(1)
    ov = Overlaps(items, 40, 50)
    # Clip mask 2 to mask 3 (stays a union of cells), and change mask 4 arbitrarily.
    _clip_to(items[2], items[3])
    ov.update([2])
    ref = np.array([[intersection(a, b) for b in items] for a in items])
    assert np.array_equal(ov.inter, ref)
    items[4].crop = ~items[4].crop
    items[4].crop[0, 0] = True
    ov.update([4])
    ref = np.array([[intersection(a, b) for b in items] for a in items])
    assert np.array_equal(ov.inter, ref)
    sub = ov.subset([4, 2, 0])
    assert np.array_equal(sub.inter, ref[np.ix_([4, 2, 0], [4, 2, 0])])


def test_vectorised_nms_and_parents_match_the_pairwise_versions():
    for seed in range(5):
        items = _items(seed)
        inter = pairwise_intersections(items, 40, 50)
        scores = np.array([m.score for m in items])
        assert nms_from_intersections(inter, scores, 0.9) == mask_nms_items(items, 0.9)
        parents, _ = build_hierarchy(items, 0.9, clip=False)
        assert parents_from_intersections(inter, 0.9) == parents


def test_clusters_from_labels_emits_each_distinct_member_set_once():
    labels = np.array(
        [
            [[0, 0, 2, 3], [4, 4, 2, 3]],
            [[0, 0, 2, 2], [4, 4, 2, 2]],
            [[0, 0, 2, 2], [0, 0, 2, 2]],
        ]
    )
    cl = clusters_from_labels(labels, region=0, min_size=2)
    got = sorted((c.first_level, c.last_level, tuple(int(v) for v in c.grid.flatten())) for c in cl)
    assert got == sorted(
        [
            (0, 1, (1, 1, 0, 0, 0, 0, 0, 0)),  # {0, 1} until it merges with {4, 5}
            (0, 0, (0, 0, 1, 0, 0, 0, 1, 0)),  # {2, 6}
            (0, 0, (0, 0, 0, 1, 0, 0, 0, 1)),  # {3, 7}
            (0, 1, (0, 0, 0, 0, 1, 1, 0, 0)),  # {4, 5}
            (1, 2, (0, 0, 1, 1, 0, 0, 1, 1)),  # {2, 3, 6, 7}: unchanged at level 2, emitted once
            (2, 2, (1, 1, 0, 0, 1, 1, 0, 0)),  # {0, 1, 4, 5}
        ]
    )
    assert all(c.persistence == c.last_level - c.first_level + 1 for c in cl)
    assert sorted(int(c.grid.sum()) for c in clusters_from_labels(labels, region=0, min_size=3)) == [4, 4]


def test_crop_resize_samples_the_box():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)[0]
    out = crop_resize(img, torch.tensor([[2, 4, 6, 8], [0, 0, 8, 8]]), 4)
    assert out.shape == (2, 3, 4, 4)
    # a box resized to its own size is the box itself
    assert torch.allclose(crop_resize(img, torch.tensor([[2, 4, 6, 8]]), 4)[0], img[:, 4:8, 2:6])
    assert torch.allclose(out[1], torch.nn.functional.interpolate(img[None], size=(4, 4), mode="bilinear", align_corners=False)[0])
