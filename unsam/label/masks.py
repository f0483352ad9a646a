"""The mask stage: de-duplication, refinement, hierarchy and RLE of one image's pseudo-masks.

Entry point: :func:`mask_stage` (settings: :class:`MaskConfig`). It owns the
whole policy of the stage: which masks are too small, the ranking score,
mask NMS, optional refinement, which mask is whose parent (the stages' own
trees or containment), what a level is, and the SA-1B annotation records.

Masks are kept as (box, crop) pairs, never as full-image arrays: an SA-1B
image is 3.4 Mpx and carries hundreds of masks. Pairwise work (NMS IoU,
containment) is exact and computed once per image on the masks' common
refinement (:class:`Overlaps`); RLE is written straight from the crop.

A mask may carry its place in a stage's tree: ``meta["key"]`` (unique per
image) and ``meta["up"]`` (the key of its parent in that tree, or absent):
divide regions (the cut they were cut out of), conquer clusters (the cluster
they merge into at the next coarser threshold, the top ones their divide
region; ALGORITHM.md §3.4) and the partition ladder (the region holding it one
level up). :class:`MaskConfig` ``levels`` says which parents are used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools import mask as mask_utils

#: Use the compiled ops (``unsam.kernels.maskops``) for overlaps, NMS, parents and RLE.
#: False runs the Python implementations (the ``*_reference`` functions), which give
#: the same output; the benchmark's baseline and the tests' oracle.
COMPILED = True


@dataclass
class MaskItem:
    """One mask: crop [y1 - y0, x1 - x0] bool inside box (x0, y0, x1, y1), x1/y1 exclusive."""

    box: tuple[int, int, int, int]
    crop: np.ndarray
    score: float
    source: str  #: "divide" or "conquer"
    meta: dict = field(default_factory=dict)

    @property
    def area(self) -> int:
        # Cached per crop object: the stage asks often, and every change replaces the crop.
        cache = self.__dict__.get("_area")
        if cache is None or cache[0] is not self.crop:
            cache = (self.crop, int(np.count_nonzero(self.crop)))
            self.__dict__["_area"] = cache
        return cache[1]

    def crop_tensor(self) -> torch.Tensor:
        """The crop as a bool tensor sharing its memory, for the compiled ops (cached like ``area``)."""
        cache = self.__dict__.get("_tensor")
        if cache is None or cache[0] is not self.crop:
            c = self.crop
            ok = c.dtype == np.bool_ and c.flags.c_contiguous
            cache = (c, torch.from_numpy(c if ok else np.ascontiguousarray(c, dtype=bool)))
            self.__dict__["_tensor"] = cache
        return cache[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_tensor", None)  # a second copy of the crop's bytes
        return state

    def tighten(self) -> MaskItem | None:
        """Shrink the box to the mask (None when empty)."""
        ys = np.flatnonzero(self.crop.any(1))
        xs = np.flatnonzero(self.crop.any(0))
        if ys.size == 0:
            return None
        x0, y0 = self.box[0], self.box[1]
        crop = self.crop[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
        self.box = (x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)
        self.crop = np.ascontiguousarray(crop)
        return self


# ------------------------------------------------------------ grid masks -> pixels


def interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Rows of bilinear weights (align_corners=False, edge-clamped), as F.interpolate uses."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m


def interp_spans(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each input index i: the output index range [lo, hi) with nonzero weight on i."""
    nz = r > 0
    lo = nz.argmax(0)
    hi = nz.shape[0] - nz[::-1].argmax(0)
    return lo, hi


