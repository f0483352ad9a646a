"""End-to-end tests of ``python -m unsam.label`` on real images (classic backbone, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from unsam.label import LabelConfig, Labeler, config_from_dict, main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "examples" / "images"
# In this process (no watching child: isolation has its own tests, tests/test_isolation.py).
FAST = ["--backbone", "classic", "--workers", "0", "--quiet", "--max-cuts", "3", "--image-timeout", "0"]


def _decode(ann):
    rle = dict(ann["segmentation"])
    rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool), rle


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    out = tmp_path_factory.mktemp("labels")
    assert main(["--input", str(SAMPLES), "--output", str(out), "--save-vis", *FAST]) == 0
    return out


def test_outputs_are_valid_nested_and_decode_to_stated_area_and_bbox(labeled):
    files = sorted(labeled.glob("*.json"))
    names = {p.stem for p in files} - {"summary"}
    assert names == {p.stem for p in SAMPLES.glob("*.jpg")}
    for p in files:
        if p.name == "summary.json":
            continue
        d = json.loads(p.read_text())
        img = d["image"]
        w, h = Image.open(SAMPLES / img["file_name"]).size
        assert (img["width"], img["height"]) == (w, h)
        anns = d["annotations"]
        assert len(anns) >= 10, f"{p.name}: only {len(anns)} masks"
        ids = [a["id"] for a in anns]
        assert len(set(ids)) == len(ids)
        by_id = {a["id"]: a for a in anns}
        masks = {}
        for a in anns:
            m, rle = _decode(a)
            assert m.shape == (h, w)
            assert a["area"] == int(m.sum()) > 0
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            assert a["source"] in ("divide", "conquer", "atoms", "partition") and 0.0 <= a["score"] <= 1.0
            masks[a["id"]] = m
        # The other masks hang below the ladder's finest level: those whose parent is a
        # ladder region (or none) share one level, deeper than every ladder level.
        ladder_max = max(a["level"] for a in anns if a["source"] == "partition")
        below = {a["level"] for a in anns if a["source"] != "partition"
                 and (a["parent_id"] is None or by_id[a["parent_id"]]["source"] == "partition")}
        assert len(below) == 1 and below.pop() > ladder_max
        for a in anns:
            if a["parent_id"] is None:
                assert a["level"] == 0 or a["source"] != "partition"
                continue
            parent = by_id[a["parent_id"]]
            if a["source"] == "partition":
                # A region of the partition ladder: its parent is the region holding
                # it at the previous cut, which may have appeared several levels up.
                assert parent["source"] == "partition" and parent["level"] < a["level"]
                assert not (masks[a["id"]] & ~masks[a["parent_id"]]).any()
            elif parent["source"] != "partition":
                assert parent["level"] == a["level"] - 1
            assert parent["area"] > a["area"]
            # The parent holds at least `contain` (0.9) of the child.
            inside = np.count_nonzero(masks[a["id"]] & masks[a["parent_id"]])
            assert inside >= 0.9 * a["area"]
        # The ladder's levels: one whole-image root, and the regions of one level are disjoint.
        part = [a for a in anns if a["source"] == "partition"]
        assert [a["area"] for a in part if a["level"] == 0] == [h * w]
        for lv in {a["level"] for a in part}:
            cover = sum(masks[a["id"]].astype(np.int64) for a in part if a["level"] == lv)
            assert cover.max() == 1
        # Mask NMS: no two masks overlap with IoU > 0.9 (the ladder's regions are
        # exempt among themselves: each level must stay a complete partition).
        rles = [_decode(a)[1] for a in anns]
        iou = mask_utils.iou(rles, rles, [0] * len(rles))
        np.fill_diagonal(iou, 0)
        on = np.array([a["source"] == "partition" for a in anns])
        iou[np.ix_(on, on)] = 0
        assert iou.max() <= 0.9
    assert (labeled / "config.yaml").is_file()
    summary = json.loads((labeled / "summary.json").read_text())
    assert summary["images_labeled"] == 3 and summary["images_failed"] == 0 and summary["failed"] == []
    assert set(summary["stage_s"]) >= {"features_divide", "divide", "atoms_segment", "atoms_merge", "masks", "write"}
    vis = sorted((labeled / "vis").glob("*.jpg"))
    assert len(vis) == 3 and Image.open(vis[0]).size[0] > Image.open(SAMPLES / vis[0].name).size[0]


def test_deterministic_across_runs(labeled, tmp_path):
    img = sorted(SAMPLES.glob("*.jpg"))[0]
    assert main(["--input", str(img), "--output", str(tmp_path), *FAST]) == 0
    a = json.loads((tmp_path / img.with_suffix(".json").name).read_text())["annotations"]
    b = json.loads((labeled / img.with_suffix(".json").name).read_text())["annotations"]
    assert a == b


def test_resume_skips_finished_images(tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs, ignore=shutil.ignore_patterns("*.md"))
    out = tmp_path / "out"
    args = ["--input", str(imgs), "--output", str(out), *FAST, "--max-cuts", "1"]
    assert main(args) == 0
    files = sorted(out.glob("coco_*.json"))
    assert len(files) == 3
    stamps = {p: p.stat().st_mtime_ns for p in files}
    files[1].unlink()
    files[2].write_text('{"image": {"width": 1')  # a half-written file (as from an old tool) is redone
    assert main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["images_labeled"] == 2 and s["images_done_before"] == 1
    assert files[0].stat().st_mtime_ns == stamps[files[0]]
    assert json.loads(files[2].read_text())["annotations"]


def test_bad_inputs_are_reported_and_the_rest_completes(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(sorted(SAMPLES.glob("*.jpg"))[0], d / "good.jpg")
    data = (SAMPLES / "coco_397133.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "notes.jpg").write_text("this is not an image")
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    Image.new("RGB", (400, 300)).save(d / "big.png")
    out = tmp_path / "out"
    code = main(["--input", str(d), "--output", str(out), *FAST, "--max-cuts", "1", "--max-pixels", "100000"])
    assert code == 1  # some images failed
    s = json.loads((out / "summary.json").read_text())
    assert s["images_labeled"] == 1 and s["images_failed"] == 4
    assert {x["stage"] for x in s["failed"]} == {"decode"}
    reasons = {Path(x["path"]).name: x["reason"] for x in s["failed"]}
    assert reasons["truncated.jpg"].startswith("corrupt")
    assert reasons["notes.jpg"].startswith("not-an-image")
    assert reasons["tiny.png"].startswith("too-small")
    assert reasons["big.png"].startswith("too-large")
    assert sorted(p.name for p in out.glob("*.json")) == ["good.json", "summary.json"]
    # A rerun skips the failed images (still listed, still exit 1); --retry-failed takes only them.
    assert main(["--input", str(d), "--output", str(out), *FAST, "--max-cuts", "1", "--max-pixels", "100000"]) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["images_failed_before"] == 4 and s["images_done_before"] == 1 and s["images_failed"] == 4
    (d / "notes.jpg").unlink()
    shutil.copy(d / "good.jpg", d / "notes.jpg")  # fixed
    assert main(["--input", str(d), "--output", str(out), *FAST, "--max-cuts", "1", "--max-pixels", "100000", "--retry-failed"]) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["images_labeled"] == 1 and s["images_failed"] == 3 and "notes.jpg" not in {Path(x["path"]).name for x in s["failed"]}


def test_nothing_to_do_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o"), *FAST]) == 2
    assert "error" in capsys.readouterr().err
    bad = tmp_path / "only_bad"
    bad.mkdir()
    (bad / "x.jpg").write_text("nope")
    assert main(["--input", str(bad), "--output", str(tmp_path / "o2"), *FAST]) == 1


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--input", str(SAMPLES), "--output", str(blocker / "sub"), *FAST]) == 2
    assert "not writable" in capsys.readouterr().err


def test_gpu_flag_without_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["--input", str(SAMPLES), "--output", "/tmp/unused", "--gpu", *FAST]) == 2
    assert "--gpu" in capsys.readouterr().err


def test_config_file_and_unknown_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: classic\ndivide:\n  max_cuts: 2\nmasks:\n  max_masks: 7\n")
    out = tmp_path / "out"
    img = sorted(SAMPLES.glob("*.jpg"))[0]
    assert main(["--input", str(img), "--output", str(out), "--config", str(cfg), "--workers", "0", "--quiet"]) == 0
    d = json.loads((out / img.with_suffix(".json").name).read_text())
    assert 0 < len(d["annotations"]) <= 7
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["divide"]["max_cuts"] == 2 and saved["backbone"] == "classic"
    with pytest.raises(ValueError, match="unknown key 'divide.nope'"):
        config_from_dict({"divide": {"nope": 1}})


def test_tiny_vit_checkpoint_through_the_dino_path(tmp_path):
    from unsam.label.features import build_extractor

    model = build_extractor("vit_tiny_test", pretrained=False)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.model.state_dict().items()}}, ckpt)
    lab = Labeler(LabelConfig(backbone="vit_tiny_test", checkpoint=str(ckpt), divide_size=128))
    im = np.asarray(Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB"))
    anns = lab.label_batch([im])[0]
    assert anns and all(a["segmentation"]["size"] == list(im.shape[:2]) for a in anns)
    anns2 = Labeler(LabelConfig(backbone="vit_tiny_test", checkpoint=str(ckpt), divide_size=128)).label_batch([im])[0]
    assert anns == anns2


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw)


def test_torchrun_two_processes_share_the_work(tmp_path):
    out = tmp_path / "out"
    r = _run_cli(
        ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", "-m", "unsam.label",
         "--input", str(SAMPLES), "--output", str(out), *FAST, "--max-cuts", "1"],
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["images_labeled"] == 3
    per_rank = sorted(x["images_labeled"] for x in s["per_rank"])
    assert per_rank == [1, 2]
    assert len(list(out.glob("coco_*.json"))) == 3


def test_sigkill_leaves_no_half_written_json(tmp_path):
    """SIGKILL of the labeler (its watching process: the default) at a random moment: its
    labeling child and workers die with it (nothing goes on writing), every JSON visible is
    complete, and the same command again finishes the rest, leaving no temporary file."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    src = sorted(SAMPLES.glob("*.jpg"))
    for i in range(6):
        shutil.copy(src[i % 3], imgs / f"img{i}.jpg")
    out = tmp_path / "out"
    args = ["--input", str(imgs), "--output", str(out), "--backbone", "classic", "--workers", "1", "--quiet", "--max-cuts", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "unsam.label", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("img*.json"))) < 2:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = sorted(out.glob("img*.json"))
    assert done, "nothing was written before the kill"
    time.sleep(3)
    assert sorted(out.glob("img*.json")) == done, "a process went on labeling after the kill"
    for f in done:
        assert json.loads(f.read_text())["annotations"]  # every visible JSON is complete
    # Resume finishes the rest without redoing the finished ones.
    stamps = {f: f.stat().st_mtime_ns for f in done}
    assert main([*args, "--image-timeout", "0"]) == 0
    assert len(list(out.glob("img*.json"))) == 6
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())
    leftovers = [q for q in out.rglob("*") if q.is_file() and q.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_clip_to_parent_gives_an_exactly_nested_hierarchy():
    img = np.asarray(Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB"))
    cfg = config_from_dict({"masks": {"clip_to_parent": True}, "divide": {"max_cuts": 3}}, LabelConfig(backbone="classic"))
    anns = Labeler(cfg).label_batch([img])[0]
    masks = {a["id"]: mask_utils.decode(a["segmentation"]).astype(bool) for a in anns}
    with_parent = [a for a in anns if a["parent_id"] is not None]
    assert len(with_parent) > 10
    for a in with_parent:
        assert not (masks[a["id"]] & ~masks[a["parent_id"]]).any()


def test_partition_levels_are_the_ladder_and_depth_mode_restores_depth():
    """Default levels: level l of the BSDS-style partition rule is the ladder's cut l (the
    other masks lie below its finest level), cut at region counts 1, 2, 3, 4, 5, ...;
    levels = "depth" gives containment depth again; partition_rule = "similarity" cuts by
    merge strength, 34 thresholds after the whole image."""
    from unsam.evaluate import level_partitions

    img = np.asarray(Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB"))
    base = {"divide": {"max_cuts": 3}}
    anns = Labeler(config_from_dict(base, LabelConfig(backbone="classic"))).label_batch([img])[0]
    part = [a for a in anns if a["source"] == "partition"]
    levels = sorted({a["level"] for a in part})
    assert levels == list(range(len(levels))) and len(levels) >= 10
    h, w = img.shape[:2]
    # Painted alone, the ladder's regions give complete partitions, finer level by level.
    counts = [int(p.max()) for p in level_partitions(part, h, w)]
    assert counts[0] == 1 and counts == sorted(counts) and counts[-1] > 50
    # With every mask, the ladder's levels are exactly its partitions (the other masks
    # start below the finest level), then the partitions get finer still.
    full = [int(p.max()) for p in level_partitions(anns, h, w)]
    assert full[: len(counts)] == counts and full[-1] >= counts[-1]
    assert counts[:5] == [1, 2, 3, 4, 5]
    by_sim = Labeler(config_from_dict({**base, "atoms": {"partition_rule": "similarity"}}, LabelConfig(backbone="classic")))
    s = [a for a in by_sim.label_batch([img])[0] if a["source"] == "partition"]
    assert max(a["level"] for a in s) <= 34
    sc = [int(p.max()) for p in level_partitions(s, h, w)]
    assert sc[0] == 1 and sc == sorted(sc) and sc[-1] > 50
    deep = Labeler(config_from_dict({**base, "masks": {"levels": "depth"}}, LabelConfig(backbone="classic")))
    d = deep.label_batch([img])[0]
    by_id = {a["id"]: a for a in d}
    assert all(a["level"] == (0 if a["parent_id"] is None else by_id[a["parent_id"]]["level"] + 1) for a in d)
    with pytest.raises(ValueError, match="masks.levels"):
        Labeler(config_from_dict({**base, "masks": {"levels": "bogus"}}, LabelConfig(backbone="classic"))).label_batch([img])


def test_cpu_workers_give_the_same_labels_and_overlap_batches(labeled, tmp_path):
    """--cpu-workers: the per-image CPU stages in spawned processes, one batch in flight."""
    out = tmp_path / "w"
    assert main(["--input", str(SAMPLES), "--output", str(out), *FAST, "--cpu-workers", "1", "--batch-size", "2"]) == 0
    for p in sorted(SAMPLES.glob("*.jpg")):
        a = json.loads((out / p.with_suffix(".json").name).read_text())["annotations"]
        b = json.loads((labeled / p.with_suffix(".json").name).read_text())["annotations"]
        assert a == b
    s = json.loads((out / "summary.json").read_text())
    assert s["images_labeled"] == 3 and {"atoms_merge", "masks"} <= set(s["stage_s"])
    with pytest.raises(ValueError, match="cpu_workers"):
        Labeler(LabelConfig(backbone="classic"), cpu_workers=-1)


def test_an_image_failing_in_the_cpu_stages_is_skipped_with_its_reason(tmp_path, monkeypatch):
    from unsam.label import pipeline

    real = pipeline.ImageStages.__call__

    def tail(self, im, items, snap, feats_i, work_hw, times, name="", on_stage=None):
        if im.shape[0] == 240:  # exactly one of the samples is 240 high
            on_stage("masks")
            raise RuntimeError("planted failure")
        return real(self, im, items, snap, feats_i, work_hw, times, name, on_stage)

    heights = [Image.open(p).size[1] for p in sorted(SAMPLES.glob("*.jpg"))]
    assert heights.count(240) == 1
    monkeypatch.setattr(pipeline.ImageStages, "__call__", tail)
    out = tmp_path / "out"
    assert main(["--input", str(SAMPLES), "--output", str(out), *FAST, "--max-cuts", "1", "--batch-size", "3"]) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["images_labeled"] == 2 and s["images_failed"] == 1
    assert "planted failure" in s["failed"][0]["reason"] and s["failed"][0]["reason"].startswith("error: RuntimeError")
    assert s["failed"][0]["stage"] == "masks"
    assert len([p for p in out.glob("*.json") if p.name != "summary.json"]) == 2


def test_a_dead_cpu_worker_fails_its_images_and_the_pool_restarts():
    import os
    import signal

    img = np.asarray(Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB"))
    cfg = config_from_dict({"divide": {"max_cuts": 1}}, LabelConfig(backbone="classic"))
    with Labeler(cfg, cpu_workers=1) as lab:
        first = lab.label_batch([img])[0]
        for pid in list(lab._pool._processes):  # the worker dies (as if killed for memory)
            os.kill(pid, signal.SIGKILL)
        futs = lab.submit_batch([img])
        got = lab.collect(futs, errors="return")
        # The image in flight fails (or, if the death was noticed first, went to a fresh pool).
        assert isinstance(got[0], Exception) or got[0] == first
        assert lab.label_batch([img])[0] == first  # a fresh pool serves the next images


def test_auto_cpu_workers():
    from unsam.label.cli import auto_cpu_workers

    assert auto_cpu_workers(True, True, 16) == 13  # 16 cores - this process - 2 decoding workers
    assert auto_cpu_workers(True, True, 64, world=8) == 5  # 8 ranks share 64 cores
    assert auto_cpu_workers(True, True, 128) == 16  # capped
    assert auto_cpu_workers(True, True, 2) == 0
    assert auto_cpu_workers(True, False, 16) == 0  # no atom stage: the host work is light
    assert auto_cpu_workers(False, True, 16) == 0  # CPU run: the kernels use the cores
