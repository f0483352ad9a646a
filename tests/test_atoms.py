"""Atoms: FH graph segmentation and dendrogram merging kernels against their Python
references, and the atom conquer stage on images with a known answer."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from tests.reference.kernels import graph_segment_reference, merge_graph_reference
from unsam.kernels.segment import adjacent_pairs, graph_segment, merge_graph
from unsam.label.atoms import AtomConfig, atom_masks, colour_histograms


def _boxes(labels):
    return np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels + 1)], np.int64)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 14),
    w=st.integers(1, 14),
    c=st.integers(1, 3),
    levels=st.integers(1, 6),
    k=st.sampled_from([0.0, 10.0, 60.0, 500.0]),
    min_size=st.integers(0, 6),
    seed=st.integers(0, 10**6),
)
def test_graph_segment_matches_the_reference(h, w, c, levels, k, min_size, seed):
    # Few distinct values: many exactly equal edge weights exercise the tie order.
    rng = np.random.default_rng(seed)
    img = (rng.integers(0, levels, (h, w, c)) * 25).astype(np.float32)
    got = graph_segment(img, k, min_size=min_size, sigma=0).numpy()
    assert np.array_equal(got, graph_segment_reference(img, k, min_size))


def test_graph_segment_scales_and_smoothing():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    many = graph_segment(img, [50.0, 400.0], min_size=5, sigma=0.8)
    assert many.shape == (2, 20, 30) and many.dtype == torch.int64
    one = graph_segment(img, 400.0, min_size=5, sigma=0.8)
    assert torch.equal(many[1], one)
    # Labels are 0..n-1 in raster order of first pixel; a larger k gives fewer segments.
    for lab in many.numpy():
        first = np.unique(lab.ravel(), return_index=True)[1]
        assert np.array_equal(lab.ravel()[np.sort(first)], np.arange(lab.max() + 1))
    assert many[1].max() < many[0].max()
    # sigma = smoothing with scipy first, then the kernel.
    smooth = ndimage.gaussian_filter(img.astype(np.float32), sigma=(0.8, 0.8, 0), mode="reflect")
    assert torch.equal(one, graph_segment(smooth, 400.0, min_size=5, sigma=0))


def test_graph_segment_finds_flat_regions_exactly():
    img = np.zeros((30, 40, 3), np.uint8)
    img[5:15, 5:20] = (200, 30, 30)
    img[18:28, 22:38] = (30, 200, 30)
    lab = graph_segment(img, 100.0, min_size=10, sigma=0).numpy()
    assert lab.max() == 2
    assert len(np.unique(lab[5:15, 5:20])) == 1 and len(np.unique(lab[18:28, 22:38])) == 1
    assert (lab == lab[6, 6]).sum() == 150


def test_graph_segment_rejects_bad_input():
    with pytest.raises(ValueError, match="image should have shape"):
        graph_segment(np.zeros((2, 3, 4, 5)), 10.0)
    with pytest.raises(ValueError, match="NaN"):
        graph_segment(np.full((4, 4, 3), np.nan), 10.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        graph_segment(np.zeros((4, 4, 3)), -1.0)
    with pytest.raises(ValueError, match="non-empty"):
        graph_segment(np.zeros((4, 4, 3)), [])
    with pytest.raises(ValueError, match="min_size"):
        graph_segment(np.zeros((4, 4, 3)), 10.0, min_size=-2)


def test_adjacent_pairs_equals_brute_force():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 7, (9, 11))
    ref = set()
    for y in range(9):
        for x in range(11):
            for yy, xx in ((y + 1, x), (y, x + 1)):
                if yy < 9 and xx < 11 and lab[y, x] != lab[yy, xx]:
                    ref.add(tuple(sorted((int(lab[y, x]), int(lab[yy, xx])))))
    assert sorted(map(tuple, adjacent_pairs(lab).tolist())) == sorted(ref)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), weights=st.sampled_from([(1, 0, 0.5, 0), (1, 0.3, 0.5, 0.5), (0, 1, 0, 0), (1, 0, 0, 0)]))
def test_merge_graph_matches_the_reference(seed, weights):
    rng = np.random.default_rng(seed)
    lab = graph_segment(rng.integers(0, 3, (10, 12, 3)).astype(np.float32) * 40, 30.0, min_size=2, sigma=0).numpy()
    n = int(lab.max()) + 1
    # Histograms from few values: exactly equal similarities test the tie order.
    hist = rng.integers(0, 3, (n, 5)).astype(np.float32)
    feats = rng.standard_normal((n, 4)).astype(np.float32)
    area = np.bincount(lab.ravel()).astype(np.float64)
    edges = adjacent_pairs(lab)
    wh, wf, ws, wb = weights
    m, s = merge_graph(
        torch.from_numpy(hist), torch.from_numpy(area), torch.from_numpy(edges), torch.from_numpy(feats),
        torch.from_numpy(_boxes(lab)), wh, wf, ws, wb,
    )
    mr, sr = merge_graph_reference(hist, area, edges, feats, _boxes(lab), wh, wf, ws, wb)
    assert np.array_equal(m.numpy(), mr)
    np.testing.assert_allclose(s.numpy(), sr, rtol=0, atol=1e-12)
    assert len(mr) == n - 1  # a connected image: merged to one node


def test_merge_graph_disconnected_duplicates_and_errors():
    hist = torch.ones(5, 3)
    area = torch.ones(5, dtype=torch.float64)
    # Two components {0, 1, 2} and {3, 4}; edges repeated and in both orders.
    edges = torch.tensor([[0, 1], [1, 0], [1, 2], [0, 1], [4, 3]])
    m, s = merge_graph(hist, area, edges, w_size=0.0)
    assert m.shape == (3, 2)  # N - components
    # All similarities tie at 1: the smallest pair (a, b) goes first each time,
    # so (2, 5) (5 = 0 u 1) comes before (3, 4).
    assert m.tolist() == [[0, 1], [2, 5], [3, 4]]
    assert torch.allclose(s, torch.ones(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="self-loop"):
        merge_graph(hist, area, torch.tensor([[2, 2]]))
    with pytest.raises(RuntimeError, match="should index nodes"):
        merge_graph(hist, area, torch.tensor([[0, 5]]))
    with pytest.raises(RuntimeError, match="w_fill != 0 needs boxes"):
        merge_graph(hist, area, edges, w_fill=1.0)
    with pytest.raises(ValueError, match="area should have shape"):
        merge_graph(hist, torch.ones(4, dtype=torch.float64), edges)


def _two_objects():
    img = np.full((48, 64, 3), (90, 120, 160), np.uint8)  # sky
    img[8:30, 6:26] = (220, 40, 40)  # red box
    img[20:44, 34:58] = (40, 180, 60)  # green box
    img[26:34, 40:50] = (250, 250, 250)  # white part of the green box
    return img


def test_atom_masks_recover_objects_and_parts_exactly():
    img = _two_objects()
    items = atom_masks(img, AtomConfig(scales=(100.0, 400.0), min_size=10, sigma=0.0), w_feat=0.0)

    def full(m):
        out = np.zeros(img.shape[:2], bool)
        x0, y0, x1, y1 = m.box
        out[y0:y1, x0:x1] = m.crop
        return out

    masks = [full(m) for m in items]
    red = np.zeros(img.shape[:2], bool)
    red[8:30, 6:26] = True
    white = np.zeros(img.shape[:2], bool)
    white[26:34, 40:50] = True
    green_whole = np.zeros(img.shape[:2], bool)
    green_whole[20:44, 34:58] = True
    for target in (red, white, green_whole):
        assert any(np.array_equal(m, target) for m in masks)
    assert all(m.source in ("atoms", "partition") and np.isfinite(m.score) for m in items)
    # The ladder (at 100, the scale nearest to 200 in log ratio, the finer of two) has a whole-image root.
    ladder = [m for m in items if m.source == "partition"]
    assert ladder and all(m.meta["scale"] == 100.0 for m in ladder)
    assert [m.area for m in ladder if m.meta["partition_level"] == 0] == [64 * 48]
    # The crop is tight to its box edges or inside them, and boxes lie in the image.
    assert all(0 <= m.box[0] < m.box[2] <= 64 and 0 <= m.box[1] < m.box[3] <= 48 for m in items)


def test_colour_histograms_count_pixels_per_atom():
    img = _two_objects()
    atoms = graph_segment(img, 100.0, min_size=10, sigma=0).numpy()
    n = int(atoms.max()) + 1
    h = colour_histograms(img, atoms, n, bins=8)
    assert h.shape == (n, 24)
    # Every pixel counts once per Lab channel.
    for c in range(3):
        assert np.array_equal(h[:, c * 8 : (c + 1) * 8].sum(1), np.bincount(atoms.ravel(), minlength=n))


def test_atom_features_sum_the_patch_under_each_pixel():
    from unsam.label.atoms import _atom_features

    rng = np.random.default_rng(3)
    atoms = rng.integers(0, 6, (20, 28))
    feats = torch.randn(5, 7, 4)
    got = _atom_features(atoms, 6, feats)
    ref = np.zeros((6, 4), np.float64)
    for y in range(20):
        for x in range(28):
            ref[atoms[y, x]] += feats[y * 5 // 20, x * 7 // 28].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_atom_features_steer_the_merge_when_colour_is_blind():
    # One flat colour, but the backbone says left and right halves differ: with only
    # the feature cosine the last merge joins the two halves, each half whole before.
    img = np.full((32, 32, 3), 128, np.uint8)
    img[:, ::4] = 120  # faint vertical stripes: many atoms, none crossing the middle
    feats = torch.zeros(4, 4, 2)
    feats[:, :2, 0] = 1.0
    feats[:, 2:, 1] = 1.0
    cfg = AtomConfig(scales=(5.0,), min_size=4, sigma=0.0, w_hist=0.0, w_size=0.0, w_fill=0.0, max_nodes=10_000)
    items = atom_masks(img, cfg, w_feat=1.0, feats=feats)
    halves = [np.zeros((32, 32), bool) for _ in range(2)]
    halves[0][:, :16] = True
    halves[1][:, 16:] = True
    for half in halves:
        found = False
        for m in items:
            full = np.zeros((32, 32), bool)
            full[m.box[1] : m.box[3], m.box[0] : m.box[2]] = m.crop
            found |= np.array_equal(full, half)
        assert found


def test_graph_segment_equals_scikit_image_on_a_photo():
    felzenszwalb = pytest.importorskip("skimage.segmentation").felzenszwalb
    from pathlib import Path

    from PIL import Image

    path = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.jpg"))[0]
    img = np.asarray(Image.open(path).convert("RGB").resize((160, 120)))
    ours = graph_segment(img, [50.0, 400.0], min_size=20, sigma=0.8).numpy()
    for k, lab in zip([50.0, 400.0], ours):
        # Same edges, order, merge rule and smoothing: the very same labels.
        assert np.array_equal(lab, felzenszwalb(img, scale=k, sigma=0.8, min_size=20))


def test_snap_to_atoms_takes_atoms_covered_by_more_than_half():
    from unsam.label.atoms import snap_to_atoms
    from unsam.label.items import MaskItem

    atoms = np.zeros((10, 12), np.int64)
    atoms[:, 4:8] = 1
    atoms[:, 8:] = 2
    # A blocky mask: all of atom 0, 3/4 of atom 1, 1/4 of atom 2.
    crop = np.zeros((10, 12), bool)
    crop[:, :7] = True
    crop[:, 8:9] = True
    m = MaskItem((0, 0, 12, 10), crop, 0.5, "divide")
    gone = MaskItem((8, 0, 9, 2), np.ones((2, 1), bool), 0.5, "divide")  # covers < half of atom 2
    snap_to_atoms([m, gone], atoms)
    assert m.box == (0, 0, 8, 10) and m.crop.all() and m.crop.shape == (10, 8)
    assert gone.box == (8, 0, 9, 2) and gone.crop.all()  # would vanish: kept as it was


def test_partition_counts():
    from unsam.label.atoms import partition_counts

    assert partition_counts(1.25, 10) == [1, 2, 3, 4, 5, 6, 7, 9]
    assert partition_counts(2.0, 16) == [1, 2, 4, 8, 16]
    assert partition_counts(1.5, 1) == [1]
    with pytest.raises(ValueError, match="partition_ratio"):
        partition_counts(1.0, 10)
    with pytest.raises(ValueError, match="partition_max_regions"):
        partition_counts(1.5, 0)


def test_partition_ladder_by_hand():
    from unsam.label.atoms import partition_ladder

    # Leaves 0..3; 4 = {0, 1}, 5 = {2, 3}, 6 = everything.
    merges = np.array([[0, 1], [2, 3], [4, 5]])
    nodes, levels, parents = partition_ladder(4, merges, [1, 2, 3, 4])
    assert nodes.tolist() == [6, 4, 5, 2, 3, 0, 1]
    assert levels.tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert [nodes[p] if p >= 0 else -1 for p in parents] == [-1, 6, 6, 5, 5, 4, 4]
    # Counts past what the merges reach are clamped; repeated cuts are dropped.
    nodes, levels, _ = partition_ladder(4, merges[:1], [1, 2, 3, 4, 9])
    assert levels.max() == 1 and sorted(nodes[levels == 0].tolist()) == [2, 3, 4]


def test_similarity_cuts_and_a_ladder_by_merge_strength():
    from unsam.label.atoms import partition_ladder, similarity_cuts

    # Greedy merge similarities need not descend; a threshold stops the sequence at the
    # first merge below it. Ascending thresholds: coarse to fine, the whole first.
    assert similarity_cuts(np.array([0.9, 0.8, 0.95]), [0.5, 0.85, 0.99]) == [3, 3, 1, 0]
    merges = np.array([[0, 1], [2, 3], [4, 5]])
    nodes, levels, parents = partition_ladder(4, merges, cuts=[3, 3, 1, 0])
    # Level 1 repeats level 0's cut: it adds no region, and the levels keep their numbers.
    # Level 2: one merge applied ({0, 1}, 2, 3); level 3: no merge (the leaves 0 and 1 appear).
    assert levels.tolist() == [0, 2, 2, 2, 3, 3] and nodes.tolist() == [6, 2, 3, 4, 0, 1]
    assert [nodes[p] if p >= 0 else -1 for p in parents] == [-1, 6, 6, 6, 4, 4]
    with pytest.raises(ValueError, match="non-increasing"):
        partition_ladder(4, merges, cuts=[1, 2])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), ratio=st.floats(1.1, 2.5))
def test_partition_ladder_cuts_are_nested_partitions(n, seed, ratio):
    from unsam.label.atoms import partition_counts, partition_ladder

    rng = np.random.default_rng(seed)
    # A random dendrogram: merge two random current roots until one is left.
    roots, merges = list(range(n)), []
    while len(roots) > 1:
        a, b = rng.choice(len(roots), 2, replace=False)
        merges.append((roots[a], roots[b]))
        roots = [r for i, r in enumerate(roots) if i not in (a, b)] + [n + len(merges) - 1]
    merges = np.array(merges, np.int64).reshape(-1, 2)
    leaves = {i: {i} for i in range(n)}
    for i, (a, b) in enumerate(merges):
        leaves[n + i] = leaves[int(a)] | leaves[int(b)]
    counts = partition_counts(ratio, n)
    nodes, levels, parents = partition_ladder(n, merges, counts)
    assert len(set(nodes.tolist())) == len(nodes) and levels[0] == 0 and (np.diff(levels) >= 0).all()
    for lv in range(int(levels.max()) + 1):
        # The regions present at cut lv: those born at or before it and not yet split below it.
        present = [i for i in range(len(nodes)) if levels[i] <= lv and not any(
            parents[j] == i and levels[j] <= lv for j in range(len(nodes)))]
        cover = sorted(x for i in present for x in leaves[int(nodes[i])])
        assert cover == list(range(n))  # a partition of the leaves
        assert len(present) == min(counts[lv], n)
    for i, p in enumerate(parents):
        if p >= 0:
            assert leaves[int(nodes[i])] < leaves[int(nodes[p])] and levels[p] < levels[i]
