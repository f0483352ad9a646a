"""Compiled graph kernels of unsam (``torch.ops.unsam``) with Python wrappers.

- :func:`affinity` — bit-packed thresholded cosine graph of MaskCut.
- :func:`lanczos_fiedler` / :func:`ncut_fiedler` — Normalized Cut eigenvector.
- :func:`merge_levels` — exact greedy region merging at a ladder of thresholds.
- :func:`graph_segment` — Felzenszwalb–Huttenlocher atoms (union-find), several scales.
- :func:`merge_graph` — a region graph merged to the end (a dendrogram).

Each has a slow reference beside it (``*_reference``) used as the test oracle.
"""

from unsam.kernels._ext import cuda_available, has_cuda
from unsam.kernels.affinity import affinity, affinity_reference, dense_affinity, unpack_bits
from unsam.kernels.merge import DEFAULT_THRESHOLDS, merge_levels, merge_levels_reference
from unsam.kernels.ncut import fiedler_reference, fix_sign, lanczos_fiedler, ncut_fiedler
from unsam.kernels.segment import graph_segment, graph_segment_reference, merge_graph, merge_graph_reference

__all__ = [
    "DEFAULT_THRESHOLDS",
    "affinity",
    "affinity_reference",
    "cuda_available",
    "dense_affinity",
    "fiedler_reference",
    "fix_sign",
    "graph_segment",
    "graph_segment_reference",
    "has_cuda",
    "lanczos_fiedler",
    "merge_levels",
    "merge_graph",
    "merge_graph_reference",
    "merge_levels_reference",
    "ncut_fiedler",
    "unpack_bits",
]
