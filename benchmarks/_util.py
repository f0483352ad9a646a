"""Timing and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("UNSAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def sync(device: str | torch.device = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def bench(fn, repeat: int = 5, warmup: int = 1, device: str = "cpu", max_seconds: float = 30.0) -> float:
    """Median wall time of fn() in seconds (after warm-up; CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > max_seconds:
            break
    return statistics.median(times)


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def record(name: str, rows: list[dict], card: str | None = None) -> Path:
    """Print rows as a table and merge them into benchmarks/results/<card>.json."""
    card = card or os.environ.get("UNSAM_BENCH_CARD") or ("gpu" if torch.cuda.is_available() else "cpu-2core")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print(f"\n== {name} ({card}) ==")
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys))
    out_dir = Path(os.environ.get("UNSAM_BENCH_OUT", RESULTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{card}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["machine"] = machine()
    data[name] = rows
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def image_patch_feats(size: int = 480, patch: int = 8, index: int = 0) -> torch.Tensor:
    """Realistic patch features from a real BSDS500 image (colour, local contrast, position).

    Falls back to a synthetic piecewise-smooth image when the shared data is absent.
    Returns [g*g, 12] float32 with g = size // patch.
    """
    g = size // patch
    img = None
    files = sorted((DATA / "bsds500" / "images" / "val").glob("*.jpg"))
    if files:
        from PIL import Image

        im = Image.open(files[index % len(files)]).convert("RGB").resize((size, size), Image.BILINEAR)
        img = torch.from_numpy(np.asarray(im).copy()).float() / 255.0
    else:
        rng = np.random.default_rng(index)
        yy, xx = np.mgrid[0:size, 0:size] / size
        img = torch.from_numpy(
            np.stack([np.sin(6 * xx + rng.random()), np.cos(5 * yy), (xx > 0.5) * 1.0], -1)
        ).float()
    p = img.reshape(g, patch, g, patch, 3).permute(0, 2, 1, 3, 4).reshape(g * g, patch * patch, 3)
    mean, std = p.mean(1), p.std(1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1)
    centred = torch.cat([mean - mean.mean(0), 2 * std, 0.3 * pos], 1)
    return torch.cat([centred, centred[:, :6] ** 2 - (centred[:, :6] ** 2).mean(0)], 1)


def part_feats(seed: int = 0, c: int = 768, h: int = 32, w: int = 32, noise: float = 0.75) -> torch.Tensor:
    """Features that merge across every threshold, as DINO keys of a crop do: [h, w, c].

    Objects -> parts -> sub-parts as nested Voronoi cells of the grid (4, then 3
    and 3 per cell), each level adding its own random direction (objects with
    a random weight, all sharing one common direction), plus per-patch noise.
    Single patches are about 0.6 similar inside a sub-part; sums of many
    patches lose the noise, so sub-parts, parts and objects merge at
    successively lower thresholds.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]

    def voronoi(cells: np.ndarray, k: int) -> np.ndarray:
        out = np.zeros((h, w), np.int64)
        nxt = 0
        for r in np.unique(cells):
            inside = cells == r
            pts = np.argwhere(inside)
            seeds = pts[rng.choice(len(pts), size=min(k, len(pts)), replace=False)]
            d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
            out[inside] = nxt + d.argmin(-1)[inside]
            nxt += len(seeds)
        return out

    obj = voronoi(np.zeros((h, w), np.int64), 4)
    part = voronoi(obj, 3)
    sub = voronoi(part, 3)
    g = torch.Generator().manual_seed(seed)

    def dirs(n: int) -> torch.Tensor:
        return torch.randn(n, c, generator=g)

    shared = torch.randn(c, generator=g)
    w_obj = torch.from_numpy(rng.uniform(0.35, 0.7, obj.max() + 1)).float()[:, None]
    f = (
        0.35 * shared
        + (w_obj * dirs(obj.max() + 1))[obj]
        + 0.6 * dirs(part.max() + 1)[part]
        + 0.75 * dirs(sub.max() + 1)[sub]
        + noise * torch.randn(h, w, c, generator=g)
    )
    return f.float()


def vit_b8_shaped(depth: int = 2, device: str = "cpu"):
    """A random-weight ViT with DINO ViT-B/8's patch (8), width and key size (C = 768) and
    ``depth`` blocks, as the ``dino_vitb8`` extractor (seeded: the same weights every time).
    Its features have the shape and cost per token of DINO's last-block keys; fewer blocks
    only make the forward, which the benchmarks exclude, cheaper on a CPU."""
    from timm.models.vision_transformer import VisionTransformer

    from unsam.label.features import ViTKeyFeatures

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionTransformer(patch_size=8, embed_dim=768, depth=depth, num_heads=12, num_classes=0, dynamic_img_size=True)
    return ViTKeyFeatures(model, "dino_vitb8").to(device).eval()
