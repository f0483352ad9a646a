"""The mask stage: one image's candidate masks -> its SA-1B annotation records.

- :mod:`~unsam.label.masks.config` — :class:`MaskConfig`, the working resolution;
- :mod:`~unsam.label.masks.ops` — the ops backend (compiled by default; an explicit argument);
- :mod:`~unsam.label.masks.overlaps` — every pairwise |a ∩ b| of an image's masks, once;
- :mod:`~unsam.label.masks.hierarchy` — NMS, parents, levels, pruning, ``max_masks``;
- :mod:`~unsam.label.masks.output` — the annotation records (RLE at full size);
- :mod:`~unsam.label.masks.stage` — :func:`mask_stage`, the sequence.
"""

from unsam.label.masks.config import (
    LEVEL_RULES,
    MaskConfig,
    check_mask_config,
    working_size,
)
from unsam.label.masks.hierarchy import (
    clip_to_parents,
    nms_from_intersections,
    parents_from_intersections,
)
from unsam.label.masks.ops import COMPILED, CompiledMaskOps
from unsam.label.masks.output import to_annotations
from unsam.label.masks.overlaps import Overlaps, pairwise_intersections
from unsam.label.masks.stage import REFINE_MODES, mask_stage

__all__ = [
    "COMPILED",
    "LEVEL_RULES",
    "REFINE_MODES",
    "CompiledMaskOps",
    "MaskConfig",
    "Overlaps",
    "check_mask_config",
    "clip_to_parents",
    "mask_stage",
    "nms_from_intersections",
    "pairwise_intersections",
    "parents_from_intersections",
    "to_annotations",
    "working_size",
]
