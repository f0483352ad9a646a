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
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


# ----------------------------------------------------------------------------- base


class PatchFeatures(nn.Module):
    """Base of all extractors: checks the input, runs ``_features`` under inference mode.

    Attributes:
        name: registry name of the backbone.
        patch_size: p.
        dim: C.
    """

    def __init__(self, name: str, patch_size: int, dim: int) -> None:
        super().__init__()
        self.name = name
        self.patch_size = int(patch_size)
        self.dim = int(dim)
        # Tracks the module's device through .to()/.cuda() even for buffer-free subclasses.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an image of ``height x width`` pixels."""
        return height // self.patch_size, width // self.patch_size

    def forward(self, images: Tensor) -> Tensor:
        """Patch features.

        Args:
            images (Tensor[B, 3, H, W]): float RGB in [0, 1]; H and W positive
                multiples of ``patch_size``. Moved to the extractor's device.

        Returns:
            Tensor[B, H // p, W // p, dim]: float32, on the extractor's device.
        """
        if not isinstance(images, Tensor):
            raise ValueError(f"images should be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images should be a 4d tensor [B, 3, H, W] (RGB), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"images should be float RGB in [0, 1], got dtype {images.dtype} "
                "(use unsam.label.features.extract() for uint8 images)"
            )
        b, _, height, width = images.shape
        p = self.patch_size
        if height < p or width < p or height % p or width % p:
            raise ValueError(
                f"{self.name}: image height and width should be positive multiples of the patch size {p}, "
                f"got {height}x{width} (resize first, e.g. extract(..., size=...))"
            )
        with torch.inference_mode():
            x = images.to(device=self.device, dtype=torch.float32)
            if b == 0:
                return x.new_zeros(0, height // p, width // p, self.dim)
            return self._features(x)

    def _features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# ------------------------------------------------------------------------------ ViT


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


# -------------------------------------------------------------------------- classic

# sRGB (D65) linear RGB -> XYZ, rows divided by the D65 white point so that
# white maps to X/Xn = Y/Yn = Z/Zn = 1.
_RGB2XYZ = torch.tensor(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
) / torch.tensor([0.95047, 1.0, 1.08883]).view(3, 1)
_LAB_EPS = (6.0 / 29.0) ** 3
_LAB_SLOPE = 1.0 / (3.0 * (6.0 / 29.0) ** 2)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """CIE L*a*b* (D65) of sRGB images.

    Args:
        rgb (Tensor[B, 3, H, W]): float sRGB in [0, 1] (gamma-encoded).

    Returns:
        Tensor[B, 3, H, W]: L in [0, 100], a and b roughly in [-110, 110].
    """
    rgb = rgb.clamp(0.0, 1.0)
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).pow(2.4))
    xyz = torch.einsum("ij,bjhw->bihw", _RGB2XYZ.to(lin), lin)
    f = torch.where(xyz > _LAB_EPS, xyz.clamp_min(_LAB_EPS).pow(1.0 / 3.0), xyz * _LAB_SLOPE + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], 1)


