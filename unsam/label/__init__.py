"""The labeling pipeline: images -> hierarchical pseudo-masks, one module per stage.

``io`` (:mod:`unsam.io`) -> :mod:`~unsam.label.features` -> :mod:`~unsam.label.divide`
-> :mod:`~unsam.label.conquer` -> :mod:`~unsam.label.atoms` -> :mod:`~unsam.label.masks`
(which writes the records), composed by the presets (``presets/*.yaml``,
:mod:`~unsam.label.config`) in :class:`Labeler` (:mod:`~unsam.label.pipeline`);
``python -m unsam.label`` runs it over a folder (:mod:`~unsam.label.cli`).
Refinements (:mod:`~unsam.label.refine`, :mod:`~unsam.label.superpixels`), the
mask type (:mod:`~unsam.label.items`), pictures (:mod:`~unsam.label.vis`) and the
COCO export command (:mod:`~unsam.label.export`) sit beside them.
"""

from unsam.label.cli import main
from unsam.label.config import (
    PRESETS,
    LabelConfig,
    config_from_dict,
    default_preset,
    label_config,
    load_preset,
)
from unsam.label.pipeline import Labeler

__all__ = ["PRESETS", "LabelConfig", "Labeler", "config_from_dict", "default_preset", "label_config", "load_preset", "main"]
