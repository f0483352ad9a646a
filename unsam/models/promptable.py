"""Promptable segmentation: one click -> several masks of different granularity (ALGORITHM.md §5).

The published model is Semantic-SAM (Swin-T, 6 masks per click). Ours keeps
its interface on the shared ViT trunk with a SAM-style head: the click is
encoded with random Fourier features plus a learned label embedding; an IoU
token, ``num_outputs`` mask tokens and the click token go through a small
two-way transformer with the stride-p image map; each mask token becomes, by
a hypernetwork MLP, the weights of a dot product with upscaled image features
(stride p / 2), and the IoU token predicts each mask's IoU.

Training (``unsam.models.losses.PromptCriterion``) matches the outputs of a
click to the pseudo-masks of the hierarchy that contain the click.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unsam.models._registry import register_model
from unsam.models.backbone import MLP, PixelDecoder, ViTBackbone, group_norm

__all__ = ["PromptSegmenter", "RandomFourierEmbedding", "TwoWayTransformer"]


class RandomFourierEmbedding(nn.Module):
    """SAM's position encoding: ``[sin, cos](2π · coords @ G)`` with a fixed Gaussian ``G`` (a buffer, saved).

    Coordinates are (x, y) normalised to [0, 1]; output ``[..., 2 * num_feats]``.
    """

    def __init__(self, num_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        # Seeded so that every rank (and every rebuild) has the same matrix before loading.
        g = torch.Generator().manual_seed(0)
        self.register_buffer("gaussian", scale * torch.randn(2, num_feats, generator=g))

    def forward(self, coords: Tensor) -> Tensor:
        # Always float32: under bf16 autocast the matmul would round positions to ~1/256.
        with torch.autocast(device_type=coords.device.type, enabled=False):
            x = 2 * math.pi * ((2 * coords.float() - 1) @ self.gaussian.float())
            return torch.cat([x.sin(), x.cos()], -1)

    def grid(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return self(torch.stack([xx, yy], -1)).reshape(h * w, -1)  # [hw, C]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.attn(q, k, v, need_weights=False)[0]


class _TwoWayBlock(nn.Module):
    """SAM's block: token self-attention, token->image, token MLP, image->token (post-norm)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.self_attn, self.norm1 = _Attention(dim, heads), nn.LayerNorm(dim)
        self.t2i, self.norm2 = _Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp, self.norm3 = MLP(dim, mlp_dim, dim, 2), nn.LayerNorm(dim)
        self.i2t, self.norm4 = _Attention(dim, heads), nn.LayerNorm(dim)
        self.skip_first_pe = skip_first_pe

    def forward(self, tokens: Tensor, image: Tensor, token_pe: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_pe:
            tokens = self.norm1(self.self_attn(tokens, tokens, tokens))
        else:
            q = tokens + token_pe
            tokens = self.norm1(tokens + self.self_attn(q, q, tokens))
        q, k = tokens + token_pe, image + image_pe
        tokens = self.norm2(tokens + self.t2i(q, k, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        q, k = tokens + token_pe, image + image_pe
        image = self.norm4(image + self.i2t(k, q, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks and a final token->image attention (SAM's mask decoder transformer)."""

    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_TwoWayBlock(dim, heads, mlp_dim, skip_first_pe=i == 0) for i in range(depth))
        self.final, self.norm = _Attention(dim, heads), nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, image: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        token_pe = tokens
        for blk in self.blocks:
            tokens, image = blk(tokens, image, token_pe, image_pe)
        tokens = self.norm(tokens + self.final(tokens + token_pe, image + image_pe, image))
        return tokens, image


class PromptSegmenter(nn.Module):
    """Click -> ``num_outputs`` masks with predicted IoUs.

    Args:
        backbone, pretrained, checkpoint, out_indices, grad_checkpointing: the ViT trunk
            (see :class:`unsam.models.backbone.ViTBackbone`).
        dim: width of the prompt decoder and of the image map.
        num_outputs: masks per click (Semantic-SAM: 6 granularities).
        depth: two-way transformer blocks.
        num_heads: attention heads.
        mlp_dim: MLP width in the transformer.

    ``forward(images, points, labels=None)``: images ``Tensor[B, 3, H, W]`` in [0, 1];
    points ``Tensor[B, P, 2]`` (x, y) in input pixels; labels ``Tensor[B, P]`` (1 =
    positive click, 0 = negative; default all 1). Each click is its own prompt.
    Returns ``{"pred_masks": Tensor[B, P, M, H / s, W / s], "pred_iou": Tensor[B, P, M]}``,
    ``s = mask_stride`` (p / 2).
    """

    task = "prompt"

    def __init__(
        self,
        backbone: str = "vit_tiny_test",
        pretrained: bool = True,
        checkpoint: str | None = None,
        out_indices: tuple[int, ...] | list[int] | None = None,
        dim: int = 256,
        num_outputs: int = 6,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if num_outputs < 1 or depth < 1 or dim < 8:
            raise ValueError(f"PromptSegmenter: need num_outputs >= 1, depth >= 1, dim >= 8; got {num_outputs}, {depth}, {dim}")
        if dim % num_heads or dim % 8:
            raise ValueError(f"PromptSegmenter: dim ({dim}) should be divisible by num_heads ({num_heads}) and by 8")
        self.backbone = ViTBackbone(backbone, pretrained, checkpoint, out_indices, grad_checkpointing)
        self.patch_size = self.backbone.patch_size
        self.mask_stride = max(1, self.patch_size // 2)
        self.num_outputs = int(num_outputs)
        up_dim = dim // 4
        self.pixel_decoder = PixelDecoder(self.backbone.embed_dim, len(self.backbone.out_indices), dim, up_dim)
        self.pe = RandomFourierEmbedding(dim // 2)
        self.point_embed = nn.Embedding(2, dim)  # negative, positive click
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_outputs, dim)
        self.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim)
        self.upscale = nn.Sequential(nn.ConvTranspose2d(dim, up_dim, 2, 2), group_norm(up_dim), nn.GELU())
        self.hyper = nn.ModuleList(MLP(dim, dim, up_dim, 3) for _ in range(self.num_outputs))
        self.iou_head = MLP(dim, dim, self.num_outputs, 3)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {"point_embed.weight", "iou_token.weight", "mask_tokens.weight"}

    def forward_features(self, images: Tensor) -> dict:
        """Image map (stride p) and high-resolution skip features (stride p / 2), computed once per image."""
        memory, skip = self.pixel_decoder(self.backbone(images))
        return {"image": memory[-1], "skip": skip, "input_size": tuple(images.shape[-2:])}

    def forward_head(self, feats: dict, points: Tensor, labels: Tensor | None = None) -> dict:
        image, skip = feats["image"], feats["skip"]
        b, c, h, w = image.shape
        if points.dim() != 3 or points.shape[0] != b or points.shape[-1] != 2:
            raise ValueError(f"points should be [B={b}, P, 2] (x, y pixels), got shape {tuple(points.shape)}")
        n_pts = points.shape[1]
        if labels is None:
            labels = torch.ones(b, n_pts, dtype=torch.long, device=points.device)
        hin, win = feats["input_size"]
        norm = points.new_tensor([win, hin])
        pt = self.pe(points.float() / norm.float()).to(image.dtype) + self.point_embed(labels.long().clamp(0, 1)).to(image.dtype)
        pt = pt.reshape(b * n_pts, 1, c)
        static = torch.cat([self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat([static[None].expand(b * n_pts, -1, -1).to(pt.dtype), pt], 1)
        # One copy of the image map per click (SAM does the same): the clicks are independent prompts.
        src = image.flatten(2).transpose(1, 2).repeat_interleave(n_pts, 0)
        pos = self.pe.grid(h, w, image.device, torch.float32).to(image.dtype)[None]
        tokens, src = self.transformer(tokens, src, pos)
        src = src.transpose(1, 2).reshape(b * n_pts, c, h, w)
        up = self.upscale(src)
        up = up + F.interpolate(skip, size=up.shape[-2:], mode="bilinear", align_corners=False).repeat_interleave(n_pts, 0)
        mt = tokens[:, 1 : 1 + self.num_outputs]
        hyper = torch.stack([mlp(mt[:, i]) for i, mlp in enumerate(self.hyper)], 1)  # [N, M, up_dim]
        masks = torch.einsum("nmc,nchw->nmhw", hyper, up)
        iou = self.iou_head(tokens[:, 0]).sigmoid()
        hs, ws = masks.shape[-2:]
        return {
            "pred_masks": masks.reshape(b, n_pts, self.num_outputs, hs, ws),
            "pred_iou": iou.reshape(b, n_pts, self.num_outputs),
        }

    def forward(self, images: Tensor, points: Tensor, labels: Tensor | None = None) -> dict:
        return self.forward_head(self.forward_features(images), points, labels)


# ------------------------------------------------------------------------------ registry


def _prompt(defaults: dict, kwargs: dict) -> PromptSegmenter:
    return PromptSegmenter(**{**defaults, **kwargs})


@register_model
def unsam_prompt_tiny(**kwargs) -> PromptSegmenter:
    """Tiny random model for tests (vit_tiny_test, dim 64, 6 outputs)."""
    return _prompt({"backbone": "vit_tiny_test", "pretrained": False, "dim": 64, "num_outputs": 6, "depth": 2, "num_heads": 4, "mlp_dim": 128}, kwargs)


@register_model
def unsam_prompt_vits8(**kwargs) -> PromptSegmenter:
    """DINO ViT-S/8 trunk, 6 outputs."""
    return _prompt({"backbone": "dino_vits8", "dim": 256, "num_outputs": 6, "depth": 2, "num_heads": 8, "mlp_dim": 2048}, kwargs)


@register_model
def unsam_prompt_vitb8(**kwargs) -> PromptSegmenter:
    """DINO ViT-B/8 trunk (the labeler's backbone), 6 outputs."""
    return _prompt({"backbone": "dino_vitb8", "dim": 256, "num_outputs": 6, "depth": 2, "num_heads": 8, "mlp_dim": 2048}, kwargs)
