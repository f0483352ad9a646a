"""The RLE crop ops (unsam.kernels.rlecrop) against their reference (tests/reference/rlecrop.py:
pycocotools' full decode, then numpy indexing), on random masks and crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from tests.reference.rlecrop import (
    rle_crop_area_reference,
    rle_crop_at_reference,
    rle_crop_reference,
)
from unsam.kernels.rlecrop import pack_rles, rle_crop, rle_crop_area, rle_crop_at

KINDS = ("empty", "full", "pixel", "blob", "border", "noise", "column", "last")


def _mask(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    if kind == "full":
        m[:] = True
    elif kind == "pixel":
        m[rng.integers(h), rng.integers(w)] = True
    elif kind == "last":  # the image's last pixel (column-major): the final run ends at h * w
        m[-1, -1] = True
        m[rng.integers(h) :, -1] = True
    elif kind == "column":  # whole columns: runs wrapping from one column into the next
        m[:, rng.integers(w) : rng.integers(w) + 2] = True
    elif kind == "border":  # a rectangle against one or two image borders
        y0, x0 = rng.integers(h), rng.integers(w)
        m[: y0 + 1 if rng.random() < 0.5 else h, x0:] = True
    elif kind == "blob":
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.5, max(h, w) / 2)
        m = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.5, 2))) ** 2 < 1
        m &= rng.random((h, w)) > 0.1  # holes
    elif kind == "noise":
        m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
    return m


def _rles(masks: list[np.ndarray]) -> list[dict]:
    return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def _loader_maps(rng: np.random.Generator, h0: int, w0: int, s: int, scale: float, flip: bool):
    """The crop maps of unsam.train.data.MaskDataset: a random window of the scaled image, -1 padded to s."""
    sh, sw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    ch, cw = min(s, sh), min(s, sw)
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    ys = np.minimum(((y0 + np.arange(ch) + 0.5) * (h0 / sh)).astype(np.int64), h0 - 1)
    xs = np.minimum(((x0 + np.arange(cw) + 0.5) * (w0 / sw)).astype(np.int64), w0 - 1)
    if flip:
        xs = xs[::-1]
    rows, cols = np.full(s, -1, np.int64), np.full(s, -1, np.int64)
    rows[:ch], cols[:cw] = ys, xs
    return rows, cols


def _check(rles: list[dict], h: int, w: int, rows: np.ndarray, cols: np.ndarray, points: np.ndarray) -> None:
    packed = pack_rles([r["counts"] for r in rles], h, w)
    masks, boxes = rle_crop(packed, rows, cols)
    ref_masks, ref_boxes = rle_crop_reference(rles, rows, cols)
    assert masks.dtype == torch.bool and masks.shape == (len(rles), rows.size, cols.size)
    assert np.array_equal(masks.numpy(), ref_masks)
    assert np.array_equal(boxes.numpy(), ref_boxes)
    assert rle_crop_area(packed, rows, cols).tolist() == rle_crop_area_reference(rles, rows, cols).tolist()
    hits = rle_crop_at(packed, rows, cols, points)
    assert hits.shape == (len(rles), len(points))
    assert np.array_equal(hits.numpy(), rle_crop_at_reference(rles, rows, cols, points))


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    kinds=st.lists(st.sampled_from(KINDS), max_size=6),
    s=st.integers(1, 40),
    scale=st.floats(0.2, 4.0),
    flip=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_loader_crops_match_the_full_decode(h, w, kinds, s, scale, flip, seed):
    """Crops as the loader makes them: scaled up and down, windows at the borders, flips, padding."""
    rng = np.random.default_rng(seed)
    rles = _rles([_mask(rng, k, h, w) for k in kinds])
    rows, cols = _loader_maps(rng, h, w, s, scale, flip)
    points = np.stack([rng.integers(0, s, 12), rng.integers(0, s, 12)], 1)
    _check(rles, h, w, rows, cols, points)


@settings(max_examples=100, deadline=None)
@given(
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    kinds=st.lists(st.sampled_from(KINDS), max_size=5),
    r=st.integers(0, 20),
    c=st.integers(0, 20),
    seed=st.integers(0, 2**31),
)
def test_any_row_and_column_maps_match_the_full_decode(h, w, kinds, r, c, seed):
    """Maps the loader never makes (rows out of order, repeated, -1 anywhere): the general path."""
    rng = np.random.default_rng(seed)
    rles = _rles([_mask(rng, k, h, w) for k in kinds])
    rows, cols = rng.integers(-1, h, r), rng.integers(-1, w, c)
    points = np.stack([rng.integers(0, r, 7), rng.integers(0, c, 7)], 1) if r and c else np.zeros((0, 2), np.int64)
    _check(rles, h, w, rows, cols, points)


def test_a_real_size_mask_and_the_flipped_crop():
    """A 481 x 321 image (BSDS500's size) cropped at 512 with a flip: the loader's case at full size."""
    rng = np.random.default_rng(5)
    masks = [_mask(rng, k, 481, 321) for k in KINDS]
    rles = _rles(masks)
    for scale, flip in ((512 / 481 * 1.7, True), (512 / 481 * 0.6, False)):
        rows, cols = _loader_maps(rng, 481, 321, 512, scale, flip)
        _check(rles, 481, 321, rows, cols, np.stack([rng.integers(0, 512, 50), rng.integers(0, 512, 50)], 1))


def test_empty_inputs():
    rows, cols = np.arange(3), np.arange(4)
    none = pack_rles([], 3, 4)
    assert rle_crop(none, rows, cols)[0].shape == (0, 3, 4) and rle_crop_area(none, rows, cols).shape == (0,)
    assert rle_crop_at(none, rows, cols, [[0, 0]]).shape == (0, 1)
    one = pack_rles([r["counts"] for r in _rles([np.ones((3, 4), bool)])], 3, 4)
    assert rle_crop(one, rows[:0], cols)[0].shape == (1, 0, 4)
    assert rle_crop_area(one, rows, cols[:0]).tolist() == [0]
    assert rle_crop_at(one, rows, cols, np.zeros((0, 2), np.int64)).shape == (1, 0)


def _string(counts: list[int]) -> bytes:
    """pycocotools' rleToString for any counts (also ones it would never write)."""
    out = bytearray()
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append((c | 0x20 if more else c) + 48)
    return bytes(out)


def test_the_test_encoder_is_pycocotools():
    m = np.zeros((7, 5), bool)
    m[2:5, 1:4] = True
    m[6, 4] = True
    runs = [9, 3, 4, 3, 4, 3, 8, 1]  # column-major runs of m, starting with background
    assert _string(runs) == mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]


