"""The labeling pipeline: features -> divide -> conquer -> atoms -> masks, composed by presets.

Each stage is a module with one entry point and its own settings:
:mod:`unsam.label.features` (``build_extractor``), :mod:`unsam.label.divide`
(``divide_images``, :class:`DivideConfig`), :mod:`unsam.label.conquer`
(``conquer_batch``, :class:`ConquerConfig`), :mod:`unsam.label.atoms` (``atom_masks``,
:class:`AtomConfig`) and :mod:`unsam.label.masks` (``mask_stage``, :class:`MaskConfig`;
it writes the annotation records). :class:`LabelConfig` holds every default
once (the CLI only overrides it); a **preset** (a small YAML in
``unsam/presets/``) sets the stages for one algorithm:

- ``maskcut`` — CutLER's MaskCut as published (ALGORITHM.md §2 steps 1-4), no conquer;
- ``unsam`` — the paper's divide and conquer (§2 divide with this project's extra
  cuts, §3 conquer as published, the hierarchy from the merge tree);
- ``full`` — this project's pipeline: UnSAM plus atoms, the partition ladder and
  divide regions snapped to atoms.

Without a preset, ``classic`` features get ``full`` and ViT backbones ``unsam``
(:func:`default_preset`). :class:`Labeler` sequences the stages.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unsam.label.atoms import AtomConfig, atom_masks, check_atom_config
from unsam.label.conquer import ConquerConfig, conquer_batch
from unsam.label.divide import DivideConfig, check_divide_config, divide_images
from unsam.label.masks import MaskConfig, MaskItem, check_mask_config, mask_stage, working_size

__all__ = [
    "PRESETS",
    "LabelConfig",
    "Labeler",
    "MaskConfig",
    "config_from_dict",
    "default_preset",
    "label_config",
    "load_preset",
    "resolve",
]

#: The shipped presets (``unsam/presets/<name>.yaml``).
PRESETS: tuple[str, ...] = ("full", "unsam", "maskcut")
PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class LabelConfig:
    """Every setting of ``unsam.label``. ``None`` means: the backbone's own default."""

    backbone: str = "dino_vitb8"
    checkpoint: str | None = None
    preset: str | None = None  #: the preset these settings came from (recorded; see :func:`label_config`)
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
        if k == "_run":
            continue  # the record of a run in its config.yaml (input, device): not a setting
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


