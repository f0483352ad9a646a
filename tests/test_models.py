"""Models, matching, losses and point sampling (unsam.models), with known answers."""

import math

import numpy as np
import pytest
import torch

from unsam.models import (
    MaskFormer,
    PromptSegmenter,
    checkpoint_filter_fn,
    create_model,
    hungarian_match,
    list_models,
    point_sample,
    select_queries,
)
from unsam.models.losses import (
    HungarianMatcher,
    PromptCriterion,
    SetCriterion,
    dice_loss,
    pairwise_dice,
    pairwise_sigmoid_ce,
    sigmoid_ce_loss,
    uncertain_point_coords,
)


@pytest.fixture(scope="module")
def whole():
    torch.manual_seed(0)
    return create_model("unsam_whole_tiny", dec_layers=2, num_queries=8).eval()


@pytest.fixture(scope="module")
def prompt():
    torch.manual_seed(0)
    return create_model("unsam_prompt_tiny").eval()


class TestRegistry:
    def test_variants(self):
        names = list_models()
        for n in ("unsam_whole_tiny", "unsam_whole_vitb8", "unsam_prompt_tiny", "unsam_prompt_vitb8"):
            assert n in names
        assert all(n.startswith("unsam_whole_") for n in list_models("whole"))

    def test_unknown_name(self):
        with pytest.raises(ValueError, match="unknown model 'nope'.*unsam_whole_tiny"):
            create_model("nope")

    def test_bad_keyword_names_the_model(self):
        with pytest.raises(ValueError, match="unsam_whole_tiny.*num_querys"):
            create_model("unsam_whole_tiny", num_querys=3)

    def test_classic_backbone_refused(self):
        with pytest.raises(ValueError, match="classic.*nothing to train"):
            MaskFormer(backbone="classic")

    def test_bad_out_indices(self):
        with pytest.raises(ValueError, match="out_indices"):
            create_model("unsam_whole_tiny", out_indices=[5])

    def test_bad_sizes(self):
        with pytest.raises(ValueError, match="divisible"):
            create_model("unsam_whole_tiny", dim=30, num_heads=4)


class TestWholeModel:
    def test_shapes(self, whole):
        out = whole(torch.rand(2, 3, 64, 96))
        assert out["pred_logits"].shape == (2, 8, 2)
        assert out["pred_masks"].shape == (2, 8, 16, 24)  # stride p / 2 = 4
        assert len(out["aux_outputs"]) == 2  # initial queries + one per layer but the last

    def test_samples_independent_of_batch(self, whole):
        # No batch statistics anywhere (GroupNorm): needed for DDP == one process.
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            both = whole(x)["pred_masks"]
            one = whole(x[1:])["pred_masks"]
        torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-4)

    def test_input_must_fit_patches(self, whole):
        with pytest.raises(ValueError, match="multiples of the patch size 8"):
            whole(torch.rand(1, 3, 60, 64))

    def test_gradients_reach_every_parameter(self):
        m = create_model("unsam_whole_tiny", dec_layers=2, num_queries=4)
        out = m(torch.rand(1, 3, 32, 32))
        loss = out["pred_logits"].sum() + out["pred_masks"].sum() + sum(a["pred_masks"].sum() for a in out["aux_outputs"])
        loss.backward()
        assert [n for n, p in m.named_parameters() if p.grad is None] == []

    def test_grad_checkpointing_same_gradients(self):
        torch.manual_seed(1)
        a = create_model("unsam_whole_tiny", dec_layers=1, num_queries=4)
        b = create_model("unsam_whole_tiny", dec_layers=1, num_queries=4, grad_checkpointing=True)
        b.load_state_dict(a.state_dict())
        x = torch.rand(1, 3, 32, 32)
        for m in (a, b):
            m.train()
            m(x)["pred_masks"].square().mean().backward()
        ga = a.backbone.vit.blocks[0].attn.qkv.weight.grad
        gb = b.backbone.vit.blocks[0].attn.qkv.weight.grad
        torch.testing.assert_close(ga, gb)


