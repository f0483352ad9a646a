"""Stage 1 — patch features: images -> one C-dim vector per p x p patch.

Two families behind one interface, :class:`PatchFeatures`:

- **DINO / DINOv2 ViTs** (timm): the feature of a patch is its **key** vector in
  the last transformer block (output of ``blocks[-1].attn.qkv``, all heads
  concatenated, prefix tokens dropped), as in MaskCut and UnSAM
  (ALGORITHM.md §1). Any input size: position embeddings are interpolated
  (timm ``dynamic_img_size=True``).
- **classic**: a weight-free, fast extractor (Lab colour statistics, a small
  derivative-of-Gaussian filter bank, position), so the whole pipeline runs
  and can be measured offline.

Every extractor takes ``images: Tensor[B, 3, H, W]`` float RGB in [0, 1] (H, W
multiples of the patch size) and returns ``Tensor[B, H // p, W // p, C]``
float32. :func:`build_extractor` makes one by name (registry
:data:`BACKBONES`), :func:`extract` resizes and batches raw uint8 images.

Modules: :mod:`~unsam.label.features.registry` (the backbones), ``base``, ``vit``,
``classic``, ``weights`` (pretrained and local weights); this module builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unsam.label.features.base import PatchFeatures
from unsam.label.features.classic import ClassicFeatures, rgb_to_lab
from unsam.label.features.registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
)
from unsam.label.features.vit import ViTKeyFeatures
from unsam.label.features.weights import (
    create_timm,
    create_tiny_vit,
    load_checkpoint_state,
    load_into,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "ClassicFeatures",
    "PatchFeatures",
    "ViTKeyFeatures",
    "build_extractor",
    "extract",
    "load_checkpoint_state",
    "rgb_to_lab",
]


def build_extractor(
    name: str = DEFAULT_BACKBONE,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    pretrained: bool = True,
) -> PatchFeatures:
    """Make a feature extractor by registry name.

    Args:
        name: a key of :data:`BACKBONES`.
        checkpoint: local weights file (raw or wrapped state_dict, original DINO /
            DINOv2 or timm key names). Takes precedence over ``pretrained``.
        device: where the extractor runs.
        pretrained: download timm's pretrained weights (cached); False gives random
            weights (speed tests). ``vit_tiny_test`` never downloads: its weights are
            seeded random unless a checkpoint is given.

    Returns:
        PatchFeatures in eval mode, without gradients.

    Raises:
        ValueError: unknown name, or a checkpoint that does not fit the architecture.
        RuntimeError: pretrained weights cannot be had (names ``--checkpoint FILE`` and
            ``--backbone classic``).
    """
    spec = BACKBONES.get(name)
    if spec is None:
        raise ValueError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")
    if spec.family == "classic":
        if checkpoint is not None:
            raise ValueError("backbone 'classic' is weight-free; it takes no checkpoint")
        ext: PatchFeatures = ClassicFeatures(patch_size=spec.patch_size)
    else:
        if spec.family == "test":
            model = create_tiny_vit()
        else:
            model = create_timm(spec, pretrained=pretrained and checkpoint is None)
        if checkpoint is not None:
            load_into(model, checkpoint, spec)
        ext = ViTKeyFeatures(model, name)
        if (ext.patch_size, ext.dim) != (spec.patch_size, spec.dim):  # registry and timm disagree
            raise RuntimeError(
                f"{name}: the registry says patch {spec.patch_size}, dim {spec.dim}; "
                f"the model has patch {ext.patch_size}, dim {ext.dim}"
            )
    return ext.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------ convenience


def _to_chw_float(img, device: torch.device) -> Tensor:
    if isinstance(img, np.ndarray) and not img.flags.writeable:
        img = img.copy()  # e.g. np.asarray(PIL image): torch warns on read-only arrays
    t = torch.as_tensor(img)
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"each image should be H x W x 3 (RGB), got shape {tuple(t.shape)}")
    t = t.to(device).permute(2, 0, 1)
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.is_floating_point():
        return t.float()
    raise ValueError(f"images should be uint8 (or float in [0, 1]), got {t.dtype}")


def extract(
    images: Sequence | Tensor,
    extractor: PatchFeatures,
    size: tuple[int, int] | None = (480, 480),
    batch_size: int = 16,
) -> Tensor:
    """Resize images to one size, batch them through ``extractor``.

    Args:
        images: a list of ``H x W x 3`` uint8 RGB arrays/tensors (sizes may differ),
            or a Tensor[B, 3, H, W] (float in [0, 1] or uint8).
        extractor: from :func:`build_extractor`.
        size: (H, W) to resize to (bilinear, antialiased; multiples of the patch
            size), or None to keep the input size (all images alike).
        batch_size: images per extractor call.

    Returns:
        Tensor[B, H // p, W // p, C] float32 on the extractor's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size should be >= 1, got {batch_size}")
    dev = extractor.device
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"an image tensor should be [B, 3, H, W], got shape {tuple(images.shape)}")
        n = images.shape[0]

        def get(i):
            t = images[i].to(dev)
            return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()

    else:
        n = len(images)

        def get(i):
            return _to_chw_float(images[i], dev)

    if size is not None:
        size = (int(size[0]), int(size[1]))
        p = extractor.patch_size
        if size[0] < p or size[1] < p or size[0] % p or size[1] % p:
            raise ValueError(f"size should be positive multiples of the patch size {p}, got {size}")
    if n == 0:
        if size is None:
            raise ValueError("no images and no size: cannot tell the output grid")
        return torch.zeros(0, *extractor.grid(*size), extractor.dim, device=dev)
    out = []
    for start in range(0, n, batch_size):
        batch = []
        for i in range(start, min(n, start + batch_size)):
            t = get(i)
            if size is not None and tuple(t.shape[-2:]) != size:
                t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            batch.append(t)
        out.append(extractor(torch.stack(batch).clamp_(0.0, 1.0)))
    return torch.cat(out)
