import numpy as np
import pytest
import torch

from unsam.label.divide import DivideConfig, bipartition, divide, divide_batch


def _scene(seed=0, g=30):
    """Features of a grid with two objects on a background (a clear NCut structure)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((g, g), int)
    lab[5:15, 4:14] = 1
    lab[18:27, 15:28] = 2
    centers = rng.normal(size=(3, 16)) * 2
    f = centers[lab] + 0.3 * rng.normal(size=(g, g, 16))
    return torch.from_numpy(f).float(), lab


class TestBipartition:
    def test_component_of_the_seed_not_the_largest(self):
        x = np.zeros((6, 6))
        x[0:2, 0:2] = 1.0  # small blob holding the maximum
        x[0, 0] = 2.0
        x[3:6, 3:6] = 0.9  # larger blob
        mask, seed = bipartition(x, np.ones((6, 6), bool))
        assert seed == 0 and mask.sum() == 4 and mask[0, 0]

    def test_three_corners_flip(self):
        x = np.ones((5, 5))
        x[1:4, 1:4] = -1.0  # centre is the low side, corners high
        mask, _ = bipartition(x, np.ones((5, 5), bool))
        assert mask[2, 2] and not mask[0, 0] and mask.sum() == 9

    def test_seed_not_in_foreground_flips(self):
        x = np.full((5, 5), 0.1)
        x[2, 2] = -3.0  # largest |x| is negative: object is the low side
        x[0, :] = 0.2
        mask, seed = bipartition(x, np.ones((5, 5), bool))
        assert mask[2, 2] and seed == 12

    def test_covered_patches_are_excluded(self):
        x = np.linspace(-1, 1, 36).reshape(6, 6)
        allowed = np.ones((6, 6), bool)
        allowed[5] = False
        mask, _ = bipartition(x, allowed)
        assert not (mask & ~allowed).any()


def test_divide_finds_the_objects_and_respects_structure():
    f, lab = _scene()
    regions = divide(f, DivideConfig(max_cuts=4))
    assert regions
    best = {k: max(((r.mask & (lab == k)).sum() / (r.mask | (lab == k)).sum()) for r in regions) for k in (1, 2)}
    assert best[1] > 0.8 and best[2] > 0.8, best
    top = [r.mask for r in regions if r.depth == 0 and r.lam < 1.0]
    for i in range(len(top)):
        for j in range(i + 1, len(top)):
            assert not (top[i] & top[j]).any()  # whole-image cuts never overlap
    for r in regions:
        assert r.area > 0.01
        if r.parent >= 0:
            assert not (r.mask & ~regions[r.parent].mask).any()  # recursive parts inside their region
            assert r.depth == regions[r.parent].depth + 1


def test_batched_equals_one_by_one():
    fs = torch.stack([_scene(s)[0] for s in range(3)])
    batched = divide_batch(fs)
    for i in range(3):
        single = divide(fs[i])
        assert len(single) == len(batched[i])
        assert all((a.mask == b.mask).all() and a.depth == b.depth for a, b in zip(single, batched[i]))


def test_degenerate_inputs():
    assert divide(torch.zeros(1, 1, 4)) == []
    regions = divide(torch.ones(8, 8, 4))  # all-equal features: no meaningful cut, no crash
    assert all(np.isfinite(r.lam) for r in regions)
    with pytest.raises(ValueError, match="feats should have shape"):
        divide(torch.zeros(8, 4))
