"""The loader's masks from the RLE crop ops (unsam.train.targets via MaskDataset) give the samples of
the loader before them (tests/reference/train_data.py, the oracle): the same image, masks, clicks
and targets for the same seed, sample by sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import distance_transform_edt

from tests.reference.train_data import ReferenceMaskDataset
from unsam.io import annotation_record, image_record, masks_to_rles, write_json_atomic
from unsam.train.data import MaskDataset, load_records
from unsam.train.targets import draw_click

ROOT = Path(__file__).resolve().parents[1]


def _crop_mask(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    if kind == "full":
        m[:] = True
    elif kind == "pixel":
        m[rng.integers(h), rng.integers(w)] = True
    elif kind == "corner":  # against two borders of the crop
        m[: rng.integers(1, h + 1), w - rng.integers(1, w + 1) :] = True
    else:  # a ragged blob, maybe cut by the borders, with holes and a second part
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, r = rng.uniform(-2, h + 2), rng.uniform(-2, w + 2), rng.uniform(1, max(h, w))
        m = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.4, 2.5))) ** 2 < 1
        m &= rng.random((h, w)) > 0.15
        m[rng.integers(h), rng.integers(w)] = True
    return m


@settings(max_examples=120, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), kind=st.sampled_from(["full", "pixel", "corner", "blob"]), seed=st.integers(0, 2**31))
def test_a_click_drawn_in_the_box_is_the_click_drawn_in_the_whole_crop(h, w, kind, seed):
    """draw_click's claims: the distance transform of the box plus one pixel of background is the
    whole padded crop's inside the box, and the draw in the box picks the old draw's pixel."""
    rng = np.random.default_rng(seed)
    m = _crop_mask(rng, kind, h, w)
    ys, xs = np.nonzero(m)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    sub = m[box[1] : box[3], box[0] : box[2]]
    # The old loader: the distance transform of the whole crop padded by one pixel.
    dt = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    assert not dt[~m].any()
    assert np.array_equal(distance_transform_edt(np.pad(sub, 1))[1:-1, 1:-1], dt[box[1] : box[3], box[0] : box[2]])
    for draw_seed in range(3):
        old_rng, new_rng = np.random.default_rng([seed, draw_seed]), np.random.default_rng([seed, draw_seed])
        wts = (dt * dt).ravel()
        old = divmod(int(old_rng.choice(wts.size, p=wts / wts.sum())), w)
        assert draw_click(sub, box, (h, w), new_rng) == old
        assert m[old]
        assert old_rng.random() == new_rng.random()  # the same numbers drawn: the rest of a sample follows


def _same(a: dict, b: dict) -> None:
    assert a["seed"] == b["seed"] and a["index"] == b["index"] and a["valid"] == b["valid"]
    assert torch.equal(a["image"], b["image"])
    assert a["masks"].dtype == b["masks"].dtype == torch.bool
    assert a["masks"].shape == b["masks"].shape and torch.equal(a["masks"], b["masks"])
    assert a.keys() == b.keys()
    if "points" in a:
        assert torch.equal(a["points"], b["points"]) and torch.equal(a["click_targets"], b["click_targets"])


@pytest.fixture(scope="module")
def random_label_set(tmp_path_factory):
    """An image with 60 masks: nested blobs, rectangles against the borders, single pixels, the whole image."""
    rng = np.random.default_rng(0)
    h, w = 57, 83
    root = tmp_path_factory.mktemp("targets")
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "a.png")
    masks = [_crop_mask(rng, ["full", "pixel", "corner", "blob", "blob", "blob"][i % 6], h, w) for i in range(60)]
    masks = [m for m in masks if m.any()]
    anns = [annotation_record(i + 1, r, level=0, parent_id=None, score=1.0, source="conquer") for i, r in enumerate(masks_to_rles(np.stack(masks)))]
    write_json_atomic(root / "labels" / "a.json", {"image": image_record(1, "a.png", w, h), "annotations": anns})
    return load_records(root / "labels", image_root=root)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_size": 64, "max_masks": 20, "min_mask_area": 3},
        {"crop_size": 48, "max_masks": 200, "min_mask_area": 1, "scale_range": (0.3, 3.0)},
        {"crop_size": 64, "clicks": 6, "max_click_targets": 4, "min_mask_area": 2},
        {"crop_size": 40, "clicks": 3, "max_click_targets": 12, "min_mask_area": 1, "scale_range": (0.5, 4.0)},
        {"crop_size": 64, "clicks": 30, "max_click_targets": 2, "min_mask_area": 150},  # more clicks than masks
        {"crop_size": 64, "train": False, "max_masks": 7},
        {"crop_size": 56, "train": False, "clicks": 5},
        {"crop_size": 64, "clicks": 4, "hflip": False, "min_mask_area": 10_000},  # no mask large enough
    ],
)
def test_same_samples_as_the_old_loader(random_label_set, kwargs):
    new, old = MaskDataset(random_label_set, seed=5, **kwargs), ReferenceMaskDataset(random_label_set, seed=5, **kwargs)
    seen = 0
    for epoch in range(10 if kwargs.get("train", True) else 1):
        a, b = new[(0, epoch)], old[(0, epoch)]
        _same(a, b)
        seen += a["masks"].shape[0]
        if kwargs.get("clicks", 0) == 30:
            assert (a["click_targets"][:, 0] >= 0).all()  # every click has its mask
    assert seen > 0 or kwargs["min_mask_area"] == 10_000


def test_same_samples_on_pseudo_labels(tmp_path):
    """The full preset's labels of a sample image (hundreds of nested masks), crops scaled up and
    down, flipped or not, whole-image and clicks."""
    from unsam.io import load_image
    from unsam.label import Labeler, label_config

    path = min((ROOT / "examples" / "images").glob("*.jpg"))
    img = load_image(path)
    anns = Labeler(label_config({"backbone": "classic"}, preset="full")).label_batch([img])[0]
    write_json_atomic(tmp_path / "a.json", {"image": image_record(1, path.name, img.shape[1], img.shape[0]), "annotations": anns})
    recs = load_records(tmp_path, image_root=path.parent)
    assert len(recs[0].rles) > 100
    for kwargs in ({"max_masks": 200}, {"clicks": 8}):
        new, old = MaskDataset(recs, crop_size=256, seed=1, **kwargs), ReferenceMaskDataset(recs, crop_size=256, seed=1, **kwargs)
        for epoch in range(2):
            a, b = new[(0, epoch)], old[(0, epoch)]
            _same(a, b)
            assert a["masks"].shape[0] > 0
