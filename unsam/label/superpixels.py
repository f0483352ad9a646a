"""SLIC superpixels in torch and snapping of masks to them (``--refine snap``).

Masks upsampled from a 32 x 32 patch grid have blocky borders; superpixels
follow the image's edges. Snapping replaces a mask by the union of the
superpixels it covers by more than half, an unsupervised, pixel-accurate
refinement (the published code used a supervised refiner, CascadePSP). A
snapped mask that moves too far from its input (IoU < 0.5) keeps its input.
"""

from __future__ import annotations

import numpy as np
import torch

from unsam.label.items import MaskItem


def _rgb_to_lab(image: np.ndarray) -> torch.Tensor:
    from unsam.label.features import rgb_to_lab

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 255.0
    return rgb_to_lab(t)[0]  # [3, H, W]


@torch.inference_mode()
def slic(image: np.ndarray, pixels_per_segment: int = 64, compactness: float = 10.0, iters: int = 5) -> np.ndarray:
    """SLIC (Achanta et al., TPAMI 2012) on an [H, W, 3] uint8 image -> labels [H, W] int64.

    Each pixel chooses among the 9 centres of its own and the neighbouring grid
    cells (the usual 2S x 2S search window), all pixels at once.
    """
    h, w = image.shape[:2]
    lab = _rgb_to_lab(image).reshape(3, -1).T  # [P, 3]
    step = max(2.0, float(np.sqrt(pixels_per_segment)))
    gh, gw = max(1, int(round(h / step))), max(1, int(round(w / step)))
    sy, sx = h / gh, w / gw
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    cy = (ys / sy).long().clamp_(0, gh - 1)
    cx = (xs / sx).long().clamp_(0, gw - 1)
    # Candidate centres: the 3 x 3 cells around each pixel's cell.
    offs = torch.tensor([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    cand = (cy[:, None] + offs[:, 0]).clamp(0, gh - 1) * gw + (cx[:, None] + offs[:, 1]).clamp(0, gw - 1)  # [P, 9]
    gy, gx = torch.meshgrid((torch.arange(gh) + 0.5) * sy, (torch.arange(gw) + 0.5) * sx, indexing="ij")
    c_xy = torch.stack([gy.reshape(-1), gx.reshape(-1)], 1).float()
    c_lab = lab[(c_xy[:, 0].long().clamp(0, h - 1) * w + c_xy[:, 1].long().clamp(0, w - 1))]
    # One 5-D feature per pixel and centre, position pre-scaled: one gather per iteration.
    scale = compactness / step
    feat = torch.cat([lab, scale * torch.stack([ys, xs], 1)], 1)  # [P, 5]
    centres = torch.cat([c_lab, scale * c_xy], 1)
    k = gh * gw
    assign = cand[:, 4]
    for _ in range(iters):
        d = (feat[:, None, :] - centres[cand]).square_().sum(-1)
        assign = cand.gather(1, d.argmin(1, keepdim=True))[:, 0]
        cnt = torch.bincount(assign, minlength=k).clamp_min(1).float()[:, None]
        centres = torch.zeros(k, 5).index_add_(0, assign, feat) / cnt
    # Compact ids 0..K-1 (no sort).
    used = torch.bincount(assign, minlength=k) > 0
    remap = torch.cumsum(used.long(), 0) - 1
    labels = remap[assign]
    return labels.reshape(h, w).numpy()


def snap_masks(
    image: np.ndarray,
    items: list[MaskItem],
    work_hw: tuple[int, int] | None = None,
    pixels_per_segment: int = 64,
    min_iou: float = 0.5,
    labels: np.ndarray | None = None,
) -> list[MaskItem]:
    """Replace each mask by the union of the superpixels it covers by > 50 % (in place)."""
    h, w = work_hw or image.shape[:2]
    if (h, w) != image.shape[:2]:
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    sp = labels if labels is not None else slic(image, pixels_per_segment)
    k = int(sp.max()) + 1
    sp_area = np.bincount(sp.ravel(), minlength=k)
    # Bounding box of every superpixel: the snapped mask may reach past the old box.
    flat = sp.ravel()
    yy, xx = np.divmod(np.arange(flat.size), w)
    y0 = np.full(k, h); y1 = np.zeros(k, np.int64); x0 = np.full(k, w); x1 = np.zeros(k, np.int64)
    np.minimum.at(y0, flat, yy); np.maximum.at(y1, flat, yy + 1)
    np.minimum.at(x0, flat, xx); np.maximum.at(x1, flat, xx + 1)
    for m in items:
        bx0, by0, bx1, by1 = m.box
        sub = sp[by0:by1, bx0:bx1]
        inside = np.bincount(sub[m.crop], minlength=k)
        keep = np.flatnonzero(2 * inside > sp_area)
        if keep.size == 0:
            continue
        nx0, ny0, nx1, ny1 = int(x0[keep].min()), int(y0[keep].min()), int(x1[keep].max()), int(y1[keep].max())
        sel = np.zeros(k, bool)
        sel[keep] = True
        crop = sel[sp[ny0:ny1, nx0:nx1]]
        # IoU of new and old masks on the union box.
        ux0, uy0, ux1, uy1 = min(nx0, bx0), min(ny0, by0), max(nx1, bx1), max(ny1, by1)
        a = np.zeros((uy1 - uy0, ux1 - ux0), bool)
        b = np.zeros_like(a)
        a[by0 - uy0 : by1 - uy0, bx0 - ux0 : bx1 - ux0] = m.crop
        b[ny0 - uy0 : ny1 - uy0, nx0 - ux0 : nx1 - ux0] = crop
        union = np.count_nonzero(a | b)
        if union == 0 or np.count_nonzero(a & b) / union < min_iou:
            continue
        m.box, m.crop = (nx0, ny0, nx1, ny1), crop
        m.tighten()
    return [m for m in items if m.area > 0]
