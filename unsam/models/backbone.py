"""Shared trunk of the trainable models: a timm ViT (``unsam.label.features.BACKBONES``) and a light pixel decoder.

The ViT is created and loaded exactly as the labeler's feature extractor does
(``unsam.label.features``: timm DINO / DINOv2 weights when available, a local
``checkpoint`` otherwise, the seeded tiny ``vit_tiny_test`` for tests), but it
is trained here, and we take whole token maps of several blocks instead of the
last block's keys.

The pixel decoder is a ViTDet-style simple feature pyramid with a top-down
FPN pass: from the stride-``p`` tokens it makes maps at strides ``4p, 2p, p``
(memory for the query decoder, coarse to fine, as Mask2Former's 1/32, 1/16,
1/8 for ``p = 8``) and mask features at stride ``p / 2``. We use it in place of
Mask2Former's multi-scale deformable attention encoder: it is plain PyTorch
(no custom CUDA op to build) and cheap next to the ViT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

__all__ = ["MLP", "PixelDecoder", "ViTBackbone", "group_norm", "sine_pos_embed"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 2 channels.

    GroupNorm rather than BatchNorm: a sample's output must not depend on the
    other samples of its batch, or two DDP ranks would not reproduce one process.
    """
    groups = max(1, min(32, channels // 2))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between (Mask2Former / SAM heads)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_pos_embed(height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised 2-D sine position embedding (DETR / Mask2Former), ``Tensor[height * width, dim]``."""
    half = dim // 2
    scale = 2 * math.pi
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * scale
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * scale
    t = torch.arange(half, device=device, dtype=torch.float32)
    t = 10000.0 ** (2 * torch.div(t, 2, rounding_mode="floor") / half)
    py, px = y[:, None] / t, x[:, None] / t  # [h, half], [w, half]
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), 2).flatten(1)
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), 2).flatten(1)
    pos = torch.cat([py[:, None, :].expand(height, width, half), px[None, :, :].expand(height, width, half)], 2)
    if pos.shape[-1] < dim:  # odd dim
        pos = F.pad(pos, (0, dim - pos.shape[-1]))
    return pos.reshape(height * width, dim).to(dtype)


def _default_out_indices(depth: int, n: int = 4) -> tuple[int, ...]:
    k = min(n, depth)
    return tuple(sorted({round((i + 1) * depth / k) - 1 for i in range(k)}))


class ViTBackbone(nn.Module):
    """A registered timm ViT returning token maps of several blocks.

    Args:
        name: a ViT key of ``unsam.label.features.BACKBONES`` (``dino_vitb8``, ``vit_tiny_test``, ...).
        pretrained: load timm's pretrained (DINO) weights, from the cache or the hub.
        checkpoint: local weights file (takes precedence over ``pretrained``).
        out_indices: blocks whose outputs are returned (default: 4 evenly spaced, the last included).
        grad_checkpointing: recompute each block in the backward pass (activation memory ~1/depth).

    Input ``Tensor[B, 3, H, W]`` float RGB in [0, 1], H and W multiples of ``patch_size``;
    output a list of ``Tensor[B, embed_dim, H / p, W / p]``, one per out index.
    """

    def __init__(
        self,
        name: str = "vit_tiny_test",
        pretrained: bool = True,
        checkpoint: str | None = None,
        out_indices: tuple[int, ...] | list[int] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        from unsam.label.features.registry import BACKBONES, IMAGENET_MEAN, IMAGENET_STD
        from unsam.label.features.weights import create_timm, create_tiny_vit, load_into

        spec = BACKBONES.get(name)
        if spec is None:
            vits = [k for k, s in BACKBONES.items() if s.family != "classic"]
            raise ValueError(f"unknown backbone '{name}'; trainable backbones: {', '.join(vits)}")
        if spec.family == "classic":
            raise ValueError("backbone 'classic' is a fixed filter bank with nothing to train; choose a ViT (e.g. dino_vitb8)")
        vit = create_tiny_vit() if spec.family == "test" else create_timm(spec, pretrained=pretrained and checkpoint is None)
        if checkpoint is not None:
            load_into(vit, checkpoint, spec)
        # The final norm and the head are never used: drop them, or DDP would wait for
        # their gradients forever.
        vit.norm = nn.Identity()
        vit.head = nn.Identity()
        self.vit = vit
        self.name = name
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
        depth = len(vit.blocks)
        idx = tuple(int(i) for i in (out_indices if out_indices is not None else _default_out_indices(depth)))
        if not idx or any(i < 0 or i >= depth for i in idx):
            raise ValueError(f"out_indices should name blocks 0..{depth - 1} of '{name}', got {list(idx)}")
        self.out_indices = tuple(sorted(set(idx)))
        # Blocks after the last returned one would get no gradient (DDP error): cut them.
        del vit.blocks[self.out_indices[-1] + 1 :]
        self.grad_checkpointing = bool(grad_checkpointing)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def forward(self, images: Tensor) -> list[Tensor]:
        b, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image height and width should be multiples of the patch size {p}, got {height}x{width}")
        h, w = height // p, width // p
        m = self.vit
        x = (images - self.mean) / self.std
        t = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        npt = m.num_prefix_tokens
        outs = []
        for i, blk in enumerate(m.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                t = torch.utils.checkpoint.checkpoint(blk, t, use_reentrant=False)
            else:
                t = blk(t)
            if i in self.out_indices:
                outs.append(t[:, npt:].transpose(1, 2).reshape(b, self.embed_dim, h, w))
        return outs


def _conv_gn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), group_norm(cout), nn.GELU())


class PixelDecoder(nn.Module):
    """ViT token maps (stride p) -> memory maps at strides 4p, 2p, p and mask features at p / 2.

    Args:
        in_dim: channels of each input map.
        num_inputs: how many maps (ViT blocks) come in; they are concatenated and fused.
        dim: channels of the memory maps.
        mask_dim: channels of the mask features.
    """

    def __init__(self, in_dim: int, num_inputs: int, dim: int = 256, mask_dim: int = 256) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(in_dim * num_inputs, dim, 1, bias=False), group_norm(dim))
        self.down2 = _conv_gn(dim, dim, 3, 2)
        self.down4 = _conv_gn(dim, dim, 3, 2)
        self.out = nn.ModuleList(_conv_gn(dim, dim) for _ in range(3))
        self.up = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2, bias=False), group_norm(dim), nn.GELU())
        self.mask_proj = nn.Conv2d(dim, mask_dim, 1)
        self.num_levels = 3

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        x1 = self.fuse(torch.cat(feats, 1))
        x2 = self.down2(x1)
        x4 = self.down4(x2)
        o4 = self.out[0](x4)
        o2 = self.out[1](x2 + F.interpolate(o4, size=x2.shape[-2:], mode="bilinear", align_corners=False))
        o1 = self.out[2](x1 + F.interpolate(o2, size=x1.shape[-2:], mode="bilinear", align_corners=False))
        mask_features = self.mask_proj(self.up(o1))
        return [o4, o2, o1], mask_features
