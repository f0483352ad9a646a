"""Labeling at scale, measured: kills and resumes, several nodes under torchrun, the largest
image the defaults accept, and the fuzzers run long.

Run: ``pytest benchmarks/ --benchmark -s -k scale`` (about 15 minutes on 2 cores).

Targets (issue 18), each asserted:

- 10 SIGKILLs at random moments of a 500-image run, then the same command again: 0 lost
  images, 0 partial files, every label byte for byte the uninterrupted run's;
- ``torchrun --nnodes 1:2 --nproc-per-node 2`` as two nodes on this machine (c10d
  rendezvous on localhost): the union of their labels is the single-process run's; a node
  killed mid-run and started again finishes its share;
- peak memory of a 50 Mpx photo (a real SA-1B image upsampled) per preset, stated in README
  "Labeling at scale", asserted here;
- 100 000 fuzzed mask-stage inputs and 10 000 per op: 0 hangs, 0 crashes, 0 silent acceptance.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks._util import DATA, record

pytestmark = pytest.mark.benchmark
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--backbone", "classic", "--preset", "maskcut", "--divide-size", "160", "--quiet", "--workers", "1"]


def _images(folder: Path, n: int) -> Path:
    """n small, different images: crops of the sample images and BSDS500 at random places and scales."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((ROOT / "examples" / "images").glob("*.jpg")) + sorted((DATA / "bsds500" / "images" / "val").glob("*.jpg"))[:20]
    rng = np.random.default_rng(0)
    ims = [Image.open(p).convert("RGB") for p in sources]
    for i in range(n):
        im = ims[i % len(ims)]
        w, h = int(rng.integers(64, 160)), int(rng.integers(64, 160))
        x, y = int(rng.integers(0, im.width - w)), int(rng.integers(0, im.height - h))
        sub = folder / f"sub{i % 7}"  # nested folders: outputs keep the relative paths
        sub.mkdir(exist_ok=True)
        im.crop((x, y, x + w, y + h)).save(sub / f"im{i:04d}.png")
    return folder


