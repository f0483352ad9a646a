import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import structured_feats
from tests.reference.kernels import fiedler_reference
from unsam.kernels import affinity, dense_affinity, lanczos_fiedler, ncut_fiedler


def _agreement(x, xr):
    x = np.asarray(x)
    xr = np.asarray(xr)
    cos = abs(x @ xr) / (np.linalg.norm(x) * np.linalg.norm(xr))
    fg = x > x.mean()
    fr = xr > xr.mean()
    agree = max((fg == fr).mean(), (fg != fr).mean())  # sign-independent
    return cos, agree


def _invalid(n, frac, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) > frac


class TestFiedler:
    @pytest.mark.parametrize("n", [1024, 3600])
    @pytest.mark.parametrize("invalid_frac", [0.0, 0.2])
    def test_agrees_with_dense_generalized_eigh(self, n, invalid_frac):
        f = structured_feats(n, seed=n + int(invalid_frac * 10))
        valid = _invalid(n, invalid_frac, seed=n) if invalid_frac else None
        bits, deg = affinity(f, valid=valid)
        x, lam, iters = lanczos_fiedler(bits, deg)
        xr, lr = fiedler_reference(bits, deg)
        cos, agree = _agreement(x.numpy(), xr)
        assert cos >= 0.999, cos
        assert agree >= 0.999, agree
        assert abs(float(lam) - lr) < 1e-6
        assert 1 <= int(iters) <= 300
        # The sign rule makes the vectors equal, not only parallel.
        assert np.allclose(x.numpy(), xr, atol=1e-4)

    def test_solution_properties(self):
        f = structured_feats(500, seed=5)
        bits, deg = affinity(f)
        x, lam, _ = lanczos_fiedler(bits, deg, tol=1e-9)
        a = dense_affinity(bits, deg).numpy()
        d = deg.numpy()
        xv = x.numpy()
        assert abs(xv @ (d * xv) - 1.0) < 1e-9  # D-normalised
        assert abs(d @ xv) < 1e-7  # D-orthogonal to the constant vector
        rq = xv @ ((np.diag(d) - a) @ xv)  # Rayleigh quotient = lam
        assert abs(rq - float(lam)) < 1e-8
        i = np.argmax(np.abs(xv))
        assert xv[i] > 0  # sign rule

    def test_batched_equals_single_and_ncut_wrapper(self):
        fs = torch.stack([structured_feats(300, seed=s) for s in range(4)])
        xb, lb = ncut_fiedler(fs)
        for i in range(4):
            x1, l1 = ncut_fiedler(fs[i])
            assert torch.allclose(xb[i], x1, atol=1e-10) and torch.allclose(lb[i], l1)

    def test_warm_start_converges_fast_to_same_vector(self):
        f = structured_feats(1024, seed=11)
        bits, deg = affinity(f)
        x, lam, it = lanczos_fiedler(bits, deg, tol=1e-8)
        x2, lam2, it2 = lanczos_fiedler(bits, deg, tol=1e-8, x0=x)
        assert int(it2) <= 4 < int(it) or int(it2) < int(it)
        assert np.allclose(x2.numpy(), x.numpy(), atol=1e-6)
        assert abs(float(lam2) - float(lam)) < 1e-9

    def test_iteration_cap_is_respected(self):
        f = structured_feats(800, seed=2, noise=3.0)
        bits, deg = affinity(f)
        x, lam, it = lanczos_fiedler(bits, deg, tol=1e-14, max_iter=7)
        assert int(it) == 7 and torch.isfinite(x).all() and torch.isfinite(lam)

    def test_deterministic(self):
        f = structured_feats(700, seed=9)
        a = ncut_fiedler(f)
        b = ncut_fiedler(f)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