def _sobel_bank(lum: Tensor, pool: int) -> Tensor:
    """Per-patch mean |response| of a 3x3 Sobel bank on a luminance image.

    Args:
        lum (Tensor[B, 1, H, W]): luminance; H, W multiples of ``pool``.
        pool: pixels per patch side at this scale.

    Returns:
        Tensor[B, 5, H // pool, W // pool]: first derivative at 0, 45, 90, 135
        degrees (steered from the x and y Sobel responses) and the Laplacian
        ([1, -2, 1] x [1, 2, 1] in both directions), in luminance per pixel.
    """
    # Separable 3-tap filters as shifted slices, in place where possible: on 2 CPU
    # cores this is several times faster than conv2d with 1-channel or grouped
    # kernels, and every avoided temporary saves page faults.
    b, _, height, width = lum.shape
    p = F.pad(lum, (1, 1, 1, 1), mode="replicate")
    left, mid, right = p[..., :-2], p[..., 1:-1], p[..., 2:]  # [B, 1, H + 2, W]
    lr = left + right
    sx = lr.add(mid, alpha=2.0)  # smooth along x: [1, 2, 1]
    ddx = lr.sub_(mid, alpha=2.0)  # d2/dx2: [1, -2, 1]
    dx = right - left  # d/dx: [-1, 0, 1]
    out = lum.new_empty(b, 5, height, width)
    gx, g45, gy, g135, lap = out.split(1, 1)
    torch.add(dx[..., :-2, :], dx[..., 2:, :], out=gx).add_(dx[..., 1:-1, :], alpha=2.0)
    torch.sub(sx[..., 2:, :], sx[..., :-2, :], out=gy)
    torch.add(gx, gy, out=g45)
    torch.sub(gx, gy, out=g135)
    torch.add(ddx[..., :-2, :], ddx[..., 2:, :], out=lap).add_(ddx[..., 1:-1, :], alpha=2.0)
    lap.add_(sx[..., 2:, :]).add_(sx[..., :-2, :]).sub_(sx[..., 1:-1, :], alpha=2.0)
    # Normalisation after pooling (linear, and |.| commutes with positive scales):
    # Sobel / 8 so that a ramp of slope 1 gives 1, diagonals / sqrt(2), Laplacian / 4.
    return F.avg_pool2d(out.abs_(), pool).mul_(_BANK_SCALE.to(out).view(1, 5, 1, 1))


_BANK_SCALE = torch.tensor([1 / 8, 1 / (8 * math.sqrt(2)), 1 / 8, 1 / (8 * math.sqrt(2)), 1 / 4])

# Rec. 601 luma of gamma-encoded RGB: like L*, roughly perceptually uniform, at the
# cost of one weighted sum instead of a per-pixel gamma and cube root.
_LUMA = (0.299, 0.587, 0.114)


