"""Compiled graph kernels of unsam (``torch.ops.unsam``) with Python wrappers.

- :func:`affinity` — bit-packed thresholded cosine graph of MaskCut.
- :func:`lanczos_fiedler` / :func:`ncut_fiedler` — Normalized Cut eigenvector.
- :func:`merge_levels` — exact greedy region merging at a ladder of thresholds.
- :func:`graph_segment` — Felzenszwalb–Huttenlocher atoms (union-find), several scales.
- :func:`merge_graph` — a region graph merged to the end (a dendrogram).
- :mod:`unsam.kernels.maskops` — the mask stage's ops (overlaps, NMS, parents, RLE).
- :mod:`unsam.kernels.rlecrop` — training crops straight from RLE (areas, masks, point values).
- :func:`dense_crf` — CutLER's dense CRF for many masks of one image (permutohedral lattice).

Each op's slow Python reference lives beside the tests (``tests/reference/``) and is
their oracle.
"""

from unsam.kernels._ext import cuda_available, has_cuda
from unsam.kernels.affinity import affinity, dense_affinity, unpack_bits
from unsam.kernels.densecrf import PUBLISHED_CRF, CRFParams, dense_crf
from unsam.kernels.merge import DEFAULT_THRESHOLDS, merge_levels
from unsam.kernels.ncut import lanczos_fiedler, ncut_fiedler
from unsam.kernels.segment import graph_segment, merge_graph

__all__ = [
    "CRFParams",
    "DEFAULT_THRESHOLDS",
    "PUBLISHED_CRF",
    "affinity",
    "cuda_available",
    "dense_affinity",
    "dense_crf",
    "graph_segment",
    "has_cuda",
    "lanczos_fiedler",
    "merge_graph",
    "merge_levels",
    "ncut_fiedler",
    "unpack_bits",
]
