"""Loading of the compiled extension ``unsam._C`` and build information."""

from __future__ import annotations

import functools

import torch

_BUILD_HINT = (
    "Build it with `pip install --no-build-isolation -e .` from the unsam checkout "
    "(torch must be installed first; see README, 'Building')."
)


@functools.lru_cache(maxsize=None)
def load():
    """Import ``unsam._C`` (which registers ``torch.ops.unsam.*``) and return it."""
    try:
        from unsam import _C  # noqa: PLC0415  (import registers the ops)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"unsam's compiled kernels (unsam._C) could not be loaded: {e}. {_BUILD_HINT}") from e
    return _C


def has_cuda() -> bool:
    """True when the extension was built with its CUDA kernels (not whether a GPU is present)."""
    return bool(load().with_cuda)


def cuda_available() -> bool:
    """True when CUDA kernels are built *and* torch sees a GPU."""
    return has_cuda() and torch.cuda.is_available()


def ops():
    """``torch.ops.unsam`` after making sure the extension is loaded."""
    load()
    return torch.ops.unsam


def check_device(t: torch.Tensor, name: str, op: str) -> None:
    """Raise a helpful error for CUDA tensors when the build has no CUDA kernels."""
    if t.is_cuda and not has_cuda():
        raise RuntimeError(
            f"{op}: {name} is a CUDA tensor, but unsam was built without CUDA kernels. "
            "Rebuild with a CUDA toolkit (nvcc) and a CUDA build of torch: "
            "`UNSAM_CUDA=ON pip install --no-build-isolation -e .`"
        )
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{op}: {name} should be on a CPU or CUDA device, got {t.device}")


def check_finite(t: torch.Tensor, name: str, op: str) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{op}: {name} contains {bad} NaN or inf value(s); clean the input first")
