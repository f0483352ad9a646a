"""Refinement moves blocky mask borders onto the image's edges."""

import numpy as np
import pytest

from unsam.label.items import MaskItem
from unsam.label.refine import guided_filter, refine_masks
from unsam.label.superpixels import slic, snap_masks


def _disc_scene(h=96, w=128, r=30):
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 48) ** 2 + (xx - 60) ** 2 < r**2
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (40, 120, 40)
    img[disc] = (220, 60, 60)
    rng = np.random.default_rng(0)
    img = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    return img, disc


def _blocky(mask, cell=8):
    h, w = mask.shape
    g = mask.reshape(h // cell, cell, w // cell, cell).mean((1, 3)) > 0.5
    return np.repeat(np.repeat(g, cell, 0), cell, 1)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _item(mask):
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return MaskItem(box, mask[box[1] : box[3], box[0] : box[2]].copy(), 1.0, "conquer")


def _full(item, shape):
    out = np.zeros(shape, bool)
    x0, y0, x1, y1 = item.box
    out[y0:y1, x0:x1] = item.crop
    return out


@pytest.mark.parametrize("method", ["edge", "snap"])
def test_refinement_snaps_blocky_mask_to_the_edge(method):
    img, disc = _disc_scene()
    blocky = _blocky(disc)
    before = _iou(blocky, disc)
    items = [_item(blocky)]
    if method == "edge":
        out = refine_masks(img, items, radius=4)
    else:
        out = snap_masks(img, items, pixels_per_segment=36)
    after = _iou(_full(out[0], disc.shape), disc)
    assert after > before + 0.03, (before, after)
    assert after > 0.93


def test_refinement_keeps_a_mask_that_would_move_too_far():
    img, disc = _disc_scene()
    # A mask on a flat background patch: nothing to snap to, it must stay (IoU rule).
    m = np.zeros(disc.shape, bool)
    m[70:90, 100:120] = True
    item = _item(m)
    out = refine_masks(img, [item], radius=4)
    assert _iou(_full(out[0], m.shape), m) >= 0.5


def test_guided_filter_preserves_constants_and_slic_covers_the_image():
    g = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    assert np.allclose(guided_filter(g, np.ones_like(g), 3, 1e-3), 1.0, atol=1e-4)
    img, _ = _disc_scene()
    lab = slic(img, pixels_per_segment=64)
    assert lab.shape == img.shape[:2] and lab.min() == 0
    assert len(np.unique(lab)) == lab.max() + 1  # compact ids
    assert 100 <= lab.max() + 1 <= 250  # about H * W / 64 segments
