"""DINO / DINOv2 ViT features: the key vectors of the last block (ALGORITHM.md §1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ViTKeyFeatures"]

from unsam.label.features.base import PatchFeatures
from unsam.label.features.registry import IMAGENET_MEAN, IMAGENET_STD


class ViTKeyFeatures(PatchFeatures):
    """Last-block key vectors of a timm ``VisionTransformer`` (DINO, DINOv2, tiny test ViT).

    Args:
        model: a timm VisionTransformer built with ``dynamic_img_size=True``.
        name: registry name.
        autocast: bf16 autocast for the transformer on CUDA (output is float32).
    """

    def __init__(self, model: nn.Module, name: str, autocast: bool = True) -> None:
        attn = getattr(model.blocks[-1], "attn", None)
        qkv = getattr(attn, "qkv", None)
        if not isinstance(qkv, nn.Linear):
            raise ValueError(f"{name}: the last block has no fused attn.qkv projection; cannot take key vectors")
        ps = tuple(model.patch_embed.patch_size)
        if ps[0] != ps[1]:
            raise ValueError(f"{name}: square patches expected, got {ps}")
        if not getattr(model, "dynamic_img_size", False):
            raise ValueError(f"{name}: the timm model must be built with dynamic_img_size=True")
        dim = qkv.out_features // 3
        super().__init__(name, ps[0], dim)
        self.model = model
        self.autocast = autocast
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def _features(self, x: Tensor) -> Tensor:
        b, _, height, width = x.shape
        h, w = self.grid(height, width)
        m = self.model
        # RGB order with ImageNet statistics (the published conquer code fed BGR).
        x = (x - self.mean) / self.std
        use_amp = self.autocast and x.is_cuda
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_amp):
            t = m.patch_embed(x)  # [B, h, w, D] with dynamic_img_size
            # timm's own step: prefix tokens (CLS, registers) and position embeddings
            # resampled to this grid, whichever way the model adds them.
            t = m._pos_embed(t)
            t = m.patch_drop(t)
            t = m.norm_pre(t)
            # The keys of the last block depend only on its norm1 + qkv; running its
            # attention and MLP (and the final norm) would cost ~1/depth of the forward
            # (8 % for ViT-B) for outputs we discard, and a forward hook cannot skip them.
            for blk in m.blocks[:-1]:
                t = blk(t)
            last = m.blocks[-1]
            qkv = last.attn.qkv(last.norm1(t))  # [B, T, 3C]: q | k | v, heads contiguous
        c = self.dim
        keys = qkv[:, m.num_prefix_tokens :, c : 2 * c]  # drop CLS and register tokens
        return keys.float().reshape(b, h, w, c).contiguous()
