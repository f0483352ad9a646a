"""Training data: label sets -> augmented crops (unsam.train.data), on small synthetic label sets."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from unsam.io import annotation_record, image_record, masks_to_rles, write_json_atomic
from unsam.train.data import (
    DatasetError,
    GlobalBatchSampler,
    MaskDataset,
    collate,
    load_records,
    rle_areas,
)

H, W = 48, 64


def _rects():
    """Nested rectangles: outer (rows 8-40, cols 8-56) holds inner (rows 16-32, cols 12-28); a separate one."""
    outer = np.zeros((H, W), bool)
    outer[8:40, 8:56] = True
    inner = np.zeros((H, W), bool)
    inner[16:32, 12:28] = True
    other = np.zeros((H, W), bool)
    other[0:6, 58:64] = True
    return [outer, inner, other]


@pytest.fixture()
def label_set(tmp_path):
    """One image whose red channel is the union of the masks, and its label folder."""
    images = tmp_path / "images"
    images.mkdir()
    masks = _rects()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = np.any(masks, 0) * 255
    rgb[..., 1] = np.arange(W, dtype=np.uint8)[None, :] * 4  # horizontal ramp: shows flips
    Image.fromarray(rgb).save(images / "a.png")
    labels = tmp_path / "labels"
    anns = [
        annotation_record(i + 1, r, level=lv, parent_id=p, score=1.0, source="conquer")
        for i, (r, lv, p) in enumerate(zip(masks_to_rles(np.stack(masks)), [0, 1, 0], [None, 1, None]))
    ]
    write_json_atomic(labels / "a.json", {"image": image_record(1, "a.png", W, H), "annotations": anns})
    (labels / "config.yaml").write_text(yaml.safe_dump({"_run": {"input": str(images)}}))
    (labels / "summary.json").write_text("{}")  # not a label file: ignored
    return labels, masks


class TestLoadRecords:
    def test_label_folder_finds_images_through_config(self, label_set):
        labels, masks = label_set
        recs = load_records(labels)
        assert len(recs) == 1
        r = recs[0]
        assert r.path.name == "a.png" and r.path.is_file()
        assert r.areas.tolist() == [int(m.sum()) for m in masks]
        assert r.levels.tolist() == [0, 1, 0]
        assert r.boxes[1].tolist() == [12.0, 16.0, 16.0, 16.0]

    def test_min_area(self, label_set):
        assert len(load_records(label_set[0], min_area=100)[0].rles) == 2  # the 6 x 6 one goes

    def test_coco_json_with_polygons_and_crowd(self, label_set, tmp_path):
        coco = {
            "images": [{"id": 7, "file_name": "a.png", "width": W, "height": H}],
            "annotations": [
                {"id": 1, "image_id": 7, "segmentation": [[8, 8, 56, 8, 56, 40, 8, 40]], "iscrowd": 0, "category_id": 3},
                {"id": 2, "image_id": 7, "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 1, "category_id": 3},
            ],
            "categories": [{"id": 3, "name": "x"}],
        }
        p = tmp_path / "images" / "gt.json"
        p.write_text(json.dumps(coco))
        (r,) = load_records(p)  # image root: the JSON's folder
        assert r.image_id == 7 and len(r.rles) == 1
        assert abs(int(r.areas[0]) - 48 * 32) <= 100

    def test_missing_source(self, tmp_path):
        with pytest.raises(DatasetError, match="does not exist"):
            load_records(tmp_path / "nope")

    def test_empty_folder(self, tmp_path):
        (tmp_path / "config.yaml").write_text("a: 1")
        with pytest.raises(DatasetError, match="is empty"):
            load_records(tmp_path)

    def test_missing_images_named(self, label_set, tmp_path):
        with pytest.raises(DatasetError, match=r"1 of 1 image files not found.*a\.png.*image_root"):
            load_records(label_set[0], image_root=tmp_path / "elsewhere")

    def test_not_coco(self, tmp_path):
        p = tmp_path / "x.json"
        p.write_text("[1, 2]")
        with pytest.raises(DatasetError, match="not a COCO-style JSON"):
            load_records(p)

    def test_size_mismatch(self, label_set):
        labels, _ = label_set
        obj = json.loads((labels / "a.json").read_text())
        obj["image"]["height"] = 50
        (labels / "a.json").write_text(json.dumps(obj))
        with pytest.raises(DatasetError, match=r"segmentation size \[48, 64\] != image"):
            load_records(labels)


def test_rle_areas_past_255():
    rles = masks_to_rles(np.ones((300, 4, 4), bool))
    rles = [{"size": r["size"], "counts": r["counts"].encode()} for r in rles]
    assert rle_areas(rles).tolist() == [16] * 300


class TestDataset:
    def test_eval_mode_resizes_longer_side(self, label_set):
        (rec,) = load_records(label_set[0])
        ds = MaskDataset([rec], crop_size=32, train=False, min_mask_area=1)
        it = ds[0]
        assert it["image"].shape == (3, 32, 32) and it["valid"] == (24, 32)
        m = it["masks"]
        assert m.shape[1:] == (32, 32) and m.shape[0] == 3
        # The outer rectangle (rows 8-40, cols 8-56 of 48 x 64) at half size: rows 4-20, cols 4-28.
        outer = m[m.flatten(1).sum(1).argmax()]
        ys, xs = torch.nonzero(outer, as_tuple=True)
        assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (4, 19, 4, 27)
        assert not m[:, 24:].any()  # padding

    def test_augmented_masks_follow_the_image(self, label_set):
        (rec,) = load_records(label_set[0])
        ds = MaskDataset([rec], crop_size=32, train=True, scale_range=(0.8, 1.6), min_mask_area=1, seed=3)
        flips = set()
        for epoch in range(12):
            it = ds[(0, epoch)]
            red = it["image"][0] > 127
            union = it["masks"].any(0)
            h, w = it["valid"]
            # Nearest masks vs bilinear image: they may differ only along borders.
            assert (red[:h, :w] != union[:h, :w]).float().mean() < 0.1
            g = it["image"][1, 0, :w].float()
            flips.add(bool(g[0] > g[-1]))
        assert flips == {True, False}

    def test_deterministic_per_index_and_epoch(self, label_set):
        (rec,) = load_records(label_set[0])
        ds = MaskDataset([rec], crop_size=32, train=True, min_mask_area=1)
        a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(0, 2)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"]) and a["seed"] == b["seed"]
        assert a["seed"] != c["seed"]

    def test_max_masks(self, label_set):
        (rec,) = load_records(label_set[0])
        it = MaskDataset([rec], crop_size=64, train=False, max_masks=2, min_mask_area=1)[0]
        assert it["masks"].shape[0] == 2

    def test_clicks_and_their_targets(self, label_set):
        (rec,) = load_records(label_set[0])
        ds = MaskDataset([rec], crop_size=64, train=False, clicks=6, min_mask_area=1, max_click_targets=4)
        it = ds[0]
        assert it["points"].shape == (6, 2) and it["click_targets"].shape == (6, 4)
        masks = it["masks"]
        for (x, y), tg in zip(it["points"].tolist(), it["click_targets"]):
            tg = tg[tg >= 0]
            assert tg.numel() >= 1
            xi, yi = int(x), int(y)
            holders = {k for k in range(masks.shape[0]) if masks[k, yi, xi]}
            assert set(tg.tolist()) == holders  # every mask holding the click, no other
            areas = masks[tg].flatten(1).sum(1)
            assert (areas[1:] >= areas[:-1]).all()  # fine to coarse
            if len(holders) == 2:  # inside the inner rectangle: inner, then outer
                assert 16 <= yi < 32 and 12 <= xi < 28

    def test_bad_arguments(self, label_set):
        (rec,) = load_records(label_set[0])
        with pytest.raises(DatasetError, match="empty"):
            MaskDataset([])
        with pytest.raises(ValueError, match="scale_range"):
            MaskDataset([rec], scale_range=(2.0, 1.0))

    def test_collate(self, label_set):
        (rec,) = load_records(label_set[0])
        ds = MaskDataset([rec], crop_size=32, clicks=2, min_mask_area=1)
        b = collate([ds[(0, 0)], ds[(0, 1)]])
        assert b["image"].shape == (2, 3, 32, 32) and b["points"].shape == (2, 2, 2) and len(b["masks"]) == 2


class TestSampler:
    def test_global_batches_independent_of_world_size(self):
        one = iter(GlobalBatchSampler(10, 4, 1, 0, seed=5))
        r0 = iter(GlobalBatchSampler(10, 4, 2, 0, seed=5))
        r1 = iter(GlobalBatchSampler(10, 4, 2, 1, seed=5))
        for _ in range(7):  # crosses epoch boundaries (10 is not a multiple of 4)
            glob = [next(one) for _ in range(4)]
            assert [next(r0) for _ in range(2)] + [next(r1) for _ in range(2)] == glob

    def test_each_epoch_is_a_permutation(self):
        s = iter(GlobalBatchSampler(6, 3, seed=0))
        items = [next(s) for _ in range(12)]
        for e in (0, 1):
            assert sorted(i for i, ep in items if ep == e) == list(range(6))

    def test_start_step_resumes_the_stream(self):
        full = iter(GlobalBatchSampler(7, 2, seed=1))
        seq = [next(full) for _ in range(20)]
        late = iter(GlobalBatchSampler(7, 2, seed=1, start_step=4))
        assert [next(late) for _ in range(12)] == seq[8:]

    def test_bad_batch(self):
        with pytest.raises(ValueError, match="multiple of the world size"):
            GlobalBatchSampler(10, 3, world_size=2)
        with pytest.raises(DatasetError, match="empty"):
            GlobalBatchSampler(0, 2)