class TestPromptModel:
    def test_shapes(self, prompt):
        pts = torch.tensor([[[5.0, 5.0], [40.0, 20.0], [60.0, 60.0]]])
        out = prompt(torch.rand(1, 3, 64, 64), pts)
        assert out["pred_masks"].shape == (1, 3, 6, 16, 16)  # stride p / 2 = 4
        assert out["pred_iou"].shape == (1, 3, 6)
        assert ((out["pred_iou"] >= 0) & (out["pred_iou"] <= 1)).all()

    def test_clicks_are_independent_prompts(self, prompt):
        x = torch.rand(1, 3, 64, 64)
        pts = torch.tensor([[[5.0, 5.0], [40.0, 20.0]]])
        with torch.no_grad():
            f = prompt.forward_features(x)
            both = prompt.forward_head(f, pts)["pred_masks"]
            second = prompt.forward_head(f, pts[:, 1:])["pred_masks"]
        torch.testing.assert_close(both[:, 1:], second, atol=1e-5, rtol=1e-4)

    def test_bad_points(self, prompt):
        with pytest.raises(ValueError, match=r"points should be \[B=1, P, 2\]"):
            prompt(torch.rand(1, 3, 32, 32), torch.zeros(1, 3))


def test_checkpoint_filter_keeps_fitting_tensors(whole, prompt):
    state = {"model": {"module." + k: v for k, v in whole.state_dict().items()}}
    out = checkpoint_filter_fn(state, prompt)
    # The trunk is shared, the heads are not.
    assert any(k.startswith("backbone.vit.blocks.0") for k in out)
    assert not any(k.startswith("query_feat") for k in out)
    own = prompt.state_dict()
    assert all(own[k].shape == v.shape for k, v in out.items())


# ----------------------------------------------------------------------------- matching


class TestHungarian:
    def test_known_optimum_beats_greedy(self):
        # Greedy would take the 0 at (1, 1) and end with cost 6; the optimum is 1 + 2 + 2 = 5.
        cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
        rows, cols = hungarian_match(cost)
        assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
        assert cost[rows, cols].sum().item() == 5.0

    def test_rectangular(self):
        cost = torch.tensor([[9.0, 9.0], [1.0, 9.0], [9.0, 1.0], [9.0, 9.0]])
        rows, cols = hungarian_match(cost)
        assert rows.tolist() == [1, 2] and cols.tolist() == [0, 1]

    def test_empty_and_nan(self):
        r, c = hungarian_match(torch.zeros(5, 0))
        assert r.numel() == 0 and c.numel() == 0
        with pytest.raises(ValueError, match="NaN or inf"):
            hungarian_match(torch.tensor([[float("nan"), 1.0]]))

    def test_matcher_finds_the_swapped_masks(self):
        left = torch.zeros(32, 32)
        left[:, :16] = 1
        right = 1 - left
        targets = torch.stack([left, right])
        # Predictions: 0 = right, 1 = noise, 2 = left (as logits).
        masks = torch.stack([right, torch.rand(32, 32), left]) * 20 - 10
        logits = torch.tensor([[3.0, -3.0], [-3.0, 3.0], [3.0, -3.0]])
        rows, cols = HungarianMatcher(num_points=512)(logits, masks, targets, torch.Generator().manual_seed(0))
        assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


# ------------------------------------------------------------------------------- losses


