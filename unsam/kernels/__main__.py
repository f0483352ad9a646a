"""Kernel demo: ``python -m unsam.kernels [IMAGE ...]``.

For each image: three MaskCut cuts on a 60 x 60 patch grid (affinity + Lanczos
with warm starts), then greedy merging of a 32 x 32 grid at UnSAM's thresholds,
with timings and the dense solver's time for one cut beside ours.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from unsam.kernels import (
    affinity,
    dense_affinity,
    has_cuda,
    lanczos_fiedler,
    merge_levels,
)

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def patch_features(path: Path, grid: int, patch: int = 8) -> torch.Tensor:
    from PIL import Image

    size = grid * patch
    im = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im).copy()).float() / 255.0
    p = x.reshape(grid, patch, grid, patch, 3).permute(0, 2, 1, 3, 4).reshape(grid, grid, patch * patch, 3)
    mean, std = p.mean(2), p.std(2)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
    return torch.cat([mean - mean.mean((0, 1)), 2 * std, 0.3 * torch.stack([ys, xs], -1)], -1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m unsam.kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", type=Path, help="images (default: the repo's sample images)")
    ap.add_argument("--dense", action="store_true", help="also time the published dense solver (seconds)")
    args = ap.parse_args(argv)
    images = args.images or sorted(SAMPLES.glob("*.jpg"))
    if not images:
        ap.error("no images given and no sample images found")
    print(f"unsam kernels: CUDA kernels built: {has_cuda()}; CPU threads: {torch.get_num_threads()}")
    for path in images:
        f = patch_features(path, 60).reshape(3600, -1)
        valid = torch.ones(3600, dtype=torch.bool)
        x = None
        t0 = time.perf_counter()
        areas = []
        for _ in range(3):
            bits, deg = affinity(f, valid=valid)
            x, lam, it = lanczos_fiedler(bits, deg, x0=x)
            fg = (x > x[valid].mean()) & valid
            if 2 * int(fg.sum()) > int(valid.sum()):  # keep the smaller side as the object
                fg = ~fg & valid
            areas.append((float(fg.float().mean()), float(lam), int(it)))
            valid = valid & ~fg
        t_cut = time.perf_counter() - t0
        g = patch_features(path, 32)
        t0 = time.perf_counter()
        labels = merge_levels(g)
        t_merge = time.perf_counter() - t0
        sizes = [int(torch.unique(labels[i]).numel()) for i in range(labels.shape[0])]
        print(f"{path.name}: 3 cuts in {t_cut * 1e3:.1f} ms "
              + ", ".join(f"[area {a:.2f} lam {lam:.3f} iters {it}]" for a, lam, it in areas))
        print(f"  merge 32x32 in {t_merge * 1e3:.1f} ms, clusters per level {sizes}")
        if args.dense:
            bits, deg = affinity(f)
            t0 = time.perf_counter()
            import scipy.linalg

            a = dense_affinity(bits, deg).numpy()
            d = np.diag(a.sum(1))
            scipy.linalg.eigh(d - a, d, subset_by_index=[1, 1])  # MaskCut's dense generalized solver
            print(f"  published dense solver, one cut: {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
