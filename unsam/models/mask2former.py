"""Whole-image segmentation: a Mask2Former-style query decoder on a ViT (ALGORITHM.md §5).

Learned queries attend, layer by layer, to the pixel decoder's maps at strides
4p, 2p and p in turn (masked cross-attention: a query sees only where its
previous mask prediction is above 0.5), then to each other, then an FFN. After
the initial queries and after every layer the heads predict an objectness
logit pair ``[object, no-object]`` and a mask (mask embedding · mask features at
stride p / 2). All predictions but the last are returned as ``aux_outputs``
for deep supervision. One class: pseudo-masks are class-agnostic.

Inference (:func:`postprocess`): top-K queries by score = P(object) × the mean
mask probability inside the predicted mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unsam.models._registry import register_model
from unsam.models.backbone import MLP, PixelDecoder, ViTBackbone, sine_pos_embed

__all__ = ["MaskFormer", "postprocess", "select_queries", "upsample_masks"]


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor, attn_mask: Tensor | None) -> Tensor:
        out = self.attn(tgt + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        return self.norm(tgt + out)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.attn(q, q, tgt, need_weights=False)[0])


class _FFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.l2(F.relu(self.l1(x))))


class MaskFormer(nn.Module):
    """Query-based class-agnostic mask predictor.

    Args:
        backbone: ViT name from ``unsam.label.features.BACKBONES``.
        pretrained: load the backbone's pretrained (DINO) weights.
        checkpoint: local backbone weights (instead of ``pretrained``).
        out_indices: ViT blocks fed to the pixel decoder (default 4 evenly spaced).
        dim: decoder width.
        mask_dim: channels of mask features and mask embeddings.
        num_queries: learned queries = masks predicted per image.
        dec_layers: decoder layers (each: cross-attention, self-attention, FFN).
        num_heads: attention heads.
        ffn_dim: FFN hidden width.
        masked_attn: Mask2Former's masked cross-attention (False: plain cross-attention).
        grad_checkpointing: recompute ViT blocks in the backward pass.

    ``forward(images: Tensor[B, 3, H, W] in [0, 1])`` returns ``{"pred_logits":
    Tensor[B, Q, 2], "pred_masks": Tensor[B, Q, H / s, W / s], "aux_outputs": [...]}``
    with ``s = mask_stride`` (p / 2); H and W multiples of the patch size.
    """

    task = "whole"

    def __init__(
        self,
        backbone: str = "vit_tiny_test",
        pretrained: bool = True,
        checkpoint: str | None = None,
        out_indices: tuple[int, ...] | list[int] | None = None,
        dim: int = 256,
        mask_dim: int = 256,
        num_queries: int = 100,
        dec_layers: int = 9,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        masked_attn: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("num_queries", num_queries), ("dec_layers", dec_layers), ("num_heads", num_heads)):
            if int(v) < 1:
                raise ValueError(f"MaskFormer: {name} should be >= 1, got {v}")
        if dim % num_heads:
            raise ValueError(f"MaskFormer: dim ({dim}) should be divisible by num_heads ({num_heads})")
        self.backbone = ViTBackbone(backbone, pretrained, checkpoint, out_indices, grad_checkpointing)
        self.patch_size = self.backbone.patch_size
        self.mask_stride = max(1, self.patch_size // 2)
        self.pixel_decoder = PixelDecoder(self.backbone.embed_dim, len(self.backbone.out_indices), dim, mask_dim)
        self.num_levels = self.pixel_decoder.num_levels
        self.num_queries, self.num_heads, self.masked_attn = int(num_queries), int(num_heads), bool(masked_attn)
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(self.num_levels, dim)
        self.cross = nn.ModuleList(_CrossAttention(dim, num_heads) for _ in range(dec_layers))
        self.self_attn = nn.ModuleList(_SelfAttention(dim, num_heads) for _ in range(dec_layers))
        self.ffn = nn.ModuleList(_FFN(dim, ffn_dim) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, 2)  # [object, no-object]
        self.mask_embed = MLP(dim, dim, mask_dim, 3)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {"query_feat.weight", "query_embed.weight", "level_embed.weight"}

    def forward_features(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Backbone + pixel decoder: ``{"memory": [3 x Tensor[B, dim, h_l, w_l]], "mask_features": Tensor[B, mask_dim, H/s, W/s]}``."""
        memory, mask_features = self.pixel_decoder(self.backbone(images))
        return {"memory": memory, "mask_features": mask_features}

    def _predict(self, q: Tensor, mask_features: Tensor, attn_size: tuple[int, int] | None):
        q = self.decoder_norm(q)
        logits = self.class_embed(q)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        attn_mask = None
        if attn_size is not None and self.masked_attn:
            with torch.no_grad():
                m = F.interpolate(masks.detach().float(), size=attn_size, mode="bilinear", align_corners=False)
                # True = not allowed. A query whose mask is empty everywhere attends everywhere
                # (Mask2Former's rule; an all-True row would give NaN).
                blocked = m.flatten(2) < 0.0  # sigmoid < 0.5
                blocked &= ~blocked.all(-1, keepdim=True)
                attn_mask = blocked.repeat_interleave(self.num_heads, 0)
        return logits, masks, attn_mask

    def forward_head(self, feats: dict) -> dict:
        memory, mask_features = feats["memory"], feats["mask_features"]
        b = mask_features.shape[0]
        srcs, poss, sizes = [], [], []
        for lvl, m in enumerate(memory):
            h, w = m.shape[-2:]
            sizes.append((h, w))
            srcs.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[lvl])
            poss.append(sine_pos_embed(h, w, m.shape[1], m.device, m.dtype)[None])
        q = self.query_feat.weight[None].expand(b, -1, -1)
        qpos = self.query_embed.weight[None].expand(b, -1, -1)
        preds = []
        logits, masks, attn_mask = self._predict(q, mask_features, sizes[0])
        preds.append((logits, masks))
        for i in range(len(self.cross)):
            lvl = i % self.num_levels
            q = self.cross[i](q, srcs[lvl], qpos, poss[lvl], attn_mask)
            q = self.ffn[i](self.self_attn[i](q, qpos))
            logits, masks, attn_mask = self._predict(q, mask_features, sizes[(i + 1) % self.num_levels])
            preds.append((logits, masks))
        return {
            "pred_logits": preds[-1][0],
            "pred_masks": preds[-1][1],
            "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in preds[:-1]],
        }

    def forward(self, images: Tensor) -> dict:
        return self.forward_head(self.forward_features(images))


