"""Which data tunes and which data evaluates: the one place that names the splits.

Rule: a default is chosen on tuning data only. The evaluation data below is
never used to choose or check a setting before a benchmark run; the quality
benchmark (``benchmarks/test_quality_bench.py``) evaluates on it only.

BSDS500 (``bsds500/images/{train,val}``, ``groundTruth/{train,val}``)
    tune: ``train`` (200 images); evaluate: ``val`` (100 images). The
    ``test`` split of the release is not in the shared data; published
    BSDS500 numbers are on ``test``, ours on ``val``.

COCO-mini (``coco-mini``: 79 COCO val2017 images, one GT file)
    split by image id: the images sorted by id, the first
    ``ceil(n / 2)`` = 40 tune (:data:`COCO_MINI_TUNE_IDS`, ids 139 ... 262227)
    and the other 39 evaluate (:data:`COCO_MINI_EVAL_IDS`, ids 269196 ...
    570448). Sorted halves rather than even / odd ids because the defaults
    tuned on COCO-mini so far were tuned on its first 20 images by file name,
    which are its 20 smallest ids (139 ... 151938): all of them fall in the
    tuning half, so no image that ever chose a default is evaluated. The ids
    are written out below so that the split cannot move; ``tests/test_splits.py``
    checks that they follow the rule on the shipped GT file.

Which data chose which default (the ``classic`` backbone; each number is in
the comment beside the setting):

- COCO-mini, first 20 images (all in the tuning half), AR@1000: the atom
  scales and the atom birth / fill terms (``unsam.label.atoms``), feature weight 0
  for classic atom merging (``unsam.label.features``), no patch-grid conquer for
  classic and no clipping to parents (``unsam.label.pipeline``).
- BSDS500 train (images 1-20, 21-70, or 60 images; covering ODS): the
  containment 0.9 of a parent, the partition levels (ladder at atom scale
  200, ratio 1.25, at most 256 regions), divide regions snapped to atoms,
  the classic tau and merge ladder.
- BSDS500 val and the COCO-mini evaluation half: nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BSDS_EVAL",
    "BSDS_TUNE",
    "COCO_MINI_EVAL_IDS",
    "COCO_MINI_TUNE_IDS",
    "PARTS",
    "bsds_gt_dir",
    "bsds_images",
    "coco_mini_gt",
    "coco_mini_images",
    "coco_mini_split",
    "split_ids",
]

PARTS = ("tune", "eval")

#: BSDS500 split used for tuning / for evaluation.
BSDS_TUNE = "train"
BSDS_EVAL = "val"

#: COCO-mini image ids for tuning: the 40 smallest of its 79 ids.
COCO_MINI_TUNE_IDS: tuple[int, ...] = (
    139, 802, 11813, 18575, 22192, 22892, 34417, 62554, 73326, 92660,
    99053, 101787, 106235, 109313, 117645, 126107, 128598, 135561, 136334, 151938,
    153797, 155341, 160012, 165518, 172648, 174231, 181303, 183709, 192699, 205401,
    214753, 217285, 229358, 229997, 231125, 237517, 244592, 255165, 261712, 262227,
)  # fmt: skip
#: COCO-mini image ids for evaluation: the other 39; never used for tuning.
COCO_MINI_EVAL_IDS: tuple[int, ...] = (
    269196, 275791, 310200, 311002, 328683, 343803, 349860, 350679, 357501, 358427,
    359219, 368212, 370208, 377575, 397133, 403353, 406129, 407574, 423617, 434204,
    435206, 453302, 460229, 475678, 482585, 501368, 516916, 519208, 519611, 530836,
    536038, 549055, 551780, 552775, 553664, 557172, 565607, 568290, 570448,
)  # fmt: skip


def split_ids(ids: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The rule behind the COCO-mini split: ``ids`` sorted, the first ``ceil(n / 2)`` tune, the rest evaluate."""
    s = sorted(set(ids))
    half = math.ceil(len(s) / 2)
    return tuple(s[:half]), tuple(s[half:])


def _part(part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"part should be one of {PARTS}, got {part!r}")
    return part


def bsds_images(data: str | os.PathLike[str], part: str = "eval") -> list[Path]:
    """The BSDS500 images of ``part`` ("tune": train, "eval": val) under the data root, sorted by name."""
    split = BSDS_TUNE if _part(part) == "tune" else BSDS_EVAL
    return sorted((Path(data) / "bsds500" / "images" / split).glob("*.jpg"))


def bsds_gt_dir(data: str | os.PathLike[str], part: str = "eval") -> Path:
    """The BSDS500 ``groundTruth/<split>`` folder of ``part``."""
    return Path(data) / "bsds500" / "groundTruth" / (BSDS_TUNE if _part(part) == "tune" else BSDS_EVAL)


def coco_mini_gt(data: str | os.PathLike[str]) -> Path:
    """COCO-mini's GT file, both parts: evaluate one with ``evaluate_coco(..., image_ids=coco_mini_split(part))``."""
    return Path(data) / "coco-mini" / "instances_val2017.json"


def coco_mini_split(part: str) -> tuple[int, ...]:
    """The COCO-mini image ids of ``part`` ("tune" or "eval")."""
    return COCO_MINI_TUNE_IDS if _part(part) == "tune" else COCO_MINI_EVAL_IDS


def coco_mini_images(data: str | os.PathLike[str], part: str = "eval") -> list[Path]:
    """The COCO-mini image files of ``part``, sorted by id (file names are zero-padded ids)."""
    ids = coco_mini_split(part)
    folder = Path(data) / "coco-mini" / "val2017"
    return [folder / f"{i:012d}.jpg" for i in ids]
