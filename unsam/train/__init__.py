"""Training on pseudo-masks: whole-image and point-promptable segmenters (UnSAM §5).

- :mod:`unsam.train.config` — :class:`TrainConfig` and its YAML groups; ``configs/`` the shipped runs;
- :mod:`unsam.train.data` — augmented crops with their masks, the step-indexed batch sampler;
- :mod:`unsam.train.optim` — AdamW groups and the learning-rate schedule;
- :mod:`unsam.train.validate` — evaluation during training;
- :mod:`unsam.train.loop` — :class:`Trainer`: DDP, checkpoints, exact resume;
- :mod:`unsam.train.selftrain`, :mod:`unsam.train.fuse` — a self-training round, UnSAM+ label fusion;
- :mod:`unsam.train.cli` — ``python -m unsam.train``.
"""

from unsam.train.cli import main
from unsam.train.config import (
    CONFIG_DIR,
    ConfigError,
    TrainConfig,
    config_from_dict,
    load_config,
)
from unsam.train.loop import Trainer

__all__ = ["CONFIG_DIR", "ConfigError", "TrainConfig", "Trainer", "config_from_dict", "load_config", "main"]
