"""Trainable models on pseudo-masks (ALGORITHM.md §5), in the timm manner.

- ``unsam_whole_*``: whole-image segmentation, Mask2Former-style query decoder
  (:class:`~unsam.models.mask2former.MaskFormer`);
- ``unsam_prompt_*``: click -> several masks of different granularity
  (:class:`~unsam.models.promptable.PromptSegmenter`);
- ``*_tiny``: random tiny variants for tests (``vit_tiny_test`` trunk).

``create_model(name, **kwargs)`` builds one; ``kwargs`` override the variant's
constructor defaults (``pretrained``, ``checkpoint``, ``num_queries``, ...).
Losses live in :mod:`unsam.models.losses`.
"""

from unsam.models import mask2former, promptable  # noqa: F401 - registers the variants
from unsam.models._registry import (
    create_model,
    is_model,
    list_models,
    model_entrypoint,
    register_model,
)
from unsam.models.backbone import PixelDecoder, ViTBackbone
from unsam.models.losses import (
    HungarianMatcher,
    PromptCriterion,
    SetCriterion,
    hungarian_match,
    point_sample,
)
from unsam.models.mask2former import (
    MaskFormer,
    postprocess,
    select_queries,
    upsample_masks,
)
from unsam.models.promptable import PromptSegmenter

__all__ = [
    "HungarianMatcher",
    "MaskFormer",
    "PixelDecoder",
    "PromptCriterion",
    "PromptSegmenter",
    "SetCriterion",
    "ViTBackbone",
    "checkpoint_filter_fn",
    "create_model",
    "hungarian_match",
    "is_model",
    "list_models",
    "model_entrypoint",
    "point_sample",
    "postprocess",
    "register_model",
    "select_queries",
    "upsample_masks",
]


def checkpoint_filter_fn(state: dict, model) -> dict:
    """Adapt foreign weights to ``model``: unwrap ``model``/``state_dict``, strip ``module.``/``_orig_mod.``,
    and drop entries the model lacks or has with another shape (the rest keep their random init).

    Lets a promptable model start from a trained whole-image model's trunk, or any
    checkpoint of ours start another variant.
    """
    import torch

    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for pre in ("module.", "_orig_mod."):
            while k.startswith(pre):
                k = k[len(pre) :]
        if k in own and own[k].shape == v.shape:
            out[k] = v
    return out
