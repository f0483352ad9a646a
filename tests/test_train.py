"""Training end to end on pseudo-labels of the real sample images: learning, predict -> evaluate, DDP, resume, errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from unsam.io import read_label_json
from unsam.train import (
    CONFIG_DIR,
    ConfigError,
    TrainConfig,
    Trainer,
    config_from_dict,
    load_config,
    main,
)
from unsam.train.config import validate
from unsam.train.data import load_records
from unsam.train.optim import lr_factor
from unsam.train.validate import coco_mask_ar, gt_coco_from_records

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """Pseudo-labels of the sample images, made the way train_smoke.yaml makes them (data.make_labels)."""
    out = tmp_path_factory.mktemp("train")
    cfg = config_from_dict({
        "data": {"train": "{output}/labels", "make_labels": {"images": str(IMAGES), "args": ["--backbone", "classic", "--max-cuts", "3", "--divide-size", "240"]}},
    })  # fmt: skip
    Trainer(cfg, out)._ensure_labels()
    assert len(list((out / "labels").glob("coco_*.json"))) == 3
    return out / "labels"


def tiny(labels, **groups) -> TrainConfig:
    base = {
        "model": {"name": "unsam_whole_tiny", "kwargs": {"num_queries": 24, "dec_layers": 2}},
        # Masks of >= 400 px in a 96 px crop: the random 2-block ViT learns large masks first.
        "data": {"train": str(labels), "crop_size": 96, "scale_range": [0.8, 1.25], "max_masks": 24, "min_mask_area": 400, "clicks": 4, "workers": 0},
        "optim": {"lr": 2e-3, "backbone_lr_mult": 1.0},
        "sched": {"name": "cosine", "warmup_steps": 3},
        "loss": {"num_points": 256},
        "train": {"steps": 40, "batch_size": 2, "device": "cpu", "threads": 1, "log_every": 1, "ckpt_every": 40, "keep_checkpoints": 0},
        "eval": {"max_images": 2, "topk": 50, "max_clicks": 4},
    }
    for g, v in groups.items():
        base[g] = {**base.get(g, {}), **v}
    return config_from_dict(base)


def _falls(rows, key="loss", k=5) -> float:
    """Mean of the last k values over the mean of the first k."""
    first = sum(r[key] for r in rows[:k]) / k
    last = sum(r[key] for r in rows[-k:]) / k
    return last / first


def test_whole_image_model_learns_predicts_and_evaluates(labels, tmp_path):
    out = tmp_path / "whole"
    rows = Trainer(tiny(labels, data={"val": str(labels)}, train={"steps": 60}), out).fit()
    assert [r["step"] for r in rows] == list(range(1, 61))
    ratio = _falls(rows)
    print("whole-image loss:", [round(r["loss"], 2) for r in rows[::6]], "last/first", round(ratio, 3), "dice", round(_falls(rows, "loss_dice"), 3))
    assert ratio < 0.8, f"loss did not fall clearly: {rows[0]['loss']:.2f} -> {rows[-1]['loss']:.2f}"
    assert _falls(rows, "loss_dice") < 0.95 and _falls(rows, "loss_mask") < 0.95
    assert all(k in rows[0] for k in ("loss_ce", "loss_mask", "loss_dice", "lr", "images_per_s"))
    # Outputs of the run.
    for f in ("config.yaml", "log.txt", "metrics.jsonl", "eval.jsonl", "model.pt", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    ev = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    assert ev["step"] == 60 and 0.0 <= ev["AR@1000"] <= 1.0 and ev["images"] == 2
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"]["train"] == str(labels) and resolved["_run"]["world_size"] == 1

    # predict -> the labeler's format -> evaluate.
    from unsam.models.predict import main as predict_main

    pred_dir = tmp_path / "pred"
    assert predict_main(["--checkpoint", str(out / "model.pt"), "--input", str(IMAGES), "--output", str(pred_dir), "--limit", "2", "--topk", "30", "--quiet"]) == 0
    files = sorted(pred_dir.glob("*.json"))
    assert len(files) == 2
    objs = [read_label_json(f) for f in files]
    assert all(o is not None for o in objs)
    anns = objs[0]["annotations"]
    assert len(anns) <= 30 and all(a.get("origin") == "model" for a in anns)
    recs = load_records(labels, limit=2)
    gt = gt_coco_from_records(recs)
    by_name = {i["file_name"]: i["id"] for i in gt["images"]}
    results = [{"image_id": by_name[o["image"]["file_name"]], "segmentation": a["segmentation"], "score": a["score"]} for o in objs for a in o["annotations"]]
    m = coco_mask_ar(gt, results)
    assert set(m) >= {"AR@10", "AR@100", "AR@1000", "AP", "images"} and m["images"] == 2
    # A promptable flag on a whole-image checkpoint is a clear error.
    assert predict_main(["--checkpoint", str(out / "model.pt"), "--input", str(IMAGES), "--output", str(pred_dir), "--points", "1,1"]) == 2

    # One self-training round straight from the checkpoint.
    from unsam.train.selftrain import main as selftrain_main

    st = tmp_path / "round2"
    assert selftrain_main(["--labels", str(labels), "--checkpoint", str(out / "model.pt"), "--output", str(st), "--limit", "1", "--score", "0.0"]) == 0
    (obj,) = [read_label_json(f) for f in st.glob("*.json") if f.name != "summary.json"]
    assert obj is not None and any(a.get("origin") == "model" for a in obj["annotations"])


def test_promptable_model_learns_and_point_evaluation_runs(labels, tmp_path):
    out = tmp_path / "prompt"
    # Clicks are drawn afresh for every sample, so this task has no quick objectness term to learn;
    # without scale jitter and flips the tiny model fits the three images within a few dozen steps.
    cfg = tiny(labels, model={"name": "unsam_prompt_tiny", "kwargs": {"depth": 1}}, data={"scale_range": [1.0, 1.0], "hflip": False}, train={"steps": 60})
    rows = Trainer(cfg, out).fit()
    ratio = _falls(rows)
    print("promptable loss:", [round(r["loss"], 2) for r in rows[::6]], "last/first", round(ratio, 3), "dice", round(_falls(rows, "loss_dice"), 3))
    assert ratio < 0.9, f"loss did not fall clearly: {rows[0]['loss']:.2f} -> {rows[-1]['loss']:.2f}"
    assert _falls(rows, "loss_dice") < 0.95 and _falls(rows, "loss_iou") < 0.5

    from unsam.evaluate.points import main as points_main

    js = tmp_path / "points.json"
    rc = points_main(["--checkpoint", str(out / "model.pt"), "--gt", str(labels), "--limit", "1", "--max-masks-per-image", "4", "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())
    assert res["masks"] == 4 and res["outputs_per_click"] == 6
    assert 0.0 <= res["MaxIoU"] <= res["OracleIoU"] <= 1.0

    from unsam.models.predict import main as predict_main

    pred_dir = tmp_path / "clicks"
    img = IMAGES / "coco_062554.jpg"
    assert predict_main(["--checkpoint", str(out / "model.pt"), "--input", str(img), "--output", str(pred_dir), "--points", "100,100", "200,50"]) == 0
    obj = read_label_json(pred_dir / "coco_062554.json")
    assert obj is not None
    assert {a["point_index"] for a in obj["annotations"]} <= {0, 1}
    assert all(a["point"] in ([100.0, 100.0], [200.0, 50.0]) for a in obj["annotations"])
    # Without clicks a promptable checkpoint is refused.
    assert predict_main(["--checkpoint", str(out / "model.pt"), "--input", str(img), "--output", str(pred_dir)]) == 2
    assert points_main(["--checkpoint", str(out / "nope.pt"), "--gt", str(labels)]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(labels, tmp_path):
    """torchrun with 2 CPU processes (gloo), global batch 4 = 2 x 2, against one process with batch 4."""
    over = {"train": {"steps": 3, "batch_size": 4, "ckpt_every": 3}, "sched": {"warmup_steps": 0}}
    cfg = tiny(labels, **over)
    one = tmp_path / "one"
    rows1 = Trainer(cfg, one).fit()
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny(labels, **over).to_dict()))
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "unsam.train", "--config", str(cfg_file), "--output", str(two)]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows2 = [json.loads(ln) for ln in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows2] == [1, 2, 3]
    for a, b in zip(rows1, rows2):
        for k in ("loss", "loss_ce", "loss_mask", "loss_dice"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (k, a, b)
    assert yaml.safe_load((two / "config.yaml").read_text())["_run"]["world_size"] == 2
    w1 = torch.load(one / "model.pt", weights_only=True)["model"]
    w2 = torch.load(two / "model.pt", weights_only=True)["model"]
    for k in w1:
        # Adam divides by sqrt(v): a near-zero gradient summed in another order can move its weight by up to ~lr.
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=1e-3)


class _Kill(Exception):
    pass


def test_resume_after_kill_continues_identically(labels, tmp_path):
    over = {"train": {"steps": 6, "ckpt_every": 3}, "sched": {"warmup_steps": 2}}
    ref = Trainer(tiny(labels, **over), tmp_path / "ref").fit()

    def die(step, losses):
        if step == 5:  # after the checkpoint of step 3: steps 4 and 5 are lost
            raise _Kill

    run = tmp_path / "run"
    with pytest.raises(_Kill):
        Trainer(tiny(labels, **over), run, on_step=die).fit()
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 3 and ck["scheduler"]["last_epoch"] == 3
    rows = Trainer(tiny(labels, **over), run).fit()  # the same command again
    assert [r["step"] for r in rows] == [4, 5, 6]
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]  # rows of the lost steps were dropped
    for a, b in zip(ref, logged):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-6, rtol=1e-5)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k]["step"] == sb[k]["step"]
        torch.testing.assert_close(sb[k]["exp_avg_sq"], sa[k]["exp_avg_sq"], atol=1e-8, rtol=1e-5)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    # A finished run resumed again does nothing; a different model in the same folder is refused.
    assert Trainer(tiny(labels, **over), run).fit() == []
    with pytest.raises(ConfigError, match="cannot resume"):
        Trainer(tiny(labels, model={"kwargs": {"num_queries": 8}}, **over), run).fit()


# ----------------------------------------------------------------------------- config & errors


def test_lr_schedule():
    s = config_from_dict({"sched": {"name": "cosine", "warmup_steps": 10, "warmup_factor": 0.1, "min_lr_ratio": 0.0}}).sched
    assert lr_factor(0, s, 110) == pytest.approx(0.1)
    assert lr_factor(5, s, 110) == pytest.approx(0.55)
    assert lr_factor(10, s, 110) == pytest.approx(1.0)
    assert lr_factor(60, s, 110) == pytest.approx(0.5)
    assert lr_factor(110, s, 110) == pytest.approx(0.0, abs=1e-12)
    st = config_from_dict({"sched": {"name": "step", "milestones": [5, 8], "gamma": 0.5}}).sched
    assert [lr_factor(i, st, 10) for i in (0, 4, 5, 8, 9)] == [1.0, 1.0, 0.5, 0.25, 0.25]


def test_shipped_configs_are_valid():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert names == ["promptable_gpu", "train_smoke", "whole_gpu"]
    for n in names:
        cfg = load_config(n)
        if cfg.data.train is None:
            cfg = config_from_dict({"data": {"train": "x"}}, cfg)
        validate(cfg)
    assert load_config("whole_gpu").model.name == "unsam_whole_vitb8"
    assert load_config("promptable_gpu").model.name == "unsam_prompt_vitb8"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "optim.lr=-1"], "optim.lr should be > 0"),
        (["--set", "optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["--set", "nope.x=1"], "unknown group 'nope'"),
        (["--set", "train.steps=many"], "train.steps should be an integer"),
        (["--set", "data.scale_range=[2, 1]"], "data.scale_range should be"),
        (["--set", "sched.name=linear"], "sched.name should be cosine, step or constant"),
        (["--set", "model.name=unsam_whole_huge"], "not a registered model"),
        (["--set", "optim.lr"], "expected GROUP.KEY=VALUE"),
        (["--set", "data.crop_size=100"], "multiple of the backbone's patch size 8"),
        (["--config", "no_such_config.yaml"], "no such file"),
    ],
)
def test_bad_config_values(labels, tmp_path, capsys, args, message):
    rc = main(["--output", str(tmp_path / "o"), "--train", str(labels), "--steps", "1", "--device", "cpu", *args])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_and_empty_data(labels, tmp_path, capsys):
    o = str(tmp_path / "o")
    assert main(["--output", o, "--steps", "1"]) == 2
    assert "data.train is not set" in capsys.readouterr().err
    assert main(["--output", o, "--train", str(tmp_path / "missing"), "--steps", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--output", o, "--train", str(empty), "--steps", "1"]) == 2
    assert "is empty" in capsys.readouterr().err
    # Images that all lost their masks (here: every mask below data.min_mask_area).
    assert main(["--output", o, "--train", str(labels), "--steps", "1", "--set", "data.min_mask_area=100000000"]) == 2
    assert "no masks" in capsys.readouterr().err
    assert main(["--output", o, "--train", str(labels), "--image-root", str(tmp_path), "--steps", "1"]) == 2
    assert "image files not found" in capsys.readouterr().err
    assert main(["--output", o, "--train", str(labels), "--resume", str(tmp_path / "no.pt"), "--steps", "1"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
