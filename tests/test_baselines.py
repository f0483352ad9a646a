"""Tests of ``unsam.evaluate.baselines``: valid per-image JSON, an exactly nested hierarchy, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage", reason="the baselines need scikit-image (the 'eval' extra)")

from unsam.evaluate import level_partitions
from unsam.evaluate.baselines import (
    FHConfig,
    SLICConfig,
    hierarchy_annotations,
    label_image,
    main,
    merge_by_colour,
    nest_partitions,
)
from unsam.io import rle_to_mask, validate_label_json


def blocks_image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Four flat colour blocks, one with an inner square, plus mild noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float64)
    img[: h // 2, : w // 2] = (200, 30, 30)
    img[: h // 2, w // 2 :] = (30, 200, 30)
    img[h // 2 :, : w // 2] = (30, 30, 200)
    img[h // 2 :, w // 2 :] = (220, 220, 40)
    img[h // 2 + 6 : h - 6, w // 2 + 8 : w - 8] = (120, 60, 160)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def check_hierarchy(anns: list[dict], h: int, w: int) -> None:
    """Valid per validate_label_json, exactly nested, levels = depth, distinct masks, partitions cover the image."""
    obj = {"image": {"image_id": 1, "file_name": "x.png", "width": w, "height": h}, "annotations": anns}
    assert validate_label_json(obj, check_masks=True) == []
    masks = {a["id"]: rle_to_mask(a["segmentation"]) for a in anns}
    by_id = {a["id"]: a for a in anns}
    seen = set()
    for a in anns:
        m = masks[a["id"]]
        assert m.any()
        key = m.tobytes()
        assert key not in seen, "a mask is emitted twice"
        seen.add(key)
        assert 0 < a["score"] <= 1
        if a["parent_id"] is None:
            assert a["level"] == 0
        else:
            p = by_id[a["parent_id"]]
            pm = masks[p["id"]]
            assert not (m & ~pm).any(), "child not inside its parent"
            assert pm.sum() > m.sum()
            assert a["level"] == p["level"] + 1
    roots = [masks[a["id"]] for a in anns if a["parent_id"] is None]
    assert (np.sum(roots, 0) == 1).all(), "roots should partition the image"
    # Every level of the hierarchy is a partition: no uncovered pixel, no overlap among siblings.
    for part in level_partitions(anns, h, w):
        assert part.min() == 1
    children: dict[int, list[int]] = {}
    for a in anns:
        if a["parent_id"] is not None:
            children.setdefault(a["parent_id"], []).append(a["id"])
    for pid, kids in children.items():
        total = np.sum([masks[k] for k in kids], 0)
        assert total.max() == 1 and (total.astype(bool) == masks[pid]).all(), "children should partition their parent"


@pytest.mark.parametrize("method", ["fh", "slic"])
def test_baseline_output_is_valid_and_nested(method):
    img = blocks_image()
    cfg = FHConfig(scales=(20, 100, 500, 5000), min_size=5) if method == "fh" else SLICConfig(n_segments=60)
    anns = label_image(img, method, cfg)
    assert len(anns) >= 4
    assert all(a["method"] == method and a["source"] == "conquer" for a in anns)
    check_hierarchy(anns, *img.shape[:2])


def test_nest_partitions_makes_a_coarsening():
    fine = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    coarse = np.array([[0, 0, 0, 1], [1, 1, 1, 1]])  # not a coarsening of fine
    a, b = nest_partitions([fine, coarse])
    assert (a == fine).all()
    # Region 1 of fine (two pixels) overlaps coarse 0 and 1 equally: lower label wins -> joins 0.
    assert b[0, 0] == b[0, 2] and b[1, 0] == b[1, 2] and b[0, 0] != b[1, 0]


def test_merge_by_colour_merges_closest_first():
    labels = np.array([[0, 1, 2, 3]])
    lab = np.array([[[0, 0, 0], [1, 0, 0], [10, 0, 0], [30, 0, 0]]], float)
    m_low, m_mid, m_high = merge_by_colour(labels, lab, [0.5, 5, 100])
    assert m_low.tolist() == [0, 1, 2, 3]
    assert m_mid.tolist() == [0, 0, 1, 2]
    assert m_high.tolist() == [0, 0, 0, 0]
    # Means are recomputed: {0,1} has mean 0.5, 9.5 from 2; then {0,1,2} mean 11/3, 26.33 from 3.
    assert merge_by_colour(labels, lab, [9.6])[0].tolist() == [0, 0, 0, 1]


def test_unchanged_region_is_one_mask_with_persistence_score():
    fine = np.array([[0, 1, 2, 2]])
    mid = np.array([[0, 0, 1, 1]])
    top = np.array([[0, 0, 0, 0]])
    anns = hierarchy_annotations([fine, mid, top], "test")
    # Regions: whole (level 2 only), {0,1} (mid), pixels 0 and 1 (fine), {2,3} (fine and mid).
    assert len(anns) == 5
    by_area = sorted(anns, key=lambda a: (-a["area"], a["id"]))
    assert by_area[0]["area"] == 4 and by_area[0]["score"] == pytest.approx(1 / 3)
    two = [a for a in anns if a["area"] == 2]
    assert sorted(a["score"] for a in two) == pytest.approx([1 / 3, 2 / 3])
    check_hierarchy(anns, 1, 4)


def test_cli_writes_label_files_and_resumes(tmp_path, capsys):
    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(blocks_image()).save(src / "a.png")
    Image.fromarray(blocks_image(seed=1)[:40]).save(src / "sub" / "b.png")
    out = tmp_path / "out"
    assert main(["--method", "slic", "--input", str(src), "--output", str(out), "--quiet"]) == 0
    for rel, (h, w) in (("a.json", (48, 64)), ("sub/b.json", (40, 64))):
        d = json.loads((out / rel).read_text())
        assert d["image"]["file_name"] == rel.replace(".json", ".png")
        assert (d["image"]["height"], d["image"]["width"]) == (h, w)
        check_hierarchy(d["annotations"], h, w)
    s = json.loads((out / "summary.json").read_text())
    assert s["images_labeled"] == 2 and s["method"] == "slic"
    assert main(["--method", "slic", "--input", str(src), "--output", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["images_done_before"] == 2
    assert main(["--method", "fh", "--input", str(tmp_path / "none"), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_bsds_image_slic(data_dir):
    from unsam.io import load_image

    f = min((data_dir / "bsds500" / "images" / "val").glob("*.jpg"))
    img = load_image(f)
    anns = label_image(img, "slic")
    assert 50 < len(anns) < 2000
    obj = {
        "image": {"image_id": 1, "file_name": f.name, "width": img.shape[1], "height": img.shape[0]},
        "annotations": anns,
    }
    assert validate_label_json(obj, check_masks=True) == []
