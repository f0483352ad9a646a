"""A large image, sized for CI (3000 x 2000 = 6 Mpx, synthetic), with every preset: labels at
full size within a bounded peak memory. The 50 Mpx case (the largest the defaults accept)
is the scale benchmark's (``benchmarks/test_scale_bench.py``; README "Labeling at scale")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsam.io import validate_label_json

ROOT = Path(__file__).resolve().parents[1]
#: Peak resident memory allowed at 6 Mpx (measured 0.68-0.82 GiB; 0.65 GiB is torch imported).
PEAK_GIB = 1.1


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    h, w = 2000, 3000
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1).astype(np.uint8)
    for _ in range(30):  # objects: rectangles of flat colour
        y0, x0 = int(rng.integers(0, h - 100)), int(rng.integers(0, w - 100))
        img[y0 : y0 + int(rng.integers(60, 700)), x0 : x0 + int(rng.integers(60, 900))] = rng.integers(0, 256, 3)
    folder = tmp_path_factory.mktemp("big")
    Image.fromarray(img).save(folder / "big.png")
    return folder


@pytest.mark.parametrize("preset", ["maskcut", "unsam", "full"])
def test_a_6_mpx_image_labels_within_bounded_memory(big, tmp_path, preset):
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "unsam.label", "--input", str(big), "--output", str(out), "--backbone", "classic",
         "--preset", preset, "--image-timeout", "0", "--workers", "0", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    # The labeling process's own peak (VmHWM; the summary says it for every run).
    peak = json.loads((out / "summary.json").read_text())["peak_rss_gib"]
    assert 0.3 < peak <= PEAK_GIB, f"{preset}: peak {peak:.2f} GiB"
    rec = json.loads((out / "big.json").read_text())
    assert not validate_label_json(rec, check_masks=True)
    assert rec["image"]["width"] == 3000 and rec["annotations"]