@torch.no_grad()
def select_queries(
    pred_logits: Tensor,
    pred_masks: Tensor,
    valid_size: tuple[int, int],
    stride: int,
    topk: int = 1000,
    min_score: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Pick the best queries of one image.

    Args:
        pred_logits (Tensor[Q, 2]): objectness logits ``[object, no-object]``.
        pred_masks (Tensor[Q, h, w]): mask logits on the (padded) input at stride ``stride``.
        valid_size: (H, W) of the image inside the padded input, in input pixels.
        stride: input pixels per mask cell.
        topk: keep at most this many.
        min_score: drop queries scoring below this.

    Returns:
        indices ``long[K]`` and scores ``float[K]``, best first. Score = P(object) ×
        mean mask probability inside the predicted mask (computed on the mask grid,
        padding excluded); queries with an empty mask are dropped.
    """
    gh = min(pred_masks.shape[1], -(-valid_size[0] // stride))
    gw = min(pred_masks.shape[2], -(-valid_size[1] // stride))
    logit = pred_masks[:, :gh, :gw].float()
    fg = logit > 0
    n_fg = fg.flatten(1).sum(1)
    mask_score = (logit.sigmoid() * fg).flatten(1).sum(1) / n_fg.clamp_min(1)
    score = pred_logits.float().softmax(-1)[:, 0] * mask_score
    score = torch.where(n_fg > 0, score, torch.full_like(score, -1.0))
    order = score.argsort(descending=True, stable=True)[: max(0, int(topk))]
    order = order[score[order] >= max(float(min_score), 0.0)]
    return order, score[order]


@torch.no_grad()
def upsample_masks(
    mask_logits: Tensor, valid_size: tuple[int, int], stride: int, out_size: tuple[int, int], chunk: int = 64
):
    """Yield ``bool[k, H0, W0]`` chunks of full-size masks from ``Tensor[K, h, w]`` logits.

    The logits are upsampled to the padded input (``h * stride``), the padding is
    cut, and the rest resized to ``out_size`` (bilinear, threshold 0). Chunks keep
    the float memory at ``chunk`` masks whatever K and the image size.
    """
    vh, vw = valid_size
    for i in range(0, mask_logits.shape[0], chunk):
        m = mask_logits[i : i + chunk].float()[None]
        m = F.interpolate(m, size=(m.shape[-2] * stride, m.shape[-1] * stride), mode="bilinear", align_corners=False)
        m = F.interpolate(m[..., :vh, :vw], size=tuple(out_size), mode="bilinear", align_corners=False)
        yield m[0] > 0


@torch.no_grad()
def postprocess(
    pred_logits: Tensor,
    pred_masks: Tensor,
    valid_size: tuple[int, int],
    out_size: tuple[int, int],
    stride: int,
    topk: int = 1000,
    min_score: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Masks ``bool[K, H0, W0]`` and scores ``float[K]`` of one image, best first (see :func:`select_queries`)."""
    idx, scores = select_queries(pred_logits, pred_masks, valid_size, stride, topk, min_score)
    if idx.numel() == 0:
        return torch.zeros(0, *out_size, dtype=torch.bool, device=pred_masks.device), scores
    masks = torch.cat(list(upsample_masks(pred_masks[idx], valid_size, stride, out_size)))
    keep = masks.flatten(1).any(1)
    return masks[keep], scores[keep]


# ------------------------------------------------------------------------------ registry


def _whole(defaults: dict, kwargs: dict) -> MaskFormer:
    return MaskFormer(**{**defaults, **kwargs})


@register_model
def unsam_whole_tiny(**kwargs) -> MaskFormer:
    """Tiny random model for tests (vit_tiny_test, 20 queries, 3 layers)."""
    return _whole(
        {"backbone": "vit_tiny_test", "pretrained": False, "dim": 64, "mask_dim": 64, "num_queries": 20, "dec_layers": 3, "num_heads": 4, "ffn_dim": 128},
        kwargs,
    )


@register_model
def unsam_whole_vits8(**kwargs) -> MaskFormer:
    """DINO ViT-S/8, 300 queries, 6 layers."""
    return _whole({"backbone": "dino_vits8", "dim": 256, "mask_dim": 256, "num_queries": 300, "dec_layers": 6, "num_heads": 8, "ffn_dim": 1024}, kwargs)


@register_model
def unsam_whole_vitb8(**kwargs) -> MaskFormer:
    """DINO ViT-B/8 (the labeler's backbone), 1000 queries, 9 layers (published: 2000 queries on ResNet-50)."""
    return _whole({"backbone": "dino_vitb8", "dim": 256, "mask_dim": 256, "num_queries": 1000, "dec_layers": 9, "num_heads": 8, "ffn_dim": 2048}, kwargs)