class ClassicFeatures(PatchFeatures):
    """Weight-free patch features: colour, texture, position (pure torch, batched).

    Feature layout (``dim = 18``), per p x p patch. Each group is divided by a fixed
    scale (about its typical per-image standard deviation on BSDS500 train images,
    so that the weights read as relative importances) and multiplied by its weight:

    ====== ======= ===================================================================
    index  group   content
    ====== ======= ===================================================================
    0-2    colour  mean of L, a, b (CIE Lab D65 with the sRGB gamma; Lab / 100)
    3-5    colour  std of L, a, b within the patch
    6-9    texture mean |first derivative| at 0, 45, 90, 135 degrees, fine scale
                   (3x3 Sobel on the luma image)
    10-13  texture the same at the coarse scale (Sobel on the 2x2-averaged luma)
    14-15  texture mean |Laplacian|, fine and coarse scale
    16-17  position patch centre y, x in [-1, 1]
    ====== ======= ===================================================================

    Colour statistics are computed on the 2x2-averaged image (a quarter of the
    per-pixel gamma/cube-root work; the finest variation inside a patch is what the
    fine texture scale measures). Finally each image's features are **centred**
    (minus the mean over its patches): raw colour vectors all lie in one positive
    cone, where the cosine of any two patches is high; centred, the cosine says
    "more alike than the average patch of this image", which is what MaskCut's tau
    and UnSAM's merge ladder compare. A uniform image has all-zero features.

    Args:
        w_color, w_texture, w_position: group weights (also settable as attributes).
        patch_size: p (even).
        chunk_pixels: images are processed in chunks of about this many pixels:
            large temporaries cost more in page faults than in arithmetic here.
    """

    # Per-image std of each group's channels before weighting, measured on BSDS500
    # train (colour on Lab / 100, texture on luma in [0, 1]); position: std of a
    # uniform grid on [-1, 1].
    COLOR_SCALE = 0.1
    TEXTURE_SCALE = 0.025
    POSITION_SCALE = 0.58

    def __init__(
        self,
        w_color: float = 1.0,
        w_texture: float = 0.7,
        w_position: float = 0.4,
        patch_size: int = 8,
        chunk_pixels: int = 1 << 18,
    ) -> None:
        if patch_size < 2 or patch_size % 2:  # colour and the coarse scale work on the 2x2-averaged image
            raise ValueError(f"classic: patch_size should be even and >= 2, got {patch_size}")
        super().__init__("classic", patch_size, 18)
        self.w_color = float(w_color)
        self.w_texture = float(w_texture)
        self.w_position = float(w_position)
        self.chunk_pixels = int(chunk_pixels)

    @staticmethod
    def _luma(rgb: Tensor) -> Tensor:
        y = rgb[:, 0:1] * _LUMA[0]
        return y.add_(rgb[:, 1:2], alpha=_LUMA[1]).add_(rgb[:, 2:3], alpha=_LUMA[2]).clamp_(0.0, 1.0)

    def _features(self, x: Tensor) -> Tensor:
        b, _, height, width = x.shape
        per_chunk = max(1, self.chunk_pixels // (height * width))
        if x.is_cuda or b <= per_chunk:
            return self._chunk(x)
        return torch.cat([self._chunk(c) for c in x.split(per_chunk)])

    def _chunk(self, x: Tensor) -> Tensor:
        b, _, height, width = x.shape
        p = self.patch_size
        h, w = self.grid(height, width)
        half = F.avg_pool2d(x, 2)
        lab = rgb_to_lab(half).mul_(0.01)  # squares stay well inside float32 precision
        mean = F.avg_pool2d(lab, p // 2)
        var = F.avg_pool2d(lab.square_(), p // 2).sub_(mean * mean)
        color = torch.cat([mean, var.clamp_min_(0.0).sqrt_()], 1)

        fine = _sobel_bank(self._luma(x), p)
        coarse = _sobel_bank(self._luma(half), p // 2)  # = the 2x2-averaged luma
        texture = torch.cat([fine[:, :4], coarse[:, :4], fine[:, 4:], coarse[:, 4:]], 1)

        ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / h) - 1.0
        xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * (2.0 / w) - 1.0
        pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(b, 2, h, w)

        feats = torch.cat(
            [
                color * (self.w_color / self.COLOR_SCALE),
                texture * (self.w_texture / self.TEXTURE_SCALE),
                pos * (self.w_position / self.POSITION_SCALE),
            ],
            1,
        )
        feats = feats - feats.mean(dim=(2, 3), keepdim=True)
        return feats.permute(0, 2, 3, 1).contiguous()

    def extra_repr(self) -> str:
        return f"w_color={self.w_color}, w_texture={self.w_texture}, w_position={self.w_position}"


# ------------------------------------------------------------------------ building


def _weights_unavailable(name: str, spec: BackboneSpec, cause: BaseException | None) -> RuntimeError:
    why = ""
    if cause is not None:
        first = (str(cause).strip().splitlines() or [""])[0]
        why = f" ({type(cause).__name__}: {first})"
    return RuntimeError(
        f"cannot get pretrained weights for backbone '{name}' (timm '{spec.timm_name}'): "
        f"the download failed and they are not in the local cache{why}. "
        f"No network? Pass a local weights file with --checkpoint FILE "
        f"(build_extractor(..., checkpoint=FILE); original DINO/DINOv2 .pth files work), "
        f"or use the weight-free extractor with --backbone classic."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (fails in ~0 s without DNS)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hf_offline():
    """Temporarily make huggingface_hub cache-only (it reads the flag at call time)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm without the hub: URL loads only
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _create_timm(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise RuntimeError(
            f"backbone '{spec.name}' needs timm (pip install 'unsam[full]'); "
            "the weight-free --backbone classic does not"
        ) from e
    kwargs = dict(num_classes=0, dynamic_img_size=True)
    if not pretrained:
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    # Cache first, without touching the network. Only then download — and skip the
    # download when the hub cannot even be resolved: huggingface_hub would otherwise
    # retry for ~45 s before failing on a machine without network.
    try:
        with _hf_offline():
            return timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here means "not cached"
        cached_err = e
    if not _hub_reachable():
        raise _weights_unavailable(spec.name, spec, cached_err)
    try:
        return timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - network, HTTP and cache errors differ per hub version
        raise _weights_unavailable(spec.name, spec, e) from e


def _create_tiny_vit() -> nn.Module:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as e:
        raise RuntimeError("backbone 'vit_tiny_test' needs timm (pip install 'unsam[full]')") from e
    # Seeded so that two builds without a checkpoint give the same random weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VisionTransformer(
            img_size=64,
            patch_size=8,
            embed_dim=48,
            depth=2,
            num_heads=3,
            num_classes=0,
            dynamic_img_size=True,
        )


_WRAPPER_KEYS = ("teacher", "model", "state_dict", "student")  # teacher first: DINO evaluates the teacher
_PREFIXES = ("module.", "backbone.", "_orig_mod.")


def load_checkpoint_state(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file into a flat state_dict of tensors.

    Accepts a raw state_dict or one nested under ``teacher`` / ``model`` /
    ``state_dict`` / ``student`` (first found, repeatedly), and strips
    ``module.``, ``backbone.`` and ``_orig_mod.`` key prefixes (DDP, DINO's
    MultiCropWrapper, torch.compile). Loaded with ``weights_only=True``:
    pickled Python objects are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            raise ValueError(
                f"cannot read checkpoint {path} with torch.load(weights_only=True): {e}. "
                "A training checkpoint that pickles Python objects (e.g. DINO's checkpoint.pth with "
                "'args') must be reduced to its weights first, e.g. "
                "torch.save(torch.load(f, weights_only=False)['teacher'], 'teacher.pth')"
            ) from e
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    state = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for pre in _PREFIXES:
                if k.startswith(pre):
                    k, changed = k[len(pre) :], True
        state[k] = v
    if not state:
        raise ValueError(f"checkpoint {path}: no tensors found (keys: {list(obj)[:8]})")
    return state


def _describe(spec: BackboneSpec) -> str:
    arch = spec.timm_name or "tiny test ViT (patch 8, dim 48, depth 2, 3 heads)"
    return f"backbone '{spec.name}' ({arch}, patch {spec.patch_size}, dim {spec.dim})"


def _few(items: Sequence[str], n: int = 4) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _load_into(model: nn.Module, path: str | Path, spec: BackboneSpec) -> None:
    state = load_checkpoint_state(path)
    try:
        from timm.models.vision_transformer import checkpoint_filter_fn

        # Converts original DINO/DINOv2 checkpoints (DINOv2 mask_token, registers,
        # SwiGLU names; pos_embed resampled to the model's pretraining grid).
        state = checkpoint_filter_fn(state, model)
    except Exception as e:  # noqa: BLE001 - the filter assumes plausible shapes
        raise ValueError(
            f"checkpoint {path} does not fit {_describe(spec)}: timm's checkpoint filter failed: {e}"
        ) from e
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    # The feature path needs everything up to the last block's qkv; the final norm and head are unused.
    needed = [
        k for k in own if k.startswith(("blocks.", "patch_embed.")) or k in ("pos_embed", "cls_token", "reg_token")
    ]
    missing = [k for k in needed if k not in state]
    if mismatched or missing:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_few(mismatched, 3)})")
        if missing:
            parts.append(f"{len(missing)} missing weights ({_few(missing)})")
        found = _few(sorted(state), 4)
        raise ValueError(
            f"checkpoint {path} does not fit {_describe(spec)}: {'; '.join(parts)}. "
            f"The file has keys like: {found}. Is it for another backbone (--backbone)?"
        )
    model.load_state_dict(state, strict=False)


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
            model = _create_tiny_vit()
        else:
            model = _create_timm(spec, pretrained=pretrained and checkpoint is None)
        if checkpoint is not None:
            _load_into(model, checkpoint, spec)
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
