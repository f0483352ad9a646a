"""Pixel-accurate conquer: atoms (graph segments) and their full merge hierarchy.

UnSAM's conquer stage merges 8-pixel patches, so its finest masks have blocky
borders and small objects (a few patches) are out of reach. This stage keeps
the conquer idea, bottom-up merging of adjacent pieces by similarity, but its
pieces are **atoms**: Felzenszwalb–Huttenlocher segments (``graph_segment``,
a union-find kernel) that follow the image's edges to the pixel. For each atom
scale the region adjacency graph is agglomerated to the end (``merge_graph``)
and every node of the dendrogram is a candidate mask:

    similarity = w_hist  * colour-histogram intersection (CIE Lab, ``bins`` per channel)
               + w_feat  * cosine of the backbone's summed patch features
               + w_size  * (1 - joint area / image area)          (small regions first)
               + w_fill  * (1 - gap in the joint box / image area) (regions that fit together)

as in Selective Search's hierarchical grouping (Uijlings et al., IJCV 2013),
with UnSAM's feature cosine as one more term. Several atom scales diversify
the candidates (a segment missed at one scale is often whole at another).

Score of a node: its persistence ``birth - death``, the similarity at which it
was formed minus the one at which it was absorbed (atoms are born at
``atom_birth``), so segments that stay separate over a long range of the merge
come first (the dendrogram analogue of the conquer score); it is written in
units of the ceiling (the sum of the weights) and clipped to [0, 1]. The mask
stage then multiplies by sqrt(area fraction) like every other mask.

Partition levels: the dendrogram of one scale (``partition_scale``, k = 200)
is also cut into a ladder of partitions; every region of every cut is a mask
(source "partition") whose level is its cut. ``partition_rule`` "count" (the
default) cuts at region counts 1, 2, 3, 4, 5, ... (``round(ratio^j)``, ratio
1.25, up to ``partition_max_regions``): level l has about 1.25^l regions on
every image. "similarity" stops the greedy merge sequence at its first merge
below a threshold that rises with the level (``partition_steps`` thresholds
from ``partition_bottom`` to ``partition_top`` of the similarity ceiling, after
the whole image at level 0), like the thresholds of a UCM. Each cut is a
complete partition and the cuts nest exactly; the other dendrogram nodes keep
the recall.

Tuned with ``classic`` on the first 20 COCO-mini images, all in the tuning half of
``unsam.evaluate.splits`` (AR@1000): 3 scales
(50, 100, 200) 0.245 -> 4 scales (100 ... 800) 0.261; atoms born at the
ceiling rather than at 1: 0.230 -> 0.244; the fill term: 0.210 -> 0.232 in an
early prototype.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from unsam.kernels.segment import adjacent_pairs, graph_segment, merge_graph
from unsam.label.items import MaskItem

__all__ = [
    "AtomConfig",
    "atom_masks",
    "colour_histograms",
    "compact_labels",
    "dendrogram_nodes",
    "lab_bins",
    "nest_partitions",
    "check_atom_config",
    "partition_counts",
    "partition_ladder",
    "similarity_cuts",
    "snap_to_atoms",
]


@dataclass
class AtomConfig:
    """Settings of the atom (pixel-accurate) conquer stage."""

    enabled: bool = True  #: run the stage (masks with source "atoms")
    scales: tuple[float, ...] = (100.0, 200.0, 400.0, 800.0)  #: FH k of the atoms, one hierarchy per scale
    sigma: float = 0.8  #: Gaussian pre-smoothing for the atoms (the FH paper's value)
    min_size: int = 20  #: smallest atom in pixels (at the mask stage's working resolution)
    nest: bool = True  #: make each coarser atom scale a coarsening of the finer one
    # Divide regions from a patch grid have blocky borders; snapped to the atoms they
    # follow the image (50 BSDS500 train images, covering ODS 0.499 -> 0.511 at contain 0.8).
    snap_divide: bool = True  #: snap the divide regions to the finest atoms
    bins: int = 25  #: colour-histogram bins per Lab channel
    w_hist: float = 1.0  #: weight of the colour-histogram intersection
    w_feat: float | None = None  #: weight of the backbone-feature cosine (None: the backbone's default)
    w_size: float = 0.5  #: weight of the size term (small regions merge first)
    w_fill: float = 0.5  #: weight of the fill term (regions that fill each other's box)
    atom_birth: float | None = None  #: similarity at which atoms are born (None: the ceiling, sum of the weights)
    max_nodes: int = 1000  #: best nodes per scale made into masks (before the mask stage's NMS)
    # Partition levels: the dendrogram of one atom scale cut into a ladder of complete,
    # exactly nested partitions; its regions are masks whose ``level`` is the rung.
    # Chosen on the tuning data (BSDS500 train, the benchmark's level rule, and the
    # COCO-mini tuning half). The ladder alone, k = 200, covering ODS / PRI ODS: region
    # counts 1.25^l 0.566 / 0.757 (images 0-39), 0.572 / 0.812 (40-119); similarity
    # thresholds 0.4 ... 0.95 of the ceiling in 34 steps 0.568 / 0.765, 0.580 / 0.825
    # (FH 0.530 / 0.754, 0.523 / 0.808). The whole output, images 120-199 held back from
    # that choice: counts 0.563 / 0.796, thresholds 0.567 / 0.802 (FH 0.546 / 0.792).
    # But the thresholds cost COCO recall (tuning half AR@1000 0.239 -> 0.235, AR@100
    # 0.131 -> 0.128), and the tiny promptable model of tests/test_train.py learns their
    # labels clearly worse (IoU loss falls to 0.67 of its start in 60 steps, against
    # 0.45 with counts): counts stay the default.
    partition_scale: float | None = 200.0  #: atom scale of the partition levels (the nearest of ``scales``); None: off
    partition_rule: str = "count"  #: "count" (region counts) or "similarity" (thresholds)
    partition_bottom: float = 0.4  #: "similarity": threshold of level 1, a fraction of the similarity ceiling
    partition_top: float = 0.95  #: "similarity": threshold of the finest level, a fraction of the ceiling
    partition_steps: int = 34  #: "similarity": levels after the whole image
    partition_ratio: float = 1.25  #: "count": region count grows about this much per level
    partition_max_regions: int = 256  #: "count": finest partition level has at most this many regions


# Lab ranges of the histogram bins (values outside are clamped into the end bins).
_LAB_RANGE = ((0.0, 100.0), (-80.0, 80.0), (-80.0, 80.0))


def lab_bins(image: np.ndarray, bins: int) -> np.ndarray:
    """Histogram bin of every pixel in each CIE Lab channel: [H, W, 3] uint8 -> int64 [3, H * W]."""
    from unsam.label.features import rgb_to_lab

    t = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1)[None] / 255.0
    lab = rgb_to_lab(t)[0].reshape(3, -1).numpy()
    out = np.empty(lab.shape, np.int64)
    for c, (lo, hi) in enumerate(_LAB_RANGE):
        out[c] = np.clip(((lab[c] - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
    return out


def colour_histograms(
    image: np.ndarray, atoms: np.ndarray, n: int, bins: int, codes: np.ndarray | None = None
) -> np.ndarray:
    """Per-atom Lab histograms: image [H, W, 3] uint8, atoms [H, W] -> float32 [n, 3 * bins] counts.

    ``codes``: :func:`lab_bins` of the image, when already computed (one per image, not per scale).
    """
    codes = lab_bins(image, bins) if codes is None else codes
    flat = atoms.ravel()
    out = np.empty((n, 3 * bins), np.float32)
    for c in range(3):
        out[:, c * bins : (c + 1) * bins] = np.bincount(flat * bins + codes[c], minlength=n * bins).reshape(n, bins)
    return out


def _atom_features(atoms: np.ndarray, n: int, feats: torch.Tensor) -> np.ndarray:
    """Sum of the backbone feature of the patch under each pixel, per atom: [n, C].

    One sparse (atom x patch) count matrix times the [patches, C] features, so
    the feature map is never upsampled to pixels.
    """
    from scipy.sparse import coo_matrix

    gh, gw, c = feats.shape
    h, w = atoms.shape
    py = np.minimum((np.arange(h) * gh) // h, gh - 1)
    px = np.minimum((np.arange(w) * gw) // w, gw - 1)
    patch = (py[:, None] * gw + px[None, :]).ravel()
    counts = coo_matrix((np.ones(h * w, np.float32), (atoms.ravel(), patch)), shape=(n, gh * gw)).tocsr()
    return np.asarray(counts @ feats.reshape(gh * gw, c).cpu().numpy(), np.float32)


def snap_to_atoms(items: list[MaskItem], atoms: np.ndarray) -> None:
    """Replace each mask by the union of the atoms it covers by more than half (in place).

    Divide regions come from a patch grid (blocky borders); snapped, they follow
    the image's edges like the atom masks. A mask that would vanish is kept as is.
    """
    n = int(atoms.max()) + 1
    size = np.bincount(atoms.ravel(), minlength=n)
    for m in items:
        x0, y0, x1, y1 = m.box
        inside = np.bincount(atoms[y0:y1, x0:x1][m.crop], minlength=n)
        keep = 2 * inside > size
        if not keep.any():
            continue
        m.box, m.crop = (0, 0, atoms.shape[1], atoms.shape[0]), keep[atoms]
        m.tighten()


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..n-1 in order of first appearance in sorted label order."""
    _, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(labels.shape).astype(np.int64)


