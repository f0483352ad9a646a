"""Classical unsupervised baselines in unsam's per-image JSON format.

    python -m unsam.baselines --method fh   --input IMAGES --output DIR
    python -m unsam.baselines --method slic --input IMAGES --output DIR

Two methods a user could pick instead of unsam, each run at several scales to
form a hierarchy, and written exactly like ``python -m unsam.label`` writes
(``DIR/<relative path>.json``, SA-1B layout, ``level`` / ``parent_id`` /
``score``; see :mod:`unsam.io`), so ``python -m unsam.evaluate`` scores them
the same way:

- ``fh``: Felzenszwalb–Huttenlocher graph segmentation
  (``skimage.segmentation.felzenszwalb``) at the scales of :class:`FHConfig`.
  FH partitions at different scales are not nested, so each coarser partition
  is made a coarsening of the finer one: every region of the finer level joins
  the coarser FH segment it overlaps most (ties: the lower label).
- ``slic``: SLIC superpixels, then greedy region-adjacency merging by mean
  CIELAB colour (the pair of adjacent regions with the closest size-weighted
  mean colour merges first, means are recomputed after each merge, as in
  scikit-image's ``merge_hierarchical`` example). The partition is recorded
  when the closest pair is farther apart than each threshold of
  :class:`SLICConfig`; these levels are nested by construction.

From a chain of nested partitions (fine -> coarse) each distinct region is
emitted once (a region that survives several scales unchanged is one mask),
with ``parent_id`` = the smallest strictly larger region containing it and
``level`` = its depth in that forest (0 = a region of the coarsest partition),
the same semantics as unsam's output. ``score`` = the fraction of the scales
at which the region exists unchanged (stable regions first, as unsam's
conquer score); equal scores keep the output order, coarse to fine and larger
first. ``source`` is ``"conquer"`` (bottom-up grouping) and each annotation
carries ``method``.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unsam.io import (
    InputError,
    discover_images,
    image_record,
    load_image,
    read_label_json,
    write_json_atomic,
)
from unsam.kernels.segment import adjacent_pairs
from unsam.label.atoms import compact_labels, nest_partitions
from unsam.label.items import MaskItem
from unsam.label.masks import to_annotations

__all__ = [
    "METHODS",
    "FHConfig",
    "SLICConfig",
    "fh_partitions",
    "hierarchy_annotations",
    "label_image",
    "main",
    "nest_partitions",
    "slic_partitions",
]

log = logging.getLogger("unsam.evaluate.baselines")


@dataclass
class FHConfig:
    """Felzenszwalb–Huttenlocher at several scales (``skimage.segmentation.felzenszwalb``)."""

    scales: tuple[float, ...] = (50, 100, 200, 400, 800, 1600, 3200)  #: FH's k, fine -> coarse
    sigma: float = 0.8  #: Gaussian pre-smoothing (the FH paper's value)
    min_size: int = 20  #: smallest component in pixels (post-processing merge)


@dataclass
class SLICConfig:
    """SLIC superpixels merged by mean colour at several thresholds."""

    n_segments: int = 600  #: target number of superpixels (the finest level)
    compactness: float = 10.0  #: SLIC's colour / space trade-off (skimage default)
    sigma: float = 1.0  #: Gaussian pre-smoothing
    thresholds: tuple[float, ...] = (6, 10, 15, 20, 30, 45)  #: CIELAB distances, one level each


METHODS = {"fh": FHConfig, "slic": SLICConfig}


def _as_rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"image should be uint8 [H, W, 3] RGB, got {a.dtype} {tuple(a.shape)}")
    return a


def fh_partitions(image: np.ndarray, cfg: FHConfig | None = None) -> list[np.ndarray]:
    """Nested FH partitions of an RGB image, fine -> coarse (one per scale)."""
    from skimage.segmentation import felzenszwalb

    cfg = cfg or FHConfig()
    img = _as_rgb(image)
    scales = sorted(float(s) for s in cfg.scales)
    raw = [felzenszwalb(img, scale=s, sigma=cfg.sigma, min_size=cfg.min_size, channel_axis=-1) for s in scales]
    return nest_partitions(raw)


def merge_by_colour(labels: np.ndarray, lab: np.ndarray, thresholds: Sequence[float]) -> list[np.ndarray]:
    """Greedy mean-colour merging of adjacent regions; one mapping per threshold.

    ``labels`` [H, W] int 0..n-1, ``lab`` [H, W, 3] float colours. Repeatedly
    merges the adjacent pair whose mean colours are closest (Euclidean) while
    that distance is below the threshold; thresholds are taken in increasing
    order with the state carried over, so the levels nest. Exact ties go to
    the lexicographically smallest (distance, a, b). Returns, per threshold,
    an int64 array [n] mapping each input label to its region (0..m-1).
    """
    n = int(labels.max()) + 1
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=lab[..., c].ravel(), minlength=n) for c in range(3)], 1)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    nbrs: list[set[int]] = [set() for _ in range(n)]
    for a, b in adjacent_pairs(labels).tolist():
        nbrs[a].add(b)
        nbrs[b].add(a)
    version = [0] * n

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(sums[a] / count[a] - sums[b] / count[b]))

    heap = [(dist(a, b), a, b, 0, 0) for a in range(n) for b in nbrs[a] if a < b]
    heapq.heapify(heap)
    out = []
    for t in sorted(float(x) for x in thresholds):
        while heap and heap[0][0] < t:
            _, a, b, va, vb = heapq.heappop(heap)
            if version[a] != va or version[b] != vb or parent[a] != a or parent[b] != b:
                continue  # stale entry: one side changed since it was pushed
            # Merge b into a (a < b keeps the smaller id as the cluster id).
            parent[b] = a
            count[a] += count[b]
            sums[a] += sums[b]
            version[a] += 1
            nbrs[a] |= nbrs[b]
            nbrs[a] -= {a, b}
            for c in nbrs[b]:
                if c != a:
                    nbrs[c].discard(b)
                    nbrs[c].add(a)
            nbrs[b] = set()
            for c in nbrs[a]:
                x, y = (a, c) if a < c else (c, a)
                heapq.heappush(heap, (dist(x, y), x, y, version[x], version[y]))
        out.append(compact_labels(np.array([find(i) for i in range(n)])))
    return out


def slic_partitions(image: np.ndarray, cfg: SLICConfig | None = None) -> list[np.ndarray]:
    """SLIC superpixels (level 0) and their mean-colour merges (one level per threshold), fine -> coarse."""
    from skimage.color import rgb2lab
    from skimage.segmentation import slic

    cfg = cfg or SLICConfig()
    img = _as_rgb(image)
    sp = slic(
        img, n_segments=cfg.n_segments, compactness=cfg.compactness, sigma=cfg.sigma, start_label=0, channel_axis=-1
    )
    sp = compact_labels(sp)
    maps = merge_by_colour(sp, rgb2lab(img), cfg.thresholds)
    return [sp] + [m[sp] for m in maps]


def hierarchy_annotations(
    parts: Sequence[np.ndarray], method: str = "baseline", start_id: int = 1
) -> list[dict[str, Any]]:
    """Annotation records (unsam's per-image layout) of a chain of nested partitions, fine -> coarse.

    Each distinct region is one mask; ``parent_id`` = the smallest strictly
    larger region containing it, ``level`` = depth (0 = coarsest partition),
    ``score`` = fraction of the levels at which it exists. Ordered coarse to
    fine, larger first within a level.
    """
    if not parts:
        return []
    h, w = parts[0].shape
    nlev = len(parts)
    maps = [np.asarray(p, np.int64) for p in parts]
    sizes = [int(m.max()) + 1 for m in maps]
    # up[k][r]: the region of level k + 1 holding region r of level k (any pixel tells, as levels nest).
    up = []
    for k in range(nlev - 1):
        u = np.full(sizes[k], -1, np.int64)
        u[maps[k].ravel()] = maps[k + 1].ravel()
        up.append(u)
    # A region of level k + 1 with exactly one child is that child, unchanged.
    n_children = [np.bincount(up[k], minlength=sizes[k + 1]) for k in range(nlev - 1)]

    # Canonical node of each (k, r): the coarsest level at which the same region exists.
    node_of: list[np.ndarray] = [np.empty(0, np.int64)] * nlev
    nodes: list[tuple[int, int]] = []  # (level index k, label r) of the coarsest occurrence
    node_parent: list[int] = []
    top = np.arange(sizes[-1])
    node_of[-1] = top.copy()
    for r in top.tolist():
        nodes.append((nlev - 1, r))
        node_parent.append(-1)
    for k in range(nlev - 2, -1, -1):
        ids = np.empty(sizes[k], np.int64)
        sole = n_children[k][up[k]] == 1
        for r in range(sizes[k]):
            p_node = int(node_of[k + 1][up[k][r]])
            if sole[r]:
                ids[r] = p_node
            else:
                ids[r] = len(nodes)
                nodes.append((k, r))
                node_parent.append(p_node)
        node_of[k] = ids
    # Persistence: levels at which the node exists = its coarsest level - finest level + 1.
    finest = [k for k, _ in nodes]
    for k in range(nlev):
        for r, nid in enumerate(node_of[k].tolist()):
            finest[nid] = min(finest[nid], k)
    depth = [0] * len(nodes)
    for i, p in enumerate(node_parent):  # parents are created before their children
        depth[i] = depth[p] + 1 if p >= 0 else 0

    items: list[MaskItem] = []
    order_keys = []
    slices_cache: dict[int, list] = {}
    for i, (k, r) in enumerate(nodes):
        if k not in slices_cache:
            slices_cache[k] = ndimage.find_objects(maps[k] + 1)
        sl = slices_cache[k][r]
        crop = maps[k][sl] == r
        box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        persistence = k - finest[i] + 1
        items.append(MaskItem(box, np.ascontiguousarray(crop), persistence / nlev, "conquer"))
        order_keys.append((depth[i], -int(np.count_nonzero(crop)), i))
    order = [i for *_, i in sorted(order_keys)]
    pos = {old: new for new, old in enumerate(order)}
    items = [items[i] for i in order]
    parents = [pos[node_parent[i]] if node_parent[i] >= 0 else -1 for i in order]
    levels = [depth[i] for i in order]
    anns = to_annotations(items, parents, levels, h, w, start_id=start_id)
    for a in anns:
        a["method"] = method
    return anns


def label_image(image: np.ndarray, method: str, cfg: FHConfig | SLICConfig | None = None) -> list[dict[str, Any]]:
    """One image ([H, W, 3] uint8 RGB) -> annotation list of the chosen baseline (``"fh"`` or ``"slic"``)."""
    if method == "fh":
        parts = fh_partitions(image, cfg if isinstance(cfg, FHConfig) else None)
    elif method == "slic":
        parts = slic_partitions(image, cfg if isinstance(cfg, SLICConfig) else None)
    else:
        raise ValueError(f"unknown baseline method {method!r}; available: {', '.join(METHODS)}")
    return hierarchy_annotations(parts, method=method)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m unsam.baselines",
        description="Label a folder of images with a classical hierarchical baseline (FH or SLIC+merging), "
        "in the same per-image JSON format as unsam.label.",
    )
    ap.add_argument("--method", required=True, choices=sorted(METHODS), help="baseline to run")
    ap.add_argument(
        "--input", "-i", required=True, help="image folder (recursive), glob pattern, or text file of paths"
    )
    ap.add_argument("--output", "-o", required=True, type=Path, help="output folder (one JSON per image)")
    ap.add_argument("--limit", type=int, default=None, help="label at most this many images (after sorting)")
    ap.add_argument("--overwrite", action="store_true", help="relabel images that already have a valid JSON")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _input_root(spec: str, paths: list[Path]) -> Path:
    p = Path(spec)
    if p.is_dir():
        return p.resolve()
    parents = [str(q.resolve().parent) for q in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a baseline over a folder; returns the exit status (0 ok, 1 nothing labeled, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = discover_images(args.input)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.limit is not None:
        paths = paths[: args.limit]
    root = _input_root(args.input, paths)
    cfg = METHODS[args.method]()
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: output folder {args.output} is not writable: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    n_done = n_before = n_masks = 0
    t_label = 0.0
    skipped: list[dict[str, str]] = []
    bar = tqdm(paths, desc=f"baseline {args.method}", unit="img", disable=args.quiet or not sys.stderr.isatty())
    for idx, p in enumerate(bar):
        rel = p.resolve().relative_to(root) if p.resolve().is_relative_to(root) else Path(p.name)
        out = args.output / rel.with_suffix(".json")
        if not args.overwrite and read_label_json(out) is not None:
            n_before += 1
            continue
        try:
            img = load_image(p)
        except Exception as e:  # noqa: BLE001 - one bad file is reported, not fatal
            skipped.append({"path": str(p), "reason": str(e)})
            continue
        t0 = time.perf_counter()
        anns = label_image(img, args.method, cfg)
        t_label += time.perf_counter() - t0
        h, w = img.shape[:2]
        write_json_atomic(out, {"image": image_record(idx + 1, rel.as_posix(), w, h), "annotations": anns})
        n_done += 1
        n_masks += len(anns)
    summary = {
        "method": args.method,
        "config": dataclasses.asdict(cfg),
        "images_found": len(paths),
        "images_labeled": n_done,
        "images_done_before": n_before,
        "images_skipped": len(skipped),
        "skipped": skipped,
        "masks_per_image": n_masks / n_done if n_done else 0.0,
        "seconds_per_image": t_label / n_done if n_done else 0.0,
    }
    write_json_atomic(args.output / "summary.json", summary, indent=1)
    print(
        f"unsam.evaluate.baselines {args.method}: {n_done} labeled, {n_before} already done, {len(skipped)} skipped, "
        f"of {len(paths)} found; {summary['masks_per_image']:.0f} masks/image; "
        f"{summary['seconds_per_image'] * 1000:.0f} ms/image -> {args.output}"
    )
    for s in skipped[:20]:
        print(f"  skipped {s['path']}: {s['reason']}")
    return 0 if n_done + n_before > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
