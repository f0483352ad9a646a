"""Evaluation by the published rules, one module per benchmark.

- :mod:`unsam.evaluate.predictions` — prediction folders and files, matched to GT by file name;
- :mod:`unsam.evaluate.coco` — class-agnostic COCO mask AR/AP (``useCats=0``, maxDets up to 1000);
- :mod:`unsam.evaluate.bsds` — BSDS500 covering / PRI / VI at ODS and OIS (the benchmark's scale rule);
- :mod:`unsam.evaluate.points` — point prompts: MaxIoU / OracleIoU of a promptable model;
- :mod:`unsam.evaluate.baselines` — the classical baselines (FH, SLIC + merging) in the label format;
- :mod:`unsam.evaluate.splits` — which data tunes and which evaluates;
- :mod:`unsam.evaluate.cli` — ``python -m unsam.evaluate coco|bsds|points``.
"""

from unsam.evaluate.bsds import (
    BSDS_KEYS,
    SCALES,
    BsdsResult,
    evaluate_bsds,
    level_partitions,
    load_bsds_gt,
    ods_ois,
    probabilistic_rand_index,
    segmentation_covering,
    variation_of_information,
)
from unsam.evaluate.cli import main
from unsam.evaluate.coco import CocoResult, coco_keys, coco_metrics, evaluate_coco
from unsam.evaluate.predictions import EvalError, PredImage, load_predictions

__all__ = [
    "BSDS_KEYS",
    "SCALES",
    "BsdsResult",
    "CocoResult",
    "EvalError",
    "PredImage",
    "coco_keys",
    "coco_metrics",
    "evaluate_bsds",
    "evaluate_coco",
    "level_partitions",
    "load_bsds_gt",
    "load_predictions",
    "main",
    "ods_ois",
    "probabilistic_rand_index",
    "segmentation_covering",
    "variation_of_information",
]
