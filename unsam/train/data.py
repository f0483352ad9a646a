"""Training data: pseudo-label sets (:func:`unsam.io.datasets.load_records`) -> augmented
fixed-size crops with their masks.

Augmentation (:class:`MaskDataset`, training): scale jitter (the longer side
becomes ``crop_size × U[scale_min, scale_max]``), a random ``crop_size`` square
crop (zero padding where the image is smaller), horizontal flip; at most
``max_masks`` masks per crop, drawn at random among those left visible. Masks
are read straight from their RLE at the crop's resolution (:mod:`unsam.train.targets`:
areas from the runs, then only the kept masks decoded, all in one call), so no
full-size mask is ever formed, whatever the image's size.

Every random choice of a sample comes from a generator seeded with (run seed,
epoch, image index): a sample is the same whichever rank, worker or batch
loads it, which makes DDP runs and resumed runs reproduce a single
uninterrupted run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unsam.io import ImageError, load_image
from unsam.io.datasets import DatasetError, Record, load_records, rle_areas
from unsam.train.targets import click_targets, crop_masks

__all__ = [
    "DatasetError",
    "GlobalBatchSampler",
    "MaskDataset",
    "Record",
    "collate",
    "load_records",
    "rle_areas",
    "sample_seed",
]

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The 62-bit seed of one sample's randomness (augmentation, clicks, loss points)."""
    return int(np.random.default_rng([int(seed), int(epoch), int(index)]).integers(0, 2**62))


