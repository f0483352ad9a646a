"""The mask stage's compiled ops (``torch.ops.unsam.mask_*``): exact overlaps, NMS, parents, RLE.

Host ops on one image's masks, each a (box, crop) pair (see :class:`unsam.masks.MaskItem`).
The Python implementations they replace stay in :mod:`unsam.masks` as the references
(``*_reference``) and the tests' oracle: the outputs are the same, to the byte.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unsam.kernels._ext import load, ops

load()

__all__ = ["mask_nms", "mask_overlaps", "mask_parents", "mask_rle"]


def _boxes_crops(boxes: Sequence[Sequence[int]], crops: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    b = torch.as_tensor(np.asarray(boxes, np.int64).reshape(-1, 4))
    c = [torch.from_numpy(np.ascontiguousarray(x, dtype=bool)) for x in crops]
    return b, c


def mask_overlaps(boxes: Sequence[Sequence[int]], crops: Sequence[np.ndarray], height: int, width: int):
    """All pairwise |a ∩ b| of K masks on a height x width image, as a scipy CSR matrix
    [K, K] int64 (only overlapping pairs stored; the diagonal holds the areas).

    boxes: K (x0, y0, x1, y1), x1/y1 exclusive; crops: K bool arrays of the boxes' shapes.
    Exact: computed on cells (pixels covered by the same masks), as :class:`unsam.masks.Overlaps`.
    """
    import scipy.sparse

    b, c = _boxes_crops(boxes, crops)
    indptr, indices, values = ops().mask_overlaps(b, c, int(height), int(width))
    k = len(c)
    return scipy.sparse.csr_matrix((values.numpy(), indices.numpy(), indptr.numpy()), shape=(k, k))


def mask_nms(inter, scores: np.ndarray, iou: float = 0.9, protected: np.ndarray | None = None) -> list[int]:
    """Greedy NMS on an intersection matrix, dense [K, K] or scipy sparse (see
    :func:`unsam.masks.nms_from_intersections_reference`)."""
    import scipy.sparse

    m = scipy.sparse.csr_matrix(inter) if not scipy.sparse.issparse(inter) else inter.tocsr()
    m.sort_indices()
    p = None if protected is None else torch.from_numpy(np.asarray(protected, bool))
    s = torch.from_numpy(np.ascontiguousarray(scores, np.float64))
    t = (
        torch.from_numpy(m.indptr.astype(np.int64)),
        torch.from_numpy(m.indices.astype(np.int32)),
        torch.from_numpy(m.data.astype(np.int64)),
    )
    return ops().mask_nms(*t, s, float(iou), p).tolist()


def mask_parents(inter: np.ndarray, contain: float = 0.9) -> list[int]:
    """Smallest strictly larger container (see :func:`unsam.masks.parents_from_intersections_reference`)."""
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
    :func:`unsam.masks.upscale_crop`) without forming any full-size mask."""
    b, c = _boxes_crops(boxes, crops)
    chars, offsets, area, bbox = ops().mask_rle(b, c, int(work_hw[0]), int(work_hw[1]), int(height), int(width))
    raw = chars.numpy().tobytes()
    off = offsets.tolist()
    return [raw[off[i] : off[i + 1]].decode("ascii") for i in range(len(off) - 1)], area.numpy(), bbox.numpy()


def _fake_overlaps(boxes, crops, height, width):
    nnz = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((boxes.shape[0] + 1,)), boxes.new_empty((nnz,), dtype=torch.int32), boxes.new_empty((nnz,))


def _fake_nms(indptr, indices, values, scores, iou, protect):
    return indptr.new_empty((torch.library.get_ctx().new_dynamic_size(),))


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
torch.library.register_fake("unsam::mask_parents")(_fake_parents)
torch.library.register_fake("unsam::mask_rle")(_fake_rle)
