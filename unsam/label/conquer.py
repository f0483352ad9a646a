"""Conquer: bottom-up merging inside each divide region (ALGORITHM.md §3).

All regions of an image (or of several images) are cropped and resized in one
``grid_sample`` call, their features come from one batched backbone call, and
``merge_levels`` runs on all of them at once. Each distinct cluster is emitted
once, with the range of levels at which it exists and its parent in the merge
tree (the cluster it merges into at the next coarser threshold; the top
clusters' parent is their divide region, ALGORITHM.md §3.4), then brought back
to pixels (bilinear upsample of its grid mask, threshold 0.5) and kept when
more than ``inside_frac`` of it lies inside its divide region.

Entry point: :func:`conquer_batch` (settings: :class:`ConquerConfig`): images
and their divide regions in, the clusters as masks
(:class:`~unsam.label.items.MaskItem`, source "conquer") out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from unsam.kernels import DEFAULT_THRESHOLDS, merge_levels
from unsam.label.items import MaskItem, interp_matrix, interp_spans

#: A cluster's score: SCORE_FLOOR + (1 - SCORE_FLOOR) x the share of the thresholds it survives
#: unchanged (stable segments first; the mask stage multiplies it by sqrt(area fraction)).
SCORE_FLOOR = 0.25


@dataclass
class ConquerConfig:
    """Settings of the conquer stage (published values)."""

    size: int = 256  #: crops are resized to size x size (32 x 32 patches at patch 8)
    thresholds: tuple[float, ...] = field(default_factory=lambda: tuple(DEFAULT_THRESHOLDS))
    min_size: int = 4  #: clusters smaller than this many patches are not emitted
    inside_frac: float = 0.9  #: keep a mask when more than this fraction is inside its region
    batch_size: int = 32  #: crops per backbone call


@dataclass
class Cluster:
    """A distinct cluster of one region's merge hierarchy."""

    region: int  #: index of the divide region
    first_level: int  #: finest level at which it exists
    last_level: int  #: coarsest level at which it still exists unchanged
    grid: np.ndarray  #: [g, g] bool member patches
    parent: int = -1  #: index (in the region's list) of the cluster it merges into; -1: none (a top cluster)

    @property
    def persistence(self) -> int:
        return self.last_level - self.first_level + 1


