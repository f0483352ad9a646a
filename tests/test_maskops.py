"""The mask stage's compiled ops against their Python references (tests/reference/maskops.py, the oracle)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from tests.reference.maskops import (
    ReferenceMaskOps,
    cell_overlaps,
    nms_from_intersections_reference,
    parents_from_intersections_reference,
    upscale_crop,
)
from unsam.kernels.maskops import (
    mask_nms,
    mask_overlaps,
    mask_overlaps_upper,
    mask_parents,
    mask_rle,
)
from unsam.label.items import MaskItem


def _random_items(rng: np.random.Generator, k: int, h: int, w: int, nested: bool = True) -> list[MaskItem]:
    """Blobs, some nested in others, some sharing borders, some touching the image edges."""
    items = []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(k):
        if nested and items and rng.random() < 0.5:  # inside (mostly) an earlier mask
            p = items[rng.integers(len(items))]
            cy, cx = (p.box[1] + p.box[3]) / 2, (p.box[0] + p.box[2]) / 2
            r = max(1.0, min(p.box[3] - p.box[1], p.box[2] - p.box[0]) / 2 * rng.uniform(0.3, 1.0))
        else:
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(h, w) / 2)
        m = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.5, 2))) ** 2 < 1
        m &= rng.random((h, w)) > 0.05 * rng.random()  # ragged borders and holes
        if rng.random() < 0.1:
            m = np.ones((h, w), bool)  # the whole image
        item = MaskItem((0, 0, w, h), m, float(rng.random()), "atoms")
        if item.tighten() is not None:
            items.append(item)
    return items


class TestMaskOps:
    @pytest.mark.parametrize("seed,h,w", [(0, 40, 60), (1, 97, 31), (2, 128, 128), (3, 1, 50)])
    def test_overlaps_nms_parents_match_the_python_stage(self, seed, h, w):
        rng = np.random.default_rng(seed)
        items = _random_items(rng, 60, h, w)
        sparse = mask_overlaps([m.box for m in items], [m.crop for m in items], h, w)
        got = sparse.toarray()
        ref = cell_overlaps(items, h, w)
        assert got.dtype == np.int64 and np.array_equal(got, ref)
        # Brute force on full masks for the diagonal and a few pairs.
        full = []
        for m in items:
            a = np.zeros((h, w), bool)
            a[m.box[1] : m.box[3], m.box[0] : m.box[2]] = m.crop
            full.append(a)
        assert [got[i, i] for i in range(len(items))] == [int(a.sum()) for a in full]
        assert got[0, -1] == int((full[0] & full[-1]).sum())
        scores = rng.random(len(items))
        scores[:5] = scores[5]  # ties: area, then index decide
        prot = rng.random(len(items)) < 0.1
        assert sparse.nnz == np.count_nonzero(ref)  # only the overlapping pairs are stored
        for iou in (0.3, 0.9):
            assert mask_nms(sparse, scores, iou, prot) == nms_from_intersections_reference(ref, scores, iou, prot)
            assert mask_nms(got, scores, iou) == nms_from_intersections_reference(ref, scores, iou)
        for contain in (0.5, 0.9, 1.0):
            assert mask_parents(got, contain) == parents_from_intersections_reference(ref, contain)

    @pytest.mark.parametrize("seed", [0, 1])
    def test_the_upper_triangle_reads_as_the_whole_matrix(self, seed):
        """What the stage keeps (the op's upper triangle) gives the same areas, dense rows,
        narrowed sets and NMS as the whole matrix."""
        rng = np.random.default_rng(seed)
        h, w = 64, 80
        items = _random_items(rng, 70, h, w)
        items.append(MaskItem((3, 2, 3, 6), np.zeros((4, 0), bool), 0.5, "atoms"))  # empty: no diagonal entry
        upper = mask_overlaps_upper([m.box for m in items], [m.crop for m in items], h, w)
        ref = mask_overlaps([m.box for m in items], [m.crop for m in items], h, w).toarray()
        ind, ip = upper.indices.numpy(), upper.indptr.numpy()
        rows = np.repeat(np.arange(len(items)), np.diff(ip))
        assert (ind >= rows).all() and upper.values.numpy().size == np.count_nonzero(np.triu(ref))
        assert np.array_equal(upper.areas(), np.diag(ref)) and upper.areas()[-1] == 0
        assert np.array_equal(upper.dense(), ref)
        pick = rng.permutation(len(items))[:30]  # any order
        assert np.array_equal(upper.dense(pick), ref[np.ix_(pick, pick)])
        keep = np.sort(pick)
        narrowed = upper.select(keep)
        assert np.array_equal(narrowed.dense(), ref[np.ix_(keep, keep)])
        assert np.array_equal(narrowed.areas(), np.diag(ref)[keep])
        with pytest.raises(ValueError, match="increasing"):
            upper.select(keep[::-1])
        with pytest.raises(RuntimeError, match="twice"):
            upper.dense([1, 1])
        scores = rng.random(len(items))
        prot = rng.random(len(items)) < 0.1
        for iou in (0.2, 0.5, 0.9):
            assert mask_nms(upper, scores, iou, prot) == nms_from_intersections_reference(ref, scores, iou, prot)

    @pytest.mark.parametrize("seed,work,full", [(0, (40, 60), (40, 60)), (1, (40, 60), (97, 145)), (2, (33, 17), (100, 51)),
                                                (3, (1, 30), (3, 91)), (4, (64, 64), (64, 64))])
    def test_rle_is_what_pycocotools_writes_for_the_upscaled_mask(self, seed, work, full):
        rng = np.random.default_rng(seed)
        items = _random_items(rng, 40, *work, nested=False)
        # Masks touching the last pixel and covering whole columns: the runs' corner cases.
        last = np.zeros(work, bool)
        last[:, -2:] = True
        items.append(MaskItem((0, 0, work[1], work[0]), last, 1.0, "atoms").tighten())
        strings, areas, bboxes = mask_rle([m.box for m in items], [m.crop for m in items], work, *full)
        h, w = full
        for m, s, a, b in zip(items, strings, areas, bboxes):
            crop, box = m.crop, m.box
            if work != full:
                crop, box = upscale_crop(crop, box, w / work[1], h / work[0], h, w)
            big = np.zeros((h, w), np.uint8)
            big[box[1] : box[3], box[0] : box[2]] = crop
            enc = mask_utils.encode(np.asfortranarray(big))
            assert s == enc["counts"].decode("ascii")
            assert a == int(mask_utils.area(enc)) and list(b) == [float(v) for v in mask_utils.toBbox(enc)]

    def test_bad_inputs_name_the_problem(self):
        box = [(0, 0, 4, 4)]
        with pytest.raises(RuntimeError, match="not inside"):
            mask_overlaps([(0, 0, 5, 4)], [np.ones((4, 5), bool)], 4, 4)
        with pytest.raises(RuntimeError, match="shape"):
            mask_overlaps(box, [np.ones((3, 4), bool)], 4, 4)
        with pytest.raises(RuntimeError, match="at least the working resolution"):
            mask_rle(box, [np.ones((4, 4), bool)], (4, 4), 3, 8)
        assert mask_overlaps([], [], 4, 4).shape == (0, 0)
        assert mask_rle([], [], (4, 4), 4, 4)[0] == []

    def test_opcheck(self):
        b = torch.tensor([[0, 0, 3, 2], [1, 0, 4, 2]])
        c = [torch.ones(2, 3, dtype=torch.bool), torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)]
        torch.library.opcheck(torch.ops.unsam.mask_overlaps.default, (b, c, 4, 5), test_utils=("test_schema", "test_autograd_registration"))
        dense = torch.from_numpy(mask_overlaps(b.numpy(), [x.numpy() for x in c], 4, 5).toarray())
        torch.library.opcheck(torch.ops.unsam.mask_parents.default, (dense, 0.9))
        upper = torch.ops.unsam.mask_overlaps(b, c, 4, 5)
        torch.library.opcheck(torch.ops.unsam.mask_dense.default, (*upper, torch.tensor([1, 0])))


@pytest.mark.cuda
@pytest.mark.parametrize("seed,h,w", [(0, 40, 60), (1, 97, 31), (2, 128, 161), (3, 1, 70), (4, 481, 321)])
def test_cuda_mask_ops_match_the_cpu_ops(seed, h, w):
    """The CUDA backends give the CPU ops' arrays exactly (integers; the same float64 tests)."""
    rng = np.random.default_rng(seed)
    items = _random_items(rng, 80 if h * w < 100_000 else 300, h, w)
    items.append(MaskItem((2, 0, 2, 1), np.zeros((1, 0), bool), 0.5, "atoms"))  # an empty box
    boxes = torch.tensor([m.box for m in items], dtype=torch.int64)
    crops = [torch.from_numpy(np.ascontiguousarray(m.crop)) for m in items]
    ops = torch.ops.unsam
    cpu = ops.mask_overlaps(boxes, crops, h, w)
    gpu = ops.mask_overlaps(boxes.cuda(), [c.cuda() for c in crops], h, w)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda and a.dtype == b.dtype and torch.equal(a, b.cpu())
    rows = torch.from_numpy(rng.permutation(len(items))[: len(items) // 2].copy())
    dense = ops.mask_dense(*cpu, rows)
    assert torch.equal(dense, ops.mask_dense(*gpu, rows.cuda()).cpu())
    full = ops.mask_dense(*cpu, torch.arange(len(items)))
    for contain in (0.5, 0.9, 1.0):
        assert torch.equal(ops.mask_parents(full, contain), ops.mask_parents(full.cuda(), contain).cpu())
    scores = torch.from_numpy(rng.random(len(items)))
    prot = torch.from_numpy(rng.random(len(items)) < 0.1)
    for iou in (0.3, 0.9):
        assert torch.equal(ops.mask_nms(*cpu, scores, iou, prot), ops.mask_nms(*gpu, scores.cuda(), iou, prot.cuda()).cpu())
    work, full_hw = (h, w), (2 * h + 1, 2 * w + 3)
    ref = ops.mask_rle(boxes, crops, *work, *full_hw)
    got = ops.mask_rle(boxes.cuda(), [c.cuda() for c in crops], *work, *full_hw)
    for a, b in zip(ref, got):
        assert torch.equal(a, b.cpu())
    with pytest.raises(RuntimeError, match="crop 0 is on cpu"):
        ops.mask_overlaps(boxes.cuda(), crops, h, w)  # crops left on the CPU


def test_the_stage_writes_the_same_json_with_the_compiled_and_the_reference_ops(data_dir):
    """Byte for byte, on a real BSDS500 image and a full-size SA-1B image (masks formed at
    1024 px, written at 2250 x 1500): the labeler with its default backend and with the
    Python reference backend given explicitly."""
    from unsam.io import load_image
    from unsam.label import Labeler, label_config

    imgs = [load_image(sorted((data_dir / "bsds500" / "images" / "val").glob("*.jpg"))[0])]
    sa1b = sorted((data_dir / "sa1b-samples").glob("*.jpg"))
    if sa1b:
        imgs.append(load_image(sa1b[0]))
    lab = Labeler(label_config({"backbone": "classic"}, preset="full"))
    ref = Labeler(label_config({"backbone": "classic"}, preset="full"), mask_ops=ReferenceMaskOps())
    for im in imgs:
        fast = lab.label_batch([im])[0]
        slow = ref.label_batch([im])[0]
        assert len(fast) > 100
        assert json.dumps(fast) == json.dumps(slow)
