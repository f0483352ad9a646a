"""Python references of the mask stage's ops: the oracle of ``unsam.kernels.maskops`` and of the
stage's backend (:class:`ReferenceMaskOps`, passed as ``ops=``), and the baseline of the mask-stage
benchmark ("the Python stage").

Written as the plain version of each rule: overlaps on the masks' common refinement
(cells: pixels under exactly the same masks, found by summing a random 64-bit key per
mask), NMS and parents on a dense matrix, RLE from each crop's column-major runs.
They import only the mask type (:class:`unsam.label.items.MaskItem`), not the code they check.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from unsam.label.items import MaskItem

__all__ = [
    "DenseOverlaps",
    "ReferenceMaskOps",
    "build_hierarchy",
    "cell_overlaps",
    "crop_to_rle",
    "intersection",
    "mask_nms_items",
    "nms_from_intersections_reference",
    "parents_from_intersections_reference",
    "rle_reference",
    "upscale_crop",
]


def intersection(a: MaskItem, b: MaskItem) -> int:
    """|a ∩ b| in pixels, computed on the boxes' intersection only."""
    x0, y0 = max(a.box[0], b.box[0]), max(a.box[1], b.box[1])
    x1, y1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if x1 <= x0 or y1 <= y0:
        return 0
    ca = a.crop[y0 - a.box[1] : y1 - a.box[1], x0 - a.box[0] : x1 - a.box[0]]
    cb = b.crop[y0 - b.box[1] : y1 - b.box[1], x0 - b.box[0] : x1 - b.box[0]]
    return int(np.count_nonzero(ca & cb))