def crop_resize(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes from one image and resize each to size x size (bilinear), in one call.

    image [3, H, W] float; boxes [R, 4] (x0, y0, x1, y1) pixel edges, x1/y1 exclusive
    -> [R, 3, size, size].
    """
    _, h, w = image.shape
    r = boxes.shape[0]
    if r == 0:
        return image.new_zeros((0, 3, size, size))
    b = boxes.to(image.dtype)
    # Affine grid in normalised coordinates (align_corners=False: -1 and 1 are pixel edges).
    sx = (b[:, 2] - b[:, 0]) / w
    sy = (b[:, 3] - b[:, 1]) / h
    tx = (b[:, 0] + b[:, 2]) / w - 1
    ty = (b[:, 1] + b[:, 3]) / h - 1
    theta = torch.zeros(r, 2, 3, dtype=image.dtype, device=image.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, [r, 3, size, size], align_corners=False)
    # One batched sampling call for every box (no per-box Python work on the device).
    return F.grid_sample(image.expand(r, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=False)


def clusters_from_labels(labels: np.ndarray, region: int, min_size: int) -> list[Cluster]:
    """Distinct clusters of one region's labels [L, g, g] (ids = smallest member index), with parents.

    A cluster with id c at level l is the same mask as (l + 1, c) exactly when
    both have the same size (clusters only grow, and the id of an unchanged
    cluster is unchanged), so each distinct member set is emitted once. Its
    parent is the cluster holding it at the level after its last (that one
    changed there, so it is emitted, and it is larger, so it has min_size too).
    """
    nlev = labels.shape[0]
    flat = labels.reshape(nlev, -1)
    npx = flat.shape[1]
    counts = [np.bincount(flat[l][flat[l] >= 0], minlength=npx) for l in range(nlev)]
    out: list[Cluster] = []
    index: dict[tuple[int, int], int] = {}  # (first level, id) -> position in out
    for l in range(nlev):
        ids = np.flatnonzero(counts[l] >= min_size)
        for c in ids:
            if l > 0 and counts[l - 1][c] == counts[l][c]:
                continue  # unchanged since the finer level: already emitted
            last = l
            while last + 1 < nlev and counts[last + 1][c] == counts[l][c]:
                last += 1
            index[(l, int(c))] = len(out)
            out.append(Cluster(region, l, last, (flat[l] == c).reshape(labels.shape[1:])))
    for cl in out:
        if cl.last_level + 1 < nlev:
            member = int(np.flatnonzero(cl.grid.reshape(-1))[0])
            cl.parent = index[(cl.last_level + 1, int(flat[cl.last_level + 1][member]))]
    return out


def conquer_batch(
    images: list[torch.Tensor],
    regions: list[list[tuple]],
    extractor: Callable[[torch.Tensor], torch.Tensor],
    cfg: ConquerConfig | None = None,
    timings: dict | None = None,
    tag: str = "conquer",
) -> list[list[MaskItem]]:
    """Conquer every divide region of several images in one feature pass and one merge call.

    images: [3, H, W] float in [0, 1] each (on the extractor's device); regions: per image,
    (box (x0, y0, x1, y1), crop [y1-y0, x1-x0] bool, sample_box, key) of each region: box
    and crop at the mask (working) resolution, ``sample_box`` the same box in the image's
    pixels (crops are sampled from the full image), ``key`` the region's tree key (None for
    no parent). Returns per image the kept clusters as masks at the working resolution
    (source "conquer"), each with ``meta`` first_level, ``key`` (``tag``, ...; unique per
    call, so give calls on the same image different tags) and ``up``
    (its kept parent cluster, else the region's key). Score: the share of the thresholds
    the cluster survives unchanged (0.25 + 0.75 * persistence / levels).
    """
    cfg = cfg or ConquerConfig()
    timings = timings if timings is not None else {}
    jobs = []  # (image index, region index, box, sample box)
    for ii, regs in enumerate(regions):
        for ri, reg in enumerate(regs):
            box = reg[0]
            if box[2] > box[0] and box[3] > box[1]:
                jobs.append((ii, ri, box, reg[2]))
    out: list[list[MaskItem]] = [[] for _ in images]
    if not jobs:
        return out
    t0 = time.perf_counter()
    feats = []
    for s in range(0, len(jobs), cfg.batch_size):
        part = jobs[s : s + cfg.batch_size]
        crops = []
        for ii in sorted({j[0] for j in part}):
            tb = torch.tensor([j[3] for j in part if j[0] == ii], device=images[ii].device)
            crops.append(crop_resize(images[ii], tb, cfg.size))
        feats.append(extractor(torch.cat(crops)).float())
    feats = torch.cat(feats)
    _sync(feats)
    t1 = time.perf_counter()
    labels = merge_levels(feats, cfg.thresholds).cpu().numpy()
    t2 = time.perf_counter()
    nlev = len(cfg.thresholds)
    for j, (ii, ri, (x0, y0, x1, y1), _) in enumerate(jobs):
        region_crop, region_key = regions[ii][ri][1], regions[ii][ri][3]
        clusters = clusters_from_labels(labels[j], ri, cfg.min_size)
        if not clusters:
            continue
        bh, bw = y1 - y0, x1 - x0
        g_h, g_w = clusters[0].grid.shape
        ry, rx = interp_matrix(bh, g_h), interp_matrix(bw, g_w)
        # Output rows (cols) that grid row (col) i reaches: a cluster is upsampled over
        # its own grid box only, so small clusters cost little in a large region.
        ylo, yhi = interp_spans(ry)
        xlo, xhi = interp_spans(rx)
        kept: dict[int, MaskItem] = {}
        for ci, c in enumerate(clusters):
            gr = np.flatnonzero(c.grid.any(1))
            gc = np.flatnonzero(c.grid.any(0))
            r0, r1, c0, c1 = gr[0], gr[-1] + 1, gc[0], gc[-1] + 1
            ya, yb, xa, xb = ylo[r0], yhi[r1 - 1], xlo[c0], xhi[c1 - 1]
            m = (ry[ya:yb, r0:r1] @ c.grid[r0:r1, c0:c1].astype(np.float32) @ rx[xa:xb, c0:c1].T) > 0.5
            area = np.count_nonzero(m)
            if area == 0 or np.count_nonzero(m & region_crop[ya:yb, xa:xb]) <= cfg.inside_frac * area:
                continue
            rows, cols = m.any(1), m.any(0)
            ta, tb = rows.argmax(), rows.size - rows[::-1].argmax()
            la, lb = cols.argmax(), cols.size - cols[::-1].argmax()
            box = (x0 + xa + int(la), y0 + ya + int(ta), x0 + xa + int(lb), y0 + ya + int(tb))
            score = SCORE_FLOOR + (1.0 - SCORE_FLOOR) * c.persistence / nlev
            key = (tag, j, ci)
            kept[ci] = MaskItem(box, np.ascontiguousarray(m[ta:tb, la:lb]), score, "conquer", {"first_level": c.first_level, "key": key})
        for ci, item in kept.items():
            p = clusters[ci].parent
            while p >= 0 and p not in kept:  # the nearest kept ancestor in the merge tree
                p = clusters[p].parent
            up = kept[p].meta["key"] if p >= 0 else region_key
            if up is not None:
                item.meta["up"] = up
            out[ii].append(item)
    t3 = time.perf_counter()
    timings["features_conquer"] = timings.get("features_conquer", 0.0) + (t1 - t0)
    timings["merge"] = timings.get("merge", 0.0) + (t2 - t1)
    timings["masks"] = timings.get("masks", 0.0) + (t3 - t2)
    return out


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