def _digests(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.json")) if ".unsam" not in p.parts and p.name not in ("summary.json",)}


def _partial(out: Path) -> list[str]:
    bad = [p.as_posix() for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    for p in out.rglob("*.json"):
        if ".unsam" in p.parts:
            continue
        try:
            json.loads(p.read_text())
        except ValueError:
            bad.append(p.as_posix())
    return bad


def _label(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "unsam.label", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def five_hundred(tmp_path_factory):
    base = tmp_path_factory.mktemp("scale")
    imgs = _images(base / "imgs", 500)
    ref = base / "ref"
    t0 = time.perf_counter()
    r = _label(["--input", str(imgs), "--output", str(ref), *FAST], timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    return base, imgs, _digests(ref), time.perf_counter() - t0


def test_scale_ten_kills_then_resume_equals_the_uninterrupted_run(five_hundred):
    base, imgs, want, wall = five_hundred
    assert len(want) == 500
    out = base / "killed"
    rng = np.random.default_rng(1)
    moments, counts = [], []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for _ in range(10):
        delay = float(rng.uniform(1.0, max(2.0, wall / 6)))
        p = subprocess.Popen([sys.executable, "-m", "unsam.label", "--input", str(imgs), "--output", str(out), *FAST],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        moments.append(round(delay, 2))
        before = _digests(out)
        time.sleep(1.0)
        assert _digests(out) == before, "something went on writing after the kill"
        counts.append(len(before))
    r = _label(["--input", str(imgs), "--output", str(out), *FAST], timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    got = _digests(out)
    lost = sorted(set(want) - set(got))
    differ = sorted(k for k in want if k in got and got[k] != want[k])
    partial = _partial(out)
    record("scale_kill_resume", [dict(images=500, kills=10, kill_after_s=str(moments), labeled_at_each_kill=str(counts),
                                      lost=len(lost), differ=len(differ), partial_files=len(partial))])
    assert not lost and not differ and not partial, (lost[:5], differ[:5], partial[:5])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(port: int, imgs: Path, out: Path) -> list[subprocess.Popen]:
    """Node 0 first: its agent hosts the rendezvous store (as the head node of a cluster does),
    so that killing node 1 does not take the store with it."""
    first = _node(0, port, imgs, out)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    return [first, _node(1, port, imgs, out)]


def _node(rank: int, port: int, imgs: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc-per-node", "2", "--node-rank", str(rank),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "scale", "--max-restarts", "3",
           "-m", "unsam.label", "--input", str(imgs), "--output", str(out), *FAST]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_scale_two_nodes_under_torchrun(five_hundred, tmp_path):
    base, imgs, want, _ = five_hundred
    sub = tmp_path / "imgs"
    sub.symlink_to(imgs / "sub0", target_is_directory=True)  # 72 of the images: a shorter run
    single = tmp_path / "single"
    r = _label(["--input", str(sub), "--output", str(single), *FAST], timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = _digests(single)
    # 1. Two nodes of two processes: the union is the single-process labels.
    out = tmp_path / "nodes"
    port = _free_port()
    nodes = _nodes(port, sub, out)
    logs = [n.communicate(timeout=1800)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), logs[0][-3000:] + logs[1][-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 4 and s["ranks_reported"] == 4 and sorted(x["rank"] for x in s["per_rank"]) == [0, 1, 2, 3]
    per_rank = [x["images_labeled"] for x in s["per_rank"]]
    assert _digests(out) == ref and sum(per_rank) == len(ref)
    # 2. Node 1 killed mid-run (the whole node: its torchrun agent and everything under it),
    #    then started again: the run finishes, with the single-process labels.
    out2 = tmp_path / "nodes_killed"
    port = _free_port()
    nodes = _nodes(port, sub, out2)
    deadline = time.time() + 600
    while time.time() < deadline and len(_digests(out2)) < len(ref) // 4:
        time.sleep(0.2)
    os.killpg(nodes[1].pid, signal.SIGKILL)
    nodes[1].wait()
    at_kill = len(_digests(out2))
    nodes[1] = _node(1, port, sub, out2)
    logs = [n.communicate(timeout=1800)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), logs[0][-3000:] + logs[1][-3000:]
    got = _digests(out2)
    record("scale_torchrun_two_nodes", [dict(images=len(ref), nodes=2, procs_per_node=2, union_equals_single=True,
                                             per_rank=str(per_rank), labeled_at_node_kill=at_kill,
                                             after_restart_equals_single=got == ref, partial_files=len(_partial(out2)))])
    assert got == ref and not _partial(out2)


def test_scale_peak_memory_at_50_mpx(tmp_path):
    """The largest image the defaults accept (--max-pixels 50 M): a real SA-1B photo upsampled
    to 8660 x 5773, labeled with each preset (classic features, in one process: the peak of the
    labeling process itself). Target: the peaks README states (<= 2 GiB each)."""
    from PIL import Image

    src = sorted((DATA / "sa1b-samples").glob("*.jpg"))
    if not src:
        pytest.skip("no SA-1B sample")
    folder = tmp_path / "big"
    folder.mkdir()
    Image.open(src[0]).convert("RGB").resize((8660, 5773), Image.BICUBIC).save(folder / "big50.jpg", quality=92)
    rows = []
    for preset in ("maskcut", "unsam", "full"):
        r = _label(["--input", str(folder), "--output", str(tmp_path / preset), "--backbone", "classic", "--preset", preset,
                    "--image-timeout", "0", "--workers", "0", "--quiet"], timeout=1800)
        assert r.returncode == 0, r.stderr[-2000:]
        masks = len(json.loads((tmp_path / preset / "big50.json").read_text())["annotations"])
        peak = json.loads((tmp_path / preset / "summary.json").read_text())["peak_rss_gib"]  # the process's VmHWM
        rows.append(dict(preset=preset, megapixels=50.0, peak_rss_gib=peak, masks=masks))
    record("scale_peak_memory_50mpx", rows)
    for r in rows:
        assert r["peak_rss_gib"] <= 2.0, r


def test_scale_fuzz_long():
    """Ten times the test suite's fuzzing: 100 000 mask-stage inputs, 10 000 per op."""
    import tests.test_fuzz as fz
    import tests.test_fuzz_ops as fo

    t0 = time.perf_counter()
    written = 0
    for seed in range(fz.N_CASES, fz.N_CASES + 100_000):
        written += fz.run_case(seed)
    t1 = time.perf_counter()
    for op, fn in sorted(fo.OPS.items()):
        for seed in range(fo.N_PER_OP, fo.N_PER_OP + 10_000 * fo.SHARED.get(op, 1)):
            fn(np.random.default_rng([seed, sorted(fo.OPS).index(op)]))
    record("scale_fuzz", [dict(mask_stage_inputs=100_000, annotations=written, mask_stage_s=t1 - t0,
                               op_inputs=10_000 * sum(fo.SHARED.get(op, 1) for op in fo.OPS), ops_s=time.perf_counter() - t1, hangs=0, crashes=0)])
