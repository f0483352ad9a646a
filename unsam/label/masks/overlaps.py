"""Every pairwise |a ∩ b| of one image's masks, computed once per image and narrowed as masks go."""

from __future__ import annotations

import numpy as np

from unsam.label.items import MaskItem
from unsam.label.masks.ops import COMPILED

__all__ = ["Overlaps", "pairwise_intersections"]


class Overlaps:
    """All pairwise |a ∩ b| of a list of masks (exact), from the backend ``ops``.

    Kept as the backend returns them (the compiled op: the upper triangle of the
    intersection matrix, sparse: a nested hierarchy overlaps little); the dense
    matrix is made on demand (:attr:`inter`). :meth:`select` narrows without
    leaving the sparse form, :meth:`subset` makes the narrowed matrix dense, and
    :meth:`update` recomputes after masks changed (clipped to their parents).
    """

    def __init__(self, items: list[MaskItem], height: int, width: int, ops=COMPILED):
        self.items = items
        self.height, self.width = height, width
        self.ops = ops
        self.sparse = ops.overlaps(items, height, width)
        self._inter: np.ndarray | None = None

    @property
    def inter(self) -> np.ndarray:
        """|a ∩ b| for every pair: int64 [K, K]."""
        if self._inter is None:
            self._inter = self.sparse.dense()
        return self._inter

    def matrix(self):
        """The intersections as they are held (sparse until a dense matrix was asked for), for NMS."""
        return self.sparse if self._inter is None else self._inter

    def areas(self) -> np.ndarray:
        """The masks' areas (the diagonal)."""
        return self.sparse.areas() if self._inter is None else np.diagonal(self._inter)

    def _like(self, keep: list[int]) -> Overlaps:
        new = object.__new__(Overlaps)
        new.items = [self.items[i] for i in keep]
        new.height, new.width, new.ops = self.height, self.width, self.ops
        return new

    def select(self, keep: list[int]) -> Overlaps:
        """The overlaps of items[keep] (increasing indices), kept sparse when they are."""
        if self._inter is not None:
            return self.subset(keep)
        new = self._like(keep)
        new.sparse, new._inter = self.sparse.select(keep), None
        return new

    def subset(self, keep: list[int]) -> Overlaps:
        """The overlaps of items[keep] as a dense matrix (no recomputation)."""
        new = self._like(keep)
        new.sparse = None
        if not keep:
            new._inter = np.zeros((0, 0), np.int64)
        elif self._inter is None:
            new._inter = self.sparse.dense(keep)
        else:
            new._inter = self.inter[np.ix_(keep, keep)]
        return new

    def update(self, rows: list[int]) -> None:
        """Masks ``rows`` changed (e.g. clipped): the intersections are computed again."""
        if rows:
            self.sparse = self.ops.overlaps(self.items, self.height, self.width)
            self._inter = None


def pairwise_intersections(items: list[MaskItem], height: int, width: int, ops=COMPILED) -> np.ndarray:
    """All |a ∩ b| at once: [K, K] int64 (see :class:`Overlaps`)."""
    if not items:
        return np.zeros((0, 0), np.int64)
    return Overlaps(items, height, width, ops).inter
