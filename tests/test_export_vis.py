"""COCO export of a labeled folder (unsam.io.export_coco, python -m unsam.export) and overlays (unsam.label.vis)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsam import io
from unsam.label import vis
from unsam.label.export import main as export_main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "examples" / "images").glob("*.jpg"))


def _hier_label(image_id: int, h: int, w: int, file_name: str, seed: int) -> dict:
    """A small consistent hierarchy: 2 divide roots, each split into conquer children (and one grandchild)."""
    rng = np.random.default_rng(seed)
    anns = []
    nid = 10 * image_id  # per-image ids that collide across images when image ids repeat

    def add(mask, level, parent, source):
        nonlocal nid
        nid += 1
        anns.append(io.annotation_record(nid, mask, level=level, parent_id=parent, score=float(rng.random()),
                                         source=source, predicted_iou=0.5))
        return nid

    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    right = ~left
    for root in (left, right):
        rid = add(root, 0, None, "divide")
        ys = np.nonzero(root.any(1))[0]
        top, bottom = root.copy(), root.copy()
        top[ys.mean().astype(int) :] = False
        bottom &= ~top
        cid = add(top, 1, rid, "conquer")
        add(bottom, 1, rid, "conquer")
        corner = top.copy()
        corner[h // 4 :] = False
        add(corner, 2, cid, "conquer")
    return {"image": io.image_record(image_id, file_name, w, h), "annotations": anns}


@pytest.fixture
def label_dir(tmp_path: Path) -> Path:
    d = tmp_path / "labels"
    # image_id 7 appears twice: the export must renumber images.
    io.write_json_atomic(d / "a.json", _hier_label(7, 12, 16, "a.jpg", 0))
    io.write_json_atomic(d / "sub" / "b.json", _hier_label(7, 20, 10, "sub/b.jpg", 1))
    io.write_json_atomic(d / "c.json", _hier_label(3, 9, 9, "c.jpg", 2))
    (d / "broken.json").write_text('{"image": {"image_id": 1, "file_na')  # corrupt
    io.write_json_atomic(d / "config.json", {"backbone": "classic"})  # not a label file
    (d / ".c.json.1234.tmp").write_text("{")  # a writer's leftover temp: not even looked at
    return d


class TestExportCoco:
    def test_export_loads_in_pycocotools(self, label_dir, tmp_path, caplog):
        from pycocotools.coco import COCO

        out = tmp_path / "coco.json"
        coco = io.export_coco(label_dir, out)
        info = coco["info"]
        assert info["skipped_files"] == 1 and info["ignored_files"] == 1 and info["label_files"] == 3
        assert "skipped 1 file(s)" in caplog.text and "broken.json" in caplog.text
        assert json.loads(out.read_text()) == coco

        api = COCO(str(out))
        assert len(api.imgs) == 3 and len(api.anns) == 3 * 8
        # Sorted relative-path order: a.json, c.json, sub/b.json; ids renumbered 1..3.
        assert [api.imgs[i]["file_name"] for i in (1, 2, 3)] == ["a.jpg", "c.jpg", "sub/b.jpg"]
        ids = [a["id"] for a in coco["annotations"]]
        assert sorted(ids) == list(range(1, len(ids) + 1))
        assert api.getCatIds() == [1] and api.cats[1]["name"] == "fg"
        for ann in api.anns.values():
            img = api.imgs[ann["image_id"]]
            m = api.annToMask(ann)
            assert m.shape == (img["height"], img["width"])
            assert int(m.sum()) == ann["area"] > 0
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            assert ann["source"] in ("divide", "conquer") and ann["predicted_iou"] == 0.5
            if ann["parent_id"] is None:
                assert ann["level"] == 0
            else:
                parent = api.anns[ann["parent_id"]]  # remapped to the new ids, same image
                assert parent["image_id"] == ann["image_id"] and parent["level"] == ann["level"] - 1
                assert (m <= api.annToMask(parent)).all()  # nested

    def test_unique_image_ids_are_kept(self, tmp_path):
        d = tmp_path / "labels"
        io.write_json_atomic(d / "x.json", _hier_label(42, 8, 8, "x.jpg", 0))
        io.write_json_atomic(d / "y.json", _hier_label(5, 8, 8, "y.jpg", 1))
        coco = io.export_coco(d, tmp_path / "out.json")
        assert [im["id"] for im in coco["images"]] == [42, 5]
        assert {a["image_id"] for a in coco["annotations"]} == {42, 5}
        assert coco["info"]["skipped_files"] == 0 and coco["info"]["ignored_files"] == 0

    def test_output_inside_label_dir_is_not_reingested(self, label_dir):
        out = label_dir / "coco.json"
        first = io.export_coco(label_dir, out)
        second = io.export_coco(label_dir, out)
        assert second == first
        other = io.export_coco(label_dir, label_dir / "again.json")  # an older export is no label file
        assert other["images"] == first["images"] and other["info"]["ignored_files"] == 2

    def test_image_root_relativises_absolute_names(self, tmp_path):
        d = tmp_path / "labels"
        root = tmp_path / "imgs"
        io.write_json_atomic(d / "x.json", _hier_label(1, 8, 8, str(root / "deep" / "x.jpg"), 0))
        coco = io.export_coco(d, tmp_path / "out.json", image_root=root)
        assert coco["images"][0]["file_name"] == "deep/x.jpg"

    def test_inconsistent_label_file_is_skipped(self, tmp_path):
        lab = _hier_label(1, 8, 8, "x.jpg", 0)
        lab["annotations"] = lab["annotations"][1:]  # drop a root: its children's parent is gone
        d = tmp_path / "labels"
        d.mkdir()
        # Written with plain json, as a buggy or foreign writer might.
        (d / "x.json").write_text(json.dumps(lab))
        io.write_json_atomic(d / "y.json", _hier_label(2, 8, 8, "y.jpg", 1))
        assert io.read_label_json(d / "x.json") is None  # resume relabels it...
        coco = io.export_coco(d, tmp_path / "o.json")
        assert coco["info"]["skipped_files"] == 1  # ...and export leaves it out
        assert [im["file_name"] for im in coco["images"]] == ["y.jpg"]

    def test_missing_folder(self, tmp_path):
        with pytest.raises(io.InputError, match="label folder"):
            io.export_coco(tmp_path / "nope", tmp_path / "o.json")


class TestExportCli:
    def test_main(self, label_dir, tmp_path, capsys):
        out = tmp_path / "coco.json"
        assert export_main(["--labels", str(label_dir), "--output", str(out), "--no-progress"]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("exported 3 images, 24 annotations") and "(1 invalid files skipped, 1 other JSON ignored" in line
        assert len(json.loads(out.read_text())["images"]) == 3

    def test_nothing_to_export_is_an_error(self, tmp_path, capsys):
        (tmp_path / "empty").mkdir()
        assert export_main(["--labels", str(tmp_path / "empty"), "--output", str(tmp_path / "o.json")]) == 1
        assert "no valid label JSON" in capsys.readouterr().err
        assert export_main(["--labels", str(tmp_path / "nope"), "--output", str(tmp_path / "o.json")]) == 2


# --------------------------------------------------------------------------- overlays


def _sample_with_labels():
    img = io.load_image(SAMPLES[0])
    h, w = img.shape[:2]
    return img, _hier_label(1, h, w, SAMPLES[0].name, 0)["annotations"]


class TestOverlay:
    def test_panels_per_level(self, tmp_path):
        img, anns = _sample_with_labels()
        h, w = img.shape[:2]
        p = vis.save_overlay(img, anns, tmp_path / "ov.png")
        out = np.asarray(Image.open(p))
        assert out.shape == (h, 3 * w + 2 * vis.PANEL_GAP, 3)  # levels 0, 1, 2
        assert (out[:, w : w + vis.PANEL_GAP] == 255).all()
        assert [q.name for q in tmp_path.iterdir()] == ["ov.png"]  # atomic: no temp left

    def test_fill_colour_and_untouched_background(self):
        img, anns = _sample_with_labels()
        h, w = img.shape[:2]
        corner = [a for a in anns if a["level"] == 2][0]  # the top-left corner mask only
        out = vis.render_overlay(img, [corner], titles=False)
        assert out.shape == img.shape
        m = io.rle_to_mask(corner["segmentation"])
        inner = m.copy()
        inner[[0, -1], :] = False
        ys, xs = np.nonzero(m)
        inner[:, [xs.min(), xs.max()]] = False
        inner[[ys.min(), ys.max()], :] = False
        want = np.rint(0.5 * img.astype(np.float32) + 0.5 * np.array(vis.mask_color(corner["id"]), np.float32))
        np.testing.assert_array_equal(out[inner], want[inner].astype(np.uint8))
        np.testing.assert_array_equal(out[~m], img[~m])  # outside the mask: the image itself
        # Outline pixels carry the opaque mask colour.
        assert (out[ys.max(), xs.min() + 1] == vis.mask_color(corner["id"])).all()

    def test_deterministic_and_jpeg_by_suffix(self, tmp_path):
        img, anns = _sample_with_labels()
        a = vis.save_overlay(img, anns, tmp_path / "a.png").read_bytes()
        b = vis.save_overlay(img, anns, tmp_path / "b.png").read_bytes()
        assert a == b
        j = vis.save_overlay(img, anns, tmp_path / "c.jpg")
        assert Image.open(j).format == "JPEG"
        with pytest.raises(ValueError, match="suffix"):
            vis.save_overlay(img, anns, tmp_path / "c.gif")

    def test_max_panels_spreads_levels(self):
        img = np.zeros((16, 16, 3), np.uint8)
        anns = [io.annotation_record(i + 1, np.eye(16, dtype=bool), level=i, parent_id=None, score=1.0,
                                     source="conquer") for i in range(6)]
        out = vis.render_overlay(img, anns, max_panels=4, titles=False)
        assert out.shape == (16, 4 * 16 + 3 * vis.PANEL_GAP, 3)
        assert vis._pick_levels(list(range(6)), 4) == [0, 2, 3, 5]  # coarsest and finest kept
        assert vis._pick_levels([3, 1], 4) == [1, 3]

    def test_no_annotations_and_downscale(self):
        img = np.full((300, 200, 3), 90, np.uint8)
        assert vis.render_overlay(img, [], max_side=None).shape == (300, 200, 3)
        m = np.zeros((300, 200), bool)
        m[100:200, 50:150] = True
        anns = [io.annotation_record(1, m, level=0, parent_id=None, score=1.0, source="divide")]
        out = vis.render_overlay(img, anns, max_side=150, titles=False)
        assert out.shape == (150, 100, 3)
        assert (out[75, 50] != 90).any() and (out[10, 10] == 90).all()

    def test_size_mismatch_is_an_error(self):
        img, anns = _sample_with_labels()
        with pytest.raises(ValueError, match="mask size"):
            vis.render_overlay(img[:-1], anns)
        assert len({vis.mask_color(i) for i in range(1, 50)}) == 49


def test_partition_panels_show_the_whole_partition_of_their_level():
    h, w = 8, 8
    whole = np.ones((h, w), bool)
    left = np.zeros((h, w), bool)
    left[:, :4] = True
    top_left = np.zeros((h, w), bool)
    top_left[:4, :4] = True
    anns = [
        io.annotation_record(1, whole, level=0, parent_id=None, score=1.0, source="partition"),
        io.annotation_record(2, left, level=1, parent_id=1, score=1.0, source="partition"),
        io.annotation_record(3, ~left, level=1, parent_id=1, score=1.0, source="partition"),
        io.annotation_record(4, top_left, level=2, parent_id=2, score=1.0, source="partition"),
        io.annotation_record(5, left & ~top_left, level=2, parent_id=2, score=1.0, source="partition"),
    ]
    img = np.full((h, w, 3), 100, np.uint8)
    out = vis.render_overlay(img, anns, titles=False, alpha=1.0)
    panel2 = out[:, 2 * (w + vis.PANEL_GAP) : 2 * (w + vis.PANEL_GAP) + w]
    # Level 2 is the partition {top-left, bottom-left, right}: the right half, which
    # stays from level 1, is drawn too, in its own colour.
    right_px = panel2[2, 6]
    assert not np.array_equal(right_px, img[0, 0])
    assert np.array_equal(right_px, np.array(vis.mask_color(3), np.uint8))
    # Level 1's panel does not show the level-0 root over its regions.
    panel1 = out[:, (w + vis.PANEL_GAP) : (w + vis.PANEL_GAP) + w]
    assert np.array_equal(panel1[2, 6], np.array(vis.mask_color(3), np.uint8))