def _box_inter_area(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def mask_nms_items(items: list[MaskItem], iou_threshold: float = 0.9) -> list[int]:
    """Greedy mask NMS over the whole image: indices kept, best score first.

    Order: score, then area (larger first), then index. IoU > threshold needs
    min(area)/max(area) > threshold and boxes overlapping by more than
    threshold * max(area), so only such pairs are compared exactly.
    """
    if not items:
        return []
    areas = np.array([m.area for m in items], np.float64)
    boxes = np.array([m.box for m in items], np.int64)
    scores = np.array([m.score for m in items], np.float64)
    order = np.lexsort((np.arange(len(items)), -areas, -scores))
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            ratio = np.minimum(areas[k], areas[i]) / np.maximum(areas[k], areas[i])
            cand = k[(ratio > iou_threshold) & (_box_inter_area(boxes[i], boxes[k]) > iou_threshold * np.maximum(areas[k], areas[i]))]
            dup = False
            for j in cand:
                inter = intersection(items[i], items[j])
                if inter / (areas[i] + areas[j] - inter) > iou_threshold:
                    dup = True
                    break
            if dup:
                continue
        kept.append(int(i))
    return kept


def build_hierarchy(items: list[MaskItem], contain: float = 0.9, clip: bool = True) -> tuple[list[int], list[int]]:
    """Parent and level of each mask; optionally clip each mask to its parent.

    The parent of a mask is the smallest strictly larger mask holding at least
    ``contain`` of its pixels; level = depth in that forest (0 = no parent).
    With ``clip`` (default) children are intersected with their parents, from
    the roots down, so the hierarchy is exactly nested.
    Returns (parents with -1 for roots, levels), indices into ``items``.
    """
    n = len(items)
    areas = np.array([m.area for m in items], np.float64)
    boxes = np.array([m.box for m in items], np.int64).reshape(n, 4)
    by_area = np.lexsort((np.arange(n), areas))  # ascending area
    rank = np.empty(n, np.int64)
    rank[by_area] = np.arange(n)
    parents = [-1] * n
    for i in range(n):
        larger = by_area[rank[i] + 1 :]
        larger = larger[areas[larger] > areas[i]]
        if larger.size == 0:
            continue
        cand = larger[_box_inter_area(boxes[i], boxes[larger]) >= contain * areas[i]]
        for j in cand:  # ascending area: the first that contains it is the smallest
            if intersection(items[i], items[j]) >= contain * areas[i]:
                parents[i] = int(j)
                break
    levels = [0] * n
    for i in by_area[::-1]:  # parents are larger, so they come first here
        p = parents[i]
        if p >= 0:
            levels[i] = levels[p] + 1
            if clip:
                _clip_to(items[i], items[p])
    return parents, levels


def _clip_to(child: MaskItem, parent: MaskItem) -> None:
    """The child intersected with its parent, through both masks pasted on a canvas that holds their boxes."""
    x0, y0 = min(child.box[0], parent.box[0]), min(child.box[1], parent.box[1])
    x1, y1 = max(child.box[2], parent.box[2]), max(child.box[3], parent.box[3])
    canvas = np.zeros((2, y1 - y0, x1 - x0), bool)
    for k, m in enumerate((child, parent)):
        canvas[k, m.box[1] - y0 : m.box[3] - y0, m.box[0] - x0 : m.box[2] - x0] = m.crop
    both = canvas[0] & canvas[1]
    child.crop = both[child.box[1] - y0 : child.box[3] - y0, child.box[0] - x0 : child.box[2] - x0].copy()


def nms_from_intersections_reference(
    inter: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.9, protected: np.ndarray | None = None
) -> list[int]:
    """Greedy NMS on a precomputed intersection matrix; order: score, area, index.

    ``protected`` (bool [K], optional): masks that are never suppressed; they come
    first in the result (in the same order) and suppress the others as usual.

    Only overlapping pairs can suppress each other, so the IoU is computed for the
    nonzero intersections only and each kept mask marks its list of suppressed ones
    (a dense K x K IoU matrix and a full-row scan per kept mask cost 0.2 s at K = 3500).
    """
    k = inter.shape[0]
    if k == 0:
        return []
    area = np.diag(inter).astype(np.float64)
    ii, jj = np.nonzero(inter)  # row-major: ii ascending
    both = inter[ii, jj]
    hit = both / np.maximum(area[ii] + area[jj] - both, 1.0) > iou_threshold
    ii, jj = ii[hit], jj[hit]
    start = np.searchsorted(ii, np.arange(k + 1))
    prot = np.zeros(k, bool) if protected is None else np.asarray(protected, bool)
    order = np.lexsort((np.arange(k), -area, -scores, ~prot))
    suppressed = np.zeros(k, bool)
    kept = []
    for i in order.tolist():
        if suppressed[i] and not prot[i]:
            continue
        kept.append(int(i))
        suppressed[jj[start[i] : start[i + 1]]] = True
    return kept


def parents_from_intersections_reference(inter: np.ndarray, contain: float = 0.9) -> list[int]:
    """Parent = the smallest strictly larger mask holding >= contain of the mask (-1: none)."""
    k = inter.shape[0]
    if k == 0:
        return []
    area = np.diag(inter).astype(np.float64)
    ok = (area[None, :] > area[:, None]) & (inter >= contain * area[:, None])
    # Smallest area first, then lowest index among equals.
    key = np.where(ok, area[None, :] * (k + 1) + np.arange(k)[None, :], np.inf)
    best = np.argmin(key, axis=1)
    return [int(b) if ok[i, b] else -1 for i, b in enumerate(best)]



def crop_to_rle(crop: np.ndarray, box: tuple[int, int, int, int], height: int, width: int) -> dict:
    """COCO compressed RLE of a mask given as a crop inside box, without a full-image array.

    Cost is the box's area (not the image's): each crop column is padded with a
    zero above and below, so value changes never straddle two columns, and every
    change maps to its column-major position in the full image; the run lengths
    are the gaps between those positions.
    """
    x0, y0 = box[0], box[1]
    bh, bw = crop.shape
    padded = np.zeros((bw, bh + 2), np.int8)
    padded[:, 1:-1] = crop.T
    flat = padded.ravel()
    k = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    col, row = np.divmod(k, bh + 2)
    pos = (x0 + col).astype(np.int64) * height + (y0 + row - 1)
    # A run ending at the bottom of a full-height box column and one starting at the
    # top of the next meet at one position: an empty zero run, which RLE must not hold.
    dup = np.flatnonzero(pos[1:] == pos[:-1])
    if dup.size:
        pos = np.delete(pos, np.concatenate((dup, dup + 1)))
    runs = np.diff(np.concatenate(([0], pos, [height * width])))
    if runs.size > 1 and runs[-1] == 0:  # the mask reaches the last pixel: no trailing zero run
        runs = runs[:-1]
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def upscale_crop(
    crop: np.ndarray, box: tuple[int, int, int, int], sx: float, sy: float, height: int, width: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A crop at working resolution -> the same mask at full resolution (nearest neighbour).

    Full pixel X belongs to working pixel floor((X + 0.5) / s) for every mask alike,
    so nesting between masks is preserved exactly.
    """
    x0, y0, x1, y1 = box
    fx0 = min(width, max(0, int(np.ceil(x0 * sx - 0.5))))
    fx1 = min(width, max(fx0, int(np.ceil(x1 * sx - 0.5))))
    fy0 = min(height, max(0, int(np.ceil(y0 * sy - 0.5))))
    fy1 = min(height, max(fy0, int(np.ceil(y1 * sy - 0.5))))
    rx = np.clip(np.floor((np.arange(fx0, fx1) + 0.5) / sx).astype(np.int64) - x0, 0, crop.shape[1] - 1)
    ry = np.clip(np.floor((np.arange(fy0, fy1) + 0.5) / sy).astype(np.int64) - y0, 0, crop.shape[0] - 1)
    return crop[ry][:, rx], (fx0, fy0, fx1, fy1)



def cell_overlaps(items: list[MaskItem], height: int, width: int) -> np.ndarray:
    """All pairwise |a ∩ b| [K, K] int64, on cells: pixels covered by exactly the same masks
    form one cell (a random 64-bit key per mask summed over its pixels; two different cover
    sets collide with probability about cells^2 / 2^64), every mask is a union of cells, and
    |a ∩ b| is a sparse product over cells weighted by their areas."""
    import scipy.sparse

    k = len(items)
    if k == 0:
        return np.zeros((0, 0), np.int64)
    keys = np.random.default_rng(0x5EED).integers(0, np.iinfo(np.uint64).max, size=k, dtype=np.uint64, endpoint=True)
    code = np.zeros((height, width), np.uint64)
    for m, key in zip(items, keys):
        x0, y0, x1, y1 = m.box
        code[y0:y1, x0:x1] += m.crop * key  # uint64 wraps modulo 2^64
    _, first, inv = np.unique(code.ravel(), return_index=True, return_inverse=True)
    cell_area = np.bincount(inv.ravel()).astype(np.int64)
    order = np.argsort(first, kind="stable")  # representatives in raster order
    rep = first[order]
    rep_y, rep_x = rep // width, rep % width
    cells = []
    for m in items:  # a mask's cells: those whose representative pixel it covers
        x0, y0, x1, y1 = m.box
        lo, hi = np.searchsorted(rep_y, [y0, y1])
        ys, xs = rep_y[lo:hi], rep_x[lo:hi]
        sel = np.flatnonzero((xs >= x0) & (xs < x1))
        hit = m.crop[ys[sel] - y0, xs[sel] - x0]
        cells.append(order[lo:hi][sel[hit]])
    indptr = np.concatenate(([0], np.cumsum([c.size for c in cells]))).astype(np.int64)
    ind = np.concatenate(cells)
    left = scipy.sparse.csr_matrix((cell_area[ind], ind, indptr), shape=(k, cell_area.size))
    right = scipy.sparse.csr_matrix((np.ones(ind.size, np.int64), ind, indptr), shape=(k, cell_area.size))
    return (left @ right.T.tocsc()).toarray().astype(np.int64, copy=False)


def rle_reference(items: list[MaskItem], work_hw: tuple[int, int], height: int, width: int):
    """Strings, areas and bboxes of the masks upscaled from work_hw to height x width, from
    :func:`upscale_crop` and :func:`crop_to_rle`, areas and bboxes by pycocotools."""
    strings, areas, bboxes = [], [], []
    for m in items:
        crop, box = m.crop, m.box
        if tuple(work_hw) != (height, width):
            crop, box = upscale_crop(crop, box, width / work_hw[1], height / work_hw[0], height, width)
        rle = crop_to_rle(crop, box, height, width)
        enc = dict(rle, counts=rle["counts"].encode("ascii"))
        strings.append(rle["counts"])
        areas.append(int(mask_utils.area(enc)))
        bboxes.append([float(v) for v in mask_utils.toBbox(enc)])
    return strings, np.asarray(areas, np.int64), np.asarray(bboxes, np.float64).reshape(-1, 4)


class DenseOverlaps:
    """An intersection matrix held dense, with the interface the mask stage reads."""

    def __init__(self, inter: np.ndarray):
        self.inter = inter
        self.shape = inter.shape

    def areas(self) -> np.ndarray:
        return np.diagonal(self.inter).astype(np.int64)

    def dense(self, rows=None) -> np.ndarray:
        return self.inter if rows is None else self.inter[np.ix_(rows, rows)]

    def select(self, rows) -> DenseOverlaps:
        return DenseOverlaps(self.inter[np.ix_(rows, rows)])


class ReferenceMaskOps:
    """The mask stage's backend in plain Python (``mask_stage(..., ops=ReferenceMaskOps())``):
    the same outputs as the compiled ops, to the byte."""

    name = "reference"

    def overlaps(self, items, height, width) -> DenseOverlaps:
        return DenseOverlaps(cell_overlaps(list(items), height, width))

    def nms(self, inter, scores, iou, protected=None) -> list[int]:
        dense = inter.inter if isinstance(inter, DenseOverlaps) else np.asarray(inter)
        return nms_from_intersections_reference(dense, scores, iou, protected)

    def parents(self, inter, contain) -> list[int]:
        return parents_from_intersections_reference(np.asarray(inter), contain)

    def rle(self, items, work_hw, height, width):
        return rle_reference(list(items), work_hw, height, width)
