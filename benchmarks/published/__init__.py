"""Ports of the released code's own loops: the "published way" of the benchmarks and the
oracles of the presets' parity.

Written from the released code alone (read, not copied), with its costs as they are
there, and importing nothing from ``unsam``:

- :mod:`~benchmarks.published.maskcut` — CutLER ``maskcut/maskcut.py``: ``maskcut_forward``
  (dense float32 affinity and dense generalized eigensolver per cut), the bipartition,
  the drop rule and the mask writing; ``create_annotation_info``;
- :mod:`~benchmarks.published.crf` — CutLER ``maskcut/crf.py`` and MaskCut's step 5 (dense CRF
  with pydensecrf2, hole filling, the IoU < 0.5 drop), one mask at a time; needs
  ``pydensecrf2`` (imported only when the CRF runs);
- :mod:`~benchmarks.published.unsam` — UnSAM ``divide_and_conquer/iterative_merging.py``
  (the merge loop) and ``divide_conquer.py`` (per region: crop, features, merge, each
  mask resized, tested and pasted at full size, windowed NMS, RLE of every mask);
- :mod:`~benchmarks.published.rules` — every departure from the release the parity
  needs, by name (:data:`RELEASED`, :data:`MASKCUT_PRESET`, :data:`UNSAM_PRESET`).

What the release does that is not here: UnSAM's divide (a trained CutLER detector: the
regions are given instead, ``tests/reference/divide.py`` makes the preset's) and its
CascadePSP refinement.
"""

from benchmarks.published.rules import MASKCUT_PRESET, RELEASED, UNSAM_PRESET, Rules

__all__ = ["MASKCUT_PRESET", "RELEASED", "UNSAM_PRESET", "Rules"]
