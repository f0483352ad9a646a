"""Settings of a labeling run: :class:`LabelConfig` holds every default once (the CLI and
``--config FILE.yaml`` only override it), a **preset** (a small YAML in ``presets/``) sets
the stages for one algorithm, and :func:`resolve` fills the backbone's own defaults and
checks everything once per run.

- ``maskcut`` — CutLER's MaskCut as published (ALGORITHM.md §2 steps 1-5, the dense CRF
  included), no conquer;
- ``unsam`` — the paper's divide and conquer (§2 divide with this project's extra
  cuts, §3 conquer as published, the hierarchy from the merge tree);
- ``full`` — this project's pipeline: UnSAM plus atoms, the partition ladder and
  divide regions snapped to atoms.

Without a preset, ``classic`` features get ``full`` and ViT backbones ``unsam``
(:func:`default_preset`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unsam.label.atoms import AtomConfig, check_atom_config
from unsam.label.conquer import ConquerConfig
from unsam.label.crf import CRFConfig, check_crf_config
from unsam.label.divide import DivideConfig, check_divide_config
from unsam.label.masks import REFINE_MODES, MaskConfig, check_mask_config

__all__ = [
    "PRESETS",
    "PRESET_DIR",
    "LabelConfig",
    "config_from_dict",
    "default_preset",
    "label_config",
    "load_preset",
    "resolve",
]

#: The shipped presets (``unsam/presets/<name>.yaml``).
PRESETS: tuple[str, ...] = ("full", "unsam", "maskcut")
PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class LabelConfig:
    """Every setting of ``unsam.label``. ``None`` means: the backbone's own default."""

    backbone: str = "dino_vitb8"
    checkpoint: str | None = None
    preset: str | None = None  #: the preset these settings came from (recorded; see :func:`label_config`)
    divide_size: int = 480  #: image resized to this square for the divide stage (60 x 60 patches at /8)
    conquer_whole_image: bool | None = None  #: the whole image is conquered as one more region (None: not for classic)
    whole_image_size: int | None = None  #: its crop size (None: 1024 for classic, else conquer.size)
    divide: DivideConfig = field(default_factory=DivideConfig)
    conquer: ConquerConfig = field(default_factory=ConquerConfig)
    conquer_regions: bool | None = None  #: conquer each divide region on its patch grid (None: not for classic)
    atoms: AtomConfig = field(default_factory=AtomConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)  #: the dense CRF (divide.crf and refine "crf")
    tau: float | None = None  #: overrides divide.tau (None: backbone default)
    merge_thresholds: tuple[float, ...] | None = None  #: overrides conquer.thresholds (None: backbone default)
    max_pixels: int = 50_000_000  #: larger images are skipped (reason "too-large")
    refine: str = "none"  #: "none", "edge" (guided filter), "snap" (to SLIC superpixels) or "crf" (dense CRF)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(d: dict[str, Any], base: LabelConfig | None = None) -> LabelConfig:
    """Overlay a (YAML) dict on a config; unknown keys are an error that names them."""
    cfg = dataclasses.replace(base) if base is not None else LabelConfig()
    cfg.divide = dataclasses.replace(cfg.divide)
    cfg.conquer = dataclasses.replace(cfg.conquer)
    cfg.masks = dataclasses.replace(cfg.masks)
    cfg.atoms = dataclasses.replace(cfg.atoms)
    cfg.crf = dataclasses.replace(cfg.crf)
    nested = {"divide": cfg.divide, "conquer": cfg.conquer, "atoms": cfg.atoms, "masks": cfg.masks, "crf": cfg.crf}
    top = {f.name for f in dataclasses.fields(LabelConfig)}
    for k, v in (d or {}).items():
        if k == "_run":
            continue  # the record of a run in its config.yaml (input, device): not a setting
        if k in nested:
            if not isinstance(v, dict):
                raise ValueError(f"config: '{k}' should be a mapping, got {type(v).__name__}")
            sub = nested[k]
            names = {f.name for f in dataclasses.fields(sub)}
            for kk, vv in v.items():
                if kk not in names:
                    raise ValueError(f"config: unknown key '{k}.{kk}' (known: {', '.join(sorted(names))})")
                if isinstance(vv, list):
                    vv = tuple(vv)
                setattr(sub, kk, vv)
        elif k in top:
            setattr(cfg, k, tuple(v) if isinstance(v, list) else v)
        else:
            raise ValueError(f"config: unknown key '{k}' (known: {', '.join(sorted(top))})")
    return cfg


