"""unsam: hierarchical segmentation pseudo-labels without human annotation.

Implements UnSAM ("Segment Anything without Supervision", NeurIPS 2024) with a
compiled labeling core: bit-packed MaskCut affinities, Lanczos Normalized Cut
and exact greedy region merging on CPU and CUDA (``unsam.kernels``).
"""

__version__ = "0.1.0"