class TestFiedlerEdgeCases:
    def test_n1_is_a_clear_error(self):
        with pytest.raises(ValueError, match="N >= 2"):
            ncut_fiedler(torch.randn(1, 8))
        bits, deg = affinity(torch.randn(1, 8))
        with pytest.raises(RuntimeError, match="N >= 2"):
            lanczos_fiedler(bits, deg)

    def test_n2(self):
        x, lam = ncut_fiedler(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        xr, lr = fiedler_reference(*affinity(torch.tensor([[1.0, 0.0], [0.0, 1.0]])))
        assert np.allclose(x.numpy(), xr, atol=1e-8) and abs(float(lam) - lr) < 1e-8

    @pytest.mark.parametrize("feats", [torch.ones(300, 16), torch.zeros(300, 16)], ids=["equal", "zero"])
    def test_degenerate_lambda2_gives_finite_deterministic_answer(self, feats):
        bits, deg = affinity(feats)
        x, lam, it = lanczos_fiedler(bits, deg)
        assert torch.isfinite(x).all() and torch.isfinite(lam)
        d = deg.numpy()
        xv = x.numpy()
        assert abs(xv @ (d * xv) - 1) < 1e-8 and abs(d @ xv) < 1e-8
        # Every vector D-orthogonal to 1 is an eigenvector: lam_2 is the whole spectrum.
        _, lr = fiedler_reference(bits, deg)
        assert abs(float(lam) - lr) < 1e-8
        x2, _, _ = lanczos_fiedler(bits, deg)
        assert torch.equal(x, x2)

    def test_all_invalid(self):
        f = torch.randn(100, 8)
        x, lam = ncut_fiedler(f, valid=torch.zeros(100, dtype=torch.bool))
        assert torch.isfinite(x).all() and torch.isfinite(lam)

    def test_bad_inputs(self):
        bits, deg = affinity(torch.randn(50, 4))
        with pytest.raises(RuntimeError, match="bits should have dtype Int"):
            lanczos_fiedler(bits.long(), deg)
        with pytest.raises(RuntimeError, match="deg should have dtype Double"):
            lanczos_fiedler(bits, deg.float())
        with pytest.raises(RuntimeError, match="deg should have shape"):
            lanczos_fiedler(bits, deg[:-1])
        with pytest.raises(RuntimeError, match="bits should be a 3-D tensor"):
            lanczos_fiedler(bits[None, None], deg)
        with pytest.raises(RuntimeError, match="tol should be > 0"):
            lanczos_fiedler(bits, deg, tol=0.0)
        with pytest.raises(RuntimeError, match="max_iter should be >= 1"):
            lanczos_fiedler(bits, deg, max_iter=0)
        with pytest.raises(RuntimeError, match="x0 should have shape"):
            lanczos_fiedler(bits, deg, x0=torch.zeros(49, dtype=torch.float64))
        with pytest.raises(ValueError, match="NaN or inf"):
            lanczos_fiedler(bits, deg, x0=torch.full((50,), float("nan"), dtype=torch.float64))
        with pytest.raises(ValueError, match="NaN or inf"):
            ncut_fiedler(torch.full((10, 3), float("inf")))
        with pytest.raises(ValueError, match="feats should have shape"):
            ncut_fiedler(torch.zeros(2, 3, 4, 5))

    def test_zero_start_vector_falls_back(self):
        bits, deg = affinity(structured_feats(200))
        x, _, _ = lanczos_fiedler(bits, deg)
        x0 = torch.zeros(200, dtype=torch.float64)
        x2, _, _ = lanczos_fiedler(bits, deg, x0=x0)
        assert np.allclose(x.numpy(), x2.numpy(), atol=1e-6)

    def test_opcheck(self):
        bits, deg = affinity(structured_feats(64)[None])
        torch.library.opcheck(torch.ops.unsam.lanczos_fiedler.default, (bits, deg, None, 1e-5, 1e-6, 50))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 120),
    c=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    tau=st.floats(-0.5, 0.9),
)
def test_property_rayleigh_quotient_is_lambda(n, c, seed, tau):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, c, generator=g)
    bits, deg = affinity(f, tau=tau)
    x, lam, _ = lanczos_fiedler(bits, deg, tol=1e-10)
    assert torch.isfinite(x).all()
    d = deg.numpy()
    a = dense_affinity(bits, deg).numpy()
    xv = x.numpy()
    assert abs(xv @ (d * xv) - 1) < 1e-7
    assert abs(xv @ ((np.diag(d) - a) @ xv) - float(lam)) < 1e-6
    # lam is the smallest non-trivial generalized eigenvalue.
    _, lr = fiedler_reference(bits, deg)
    assert abs(float(lam) - lr) < 1e-6