class TestLosses:
    def test_sigmoid_ce_at_zero_is_log2(self):
        v = sigmoid_ce_loss(torch.zeros(2, 5), torch.tensor([[1.0, 0, 1, 0, 1], [0.0] * 5]))
        torch.testing.assert_close(v, torch.full((2,), math.log(2)))

    def test_dice_hand_computed(self):
        # p = 0.5 everywhere, t = [1, 1, 0, 0]: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
        v = dice_loss(torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
        torch.testing.assert_close(v, torch.tensor([0.4]))
        t = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
        assert dice_loss(t * 40 - 20, t).item() < 1e-6  # perfect
        assert dice_loss((1 - t) * 40 - 20, t).item() == pytest.approx(0.8, abs=1e-6)  # disjoint: 1 - 1 / (2 + 2 + 1)

    def test_pairwise_equals_elementwise(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 50, generator=g)
        t = (torch.rand(3, 50, generator=g) > 0.5).float()
        ce, dc = pairwise_sigmoid_ce(x, t), pairwise_dice(x, t)
        for i in range(4):
            for j in range(3):
                torch.testing.assert_close(ce[i, j], sigmoid_ce_loss(x[i : i + 1], t[j : j + 1])[0])
                torch.testing.assert_close(dc[i, j], dice_loss(x[i : i + 1], t[j : j + 1])[0])

    def test_set_criterion_perfect_vs_wrong(self):
        left = torch.zeros(1, 32, 32, dtype=torch.bool)
        left[..., :16] = True
        targets = [left]
        good = {"pred_logits": torch.tensor([[[8.0, -8.0], [-8.0, 8.0]]]), "pred_masks": (left.float() * 40 - 20).expand(1, 2, 32, 32).clone()}
        bad = {"pred_logits": torch.tensor([[[-8.0, 8.0], [-8.0, 8.0]]]), "pred_masks": ((~left).float() * 40 - 20).expand(1, 2, 32, 32).clone()}
        # Uniform points: importance sampling would pick the border. There the bilinearly sampled
        # target is soft (e.g. 0.3) while a perfect prediction's logit is large, so BCE is not ~0
        # even for a perfect mask; dice and CE are.
        crit = SetCriterion(num_points=256, importance_ratio=0.0, aux_loss=False)
        lg, lb = crit(good, targets, [0]), crit(bad, targets, [0])
        assert lg["loss_ce"].item() < 1e-3 and lg["loss_dice"].item() < 0.05 and lg["loss_mask"].item() < 0.2
        assert lb["loss_mask"].item() > 5 * lg["loss_mask"].item()
        assert lb["loss_dice"].item() > 0.9 and lb["loss_ce"].item() > 1.0

    def test_set_criterion_no_object_weight(self):
        # No targets: every query is no-object; CE = mean CE of no-object (weights cancel).
        out = {"pred_logits": torch.zeros(1, 3, 2), "pred_masks": torch.zeros(1, 3, 8, 8, requires_grad=True)}
        loss = SetCriterion(num_points=16, aux_loss=False)(out, [torch.zeros(0, 8, 8)], [0])
        assert loss["loss_ce"].item() == pytest.approx(math.log(2), rel=1e-5)
        assert loss["loss_mask"].item() == 0.0
        loss["loss"].backward()  # the graph stays connected

    def test_set_criterion_deterministic_per_seed(self):
        g = torch.Generator().manual_seed(3)
        out = {"pred_logits": torch.randn(1, 4, 2, generator=g), "pred_masks": torch.randn(1, 4, 16, 16, generator=g)}
        tg = [torch.rand(2, 32, 32, generator=g) > 0.5]
        crit = SetCriterion(num_points=64)
        assert crit(out, tg, [7])["loss"].item() == crit(out, tg, [7])["loss"].item()
        assert crit(out, tg, [7])["loss"].item() != crit(out, tg, [8])["loss"].item()

    def test_prompt_criterion(self):
        inner = torch.zeros(32, 32, dtype=torch.bool)
        inner[8:16, 8:16] = True
        outer = torch.zeros(32, 32, dtype=torch.bool)
        outer[4:28, 4:28] = True
        targets = [torch.stack([inner, outer])]
        # Two outputs: output 0 = outer, output 1 = inner (matching must swap them); IoU predictions right.
        masks = torch.stack([outer, inner]).float() * 40 - 20
        out = {"pred_masks": masks.view(1, 1, 2, 32, 32), "pred_iou": torch.ones(1, 1, 2)}
        crit = PromptCriterion(num_points=512, importance_ratio=0.0)
        loss = crit(out, targets, [torch.tensor([[0, 1]])], [0])
        assert loss["loss_mask"].item() < 0.2 and loss["loss_dice"].item() < 0.1 and loss["loss_iou"].item() < 1e-6
        swapped = crit({**out, "pred_masks": out["pred_masks"].flip(2)}, targets, [torch.tensor([[0, 1]])], [0])
        # Matching undoes the swap (the points differ a little: they are drawn per matched pair).
        assert swapped["loss_dice"].item() < 0.1 and swapped["loss_mask"].item() == pytest.approx(loss["loss_mask"].item(), rel=0.2)
        # A click without targets is ignored; a wrong IoU guess is penalised.
        out["pred_iou"] = torch.zeros(1, 1, 2)
        loss = crit(out, targets, [torch.tensor([[0, 1]])], [0])
        assert loss["loss_iou"].item() == pytest.approx(1.0)
        loss = crit(out, targets, [torch.tensor([[-1, -1]])], [0])
        assert loss["loss"].item() == 0.0


# ----------------------------------------------------------------------------- sampling


class TestPointSampling:
    def test_pixel_centres_are_exact(self):
        img = torch.arange(12.0).view(1, 1, 3, 4)
        ys, xs = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
        coords = torch.stack([(xs.flatten() + 0.5) / 4, (ys.flatten() + 0.5) / 3], 1)[None]
        torch.testing.assert_close(point_sample(img, coords)[0, 0], torch.arange(12.0))

    def test_bilinear_between_centres(self):
        img = torch.tensor([[[[0.0, 10.0]]]])  # centres at x = 0.25 and 0.75
        v = point_sample(img, torch.tensor([[[0.5, 0.5], [0.375, 0.5]]]))
        torch.testing.assert_close(v[0, 0], torch.tensor([5.0, 2.5]))

    def test_importance_points_land_on_uncertain_band(self):
        logits = torch.full((1, 1, 64, 64), 10.0)
        logits[..., 30:34] = 0.0  # the only uncertain columns: x in [30/64, 34/64]
        g = torch.Generator().manual_seed(0)
        pts = uncertain_point_coords(logits, 200, oversample_ratio=20.0, importance_ratio=1.0, generator=g)
        assert pts.shape == (1, 200, 2)
        x = pts[0, :, 0]
        # Bilinear values are 0 strictly inside the band's centre span, rising at its edges.
        assert ((x > 29.5 / 64) & (x < 34.5 / 64)).all()

    def test_uniform_when_importance_is_zero(self):
        g = torch.Generator().manual_seed(0)
        pts = uncertain_point_coords(torch.zeros(2, 1, 8, 8), 4000, 3.0, 0.0, g)
        assert pts.min() >= 0 and pts.max() <= 1
        assert abs(pts.mean().item() - 0.5) < 0.02

    def test_bad_ratios(self):
        with pytest.raises(ValueError, match="importance_ratio"):
            uncertain_point_coords(torch.zeros(1, 1, 4, 4), 4, 3.0, 1.5)


def test_select_queries_score_and_order():
    # Query 0: P(object) ~ 1, its mask logits +2 inside (sigmoid 0.88); query 1: P ~ 0.5, +4 inside;
    # query 2: empty mask (dropped).
    masks = torch.full((3, 4, 4), -5.0)
    masks[0, :2, :2] = 2.0
    masks[1, 2:, 2:] = 4.0
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0], [10.0, -10.0]])
    idx, scores = select_queries(logits, masks, (16, 16), stride=4, topk=10)
    s0, s1 = torch.sigmoid(torch.tensor(2.0)), 0.5 * torch.sigmoid(torch.tensor(4.0))
    assert idx.tolist() == [0, 1]
    torch.testing.assert_close(scores, torch.stack([s0, s1]), atol=1e-4, rtol=1e-4)
    # The padding is not part of the image: a mask only there is empty.
    masks2 = torch.full((1, 4, 4), -5.0)
    masks2[0, 3, 3] = 5.0
    idx, _ = select_queries(torch.tensor([[5.0, -5.0]]), masks2, (8, 8), stride=4)
    assert idx.numel() == 0
    assert np.isfinite(scores.numpy()).all()


def test_prompt_segmenter_from_registry_is_promptable():
    m = create_model("unsam_prompt_tiny", num_outputs=3)
    assert isinstance(m, PromptSegmenter) and m.task == "prompt" and m.num_outputs == 3


@pytest.mark.parametrize("name", ["unsam_whole_tiny", "unsam_prompt_tiny"])
def test_bf16_autocast_step(name):
    """The dtype path of a GPU step (bf16 autocast; losses in float32), checked with CPU autocast."""
    torch.manual_seed(0)
    m = create_model(name)
    x = torch.rand(1, 3, 32, 32)
    targets = [torch.zeros(2, 32, 32, dtype=torch.bool)]
    targets[0][0, :16] = True
    targets[0][1, :, :16] = True
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = m(x) if m.task == "whole" else m(x, torch.tensor([[[4.0, 4.0]]]))
    if m.task == "whole":
        assert out["pred_masks"].dtype == torch.bfloat16
        loss = SetCriterion(num_points=64)(out, targets, [0])
    else:
        loss = PromptCriterion(num_points=64)(out, targets, [torch.tensor([[0, 1]])], [0])
    assert loss["loss"].dtype == torch.float32 and torch.isfinite(loss["loss"])
    loss["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