def default_preset(backbone: str) -> str:
    """The preset a backbone gets when none is asked for: ``full`` for the weight-free
    ``classic`` features (measured: the atoms and the ladder are what make its labels
    beat FH, README "Quality"), ``unsam`` for ViT backbones (the published algorithm;
    no DINO weights here to measure whether the extra stages help them)."""
    from unsam.label.features import BACKBONES

    spec = BACKBONES.get(backbone)
    return "full" if spec is not None and spec.family == "classic" else "unsam"


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a shipped preset (a mapping for :func:`config_from_dict`)."""
    import yaml

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {name}: should be a mapping of settings")
    return data


def label_config(overrides: dict[str, Any] | None = None, preset: str | None = None) -> LabelConfig:
    """The settings of a run: the library defaults, then the preset (``preset``, else
    ``overrides["preset"]``, else :func:`default_preset` of the backbone), then ``overrides``
    (a ``--config`` file's mapping and the CLI flags; a run's own ``config.yaml`` works too)."""
    overrides = dict(overrides or {})
    backbone = overrides.get("backbone") or LabelConfig.backbone
    name = preset or overrides.get("preset") or default_preset(backbone)
    overrides["preset"] = name
    cfg = config_from_dict(load_preset(name), LabelConfig(backbone=backbone))
    return config_from_dict(overrides, cfg)


def resolve(cfg: LabelConfig, spec) -> LabelConfig:
    """Fill the backbone's own defaults (tau, merge thresholds) where the config leaves them open."""
    cfg = config_from_dict({}, cfg)
    cfg.divide.tau = float(cfg.tau if cfg.tau is not None else spec.tau)
    cfg.tau = cfg.divide.tau
    thr = cfg.merge_thresholds if cfg.merge_thresholds is not None else spec.merge_thresholds
    cfg.conquer.thresholds = tuple(float(t) for t in thr)
    cfg.merge_thresholds = cfg.conquer.thresholds
    # With weight-free features the atom hierarchy supersedes the patch-grid conquer:
    # on the first 20 COCO-mini images (tuning half) adding the grid masks to atoms + divide regions lowered
    # AR@1000 from 0.230 to 0.213 (they take slots with blockier masks) and doubled
    # the time. A ViT's grid masks carry semantics the atoms lack, so they stay there.
    if cfg.conquer_regions is None:
        cfg.conquer_regions = spec.family != "classic"
    if cfg.conquer_whole_image is None:
        cfg.conquer_whole_image = spec.family != "classic"
    if cfg.atoms.w_feat is None:
        cfg.atoms.w_feat = float(spec.atom_w_feat)
    if cfg.refine not in REFINE_MODES:
        raise ValueError(f"config: refine should be one of {', '.join(REFINE_MODES)}, got {cfg.refine!r}")
    if cfg.whole_image_size is None and spec.family == "classic":
        # Weight-free features cost nothing on a 1024 crop (128 x 128 patches): the
        # whole image's finest levels then reach small objects (BSDS500 train mask
        # AR@1000 0.070 -> 0.092). A ViT would pay (tokens)^2 attention for it.
        cfg.whole_image_size = 1024
    if cfg.divide_size < 2 * spec.patch_size:
        raise ValueError(f"config: divide_size should be >= {2 * spec.patch_size}, got {cfg.divide_size}")
    # Checked here, not per image: a bad value fails the run at once, not every image.
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise ValueError(f"config: preset should be one of {', '.join(PRESETS)}, got {cfg.preset!r}")
    check_divide_config(cfg.divide)
    check_mask_config(cfg.masks)
    check_atom_config(cfg.atoms)
    check_crf_config(cfg.crf)
    return cfg
