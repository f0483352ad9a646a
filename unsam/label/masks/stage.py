"""The mask stage: de-duplication, refinement, hierarchy and RLE of one image's pseudo-masks.

Entry point: :func:`mask_stage` (settings: :class:`~unsam.label.masks.config.MaskConfig`).
It owns the whole policy of the stage: which masks are too small, the ranking
score, mask NMS, optional refinement, which mask is whose parent (the stages'
own trees or containment, :mod:`~unsam.label.masks.hierarchy`), what a level
is, and the SA-1B annotation records (:mod:`~unsam.label.masks.output`).

Masks are (box, crop) pairs (:class:`~unsam.label.items.MaskItem`); pairwise
work (NMS IoU, containment) is exact and computed once per image
(:class:`~unsam.label.masks.overlaps.Overlaps`); RLE is written straight from the
crops. The ops run on the backend ``ops`` (:data:`~unsam.label.masks.ops.COMPILED`
by default).

A mask may carry its place in a stage's tree (``meta["key"]``, ``meta["up"]``):
divide regions (the cut they were cut out of), conquer clusters (the cluster
they merge into at the next coarser threshold, the top ones their divide
region; ALGORITHM.md §3.4) and the partition ladder (the region holding it one
level up). ``MaskConfig.levels`` says which parents are used.
"""

from __future__ import annotations

import math
import time

import numpy as np

from unsam.label.items import MaskItem
from unsam.label.masks.config import MaskConfig
from unsam.label.masks.hierarchy import (
    best,
    check_forest,
    clip_to_parents,
    ladder_flags,
    nms_from_intersections,
    prune,
    stage_parents,
)
from unsam.label.masks.ops import COMPILED
from unsam.label.masks.output import to_annotations
from unsam.label.masks.overlaps import Overlaps

__all__ = ["REFINE_MODES", "mask_stage"]

#: ``refine`` values of :func:`mask_stage` ("edge": guided filter, "snap": SLIC superpixels,
#: "crf": CutLER's dense CRF step, :mod:`unsam.label.crf`).
REFINE_MODES = ("none", "edge", "snap", "crf")


def mask_stage(
    items: list[MaskItem],
    image: np.ndarray,
    work_hw: tuple[int, int],
    cfg: MaskConfig,
    refine: str = "none",
    times: dict | None = None,
    ops=COMPILED,
    crf=None,
) -> list[dict]:
    """One image's candidate masks (at the working resolution ``work_hw``) -> annotation records at
    the image's full size: tiny masks dropped, ranked, NMS, optional refinement ("edge", "snap",
    "crf" with the settings ``crf``, a :class:`~unsam.label.crf.CRFConfig`), parents and levels
    (``cfg.levels``), pruning, RLE. Stage times go into ``times``; the pairwise and RLE ops run
    on the backend ``ops``."""
    times = {} if times is None else times

    def add(key: str, dt: float) -> None:
        times[key] = times.get(key, 0.0) + dt

    if refine not in REFINE_MODES:
        raise ValueError(f"mask_stage: refine should be one of {', '.join(REFINE_MODES)}, got {refine!r}")
    t0 = time.perf_counter()
    full_h, full_w = image.shape[:2]
    h, w = work_hw
    # The stages' trees as they came in, dropped masks included: a kept mask's parent
    # is its nearest kept ancestor.
    up_of = {m.meta["key"]: m.meta.get("up") for m in items if "key" in m.meta}
    min_area = max(cfg.min_area, cfg.min_area_frac * full_h * full_w) * (h * w) / (full_h * full_w)
    # The overlaps read every crop once and give the areas (their diagonal) too: computed
    # for every mask whose box can hold enough pixels, then narrowed.
    items = [m for m in items if (m.box[2] - m.box[0]) * (m.box[3] - m.box[1]) >= min_area]
    ov = Overlaps(items, h, w, ops)
    areas = ov.areas().tolist()
    if items and min(areas) < min_area:
        ov = ov.select([i for i, a in enumerate(areas) if a >= min_area])
    items = ov.items
    # Final score = stability x sqrt(area fraction): on BSDS500 train this ranking
    # doubled AR@100 over stability alone (large stable segments first).
    for m, a in zip(items, (a for a in areas if a >= min_area)):
        m.score = float(m.score) * math.sqrt(a / (h * w))  # float64 throughout
    if not items:
        add("masks", time.perf_counter() - t0)
        return []
    if refine != "none":
        # Refine only what survives a first NMS (refinement is the costly step).
        first = nms_from_intersections(ov.matrix(), np.array([m.score for m in items]), cfg.nms_iou, ops=ops)
        items = [items[i] for i in first]
        t_refine = time.perf_counter()
        if refine == "edge":
            from unsam.label.refine import refine_masks

            items = refine_masks(image, items, work_hw=(h, w))
        elif refine == "crf":
            from unsam.label.crf import crf_masks

            # As MaskCut: a mask the CRF moves too far (IoU < 0.5) is dropped.
            items = crf_masks(image, items, (h, w), crf)
        else:
            from unsam.label.superpixels import snap_masks

            items = snap_masks(image, items, work_hw=(h, w))
        add("refine", time.perf_counter() - t_refine)
        items = [m for m in items if m.area >= min_area]
        ov = Overlaps(items, h, w, ops)
    # Nest first (children clipped to parents) so NMS sees the final masks; after NMS
    # a mask whose parent went may get a new one: clip again until nothing changes.
    if cfg.clip_to_parent:
        ov.update(clip_to_parents(items, stage_parents(items, ov.inter, cfg, up_of, ops)))
    keep = nms_from_intersections(ov.matrix(), np.array([m.score for m in items]), cfg.nms_iou, ladder_flags(items, cfg), ops)
    keep = best(items, keep, cfg, ov.areas())
    changed: list[int] = []
    for attempt in range(4):
        ov = ov.subset(keep)
        items = ov.items
        parents = stage_parents(items, ov.inter, cfg, up_of, ops)
        changed = clip_to_parents(items, parents) if cfg.clip_to_parent else []
        if not changed or attempt == 3:
            break
        ov.update(changed)
        keep = nms_from_intersections(ov.inter, np.array([m.score for m in items]), cfg.nms_iou, ladder_flags(items, cfg), ops)
    if changed:
        ov.update(changed)
    items, parents, levels = prune(items, parents, min_area, cfg.nms_iou, ov.inter, ladder_flags(items, cfg), cfg.contain, ops)
    check_forest(parents, levels)
    t1 = time.perf_counter()
    anns = to_annotations(items, parents, levels, full_h, full_w, work_hw=work_hw, ops=ops)
    add("masks", t1 - t0)
    add("output", time.perf_counter() - t1)
    return anns
