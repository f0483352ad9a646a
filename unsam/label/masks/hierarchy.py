"""Parents, levels and what stays: the hierarchy rules of the mask stage.

A mask's parent holds at least ``contain`` of it, whatever the rule
(:class:`~unsam.label.masks.stage.MaskConfig` ``levels``): the smallest such
container ("depth"), or its parent in a stage's own tree ("tree"; the
partition ladder's regions with "partition") when that one holds enough. The
partition ladder's masks are protected: never suppressed, never pruned, kept
whole by level under ``max_masks``.
"""

from __future__ import annotations

import numpy as np

from unsam.label.items import MaskItem
from unsam.label.masks.config import MaskConfig
from unsam.label.masks.ops import COMPILED

__all__ = [
    "best",
    "check_forest",
    "clip_to_parents",
    "forest",
    "ladder_flags",
    "nms_from_intersections",
    "parents_from_intersections",
    "prune",
    "stage_parents",
]


def nms_from_intersections(inter, scores: np.ndarray, iou_threshold: float = 0.9, protected: np.ndarray | None = None, ops=COMPILED) -> list[int]:
    """Greedy NMS on an intersection matrix (dense, or as ``ops.overlaps`` holds it): order
    protected first, then score, area (larger first) and index; a mask is suppressed by a
    kept one whose IoU with it exceeds ``iou_threshold`` (protected masks never are)."""
    if inter.shape[0] == 0:
        return []
    return ops.nms(inter, np.asarray(scores, np.float64), iou_threshold, protected)


def parents_from_intersections(inter: np.ndarray, contain: float = 0.9, ops=COMPILED) -> list[int]:
    """Parent = the smallest strictly larger mask holding >= contain of the mask (-1: none);
    among equal areas the lowest index."""
    if inter.shape[0] == 0:
        return []
    return ops.parents(inter, contain)


