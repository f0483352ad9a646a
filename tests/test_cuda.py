"""CUDA kernels against the CPU kernels (skipped without a GPU and a CUDA build)."""

import pytest
import torch

from conftest import grid_feats, structured_feats
from unsam.kernels import (
    affinity,
    lanczos_fiedler,
    merge_levels,
    ncut_fiedler,
    unpack_bits,
)

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("n", [1, 33, 1024, 3600])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_affinity_cuda_matches_cpu(n, dtype):
    f = structured_feats(n, seed=n).to(dtype)
    valid = torch.rand(n, generator=torch.Generator().manual_seed(0)) > 0.2
    bc, dc = affinity(f.float(), valid=valid)
    bg, dg = affinity(f.cuda(), valid=valid.cuda())
    got, ref = unpack_bits(bg.cpu(), n), unpack_bits(bc, n)
    fn = torch.nn.functional.normalize(f.float(), dim=-1) * valid[:, None]
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # half-precision GEMM
    near = ((fn @ fn.T) - 0.15).abs() < tol
    assert torch.equal(got[~near], ref[~near])
    assert torch.allclose(dg.cpu(), got.double().sum(1) * (1 - 1e-5) + 1e-5 * n)


@pytest.mark.parametrize("n", [1024, 3600])
def test_lanczos_cuda_matches_cpu_batched(n):
    fs = torch.stack([structured_feats(n, seed=s) for s in range(4)])
    valid = torch.rand(4, n, generator=torch.Generator().manual_seed(1)) > 0.1
    bits, deg = affinity(fs, valid=valid)
    xc, lc, _ = lanczos_fiedler(bits, deg)
    xg, lg, it = lanczos_fiedler(bits.cuda(), deg.cuda())
    assert torch.allclose(lg.cpu(), lc, atol=1e-6)
    cos = (xg.cpu() * xc).sum(1).abs() / (xg.cpu().norm(dim=1) * xc.norm(dim=1))
    assert (cos > 0.999).all()
    assert torch.allclose(xg.cpu(), xc, atol=1e-4)  # same sign rule
    # warm start on the device
    x2, _, it2 = lanczos_fiedler(bits.cuda(), deg.cuda(), x0=xg)
    assert (it2 <= it).all()


def test_ncut_cuda_edge_cases():
    for f in (torch.ones(100, 8), torch.zeros(100, 8)):
        x, lam = ncut_fiedler(f.cuda())
        assert torch.isfinite(x).all() and torch.isfinite(lam).all()


@pytest.mark.parametrize("hw", [(1, 1), (5, 3), (16, 16), (32, 32)])
def test_merge_cuda_identical_to_cpu(hw):
    h, w = hw
    f = torch.stack([grid_feats(h, w, seed=s) for s in range(6)])
    valid = torch.rand(6, h, w, generator=torch.Generator().manual_seed(2)) > 0.15
    valid[0] = True
    f[1] = 1.0  # exact ties
    assert torch.equal(merge_levels(f.cuda(), valid=valid.cuda()).cpu(), merge_levels(f, valid=valid))


def test_merge_cuda_real_channel_count():
    f = torch.randn(8, 32, 32, 768) + torch.randn(8, 1, 1, 768)
    assert torch.equal(merge_levels(f.cuda()).cpu(), merge_levels(f))