@pytest.mark.parametrize(
    "chars,message",
    [
        (b"5!", "not an RLE character"),
        (b"P", "ends inside a count"),
        (b"o" * 13, "more than 12 characters"),
        (_string([4, 2, 4, 1]), "cover 11 pixels, not the image's 12"),
        (_string([10, 3]), "run past the 12 pixels"),
        (_string([2, 3, 2, -1, 4]), r"count 3 of its RLE is negative \(-1\)"),
    ],
)
def test_malformed_strings_are_errors_naming_the_mask(chars, message):
    good = _string([12])
    packed = pack_rles([good, chars], 3, 4)
    for op in (
        lambda: rle_crop_area(packed, np.arange(3), np.arange(4)),
        lambda: rle_crop(packed, np.arange(3), np.arange(4)),
        lambda: rle_crop_at(packed, np.arange(3), np.arange(4), [[0, 0]]),
    ):
        with pytest.raises(ValueError, match=f"mask 1: .*{message}"):
            op()


def test_argument_errors_name_the_op_and_the_argument():
    """Wrong shapes and dtypes are RuntimeErrors, values the op cannot use ValueErrors (as the other ops)."""
    ops = torch.ops.unsam
    packed = pack_rles([_string([12])], 3, 4)
    ch, off = packed.chars, packed.offsets
    r, c = torch.arange(3), torch.arange(4)
    with pytest.raises(ValueError, match=r"rle_crop: rows should hold source indices in \[-1, 3\).*\[0, 3\]"):
        ops.rle_crop(ch, off, 3, 4, torch.arange(4), c)
    with pytest.raises(ValueError, match=r"rle_crop_area: cols should hold source indices in \[-1, 4\)"):
        ops.rle_crop_area(ch, off, 3, 4, r, torch.tensor([0, -2]))
    with pytest.raises(RuntimeError, match="rle_crop: rows should be int64, got Int"):
        ops.rle_crop(ch, off, 3, 4, r.int(), c)
    with pytest.raises(RuntimeError, match="rle_crop_at: chars should be uint8"):
        ops.rle_crop_at(ch.long(), off, 3, 4, r, c, torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"offsets should run from 0 to the length of chars"):
        ops.rle_crop(ch, off + 1, 3, 4, r, c)
    with pytest.raises(ValueError, match=r"offsets should be nondecreasing"):
        ops.rle_crop(torch.cat([ch, ch]), torch.tensor([0, 3, 2]), 3, 4, r, c)
    with pytest.raises(RuntimeError, match="height and width should be >= 1"):
        ops.rle_crop(ch, off, 0, 4, r[:0], c)
    with pytest.raises(ValueError, match="more pixels than int64 can count"):
        ops.rle_crop_area(ch, off, 2**40, 2**40, r, c)
    with pytest.raises(ValueError, match=r"rle_crop_at: point 1 = \(3, 0\) is not inside the 3 x 4 crop"):
        ops.rle_crop_at(ch, off, 3, 4, r, c, torch.tensor([[0, 0], [3, 0]]))
    with pytest.raises(RuntimeError, match=r"rle_crop_at: points should have shape \[P, 2\]"):
        ops.rle_crop_at(ch, off, 3, 4, r, c, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="rle_crop: rows should be a 1-D integer array, got torch.float32"):
        rle_crop(packed, torch.arange(3.0), c)
    with pytest.raises(ValueError, match="rle_crop_at: points should have shape"):
        rle_crop_at(packed, r, c, [[0, 0, 0]])


