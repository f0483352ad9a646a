"""The backbones by name (:data:`BACKBONES`), with their patch size, feature size and default thresholds."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "IMAGENET_MEAN", "IMAGENET_STD", "BackboneSpec"]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# UnSAM's published thresholds, tuned for DINO ViT-B/8 keys (ALGORITHM.md §2-3).
_DINO_TAU = 0.15
_DINO_MERGE = (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone and its default thresholds.

    Args:
        name: registry key (``--backbone NAME``).
        timm_name: timm model name with pretrained tag, or None (not from timm).
        family: ``"dino"``, ``"dinov2"``, ``"test"`` (tiny random ViT) or ``"classic"``.
        patch_size: p; features come on the (H // p, W // p) grid.
        dim: C, the feature dimension.
        tau: MaskCut affinity threshold on the cosine of features (divide).
        merge_thresholds: UnSAM merging ladder on the cosine of summed features
            (conquer), coarsening, in order.
        atom_w_feat: weight of the feature cosine when atoms merge (``AtomConfig.w_feat``).
    """

    name: str
    timm_name: str | None
    family: str
    patch_size: int
    dim: int
    tau: float = _DINO_TAU
    merge_thresholds: tuple[float, ...] = _DINO_MERGE
    # DINO keys carry the semantics that colour lacks, so they take part in atom
    # merging (not measured here: no weights offline). The 18 classic features are
    # colour and texture again: on the first 20 COCO-mini images (the tuning half) adding them at weight 1
    # lowered atom AR@1000 from 0.188 to 0.169, so classic leaves them out.
    atom_w_feat: float = 1.0


def _spec(*args, **kwargs) -> tuple[str, BackboneSpec]:
    s = BackboneSpec(*args, **kwargs)
    return s.name, s


DEFAULT_BACKBONE = "dino_vitb8"

BACKBONES: dict[str, BackboneSpec] = dict(
    [
        _spec("dino_vitb8", "vit_base_patch8_224.dino", "dino", 8, 768),
        _spec("dino_vits8", "vit_small_patch8_224.dino", "dino", 8, 384),
        _spec("dino_vits16", "vit_small_patch16_224.dino", "dino", 16, 384),
        _spec("dino_vitb16", "vit_base_patch16_224.dino", "dino", 16, 768),
        # DINOv2 thresholds are DINO's until tuned: its keys are distributed differently.
        _spec("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", "dinov2", 14, 384),
        _spec("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", "dinov2", 14, 768),
        # Classic features are centred per image: on 60 BSDS500 train images at
        # 480 x 480 the cosine of two random patches has median 0.0 (quartiles
        # -0.52 / 0.59) and that of 4-neighbours median 0.92 (quartiles 0.72 / 0.99).
        # So tau sits a little above 0 (0.1 / 0.2 / 0.3 measured alike), and the merge
        # ladder starts higher than DINO's and has 8 levels: on BSDS500 train (mask
        # AR against the human segments) the 8-level ladder beat (0.8, ..., 0.3).
        _spec(
            "classic",
            None,
            "classic",
            8,
            18,
            tau=0.2,
            merge_thresholds=(0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2),
            atom_w_feat=0.0,
        ),
        # Tiny random ViT for tests: never downloads anything.
        _spec("vit_tiny_test", None, "test", 8, 48),
    ]
)
