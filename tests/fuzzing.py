"""Random inputs for the fuzz tests (``tests/test_fuzz.py``) and the fuzz benchmark.

:func:`candidates` makes one image's candidate set for the mask stage: blobs, boxes,
nested and overlapping masks, identical copies, empty, 1-pixel and image-sized masks,
scores with ties, and stage-tree links (``meta["key"]``/``["up"]``) that point to kept,
dropped, missing or cyclic keys, and partition-ladder marks. :func:`check_annotations`
states the promises every output must keep.
"""

from __future__ import annotations

import numpy as np

from unsam.io import validate_label_json
from unsam.label.items import MaskItem
from unsam.label.masks import MaskConfig

__all__ = ["candidates", "check_annotations", "mask_config"]


def _mask(rng: np.random.Generator, h: int, w: int, items: list[MaskItem]) -> np.ndarray:
    kind = rng.integers(8)
    m = np.zeros((h, w), bool)
    if kind == 0 or not items:  # a box
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : rng.integers(y0 + 1, h + 1), x0 : rng.integers(x0 + 1, w + 1)] = True
    elif kind == 1:  # a blob
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.5, max(h, w) / 2)
        m = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.3, 3))) ** 2 < 1
    elif kind == 2:  # the whole image
        m[:] = True
    elif kind == 3:  # one pixel
        m[rng.integers(h), rng.integers(w)] = True
    elif kind == 4:  # empty
        pass
    else:  # from an earlier mask: a copy, a part of it, it grown, or it with noise
        p = items[rng.integers(len(items))]
        m[p.box[1] : p.box[3], p.box[0] : p.box[2]] = p.crop
        op = rng.integers(4)
        if op == 1:
            m &= rng.random((h, w)) < rng.uniform(0.5, 1.0)
        elif op == 2:
            m |= np.roll(m, int(rng.integers(-2, 3)), axis=int(rng.integers(2)))
        elif op == 3:
            m ^= rng.random((h, w)) < 0.02
    return m


def candidates(rng: np.random.Generator, h: int | None = None, w: int | None = None, k: int | None = None):
    """(items, image, work_hw): one random candidate set and its image."""
    h = int(h or rng.integers(1, 40))
    w = int(w or rng.integers(1, 40))
    k = int(k if k is not None else rng.integers(0, 25))
    scores = rng.choice([0.1, 0.5, 0.5, 0.9, 1.0], size=k) if rng.random() < 0.5 else rng.random(k)
    keys = [("k", i) for i in range(k)]
    items: list[MaskItem] = _ladder(rng, h, w) if rng.random() < 0.3 else []
    for i in range(k):
        m = _mask(rng, h, w, items)
        meta: dict = {}
        if rng.random() < 0.7:
            meta["key"] = keys[i]
            r = rng.random()
            if r < 0.4 and i:
                meta["up"] = keys[int(rng.integers(i))]  # an earlier mask (a tree)
            elif r < 0.5:
                meta["up"] = keys[int(rng.integers(k))]  # any mask: itself, later ones, cycles
            elif r < 0.55:
                meta["up"] = ("missing", i)
        item = MaskItem((0, 0, w, h), m, float(scores[i]), str(rng.choice(["divide", "conquer", "atoms", "partition"])), meta)
        if rng.random() < 0.8 and item.tighten() is None:
            item = MaskItem((0, 0, w, h), m, float(scores[i]), item.source, meta)  # an empty crop as it is
        items.append(item)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    order = rng.permutation(len(items))
    return [items[i] for i in order], image, (h, w)


def _ladder(rng: np.random.Generator, h: int, w: int) -> list[MaskItem]:
    """A partition ladder as the atom stage makes it: level 0 the whole image, each next level
    a finer partition (random straight cuts of some regions); a region appears once, at the
    level where it first exists, linked to the region holding it one level up."""
    levels = int(rng.integers(1, 4))
    out: list[MaskItem] = []
    regions = [((0, 0, w, h), ("partition", 0))]
    out.append(MaskItem((0, 0, w, h), np.ones((h, w), bool), float(rng.random()), "partition",
                        {"key": ("partition", 0), "partition_level": 0, "partition_levels": levels}))
    n = 1
    for lv in range(1, levels):
        nxt = []
        for (x0, y0, x1, y1), key in regions:
            vertical = rng.random() < 0.5
            lo, hi = (x0, x1) if vertical else (y0, y1)
            if hi - lo < 2 or rng.random() < 0.3:
                nxt.append(((x0, y0, x1, y1), key))  # unchanged: not emitted again
                continue
            cut = int(rng.integers(lo + 1, hi))
            halves = [(x0, y0, cut, y1), (cut, y0, x1, y1)] if vertical else [(x0, y0, x1, cut), (x0, cut, x1, y1)]
            for b in halves:
                k2 = ("partition", n)
                n += 1
                crop = np.ones((b[3] - b[1], b[2] - b[0]), bool)
                out.append(MaskItem(b, crop, float(rng.random()), "partition",
                                    {"key": k2, "up": key, "partition_level": lv, "partition_levels": levels}))
                nxt.append((b, k2))
        regions = nxt
    return out


def mask_config(rng: np.random.Generator) -> MaskConfig:
    return MaskConfig(
        nms_iou=float(rng.choice([0.5, 0.9, 1.0])),
        min_area=int(rng.choice([1, 4])),
        min_area_frac=float(rng.choice([0.0, 1e-4, 0.05])),
        contain=float(rng.choice([0.5, 0.9, 1.0])),
        clip_to_parent=bool(rng.random() < 0.2),
        max_masks=int(rng.choice([1, 3, 1000])),
        levels=str(rng.choice(["partition", "depth", "tree"])),
        max_side=None,
    )


def check_annotations(anns: list[dict], h: int, w: int, cfg: MaskConfig) -> None:
    """The promises of every output (README "The hierarchy"), as assertions."""
    rec = {"image": {"image_id": 1, "file_name": "x.png", "width": w, "height": h}, "annotations": anns}
    problems = validate_label_json(rec, check_masks=True)
    assert not problems, problems
    assert len(anns) <= cfg.max_masks
    by_id = {a["id"]: a for a in anns}
    from pycocotools import mask as mask_utils

    def dec(a):
        return mask_utils.decode(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())).astype(bool)

    for a in anns:
        p = a["parent_id"]
        seen = {a["id"]}
        while p is not None:  # a forest: every chain of parents ends
            assert p not in seen, "cycle"
            seen.add(p)
            p = by_id[p]["parent_id"]
        if a["parent_id"] is not None:
            parent = by_id[a["parent_id"]]
            assert a["level"] > parent["level"]
            child = dec(a)
            assert (child & dec(parent)).sum() >= cfg.contain * child.sum() - 1e-9, "a parent holds >= contain of its child"
