"""Parity of the presets with the ports of the released code at full size, on 10 BSDS500 val
images per feature kind (``classic`` and a random-weight ViT of DINO ViT-B/8's shape, C = 768).

Run: ``pytest benchmarks/ --benchmark -s -k parity`` (about 15 minutes on 2 cores: the ports
run the dense solvers and the Python merge loop). ``UNSAM_PARITY_IMAGES=N`` changes the
number of images. What is compared and how: ``benchmarks/parity.py``; the quick version on
the example images is ``tests/test_parity.py``.

Targets: ``maskcut`` the same masks (same count, each matched at IoU >= 0.99) on every
image (none on both sides where the CRF step drops them all); ``unsam`` >= 98 % of the port's masks matched one to one at IoU >= 0.95 and
>= 98 % of ours, >= 98 % of the matched masks with the same parent, over the set.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks._util import DATA, record, vit_b8_shaped
from benchmarks.parity import maskcut_parity, unsam_parity
from unsam.io import load_image
from unsam.label import Labeler, label_config

pytestmark = pytest.mark.benchmark


@pytest.mark.parametrize("kind", ["classic", "vitb8"])
def test_parity_bsds(kind):
    files = sorted((DATA / "bsds500" / "images" / "val").glob("*.jpg"))
    if not files:
        pytest.skip(f"no BSDS500 val images under {DATA}")
    n = int(os.environ.get("UNSAM_PARITY_IMAGES", 10))
    images = [load_image(f) for f in files[:n]]
    backbone, ex = ("classic", None) if kind == "classic" else ("dino_vitb8", vit_b8_shaped())
    mc = Labeler(label_config({"backbone": backbone}, preset="maskcut"), extractor=ex)
    un = Labeler(label_config({"backbone": backbone}, preset="unsam"), extractor=ex)
    rows = []
    for f, img in zip(files, images):
        m = maskcut_parity(mc, img)
        u = unsam_parity(un, img)
        rows.append(dict(image=f.name, features=kind, maskcut_ref=m["ref"], maskcut_ours=m["ours"], maskcut_matched=m["matched"],
                         maskcut_min_iou=m["min_iou"], unsam_ref=u["ref"], unsam_ours=u["ours"], unsam_matched=u["matched"],
                         unsam_same_parents=u["same_parents"]))
    tot = {k: int(np.sum([r[k] for r in rows])) for k in ("unsam_ref", "unsam_ours", "unsam_matched", "unsam_same_parents")}
    rows.append(dict(image="all", features=kind, maskcut_images_identical=sum(r["maskcut_ref"] == r["maskcut_ours"] == r["maskcut_matched"] for r in rows),
                     **tot, unsam_matched_of_ref=tot["unsam_matched"] / max(tot["unsam_ref"], 1),
                     unsam_matched_of_ours=tot["unsam_matched"] / max(tot["unsam_ours"], 1),
                     unsam_same_parents_of_matched=tot["unsam_same_parents"] / max(tot["unsam_matched"], 1)))
    record(f"parity_bsds500_{kind}", rows)
    for r in rows[:-1]:  # MaskCut's CRF step may drop every mask of an image: then both sides have none
        assert r["maskcut_ours"] == r["maskcut_ref"] == r["maskcut_matched"], r
    assert sum(r["maskcut_ref"] for r in rows[:-1]) >= len(rows) - 1, rows  # not vacuous: masks on most images
    s = rows[-1]
    assert s["unsam_matched_of_ref"] >= 0.98 and s["unsam_matched_of_ours"] >= 0.98, s
    assert s["unsam_same_parents_of_matched"] >= 0.98, s