class MaskDataset(torch.utils.data.Dataset):
    """Augmented crops with their masks.

    Args:
        records: from :func:`load_records`.
        crop_size: side of the square output (a multiple of the model's patch size).
        train: random scale jitter, crop and flip; otherwise the longer side is
            resized to ``crop_size`` (aspect kept), top-left aligned, zero padding.
        scale_range: (min, max) of the jitter factor on "longer side = crop_size".
        hflip: flip with probability 0.5 (train).
        max_masks: at most this many masks per crop (random subset).
        min_mask_area: drop masks with fewer pixels than this in the crop.
        clicks: promptable training: clicks per crop (0: whole-image training).
        max_click_targets: at most this many target masks per click (spread over
            granularities, smallest to largest).
        seed: run seed.

    Items are indexed by ``(index, epoch)`` pairs (what :class:`GlobalBatchSampler`
    yields) or plain ints (epoch 0). An item is a dict: ``image`` uint8 ``[3, S, S]``,
    ``masks`` bool ``[K, S, S]``, ``valid`` (h, w) of the image inside the crop,
    ``seed``, ``index``; with clicks also ``points`` float ``[P, 2]`` (x, y pixels) and
    ``click_targets`` long ``[P, T]`` (indices into ``masks``, -1 padded).
    """

    def __init__(
        self,
        records: list[Record],
        crop_size: int = 512,
        train: bool = True,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        max_masks: int = 200,
        min_mask_area: int = 8,
        clicks: int = 0,
        max_click_targets: int = 12,
        seed: int = 0,
    ) -> None:
        if not records:
            raise DatasetError("dataset is empty (no records)")
        if crop_size < 8:
            raise ValueError(f"crop_size should be >= 8, got {crop_size}")
        if not (0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range should be (min, max) with 0 < min <= max, got {tuple(scale_range)}")
        if max_masks < 1:
            raise ValueError(f"max_masks should be >= 1, got {max_masks}")
        self.records = records
        self.crop_size = int(crop_size)
        self.train = bool(train)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = bool(hflip)
        self.max_masks = int(max_masks)
        self.min_mask_area = int(min_mask_area)
        self.clicks = int(clicks)
        self.max_click_targets = int(max_click_targets)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        rec = self.records[index]
        seed = sample_seed(self.seed, epoch, index)
        rng = np.random.default_rng(seed)
        try:
            img = load_image(rec.path)
        except ImageError as e:
            raise DatasetError(f"training image {rec.path}: {e}") from None
        h0, w0 = img.shape[:2]
        if (h0, w0) != (rec.height, rec.width):
            raise DatasetError(f"{rec.path}: image is {w0}x{h0} but its labels say {rec.width}x{rec.height}")
        s = self.crop_size
        scale = s / max(h0, w0)
        if self.train:
            scale *= math.exp(rng.uniform(math.log(self.scale_range[0]), math.log(self.scale_range[1])))
        sh, sw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        ch, cw = min(s, sh), min(s, sw)
        y0 = int(rng.integers(0, sh - ch + 1)) if self.train else 0
        x0 = int(rng.integers(0, sw - cw + 1)) if self.train else 0
        flip = self.train and self.hflip and bool(rng.random() < 0.5)
        # Output pixel (i, j) of the window takes source pixel floor((y0 + i + 0.5) / scale_y):
        # nearest-neighbour for masks, matching the bilinear resize of the image to within half a pixel.
        ys = np.minimum(((y0 + np.arange(ch) + 0.5) * (h0 / sh)).astype(np.int64), h0 - 1)
        xs = np.minimum(((x0 + np.arange(cw) + 0.5) * (w0 / sw)).astype(np.int64), w0 - 1)
        if flip:
            xs = xs[::-1]
        image = torch.zeros(3, s, s, dtype=torch.uint8)
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(sh, sw), mode="bilinear", antialias=scale < 1, align_corners=False)[0]
        t = t[:, y0 : y0 + ch, x0 : x0 + cw]
        if flip:
            t = t.flip(-1)
        image[:, :ch, :cw] = t.round().clamp(0, 255).to(torch.uint8)

        # Masks whose box meets the source window, in random order.
        sy0, sy1, sx0, sx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        b = rec.boxes
        meets = (b[:, 0] < sx1) & (b[:, 0] + b[:, 2] > sx0) & (b[:, 1] < sy1) & (b[:, 1] + b[:, 3] > sy0) if len(b) else np.zeros(0, bool)
        # A mask cannot gain area by the resize: skip those that cannot reach min_mask_area
        # (with a margin for nearest-neighbour rounding) without decoding them.
        meets &= rec.areas * (sh * sw) / (h0 * w0) >= 0.5 * self.min_mask_area
        cand = np.flatnonzero(meets)
        cand = cand[rng.permutation(cand.size)]
        item: dict[str, Any] = {"image": image, "valid": (ch, cw), "seed": seed, "index": index}
        # The crop's source rows and columns, -1 on the padding: the masks come out S x S.
        rows = np.full(s, -1, np.int64)
        rows[:ch] = ys
        cols = np.full(s, -1, np.int64)
        cols[:cw] = xs
        counts = [rec.rles[i]["counts"] for i in cand]
        if self.clicks > 0:
            item["masks"], points, targets = click_targets(
                counts, cand, h0, w0, rows, cols, (ch, cw), self.min_mask_area, self.clicks, self.max_click_targets, rng
            )
            item.update(points=points, click_targets=targets)
        else:
            item["masks"] = crop_masks(counts, h0, w0, rows, cols, self.min_mask_area, self.max_masks)
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; masks (different counts) stay a list."""
    out: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "masks": [it["masks"] for it in items],
        "valid": [it["valid"] for it in items],
        "seed": [it["seed"] for it in items],
        "index": [it["index"] for it in items],
    }
    if "points" in items[0]:
        out["points"] = torch.stack([it["points"] for it in items])
        out["click_targets"] = [it["click_targets"] for it in items]
    return out


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Endless stream of ``(index, epoch)`` for one rank; global batch k is the same for any world size.

    Each epoch is a permutation of the dataset seeded with (seed, epoch), as in
    ``DistributedSampler``; but where ``DistributedSampler`` gives rank r every
    world-th sample (so the composition of a global batch depends on the world
    size), here global batch k is samples ``[k·G, (k+1)·G)`` of the stream and rank
    r takes the r-th contiguous share of it. Hence a 2-process DDP run sees exactly
    the batches of a 1-process run with the same global batch, and a resumed run
    starts at batch ``start_step`` without replaying the loader.

    Use with ``DataLoader(dataset, batch_size=global_batch // world, sampler=...)``.
    """

    def __init__(self, size: int, global_batch: int, world_size: int = 1, rank: int = 0, seed: int = 0, start_step: int = 0, shuffle: bool = True) -> None:
        if size < 1:
            raise DatasetError("cannot sample from an empty dataset")
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(f"global batch size {global_batch} should be a positive multiple of the world size {world_size}")
        self.size, self.global_batch, self.world, self.rank = int(size), int(global_batch), int(world_size), int(rank)
        self.local = self.global_batch // self.world
        self.seed, self.start_step, self.shuffle = int(seed), int(start_step), bool(shuffle)
        self._perm: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.size, generator=g).numpy()
            else:
                perm = np.arange(self.size)
            self._perm = (epoch, perm)
        return self._perm[1]

    def position(self, step: int, j: int) -> tuple[int, int]:
        """(index, epoch) of the j-th local sample of global batch ``step``."""
        s = step * self.global_batch + self.rank * self.local + j
        epoch, pos = divmod(s, self.size)
        return int(self._order(epoch)[pos]), int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            for j in range(self.local):
                yield self.position(step, j)
            step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number for its length hint
        return 2**62
