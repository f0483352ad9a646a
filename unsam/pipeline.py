"""The labeling pipeline as a readable sequence of stages: features -> divide -> conquer (patch grid and/or atoms) -> masks.

``LabelConfig`` holds every default once (the CLI only overrides it);
``Labeler`` turns decoded images into SA-1B style annotation lists.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unsam.atoms import AtomConfig, atom_masks, partition_counts
from unsam.conquer import ConquerConfig, conquer_batch, upsample_masks
from unsam.divide import DivideConfig, Region, divide_batch
from unsam.masks import (
    MaskItem,
    Overlaps,
    clip_to_parents,
    nms_from_intersections,
    pairwise_intersections,
    parents_from_intersections,
    to_annotations,
)


@dataclass
class MaskConfig:
    """Settings of the mask stage."""

    nms_iou: float = 0.9  #: mask NMS over the whole image (published: windowed, per region)
    min_area_frac: float = 1e-4  #: drop masks smaller than this fraction of the image...
    min_area: int = 16  #: ...or than this many pixels
    # Parents: the smallest larger mask holding >= contain of the child. Masks of
    # the 4 atom scales nest only approximately, and clipping children to parents
    # cascades down deep chains: on COCO-mini (20 images) clipping took AR@1000
    # from 0.225 to 0.161. Exact containment (contain = 1) left the scales as
    # separate trees whose levels interleave; on 50 BSDS500 train images covering
    # ODS was 0.518 / 0.532 / 0.511 at contain 0.95 / 0.9 / 0.8 (FH: 0.514).
    contain: float = 0.9  #: a parent holds at least this fraction of its child
    clip_to_parent: bool = False  #: clip children to parents (exact nesting; costs AR)
    max_masks: int = 1000  #: keep at most this many masks per image (best scores)
    output_divide_regions: bool = True  #: divide regions are masks too (source "divide")
    # Levels. "partition": the atoms' partition ladder (AtomConfig.partition_scale)
    # gives levels 0..L, each a complete partition of the image into about
    # ratio^l regions, exactly nested (parent = the region holding it one level
    # up); every other mask hangs below its smallest container (>= contain) at
    # that container's level + 1, so it shows in the partitions only where it is
    # finer than the ladder. "depth" (or no ladder): level = depth in the
    # containment forest. 50 BSDS500 train images, covering ODS / OIS: depth
    # 0.532 / 0.600, partition 0.549 / 0.633 (FH 0.514); COCO-mini (20 images)
    # AR@1000 0.264 either way. (Putting the other masks below the finest ladder
    # level instead scored 0.553 / 0.627: not worth a level that means nothing.)
    levels: str = "partition"  #: "partition" or "depth"
    max_side: int = 1024  #: masks are formed at most this large (long side), written at full size


@dataclass
class LabelConfig:
    """Every setting of ``unsam.label``. ``None`` means: the backbone's own default."""

    backbone: str = "dino_vitb8"
    checkpoint: str | None = None
    divide_size: int = 480  #: image resized to this square for the divide stage (60 x 60 patches at /8)
    conquer_whole_image: bool | None = None  #: the whole image is conquered as one more region (None: not for classic)
    whole_image_size: int | None = None  #: its crop size (None: 1024 for classic, else conquer.size)
    divide: DivideConfig = field(default_factory=DivideConfig)
    conquer: ConquerConfig = field(default_factory=ConquerConfig)
    conquer_regions: bool | None = None  #: conquer each divide region on its patch grid (None: not for classic)
    atoms: AtomConfig = field(default_factory=AtomConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    tau: float | None = None  #: overrides divide.tau (None: backbone default)
    merge_thresholds: tuple[float, ...] | None = None  #: overrides conquer.thresholds (None: backbone default)
    max_pixels: int = 50_000_000  #: larger images are skipped (reason "too-large")
    refine: str = "none"  #: "none", "edge" (guided filter) or "snap" (to SLIC superpixels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(d: dict[str, Any], base: LabelConfig | None = None) -> LabelConfig:
    """Overlay a (YAML) dict on a config; unknown keys are an error that names them."""
    cfg = dataclasses.replace(base) if base is not None else LabelConfig()
    cfg.divide = dataclasses.replace(cfg.divide)
    cfg.conquer = dataclasses.replace(cfg.conquer)
    cfg.masks = dataclasses.replace(cfg.masks)
    cfg.atoms = dataclasses.replace(cfg.atoms)
    nested = {"divide": cfg.divide, "conquer": cfg.conquer, "atoms": cfg.atoms, "masks": cfg.masks}
    top = {f.name for f in dataclasses.fields(LabelConfig)}
    for k, v in (d or {}).items():
        if k in nested:
            if not isinstance(v, dict):
                raise ValueError(f"config: '{k}' should be a mapping, got {type(v).__name__}")
            sub = nested[k]
            names = {f.name for f in dataclasses.fields(sub)}
            for kk, vv in v.items():
                if kk not in names:
                    raise ValueError(f"config: unknown key '{k}.{kk}' (known: {', '.join(sorted(names))})")
                if isinstance(vv, list):
                    vv = tuple(vv)
                setattr(sub, kk, vv)
        elif k in top:
            setattr(cfg, k, tuple(v) if isinstance(v, list) else v)
        else:
            raise ValueError(f"config: unknown key '{k}' (known: {', '.join(sorted(top))})")
    return cfg


def resolve(cfg: LabelConfig, spec) -> LabelConfig:
    """Fill the backbone's own defaults (tau, merge thresholds) where the config leaves them open."""
    cfg = config_from_dict({}, cfg)
    cfg.divide.tau = float(cfg.tau if cfg.tau is not None else spec.tau)
    cfg.tau = cfg.divide.tau
    thr = cfg.merge_thresholds if cfg.merge_thresholds is not None else spec.merge_thresholds
    cfg.conquer.thresholds = tuple(float(t) for t in thr)
    cfg.merge_thresholds = cfg.conquer.thresholds
    # With weight-free features the atom hierarchy supersedes the patch-grid conquer:
    # on COCO-mini (20 images) adding the grid masks to atoms + divide regions lowered
    # AR@1000 from 0.230 to 0.213 (they take slots with blockier masks) and doubled
    # the time. A ViT's grid masks carry semantics the atoms lack, so they stay there.
    if cfg.conquer_regions is None:
        cfg.conquer_regions = spec.family != "classic"
    if cfg.conquer_whole_image is None:
        cfg.conquer_whole_image = spec.family != "classic"
    if cfg.atoms.w_feat is None:
        cfg.atoms.w_feat = float(spec.atom_w_feat)
    if cfg.refine not in ("none", "edge", "snap"):
        raise ValueError(f"config: refine should be 'none', 'edge' or 'snap', got {cfg.refine!r}")
    if cfg.whole_image_size is None and spec.family == "classic":
        # Weight-free features cost nothing on a 1024 crop (128 x 128 patches): the
        # whole image's finest levels then reach small objects (BSDS500 train mask
        # AR@1000 0.070 -> 0.092). A ViT would pay (tokens)^2 attention for it.
        cfg.whole_image_size = 1024
    if cfg.divide_size < 2 * spec.patch_size:
        raise ValueError(f"config: divide_size should be >= {2 * spec.patch_size}, got {cfg.divide_size}")
    # Checked here, not per image: a bad value fails the run at once, not every image.
    if cfg.masks.levels not in ("partition", "depth"):
        raise ValueError(f"config: masks.levels should be 'partition' or 'depth', got {cfg.masks.levels!r}")
    if cfg.atoms.partition_scale is not None:
        partition_counts(cfg.atoms.partition_ratio, cfg.atoms.partition_max_regions)  # raises on bad values
    return cfg


def _grid_to_pixels(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Divide-grid mask -> image mask (bilinear upsample, threshold 0.5)."""
    return upsample_masks(grid[None].astype(np.float32), height, width)[0]


def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W, 3] uint8 at h x w (antialiased bilinear; the image itself when the size matches)."""
    if image.shape[:2] == (h, w):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


class Labeler:
    """Pseudo-labels images with a feature extractor and the unsam kernels.

    Args:
        cfg: the configuration (backbone defaults are filled in).
        device: where features and kernels run ("cpu" or "cuda").
        extractor: a ready extractor (tests); built from ``cfg`` when None.
        cpu_workers: processes for the per-image CPU stages (atoms, masks, RLE);
            0 runs them in this process. The GPU stages are batched and fast,
            while these stages are host code, one image at a time: on a GPU with
            N spare CPU cores, N workers run N images at once and the next batch's
            GPU work overlaps them (:meth:`submit_batch`). Workers are spawned
            (not forked: the parent may hold a CUDA context) on first use and
            live until :meth:`close`; as with any spawned process, a script
            using them needs the ``if __name__ == "__main__":`` guard.
    """

    def __init__(
        self, cfg: LabelConfig | None = None, device: str | torch.device = "cpu", extractor=None, cpu_workers: int = 0
    ):
        from unsam.features import BACKBONES, build_extractor

        cfg = cfg or LabelConfig()
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone '{cfg.backbone}'; available: {', '.join(sorted(BACKBONES))}")
        self.spec = BACKBONES[cfg.backbone]
        self.cfg = resolve(cfg, self.spec)
        self.device = torch.device(device)
        self.extractor = extractor or build_extractor(cfg.backbone, checkpoint=cfg.checkpoint, device=self.device)
        self.patch = self.extractor.patch_size
        self.timings: dict[str, float] = {}
        if cpu_workers < 0:
            raise ValueError(f"cpu_workers should be >= 0, got {cpu_workers}")
        self.cpu_workers = int(cpu_workers)
        self._pool = None

    def close(self) -> None:
        """Stop the CPU worker processes (if any); the labeler can still be used (they restart)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Labeler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _workers(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.cpu_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(self.cfg,),
            )
        return self._pool

    def batches_in_flight(self, batch_size: int) -> int:
        """How many submitted batches to leave uncollected so every worker stays busy
        (one batch of 8 idles 6 of 14 workers and each round waits for its slowest
        image: 3.7 instead of 4.3 images/s on the H200 run); 0 without workers."""
        return -(-self.cpu_workers // max(1, batch_size)) if self.cpu_workers else 0

    def _submit(self, *args):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._workers().submit(_worker_tail, *args)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the images it held fail in
            # collect(); later ones go to a fresh pool.
            logging.getLogger(__name__).warning("a CPU worker died; starting a fresh worker pool")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return self._workers().submit(_worker_tail, *args)

    def _add(self, key: str, dt: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + dt

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def label_batch(self, images: list[np.ndarray]) -> list[list[dict]]:
        """Label decoded images ([H, W, 3] uint8 RGB each): one annotation list per image."""
        return self.collect(self.submit_batch(images))

    def collect(self, futures: list, errors: str = "raise") -> list:
        """Results of :meth:`submit_batch` in order (waits for the workers); their stage
        times are added to ``timings``. errors="return": a failed image's exception is
        returned in its place instead of raised."""
        out = []
        for f in futures:
            try:
                anns, times = f.result()
            except Exception as e:
                if errors == "raise":
                    raise
                out.append(e)
                continue
            for k, v in times.items():
                self._add(k, v)
            out.append(anns)
        return out

    @torch.inference_mode()
    def submit_batch(self, images: list[np.ndarray]) -> list:
        """Run the batched (GPU) stages now and the per-image CPU stages on the workers:
        one future per image, for :meth:`collect`. Without workers the futures are done."""
        from concurrent.futures import Future

        if not images:
            return []
        cfg = self.cfg
        t0 = time.perf_counter()
        tens = [torch.from_numpy(np.array(im, copy=not im.flags.writeable or not im.flags.c_contiguous)).to(self.device).permute(2, 0, 1).float() / 255.0 for im in images]
        s = max(self.patch * 2, (cfg.divide_size // self.patch) * self.patch)
        small = torch.stack(
            [F.interpolate(t[None], size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0] for t in tens]
        )
        feats = self.extractor(small).float()
        self._sync()
        t1 = time.perf_counter()
        self._add("features_divide", t1 - t0)
        all_regions: list[list[Region]] = divide_batch(feats, cfg.divide)
        t2 = time.perf_counter()
        self._add("divide", t2 - t1)
        per_image_regions = []
        whole_regions = []
        region_items: list[list[MaskItem]] = []
        work = []
        for im, regs in zip(images, all_regions):
            h, w = im.shape[:2]
            sc = min(1.0, cfg.masks.max_side / max(h, w))
            wh, ww = max(1, round(h * sc)), max(1, round(w * sc))
            work.append((wh, ww))
            sx, sy = w / ww, h / wh
            pix = self._region_pixels(regs, wh, ww)
            items = []
            crops = []
            for r, m in zip(regs, pix):
                box = _box_of(m)
                if box is None:
                    continue
                crop = m[box[1] : box[3], box[0] : box[2]]
                score = float(np.clip(1.0 - r.ncut / 2.0, 0.0, 1.0))
                items.append(MaskItem(box, crop, score, "divide", {"depth": r.depth, "lam": r.lam, "ncut": r.ncut}))
                sample = (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
                if cfg.conquer_regions:
                    crops.append((box, crop, sample))
            whole = ((0, 0, ww, wh), np.ones((wh, ww), bool), (0, 0, w, h))
            if cfg.conquer_whole_image and not cfg.whole_image_size:
                crops.append(whole)
            per_image_regions.append(crops)
            whole_regions.append([whole])
            region_items.append(items)
        t3 = time.perf_counter()
        self._add("masks", t3 - t2)
        conquered = conquer_batch(tens, per_image_regions, self.extractor, cfg.conquer, self.timings)
        if cfg.conquer_whole_image and cfg.whole_image_size:
            # The whole image on a finer grid: the finest levels reach small objects.
            wcfg = dataclasses.replace(cfg.conquer, size=cfg.whole_image_size)
            for found, extra in zip(conquered, conquer_batch(tens, whole_regions, self.extractor, wcfg, self.timings)):
                found.extend(extra)
        out = []
        nlev = len(cfg.conquer.thresholds)
        use_feats = cfg.atoms.enabled and cfg.atoms.w_feat != 0.0
        for i, (im, items, found, (wh, ww)) in enumerate(zip(images, region_items, conquered, work)):
            if not cfg.masks.output_divide_regions:
                items = []
            for c, box, crop in found:
                # Score: how many thresholds the cluster survives unchanged (stable segments first).
                score = 0.25 + 0.75 * c.persistence / nlev
                items.append(MaskItem(box, crop, score, "conquer", {"first_level": c.first_level}))
            fi = feats[i] if use_feats else None
            if self.cpu_workers:
                out.append(self._submit(im, items, None if fi is None else fi.cpu(), (wh, ww)))
                continue
            f: Future = Future()
            try:
                times: dict[str, float] = {}
                f.set_result((self._tail(im, items, fi, (wh, ww), times), times))
            except Exception as e:  # noqa: BLE001 - handed to collect(), like a worker's
                f.set_exception(e)
            out.append(f)
        return out

    def _tail(self, im: np.ndarray, items: list[MaskItem], feats_i, work_hw: tuple[int, int], times: dict) -> list[dict]:
        """The per-image CPU stages: atoms, then the mask stage (:meth:`_finish`)."""
        cfg = self.cfg
        wh, ww = work_hw
        if cfg.atoms.enabled:
            snap = [m for m in items if m.source == "divide"] if cfg.atoms.snap_divide else None
            items = items + atom_masks(_resized(im, wh, ww), cfg.atoms, cfg.atoms.w_feat, feats_i, times, snap)
        return self._finish(items, im, im.shape[0], im.shape[1], work_hw, times)

    def _region_pixels(self, regs: list[Region], h: int, w: int) -> list[np.ndarray]:
        """Pixel masks of the divide regions, disjoint among regions of the same depth
        (pixels claimed earlier are removed from later masks) and inside their parents."""
        claimed: dict[int, np.ndarray] = {}
        out: list[np.ndarray] = []
        for r in regs:
            m = _grid_to_pixels(r.mask, h, w)
            c = claimed.setdefault(r.depth, np.zeros((h, w), bool))
            m &= ~c
            if r.parent >= 0:
                m &= out[r.parent]
            c |= m
            out.append(m)
        return out

    def _finish(
        self, items: list[MaskItem], image: np.ndarray, h: int, w: int, work_hw: tuple[int, int], times: dict | None = None
    ) -> list[dict]:
        """Masks at working resolution work_hw -> annotations at the image's h x w (stage times into ``times``)."""
        times = self.timings if times is None else times

        def add(key: str, dt: float) -> None:
            times[key] = times.get(key, 0.0) + dt

        t0 = time.perf_counter()
        cfg = self.cfg.masks
        full_h, full_w = h, w
        h, w = work_hw
        min_area = max(cfg.min_area, cfg.min_area_frac * full_h * full_w) * (h * w) / (full_h * full_w)
        items = [m for m in items if m.area >= min_area]
        # Final score = stability x sqrt(area fraction): on BSDS500 train this ranking
        # doubled AR@100 over stability alone (large stable segments first).
        for m in items:
            m.score = float(m.score * np.sqrt(m.area / (h * w)))
        if not items:
            add("masks", time.perf_counter() - t0)
            return []
        if self.cfg.refine != "none":
            # Refine only what survives a first NMS (refinement is the costly step).
            first = nms_from_intersections(
                pairwise_intersections(items, h, w), np.array([m.score for m in items]), cfg.nms_iou
            )
            items = [items[i] for i in first]
            if self.cfg.refine == "edge":
                from unsam.refine import refine_masks

                items = refine_masks(image, items, work_hw=(h, w))
            else:
                from unsam.superpixels import snap_masks

                items = snap_masks(image, items, work_hw=(h, w))
            items = [m for m in items if m.area >= min_area]
        # Nest first (children clipped to parents) so NMS sees the final masks; after NMS
        # a mask whose parent went may get a new one: clip again until nothing changes.
        ov = Overlaps(items, h, w)
        if cfg.clip_to_parent:
            ov.update(clip_to_parents(items, parents_from_intersections(ov.inter, cfg.contain)))
        def ladder(its):  # the partition-ladder masks: never suppressed, never pruned
            on = cfg.levels == "partition"
            return np.array([on and "partition_level" in m.meta for m in its], bool)

        keep = nms_from_intersections(ov.inter, np.array([m.score for m in items]), cfg.nms_iou, ladder(items))
        keep = keep[: cfg.max_masks]
        for attempt in range(4):
            ov = ov.subset(keep)
            items = ov.items
            parents = _ladder_parents(items, parents_from_intersections(ov.inter, cfg.contain), ladder(items))
            changed = clip_to_parents(items, parents) if cfg.clip_to_parent else []
            if not changed or attempt == 3:
                break
            ov.update(changed)
            keep = nms_from_intersections(ov.inter, np.array([m.score for m in items]), cfg.nms_iou, ladder(items))
        if changed:
            ov.update(changed)
        items, parents, levels = _prune(items, parents, min_area, cfg.nms_iou, ov.inter, ladder(items))
        t1 = time.perf_counter()
        anns = to_annotations(items, parents, levels, full_h, full_w, work_hw=work_hw)
        add("masks", t1 - t0)
        add("output", time.perf_counter() - t1)
        return anns


def _ladder_parents(items: list[MaskItem], parents: list[int], on_ladder: np.ndarray) -> list[int]:
    """Parents with the partition ladder's own links: a ladder mask's parent is the
    nearest kept ladder ancestor (the region holding it one level up)."""
    if not on_ladder.any():
        return parents
    where = {m.meta["partition_node"]: i for i, m in enumerate(items) if on_ladder[i]}
    up = {m.meta["partition_node"]: m.meta["partition_parent"] for i, m in enumerate(items) if on_ladder[i]}
    out = list(parents)
    for i, m in enumerate(items):
        if on_ladder[i]:
            p = m.meta["partition_parent"]
            while p >= 0 and p not in where:
                p = up.get(p, -1)
            out[i] = where[p] if p >= 0 else -1
    return out


def _prune(
    items: list[MaskItem],
    parents: list[int],
    min_area: float,
    iou: float,
    inter: np.ndarray,
    on_ladder: np.ndarray | None = None,
):
    """Drop masks that clipping left too small, or too close to their parent (IoU above
    the NMS threshold); their children go to the nearest kept ancestor; ladder masks
    (``on_ladder``) always stay. Returns levels too: a ladder mask's partition level,
    another mask's parent's level + 1 (0 for a root)."""
    areas = [m.area for m in items]
    on_ladder = np.zeros(len(items), bool) if on_ladder is None else on_ladder

    def close(i: int) -> bool:
        p = parents[i]
        both = float(inter[i, p])
        return both > iou * max(areas[i] + areas[p] - both, 1.0)

    alive = [
        bool(on_ladder[i]) or (areas[i] >= min_area and (parents[i] < 0 or not close(i))) for i in range(len(items))
    ]

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
    new_parents = []
    for i in range(len(items)):
        if alive[i]:
            p = up(parents[i])
            new_parents.append(remap[p] if p >= 0 else -1)
    fixed = {remap[i]: int(items[i].meta["partition_level"]) for i in remap if on_ladder[i]}
    levels = [0] * len(kept)
    for i in sorted(range(len(kept)), key=lambda k: -kept[k].area):
        p = new_parents[i]
        levels[i] = fixed[i] if i in fixed else (levels[p] + 1 if p >= 0 else 0)
    return kept, new_parents, levels


# ---------------------------------------------------------------- CPU workers
_WORKER: Labeler | None = None


def _worker_init(cfg: LabelConfig) -> None:
    """In a spawned worker: a CPU labeler for the per-image stages (no extractor is built)."""
    global _WORKER
    torch.set_num_threads(1)  # one image per worker; the workers are the parallelism
    lab = Labeler.__new__(Labeler)
    lab.cfg, lab.device, lab.timings, lab.cpu_workers, lab._pool = cfg, torch.device("cpu"), {}, 0, None
    _WORKER = lab


def _worker_tail(im: np.ndarray, items: list[MaskItem], feats_i, work_hw: tuple[int, int]):
    times: dict[str, float] = {}
    return _WORKER._tail(im, items, feats_i, work_hw, times), times
