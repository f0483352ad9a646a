"""The mask stage's compiled ops (``torch.ops.unsam.mask_*``): exact overlaps, NMS, parents, RLE.

Host ops on one image's masks, each a (box, crop) pair: ``box`` (x0, y0, x1, y1), x1/y1
exclusive, and ``crop`` the bool mask inside it. Their Python references
(``tests/reference/maskops.py``) are the tests' oracle: the outputs are the same, to the byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from unsam.kernels._ext import load, ops

load()

__all__ = ["UpperOverlaps", "mask_nms", "mask_overlaps", "mask_overlaps_upper", "mask_parents", "mask_rle"]


def _boxes_crops(
    boxes: Sequence[Sequence[int]], crops: Sequence[np.ndarray | torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    b = torch.as_tensor(np.asarray(boxes, np.int64).reshape(-1, 4))
    c = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=bool)) for x in crops]
    return b, c


class UpperOverlaps(NamedTuple):
    """|a ∩ b| of K masks for the overlapping pairs b >= a: the upper triangle of the
    symmetric intersection matrix (diagonal = the areas), as CSR tensors (indptr int64
    [K + 1], indices int32, values int64), what :func:`mask_overlaps_upper` returns."""

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        k = self.indptr.shape[0] - 1
        return k, k

    def areas(self) -> np.ndarray:
        """The diagonal: int64 [K] (a row's first entry, when it is the diagonal's)."""
        ip, ind, val = self.indptr.numpy(), self.indices.numpy(), self.values.numpy()
        k = ip.size - 1
        first = np.minimum(ip[:-1], max(ind.size - 1, 0))
        has = (ip[1:] > ip[:-1]) & (ind[first] == np.arange(k)) if ind.size else np.zeros(k, bool)
        return np.where(has, val[first] if val.size else 0, 0).astype(np.int64)

    def dense(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """The symmetric matrix [R, R] int64 of ``rows`` (all when None), in their order."""
        idx = np.arange(self.shape[0]) if rows is None else np.asarray(rows, np.int64).reshape(-1)
        return ops().mask_dense(self.indptr, self.indices, self.values, torch.from_numpy(idx)).numpy()

    def toarray(self) -> np.ndarray:
        return self.dense()

    def select(self, rows: Sequence[int] | np.ndarray) -> UpperOverlaps:
        """The same matrix for the masks ``rows`` only (increasing indices), renumbered 0..R-1."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size > 1 and not (np.diff(rows) > 0).all():
            raise ValueError("UpperOverlaps.select: rows should be increasing")
        ip, ind, val = self.indptr.numpy(), self.indices.numpy(), self.values.numpy()
        new = np.full(ip.size - 1, -1, np.int64)
        new[rows] = np.arange(rows.size)
        row_of = np.repeat(new, np.diff(ip))  # each entry's new row (-1: dropped)
        col = new[ind]
        kept = (row_of >= 0) & (col >= 0)
        # An increasing renumbering keeps the rows in order and the columns sorted and >= the row.
        counts = np.bincount(row_of[kept], minlength=rows.size)
        indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        return UpperOverlaps(
            torch.from_numpy(indptr), torch.from_numpy(col[kept].astype(np.int32)), torch.from_numpy(val[kept])
        )


def mask_overlaps_upper(
    boxes: Sequence[Sequence[int]], crops: Sequence[np.ndarray | torch.Tensor], height: int, width: int
) -> UpperOverlaps:
    """All pairwise |a ∩ b| of K masks on a height x width image, as the upper triangle
    of the intersection matrix (see :func:`mask_overlaps`; half the entries)."""
    b, c = _boxes_crops(boxes, crops)
    return UpperOverlaps(*ops().mask_overlaps(b, c, int(height), int(width)))


