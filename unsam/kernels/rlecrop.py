"""Training crops straight from COCO compressed RLE (``torch.ops.unsam.rle_crop*``).

The training loader's masks: a crop is a nearest-neighbour resampling of the image given
by its source rows and columns (``rows[i]``: the source row of output row ``i``, -1 for
padding; ``cols`` likewise), so output pixel ``(i, j)`` of mask ``k`` is
``full_k[rows[i], cols[j]]``, what ``pycocotools.mask.decode(rle)[rows][:, cols]`` gives,
without any full-size mask: the runs are clipped to the sampled columns and read through
the rows' map. Host ops (they run in the DataLoader's workers); their Python reference
(``tests/reference/rlecrop.py``: pycocotools' full decode, then numpy indexing) is the
tests' oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from unsam.kernels._ext import load, ops

load()

__all__ = ["PackedRles", "pack_rles", "rle_crop", "rle_crop_area", "rle_crop_at"]


class PackedRles(NamedTuple):
    """K compressed RLE strings of one ``height x width`` image, concatenated: mask ``k`` is
    ``chars[offsets[k] : offsets[k + 1]]`` (``chars`` uint8 [T], ``offsets`` int64 [K + 1])."""

    chars: torch.Tensor
    offsets: torch.Tensor
    height: int
    width: int

    @property
    def count(self) -> int:
        return self.offsets.shape[0] - 1


def pack_rles(counts: Sequence[bytes | str], height: int, width: int) -> PackedRles:
    """Pack the ``counts`` strings of K compressed RLEs (pycocotools' ``rle["counts"]``,
    bytes or str) of a ``height x width`` image for the ops."""
    strs = [c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts]
    lengths = np.fromiter((len(s) for s in strs), np.int64, len(strs))
    offsets = np.zeros(len(strs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    chars = torch.frombuffer(bytearray(b"".join(strs)), dtype=torch.uint8) if offsets[-1] else torch.zeros(0, dtype=torch.uint8)
    return PackedRles(chars, torch.from_numpy(offsets), int(height), int(width))


def _map(m: np.ndarray | torch.Tensor, name: str, op: str) -> torch.Tensor:
    t = torch.as_tensor(m)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{op}: {name} should be a 1-D integer array, got {t.dtype} of shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.int64).contiguous()


def rle_crop_area(rles: PackedRles, rows: np.ndarray | torch.Tensor, cols: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Set pixels of each mask's crop, from the runs alone.

    Args:
        rles: K masks (:func:`pack_rles`).
        rows (int[R]), cols (int[C]): the crop's source rows and columns (-1: padding).

    Returns:
        area (Tensor[K] int64).
    """
    r, c = _map(rows, "rows", "rle_crop_area"), _map(cols, "cols", "rle_crop_area")
    return ops().rle_crop_area(rles.chars, rles.offsets, rles.height, rles.width, r, c)


def rle_crop(
    rles: PackedRles, rows: np.ndarray | torch.Tensor, cols: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks' crops.

    Args:
        rles: K masks (:func:`pack_rles`).
        rows (int[R]), cols (int[C]): the crop's source rows and columns (-1: padding).

    Returns:
        masks (Tensor[K, R, C] bool), boxes (Tensor[K, 4] int64): each crop's tight box
        (x0, y0, x1, y1), x1/y1 exclusive; zeros for an empty crop.
    """
    r, c = _map(rows, "rows", "rle_crop"), _map(cols, "cols", "rle_crop")
    return ops().rle_crop(rles.chars, rles.offsets, rles.height, rles.width, r, c)


def rle_crop_at(
    rles: PackedRles,
    rows: np.ndarray | torch.Tensor,
    cols: np.ndarray | torch.Tensor,
    points: np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """The crops' values at some of their pixels, without decoding them.

    Args:
        rles: K masks (:func:`pack_rles`).
        rows (int[R]), cols (int[C]): the crop's source rows and columns (-1: padding).
        points (int[P, 2]): output pixels (row i, column j).

    Returns:
        hits (Tensor[K, P] bool): ``rle_crop(rles, rows, cols)[0][k, i, j]`` for each point.
    """
    r, c = _map(rows, "rows", "rle_crop_at"), _map(cols, "cols", "rle_crop_at")
    p = torch.as_tensor(points)
    if p.dtype.is_floating_point or p.dtype == torch.bool:
        raise ValueError(f"rle_crop_at: points should be integer pixel indices, got {p.dtype}")
    if p.numel() == 0:
        p = torch.zeros(0, 2, dtype=torch.int64)
    elif p.dim() != 2 or p.shape[1] != 2:
        raise ValueError(f"rle_crop_at: points should have shape [P, 2] (row, column), got {tuple(p.shape)}")
    p = p.to(device="cpu", dtype=torch.int64)
    return ops().rle_crop_at(rles.chars, rles.offsets, rles.height, rles.width, r, c, p.contiguous())


def _fake_area(chars, offsets, height, width, rows, cols):
    return offsets.new_empty((offsets.shape[0] - 1,))


def _fake_crop(chars, offsets, height, width, rows, cols):
    k = offsets.shape[0] - 1
    return chars.new_empty((k, rows.shape[0], cols.shape[0]), dtype=torch.bool), offsets.new_empty((k, 4))


def _fake_at(chars, offsets, height, width, rows, cols, points):
    return chars.new_empty((offsets.shape[0] - 1, points.shape[0]), dtype=torch.bool)


torch.library.register_fake("unsam::rle_crop_area")(_fake_area)
torch.library.register_fake("unsam::rle_crop")(_fake_crop)
torch.library.register_fake("unsam::rle_crop_at")(_fake_at)
