"""The dense CRF op (``unsam.kernels.dense_crf``) against its Python references
(``tests/reference/densecrf.py``, the oracle) and, where it is installed, against
``pydensecrf2`` (the published way: what CutLER's ``maskcut/crf.py`` calls)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.densecrf import (
    dense_crf_reference,
    gaussian_features,
    lattice_filter,
    unary_from_mask,
)
from unsam.kernels import CRFParams, dense_crf


def _scene(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of a few flat colour regions plus noise, and masks that roughly cover some of
    them (blocky, shifted, with holes): what a CRF is meant to snap to the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.int64)
    for k in range(1, 5):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(h / 8, h / 2.5), rng.uniform(w / 8, w / 2.5)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k
    colours = rng.integers(0, 256, (5, 3))
    image = np.clip(colours[labels] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    masks = []
    for k in range(1, 5):
        m = labels == k
        m = np.roll(m, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), (0, 1))
        m &= rng.random((h, w)) > 0.1
        masks.append(m)
    masks.append(np.zeros((h, w), bool))  # an empty mask stays empty
    return image, np.stack(masks)


def _ref_logodds(image, mask, **kw) -> np.ndarray:
    q = dense_crf_reference(image, mask, **kw).astype(np.float64)
    return np.log(q[1]) - np.log(q[0])


PARAMS = [
    CRFParams(),
    CRFParams(gaussian_sxy=2.0, gaussian_compat=3.0, bilateral_sxy=9.0, bilateral_srgb=13.0, bilateral_compat=4.0, iterations=3),
]


class TestDenseCRF:
    @pytest.mark.parametrize("seed,h,w", [(0, 24, 32), (1, 17, 40), (2, 1, 30)])
    @pytest.mark.parametrize("params", PARAMS, ids=["published", "other"])
    def test_matches_the_lattice_reference(self, seed, h, w, params):
        image, masks = _scene(seed, h, w)
        kw = {k: getattr(params, k) for k in params.__dataclass_fields__}
        got = dense_crf(image, masks, params, return_logits=True).numpy()
        got_map = dense_crf(image, masks, params).numpy()
        assert got.dtype == np.float32 and got_map.dtype == bool and got.shape == masks.shape
        for k in range(len(masks)):
            ref = _ref_logodds(image, masks[k], **kw)
            # The reference carries both labels in float32 and the op one log-odds: they
            # differ by rounding only.
            assert np.abs(got[k] - ref).max() < 5e-4 * max(1.0, np.abs(ref).max()), k
            sure = np.abs(ref) > 1e-3
            assert np.array_equal(got_map[k][sure], ref[sure] > 0), k
            assert np.array_equal(got_map[k], got[k] > 0)

    def test_soft_masks_use_cutlers_unary(self):
        image, masks = _scene(3, 20, 26)
        soft = np.clip(masks[:2].astype(np.float32) * 0.8 + np.random.default_rng(0).uniform(0, 0.3, masks[:2].shape), 0, 1)
        got = dense_crf(image, torch.from_numpy(soft.astype(np.float32)), return_logits=True).numpy()
        for k in range(2):
            assert np.abs(got[k] - _ref_logodds(image, soft[k])).max() < 5e-4 * 20
        u = unary_from_mask(soft[0])
        zero = dense_crf(image, soft[:1], CRFParams(iterations=0), return_logits=True).numpy()[0]
        assert np.allclose(zero.ravel(), u[0] - u[1], atol=1e-6)

    def test_no_iterations_is_the_unary(self):
        image, masks = _scene(4, 12, 15)
        assert np.array_equal(dense_crf(image, masks, CRFParams(iterations=0)).numpy(), masks)
        lo = dense_crf(image, masks, CRFParams(iterations=0), return_logits=True).numpy()
        u = unary_from_mask(np.ones(1))
        assert np.all(lo[masks] == np.float32(u[0, 0] - u[1, 0])) and np.all(lo[~masks] == -lo[masks][0])

    def test_each_mask_is_its_own_crf(self):
        """A mask's result does not depend on the other masks of the call (they share only
        the lattice), on its place among them or on the thread count: same bits."""
        image, masks = _scene(5, 30, 22)
        many = np.concatenate([masks] * 5)  # 25 masks: two groups of lanes
        together = dense_crf(image, many, return_logits=True).numpy()
        alone = np.stack([dense_crf(image, m, return_logits=True).numpy() for m in masks])
        assert np.array_equal(together[: len(masks)], alone)
        assert np.array_equal(together[-len(masks) :], alone)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = dense_crf(image, many, return_logits=True).numpy()
        finally:
            torch.set_num_threads(threads)
        assert np.array_equal(one, together)

    @pytest.mark.parametrize(
        "params",
        [CRFParams(), CRFParams(iterations=3), CRFParams(gaussian_compat=-2.0)],
        ids=["published", "three-iterations", "negative-weight"],
    )
    def test_masks_that_vanish_end_early_with_the_same_map(self, params):
        """The MAP (where masks proven empty leave their lane early) equals the sign of the
        log-odds (every mask through all iterations), on a real image with masks that
        vanish and masks that stay, bool and soft, whatever their order or thread count."""
        from pathlib import Path

        from PIL import Image

        path = Path(__file__).resolve().parents[1] / "examples" / "images" / "coco_397133.jpg"
        image = np.asarray(Image.open(path).convert("RGB").resize((160, 120)))
        h, w = image.shape[:2]
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:h, 0:w]
        masks = []
        for _ in range(40):  # discs from 2 to 40 px across: the small ones vanish
            r = rng.uniform(1, 20)
            masks.append((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < r * r)
        grey = image.mean(2)
        for t in (60, 100, 140):  # regions of the image itself: these stay
            masks.append(grey > t)
        masks = np.stack(masks)
        logits = dense_crf(image, masks, params, return_logits=True).numpy()
        empty = ~(logits > 0).reshape(len(masks), -1).any(1)
        assert 5 <= empty.sum() <= len(masks) - 5, empty.sum()  # both kinds present
        got = dense_crf(image, masks, params).numpy()
        assert np.array_equal(got, logits > 0)
        order = rng.permutation(len(masks))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = dense_crf(image, masks[order], params).numpy()
        finally:
            torch.set_num_threads(threads)
        assert np.array_equal(one, got[order])
        soft = np.where(masks, 0.9, 0.05).astype(np.float32)
        soft_logits = dense_crf(image, soft, params, return_logits=True).numpy()
        assert np.array_equal(dense_crf(image, soft, params).numpy(), soft_logits > 0)

    def test_threads_sharing_a_pass_give_the_same_bits(self):
        """A few masks (one worker's lanes) on an image of >= 16384 pixels: the threads share
        each pass (points, then vertices); the same log-odds, bit for bit, as one thread."""
        from pathlib import Path

        from PIL import Image

        path = Path(__file__).resolve().parents[1] / "examples" / "images" / "coco_062554.jpg"
        image = np.asarray(Image.open(path).convert("RGB").resize((170, 130)))
        grey = image.mean(2)
        masks = np.stack([grey > 70, grey > 130, np.roll(grey < 90, 7, axis=1)])
        soft = np.where(masks, 0.8, 0.1).astype(np.float32)
        threads = torch.get_num_threads()
        got = {}
        try:
            for t in (1, 3):
                torch.set_num_threads(t)
                got[t] = [dense_crf(image, m, return_logits=True).numpy() for m in (masks, soft)]
                got[t].append(dense_crf(image, masks).numpy())
        finally:
            torch.set_num_threads(threads)
        for a, b in zip(got[1], got[3]):
            assert np.array_equal(a, b)
        assert np.array_equal(got[3][2], got[3][0] > 0)
        assert 0.05 < got[3][2].mean() < 0.95

    def test_a_mask_snaps_to_its_region(self):
        """Potts attracts: a blocky mask over most of a flat square grows to the square's
        edge and does not leak into the differently coloured background."""
        h = w = 40
        image = np.full((h, w, 3), 30, np.uint8)
        image[8:32, 8:32] = (200, 120, 40)
        mask = np.zeros((h, w), bool)
        mask[10:30, 10:26] = True  # misses 2-6 px of the square on each side
        got = dense_crf(image, mask).numpy()
        square = np.zeros((h, w), bool)
        square[8:32, 8:32] = True
        assert np.array_equal(got, square)

    def test_published_settings(self):
        p = CRFParams()
        assert (p.gaussian_sxy, p.gaussian_compat, p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat, p.iterations) == (
            3.0, 7.0, 50.0, 5.0, 10.0, 10,
        )

    @pytest.mark.parametrize(
        "image,masks,params,match",
        [
            (np.zeros((4, 5), np.uint8), np.zeros((1, 4, 5), bool), CRFParams(), "image should have shape"),
            (np.zeros((4, 5, 3), np.float32), np.zeros((1, 4, 5), bool), CRFParams(), "image should be uint8"),
            (np.zeros((4, 5, 3), np.uint8), np.zeros((1, 5, 4), bool), CRFParams(), "masks should have the image's"),
            (np.zeros((4, 5, 3), np.uint8), np.zeros((1, 4, 5), np.int32), CRFParams(), "masks should be bool or float"),
            (np.zeros((4, 5, 3), np.uint8), np.full((1, 4, 5), np.nan, np.float32), CRFParams(), "masks contains"),
            (np.zeros((4, 5, 3), np.uint8), np.zeros((1, 4, 5), bool), CRFParams(bilateral_srgb=0.0), "bilateral_srgb should be"),
            (np.zeros((4, 5, 3), np.uint8), np.zeros((1, 4, 5), bool), CRFParams(gaussian_compat=np.inf), "gaussian_compat should be"),
            (np.zeros((4, 5, 3), np.uint8), np.zeros((1, 4, 5), bool), CRFParams(iterations=-1), "iterations should be"),
        ],
    )
    def test_checks_name_the_argument(self, image, masks, params, match):
        with pytest.raises((ValueError, TypeError), match=match):
            dense_crf(image, masks, params)

    def test_the_op_checks_too(self):
        img = torch.zeros(4, 5, 3, dtype=torch.uint8)
        with pytest.raises(RuntimeError, match="masks should have shape \\[K, 4, 5\\]"):
            torch.ops.unsam.dense_crf(img, torch.zeros(1, 5, 4, dtype=torch.bool), 3.0, 7.0, 50.0, 5.0, 10.0, 10, False)
        with pytest.raises(RuntimeError, match="bilateral_sxy should be finite and > 0"):
            torch.ops.unsam.dense_crf(img, torch.zeros(1, 4, 5, dtype=torch.bool), 3.0, 7.0, -1.0, 5.0, 10.0, 10, False)

    def test_empty_inputs(self):
        img = np.zeros((6, 7, 3), np.uint8)
        out = dense_crf(img, np.zeros((0, 6, 7), bool))
        assert out.shape == (0, 6, 7) and out.dtype == torch.bool
        assert dense_crf(np.zeros((0, 7, 3), np.uint8), np.zeros((2, 0, 7), bool)).shape == (2, 0, 7)

    def test_opcheck(self):
        image, masks = _scene(6, 9, 11)
        args = (torch.from_numpy(image), torch.from_numpy(masks), 3.0, 7.0, 50.0, 5.0, 10.0, 2)
        for logits in (False, True):
            torch.library.opcheck(torch.ops.unsam.dense_crf.default, (*args, logits), test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))

    @pytest.mark.cuda
    def test_cuda_inputs_come_back_on_their_device(self):
        image, masks = _scene(7, 20, 24)
        cpu = dense_crf(image, masks)
        got = dense_crf(torch.from_numpy(image).cuda(), torch.from_numpy(masks).cuda())
        assert got.is_cuda and torch.equal(got.cpu(), cpu)


class TestReferences:
    """What the references prove about the algorithm itself."""

    @pytest.mark.parametrize("sxy", [2.0, 4.0])
    def test_the_lattice_blurs_with_the_given_width(self, sxy):
        """sxy is the standard deviation in pixels: the lattice's response to an impulse has
        that spread (within 3 %) and is a Gaussian's shape (correlation > 0.99)."""
        n = 45
        v = np.zeros((n * n, 1), np.float32)
        c = n // 2
        v[c * n + c] = 1
        out = lattice_filter(gaussian_features(n, n, sxy), v)[:, 0].reshape(n, n)
        yy, xx = np.mgrid[0:n, 0:n]
        r2 = (yy - c) ** 2 + (xx - c) ** 2
        assert abs(np.sqrt((out * r2).sum() / out.sum() / 2) / sxy - 1) < 0.03
        assert np.corrcoef(out.ravel(), np.exp(-r2 / (2 * sxy**2)).ravel())[0, 1] > 0.99

    def test_the_lattice_approximates_the_exact_kernels(self):
        """Where the answer is clear (flat regions, strong contrast, a blocky mask over most of
        one region), mean field with the kernels summed exactly over all pairs and with the
        lattice give the same MAP, the region: the lattice approximates this CRF. (Where
        the answer is not clear they can differ: in 5-D the lattice's kernel is narrower
        than exp(-|f|^2 / 2), as in the library.)"""
        rng = np.random.default_rng(9)
        h, w = 22, 26
        image = np.clip(rng.normal(40, 1, (h, w, 3)), 0, 255).astype(np.uint8)
        region = np.zeros((h, w), bool)
        region[4:18, 5:21] = True
        image[region] = np.clip(rng.normal((180, 90, 200), 1, (int(region.sum()), 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((h, w), bool)
        mask[5:17, 6:19] = True
        mask[9, 9] = False
        lattice = dense_crf_reference(image, mask).argmax(0) == 1
        exact = dense_crf_reference(image, mask, exact=True).argmax(0) == 1
        assert np.array_equal(lattice, region) and np.array_equal(exact, region)

    def test_the_reference_is_pydensecrf(self, data_dir):
        """The lattice reference is what pydensecrf2 computes (marginals within float32
        rounding), and the op's MAP is pydensecrf2's, on a real image crop."""
        dcrf = pytest.importorskip("pydensecrf.densecrf")
        from PIL import Image

        path = sorted((data_dir / "bsds500" / "images" / "val").glob("*.jpg"))[0]
        image = np.array(Image.open(path).convert("RGB"))[60:120, 100:190].copy()
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
        d = dcrf.DenseCRF2D(w, h, 2)
        d.setUnaryEnergy(np.ascontiguousarray(unary_from_mask(mask)))
        d.addPairwiseGaussian(sxy=3, compat=7)
        d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=image, compat=10)
        q = np.array(d.inference(10)).reshape(2, h, w)
        assert np.abs(q - dense_crf_reference(image, mask)).max() < 1e-5
        assert np.array_equal(dense_crf(image, mask).numpy(), q.argmax(0) == 1)
