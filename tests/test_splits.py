"""Tests of ``unsam.evaluate.splits``: the tuning and evaluation halves are disjoint, cover the data, and do not move."""

from __future__ import annotations

import hashlib
import json

import pytest

from unsam.evaluate.splits import (
    COCO_MINI_EVAL_IDS,
    COCO_MINI_TUNE_IDS,
    bsds_gt_dir,
    bsds_images,
    coco_mini_gt,
    coco_mini_images,
    coco_mini_split,
    split_ids,
)


def test_coco_halves_are_disjoint_sorted_and_stable():
    tune, ev = set(COCO_MINI_TUNE_IDS), set(COCO_MINI_EVAL_IDS)
    assert len(tune) == len(COCO_MINI_TUNE_IDS) == 40 and len(ev) == len(COCO_MINI_EVAL_IDS) == 39
    assert not tune & ev
    assert max(tune) < min(ev)  # sorted halves: every tuning id below every evaluation id
    assert list(COCO_MINI_TUNE_IDS) == sorted(tune) and list(COCO_MINI_EVAL_IDS) == sorted(ev)
    # Stable: a fingerprint of the literal lists; changing the split must change this test.
    digest = hashlib.sha256(json.dumps([COCO_MINI_TUNE_IDS, COCO_MINI_EVAL_IDS]).encode()).hexdigest()
    assert digest[:16] == "0ec830440b03052d", digest
    assert coco_mini_split("tune") == COCO_MINI_TUNE_IDS and coco_mini_split("eval") == COCO_MINI_EVAL_IDS
    with pytest.raises(ValueError, match="part should be one of"):
        coco_mini_split("val")


def test_split_rule():
    assert split_ids([5, 1, 3, 2, 4]) == ((1, 2, 3), (4, 5))
    assert split_ids([2, 1, 2]) == ((1,), (2,))
    assert split_ids([]) == ((), ())


def test_coco_halves_cover_coco_mini_and_follow_the_rule(data_dir):
    gt = json.loads(coco_mini_gt(data_dir).read_text())
    ids = [im["id"] for im in gt["images"]]
    assert set(COCO_MINI_TUNE_IDS) | set(COCO_MINI_EVAL_IDS) == set(ids)
    assert split_ids(ids) == (COCO_MINI_TUNE_IDS, COCO_MINI_EVAL_IDS)
    # The images that tuned the defaults so far (the first 20 by file name) are all tuning images.
    first20 = {im["id"] for im in sorted(gt["images"], key=lambda im: im["file_name"])[:20]}
    assert first20 <= set(COCO_MINI_TUNE_IDS)
    name_of = {im["id"]: im["file_name"] for im in gt["images"]}
    for part, part_ids in (("tune", COCO_MINI_TUNE_IDS), ("eval", COCO_MINI_EVAL_IDS)):
        files = coco_mini_images(data_dir, part)
        assert [f.name for f in files] == [name_of[i] for i in part_ids]
        assert all(f.is_file() for f in files)


def test_bsds_tune_on_train_evaluate_on_val(data_dir):
    tune, ev = bsds_images(data_dir, "tune"), bsds_images(data_dir, "eval")
    assert len(tune) == 200 and len(ev) == 100
    assert {p.parent.name for p in tune} == {"train"} and {p.parent.name for p in ev} == {"val"}
    assert not {p.stem for p in tune} & {p.stem for p in ev}
    assert bsds_gt_dir(data_dir, "eval").name == "val" and bsds_gt_dir(data_dir, "tune").name == "train"
    assert {p.stem for p in ev} == {p.stem for p in bsds_gt_dir(data_dir, "eval").glob("*.mat")}
    assert bsds_images(data_dir) == ev  # evaluation is the default part
