import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UNSAM_DATA", ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    from unsam.kernels import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU and a CUDA build of unsam (unsam.kernels.cuda_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared evaluation data not found at {DATA}")
    return DATA


def structured_feats(n: int, c: int = 48, k: int = 4, noise: float = 0.8, seed: int = 0) -> torch.Tensor:
    """Features of k well-separated clusters plus noise: a graph with a clear lam_2 gap."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, c, generator=g) * 1.5
    # Unequal cluster sizes so the leading cuts are not degenerate.
    p = torch.tensor([0.45, 0.3, 0.15, 0.1][:k] + [0.1] * max(0, k - 4))
    lab = torch.multinomial(p / p.sum(), n, replacement=True, generator=g)
    return centers[lab] + noise * torch.randn(n, c, generator=g)


def grid_feats(h: int, w: int, c: int = 24, k: int = 5, block: int = 4, noise: float = 0.7, seed: int = 0):
    """Blocky piecewise-constant features on an h x w grid plus noise (merge tests)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, c, generator=g)
    lab = torch.randint(0, k, (h // block + 1, w // block + 1), generator=g)
    lab = lab.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    return centers[lab] + noise * torch.randn(h, w, c, generator=g)
