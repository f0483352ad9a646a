"""The interface every feature extractor has: :class:`PatchFeatures`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PatchFeatures"]


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
