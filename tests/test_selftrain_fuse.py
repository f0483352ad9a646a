"""Self-training merge, UnSAM+ fusion and point-prompt evaluation on hand-made masks with known answers."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from unsam.evaluate.points import centre_point, evaluate_points
from unsam.io import (
    annotation_record,
    image_record,
    masks_to_rles,
    read_label_json,
    rle_to_mask,
    write_json_atomic,
)
from unsam.train.fuse import fuse_image
from unsam.train.fuse import main as fuse_main
from unsam.train.selftrain import SelfTrainConfig, merge_round
from unsam.train.selftrain import main as selftrain_main

H, W = 40, 60


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def anns_of(masks, scores, source="conquer"):
    return [
        annotation_record(i + 1, r, level=0, parent_id=None, score=s, source=source)
        for i, (r, s) in enumerate(zip(masks_to_rles(np.stack(masks)), scores))
    ]


# -------------------------------------------------------------------------- self-training


def test_merge_round_replaces_adds_and_nests():
    a = box(0, 40, 0, 30)  # big region
    b = box(5, 15, 5, 15)  # small, inside a
    c = box(0, 10, 40, 60)  # elsewhere
    labels = anns_of([a, b, c], [0.9, 0.8, 0.7])
    p = box(5, 15, 5, 14)  # IoU 0.9 with b -> replaces b
    q = box(20, 30, 5, 25)  # new, inside a -> added, child of a
    r = box(30, 40, 40, 60)  # score 0.5 -> ignored
    d = box(0, 10, 40, 59)  # IoU 0.95 with c, but duplicates p? no: duplicates c (old) -> replaces c
    preds = anns_of([p, q, r, d], [0.95, 0.8, 0.5, 0.75])
    out, counts = merge_round(labels, preds, H, W)
    assert counts == {"kept": 1, "replaced": 2, "added": 3}
    masks = {tuple(np.argwhere(rle_to_mask(o["segmentation"]))[[0, -1]].ravel()): o for o in out}
    assert len(out) == 4
    got = sorted((int(o["area"]), o.get("origin"), o["level"]) for o in out)
    assert got == sorted([(int(a.sum()), None, 0), (int(p.sum()), "model", 1), (int(q.sum()), "model", 1), (int(d.sum()), "model", 0)])
    big = next(o for o in out if o["area"] == a.sum())
    assert all(o["parent_id"] == big["id"] for o in out if o["area"] in (p.sum(), q.sum()))
    assert masks  # decoded fine
    # The old label keeps its source and score.
    assert big["source"] == "conquer" and big["score"] == pytest.approx(0.9)


def test_merge_round_nms_and_thresholds():
    a = box(0, 20, 0, 20)
    labels = anns_of([a], [0.5])
    p1, p2 = box(0, 20, 0, 20), box(0, 20, 0, 19)  # duplicates (IoU 0.95)
    out, counts = merge_round(labels, anns_of([p1, p2], [0.9, 0.8]), H, W)
    assert counts == {"kept": 0, "replaced": 1, "added": 1} and len(out) == 1
    out, counts = merge_round(labels, anns_of([p1, p2], [0.9, 0.8]), H, W, SelfTrainConfig(nms=1.0))
    assert counts["added"] == 2
    out, counts = merge_round(labels, anns_of([p1], [0.7]), H, W)  # not > 0.7
    assert counts == {"kept": 1, "replaced": 0, "added": 0}


def test_selftrain_cli_with_prediction_folder(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img_dir / "x.png")
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    write_json_atomic(labels / "x.json", {"image": image_record(1, "x.png", W, H), "annotations": anns_of([box(0, 10, 0, 10)], [0.6])})
    (labels / "config.yaml").write_text(yaml.safe_dump({"_run": {"input": str(img_dir)}}))
    write_json_atomic(preds / "x.json", {"image": image_record(1, "x.png", W, H), "annotations": anns_of([box(0, 10, 0, 11), box(20, 30, 20, 30)], [0.9, 0.8])})
    out = tmp_path / "round2"
    assert selftrain_main(["--labels", str(labels), "--predictions", str(preds), "--output", str(out)]) == 0
    obj = read_label_json(out / "x.json")
    assert obj is not None and len(obj["annotations"]) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["_run"]["input"] == str(img_dir.resolve())
    assert json.loads((out / "summary.json").read_text())["replaced"] == 1
    assert selftrain_main(["--labels", str(tmp_path / "none"), "--predictions", str(preds), "--output", str(out)]) == 2
    assert selftrain_main(["--labels", str(labels), "--predictions", str(preds), "--output", str(out), "--score", "2"]) == 2


# ---------------------------------------------------------------------------------- fusion


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_fuse_image_iou_rule():
    human = [box(0, 20, 0, 20)]
    inside = box(0, 20, 0, 10)  # IoU 0.5 -> rejected
    apart = box(25, 40, 30, 60)  # IoU 0 -> added
    touch = box(19, 29, 0, 40)  # overlaps 20 px of a 400 + 400 - 20 union... computed below
    small = box(0, 20, 19, 40)  # 20 px overlap
    ious = [_iou(m, human[0]) for m in (inside, apart, touch, small)]
    expect = [i for i, v in enumerate(ious) if v <= 0.02]
    rles = masks_to_rles(np.stack([inside, apart, touch, small]))
    got = fuse_image(masks_to_rles(np.stack(human)), rles, H, W, 0.02)
    assert got == expect and 0 not in got and 1 in got
    assert fuse_image([], rles, H, W) == [0, 1, 2, 3]
    # Polygons for the human side work too.
    poly = [[[0, 0, 20, 0, 20, 20, 0, 20]]]
    assert fuse_image(poly, rles, H, W) == expect


def test_fuse_cli_coco_and_sa1b(tmp_path):
    human = {
        "images": [{"id": 3, "file_name": "sub/x.jpg", "width": W, "height": H}],
        "annotations": [{"id": 10, "image_id": 3, "category_id": 5, "iscrowd": 0, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]], "area": 400, "bbox": [0, 0, 20, 20]}],
        "categories": [{"id": 5, "name": "thing"}],
    }
    hp = tmp_path / "human.json"
    hp.write_text(json.dumps(human))
    pseudo = tmp_path / "pseudo"
    write_json_atomic(pseudo / "sub" / "x.json", {"image": image_record(1, "sub/x.jpg", W, H), "annotations": anns_of([box(0, 20, 0, 20), box(25, 40, 30, 60)], [0.9, 0.8])})
    out = tmp_path / "fused.json"
    assert fuse_main(["--human", str(hp), "--pseudo", str(pseudo), "--output", str(out)]) == 0
    fused = json.loads(out.read_text())
    assert [a["id"] for a in fused["annotations"]] == [10, 11]
    added = fused["annotations"][1]
    assert added["origin"] == "pseudo" and added["category_id"] == 6 and added["image_id"] == 3
    assert {"id": 6, "name": "unsam_pseudo", "supercategory": "unsam_pseudo"} in fused["categories"]
    assert fused["info"]["unsam_fuse"]["added"] == 1
    # The output loads with pycocotools.
    from pycocotools.coco import COCO

    COCO(str(out))
    # SA-1B per-image human file -> folder output.
    sa = tmp_path / "sa1b"
    write_json_atomic(sa / "x.json", {"image": {"image_id": 1, "file_name": "x.jpg", "width": W, "height": H},
                                       "annotations": [{"id": 1, "segmentation": masks_to_rles(box(0, 20, 0, 20)[None])[0]}]})  # fmt: skip
    out_dir = tmp_path / "fused_sa1b"
    assert fuse_main(["--human", str(sa), "--pseudo", str(pseudo), "--output", str(out_dir)]) == 0
    obj = json.loads((out_dir / "x.json").read_text())
    assert len(obj["annotations"]) == 2 and obj["annotations"][1]["origin"] == "pseudo"
    assert fuse_main(["--human", str(tmp_path / "nope.json"), "--pseudo", str(pseudo), "--output", str(out)]) == 2
    assert fuse_main(["--human", str(hp), "--pseudo", str(pseudo), "--output", str(out), "--iou", "-1"]) == 2


# --------------------------------------------------------------------- point evaluation


def test_centre_point_inside_non_convex_shapes():
    r = box(10, 30, 10, 50)
    assert centre_point(r) == (30.0, 20.0) or centre_point(r)[1] in (19.5, 20.5)
    # A ring: centroid and box centre are in the hole; the click must not be.
    yy, xx = np.mgrid[0:H, 0:W]
    d = np.hypot(yy - 20, xx - 30)
    ring = (d >= 8) & (d <= 15)
    x, y = centre_point(ring)
    assert ring[int(y), int(x)]
    # A C shape.
    c = box(5, 35, 5, 45) & ~box(12, 28, 15, 45)
    x, y = centre_point(c)
    assert c[int(y), int(x)]
    with pytest.raises(ValueError, match="empty"):
        centre_point(np.zeros((4, 4), bool))


def test_evaluate_points_known_answers(tmp_path):
    from unsam.train.data import load_records

    img_dir = tmp_path / "im"
    img_dir.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img_dir / "y.png")
    gts = [box(0, 20, 0, 20), box(20, 40, 30, 60)]
    write_json_atomic(tmp_path / "gt" / "y.json", {"image": image_record(1, "y.png", W, H), "annotations": anns_of(gts, [1, 1])})
    recs = load_records(tmp_path / "gt", image_root=img_dir)

    def predict(image, points):
        # Output 0: the right mask but ranked low; output 1: half the mask, ranked first.
        out = []
        for x, y in points:
            g = next(m for m in gts if m[int(y), int(x)])
            half = g.copy()
            half[:, : int(x)] = False
            out.append(np.stack([g, half]))
        return torch.from_numpy(np.stack(out)), torch.tensor([[0.1, 0.9]] * len(points))

    res = evaluate_points(predict, recs)
    assert res["masks"] == 2 and res["images"] == 1 and res["outputs_per_click"] == 2
    assert res["OracleIoU"] == pytest.approx(1.0)
    halves = [(g & ~box(0, 40, 0, int(centre_point(g)[0]))).sum() / g.sum() for g in gts]
    assert res["MaxIoU"] == pytest.approx(float(np.mean(halves)))
    with pytest.raises(ValueError, match="no ground-truth mask"):
        evaluate_points(predict, recs, min_area=10_000)


def test_rle_roundtrip_sanity():
    m = box(3, 9, 4, 10)
    r = masks_to_rles(m[None])[0]
    assert int(mask_utils.area({"size": r["size"], "counts": r["counts"].encode()})) == 36
