"""Tests of ``unsam.evaluate``: hand-made cases with known answers, pycocotools as the oracle, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from unsam.evaluate import (
    BSDS_KEYS,
    EvalError,
    coco_keys,
    evaluate_bsds,
    evaluate_coco,
    level_partitions,
    load_bsds_gt,
    main,
    probabilistic_rand_index,
    segmentation_covering,
    variation_of_information,
)
from unsam.io import (
    annotation_record,
    export_coco,
    image_record,
    mask_to_rle,
    write_json_atomic,
)

H, W = 100, 120


def box(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def write_gt(
    path: Path,
    images: dict[str, list[np.ndarray]],
    crowd: dict[str, list[np.ndarray]] | None = None,
    size: tuple[int, int] = (H, W),
) -> Path:
    """COCO GT with RLE masks; categories alternate (1, 2, 3) so class-agnostic mapping is exercised."""
    h, w = size
    imgs, anns = [], []
    for i, name in enumerate(images, start=1):
        imgs.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
        for m, iscrowd in [(m, 0) for m in images[name]] + [(m, 1) for m in (crowd or {}).get(name, [])]:
            rle = mask_to_rle(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": 1 + len(anns) % 3,
                    "segmentation": rle,
                    "area": int(m.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(dict(rle, counts=rle["counts"].encode()))],
                    "iscrowd": iscrowd,
                }
            )
    cats = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in (1, 2, 3)]
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return path


def write_pred(
    folder: Path,
    name: str,
    masks: list[np.ndarray],
    scores: list[float | None] | None = None,
    levels: list[int] | None = None,
    size: tuple[int, int] = (H, W),
    sub: str = "",
) -> Path:
    h, w = size
    anns = []
    for i, m in enumerate(masks):
        a = annotation_record(
            i + 1,
            m,
            level=(levels[i] if levels else 0),
            parent_id=None,
            score=0.0 if scores is None or scores[i] is None else scores[i],
            source="conquer",
        )
        if scores is not None and scores[i] is None:
            del a["score"]
        anns.append(a)
    out = folder / sub / (Path(name).stem + ".json")
    write_json_atomic(out, {"image": image_record(1, f"some/dir/{name}", w, h), "annotations": anns})
    return out


# --------------------------------------------------------------------------- COCO: known answers

A, B, C = box(10, 50, 10, 50), box(60, 70, 60, 70), box(20, 50, 70, 100)  # 1600 (medium), 100, 900 (small)


def test_perfect_prediction_gives_ar_and_ap_one(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A, B], "b.jpg": [C]})
    write_pred(tmp_path / "p", "a.jpg", [A, B], [0.9, 0.8])
    write_pred(tmp_path / "p", "b.jpg", [C], [0.5])
    (tmp_path / "p" / "summary.json").write_text("{}")  # the labeler's summary: skipped, not an error
    res = evaluate_coco(tmp_path / "p", gt)
    m = res.metrics
    assert (
        tuple(m)
        == coco_keys()
        == (
            "AR@10",
            "AR@100",
            "AR@1000",
            "AR_small@1000",
            "AR_medium@1000",
            "AR_large@1000",
            "AP",
            "AP50",
            "images",
            "masks_per_image",
        )
    )
    for k in ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AP", "AP50"):
        assert m[k] == pytest.approx(1.0), k
    assert m["AR_large@1000"] is None  # no GT that large: undefined, as COCOeval's -1
    assert m["images"] == 2 and m["masks_per_image"] == 1.5
    assert not res.missing and not res.unmatched


def test_disjoint_prediction_gives_zero(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A, B]})
    write_pred(tmp_path / "p", "a.jpg", [box(80, 100, 0, 40), box(0, 5, 100, 120)], [0.9, 0.8])
    m = evaluate_coco(tmp_path / "p", gt).metrics
    for k in ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AP", "AP50"):
        assert m[k] == 0.0, k


def test_partial_case_by_hand(tmp_path):
    # a.jpg: A found exactly; B (10 x 10) only by an 8 x 8 mask inside it: IoU 0.64, a hit at
    # the IoU thresholds 0.50, 0.55, 0.60 (3 of 10) -> recall 0.3. b.jpg: no prediction -> C is missed.
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A, B], "b.jpg": [C]})
    write_pred(tmp_path / "p", "a.jpg", [A, box(61, 69, 61, 69)], [0.9, 0.8])
    res = evaluate_coco(tmp_path / "p", gt)
    m = res.metrics
    for k in ("AR@10", "AR@100", "AR@1000"):
        assert m[k] == pytest.approx((1 + 0.3 + 0) / 3), k
    assert m["AR_small@1000"] == pytest.approx((0.3 + 0) / 2)
    assert m["AR_medium@1000"] == pytest.approx(1.0)
    assert res.missing == ["b.jpg"]
    assert any("without a prediction" in n for n in res.notes)
    assert m["masks_per_image"] == 1.0  # 2 masks over 2 GT images


def _random_case(tmp_path: Path, n_img: int = 3, n_gt: int = 12, n_pred: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = 120, 160  # large enough for GT in all three COCO area ranges
    gts, preds = {}, {}
    for i in range(n_img):
        name = f"img{i}.jpg"
        g = []
        for _ in range(n_gt):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            g.append(box(y, y + rng.integers(3, h - y), x, x + rng.integers(3, w - x), h, w))
        g.append(box(0, h, rng.integers(0, 20), w - rng.integers(20, 50), h, w))  # one large (> 96^2) GT
        gts[name] = g
        p = []
        for _ in range(n_pred):
            if rng.random() < 0.4:  # a jittered copy of a GT mask
                t = g[rng.integers(len(g))]
                p.append(np.roll(t, (rng.integers(-3, 4), rng.integers(-3, 4)), (0, 1)))
            else:
                y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
                p.append(box(y, y + rng.integers(2, h - y), x, x + rng.integers(2, w - x), h, w))
        preds[name] = (p, rng.random(n_pred).tolist())
    crowd = {"img0.jpg": [box(0, 10, 0, 20, h, w)]}
    gt = write_gt(tmp_path / "gt.json", gts, crowd=crowd, size=(h, w))
    for name, (p, s) in preds.items():
        write_pred(tmp_path / "p", name, p, s, size=(h, w))
    return gt, preds


def test_agrees_with_pycocotools_called_directly(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_path, preds = _random_case(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
        results = []
        for name, (masks, scores) in preds.items():
            for m, s in zip(masks, scores):
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                results.append({"image_id": ids[name], "category_id": 2, "segmentation": rle, "score": s})
        as_file = [
            dict(r, segmentation=dict(r["segmentation"], counts=r["segmentation"]["counts"].decode())) for r in results
        ]  # before loadRes adds its own fields
        dt = gt.loadRes(results)
        E = COCOeval(gt, dt, "segm")
        E.params.useCats = 0
        E.params.maxDets = [10, 100, 1000]
        E.evaluate()
        E.accumulate()
        E.summarize()
    st = E.stats
    ours = evaluate_coco(tmp_path / "p", gt_path).metrics
    expect = {
        "AR@10": st[6],
        "AR@100": st[7],
        "AR@1000": st[8],
        "AR_small@1000": st[9],
        "AR_medium@1000": st[10],
        "AR_large@1000": st[11],
        "AP50": st[1],
    }
    for k, v in expect.items():
        assert v > -1, k  # every range has GT here
        assert ours[k] == pytest.approx(v, abs=1e-12), k
    assert ours["AR@10"] < ours["AR@100"] < ours["AR@1000"]  # the case really tests the cut-offs
    # AP: pycocotools' stats[0] is AP at 100 masks per image.
    assert evaluate_coco(tmp_path / "p", gt_path, max_dets=100).metrics["AP"] == pytest.approx(st[0], abs=1e-12)
    # The same predictions as a COCO results file (GT ids) and as an exported set give the same numbers.
    res_file = tmp_path / "results.json"
    res_file.write_text(json.dumps(as_file))
    assert evaluate_coco(res_file, gt_path).metrics == ours
    export_coco(tmp_path / "p", tmp_path / "set.json")
    assert evaluate_coco(tmp_path / "set.json", gt_path).metrics == ours


def test_curve_is_monotone_and_matches_metrics(tmp_path):
    gt_path, _ = _random_case(tmp_path, n_img=2, n_pred=60, seed=1)
    res = evaluate_coco(tmp_path / "p", gt_path, curve=(1, 5, 20, 50))
    assert sorted(res.curve) == [1, 5, 10, 20, 50, 100, 1000]
    vals = [res.curve[k] for k in sorted(res.curve)]
    assert vals == sorted(vals)
    assert res.curve[100] == pytest.approx(res.metrics["AR@100"])


def test_masks_without_score_are_ranked_by_area(tmp_path):
    # 11 small wrong masks first in the file, the right (largest) one last, none with a score:
    # by file order it would be cut from the top 10; by area it comes first.
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A]})
    wrong = [box(90, 92, 2 * i, 2 * i + 2) for i in range(11)]
    write_pred(tmp_path / "p", "a.jpg", [*wrong, A], [None] * 12)
    res = evaluate_coco(tmp_path / "p", gt)
    assert res.metrics["AR@10"] == 1.0
    assert any("ranked by area" in n and "12 of 12" in n for n in res.notes)
    # With scores that put A last, the score rules; --rank area overrides the scores.
    write_pred(tmp_path / "q", "a.jpg", [*wrong, A], [0.9] * 11 + [0.1])
    assert evaluate_coco(tmp_path / "q", gt).metrics["AR@10"] == 0.0
    assert evaluate_coco(tmp_path / "q", gt, rank="area").metrics["AR@10"] == 1.0


def test_prediction_for_unknown_image_is_reported_and_ignored(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A]})
    write_pred(tmp_path / "p", "a.jpg", [A], [0.9])
    stray = write_pred(tmp_path / "p", "zzz.jpg", [B], [0.9])
    res = evaluate_coco(tmp_path / "p", gt)
    assert res.metrics["AR@1000"] == 1.0 and res.metrics["images"] == 1
    assert res.unmatched == [str(stray)]
    assert any("not in the GT" in n for n in res.notes)


def test_limit_takes_first_gt_images_by_file_name(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {"c.jpg": [C], "a.jpg": [A], "b.jpg": [B]})
    for n, m in (("a.jpg", A), ("b.jpg", box(0, 5, 0, 5)), ("c.jpg", C)):
        write_pred(tmp_path / "p", n, [m], [0.9])
    res = evaluate_coco(tmp_path / "p", gt, limit=1)
    assert res.metrics["images"] == 1 and res.metrics["AR@1000"] == 1.0
    assert not res.unmatched  # b and c are in the GT, only beyond the limit
    assert evaluate_coco(tmp_path / "p", gt, limit=2).metrics["AR@1000"] == pytest.approx(0.5)


def test_image_ids_evaluate_a_subset(tmp_path):
    # GT ids are 101, 102, 103 (write_gt numbers them from 101). Only b (102) is evaluated:
    # the wrong prediction for a and the missing one for c do not count, and are not reported.
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A], "b.jpg": [B], "c.jpg": [C]})
    write_pred(tmp_path / "p", "a.jpg", [box(0, 5, 0, 5)], [0.9])
    write_pred(tmp_path / "p", "b.jpg", [B], [0.9])
    res = evaluate_coco(tmp_path / "p", gt, image_ids=[102])
    assert res.metrics["images"] == 1 and res.metrics["AR@1000"] == 1.0
    assert not res.missing and not res.unmatched
    assert evaluate_coco(tmp_path / "p", gt, image_ids=[101, 102]).metrics["AR@1000"] == pytest.approx(0.5)
    with pytest.raises(EvalError, match=r"image_ids not in this GT file: \[7\]"):
        evaluate_coco(tmp_path / "p", gt, image_ids=[102, 7])


def test_max_dets_changes_keys(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A]})
    write_pred(tmp_path / "p", "a.jpg", [A], [0.9])
    m = evaluate_coco(tmp_path / "p", gt, max_dets=50).metrics
    assert tuple(m) == coco_keys(50) and "AR@50" in m and "AR@100" not in m


# --------------------------------------------------------------------------- COCO: bad input


def test_errors_name_the_file(tmp_path):
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A]})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalError, match="empty"):
        evaluate_coco(empty, gt)
    only_summary = tmp_path / "only"
    only_summary.mkdir()
    (only_summary / "summary.json").write_text("{}")
    with pytest.raises(EvalError, match="no per-image label JSON"):
        evaluate_coco(only_summary, gt)
    bad = tmp_path / "bad"
    write_pred(bad, "a.jpg", [A], [0.9])
    (bad / "broken.json").write_text('{"image": ')
    with pytest.raises(EvalError, match=r"broken\.json: malformed JSON"):
        evaluate_coco(bad, gt)
    size = tmp_path / "size"
    p = write_pred(size, "a.jpg", [box(0, 5, 0, 5, 50, 60)], [0.9], size=(50, 60))
    with pytest.raises(EvalError, match=rf"{p.name}.*60x50.*does not match.*120x100"):
        evaluate_coco(size, gt)
    mism = tmp_path / "mism"
    p = write_pred(mism, "a.jpg", [A], [0.9])
    d = json.loads(p.read_text())
    d["annotations"][0]["segmentation"]["size"] = [10, 10]
    p.write_text(json.dumps(d))
    with pytest.raises(EvalError, match=r"a\.json: annotations\[0\]\.segmentation\.size"):
        evaluate_coco(mism, gt)
    dup = tmp_path / "dup"
    write_pred(dup, "a.jpg", [A], [0.9], sub="x")
    write_pred(dup, "a.jpg", [A], [0.9], sub="y")
    with pytest.raises(EvalError, match="two predictions for image 'a.jpg'"):
        evaluate_coco(dup, gt)
    with pytest.raises(EvalError, match="does not exist"):
        evaluate_coco(tmp_path / "nope", gt)
    with pytest.raises(EvalError, match="nope.json does not exist"):
        evaluate_coco(bad, tmp_path / "nope.json")
    (tmp_path / "notgt.json").write_text("[1, 2]")
    with pytest.raises(EvalError, match="notgt.json: not a COCO annotation file"):
        evaluate_coco(size, tmp_path / "notgt.json")


def test_cli_writes_exact_keys_and_states_rules(tmp_path, capsys):
    gt = write_gt(tmp_path / "gt.json", {"a.jpg": [A, B]})
    write_pred(tmp_path / "p", "a.jpg", [A, B], [0.9, None])
    out = tmp_path / "m.json"
    assert main(["coco", "--pred", str(tmp_path / "p"), "--gt", str(gt), "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "AR@1000" in text and "ranked by area" in text and "basename" in text
    assert tuple(json.loads(out.read_text())) == coco_keys()
    (tmp_path / "p" / "a.json").write_text("not json")
    assert main(["coco", "--pred", str(tmp_path / "p"), "--gt", str(gt), "--quiet"]) == 2
    assert "a.json: malformed JSON" in capsys.readouterr().err


def test_real_coco_gt_perfect_prediction(tmp_path, data_dir):
    """GT masks of 3 coco-mini images given back as predictions: AR 1 (crowd regions are ignored by COCOeval)."""
    from pycocotools.coco import COCO

    gt_path = data_dir / "coco-mini" / "instances_val2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    imgs = sorted(coco.dataset["images"], key=lambda im: im["file_name"])[:3]
    for im in imgs:
        anns = [a for a in coco.imgToAnns[im["id"]] if not a["iscrowd"]]
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        write_pred(
            tmp_path / "p",
            im["file_name"],
            masks,
            [1.0 - i * 1e-3 for i in range(len(masks))],
            size=(im["height"], im["width"]),
        )
    m = evaluate_coco(tmp_path / "p", gt_path, limit=3).metrics
    assert m["images"] == 3
    assert m["AR@1000"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- BSDS: metrics by hand


S1 = np.array([[1, 1, 2], [1, 1, 2]])
G1 = np.array([[1, 1, 1], [2, 2, 2]])


def test_bsds_metrics_hand_computed():
    # Contingency S x G: [[2, 2], [1, 1]]. Rand: 15 pairs, 6 agree -> 0.4. Covering: each GT row
    # (3 px) best IoU 2/5 with S's first segment -> 0.4. S and G are independent (MI = 0), so
    # VI = H(S) + H(G) = H(4/6, 2/6) + 1 bit.
    assert probabilistic_rand_index(S1, [G1]) == pytest.approx(0.4)
    assert segmentation_covering(S1, [G1]) == pytest.approx(0.4)
    h_s = -(4 / 6 * math.log2(4 / 6) + 2 / 6 * math.log2(2 / 6))
    assert variation_of_information(S1, [G1]) == pytest.approx(h_s + 1.0)
    # Perfect, and with relabelled segments.
    assert probabilistic_rand_index(G1 * 7, [G1]) == 1.0
    assert segmentation_covering(G1 + 3, [G1]) == 1.0
    assert variation_of_information(G1 + 3, [G1]) == pytest.approx(0.0, abs=1e-12)
    # Two annotators: PRI and VI average, covering pools the counts (equal image sizes: also the mean).
    assert probabilistic_rand_index(S1, [G1, S1]) == pytest.approx((0.4 + 1.0) / 2)
    assert variation_of_information(S1, [G1, S1]) == pytest.approx((h_s + 1.0) / 2)
    assert segmentation_covering(S1, [G1, S1]) == pytest.approx((0.4 * 6 + 6) / 12)
    # GT label 0 (unlabelled) is ignored by RI and VI, as the BSDS code does.
    g0 = np.array([[1, 1, 0], [2, 2, 0]])
    s0 = np.array([[1, 1, 5], [2, 2, 6]])
    assert probabilistic_rand_index(s0, [g0]) == 1.0
    assert variation_of_information(s0, [g0]) == pytest.approx(0.0, abs=1e-12)


def _ann(i, m, level, parent=None):
    return annotation_record(i, m, level=level, parent_id=parent, score=0.5, source="conquer")


def test_level_partition_rule():
    h, w = 4, 6
    a = box(0, 4, 0, 3, h, w)  # left half, level 0
    b = box(0, 2, 0, 3, h, w)  # top of a, level 1
    c = box(1, 3, 3, 6, h, w)  # right middle, level 0: leaves two uncovered strips (rows 0 and 3)
    anns = [_ann(1, a, 0), _ann(2, b, 1, 1), _ann(3, c, 0)]
    p0, p1 = level_partitions(anns, h, w)
    assert p0.min() == 1
    assert int(p0.max()) == 4 and int(p1.max()) == 5  # a, c, two strips; then b splits a
    assert len(np.unique(p0[a])) == 1 and len(np.unique(p1[b])) == 1 and len(np.unique(p1[a & ~b])) == 1
    assert p1[0, 0] != p1[3, 0]
    assert p0[0, 4] != p0[3, 4]  # two separate uncovered areas: two segments
    r0, r1 = level_partitions(anns, h, w, uncovered="rest")
    assert int(r0.max()) == 3 and int(r1.max()) == 4 and r0[0, 4] == r0[3, 4]
    # Overlapping masks of one level: the smaller wins the overlap.
    big, small = box(0, 4, 0, 4, h, w), box(0, 4, 3, 6, h, w)
    (q,) = level_partitions([_ann(1, small, 0), _ann(2, big, 0)], h, w)
    assert q[0, 3] == q[0, 5] != q[0, 0]
    (e,) = level_partitions([], h, w)
    assert (e == 1).all()


def _write_mat(path: Path, segs: list[np.ndarray]) -> Path:
    from scipy.io import savemat

    cell = np.empty((1, len(segs)), dtype=object)
    for i, s in enumerate(segs):
        cell[0, i] = {"Segmentation": s.astype(np.uint16), "Boundaries": np.zeros_like(s, np.uint8)}
    savemat(path, {"groundTruth": cell})
    return path


def test_bsds_ods_ois_hand_computed(tmp_path):
    # 4 x 4 images. "a": humans see two halves; prediction: level 0 whole image, level 1 the halves.
    # "b": humans see one region; same prediction. Scale k < sqrt(2) selects level 0 everywhere,
    # k > sqrt(2) level 1: either way one image is perfect and the other half-right.
    h = w = 4
    halves = np.where(np.arange(h)[:, None] < 2, 1, 2) * np.ones((1, w), int)
    whole = np.ones((h, w), int)
    gdir = tmp_path / "gt"
    gdir.mkdir()
    _write_mat(gdir / "a.mat", [halves])
    _write_mat(gdir / "b.mat", [whole])
    _write_mat(gdir / "c.mat", [halves, whole])  # no prediction: one segment
    top, bottom = box(0, 2, 0, 4, h, w), box(2, 4, 0, 4, h, w)
    masks = [whole.astype(bool), top, bottom]
    for name in ("a", "b"):
        write_pred(tmp_path / "p", f"{name}.jpg", masks, [0.9, 0.5, 0.5], levels=[0, 1, 1], size=(h, w))
    res = evaluate_bsds(tmp_path / "p", gdir, limit=2)
    m = res.metrics
    assert tuple(m) == BSDS_KEYS
    ri_whole_vs_halves = 56 / 120  # 16 px, 120 pairs; 56 pairs joined by both, none split by both
    assert m["covering_ods"] == pytest.approx(0.75) and m["covering_ois"] == pytest.approx(1.0)
    assert m["pri_ods"] == pytest.approx((ri_whole_vs_halves + 1) / 2) and m["pri_ois"] == pytest.approx(1.0)
    assert m["vi_ods"] == pytest.approx(0.5) and m["vi_ois"] == pytest.approx(0.0, abs=1e-12)
    assert m["images"] == 2
    full = evaluate_bsds(tmp_path / "p", gdir)
    assert full.missing == ["c"] and full.metrics["images"] == 3
    # c: one segment vs [halves, whole]: covering (2 * 8 * 0.5 + 16) / 32, PRI (56/120 + 1) / 2, VI (1 + 0) / 2.
    c = full.per_image["c"]
    assert c["cnt"][0] / c["sum"][0] == pytest.approx(0.75)
    assert c["pri"][0] == pytest.approx((ri_whole_vs_halves + 1) / 2) and c["vi"][0] == pytest.approx(0.5)


def test_bsds_scale_picks_nearest_segment_count(tmp_path):
    # One image, three levels with 1, 2 and 4 segments; humans see 4 quadrants. ODS over the
    # segment-count scale (the non-standard --scale count; it was the default before the
    # benchmark's level rule, so this test now asks for it) must reach the 4-segment level.
    h = w = 4
    quads = (np.arange(h)[:, None] >= 2) * 2 + (np.arange(w)[None, :] >= 2) + 1
    gdir = tmp_path / "gt"
    gdir.mkdir()
    _write_mat(gdir / "q.mat", [quads])
    masks = [np.ones((h, w), bool), box(0, 2, 0, 4, h, w), box(2, 4, 0, 4, h, w)] + [quads == k for k in (1, 2, 3, 4)]
    write_pred(tmp_path / "p", "q.png", masks, levels=[0, 1, 1, 2, 2, 2, 2], size=(h, w))
    res = evaluate_bsds(tmp_path / "p", gdir, scale="count")
    assert res.per_image["q"]["nseg"] == [1, 2, 4]
    assert res.metrics["covering_ods"] == pytest.approx(1.0) and res.ods_scale["covering"] > 2 * math.sqrt(2)
    assert res.scale == res.metrics["scale"] == "count"
    # The benchmark's rule (default) reports the level index instead: the same perfect level 2.
    lvl = evaluate_bsds(tmp_path / "p", gdir)
    assert lvl.scale == lvl.metrics["scale"] == "level"
    assert lvl.metrics["covering_ods"] == pytest.approx(1.0) and lvl.ods_scale["covering"] == 2


def _strips(h: int, w: int, parts: int) -> np.ndarray:
    """Label map 1..parts of ``parts`` equal vertical strips."""
    return (np.arange(w)[None, :] // (w // parts) + 1) * np.ones((h, 1), int)


def _write_levels(folder: Path, name: str, h: int, w: int, level_parts: list[int]) -> None:
    """A prediction whose level l is the partition into ``level_parts[l]`` vertical strips."""
    masks, levels = [], []
    for lv, n in enumerate(level_parts):
        for k in range(1, n + 1):
            masks.append(_strips(h, w, n) == k)
            levels.append(lv)
    write_pred(folder, f"{name}.jpg", masks, levels=levels, size=(h, w))


def test_bsds_level_rule_differs_from_count_rule_by_hand(tmp_path):
    # Two 2 x 8 images (16 px, 120 pixel pairs), humans on both: the two halves (columns 0-3 | 4-7).
    # a: levels whole (1 segment), halves (2), quarters (4) -- three levels.
    # b: levels halves (2), quarters (4) -- two levels: at t = 2 it repeats its last (quarters).
    # Per (partition vs halves), by hand:
    #   whole:    covering counts 8 of 16 (each half: IoU 8/16); RI 56/120 = 7/15 (only the 2 x C(8,2)
    #             pairs inside a half agree); VI = H(S) + H(G) - 2I = 0 + 1 - 0 = 1 bit.
    #   halves:   16 of 16; RI 1; VI 0.
    #   quarters: 8 of 16 (each half's best quarter: IoU 4/8); RI (4 C(4,2) + 64) / 120 = 88/120 = 11/15
    #             (24 pairs joined by both, 120 - 56 = 64 split by both); VI = 2 + 1 - 2 * 1 = 1 bit.
    # Level rule, t = 0 / 1 / 2 (a, b):  (whole, halves) / (halves, quarters) / (quarters, quarters)
    #   covering (8+16)/32 = .75 / (16+8)/32 = .75 / 16/32 = .5  -> ODS .75 at t = 0 (first of the tie)
    #   PRI      (7/15+1)/2 = 11/15 / (1+11/15)/2 = 13/15 / 11/15 -> ODS 13/15 at t = 1
    #   VI       (1+0)/2 = .5 / (0+1)/2 = .5 / 1                  -> ODS .5 at t = 0 (first of the tie)
    # Count rule: at k = 2 a takes its level 1 and b its level 0, both the halves: 1 / 1 / 0.
    # OIS (both rules): each image's halves: 1 / 1 / 0.
    h, w = 2, 8
    gdir = tmp_path / "gt"
    gdir.mkdir()
    for name in ("a", "b"):
        _write_mat(gdir / f"{name}.mat", [_strips(h, w, 2)])
    _write_levels(tmp_path / "p", "a", h, w, [1, 2, 4])
    _write_levels(tmp_path / "p", "b", h, w, [2, 4])

    lvl = evaluate_bsds(tmp_path / "p", gdir)  # the default: the benchmark's level rule
    m = lvl.metrics
    assert lvl.scale == m["scale"] == "level" and m["images"] == 2
    assert lvl.per_image["a"]["nseg"] == [1, 2, 4] and lvl.per_image["b"]["nseg"] == [2, 4]
    assert m["covering_ods"] == pytest.approx(0.75)
    assert m["pri_ods"] == pytest.approx(13 / 15)
    assert m["vi_ods"] == pytest.approx(0.5)
    assert lvl.ods_scale == {"covering": 0, "pri": 1, "vi": 0}
    for r in (lvl, evaluate_bsds(tmp_path / "p", gdir, scale="count")):
        assert r.metrics["covering_ois"] == pytest.approx(1.0) and r.metrics["pri_ois"] == pytest.approx(1.0)
        assert r.metrics["vi_ois"] == pytest.approx(0.0, abs=1e-12)

    cnt = evaluate_bsds(tmp_path / "p", gdir, scale="count")
    assert cnt.scale == cnt.metrics["scale"] == "count"
    assert cnt.metrics["covering_ods"] == pytest.approx(1.0) and cnt.metrics["pri_ods"] == pytest.approx(1.0)
    assert cnt.metrics["vi_ods"] == pytest.approx(0.0, abs=1e-12)
    assert math.sqrt(2) < cnt.ods_scale["covering"] < 2 * math.sqrt(2)  # the k interval where both pick 2 segments
    assert any("NON-STANDARD" in n for n in cnt.notes) and any("collect_eval_reg" in n for n in lvl.notes)


def test_bsds_level_rule_pools_covering_and_averages_pri_vi(tmp_path):
    # Images of different sizes and depths; humans see the two halves on both.
    # a: 2 x 8 (16 px, 120 pairs), levels whole, halves.
    # c: 4 x 8 (32 px, 496 pairs), levels whole, quarters, eighths -- three levels.
    # By hand (partition vs halves):
    #   a whole: cov 8 of 16, RI 56/120 = 7/15, VI 1;  a halves: 16 of 16, RI 1, VI 0.
    #   c whole: cov 16 of 32 (IoU 16/32), RI 2 C(16,2) / 496 = 240/496 = 15/31, VI 1.
    #   c quarters: cov 16 of 32 (IoU 8/16), RI (4 C(8,2) + 256) / 496 = 368/496 = 23/31, VI 2 + 1 - 2 = 1.
    #   c eighths: cov 8 of 32 (IoU 4/16), RI (8 C(4,2) + 256) / 496 = 304/496 = 19/31, VI 3 + 1 - 2 = 2.
    # Level rule (a repeats its halves at t = 2):
    #   t = 0: covering (8+16)/48 = 1/2,  PRI (7/15 + 15/31)/2,  VI 1
    #   t = 1: covering (16+16)/48 = 2/3, PRI (1 + 23/31)/2,     VI 1/2
    #   t = 2: covering (16+8)/48 = 1/2,  PRI (1 + 19/31)/2,     VI 1
    # ODS covering 2/3: pooled over pixels, not the mean of the per-image coverings (1 + 1/2)/2 = 3/4.
    # OIS: a at halves (16 of 16), c at whole or quarters (16 of 32; tied, same counts): (16+16)/48 = 2/3;
    # PRI (1 + 23/31)/2; VI (0 + 1)/2.
    gdir = tmp_path / "gt"
    gdir.mkdir()
    _write_mat(gdir / "a.mat", [_strips(2, 8, 2)])
    _write_mat(gdir / "c.mat", [_strips(4, 8, 2)])
    _write_levels(tmp_path / "p", "a", 2, 8, [1, 2])
    _write_levels(tmp_path / "p", "c", 4, 8, [1, 4, 8])
    res = evaluate_bsds(tmp_path / "p", gdir, scale="level")
    m = res.metrics
    assert m["covering_ods"] == pytest.approx(2 / 3)
    assert m["pri_ods"] == pytest.approx((1 + 23 / 31) / 2)
    assert m["vi_ods"] == pytest.approx(0.5)
    assert res.ods_scale == {"covering": 1, "pri": 1, "vi": 1}
    assert m["covering_ois"] == pytest.approx(2 / 3)
    assert m["pri_ois"] == pytest.approx((1 + 23 / 31) / 2)
    assert m["vi_ois"] == pytest.approx(0.5)
    c = res.per_image["c"]
    assert c["pri"] == pytest.approx([15 / 31, 23 / 31, 19 / 31]) and c["vi"] == pytest.approx([1, 1, 2])
    # Count rule: a's counts 1, 2 and c's 1, 4, 8. k < sqrt(2): both whole (t = 0 numbers above).
    # sqrt(2) < k < 2: a halves, c whole (its 1 and 4 are equally far from 2: the coarser) ->
    # covering (16+16)/48 = 2/3, PRI (1 + 15/31)/2, VI (0 + 1)/2. 2 < k < 2 sqrt(2): a halves, c quarters ->
    # 2/3, (1 + 23/31)/2, 1/2. Larger k: c eighths (or quarters), a halves: no better.
    cnt = evaluate_bsds(tmp_path / "p", gdir, scale="count").metrics
    assert cnt["covering_ods"] == pytest.approx(2 / 3)
    assert cnt["pri_ods"] == pytest.approx((1 + 23 / 31) / 2)
    assert cnt["vi_ods"] == pytest.approx(0.5)


def test_bsds_missing_image_repeats_its_one_level(tmp_path):
    # b has no prediction: one segment at every t. a: whole, halves, quarters vs halves (see above).
    # t = 0: (8 + 8)/32, t = 1: (16 + 8)/32, t = 2: (8 + 8)/32 -> ODS 0.75 at t = 1.
    gdir = tmp_path / "gt"
    gdir.mkdir()
    for name in ("a", "b"):
        _write_mat(gdir / f"{name}.mat", [_strips(2, 8, 2)])
    _write_levels(tmp_path / "p", "a", 2, 8, [1, 2, 4])
    res = evaluate_bsds(tmp_path / "p", gdir)
    assert res.missing == ["b"] and res.per_image["b"]["nseg"] == [1]
    assert res.metrics["covering_ods"] == pytest.approx(0.75) and res.ods_scale["covering"] == 1
    assert res.metrics["pri_ods"] == pytest.approx((1 + 7 / 15) / 2)


def test_bsds_errors_name_the_file(tmp_path):
    gdir = tmp_path / "gt"
    gdir.mkdir()
    with pytest.raises(EvalError, match="holds no .mat"):
        evaluate_bsds(tmp_path, gdir)
    _write_mat(gdir / "a.mat", [np.ones((4, 4), int)])
    p = write_pred(tmp_path / "p", "a.jpg", [box(0, 2, 0, 2, 4, 5)], size=(4, 5))
    with pytest.raises(EvalError, match=rf"{p.name}: image size 5x4.*a\.mat \(4x4\)"):
        evaluate_bsds(tmp_path / "p", gdir)
    p = write_pred(tmp_path / "q", "a.jpg", [box(0, 2, 0, 2, 4, 4)], size=(4, 4))
    d = json.loads(p.read_text())
    del d["annotations"][0]["level"]
    p.write_text(json.dumps(d))
    with pytest.raises(EvalError, match=r"a\.json: annotations\[0\]\.level"):
        evaluate_bsds(tmp_path / "q", gdir)
    (gdir / "b.mat").write_bytes(b"not a mat file")
    with pytest.raises(EvalError, match=r"b\.mat"):
        load_bsds_gt(gdir / "b.mat")
    assert main(["bsds", "--pred", str(tmp_path / "q"), "--gt-dir", str(gdir), "--quiet"]) == 2


def test_bsds_cli_json(tmp_path, capsys):
    gdir = tmp_path / "gt"
    gdir.mkdir()
    _write_mat(gdir / "a.mat", [np.ones((4, 4), int)])
    write_pred(tmp_path / "p", "a.jpg", [np.ones((4, 4), bool)], size=(4, 4))
    out = tmp_path / "m.json"
    assert main(["bsds", "--pred", str(tmp_path / "p"), "--gt-dir", str(gdir), "--json", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())
    assert tuple(m) == BSDS_KEYS and m["covering_ods"] == 1.0 and m["vi_ois"] == 0.0
    assert m["scale"] == "level"  # the benchmark's rule by default
    text = capsys.readouterr().out
    assert "partition of level l" in text and "collect_eval_reg" in text
    args = ["bsds", "--pred", str(tmp_path / "p"), "--gt-dir", str(gdir), "--json", str(out), "--quiet"]
    assert main([*args, "--scale", "count"]) == 0
    assert json.loads(out.read_text())["scale"] == "count"
    assert "NON-STANDARD" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--scale", "nearest"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["bsds", "--help"])
    helps = " ".join(capsys.readouterr().out.split())
    assert "level (default): the BSDS500 benchmark's" in helps and "count: NON-STANDARD" in helps


def test_real_bsds_gt_as_prediction(data_dir):
    """One annotator's real segmentation, given as level-0 masks, is rebuilt exactly by the partition rule."""
    f = min((data_dir / "bsds500" / "groundTruth" / "val").glob("*.mat"))
    gts = load_bsds_gt(f)
    assert len(gts) >= 4 and gts[0].shape in ((321, 481), (481, 321))
    g = gts[0]
    h, w = g.shape
    anns = [_ann(i + 1, g == k, 0) for i, k in enumerate(np.unique(g))]
    (part,) = level_partitions(anns, h, w)
    assert segmentation_covering(part, [g]) == 1.0
    assert variation_of_information(part, [g]) == pytest.approx(0.0, abs=1e-9)
    assert 0.5 < segmentation_covering(part, gts) < 1.0  # the other humans differ
