"""Stage 1 — patch features: classic extractor, DINO key path, checkpoints, registry."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unsam.label.features import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassicFeatures,
    PatchFeatures,
    build_extractor,
    extract,
    load_checkpoint_state,
    rgb_to_lab,
)

timm = pytest.importorskip("timm")
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402


def _tiny_vit(seed: int, embed_dim: int = 48, depth: int = 2, heads: int = 3) -> VisionTransformer:
    """The vit_tiny_test architecture with weights of our own (not the registry's seed)."""
    torch.manual_seed(seed)
    m = VisionTransformer(
        img_size=64,
        patch_size=8,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        num_classes=0,
        dynamic_img_size=True,
    )
    # Non-trivial norms and biases so that a half-loaded model cannot pass by accident.
    with torch.no_grad():
        for _, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def _manual_keys(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Last-block keys written out by hand: conv patchify, CLS, explicitly resampled
    position embeddings, blocks[:-1], norm1, qkv, the K third."""
    b, _, height, width = images.shape
    h, w = height // 8, width // 8
    x = model.patch_embed.proj(_normalise(images)).flatten(2).transpose(1, 2)  # [B, hw, D]
    x = torch.cat([model.cls_token.expand(b, -1, -1), x], 1)
    pos = resample_abs_pos_embed(model.pos_embed, new_size=(h, w), old_size=(8, 8), num_prefix_tokens=1)
    x = x + pos
    for blk in model.blocks[:-1]:
        x = blk(x)
    qkv = model.blocks[-1].attn.qkv(model.blocks[-1].norm1(x))
    c = qkv.shape[-1] // 3
    return qkv[:, 1:, c : 2 * c].reshape(b, h, w, c)


@torch.no_grad()
def _hooked_keys(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Keys captured by a forward hook on the last qkv during timm's own full forward."""
    got = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: got.setdefault("qkv", o))
    try:
        model.forward_features(_normalise(images))
    finally:
        handle.remove()
    qkv = got["qkv"]
    c = qkv.shape[-1] // 3
    b, _, height, width = images.shape
    return qkv[:, model.num_prefix_tokens :, c : 2 * c].reshape(b, height // 8, width // 8, c)


def _two_halves(height=64, width=128, seed=0) -> torch.Tensor:
    """Left: smooth reddish with mild noise. Right: bluish vertical stripes."""
    g = torch.Generator().manual_seed(seed)
    img = torch.empty(3, height, width)
    img[:, :, : width // 2] = torch.tensor([0.8, 0.3, 0.2]).view(3, 1, 1)
    stripes = (torch.arange(width - width // 2) // 2 % 2).float() * 0.4
    img[:, :, width // 2 :] = torch.tensor([0.2, 0.3, 0.5]).view(3, 1, 1) + stripes.view(1, 1, -1)
    img += 0.03 * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1)[None]


def _mean_cos(f: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    f = F.normalize(f.reshape(-1, f.shape[-1]), dim=1)
    return (f[a.flatten()] @ f[b.flatten()].T).mean().item()


# --------------------------------------------------------------------------- registry


class TestRegistry:
    def test_entries(self):
        expected = {
            "dino_vitb8": ("vit_base_patch8_224.dino", 8, 768),
            "dino_vits8": ("vit_small_patch8_224.dino", 8, 384),
            "dino_vits16": ("vit_small_patch16_224.dino", 16, 384),
            "dino_vitb16": ("vit_base_patch16_224.dino", 16, 768),
            "dinov2_vits14": ("vit_small_patch14_dinov2.lvd142m", 14, 384),
            "dinov2_vitb14": ("vit_base_patch14_dinov2.lvd142m", 14, 768),
            "classic": (None, 8, 18),
            "vit_tiny_test": (None, 8, 48),
        }
        assert set(BACKBONES) == set(expected)
        for name, (timm_name, p, dim) in expected.items():
            spec = BACKBONES[name]
            assert (spec.name, spec.timm_name, spec.patch_size, spec.dim) == (name, timm_name, p, dim)
            assert 0 < spec.tau < 1
            th = spec.merge_thresholds
            assert len(th) >= 1 and all(a > b for a, b in zip(th, th[1:]))
        assert BACKBONES["dino_vitb8"].tau == 0.15
        assert BACKBONES["dino_vitb8"].merge_thresholds == (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)

    def test_unknown_name_lists_available(self):
        with pytest.raises(ValueError, match="unknown backbone 'dino_vitx9'.*dino_vitb8.*classic"):
            build_extractor("dino_vitx9")

    def test_classic_takes_no_checkpoint(self, tmp_path):
        with pytest.raises(ValueError, match="weight-free"):
            build_extractor("classic", checkpoint=tmp_path / "x.pth")


# ---------------------------------------------------------------------------- classic


class TestClassic:
    @pytest.mark.parametrize("hw", [(64, 64), (48, 96), (480, 320)])
    def test_shape_dtype(self, hw):
        ext = build_extractor("classic")
        assert isinstance(ext, PatchFeatures) and (ext.name, ext.patch_size, ext.dim) == ("classic", 8, 18)
        out = ext(torch.rand(2, 3, *hw))
        assert out.shape == (2, hw[0] // 8, hw[1] // 8, 18) and out.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_centred_and_deterministic(self):
        ext = build_extractor("classic")
        x = torch.rand(3, 3, 64, 96, generator=torch.Generator().manual_seed(1))
        a, b = ext(x), ext(x.clone())
        assert torch.equal(a, b)
        mean = a.mean(dim=(1, 2))
        assert mean.abs().max() < 1e-5 * a.abs().max()
        assert a.abs().max() > 0.1

    def test_batch_equals_single_and_chunking(self):
        x = torch.rand(5, 3, 32, 48, generator=torch.Generator().manual_seed(2))
        whole = ClassicFeatures(chunk_pixels=1 << 30)(x)
        chunked = ClassicFeatures(chunk_pixels=2 * 32 * 48)(x)  # chunks of 2 images
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
        for i in range(5):
            torch.testing.assert_close(whole[i : i + 1], ClassicFeatures()(x[i : i + 1]), rtol=0, atol=1e-5)

    def test_uniform_image_gives_zero(self):
        out = build_extractor("classic")(torch.full((1, 3, 32, 32), 0.4))
        # Only position varies on a uniform image; without the position weight all is 0.
        assert out[..., :16].abs().max() < 1e-5
        ext = ClassicFeatures(w_position=0.0)
        assert ext(torch.full((1, 3, 32, 32), 0.4)).abs().max() < 1e-5

    def test_separates_halves(self):
        x = _two_halves()
        f = build_extractor("classic")(x)[0]  # [8, 16, 18]
        left = torch.zeros(8, 16, dtype=torch.bool)
        left[:, :8] = True
        within = min(_mean_cos(f, left, left), _mean_cos(f, ~left, ~left))
        between = _mean_cos(f, left, ~left)
        assert within > 0.5 and between < 0.0 and within > between + 0.8

    def test_texture_alone_separates(self):
        # Same mean colour on both sides: flat grey vs black/white stripes.
        x = torch.full((1, 3, 64, 128), 0.5)
        x[..., 64:] = (torch.arange(64) // 2 % 2).float().view(1, 1, 1, -1) * 0.6 + 0.2
        ext = ClassicFeatures(w_color=0.0, w_position=0.0)
        f = ext(x)[0]
        left = torch.zeros(8, 16, dtype=torch.bool)
        left[:, :8] = True
        assert _mean_cos(f, left, left) > 0.9 and _mean_cos(f, ~left, ~left) > 0.9
        assert _mean_cos(f, left, ~left) < -0.9

    def test_weights_scale_groups(self):
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        base = ClassicFeatures()(x)
        ext = ClassicFeatures()
        ext.w_color, ext.w_texture, ext.w_position = 2.0 * ext.w_color, 0.0, ext.w_position
        out = ext(x)
        torch.testing.assert_close(out[..., :6], 2 * base[..., :6])
        assert out[..., 6:16].abs().max() == 0
        torch.testing.assert_close(out[..., 16:], base[..., 16:])

    def test_rgb_to_lab_reference_values(self):
        rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
        lab = rgb_to_lab(rgb.view(1, 5, 3).permute(0, 2, 1).unsqueeze(-1))[0, :, :, 0].T
        expected = torch.tensor(
            [
                [100.0, 0.0, 0.0],
                [0.0, 0.0, 0.0],
                [53.24, 80.09, 67.20],
                [32.30, 79.19, -107.86],
                [53.39, 0.0, 0.0],
            ]
        )
        torch.testing.assert_close(lab, expected, atol=0.05, rtol=0)

    def test_input_errors(self):
        ext = build_extractor("classic")
        with pytest.raises(ValueError, match="multiples of the patch size 8, got 60x64"):
            ext(torch.rand(1, 3, 60, 64))
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
            ext(torch.rand(1, 4, 64, 64))
        with pytest.raises(ValueError, match="uint8"):
            ext(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
        assert ext(torch.rand(0, 3, 64, 32)).shape == (0, 8, 4, 18)


# ------------------------------------------------------------------------------- ViT


class TestViT:
    @pytest.mark.parametrize("hw", [(64, 64), (48, 80), (136, 96)])
    def test_tiny_shape_and_interpolated_positions(self, hw):
        ext = build_extractor("vit_tiny_test")
        assert (ext.patch_size, ext.dim) == (8, 48)
        x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(4))
        out = ext(x)
        assert out.shape == (2, hw[0] // 8, hw[1] // 8, 48) and out.dtype == torch.float32
        # Native grid is 8 x 8; other sizes must use resampled position embeddings.
        torch.testing.assert_close(out, _manual_keys(ext.model, x), rtol=1e-4, atol=1e-4)

    def test_equals_hook_on_timm_forward(self):
        ext = build_extractor("vit_tiny_test")
        x = torch.rand(3, 3, 40, 72, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(ext(x), _hooked_keys(ext.model, x), rtol=1e-4, atol=1e-4)

    def test_eval_no_grad_and_inference(self):
        ext = build_extractor("vit_tiny_test")
        assert not ext.training and not ext.model.training
        assert not any(p.requires_grad for p in ext.parameters())
        out = ext(torch.rand(1, 3, 16, 16, requires_grad=True))
        assert not out.requires_grad

    @pytest.mark.parametrize(
        ("name", "hw", "grid", "dim"),
        [("dino_vits16", (64, 96), (4, 6), 384), ("dinov2_vits14", (70, 98), (5, 7), 384)],
    )
    def test_real_architecture_random_weights(self, name, hw, grid, dim):
        ext = build_extractor(name, pretrained=False)
        out = ext(torch.rand(1, 3, *hw))
        assert out.shape == (1, *grid, dim) and out.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_not_multiple_of_patch(self):
        ext = build_extractor("vit_tiny_test")
        with pytest.raises(ValueError, match="vit_tiny_test: .*multiples of the patch size 8, got 64x65"):
            ext(torch.rand(1, 3, 64, 65))


# ------------------------------------------------------------------------ checkpoints


def _wrap(sd: dict, how: str) -> dict:
    if how == "raw":
        return sd
    if how == "model+module":
        return {"model": {"module." + k: v for k, v in sd.items()}, "epoch": torch.tensor(3)}
    if how == "dino_teacher":
        # DINO's layout: backbone under "backbone.", projection head beside it.
        inner = {"backbone." + k: v for k, v in sd.items()}
        inner["head.mlp.0.weight"] = torch.zeros(16, 48)
        return {"teacher": inner, "student": {"backbone." + k: torch.zeros_like(v) for k, v in sd.items()}}
    raise AssertionError(how)


class TestCheckpoint:
    @pytest.mark.parametrize("how", ["raw", "model+module", "dino_teacher"])
    def test_loads_and_matches_manual_keys(self, tmp_path, how):
        ref = _tiny_vit(seed=123)
        path = tmp_path / f"{how}.pth"
        torch.save(_wrap(ref.state_dict(), how), path)
        ext = build_extractor("vit_tiny_test", checkpoint=path)
        x = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(6))
        got = ext(x)
        torch.testing.assert_close(got, _manual_keys(ref, x), rtol=1e-4, atol=1e-4)
        # The seeded default weights differ: the checkpoint was really used.
        assert (got - build_extractor("vit_tiny_test")(x)).abs().max() > 1e-2

    def test_load_checkpoint_state_strips_prefixes(self, tmp_path):
        sd = {"a.weight": torch.ones(2)}
        torch.save({"state_dict": {"module.backbone.a.weight": torch.ones(2), "meta": 3}}, tmp_path / "c.pth")
        out = load_checkpoint_state(tmp_path / "c.pth")
        assert list(out) == ["a.weight"] and torch.equal(out["a.weight"], sd["a.weight"])

    def test_wrong_shapes_clear_error(self, tmp_path):
        path = tmp_path / "wide.pth"
        torch.save(_tiny_vit(seed=0, embed_dim=64, heads=4).state_dict(), path)
        msg = r"does not fit backbone 'vit_tiny_test'.*shape mismatch.*blocks\.0\."
        with pytest.raises(ValueError, match=msg) as e:
            build_extractor("vit_tiny_test", checkpoint=path)
        assert "(64" in str(e.value) and "48" in str(e.value)

    def test_missing_blocks_clear_error(self, tmp_path):
        path = tmp_path / "shallow.pth"
        torch.save(_tiny_vit(seed=0, depth=1).state_dict(), path)
        with pytest.raises(ValueError, match=r"missing weights \(blocks\.1\."):
            build_extractor("vit_tiny_test", checkpoint=path)

    def test_not_a_checkpoint(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
            build_extractor("vit_tiny_test", checkpoint=tmp_path / "nope.pth")
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"not a torch file")
        with pytest.raises(ValueError, match="cannot read checkpoint"):
            build_extractor("vit_tiny_test", checkpoint=bad)

    def test_dinov2_layout_goes_through_timm_filter(self, tmp_path):
        # An original DINOv2 file has a mask_token (and DINO's teacher/backbone. nesting
        # is common in training checkpoints): timm's checkpoint filter must drop it.
        ref = _tiny_vit(seed=321)
        sd = {"backbone." + k: v for k, v in ref.state_dict().items()}
        sd["backbone.mask_token"] = torch.zeros(1, 48)
        path = tmp_path / "dinov2_style.pth"
        torch.save({"teacher": sd}, path)
        ext = build_extractor("vit_tiny_test", checkpoint=path)
        for k, v in ref.state_dict().items():
            assert torch.equal(ext.model.state_dict()[k], v), k


def test_no_network_error_names_options(monkeypatch, tmp_path):
    # Never touch the network and never find cached weights, whatever this machine has.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(RuntimeError) as e:
        build_extractor("dino_vits16")
    msg = str(e.value)
    assert "dino_vits16" in msg and "--checkpoint FILE" in msg and "--backbone classic" in msg


# ---------------------------------------------------------------------------- extract


class TestExtract:
    def test_list_of_uint8_different_sizes(self):
        rng = np.random.default_rng(0)
        imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (64, 64), (33, 120)]]
        ext = build_extractor("classic")
        out = extract(imgs, ext, size=(48, 64), batch_size=2)
        assert out.shape == (3, 6, 8, 18) and out.dtype == torch.float32
        one = extract(imgs, ext, size=(48, 64), batch_size=8)
        torch.testing.assert_close(out, one, rtol=0, atol=1e-5)
        # Same as resizing by hand and calling the extractor.
        t = torch.from_numpy(imgs[0]).permute(2, 0, 1)[None].float() / 255
        t = F.interpolate(t, size=(48, 64), mode="bilinear", antialias=True, align_corners=False)
        torch.testing.assert_close(out[:1], ext(t.clamp(0, 1)), rtol=0, atol=1e-5)

    def test_tensor_input_and_no_resize(self):
        ext = build_extractor("vit_tiny_test")
        x = torch.rand(3, 3, 32, 40)
        torch.testing.assert_close(extract(x, ext, size=None, batch_size=2), ext(x), rtol=1e-5, atol=1e-5)
        u8 = (x * 255).round().to(torch.uint8)
        assert extract(u8, ext, size=(16, 24)).shape == (3, 2, 3, 48)

    def test_errors_and_empty(self):
        ext = build_extractor("classic")
        with pytest.raises(ValueError, match="H x W x 3"):
            extract([np.zeros((8, 8), np.uint8)], ext, size=(8, 8))
        with pytest.raises(ValueError, match="multiples of the patch size 8"):
            extract([np.zeros((8, 8, 3), np.uint8)], ext, size=(10, 8))
        assert extract([], ext, size=(16, 8)).shape == (0, 2, 1, 18)


# ------------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCUDA:
    def test_classic_matches_cpu(self):
        x = torch.rand(4, 3, 64, 96, generator=torch.Generator().manual_seed(7))
        cpu = build_extractor("classic")(x)
        gpu = build_extractor("classic", device="cuda")(x.cuda())
        assert gpu.is_cuda and gpu.dtype == torch.float32
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)

    def test_vit_bf16_autocast_close_to_cpu(self):
        x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(8))
        cpu = build_extractor("vit_tiny_test")(x)
        gpu = build_extractor("vit_tiny_test", device="cuda")(x.cuda())
        assert gpu.dtype == torch.float32
        cos = F.cosine_similarity(gpu.cpu().flatten(0, 2), cpu.flatten(0, 2), dim=-1)
        assert cos.min() > 0.99
        assert math.isfinite(gpu.abs().max().item())
