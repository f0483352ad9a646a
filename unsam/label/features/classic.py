"""The weight-free ``classic`` features: colour, texture and position per patch, so the
pipeline runs and can be measured offline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClassicFeatures", "rgb_to_lab"]

from unsam.label.features.base import PatchFeatures

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
