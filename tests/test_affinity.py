import pytest
import torch

from conftest import structured_feats
from tests.reference.kernels import affinity_reference
from unsam.kernels import affinity, dense_affinity, unpack_bits


class TestAffinity:
    @pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 1024])
    @pytest.mark.parametrize("with_valid", [False, True])
    def test_matches_dense_reference(self, n, with_valid):
        f = structured_feats(n, seed=n)
        valid = (torch.rand(n, generator=torch.Generator().manual_seed(1)) > 0.25) if with_valid else None
        bits, deg = affinity(f, tau=0.15, eps=1e-5, valid=valid)
        assert bits.shape == (n, (n + 31) // 32) and bits.dtype == torch.int32
        assert deg.shape == (n,) and deg.dtype == torch.float64
        ref_b, ref_deg = affinity_reference(f, tau=0.15, eps=1e-5, valid=valid)
        got = unpack_bits(bits, n)
        # GEMM rounding may flip entries whose cosine is within 1e-5 of tau; nothing else.
        fn = torch.nn.functional.normalize(f, dim=-1)
        if valid is not None:
            fn = fn * valid[:, None]
        near = ((fn @ fn.T) - 0.15).abs() < 1e-5
        assert torch.equal(got[~near], ref_b[~near])
        # Degrees are those of exactly this bit graph.
        assert torch.allclose(deg, got.double().sum(1) * (1 - 1e-5) + 1e-5 * n, rtol=0, atol=1e-12)
        if valid is not None:
            assert not got[~valid].any() and not got[:, ~valid].any()
        assert torch.equal(got, got.T)  # symmetric
        # Padding bits past N are zero.
        if n % 32:
            assert int((bits[:, -1] >> (n % 32)).abs().sum()) == 0

    @pytest.mark.parametrize("n", [1250, 3600])
    def test_several_row_tiles_give_the_full_symmetric_graph(self, n):
        # Only the upper block triangle is multiplied (row tiles of ~4 M cosines); the
        # lower one is its transpose, 32 x 32 bits at a time, also across tile borders.
        f = structured_feats(n, seed=n)
        got = unpack_bits(affinity(f)[0], n)
        ref, _ = affinity_reference(f)
        fn = torch.nn.functional.normalize(f, dim=-1)
        near = ((fn @ fn.T) - 0.15).abs() < 1e-5
        assert torch.equal(got[~near], ref[~near]) and torch.equal(got, got.T)
        assert 0.05 < got.float().mean() < 0.95  # a graph with structure, not all or nothing

    def test_batched_equals_single(self):
        f = torch.stack([structured_feats(200, seed=s) for s in range(3)])
        bits, deg = affinity(f)
        for i in range(3):
            b1, d1 = affinity(f[i])
            assert torch.equal(bits[i], b1) and torch.equal(deg[i], d1)

    def test_dense_graph_is_exact_eps_graph(self):
        f = structured_feats(70)
        bits, deg = affinity(f, eps=1e-3)
        a = dense_affinity(bits, deg, eps=1e-3)
        assert torch.allclose(a.sum(1), deg)
        assert set(torch.unique(a).tolist()) <= {1e-3, 1.0}

    def test_zero_and_equal_features(self):
        bits, deg = affinity(torch.zeros(50, 8))
        assert int(bits.abs().sum()) == 0 and torch.allclose(deg, torch.full((50,), 50 * 1e-5, dtype=torch.float64))
        bits, deg = affinity(torch.ones(50, 8))
        assert unpack_bits(bits, 50).all()

    def test_bad_inputs_name_the_argument(self):
        with pytest.raises(ValueError, match="feats should have shape"):
            affinity(torch.zeros(4))
        with pytest.raises(ValueError, match="NaN or inf"):
            affinity(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
        with pytest.raises(ValueError, match="NaN or inf"):
            affinity(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
        with pytest.raises(TypeError, match="valid should be a bool tensor"):
            affinity(torch.zeros(4, 2), valid=torch.ones(4))
        with pytest.raises(ValueError, match="valid should have shape"):
            affinity(torch.zeros(4, 2), valid=torch.ones(5, dtype=torch.bool))
        with pytest.raises(RuntimeError, match="eps should be in"):
            affinity(torch.zeros(4, 2), eps=2.0)
        with pytest.raises(TypeError, match="feats should be a torch.Tensor"):
            affinity([[1.0, 2.0]])

    def test_integer_features_are_converted(self):
        f = torch.randint(0, 5, (40, 6))
        bits, _ = affinity(f)
        bits_f, _ = affinity(f.float())
        assert torch.equal(bits, bits_f)

    def test_opcheck(self):
        f = structured_feats(40)
        torch.library.opcheck(torch.ops.unsam.affinity.default, (f[None], None, 0.15, 1e-5))
