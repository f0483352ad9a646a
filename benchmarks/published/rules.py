"""Where a port departs from the released code: every deviation, by name.

:data:`RELEASED` is the released code as it is. The presets change a few rules
(README "Differences from the published code"); the parity runs the ports with
those rules switched on, one named field each, so that what the parity proves is
explicit: :data:`MASKCUT_PRESET` and :data:`UNSAM_PRESET`. ``tests/test_parity.py``
checks each of their values against the preset's resolved settings and the
package's documented constants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["MASKCUT_PRESET", "RELEASED", "UNSAM_PRESET", "Rules"]


@dataclass(frozen=True)
class Rules:
    """The rules a port runs with (defaults: the released code's)."""

    # -- reading an eigenvector (MaskCut's bipartition) --
    #: "lapack": the sign the solver returns (released); "largest_positive": the first entry
    #: of largest |x| is positive (the presets, for determinism: the rules depend on the sign).
    sign: str = "lapack"
    #: None: exact comparisons (released). A float r: entries within r x max|x - mean| of the
    #: mean are not above it, and entries within r x max|x| of a maximum tie with it, the
    #: first winning (the presets: degenerate graphs have exactly equal entries).
    tie_rtol: float | None = None

    # -- MaskCut's step 5 (maskcut.py, crf.py) --
    #: True: every mask goes through the dense CRF (pydensecrf) at the divide resolution on
    #: the image resized there with PIL's LANCZOS, its holes filled, and is dropped when its
    #: IoU with the unrefined mask is < 0.5 (released); False: no CRF.
    crf: bool = True

    # -- UnSAM's divide --
    #: "detector": the trained CutLER detector (released; cannot be run here); "cuts": the
    #: regions are given by the caller (the preset's Normalized Cut divide).
    divide: str = "detector"

    # -- UnSAM's conquer crops --
    #: "exclusive": rows and columns min..max-1 of the region (released); "inclusive": min..max.
    crop_box: str = "exclusive"
    #: "bgr": the image as cv2 reads it, normalised with RGB statistics (released); "rgb".
    channels: str = "bgr"
    #: "pil_bicubic": PIL's default resize of the uint8 crop (released); "bilinear":
    #: sampled from the float image (align_corners=False, edges clamped) as the preset does.
    crop_resize: str = "pil_bicubic"
    local_size: int = 256  #: crops are resized to local_size x local_size

    # -- merging --
    thresholds: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    min_size: int = 4  #: clusters of fewer patches are not collected
    #: "float32" (released); "float64": the kernel's precision, so near-ties within float32
    #: rounding do not decide between the two implementations.
    merge_dtype: str = "float32"

    # -- masks --
    #: "released": after each threshold, every cluster that still has an edge, again at every
    #: level; "distinct": each distinct cluster once, with its merge-tree parent.
    emit: str = "released"
    #: "pil_bicubic": PIL's default resize of the grid mask, threshold at half its maximum
    #: (released); "bilinear": bilinear upsample, threshold 0.5.
    upsample: str = "pil_bicubic"
    inside_frac: float = 0.9  #: a conquer mask is kept when more than this share is inside its region
    #: "windowed": per region, masks sorted by area, each against the next nms_step - 1
    #: (released); "image": greedy NMS over the whole image, best score first.
    nms: str = "windowed"
    nms_iou: float = 0.9
    nms_step: int = 5
    #: "none" (released: masks carry no score); "stability": a divide region 1 - NCut/2, a
    #: cluster score_floor + (1 - score_floor) x its persistence over the thresholds, both
    #: times sqrt(area fraction) (the presets).
    score: str = "none"
    score_floor: float = 0.25
    #: Masks below max(min_area, min_area_frac x image area) pixels are dropped (released: empty only).
    min_area: int = 1
    min_area_frac: float = 0.0
    max_masks: int | None = None  #: keep at most this many (best scores first); None: all
    #: "none" (released); "merge_tree": a cluster's parent is the kept cluster it merges into
    #: at the next coarser threshold, a top cluster's its region, a recursive region's the
    #: region it was cut from (the presets' ``levels: tree``).
    parents: str = "none"


#: The released code (CutLER's ``maskcut.py``, UnSAM's ``divide_conquer.py``).
RELEASED = Rules()

#: The ``maskcut`` preset: the released MaskCut with a deterministic eigenvector reading.
MASKCUT_PRESET = replace(RELEASED, sign="largest_positive", tie_rtol=1e-9)

#: The ``unsam`` preset: its divide instead of the detector, and the conquer's documented
#: differences (README "Differences from the published code").
UNSAM_PRESET = replace(
    MASKCUT_PRESET,
    divide="cuts",
    crop_box="inclusive",
    channels="rgb",
    crop_resize="bilinear",
    merge_dtype="float64",
    emit="distinct",
    upsample="bilinear",
    nms="image",
    score="stability",
    min_area=16,
    min_area_frac=1e-4,
    max_masks=1000,
    parents="merge_tree",
)