def nest_partitions(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Make a fine -> coarse list of partitions ([H, W] int labels each) exactly nested.

    Level 0 is kept (renumbered 0..n-1); each next level is replaced by the
    coarsening of the previous one in which every previous region joins the
    region of ``parts[k]`` it overlaps most (ties: the lower label). Returns
    int64 label maps, labels 0..n_k-1.
    """
    if not parts:
        return []
    out = [compact_labels(np.asarray(parts[0]))]
    for p in parts[1:]:
        prev = out[-1]
        cur = compact_labels(np.asarray(p))
        if cur.shape != prev.shape:
            raise ValueError(f"nest_partitions: partitions differ in shape: {prev.shape} vs {cur.shape}")
        n_prev, n_cur = int(prev.max()) + 1, int(cur.max()) + 1
        overlap = np.bincount((prev * n_cur + cur).ravel(), minlength=n_prev * n_cur).reshape(n_prev, n_cur)
        assign = overlap.argmax(1)  # argmax takes the first (lowest label) of equal maxima
        out.append(compact_labels(assign)[prev])
    return out


def check_atom_config(cfg: AtomConfig) -> None:
    """Raise ValueError for ladder settings the stage cannot run with (checked once per run)."""
    if cfg.partition_scale is None:
        return
    if cfg.partition_rule == "count":
        partition_counts(cfg.partition_ratio, cfg.partition_max_regions)  # raises on bad values
    elif cfg.partition_rule == "similarity":
        if not 0.0 <= cfg.partition_bottom < cfg.partition_top <= 1.0:
            raise ValueError(
                f"atoms.partition_bottom and partition_top should satisfy 0 <= bottom < top <= 1, got "
                f"{cfg.partition_bottom} and {cfg.partition_top}"
            )
        if cfg.partition_steps < 1:
            raise ValueError(f"atoms.partition_steps should be >= 1, got {cfg.partition_steps}")
    else:
        raise ValueError(f"atoms.partition_rule should be 'similarity' or 'count', got {cfg.partition_rule!r}")


def partition_counts(ratio: float, max_regions: int) -> list[int]:
    """Region counts of the partition levels, coarse to fine: the distinct round(ratio^j) <= max_regions."""
    if not ratio > 1.0:
        raise ValueError(f"atoms.partition_ratio should be > 1, got {ratio}")
    if max_regions < 1:
        raise ValueError(f"atoms.partition_max_regions should be >= 1, got {max_regions}")
    out, j = [], 0
    while True:
        c = int(round(ratio**j))
        if c > max_regions:
            return out
        if not out or c > out[-1]:
            out.append(c)
        j += 1


def similarity_cuts(sims: np.ndarray, thresholds: Sequence[float]) -> list[int]:
    """Cuts of a greedy merge sequence (similarities ``sims`` in merge order) at ascending
    thresholds: all the merges first (the whole dendrogram), then for each threshold the
    merges before the first one below it. Non-increasing: coarse to fine, one per level."""
    m = len(sims)
    out = [m]
    for t in thresholds:
        below = np.flatnonzero(np.asarray(sims) < t)
        out.append(min(out[-1], int(below[0]) if below.size else m))
    return out


def partition_ladder(
    n: int, merges: np.ndarray, counts: list[int] | None = None, cuts: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a dendrogram into nested partitions: at the region counts ``counts`` (ascending:
    coarse to fine; counts below what the merges can reach, or above n, are clamped and
    levels that repeat a cut are dropped), or after the numbers of merges ``cuts``
    (non-increasing, one per level; a level may repeat the previous cut).

    The dendrogram has n leaves; merge i (row i of merges [M, 2]) makes node n + i; the
    cut at count c is the forest after n - c merges. Returns (nodes, levels, parents):
    every node that is a region of some cut, once, at the coarsest cut holding it, and
    the index into ``nodes`` of the region holding it at the previous cut (-1 at level
    0). Each cut is a partition; they nest exactly.
    """
    m = len(merges)
    total = n + m
    # Node x exists while born <= i < absorbed, i = merges applied so far.
    born = np.zeros(total, np.int64)
    born[n:] = np.arange(1, m + 1)
    absorbed = np.full(total, m + 1, np.int64)
    up = np.full(total, -1, np.int64)
    if m:
        absorbed[merges[:, 0]] = np.arange(1, m + 1)
        absorbed[merges[:, 1]] = np.arange(1, m + 1)
        up[merges[:, 0]] = np.arange(n, total)
        up[merges[:, 1]] = np.arange(n, total)
    if cuts is None:
        cuts = []
        for c in counts or []:
            i = int(np.clip(n - c, 0, m))
            if not cuts or i != cuts[-1]:
                cuts.append(i)
    elif any(b > a for a, b in zip(cuts, cuts[1:])) or any(not 0 <= i <= m for i in cuts):
        raise ValueError(f"partition_ladder: cuts should be non-increasing merge counts in [0, {m}], got {cuts}")
    nodes, levels, parents = [], [], []
    index: dict[int, int] = {}
    for lv, i in enumerate(cuts):
        alive = np.flatnonzero((born <= i) & (absorbed > i))
        for x in alive.tolist():
            if x in index:
                continue
            p = -1
            if lv:
                y, prev = up[x], cuts[lv - 1]
                while y >= 0 and not (born[y] <= prev < absorbed[y]):
                    y = up[y]
                p = index[int(y)]
            index[x] = len(nodes)
            nodes.append(x)
            levels.append(lv)
            parents.append(p)
    return np.asarray(nodes, np.int64), np.asarray(levels, np.int64), np.asarray(parents, np.int64)


def _node_extents(n: int, merges: np.ndarray, area: np.ndarray, boxes: np.ndarray):
    """Area, box and leaf interval of every dendrogram node (n leaves, merge i makes n + i).

    The leaves are laid out in depth-first order (each merge's first child, then its
    second; the trees of a forest one after another), so every node's leaves are the
    positions lo[x] .. hi[x] - 1. Returns (area float64 [n + M], boxes as a list of
    int tuples, lo, hi int64 [n + M]). Plain-int loops: O(n + M), no per-node numpy call.
    """
    m = len(merges)
    ab = merges.tolist()
    size = [1] * n + [0] * m
    ar = area.tolist() + [0.0] * m
    bx = [tuple(b) for b in boxes.tolist()] + [None] * m
    for i, (a, b) in enumerate(ab):
        c = n + i
        size[c] = size[a] + size[b]
        ar[c] = ar[a] + ar[b]
        p, q = bx[a], bx[b]
        bx[c] = (min(p[0], q[0]), min(p[1], q[1]), max(p[2], q[2]), max(p[3], q[3]))
    absorbed = [False] * (n + m)
    for a, b in ab:
        absorbed[a] = absorbed[b] = True
    lo = [0] * (n + m)
    start = 0
    for x in range(n + m):  # roots in id order, each tree after the previous one
        if not absorbed[x]:
            lo[x] = start
            start += size[x]
    for i in range(m - 1, -1, -1):  # parents before children: a parent's id is larger
        a, b = ab[i]
        lo[a] = lo[n + i]
        lo[b] = lo[n + i] + size[a]
    lo_a = np.asarray(lo, np.int64)
    return np.asarray(ar, np.float64), bx, lo_a, lo_a + np.asarray(size, np.int64)


def dendrogram_nodes(n: int, merges: np.ndarray, sims: np.ndarray, atom_birth: float):
    """Birth and death similarity of every node of a dendrogram (n leaves, merges [M, 2]; -inf: never absorbed)."""
    m = len(merges)
    birth = np.empty(n + m)
    death = np.full(n + m, -np.inf)
    birth[:n] = atom_birth
    birth[n:] = sims
    death[merges[:, 0]] = sims
    death[merges[:, 1]] = sims
    return birth, death


def atom_masks(
    image: np.ndarray,
    cfg: AtomConfig,
    w_feat: float = 0.0,
    feats: torch.Tensor | None = None,
    timings: dict | None = None,
    snap: list[MaskItem] | None = None,
) -> list[MaskItem]:
    """Candidate masks of one image (at the working resolution): image [H, W, 3] uint8 RGB.

    feats ([gh, gw, C], optional): the backbone's patch features of the image (for w_feat).
    snap: masks to snap, in place, to the finest atoms (see :func:`snap_to_atoms`).
    """
    timings = timings if timings is not None else {}
    ladder_scale = None
    if cfg.partition_scale is not None:
        if not cfg.partition_scale > 0:
            raise ValueError(f"atoms.partition_scale should be > 0 or None, got {cfg.partition_scale}")
        # The atom scale nearest to it in log ratio (equal distance: the finer one).
        ladder_scale = min(sorted(cfg.scales), key=lambda k: abs(np.log(k / cfg.partition_scale)))
    t0 = time.perf_counter()
    h, w = image.shape[:2]
    labels = graph_segment(image, sorted(cfg.scales), cfg.min_size, cfg.sigma).numpy()
    if cfg.nest and len(labels) > 1:
        labels = np.stack(nest_partitions(list(labels)))
    codes = lab_bins(image, cfg.bins)
    if snap:
        snap_to_atoms(snap, labels[0])
    t1 = time.perf_counter()
    items: list[MaskItem] = []
    for k, atoms in zip(sorted(cfg.scales), labels):
        n = int(atoms.max()) + 1
        area = np.bincount(atoms.ravel(), minlength=n).astype(np.float64)
        sl = ndimage.find_objects(atoms + 1)
        boxes = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in sl], np.int64)
        hist = colour_histograms(image, atoms, n, cfg.bins, codes)
        use_feat = w_feat != 0.0 and feats is not None
        f = _atom_features(atoms, n, feats) if use_feat else None
        merges, sims = merge_graph(
            torch.from_numpy(hist),
            torch.from_numpy(area),
            torch.from_numpy(adjacent_pairs(atoms)),
            None if f is None else torch.from_numpy(f),
            torch.from_numpy(boxes),
            cfg.w_hist,
            w_feat if use_feat else 0.0,
            cfg.w_size,
            cfg.w_fill,
        )
        merges, sims = merges.numpy(), sims.numpy()
        ceiling = cfg.w_hist + abs(w_feat if use_feat else 0.0) + cfg.w_size + cfg.w_fill
        atom_birth = ceiling if cfg.atom_birth is None else float(cfg.atom_birth)
        birth, death = dendrogram_nodes(n, merges, sims, atom_birth)
        # The root of each component has no death: it persists to the end (the
        # whole image is a mask of its own elsewhere; give it the lowest merge).
        floor = float(sims.min()) if len(sims) else 0.0
        death = np.where(np.isfinite(death), death, min(floor, atom_birth) - 1.0)
        all_area, all_box, lo, hi = _node_extents(n, merges, area, boxes)
        pers = birth - death
        rank = pers * np.sqrt(all_area / (h * w))
        chosen = np.argsort(-rank, kind="stable")[: cfg.max_nodes]
        chosen = chosen[np.isfinite(rank[chosen])]
        spine: dict[int, tuple[int, int]] = {}  # node -> (partition level, parent node)
        if ladder_scale is not None and float(k) == float(ladder_scale):
            if cfg.partition_rule == "count":
                nodes, lv, par = partition_ladder(n, merges, partition_counts(cfg.partition_ratio, cfg.partition_max_regions))
                ladder_levels = int(lv.max()) + 1 if len(lv) else 1
            else:
                th = ceiling * np.linspace(cfg.partition_bottom, cfg.partition_top, cfg.partition_steps)
                nodes, lv, par = partition_ladder(n, merges, cuts=similarity_cuts(sims, th))
                ladder_levels = cfg.partition_steps + 1
            spine = {int(x): (int(l), int(nodes[p]) if p >= 0 else -1) for x, l, p in zip(nodes, lv, par)}
            chosen = np.concatenate([nodes, chosen[~np.isin(chosen, nodes)]])
        # A node's atoms are the positions lo..hi-1 of the dendrogram's leaf order:
        # its mask is two comparisons on the box of the order-position image.
        order_img = lo[:n].astype(np.int32)[atoms]  # int32: half the memory traffic of the compares
        lo_l, hi_l = lo.tolist(), hi.tolist()
        for node in chosen.tolist():
            x0, y0, x1, y1 = all_box[node]
            r = order_img[y0:y1, x0:x1]
            crop = (r >= lo_l[node]) & (r < hi_l[node])
            # Output scores live in [0, 1]: persistence in units of the ceiling
            # (an atom that stays separate down to similarity 0 scores 1).
            score = float(np.clip(pers[node] / max(ceiling, 1e-12), 0.0, 1.0))
            meta = {"scale": float(k), "birth": float(birth[node]), "death": float(death[node])}
            source = "atoms"
            if node in spine:
                # The partition levels, for the mask stage (see MaskConfig.levels).
                meta.update(partition_level=spine[node][0], partition_levels=ladder_levels, key=("partition", node))
                if spine[node][1] >= 0:
                    meta["up"] = ("partition", spine[node][1])
                source = "partition"
            items.append(MaskItem((x0, y0, x1, y1), crop, score, source, meta))
    timings["atoms_segment"] = timings.get("atoms_segment", 0.0) + (t1 - t0)
    timings["atoms_merge"] = timings.get("atoms_merge", 0.0) + (time.perf_counter() - t1)
    return items
