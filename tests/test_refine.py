"""Refinement moves blocky mask borders onto the image's edges (edge, snap and the dense CRF)."""

import numpy as np
import pytest

from unsam.label.crf import CRFConfig, crf_masks, crf_refine
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


@pytest.mark.parametrize("method", ["edge", "snap", "crf"])
def test_refinement_snaps_blocky_mask_to_the_edge(method):
    img, disc = _disc_scene()
    blocky = _blocky(disc)
    before = _iou(blocky, disc)
    items = [_item(blocky)]
    if method == "edge":
        out = refine_masks(img, items, radius=4)
    elif method == "crf":
        out = crf_masks(img, items, img.shape[:2])
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


def test_crf_step_fills_holes_and_drops_what_moves_too_far():
    """MaskCut's step 5: the refined mask's holes are filled; a mask whose refined version has
    IoU < 0.5 with it is dropped (not kept as it was); an empty mask is not run and stays empty."""
    img, disc = _disc_scene()
    holed = disc.copy()
    holed[44:52, 56:64] = False  # a hole inside the disc
    box = np.zeros_like(disc)
    box[20:76, 30:90] = True  # the disc's bounding box: snaps to the disc
    stray = np.zeros_like(disc)
    stray[40:56, 52:68] = True  # a small square inside the disc: the CRF erases it
    out = crf_refine(img, np.stack([holed, box, stray, np.zeros_like(disc)]))
    assert out[0] is not None and _iou(out[0], disc) > 0.97 and out[0][44:52, 56:64].all()
    assert out[1] is not None and _iou(out[1], disc) > 0.97
    assert out[2] is None
    assert out[3] is not None and not out[3].any()
    kept = crf_refine(img, stray[None], CRFConfig(min_iou=0.0))  # nothing dropped by the IoU rule
    assert kept[0] is not None and not kept[0].any()
    # Through the stage's entry: the dropped and the emptied masks are gone, the kept one has
    # the refined mask's box.
    items = [_item(box), _item(stray)]
    got = crf_masks(img, items, img.shape[:2], CRFConfig(min_iou=0.0))
    assert len(got) == 1 and _iou(_full(got[0], disc.shape), disc) > 0.97
    ys, xs = np.nonzero(_full(got[0], disc.shape))
    assert got[0].box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_crf_masks_in_chunks_equal_one_call(monkeypatch):
    """Many masks go through the CRF in chunks (bounded memory): the same masks come out as
    from one call, in the same order."""
    import unsam.label.crf as crf_mod

    img, disc = _disc_scene()
    rng = np.random.default_rng(0)
    fulls = []
    for _ in range(21):
        m = np.zeros_like(disc)
        y, x = int(rng.integers(0, 70)), int(rng.integers(0, 100))
        m[y : y + int(rng.integers(5, 40)), x : x + int(rng.integers(5, 40))] = True
        fulls.append(m | (disc if rng.random() < 0.3 else False))
    one = crf_masks(img, [_item(m) for m in fulls], img.shape[:2])
    monkeypatch.setattr(crf_mod, "CHUNK_PIXELS", 8 * disc.size)  # chunks of 8 masks: 3 calls
    chunked = crf_masks(img, [_item(m) for m in fulls], img.shape[:2])
    assert len(one) == len(chunked) > 0
    for a, b in zip(one, chunked):
        assert a.box == b.box and np.array_equal(a.crop, b.crop)


def test_crf_refinement_at_a_smaller_working_resolution():
    img, disc = _disc_scene()
    small = np.zeros((48, 64), bool)
    small[14:34, 17:43] = True  # the disc's box, roughly, at half size
    got = crf_masks(img, [_item(small)], (48, 64))
    half_disc = disc[::2, ::2]
    assert len(got) == 1 and _iou(_full(got[0], (48, 64)), half_disc) > 0.9


def test_crf_settings_come_from_the_config_and_are_checked():
    from unsam.label import Labeler, label_config

    cfg = Labeler(label_config({"backbone": "classic", "refine": "crf", "crf": {"iterations": 5, "min_iou": 0.3}}, preset="unsam")).cfg
    assert cfg.refine == "crf" and cfg.crf.iterations == 5 and cfg.crf.min_iou == 0.3 and cfg.crf.bilateral_srgb == 5.0
    assert cfg.crf.params().iterations == 5
    with pytest.raises(ValueError, match="crf.bilateral_sxy"):
        Labeler(label_config({"backbone": "classic", "crf": {"bilateral_sxy": 0}}, preset="unsam"))
    with pytest.raises(ValueError, match="unknown key 'crf.sxy'"):
        label_config({"crf": {"sxy": 3}}, preset="unsam")
    with pytest.raises(ValueError, match="divide.crf"):
        Labeler(label_config({"backbone": "classic", "divide": {"crf": True}}, preset="unsam"))


def test_refine_crf_through_the_pipeline():
    """``--refine crf`` on a preset: the records stay valid and the refined masks differ from
    the unrefined ones (their borders follow the image)."""
    from pathlib import Path

    from pycocotools import mask as mask_utils

    from unsam.io import load_image
    from unsam.label import Labeler, label_config

    image = load_image(sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.jpg"))[0])
    quick = {"backbone": "classic", "divide_size": 240, "conquer": {"size": 128}}
    plain = Labeler(label_config(quick, preset="unsam")).label_batch([image])[0]
    refined = Labeler(label_config({**quick, "refine": "crf"}, preset="unsam")).label_batch([image])[0]
    assert refined and len(refined) <= 1.5 * len(plain)
    areas = set()
    for a in refined:
        rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
        assert a["area"] == int(mask_utils.area(rle)) >= 1 and a["bbox"] == mask_utils.toBbox(rle).tolist()
        areas.add(a["area"])
    assert areas != {a["area"] for a in plain}