def mask_overlaps(boxes: Sequence[Sequence[int]], crops: Sequence[np.ndarray | torch.Tensor], height: int, width: int):
    """All pairwise |a ∩ b| of K masks on a height x width image, as a scipy CSR matrix
    [K, K] int64 (only overlapping pairs stored; the diagonal holds the areas).

    boxes: K (x0, y0, x1, y1), x1/y1 exclusive; crops: K bool arrays (numpy, or CPU tensors)
    of the boxes' shapes.
    Exact: computed on cells (pixels covered by the same masks), as ``tests/reference/maskops.cell_overlaps``.
    """
    import scipy.sparse

    u = mask_overlaps_upper(boxes, crops, height, width)
    k = u.shape[0]
    up = scipy.sparse.csr_matrix((u.values.numpy(), u.indices.numpy(), u.indptr.numpy()), shape=(k, k))
    full = (up + scipy.sparse.triu(up, k=1, format="csr").T).tocsr()
    full.sort_indices()
    return full


def mask_nms(inter, scores: np.ndarray, iou: float = 0.9, protected: np.ndarray | None = None) -> list[int]:
    """Greedy NMS on an intersection matrix: dense [K, K], scipy sparse or
    :class:`UpperOverlaps` (protected first, then score, area and index; ``tests/reference/maskops.py``)."""
    p = None if protected is None else torch.from_numpy(np.asarray(protected, bool))
    s = torch.from_numpy(np.ascontiguousarray(scores, np.float64))
    if isinstance(inter, UpperOverlaps):
        t = tuple(inter)
    else:
        import scipy.sparse

        m = scipy.sparse.csr_matrix(inter) if not scipy.sparse.issparse(inter) else inter.tocsr()
        t = (
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int32)),
            torch.from_numpy(m.data.astype(np.int64)),
        )
    return ops().mask_nms(*t, s, float(iou), p).tolist()


def mask_parents(inter: np.ndarray, contain: float = 0.9) -> list[int]:
    """Smallest strictly larger container (lowest index among equal areas; -1: none)."""
    return ops().mask_parents(torch.from_numpy(np.ascontiguousarray(inter, np.int64)), float(contain)).tolist()


def mask_rle(
    boxes: Sequence[Sequence[int]],
    crops: Sequence[np.ndarray],
    work_hw: tuple[int, int],
    height: int,
    width: int,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """COCO compressed RLE strings, areas and bboxes of masks at the working resolution
    ``work_hw``, brought to height x width by nearest neighbour (as
    ``tests/reference/maskops.upscale_crop``) without forming any full-size mask."""
    b, c = _boxes_crops(boxes, crops)
    chars, offsets, area, bbox = ops().mask_rle(b, c, int(work_hw[0]), int(work_hw[1]), int(height), int(width))
    text = chars.numpy().tobytes().decode("ascii")
    off = offsets.tolist()
    return [text[off[i] : off[i + 1]] for i in range(len(off) - 1)], area.numpy(), bbox.numpy()


def _fake_overlaps(boxes, crops, height, width):
    nnz = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((boxes.shape[0] + 1,)), boxes.new_empty((nnz,), dtype=torch.int32), boxes.new_empty((nnz,))


def _fake_nms(indptr, indices, values, scores, iou, protect):
    return indptr.new_empty((torch.library.get_ctx().new_dynamic_size(),))


def _fake_dense(indptr, indices, values, rows):
    n = rows.shape[0]
    return indptr.new_empty((n, n))


def _fake_parents(inter, contain):
    return inter.new_empty((inter.shape[0],))


def _fake_rle(boxes, crops, work_h, work_w, height, width):
    k = boxes.shape[0]
    return (
        boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.uint8),
        boxes.new_empty((k + 1,)),
        boxes.new_empty((k,)),
        boxes.new_empty((k, 4), dtype=torch.float64),
    )


torch.library.register_fake("unsam::mask_overlaps")(_fake_overlaps)
torch.library.register_fake("unsam::mask_nms")(_fake_nms)
torch.library.register_fake("unsam::mask_dense")(_fake_dense)
torch.library.register_fake("unsam::mask_parents")(_fake_parents)
torch.library.register_fake("unsam::mask_rle")(_fake_rle)
