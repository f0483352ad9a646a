"""The training loader as it was before the RLE crop ops (issue 19): the oracle of
``unsam.train.data.MaskDataset`` (same samples for the same seed: masks, clicks, targets)
and the baseline of the loader benchmark. Kept as it was written, the masks decoded one at
a time at full size by pycocotools, then cropped and resampled in numpy; it imports from
unsam only the image reader, the record type and the dataset error, not what it checks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from unsam.io import ImageError, load_image
from unsam.io.datasets import DatasetError, Record

__all__ = ["ReferenceMaskDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The 62-bit seed of one sample's randomness (augmentation, clicks, loss points)."""
    return int(np.random.default_rng([int(seed), int(epoch), int(index)]).integers(0, 2**62))


class ReferenceMaskDataset(torch.utils.data.Dataset):
    """Augmented crops with their masks, as the loader made them before the RLE crop ops.

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
        if self.clicks > 0:
            masks, points, targets = self._clicks(rec, cand, ys, xs, rng)
            item.update(points=points, click_targets=targets)
        else:
            masks = []
            for i in cand:
                m = self._decode(rec, i, ys, xs)
                if m is not None:
                    masks.append(m)
                    if len(masks) >= self.max_masks:
                        break
        out = torch.zeros(len(masks), s, s, dtype=torch.bool)
        for k, m in enumerate(masks):
            out[k, :ch, :cw] = torch.from_numpy(m)
        item["masks"] = out
        return item

    def _decode(self, rec: Record, i: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray | None:
        full = mask_utils.decode(rec.rles[i])
        m = full[ys[:, None], xs[None, :]].astype(bool)
        return m if int(m.sum()) >= self.min_mask_area else None

    def _clicks(self, rec: Record, cand: np.ndarray, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator):
        """Clicks inside random masks, each with every visible mask that contains it as targets."""
        from scipy.ndimage import distance_transform_edt

        decoded: dict[int, np.ndarray] = {}
        for i in cand:  # all visible masks: a click's targets can be any of them
            m = self._decode(rec, int(i), ys, xs)
            if m is not None:
                decoded[int(i)] = m
        keys = list(decoded)
        p = self.clicks
        points = torch.zeros(p, 2)
        targets = torch.full((p, self.max_click_targets), -1, dtype=torch.long)
        if not keys:
            return [], points, targets
        chosen = rng.choice(len(keys), size=p, replace=len(keys) < p)
        used: dict[int, int] = {}  # record mask index -> output index
        areas = {k: int(v.sum()) for k, v in decoded.items()}
        for c, ki in enumerate(chosen):
            m = decoded[keys[ki]]
            # A click near the mask's centre: pixels drawn with weight (distance to the border)^2,
            # so clicks avoid the fuzzy borders of pseudo-masks and stay inside non-convex shapes.
            dt = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
            w = (dt * dt).ravel()
            flat = int(rng.choice(w.size, p=w / w.sum()))
            y, x = divmod(flat, m.shape[1])
            points[c] = torch.tensor([x + 0.5, y + 0.5])
            holders = sorted((k for k in keys if decoded[k][y, x]), key=lambda k: (areas[k], k))
            if len(holders) > self.max_click_targets:  # spread over granularities
                pick = np.linspace(0, len(holders) - 1, self.max_click_targets).round().astype(int)
                holders = [holders[j] for j in pick]
            for t, k in enumerate(holders):
                if k not in used:
                    used[k] = len(used)
                targets[c, t] = used[k]
        masks = [decoded[k] for k in sorted(used, key=used.get)]
        return masks, points, targets