def default_preset(backbone: str) -> str:
    """The preset a backbone gets when none is asked for: ``full`` for the weight-free
    ``classic`` features (measured: the atoms and the ladder are what make its labels
    beat FH, README "Quality"), ``unsam`` for ViT backbones (the published algorithm;
    no DINO weights here to measure whether the extra stages help them)."""
    from unsam.label.features import BACKBONES

    spec = BACKBONES.get(backbone)
    return "full" if spec is not None and spec.family == "classic" else "unsam"


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a shipped preset (a mapping for :func:`config_from_dict`)."""
    import yaml

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {name}: should be a mapping of settings")
    return data


def label_config(overrides: dict[str, Any] | None = None, preset: str | None = None) -> LabelConfig:
    """The settings of a run: the library defaults, then the preset (``preset``, else
    ``overrides["preset"]``, else :func:`default_preset` of the backbone), then ``overrides``
    (a ``--config`` file's mapping and the CLI flags; a run's own ``config.yaml`` works too)."""
    overrides = dict(overrides or {})
    backbone = overrides.get("backbone") or LabelConfig.backbone
    name = preset or overrides.get("preset") or default_preset(backbone)
    overrides["preset"] = name
    cfg = config_from_dict(load_preset(name), LabelConfig(backbone=backbone))
    return config_from_dict(overrides, cfg)


def resolve(cfg: LabelConfig, spec) -> LabelConfig:
    """Fill the backbone's own defaults (tau, merge thresholds) where the config leaves them open."""
    cfg = config_from_dict({}, cfg)
    cfg.divide.tau = float(cfg.tau if cfg.tau is not None else spec.tau)
    cfg.tau = cfg.divide.tau
    thr = cfg.merge_thresholds if cfg.merge_thresholds is not None else spec.merge_thresholds
    cfg.conquer.thresholds = tuple(float(t) for t in thr)
    cfg.merge_thresholds = cfg.conquer.thresholds
    # With weight-free features the atom hierarchy supersedes the patch-grid conquer:
    # on the first 20 COCO-mini images (tuning half) adding the grid masks to atoms + divide regions lowered
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
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise ValueError(f"config: preset should be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    check_divide_config(cfg.divide)
    check_mask_config(cfg.masks)
    check_atom_config(cfg.atoms)
    return cfg


def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W, 3] uint8 at h x w (antialiased bilinear; the image itself when the size matches)."""
    if image.shape[:2] == (h, w):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


class Labeler:
    """Pseudo-labels images with a feature extractor and the unsam kernels.

    Args:
        cfg: the settings (backbone defaults are filled in). ``LabelConfig()`` alone is
            the ``full`` preset; :func:`label_config` builds a preset's settings.
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
        preset: a preset's name (:data:`PRESETS`): its settings are applied on top of
            ``cfg`` (or of the defaults, with the backbone's default preset when
            neither is given).
    """

    def __init__(
        self,
        cfg: LabelConfig | None = None,
        device: str | torch.device = "cpu",
        extractor=None,
        cpu_workers: int = 0,
        preset: str | None = None,
    ):
        from unsam.label.features import BACKBONES, build_extractor

        if cfg is None:
            cfg = label_config(preset=preset)
        elif preset is not None:
            cfg = config_from_dict({**load_preset(preset), "preset": preset}, cfg)
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

    def divide_features(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Patch features of the divide stage: images [3, H, W] float in [0, 1] each (on the
        labeler's device), resized to the divide resolution -> [B, gh, gw, C] float32."""
        s = self.divide_side()
        small = torch.stack(
            [F.interpolate(t[None], size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0] for t in images]
        )
        return self.extractor(small).float()

    def divide_side(self) -> int:
        """The side of the square the divide stage sees (a multiple of the patch size)."""
        return max(self.patch * 2, (self.cfg.divide_size // self.patch) * self.patch)

    def to_device(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Decoded images ([H, W, 3] uint8 RGB) as [3, H, W] float in [0, 1] on the labeler's device."""
        return [
            torch.from_numpy(np.array(im, copy=not im.flags.writeable or not im.flags.c_contiguous))
            .to(self.device)
            .permute(2, 0, 1)
            .float()
            / 255.0
            for im in images
        ]

    @torch.inference_mode()
    def submit_batch(self, images: list[np.ndarray]) -> list:
        """Run the batched (GPU) stages now and the per-image CPU stages on the workers:
        one future per image, for :meth:`collect`. Without workers the futures are done."""
        from concurrent.futures import Future

        if not images:
            return []
        cfg = self.cfg
        t0 = time.perf_counter()
        tens = self.to_device(images)
        feats = self.divide_features(tens)  # features
        self._sync()
        t1 = time.perf_counter()
        self._add("features_divide", t1 - t0)
        sizes = [im.shape[:2] for im in images]
        work = [working_size(h, w, cfg.masks) for h, w in sizes]
        regions = divide_images(feats, sizes, work, self.divide_side(), cfg.divide)  # divide
        self._add("divide", time.perf_counter() - t1)
        conquered = self._conquer(tens, regions, sizes, work)  # conquer
        use_feats = cfg.atoms.enabled and cfg.atoms.w_feat != 0.0
        out = []
        for i, (im, regs, found) in enumerate(zip(images, regions, conquered)):
            items = (regs if cfg.masks.output_divide_regions else []) + found
            snap = regs if cfg.atoms.enabled and cfg.atoms.snap_divide and cfg.masks.output_divide_regions else None
            fi = feats[i] if use_feats else None
            if self.cpu_workers:  # atoms and masks on a worker
                out.append(self._submit(im, items, snap, None if fi is None else fi.cpu(), work[i]))
                continue
            f: Future = Future()
            try:
                times: dict[str, float] = {}
                f.set_result((self._tail(im, items, snap, fi, work[i], times), times))
            except Exception as e:  # noqa: BLE001 - handed to collect(), like a worker's
                f.set_exception(e)
            out.append(f)
        return out

    def _conquer(self, tens, regions: list[list[MaskItem]], sizes, work) -> list[list[MaskItem]]:
        """The conquer stage on the divide regions (``conquer_regions``) and on the whole
        image (``conquer_whole_image``, on a finer grid when ``whole_image_size`` is set)."""
        cfg = self.cfg
        crops, whole = [], []
        for regs, (h, w), (wh, ww) in zip(regions, sizes, work):
            sx, sy = w / ww, h / wh
            per = []
            if cfg.conquer_regions:
                for m in regs:
                    b = m.box
                    sample = (round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy))
                    per.append((b, m.crop, sample, m.meta["key"]))
            image = ((0, 0, ww, wh), np.ones((wh, ww), bool), (0, 0, w, h), None)
            if cfg.conquer_whole_image and not cfg.whole_image_size:
                per.append(image)
            crops.append(per)
            whole.append([image])
        out = conquer_batch(tens, crops, self.extractor, cfg.conquer, self.timings)
        if cfg.conquer_whole_image and cfg.whole_image_size:
            # The whole image on a finer grid: the finest levels reach small objects.
            wcfg = dataclasses.replace(cfg.conquer, size=cfg.whole_image_size)
            for found, extra in zip(out, conquer_batch(tens, whole, self.extractor, wcfg, self.timings, tag="whole")):
                found.extend(extra)
        return out

    def _tail(self, im: np.ndarray, items: list[MaskItem], snap, feats_i, work_hw: tuple[int, int], times: dict) -> list[dict]:
        """The per-image CPU stages: atoms (snapping ``snap`` to them), then the mask stage."""
        cfg = self.cfg
        if cfg.atoms.enabled:
            wh, ww = work_hw
            items = items + atom_masks(_resized(im, wh, ww), cfg.atoms, cfg.atoms.w_feat, feats_i, times, snap)
        return mask_stage(items, im, work_hw, cfg.masks, cfg.refine, times)


# ---------------------------------------------------------------- CPU workers
_WORKER: Labeler | None = None


def _worker_init(cfg: LabelConfig) -> None:
    """In a spawned worker: a CPU labeler for the per-image stages (no extractor is built)."""
    global _WORKER
    torch.set_num_threads(1)  # one image per worker; the workers are the parallelism
    lab = Labeler.__new__(Labeler)
    lab.cfg, lab.device, lab.timings, lab.cpu_workers, lab._pool = cfg, torch.device("cpu"), {}, 0, None
    _WORKER = lab


def _worker_tail(im: np.ndarray, items: list[MaskItem], snap, feats_i, work_hw: tuple[int, int]):
    times: dict[str, float] = {}
    return _WORKER._tail(im, items, snap, feats_i, work_hw, times), times
