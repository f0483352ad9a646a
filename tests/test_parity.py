"""Parity of the presets with the published code's semantics, on real images.

A reference pipeline built from ports of the published loops (``unsam.published``:
dense affinities and the dense generalized eigensolver per cut, MaskCut's
bipartition and drop rule, UnSAM's merge loop, every mask upsampled and compared
one full-size array at a time) and the presets, run on the same features, must
give the same masks:

- ``maskcut``: the same count, each mask matched one to one at IoU >= 0.99;
- ``unsam``: >= 98 % of the reference's masks matched one to one at IoU >= 0.95
  and vice versa, and the matched masks have the same parent links.

Two kinds of features: ``classic`` and a random-weight ViT with DINO ViT-B/8's
patch (8) and key size (C = 768); it has 2 blocks instead of 12 to keep the CPU
test short (the features' shape, not their depth, is what the kernels see).
The eigenvector's sign is LAPACK's choice in the published code; both sides here
use the divide's documented rule (``unsam.label.divide.canonical_sign``), and the
reference's merge loop runs in float64, the kernel's precision (README,
"Differences from the published code").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from unsam import published
from unsam.io import load_image
from unsam.label import Labeler, label_config


@pytest.fixture(scope="module")
def bsds(data_dir):
    files = sorted((data_dir / "bsds500" / "images" / "val").glob("*.jpg"))
    if len(files) < 2:
        pytest.skip("BSDS500 val images not found")
    return [load_image(f) for f in files[:2]]


@pytest.fixture(scope="module", params=["classic", "vitb8"])
def features(request):
    if request.param == "classic":
        return "classic", None
    pytest.importorskip("timm")
    from benchmarks._util import vit_b8_shaped

    return "dino_vitb8", vit_b8_shaped()


def _labeler(preset: str, features) -> Labeler:
    backbone, extractor = features
    return Labeler(label_config({"backbone": backbone}, preset=preset), extractor=extractor)


def _decode(anns: list[dict]) -> list[np.ndarray]:
    return [
        mask_utils.decode(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())).astype(bool) for a in anns
    ]


def _match(ref: list[np.ndarray], ours: list[np.ndarray], thr: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """One-to-one matching with the highest total IoU; pairs below thr are not matches."""
    if not ref or not ours:
        return [], np.zeros((len(ref), len(ours)))
    a = np.stack([m.ravel() for m in ref]).astype(np.float32)
    b = np.stack([m.ravel() for m in ours]).astype(np.float32)
    inter = a @ b.T
    iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1.0)
    rows, cols = linear_sum_assignment(-iou)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if iou[i, j] >= thr], iou


def test_maskcut_preset_gives_the_published_masks(bsds, features):
    lab = _labeler("maskcut", features)
    img = bsds[1]
    ours = _decode(lab.label_batch([img])[0])
    t = lab.to_device([img])[0]
    feats = lab.divide_features([t])[0]
    ref = published.run_maskcut(feats, lab.cfg, img.shape[:2], lab.divide_side(), sign=published.tie_sign)
    assert len(ref) >= 1
    pairs, iou = _match(ref, ours, 0.99)
    assert len(ours) == len(ref), (len(ours), len(ref))
    assert len(pairs) == len(ref), np.round(iou, 4)


def test_unsam_preset_matches_the_published_loops(bsds, features):
    lab = _labeler("unsam", features)
    img = bsds[0]
    anns = lab.label_batch([img])[0]
    ours = _decode(anns)
    t = lab.to_device([img])[0]
    feats = lab.divide_features([t])[0]
    ref = published.run_unsam(
        t, feats, lab.extractor, lab.cfg, lab.divide_side(), sign=published.tie_sign, merge_dtype=torch.float64
    )
    assert len(ref["masks"]) >= 10 and {"divide", "conquer"} <= set(ref["sources"])
    pairs, _ = _match(ref["masks"], ours, 0.95)
    assert len(pairs) >= 0.98 * len(ref["masks"]), (len(pairs), len(ref["masks"]))
    assert len(pairs) >= 0.98 * len(ours), (len(pairs), len(ours))
    # Parents: a matched mask's parent is the match of the reference's parent (or both are roots).
    index = {a["id"]: k for k, a in enumerate(anns)}
    our_parent = [index[a["parent_id"]] if a["parent_id"] is not None else -1 for a in anns]
    to_ours = dict(pairs)
    same = sum(
        (ref["parents"][i] < 0 and our_parent[j] < 0) or (ref["parents"][i] >= 0 and to_ours.get(ref["parents"][i]) == our_parent[j])
        for i, j in pairs
    )
    assert same >= 0.98 * len(pairs), (same, len(pairs))
    levels = [a["level"] for a in anns]
    assert max(levels) >= 2  # the merge tree gives a hierarchy several levels deep


def test_merge_loop_port_partitions_like_the_kernel():
    """The published loop (run in float64) and merge_levels make the same clusters at every
    threshold on features that merge at several thresholds."""
    from benchmarks._util import part_feats
    from unsam.kernels import merge_levels

    f = part_feats(seed=3, c=32, h=12, w=12)
    thr = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    labels = merge_levels(f, thr).numpy()
    tree: dict = {}
    published.iterative_merge(f.double(), thr, 1, tree, torch.float64)
    clusters = tree["clusters"]
    for lv, ids in enumerate(tree["levels"]):
        alive = [c for c in range(tree["created"][lv]) if c not in tree["into"] or tree["into"][c] >= tree["created"][lv]]
        port = {frozenset(np.flatnonzero(np.asarray(clusters[c]["mask"]).ravel() > 0)) for c in alive}
        ours = {frozenset(np.flatnonzero(labels[lv].ravel() == v)) for v in np.unique(labels[lv])}
        assert port == ours, lv
        # The published collection quirk: only clusters that still have an edge are emitted.
        assert set(ids) <= set(alive)
    assert len({len(np.unique(level)) for level in labels}) >= 3
