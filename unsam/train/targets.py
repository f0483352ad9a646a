"""A training crop's masks straight from its record's RLEs: whole-image targets and clicks.

The crop is given by its source rows and columns (``rows[i]``: the source row of output
row ``i``, -1 below the image; ``cols`` likewise, reversed for a flip), as
:class:`unsam.train.data.MaskDataset` samples it. The candidates' runs are read at the
crop's resolution by the compiled RLE crop ops (:mod:`unsam.kernels.rlecrop`): their
areas first (nothing decoded), then only the masks a sample keeps are decoded, all in
one call, and a click's holders come from one query of all candidates at all clicks.

The random draws are those of the loader before these ops (``tests/reference/train_data.py``,
the tests' oracle), in the same order and from the same numbers, so a seed gives the same
sample: the same masks, clicks and targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unsam.kernels.rlecrop import pack_rles, rle_crop, rle_crop_area, rle_crop_at

__all__ = ["click_targets", "crop_masks", "draw_click"]


def crop_masks(
    counts: Sequence[bytes], height: int, width: int, rows: np.ndarray, cols: np.ndarray, min_area: int, max_masks: int
) -> torch.Tensor:
    """Whole-image targets: the first ``max_masks`` candidates (in their order) with at least
    ``min_area`` pixels in the crop.

    Args:
        counts: the candidates' compressed RLE strings, of a ``height x width`` image.
        rows (int64[S]), cols (int64[S]): the crop's source rows and columns (-1: padding).

    Returns:
        masks (Tensor[K, S, S] bool).
    """
    area = rle_crop_area(pack_rles(counts, height, width), rows, cols).numpy()
    keep = np.flatnonzero(area >= min_area)[:max_masks]
    return rle_crop(pack_rles([counts[i] for i in keep], height, width), rows, cols)[0]


def draw_click(
    mask: np.ndarray, box: Sequence[int], valid: tuple[int, int], rng: np.random.Generator, scratch: np.ndarray | None = None
) -> tuple[int, int]:
    """A click inside a mask, drawn with weight (distance to the mask's border)^2: clicks near
    the centre, away from the fuzzy borders of pseudo-masks, inside non-convex shapes.

    The pixel the old loader drew from the whole ``valid`` (h x w) crop, with one draw of ``rng``,
    computed on the mask's box alone:

    - the distances: the box plus one pixel of background gives those of the whole padded
      crop, since the nearest background pixel of a mask pixel is inside that ring (the
      nearest one outside it, moved onto the ring, would be nearer still);
    - the weights' sum: numpy's pairwise sum of the whole h x w array (``scratch``, zeros,
      h * w float64, left as it came), so the same float64;
    - the draw: outside the box the weights are 0, they add nothing to the cumulative sum
      that ``rng.choice`` searches, so drawing in the box picks the same pixel.

    Args:
        mask (bool[y1 - y0, x1 - x0]): the mask inside its tight box (x0, y0, x1, y1) in the crop.

    Returns:
        (y, x) in the crop.
    """
    from scipy.ndimage import distance_transform_edt

    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = valid
    if scratch is None:
        scratch = np.zeros(h * w)
    dt = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    wts = dt * dt
    whole = scratch.reshape(h, w)
    whole[y0:y1, x0:x1] = wts
    total = scratch.sum()
    whole[y0:y1, x0:x1] = 0.0
    flat = int(rng.choice(wts.size, p=wts.ravel() / total))
    by, bx = divmod(flat, x1 - x0)
    return y0 + by, x0 + bx


def click_targets(
    counts: Sequence[bytes],
    ids: np.ndarray,
    height: int,
    width: int,
    rows: np.ndarray,
    cols: np.ndarray,
    valid: tuple[int, int],
    min_area: int,
    clicks: int,
    max_targets: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clicks inside random candidates, each with every candidate holding it as targets.

    Args:
        counts: the candidates' compressed RLE strings, of a ``height x width`` image.
        ids (int[N]): the candidates' indices in their record (ties of area go to the lower).
        rows (int64[S]), cols (int64[S]): the crop's source rows and columns (-1: padding).
        valid: (h, w) of the image inside the crop (rows[:h] and cols[:w] are not -1).
        min_area: candidates with fewer crop pixels are not masks of the sample.
        clicks: P, clicks per crop.
        max_targets: T, targets per click at most (spread over granularities).
        rng: the sample's generator: the clicked masks, then one draw per click's pixel, as
            the old loader drew them.

    Returns:
        masks (Tensor[M, S, S] bool), points (Tensor[P, 2] float: x, y pixel centres),
        click_targets (Tensor[P, T] int64: indices into masks, -1 padded).
    """
    s = rows.shape[0]
    packed = pack_rles(counts, height, width)
    area = rle_crop_area(packed, rows, cols).numpy()
    keys = np.flatnonzero(area >= min_area)  # positions in counts, in the candidates' order
    points = torch.zeros(clicks, 2)
    targets = torch.full((clicks, max_targets), -1, dtype=torch.long)
    if keys.size == 0:
        return torch.zeros(0, s, s, dtype=torch.bool), points, targets
    chosen = rng.choice(keys.size, size=clicks, replace=keys.size < clicks)
    distinct, slot = np.unique(chosen, return_inverse=True)
    masks, boxes = rle_crop(pack_rles([counts[keys[d]] for d in distinct], height, width), rows, cols)
    scratch = np.zeros(valid[0] * valid[1])
    yx = np.zeros((clicks, 2), np.int64)
    for c in range(clicks):
        box = boxes[slot[c]].tolist()
        x0, y0, x1, y1 = box
        y, x = draw_click(masks[slot[c], y0:y1, x0:x1].numpy(), box, valid, rng, scratch)
        yx[c] = (y, x)
        points[c] = torch.tensor([x + 0.5, y + 0.5])
    # All clicks' holders among all candidates, in one pass over their runs.
    hits = rle_crop_at(pack_rles([counts[k] for k in keys], height, width), rows, cols, yx).numpy()
    order = np.lexsort((ids[keys], area[keys]))  # fine to coarse; ties: the lower record index
    used: dict[int, int] = {}  # position in keys -> output index
    for c in range(clicks):
        holders = order[hits[order, c]]
        if holders.size > max_targets:  # spread over granularities
            holders = holders[np.linspace(0, holders.size - 1, max_targets).round().astype(int)]
        for t, k in enumerate(holders.tolist()):
            if k not in used:
                used[k] = len(used)
            targets[c, t] = used[k]
    out = rle_crop(pack_rles([counts[keys[k]] for k in used], height, width), rows, cols)[0]
    return out, points, targets
