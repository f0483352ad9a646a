"""The mask stage's pairwise and per-mask ops as one explicit backend.

A backend has four methods on one image's masks (:class:`~unsam.label.items.MaskItem`):

- ``overlaps(items, height, width)`` -> every pairwise |a ∩ b|, as an object with
  ``areas()`` (int64 [K]), ``dense(rows=None)`` (the symmetric int64 matrix of ``rows``)
  and ``select(rows)`` (the same for increasing ``rows`` only, renumbered);
- ``nms(inter, scores, iou, protected=None)`` -> the kept indices, in order;
- ``parents(inter, contain)`` -> each mask's smallest strictly larger container (-1: none);
- ``rle(items, work_hw, height, width)`` -> COCO RLE strings, areas and bboxes of the masks
  brought from ``work_hw`` to height x width by nearest neighbour.

:data:`COMPILED` (the compiled ops of :mod:`unsam.kernels.maskops`) is every caller's
default. The tests' Python reference (``tests/reference/maskops.py``) is another backend
with the same outputs to the byte; code that wants it passes it (``ops=``), so the choice
is made per call and travels with the call to worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unsam.kernels import maskops
from unsam.label.items import MaskItem

__all__ = ["COMPILED", "CompiledMaskOps"]


class CompiledMaskOps:
    """The compiled ops (``torch.ops.unsam.mask_*``): overlaps as the upper triangle of the
    intersection matrix (sparse), NMS, parents and RLE in C++ (CUDA where given CUDA tensors)."""

    name = "compiled"

    def overlaps(self, items: Sequence[MaskItem], height: int, width: int) -> maskops.UpperOverlaps:
        return maskops.mask_overlaps_upper([m.box for m in items], [m.crop_tensor() for m in items], height, width)

    def nms(self, inter, scores: np.ndarray, iou: float, protected: np.ndarray | None = None) -> list[int]:
        return maskops.mask_nms(inter, np.asarray(scores, np.float64), iou, protected)

    def parents(self, inter: np.ndarray, contain: float) -> list[int]:
        return maskops.mask_parents(inter, contain)

    def rle(self, items: Sequence[MaskItem], work_hw: tuple[int, int], height: int, width: int):
        return maskops.mask_rle([m.box for m in items], [m.crop_tensor() for m in items], work_hw, height, width)

    def __reduce__(self):  # one instance per process: pickles as a reference to it
        return "COMPILED"


#: The default backend.
COMPILED = CompiledMaskOps()
