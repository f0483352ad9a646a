"""The labeling pipeline: features -> divide -> conquer -> atoms -> masks, composed by presets.

Each stage is a module with one entry point and its own settings:
:mod:`unsam.label.features` (``build_extractor``), :mod:`unsam.label.divide`
(``divide_images``), :mod:`unsam.label.conquer` (``conquer_batch``),
:mod:`unsam.label.atoms` (``atom_masks``) and :mod:`unsam.label.masks`
(``mask_stage``; it writes the annotation records). The settings and presets
are :mod:`unsam.label.config`. :class:`Labeler` sequences the stages: the
batched ones (features, divide, conquer) on its device, the per-image ones
(atoms, masks) in :class:`ImageStages`, in this process or in worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from unsam.label.atoms import atom_masks
from unsam.label.config import (
    LabelConfig,
    config_from_dict,
    label_config,
    load_preset,
    resolve,
)
from unsam.label.conquer import conquer_batch
from unsam.label.divide import divide_images
from unsam.label.faults import inject
from unsam.label.items import MaskItem
from unsam.label.masks import COMPILED, mask_stage, working_size

__all__ = ["WORKER_STAGE", "ImageStages", "Labeler", "die_with_parent"]

#: The stage name of an image whose atoms and masks run on a CPU worker.
WORKER_STAGE = "atoms+masks"


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
        preset: a preset's name (:data:`~unsam.label.config.PRESETS`): its settings are
            applied on top of ``cfg`` (or of the defaults, with the backbone's default
            preset when neither is given).
        mask_ops: the mask stage's ops backend (:data:`unsam.label.masks.COMPILED`; the
            tests pass their Python reference), in this process and in the workers.
    """

    def __init__(
        self,
        cfg: LabelConfig | None = None,
        device: str | torch.device = "cpu",
        extractor=None,
        cpu_workers: int = 0,
        preset: str | None = None,
        mask_ops=COMPILED,
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
        self.stages = ImageStages(self.cfg, mask_ops)
        #: Called as ``on_stage(stage, which)`` when a stage starts, for the whole batch
        #: (``which`` None) or for its image ``which`` (the labeling run's progress and
        #: time limits, :mod:`unsam.label.run`).
        self.on_stage = None
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
                initargs=(self.cfg, self.stages.mask_ops),
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
        # div_ in place: a 50 Mpx image is 600 MB as float32, and ``/ 255.0`` would hold two.
        return [
            torch.from_numpy(np.array(im, copy=not im.flags.writeable or not im.flags.c_contiguous))
            .to(self.device)
            .permute(2, 0, 1)
            .float()
            .div_(255.0)
            for im in images
        ]

    def _stage(self, stage: str, names: list[str], which: int | None = None) -> None:
        """A stage starts: for the whole batch (``which`` None) or for image ``which`` of it."""
        if self.on_stage is not None:
            self.on_stage(stage, which)
        inject(stage, names if which is None else names[which : which + 1])

    @torch.inference_mode()
    def submit_batch(self, images: list[np.ndarray], names: list[str] | None = None) -> list:
        """Run the batched (GPU) stages now and the per-image CPU stages on the workers:
        one future per image, for :meth:`collect`. Without workers the futures are done.
        ``names`` (the images' file names) go into messages; :attr:`on_stage` hears of
        every stage as it starts."""
        from concurrent.futures import Future

        if not images:
            return []
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        cfg = self.cfg
        t0 = time.perf_counter()
        self._stage("features", names)
        tens = self.to_device(images)
        feats = self.divide_features(tens)  # features
        self._sync()
        t1 = time.perf_counter()
        self._add("features_divide", t1 - t0)
        sizes = [im.shape[:2] for im in images]
        work = [working_size(h, w, cfg.masks) for h, w in sizes]
        self._stage("divide", names)
        regions = divide_images(feats, sizes, work, self.divide_side(), cfg.divide, images, cfg.crf)  # divide
        self._add("divide", time.perf_counter() - t1)
        self._stage("conquer", names)
        conquered = self._conquer(tens, regions, sizes, work)  # conquer
        del tens  # the float images (600 MB for 50 Mpx): not needed by the per-image stages
        use_feats = cfg.atoms.enabled and cfg.atoms.w_feat != 0.0
        out = []
        for i, (im, regs, found) in enumerate(zip(images, regions, conquered)):
            items = (regs if cfg.masks.output_divide_regions else []) + found
            snap = regs if cfg.atoms.enabled and cfg.atoms.snap_divide and cfg.masks.output_divide_regions else None
            fi = feats[i] if use_feats else None
            if self.cpu_workers:  # atoms and masks on a worker
                self._stage(WORKER_STAGE, names, i)
                out.append(self._submit(im, items, snap, None if fi is None else fi.cpu(), work[i], names[i]))
                continue
            f: Future = Future()
            try:
                times: dict[str, float] = {}
                hook = None if self.on_stage is None else (lambda st, i=i: self.on_stage(st, i))
                f.set_result((self.stages(im, items, snap, fi, work[i], times, names[i], hook), times))
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


class ImageStages:
    """The per-image CPU stages of a resolved config: atoms (snapping the divide regions to
    them), then the mask stage, with the mask ops of ``mask_ops``. Built once per process
    (the labeler's, or each worker's) and given one image at a time."""

    def __init__(self, cfg: LabelConfig, mask_ops=COMPILED):
        self.cfg = cfg
        self.mask_ops = mask_ops

    def __call__(
        self, im: np.ndarray, items: list[MaskItem], snap, feats_i, work_hw: tuple[int, int], times: dict, name: str = "", on_stage=None
    ) -> list[dict]:
        cfg = self.cfg
        if cfg.atoms.enabled:
            if on_stage is not None:
                on_stage("atoms")
            inject("atoms", [name])
            wh, ww = work_hw
            items = items + atom_masks(_resized(im, wh, ww), cfg.atoms, cfg.atoms.w_feat, feats_i, times, snap)
        if on_stage is not None:
            on_stage("masks")
        inject("masks", [name])
        return mask_stage(items, im, work_hw, cfg.masks, cfg.refine, times, self.mask_ops, cfg.crf)


# ---------------------------------------------------------------- CPU workers
_STAGES: ImageStages | None = None


def _worker_init(cfg: LabelConfig, mask_ops) -> None:
    """In a spawned worker: the per-image stages (no extractor is built)."""
    global _STAGES
    die_with_parent()
    torch.set_num_threads(1)  # one image per worker; the workers are the parallelism
    _STAGES = ImageStages(cfg, mask_ops)


def _worker_tail(im: np.ndarray, items: list[MaskItem], snap, feats_i, work_hw: tuple[int, int], name: str):
    times: dict[str, float] = {}
    return _STAGES(im, items, snap, feats_i, work_hw, times, name), times


def die_with_parent() -> None:
    """Linux: this process is killed when its parent dies (a worker must not outlive the
    labeler that was killed, and go on writing); elsewhere nothing."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except OSError:
            pass
