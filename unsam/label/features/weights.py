"""Weights: timm's pretrained download (cache first, no hang without network), the tiny test
ViT, and local checkpoints (raw or wrapped state dicts, DINO / DINOv2 key names)."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

__all__ = ["create_timm", "create_tiny_vit", "load_checkpoint_state", "load_into"]

from unsam.label.features.registry import BackboneSpec


def _weights_unavailable(name: str, spec: BackboneSpec, cause: BaseException | None) -> RuntimeError:
    why = ""
    if cause is not None:
        first = (str(cause).strip().splitlines() or [""])[0]
        why = f" ({type(cause).__name__}: {first})"
    return RuntimeError(
        f"cannot get pretrained weights for backbone '{name}' (timm '{spec.timm_name}'): "
        f"the download failed and they are not in the local cache{why}. "
        f"No network? Pass a local weights file with --checkpoint FILE "
        f"(build_extractor(..., checkpoint=FILE); original DINO/DINOv2 .pth files work), "
        f"or use the weight-free extractor with --backbone classic."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (fails in ~0 s without DNS)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hf_offline():
    """Temporarily make huggingface_hub cache-only (it reads the flag at call time)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm without the hub: URL loads only
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def create_timm(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise RuntimeError(
            f"backbone '{spec.name}' needs timm (pip install 'unsam[full]'); "
            "the weight-free --backbone classic does not"
        ) from e
    kwargs = dict(num_classes=0, dynamic_img_size=True)
    if not pretrained:
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    # Cache first, without touching the network. Only then download — and skip the
    # download when the hub cannot even be resolved: huggingface_hub would otherwise
    # retry for ~45 s before failing on a machine without network.
    try:
        with _hf_offline():
            return timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here means "not cached"
        cached_err = e
    if not _hub_reachable():
        raise _weights_unavailable(spec.name, spec, cached_err)
    try:
        return timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - network, HTTP and cache errors differ per hub version
        raise _weights_unavailable(spec.name, spec, e) from e


def create_tiny_vit() -> nn.Module:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as e:
        raise RuntimeError("backbone 'vit_tiny_test' needs timm (pip install 'unsam[full]')") from e
    # Seeded so that two builds without a checkpoint give the same random weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VisionTransformer(
            img_size=64,
            patch_size=8,
            embed_dim=48,
            depth=2,
            num_heads=3,
            num_classes=0,
            dynamic_img_size=True,
        )


_WRAPPER_KEYS = ("teacher", "model", "state_dict", "student")  # teacher first: DINO evaluates the teacher
_PREFIXES = ("module.", "backbone.", "_orig_mod.")


def load_checkpoint_state(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file into a flat state_dict of tensors.

    Accepts a raw state_dict or one nested under ``teacher`` / ``model`` /
    ``state_dict`` / ``student`` (first found, repeatedly), and strips
    ``module.``, ``backbone.`` and ``_orig_mod.`` key prefixes (DDP, DINO's
    MultiCropWrapper, torch.compile). Loaded with ``weights_only=True``:
    pickled Python objects are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            raise ValueError(
                f"cannot read checkpoint {path} with torch.load(weights_only=True): {e}. "
                "A training checkpoint that pickles Python objects (e.g. DINO's checkpoint.pth with "
                "'args') must be reduced to its weights first, e.g. "
                "torch.save(torch.load(f, weights_only=False)['teacher'], 'teacher.pth')"
            ) from e
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    state = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for pre in _PREFIXES:
                if k.startswith(pre):
                    k, changed = k[len(pre) :], True
        state[k] = v
    if not state:
        raise ValueError(f"checkpoint {path}: no tensors found (keys: {list(obj)[:8]})")
    return state


def _describe(spec: BackboneSpec) -> str:
    arch = spec.timm_name or "tiny test ViT (patch 8, dim 48, depth 2, 3 heads)"
    return f"backbone '{spec.name}' ({arch}, patch {spec.patch_size}, dim {spec.dim})"


def _few(items: Sequence[str], n: int = 4) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_into(model: nn.Module, path: str | Path, spec: BackboneSpec) -> None:
    state = load_checkpoint_state(path)
    try:
        from timm.models.vision_transformer import checkpoint_filter_fn

        # Converts original DINO/DINOv2 checkpoints (DINOv2 mask_token, registers,
        # SwiGLU names; pos_embed resampled to the model's pretraining grid).
        state = checkpoint_filter_fn(state, model)
    except Exception as e:  # noqa: BLE001 - the filter assumes plausible shapes
        raise ValueError(
            f"checkpoint {path} does not fit {_describe(spec)}: timm's checkpoint filter failed: {e}"
        ) from e
    own = model.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    # The feature path needs everything up to the last block's qkv; the final norm and head are unused.
    needed = [
        k for k in own if k.startswith(("blocks.", "patch_embed.")) or k in ("pos_embed", "cls_token", "reg_token")
    ]
    missing = [k for k in needed if k not in state]
    if mismatched or missing:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_few(mismatched, 3)})")
        if missing:
            parts.append(f"{len(missing)} missing weights ({_few(missing)})")
        found = _few(sorted(state), 4)
        raise ValueError(
            f"checkpoint {path} does not fit {_describe(spec)}: {'; '.join(parts)}. "
            f"The file has keys like: {found}. Is it for another backbone (--backbone)?"
        )
    model.load_state_dict(state, strict=False)