def _clip_to(child: MaskItem, parent: MaskItem) -> None:
    x0, y0, x1, y1 = child.box
    px0, py0 = parent.box[0], parent.box[1]
    win = np.zeros_like(child.crop)
    ix0, iy0 = max(x0, px0), max(y0, py0)
    ix1, iy1 = min(x1, parent.box[2]), min(y1, parent.box[3])
    if ix1 > ix0 and iy1 > iy0:
        win[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = parent.crop[iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0]
    child.crop = child.crop & win




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



def on_ladder(m: MaskItem) -> bool:
    return "partition_level" in m.meta


def ladder_flags(items: list[MaskItem], cfg: MaskConfig) -> np.ndarray:
    """The partition ladder's masks (with levels "partition"): never suppressed, never pruned."""
    if cfg.levels != "partition":
        return np.zeros(len(items), bool)
    return np.fromiter(("partition_level" in m.meta for m in items), bool, len(items))


def best(items: list[MaskItem], keep: list[int], cfg: MaskConfig, area: np.ndarray) -> list[int]:
    """At most ``max_masks`` of the NMS survivors ``keep``, best score first, where a
    partition-ladder mask of level l comes with every ladder mask of levels <= l (the
    levels stay complete partitions); a ladder level that no longer fits is skipped with
    all deeper ones, and the budget goes on to the next best other masks."""
    if len(keep) <= cfg.max_masks:
        return keep
    ladder = ladder_flags(items, cfg)
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


def stage_parents(items: list[MaskItem], inter: np.ndarray, cfg: MaskConfig, up_of: dict, ops=COMPILED) -> list[int]:
    """Each mask's parent (index into items, -1: a root) under ``cfg.levels``.

    Whatever the rule, a parent holds at least ``cfg.contain`` of its child: a stage's
    tree parent that does not (a top cluster may reach 10 % outside its divide region,
    and its child may lie in that part) gives way to the smallest such container.
    """
    containers = parents_from_intersections(inter, cfg.contain, ops)
    out = list(containers)
    if cfg.levels == "depth":
        return out
    area = np.diag(inter)
    where = {m.meta["key"]: i for i, m in enumerate(items) if "key" in m.meta}
    for i, m in enumerate(items):
        key = m.meta.get("key")
        if key is None or (cfg.levels == "partition" and not on_ladder(m)):
            continue
        p = up_of.get(key)
        for _ in range(len(up_of)):  # the nearest kept ancestor (bounded: the stages' trees have no cycle)
            if p is None or p in where:
                break
            p = up_of.get(p)
        else:
            p = None
        q = where[p] if p is not None else -1
        if q >= 0 and inter[i, q] < cfg.contain * area[i]:
            q = containers[i]
        out[i] = q
    return forest(out, area, lambda: containers)


def _cycle(parents: list[int]) -> list[int] | None:
    """The masks of one cycle of the parent links, or None (one walk per mask, O(n))."""
    state = [0] * len(parents)  # 0: unseen, 1: on the current walk, 2: done
    for start in range(len(parents)):
        path, i = [], start
        while i >= 0 and state[i] == 0:
            state[i] = 1
            path.append(i)
            i = parents[i]
        if i >= 0 and state[i] == 1:
            return path[path.index(i) :]
        for j in path:
            state[j] = 2
    return None


def forest(parents: list[int], area: np.ndarray, containers) -> list[int]:
    """The parent links made a forest: changed only where they close a cycle.

    A link to the smallest strictly larger container always goes up in area; a stage's
    tree link may go down (a top cluster may be larger than its divide region), and mixing
    the two can close a cycle (A's tree parent B, B's container A). In a cycle the largest
    mask's link goes to a mask no larger than itself: it is replaced by the mask's smallest
    strictly larger container (``containers()``, called only when a cycle exists). Each
    replacement turns a link that does not go up into one that does, so this ends.
    """
    par = list(parents)
    cont = None
    while (cyc := _cycle(par)) is not None:
        if cont is None:
            cont = containers()
        top = max(cyc, key=lambda i: (float(area[i]), -i))
        par[top] = cont[top]
    return par


def check_forest(parents: list[int], levels: list[int]) -> None:
    """The stage's promise, checked at its end (O(n)): parents are other masks of the image,
    they form a forest, and a level grows along every link (RuntimeError otherwise: the
    image fails with this message instead of a hierarchy that lies)."""
    n = len(parents)
    for i, p in enumerate(parents):
        if not (-1 <= p < n) or p == i:
            raise RuntimeError(f"mask stage: mask {i} has parent {p} (of {n} masks)")
        if p >= 0 and not levels[i] > levels[p]:
            raise RuntimeError(f"mask stage: mask {i} at level {levels[i]} is not below its parent {p} at level {levels[p]}")
    if _cycle(parents) is not None:  # with levels growing along links a cycle is impossible; checked anyway
        raise RuntimeError("mask stage: the parent links form a cycle")


def prune(
    items: list[MaskItem],
    parents: list[int],
    min_area: float,
    iou: float,
    inter: np.ndarray,
    protected: np.ndarray | None = None,
    contain: float = 0.9,
    ops=COMPILED,
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
        containers = parents_from_intersections(sub, contain, ops)
        for k in np.flatnonzero(loose).tolist():
            new_parents[k] = containers[k]
        new_parents = forest(new_parents, np.diagonal(sub), lambda: containers)
    fixed = {remap[i]: int(items[i].meta["partition_level"]) for i in remap if protected[i]}
    # With a partition ladder, the other masks hang below its finest level, so the
    # levels of the ladder stay its exact partitions (README, "The hierarchy").
    below = max((int(items[i].meta.get("partition_levels", 0)) for i in remap if protected[i]), default=0)
    levels: list[int | None] = [None] * len(kept)

    def level(i: int) -> int:
        # Parents are larger in the containment forest but not always in a stage's tree
        # (a top cluster may reach 10 % outside its divide region): follow the links
        # (a forest, by construction; the bound only turns a broken promise into an error).
        chain = []
        while levels[i] is None:
            if len(chain) > len(kept):
                raise RuntimeError("mask stage: the parent links form a cycle")
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
