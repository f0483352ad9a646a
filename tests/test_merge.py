import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks._util import part_feats
from conftest import grid_feats
from tests.reference.kernels import merge_levels_reference
from unsam.kernels import DEFAULT_THRESHOLDS, merge_levels


def _blob(h, w, seed):
    """A non-rectangular valid region: a disc with a hole and a notch."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cy, cx = h / 2, w / 2
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    m = (r2 < (min(h, w) / 2.1) ** 2) & (r2 > (min(h, w) / 8) ** 2)
    m &= ~((xx > cx) & ((yy - cy).abs() < 1.5))
    return m


class TestMergeLevels:
    @pytest.mark.parametrize("hw", [(1, 1), (1, 7), (5, 3), (8, 8), (16, 16), (32, 32)])
    def test_identical_to_python_reference(self, hw):
        h, w = hw
        f = grid_feats(h, w, seed=h * 100 + w)
        got = merge_levels(f)
        ref = merge_levels_reference(f)
        assert got.shape == (len(DEFAULT_THRESHOLDS), h, w) and got.dtype == torch.int64
        assert torch.equal(got, ref)

    @pytest.mark.parametrize("seed", range(3))
    def test_identical_with_non_rectangular_valid(self, seed):
        f = grid_feats(20, 24, seed=seed)
        valid = _blob(20, 24, seed)
        got = merge_levels(f, valid=valid)
        assert torch.equal(got, merge_levels_reference(f, valid=valid))
        assert (got[:, ~valid] == -1).all() and (got[:, valid] >= 0).all()

    @pytest.mark.parametrize("c", [13, 64])
    def test_identical_on_features_that_merge_at_every_threshold(self, c):
        # Nested parts: clusters merge across all thresholds, so most similarities
        # the kernel uses were first bounds (lazy evaluation), then computed.
        f = part_feats(seed=c, c=c, h=16, w=16, noise=0.75 * (c / 768) ** 0.5)
        got = merge_levels(f)
        counts = [len(torch.unique(level)) for level in got]
        assert len(set(counts)) >= 3, counts  # the input really merges at several levels
        assert torch.equal(got, merge_levels_reference(f))

    def test_batched_equals_single_and_mixed_valid(self):
        f = torch.stack([grid_feats(12, 12, seed=s) for s in range(5)])
        valid = torch.stack([_blob(12, 12, s) for s in range(5)])
        valid[2] = True
        out = merge_levels(f, valid=valid)
        for i in range(5):
            assert torch.equal(out[i], merge_levels(f[i], valid=valid[i]))

    def test_levels_nest_and_ids_are_smallest_member(self):
        f = grid_feats(24, 24, seed=7)
        lab = merge_levels(f).reshape(len(DEFAULT_THRESHOLDS), -1)
        idx = torch.arange(lab.shape[1])
        for lv in range(lab.shape[0]):
            for cid in torch.unique(lab[lv]):
                members = idx[lab[lv] == cid]
                assert int(members.min()) == int(cid)
                if lv + 1 < lab.shape[0]:
                    # Every cluster lies inside one cluster of the next (coarser) level.
                    assert torch.unique(lab[lv + 1][members]).numel() == 1
        # Coarser levels never have more clusters.
        counts = [torch.unique(lab[lv]).numel() for lv in range(lab.shape[0])]
        assert counts == sorted(counts, reverse=True)

    def test_clusters_are_4_connected(self):
        f = grid_feats(16, 16, seed=3)
        lab = merge_levels(f)[-1]
        for cid in torch.unique(lab).tolist():
            m = (lab == cid).numpy()
            seen = set()
            start = tuple(zip(*m.nonzero()))[0]
            stack = [start]
            while stack:
                y, x = stack.pop()
                if (y, x) in seen:
                    continue
                seen.add((y, x))
                for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < 16 and 0 <= xx < 16 and m[yy, xx]:
                        stack.append((yy, xx))
            assert len(seen) == int(m.sum())

    def test_all_equal_features_tie_rule(self):
        # Every similarity ties at exactly 1.0: the tie rule alone decides the order.
        f = torch.ones(6, 7, 5)
        got = merge_levels(f)
        assert torch.equal(got, merge_levels_reference(f))
        assert (got == 0).all()

    def test_two_patch_tie_order_matches_reference_with_partial_ties(self):
        f = torch.zeros(4, 4, 2)
        f[..., 0] = 1.0
        f[:, 2:, 1] = 1.0  # two flat halves: ties inside each half
        assert torch.equal(merge_levels(f, thresholds=(0.9, 0.5)), merge_levels_reference(f, thresholds=(0.9, 0.5)))

    def test_all_zero_features_never_merge(self):
        got = merge_levels(torch.zeros(5, 5, 3))
        assert torch.equal(got[-1].flatten(), torch.arange(25))

    def test_one_valid_patch(self):
        valid = torch.zeros(6, 6, dtype=torch.bool)
        valid[2, 3] = True
        got = merge_levels(torch.randn(6, 6, 4), valid=valid)
        assert (got[:, 2, 3] == 15).all()
        assert (got.flatten(1).ne(-1).sum(1) == 1).all()

    def test_no_valid_patch_and_empty_batch(self):
        got = merge_levels(torch.randn(3, 3, 4), valid=torch.zeros(3, 3, dtype=torch.bool))
        assert (got == -1).all()
        assert merge_levels(torch.randn(0, 4, 4, 3)).shape == (0, 6, 4, 4)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="feats should have shape"):
            merge_levels(torch.zeros(4, 4))
        with pytest.raises(TypeError, match="feats should be floating point"):
            merge_levels(torch.zeros(4, 4, 2, dtype=torch.long))
        with pytest.raises(ValueError, match="descending"):
            merge_levels(torch.zeros(4, 4, 2), thresholds=(0.1, 0.5))
        with pytest.raises(ValueError, match="non-empty"):
            merge_levels(torch.zeros(4, 4, 2), thresholds=())
        with pytest.raises(ValueError, match="finite"):
            merge_levels(torch.zeros(4, 4, 2), thresholds=(float("nan"),))
        with pytest.raises(ValueError, match="NaN or inf"):
            merge_levels(torch.full((4, 4, 2), float("nan")))
        with pytest.raises(ValueError, match="valid should have shape"):
            merge_levels(torch.zeros(4, 4, 2), valid=torch.ones(4, 5, dtype=torch.bool))
        with pytest.raises(TypeError, match="valid should be a bool tensor"):
            merge_levels(torch.zeros(4, 4, 2), valid=torch.ones(4, 4))
        with pytest.raises(RuntimeError, match="feats should have dtype Float"):
            torch.ops.unsam.merge_levels(torch.zeros(1, 4, 4, 2, dtype=torch.float64), None, [0.5])

    def test_double_input_is_accepted(self):
        f = grid_feats(8, 8)
        assert torch.equal(merge_levels(f.double()), merge_levels(f))

    def test_opcheck(self):
        f = grid_feats(6, 6)[None]
        torch.library.opcheck(torch.ops.unsam.merge_levels.default, (f, None, [0.6, 0.3]))


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=st.integers(1, 10),
    seed=st.integers(0, 100_000),
    quantize=st.booleans(),
    drop=st.floats(0.0, 0.6),
)
def test_property_matches_reference(h, w, c, seed, quantize, drop):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(h, w, c, generator=g)
    if quantize:  # coarse values create exact similarity ties
        f = f.round().clamp(-1, 1)
    valid = torch.rand(h, w, generator=g) >= drop
    thr = (0.9, 0.6, 0.3, 0.0, -0.5)
    assert torch.equal(merge_levels(f, thr, valid), merge_levels_reference(f, thr, valid))
