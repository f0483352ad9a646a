"""The labeling pipeline: images -> hierarchical pseudo-masks, one module per stage.

features -> divide -> conquer -> atoms -> masks -> output, composed by the presets
(``presets/*.yaml``) in :class:`Labeler`; ``python -m unsam.label`` runs it over a
folder (:mod:`unsam.label.cli`).
"""

from unsam.label.cli import main
from unsam.label.pipeline import PRESETS, LabelConfig, Labeler, config_from_dict, default_preset, label_config, load_preset

__all__ = ["PRESETS", "LabelConfig", "Labeler", "config_from_dict", "default_preset", "label_config", "load_preset", "main"]