def test_opcheck():
    rng = np.random.default_rng(0)
    rles = _rles([_mask(rng, k, 9, 7) for k in ("blob", "full", "empty")])
    p = pack_rles([r["counts"] for r in rles], 9, 7)
    rows, cols = _loader_maps(rng, 9, 7, 12, 1.6, True)
    rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
    args = (p.chars, p.offsets, 9, 7, rows, cols)
    torch.library.opcheck(torch.ops.unsam.rle_crop_area.default, args)
    torch.library.opcheck(torch.ops.unsam.rle_crop.default, args)
    torch.library.opcheck(torch.ops.unsam.rle_crop_at.default, (*args, torch.tensor([[0, 0], [5, 3], [11, 11]])))


@pytest.mark.cuda
def test_cuda_tensors_are_refused_with_a_message():
    p = pack_rles([_string([12])], 3, 4)
    with pytest.raises(RuntimeError, match="rle_crop: got a CUDA tensor, but the RLE crop ops are host ops"):
        torch.ops.unsam.rle_crop(p.chars.cuda(), p.offsets.cuda(), 3, 4, torch.arange(3).cuda(), torch.arange(4).cuda())


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.binary(max_size=12), min_size=1, max_size=4),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    valid_chars=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_random_strings_decode_as_pycocotools_or_are_value_errors(data, h, w, valid_chars, seed):
    """Garbage in: the ops decode what pycocotools decodes (strings whose counts cover the image
    exactly) and refuse the rest with a ValueError naming the op and the mask; never a crash."""
    if valid_chars:  # RLE characters only: mostly well-formed strings with wrong counts
        data = [bytes(48 + (b % 64) for b in d) for d in data]
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(-1, h, 5), rng.integers(-1, w, 4)
    packed = pack_rles(data, h, w)
    try:
        masks, _ = rle_crop(packed, rows, cols)
    except ValueError as e:
        assert str(e).startswith("rle_crop: mask ")
        with pytest.raises(ValueError, match="rle_crop_area: mask "):
            rle_crop_area(packed, rows, cols)
        return
    rles = [{"size": [h, w], "counts": d} for d in data]
    assert np.array_equal(masks.numpy(), rle_crop_reference(rles, rows, cols)[0])
