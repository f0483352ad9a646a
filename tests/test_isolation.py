"""No single image can stop or hang a run: per-image isolation of ``python -m unsam.label``.

Faults are planted with ``UNSAM_INJECT_FAULT`` (``unsam/label/faults.py``): a stage of one
image raises, hangs or kills its process (SIGSEGV, as a crash in compiled code). The run
must record that image in ``summary.json`` (``failed``: path, stage, reason), label all the
others exactly as a clean run does, exit with status 1 and a one-line count, and
``--retry-failed`` must then label only the failed ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "examples" / "images").glob("*.jpg"))
FAST = ["--backbone", "classic", "--preset", "maskcut", "--workers", "0", "--quiet", "--divide-size", "160"]


def _images(tmp_path: Path, n: int) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(n):
        shutil.copy(SAMPLES[i % len(SAMPLES)], d / f"img{i}.jpg")
    return d


def _label(args: list[str], fault: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("UNSAM_INJECT_FAULT", None)
    if fault:
        env["UNSAM_INJECT_FAULT"] = fault
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("img*.json"))}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean run of 5 images: what every faulty run must give for the images it labels."""
    tmp = tmp_path_factory.mktemp("clean")
    imgs = _images(tmp, 5)
    r = _label(["-m", "unsam.label", "--input", str(imgs), "--output", str(tmp / "out"), *FAST])
    assert r.returncode == 0, r.stderr
    return imgs, _digests(tmp / "out")


def test_an_exception_a_hang_and_a_crash_fail_one_image_each(clean, tmp_path):
    """An exception in the divide, a hang on the CPU worker that runs the mask stage, a crash in
    the features: three images fail, each with its stage and reason; the others' labels are
    the clean run's."""
    imgs, want = clean
    out = tmp_path / "out"
    faults = "divide:img1:raise;masks:img2:hang;features:img3:crash"
    args = [*FAST, "--image-timeout", "4", "--cpu-workers", "1"]
    r = _label(["-m", "unsam.label", "--input", str(imgs), "--output", str(out), *args], faults)
    assert r.returncode == 1, r.stderr
    assert "3 image(s) failed" in r.stderr and "--retry-failed" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    failed = {Path(f["path"]).name: (f["stage"], f["reason"]) for f in s["failed"]}
    assert set(failed) == {"img1.jpg", "img2.jpg", "img3.jpg"}
    assert failed["img1.jpg"][0] == "divide" and "injected fault" in failed["img1.jpg"][1]
    assert failed["img2.jpg"][0] == "atoms+masks" and failed["img2.jpg"][1].startswith("timeout")
    assert failed["img3.jpg"][0] == "features" and "SIGSEGV" in failed["img3.jpg"][1]
    assert s["images_labeled"] == 2 and s["restarts"] == 2
    got = _digests(out)
    assert got == {k: v for k, v in want.items() if k in ("img0.json", "img4.json")}
    assert not list((out / ".unsam").glob("tmp-r*/*"))  # no temporary file left behind
    # --retry-failed labels only them (a plain rerun skips them: tests/test_label.py).
    r = _label(["-m", "unsam.label", "--input", str(imgs), "--output", str(out), *FAST, "--retry-failed"])
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["images_labeled"] == 3 and s["images_done_before"] == 0 and s["failed"] == []
    assert _digests(out) == want


def test_a_crash_in_a_batched_stage_is_traced_to_its_image(clean, tmp_path):
    """Three images in one batch when the process dies: they go again one at a time, so the
    culprit is the only one recorded and the other two are labeled."""
    imgs, want = clean
    out = tmp_path / "out"
    r = _label(["-m", "unsam.label", "--input", str(imgs), "--output", str(out), *FAST, "--batch-size", "3"], "divide:img1:crash")
    assert r.returncode == 1, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert [(Path(f["path"]).name, f["stage"]) for f in s["failed"]] == [("img1.jpg", "divide")]
    assert s["images_labeled"] == 4 and s["restarts"] == 2  # the batch's crash, then the culprit's alone
    assert _digests(out) == {k: v for k, v in want.items() if k != "img1.json"}


def test_torchrun_ranks_isolate_their_images(clean, tmp_path):
    imgs, want = clean
    out = tmp_path / "out"
    r = _label(
        ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531", "-m", "unsam.label",
         "--input", str(imgs), "--output", str(out), *FAST],
        "features:img2:crash",
    )  # fmt: skip
    assert r.returncode != 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and [Path(f["path"]).name for f in s["failed"]] == ["img2.jpg"]
    assert s["images_labeled"] == 4 and sorted(x["images_labeled"] for x in s["per_rank"]) == [2, 2]
    assert _digests(out) == {k: v for k, v in want.items() if k != "img2.json"}