def upsample_grid_masks(grids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Grid masks [K, g, g'] -> [K, height, width] bool: bilinear upsample, threshold 0.5.

    Bilinear interpolation is separable, so it is two small matrix products
    (Ry G Rx^T) per mask instead of a gather per output pixel.
    """
    ry = interp_matrix(height, grids.shape[1])
    rx = interp_matrix(width, grids.shape[2])
    return (ry @ grids @ rx.T) > 0.5



# ------------------------------------------------------------------ overlaps


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


def mask_nms(items: list[MaskItem], iou_threshold: float = 0.9) -> list[int]:
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
    x0, y0, x1, y1 = child.box
    px0, py0 = parent.box[0], parent.box[1]
    win = np.zeros_like(child.crop)
    ix0, iy0 = max(x0, px0), max(y0, py0)
    ix1, iy1 = min(x1, parent.box[2]), min(y1, parent.box[3])
    if ix1 > ix0 and iy1 > iy0:
        win[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = parent.crop[iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0]
    child.crop = child.crop & win



class Overlaps:
    """All pairwise |a ∩ b| of a list of masks, kept up to date as masks change.

    Computed on **cells**, the common refinement of the masks: pixels covered by
    exactly the same masks form one cell (found in one pass by summing a random
    64-bit key per mask over its pixels; two different cover sets collide with
    probability about cells^2 / 2^64). Every mask is a union of cells, so
    |a ∩ b| is a sparse product over cells weighted by their areas, each cell
    costing (masks holding it)^2, instead of over pixels: a nested hierarchy of
    3000 masks on a 640 x 480 image has ~10^4 cells for 3 x 10^5 pixels
    (25 s -> well under a second here). Exact, at any image size.

    Clipping a mask to another one of the set keeps it a union of cells, so
    ``update(rows)`` only re-reads the changed masks' cells (any other change
    falls back to recomputing the cells from scratch).
    """

    def __init__(self, items: list[MaskItem], height: int, width: int):
        self.items = items
        self.height, self.width = height, width
        self.cells: list[np.ndarray] | None = None  # built on demand (update)
        self.sparse = None  # the compiled op's upper triangle (UpperOverlaps; dense rows made on demand)
        self._inter: np.ndarray | None = None
        if COMPILED:
            from unsam.kernels.maskops import mask_overlaps_upper

            self.sparse = mask_overlaps_upper([m.box for m in items], [m.crop_tensor() for m in items], height, width)
        else:
            self._ensure_cells()
            self._inter = self._product(list(range(len(items))))

    @property
    def inter(self) -> np.ndarray:
        """|a ∩ b| for every pair: int64 [K, K]."""
        if self._inter is None:
            self._inter = self.sparse.dense()
        return self._inter

    def matrix(self):
        """The intersections, sparse when the compiled op made them (for NMS on many masks)."""
        return self.sparse if self.sparse is not None else self.inter

    def areas(self) -> np.ndarray:
        """The masks' areas (the diagonal)."""
        return self.sparse.areas() if self._inter is None and self.sparse is not None else np.diagonal(self.inter)

    def _ensure_cells(self) -> None:
        if self.cells is None:
            self._build_cells()
            self.cells = [self._cells_of(m) for m in self.items]

    def _build_cells(self) -> None:
        keys = np.random.default_rng(0x5EED).integers(0, np.iinfo(np.uint64).max, size=len(self.items), dtype=np.uint64, endpoint=True)
        code = np.zeros((self.height, self.width), np.uint64)
        for m, k in zip(self.items, keys):
            x0, y0, x1, y1 = m.box
            view = code[y0:y1, x0:x1]
            # crop * k is k on the mask, 0 elsewhere: one dense pass, 5x faster than
            # view[crop] += k (a gather and a scatter); uint64 wraps modulo 2^64.
            view += m.crop * k
        _, first, inv = np.unique(code.ravel(), return_index=True, return_inverse=True)
        self.cell_area = np.bincount(inv.ravel()).astype(np.int64)
        order = np.argsort(first, kind="stable")  # representatives in raster order
        rep = first[order]
        self.rep_cell = order
        self.rep_y = rep // self.width
        self.rep_x = rep % self.width

    def _cells_of(self, m: MaskItem) -> np.ndarray:
        """Cells of a mask: those whose representative pixel the mask covers."""
        x0, y0, x1, y1 = m.box
        lo, hi = np.searchsorted(self.rep_y, [y0, y1])
        ys, xs = self.rep_y[lo:hi], self.rep_x[lo:hi]
        inbox = (xs >= x0) & (xs < x1)
        sel = np.flatnonzero(inbox)
        hit = m.crop[ys[sel] - y0, xs[sel] - x0]
        return self.rep_cell[lo:hi][sel[hit]]

    def _matrix(self, rows: list[int], weighted: bool):
        import scipy.sparse

        parts = [self.cells[i] for i in rows]
        indptr = np.concatenate(([0], np.cumsum([p.size for p in parts]))).astype(np.int64)
        ind = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        data = self.cell_area[ind] if weighted else np.ones(ind.size, np.int64)
        return scipy.sparse.csr_matrix((data, ind, indptr), shape=(len(rows), self.cell_area.size))

    def _product(self, rows: list[int]) -> np.ndarray:
        k = len(self.items)
        if k == 0 or not rows:
            return np.zeros((len(rows), k), np.int64)
        left = self._matrix(rows, weighted=True)
        right = self._matrix(list(range(k)), weighted=False)
        return (left @ right.T.tocsc()).toarray().astype(np.int64, copy=False)  # int64 already: no copy

    def update(self, rows: list[int]) -> None:
        """Masks ``rows`` changed (e.g. clipped): recompute their rows and columns."""
        if not rows:
            return
        self._ensure_cells()
        for i in rows:
            self.cells[i] = self._cells_of(self.items[i])
        if any(int(self.cell_area[self.cells[i]].sum()) != self.items[i].area for i in rows):
            # Not a union of the current cells (changed by something other than clipping).
            self._build_cells()
            self.cells = [self._cells_of(m) for m in self.items]
            self._inter, self.sparse = self._product(list(range(len(self.items)))), None
            return
        sub = self._product(rows)
        inter = self.inter
        inter[rows, :] = sub
        inter[:, rows] = sub.T
        self.sparse = None  # the dense matrix is the truth from here on

    def select(self, keep: list[int]) -> Overlaps:
        """The overlaps of items[keep] (increasing indices), kept sparse when they are."""
        if self.sparse is None or self._inter is not None:
            return self.subset(keep)
        new = object.__new__(Overlaps)
        new.items = [self.items[i] for i in keep]
        new.height, new.width = self.height, self.width
        new.sparse, new._inter, new.cells = self.sparse.select(keep), None, None
        return new

    def subset(self, keep: list[int]) -> Overlaps:
        """The overlaps of items[keep] (no recomputation)."""
        new = object.__new__(Overlaps)
        new.items = [self.items[i] for i in keep]
        new.height, new.width = self.height, self.width
        new.sparse = None
        if self._inter is None and self.sparse is not None:
            new._inter = self.sparse.dense(keep) if keep else np.zeros((0, 0), np.int64)
        else:
            new._inter = self.inter[np.ix_(keep, keep)] if keep else np.zeros((0, 0), np.int64)
        if self.cells is None:
            new.cells = None
        else:
            new.cell_area, new.rep_cell, new.rep_y, new.rep_x = self.cell_area, self.rep_cell, self.rep_y, self.rep_x
            new.cells = [self.cells[i] for i in keep]
        return new


def pairwise_intersections(items: list[MaskItem], height: int, width: int) -> np.ndarray:
    """All |a ∩ b| at once: [K, K] int64 (see :class:`Overlaps`)."""
    if not items:
        return np.zeros((0, 0), np.int64)
    return Overlaps(items, height, width).inter


def nms_from_intersections(
    inter: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.9, protected: np.ndarray | None = None
) -> list[int]:
    """Greedy NMS on a precomputed intersection matrix (see :func:`nms_from_intersections_reference`)."""
    if COMPILED and inter.shape[0]:
        from unsam.kernels.maskops import mask_nms

        return mask_nms(inter, np.asarray(scores, np.float64), iou_threshold, protected)
    if not isinstance(inter, np.ndarray):
        inter = inter.toarray()
    return nms_from_intersections_reference(inter, scores, iou_threshold, protected)


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


def parents_from_intersections(inter: np.ndarray, contain: float = 0.9) -> list[int]:
    """Parent = the smallest strictly larger mask holding >= contain of the mask (-1: none)."""
    if COMPILED and inter.shape[0]:
        from unsam.kernels.maskops import mask_parents

        return mask_parents(inter, contain)
    return parents_from_intersections_reference(inter, contain)


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


def clip_to_parents(items: list[MaskItem], parents: list[int]) -> list[int]:
    """Intersect every mask with its parent, roots first; returns the indices that changed."""
    areas = [m.area for m in items]
    changed = []
    for i in sorted(range(len(items)), key=lambda j: -areas[j]):
        p = parents[i]
        if p >= 0:
            before = items[i].crop
            _clip_to(items[i], items[p])
            if not np.array_equal(before, items[i].crop):
                changed.append(i)
    return sorted(changed)


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


def to_annotations(
    items: list[MaskItem],
    parents: list[int],
    levels: list[int],
    height: int,
    width: int,
    start_id: int = 1,
    work_hw: tuple[int, int] | None = None,
) -> list[dict]:
    """SA-1B style annotation records (ids start_id.., parent_id refers to these ids).

    ``work_hw``: the resolution the crops are at, when it is not (height, width).
    """
    ids = [start_id + i for i in range(len(items))]
    work = (height, width) if work_hw is None else tuple(work_hw)
    if COMPILED and items and work[0] <= height and work[1] <= width:
        from unsam.kernels.maskops import mask_rle

        strings, areas, bboxes = mask_rle([m.box for m in items], [m.crop_tensor() for m in items], work, height, width)
        rles = [{"size": [height, width], "counts": c} for c in strings]
        areas, bboxes = areas.tolist(), bboxes.tolist()
    else:
        rles, areas, bboxes = [], [], []
        for m in items:
            crop, box = m.crop, m.box
            if work != (height, width):
                crop, box = upscale_crop(crop, box, width / work[1], height / work[0], height, width)
            rle = crop_to_rle(crop, box, height, width)
            enc = dict(rle, counts=rle["counts"].encode("ascii"))
            rles.append(rle)
            areas.append(int(mask_utils.area(enc)))
            bboxes.append([float(v) for v in mask_utils.toBbox(enc)])  # new lists: records do not share them
    out = []
    for i, m in enumerate(items):
        out.append(
            {
                "id": ids[i],
                "area": int(areas[i]),
                "bbox": bboxes[i],
                "segmentation": rles[i],
                "level": int(levels[i]),
                "parent_id": ids[parents[i]] if parents[i] >= 0 else None,
                "score": round(float(m.score), 6),
                "source": m.source,
            }
        )
    return out


# ---------------------------------------------------------------------- the stage


@dataclass
class MaskConfig:
    """Settings of the mask stage."""

    nms_iou: float = 0.9  #: mask NMS over the whole image (published: windowed, per region)
    min_area_frac: float = 1e-4  #: drop masks smaller than this fraction of the image...
    min_area: int = 16  #: ...or than this many pixels
    # Containment parents: the smallest larger mask holding >= contain of the child.
    # Masks of the 4 atom scales nest only approximately, and clipping children to
    # parents cascades down deep chains: on the first 20 COCO-mini images (tuning half) clipping took
    # AR@1000 from 0.225 to 0.161. Exact containment (contain = 1) left the scales
    # as separate trees whose levels interleave; on 50 BSDS500 train images covering
    # ODS was 0.518 / 0.532 / 0.511 at contain 0.95 / 0.9 / 0.8 (FH: 0.514).
    contain: float = 0.9  #: a containment parent holds at least this fraction of its child
    clip_to_parent: bool = False  #: clip children to parents (exact nesting; costs AR)
    max_masks: int = 1000  #: keep at most this many masks per image (best scores)
    output_divide_regions: bool = True  #: divide regions are masks too (source "divide")
    # Levels and parents.
    # "partition": the atoms' partition ladder (AtomConfig.partition_scale) gives
    #   levels 0..L, each a complete partition of the image, exactly nested (parent =
    #   the region holding it one level up); every other mask hangs below its smallest
    #   container (>= contain), and the masks hanging from the ladder (or from nothing)
    #   start at level L + 1, so levels 0..L are exactly the ladder's partitions under
    #   the evaluation rule. Chosen on BSDS500 train (the tuning split), covering ODS
    #   under the benchmark's level rule, images 120-199: 0.563 against FH 0.546; with
    #   the other masks one level below their container (the earlier rule) they broke
    #   the nesting of the painted partitions (16 of 28 pairs of consecutive levels on
    #   one image) and the score (0.514 against FH 0.511 on val). COCO AR does not
    #   depend on levels.
    # "depth": parent = smallest container, level = depth in that forest.
    # "tree": parents from the stages' own trees (meta "key" / "up": the divide's
    #   recursion and the merge tree, ALGORITHM.md §3.4), level = depth in that
    #   forest; a mask outside every tree falls back to its smallest container.
    levels: str = "partition"  #: "partition", "depth" or "tree"
    max_side: int | None = 1024  #: masks are formed at most this large (long side; None: full size), written at full size


LEVEL_RULES = ("partition", "depth", "tree")


def check_mask_config(cfg: MaskConfig) -> None:
    """Raise ValueError for settings the stage cannot run with (checked once per run, not per image)."""
    if cfg.levels not in LEVEL_RULES:
        raise ValueError(f"config: masks.levels should be one of {', '.join(LEVEL_RULES)}, got {cfg.levels!r}")
    if not 0.0 < cfg.nms_iou <= 1.0:
        raise ValueError(f"config: masks.nms_iou should be in (0, 1], got {cfg.nms_iou}")
    if not 0.0 < cfg.contain <= 1.0:
        raise ValueError(f"config: masks.contain should be in (0, 1], got {cfg.contain}")
    if cfg.max_masks < 1:
        raise ValueError(f"config: masks.max_masks should be >= 1, got {cfg.max_masks}")
    if cfg.max_side is not None and cfg.max_side < 8:
        raise ValueError(f"config: masks.max_side should be >= 8 or null, got {cfg.max_side}")


def working_size(height: int, width: int, cfg: MaskConfig) -> tuple[int, int]:
    """The resolution masks are formed at: the image's, scaled down to ``max_side`` on the long side."""
    sc = 1.0 if cfg.max_side is None else min(1.0, cfg.max_side / max(height, width))
    return max(1, round(height * sc)), max(1, round(width * sc))


def mask_stage(
    items: list[MaskItem],
    image: np.ndarray,
    work_hw: tuple[int, int],
    cfg: MaskConfig,
    refine: str = "none",
    times: dict | None = None,
) -> list[dict]:
    """One image's candidate masks (at the working resolution ``work_hw``) -> annotation records at
    the image's full size: tiny masks dropped, ranked, NMS, optional refinement ("edge", "snap"),
    parents and levels (``cfg.levels``), pruning, RLE. Stage times go into ``times``."""
    times = {} if times is None else times

    def add(key: str, dt: float) -> None:
        times[key] = times.get(key, 0.0) + dt

    t0 = time.perf_counter()
    full_h, full_w = image.shape[:2]
    h, w = work_hw
    # The stages' trees as they came in, dropped masks included: a kept mask's parent
    # is its nearest kept ancestor.
    up_of = {m.meta["key"]: m.meta.get("up") for m in items if "key" in m.meta}
    min_area = max(cfg.min_area, cfg.min_area_frac * full_h * full_w) * (h * w) / (full_h * full_w)
    ov = None
    if COMPILED and refine == "none":
        # The compiled overlaps read every crop once and give the areas (their diagonal)
        # too: computed for every mask whose box can hold enough pixels, then narrowed.
        items = [m for m in items if (m.box[2] - m.box[0]) * (m.box[3] - m.box[1]) >= min_area]
        if items:
            ov = Overlaps(items, h, w)
            areas = ov.areas().tolist()
            if min(areas) < min_area:
                ov = ov.select([i for i, a in enumerate(areas) if a >= min_area])
        else:
            areas = []
    else:
        areas = [m.area for m in items]
    items = [m for m, a in zip(items, areas) if a >= min_area]
    # Final score = stability x sqrt(area fraction): on BSDS500 train this ranking
    # doubled AR@100 over stability alone (large stable segments first).
    for m, a in zip(items, (a for a in areas if a >= min_area)):
        m.score = float(m.score) * math.sqrt(a / (h * w))  # float64 throughout
    if not items:
        add("masks", time.perf_counter() - t0)
        return []
    if refine != "none":
        # Refine only what survives a first NMS (refinement is the costly step).
        first = nms_from_intersections(pairwise_intersections(items, h, w), np.array([m.score for m in items]), cfg.nms_iou)
        items = [items[i] for i in first]
        if refine == "edge":
            from unsam.label.refine import refine_masks

            items = refine_masks(image, items, work_hw=(h, w))
        else:
            from unsam.label.superpixels import snap_masks

            items = snap_masks(image, items, work_hw=(h, w))
        items = [m for m in items if m.area >= min_area]
    # Nest first (children clipped to parents) so NMS sees the final masks; after NMS
    # a mask whose parent went may get a new one: clip again until nothing changes.
    if ov is None:
        ov = Overlaps(items, h, w)
    if cfg.clip_to_parent:
        ov.update(clip_to_parents(items, _parents(items, ov.inter, cfg, up_of)))
    keep = nms_from_intersections(ov.matrix(), np.array([m.score for m in items]), cfg.nms_iou, _protected(items, cfg))
    keep = _best(items, keep, cfg, ov.areas())
    changed: list[int] = []
    for attempt in range(4):
        ov = ov.subset(keep)
        items = ov.items
        parents = _parents(items, ov.inter, cfg, up_of)
        changed = clip_to_parents(items, parents) if cfg.clip_to_parent else []
        if not changed or attempt == 3:
            break
        ov.update(changed)
        keep = nms_from_intersections(ov.inter, np.array([m.score for m in items]), cfg.nms_iou, _protected(items, cfg))
    if changed:
        ov.update(changed)
    items, parents, levels = _prune(items, parents, min_area, cfg.nms_iou, ov.inter, _protected(items, cfg), cfg.contain)
    t1 = time.perf_counter()
    anns = to_annotations(items, parents, levels, full_h, full_w, work_hw=work_hw)
    add("masks", t1 - t0)
    add("output", time.perf_counter() - t1)
    return anns


def _on_ladder(m: MaskItem) -> bool:
    return "partition_level" in m.meta


def _protected(items: list[MaskItem], cfg: MaskConfig) -> np.ndarray:
    """The partition ladder's masks (with levels "partition"): never suppressed, never pruned."""
    if cfg.levels != "partition":
        return np.zeros(len(items), bool)
    return np.fromiter(("partition_level" in m.meta for m in items), bool, len(items))


def _best(items: list[MaskItem], keep: list[int], cfg: MaskConfig, area: np.ndarray) -> list[int]:
    """At most ``max_masks`` of the NMS survivors ``keep``, best score first, where a
    partition-ladder mask of level l comes with every ladder mask of levels <= l (the
    levels stay complete partitions); a ladder level that no longer fits is skipped with
    all deeper ones, and the budget goes on to the next best other masks."""
    if len(keep) <= cfg.max_masks:
        return keep
    ladder = _protected(items, cfg)
    by_level: dict[int, list[int]] = {}
    for i in keep:
        if ladder[i]:
            by_level.setdefault(int(items[i].meta["partition_level"]), []).append(i)
    order = sorted(keep, key=lambda i: (-items[i].score, -int(area[i]), i))
    taken: set[int] = set()
    done_level, blocked = -1, False  # ladder levels 0..done_level are in
    for i in order:
        if len(taken) >= cfg.max_masks:
            break
        if i in taken:
            continue
        if not ladder[i]:
            taken.add(i)
            continue
        lv = int(items[i].meta["partition_level"])
        if blocked:
            continue
        unit = [j for level in sorted(by_level) if done_level < level <= lv for j in by_level[level]]
        if len(taken) + len(unit) > cfg.max_masks:
            blocked = True  # levels must stay whole and nested: no deeper level either
            continue
        taken.update(unit)
        done_level = max(done_level, lv)
    return [i for i in keep if i in taken]


def _parents(items: list[MaskItem], inter: np.ndarray, cfg: MaskConfig, up_of: dict) -> list[int]:
    """Each mask's parent (index into items, -1: a root) under ``cfg.levels``.

    Whatever the rule, a parent holds at least ``cfg.contain`` of its child: a stage's
    tree parent that does not (a top cluster may reach 10 % outside its divide region,
    and its child may lie in that part) gives way to the smallest such container.
    """
    containers = parents_from_intersections(inter, cfg.contain)
    out = list(containers)
    if cfg.levels == "depth":
        return out
    area = np.diag(inter)
    where = {m.meta["key"]: i for i, m in enumerate(items) if "key" in m.meta}
    for i, m in enumerate(items):
        key = m.meta.get("key")
        if key is None or (cfg.levels == "partition" and not _on_ladder(m)):
            continue
        p = up_of.get(key)
        while p is not None and p not in where:  # the nearest kept ancestor
            p = up_of.get(p)
        q = where[p] if p is not None else -1
        if q >= 0 and inter[i, q] < cfg.contain * area[i]:
            q = containers[i]
        out[i] = q
    return out


def _prune(
    items: list[MaskItem],
    parents: list[int],
    min_area: float,
    iou: float,
    inter: np.ndarray,
    protected: np.ndarray | None = None,
    contain: float = 0.9,
):
    """Drop masks that clipping left too small, or too close to their parent (IoU above
    the NMS threshold); their children go to the nearest kept ancestor; ``protected``
    masks always stay. Returns levels too: a ladder mask's partition level, another
    mask's parent's level + 1 (0 for a root)."""
    n = len(items)
    area = np.diagonal(inter).astype(np.float64)  # the masks' areas (exact)
    protected = np.zeros(n, bool) if protected is None else np.asarray(protected, bool)
    par = np.asarray(parents, np.int64).reshape(n)
    up1 = np.maximum(par, 0)
    both = inter[np.arange(n), up1].astype(np.float64)
    close = (par >= 0) & (both > iou * np.maximum(area + area[up1] - both, 1.0))
    alive = (protected | ((area >= min_area) & ~close)).tolist()

    def up(i: int) -> int:
        while i >= 0 and not alive[i]:
            i = parents[i]
        return i

    remap: dict[int, int] = {}
    kept = []
    for i, m in enumerate(items):
        if alive[i]:
            remap[i] = len(kept)
            kept.append(m)
    new_parents = [remap[p] if (p := up(parents[i])) >= 0 else -1 for i in range(len(items)) if alive[i]]
    # A child of a dropped mask goes to its nearest kept ancestor; where that one holds
    # less than ``contain`` of it, to its smallest kept container instead.
    idx = np.array(sorted(remap), np.int64)
    whole = idx.size == len(items)  # nothing dropped: the kept masks' matrix is inter itself
    sub = inter if whole else (inter[np.ix_(idx, idx)] if idx.size else np.zeros((0, 0), np.int64))
    npar = np.asarray(new_parents, np.int64).reshape(idx.size)
    held = sub[np.arange(idx.size), np.maximum(npar, 0)] if idx.size else np.zeros(0, np.int64)
    loose = (npar >= 0) & ~protected[idx] & (held < contain * np.diagonal(sub))
    if loose.any():
        containers = parents_from_intersections(sub, contain)
        for k in np.flatnonzero(loose).tolist():
            new_parents[k] = containers[k]
    fixed = {remap[i]: int(items[i].meta["partition_level"]) for i in remap if protected[i]}
    # With a partition ladder, the other masks hang below its finest level, so the
    # levels of the ladder stay its exact partitions (README, "The hierarchy").
    below = max((int(items[i].meta.get("partition_levels", 0)) for i in remap if protected[i]), default=0)
    levels: list[int | None] = [None] * len(kept)

    def level(i: int) -> int:
        # Parents are larger in the containment forest but not always in a stage's tree
        # (a top cluster may reach 10 % outside its divide region): follow the links.
        chain = []
        while levels[i] is None:
            if i in fixed:
                levels[i] = fixed[i]
                break
            p = new_parents[i]
            if p < 0 or (below and p in fixed):
                levels[i] = below if below else 0
                break
            chain.append(i)
            i = p
        base = levels[i]
        for j in reversed(chain):
            base += 1
            levels[j] = base
        return levels[chain[0]] if chain else levels[i]

    for i in range(len(kept)):
        level(i)
    return kept, new_parents, [int(v) for v in levels]
