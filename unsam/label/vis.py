"""Overlay pictures of hierarchical masks: one panel per granularity level.

``save_overlay`` draws the image once per ``level`` present in the
annotations, side by side, each panel showing the masks of that level filled
with a translucent colour and outlined (for unsam's partition ladder, the
whole partition of that level). Colours come from the annotation id,
so the same mask has the same colour in every picture and every run.

Panel order: ascending ``level`` from left to right. In unsam's hierarchy
``level`` is a granularity level (0 = the whole image; a partition-ladder
region's level is the cut where it first appears, another mask's is its
parent's + 1), so the panels go from coarse (left) to fine (right).

PIL + numpy only (no matplotlib): this runs in labeling workers.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from unsam.io import atomic_writer, rle_bbox, rle_to_mask

__all__ = ["save_overlay", "render_overlay", "mask_color", "PANEL_GAP"]

PANEL_GAP = 4  # white pixels between panels
_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 90}), ".jpeg": ("JPEG", {"quality": 90}),
            ".webp": ("WEBP", {"quality": 90})}
_GOLDEN = 0.618033988749895


def mask_color(ann_id: int) -> tuple[int, int, int]:
    """Deterministic, well-spread RGB colour for an annotation id.

    Hue steps by the golden ratio per id, so consecutive ids (siblings, which
    usually touch) get far-apart hues; saturation/value vary a little with the
    id so hues that come round again are still told apart.
    """
    i = int(ann_id)
    h = (i * _GOLDEN) % 1.0
    s = 0.55 + 0.35 * ((i * 7) % 3) / 2
    v = 0.95 - 0.2 * ((i * 5) % 2)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _pick_levels(levels: Sequence[int], max_panels: int) -> list[int]:
    """At most ``max_panels`` levels, evenly spread, always keeping the first and the last."""
    levels = sorted(levels)
    if len(levels) <= max_panels:
        return levels
    if max_panels == 1:
        return [levels[0]]
    idx = sorted({round(k * (len(levels) - 1) / (max_panels - 1)) for k in range(max_panels)})
    return [levels[i] for i in idx]


def _mask_in_panel(ann: dict[str, Any], scale: float, pw: int, ph: int) -> tuple[np.ndarray, int, int] | None:
    """Decode an annotation's RLE, crop it to its box and resize the crop to panel scale.

    Returns ``(crop bool[h, w], x0, y0)`` in panel pixels, or None for an empty mask.
    Working on the box only keeps this cheap for small masks on big images.
    """
    seg = ann["segmentation"]
    x, y, w, h = rle_bbox(seg)
    if w <= 0 or h <= 0:
        return None
    xi, yi, wi, hi = int(x), int(y), int(w), int(h)
    crop = rle_to_mask(seg)[yi : yi + hi, xi : xi + wi]
    if scale == 1.0:
        return crop, xi, yi
    x0, y0 = math.floor(xi * scale), math.floor(yi * scale)
    x1 = min(pw, max(x0 + 1, math.ceil((xi + wi) * scale)))
    y1 = min(ph, max(y0 + 1, math.ceil((yi + hi) * scale)))
    small = Image.fromarray(crop).resize((x1 - x0, y1 - y0), Image.NEAREST)
    return np.asarray(small, dtype=bool), x0, y0


def _outline(m: np.ndarray) -> np.ndarray:
    """Pixels of ``m`` with a 4-neighbour outside ``m`` (outside the crop counts as outside)."""
    p = np.pad(m, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def _render_panel(base: np.ndarray, anns: list[dict[str, Any]], scale: float, alpha: float) -> np.ndarray:
    ph, pw = base.shape[:2]
    decoded = []
    for a in anns:
        got = _mask_in_panel(a, scale, pw, ph)
        if got is not None:
            decoded.append((a, *got))
    # Large masks first so that the smaller ones drawn later stay visible.
    decoded.sort(key=lambda t: (-int(t[1].sum()), t[0]["id"]))
    owner = np.full((ph, pw), -1, np.int32)
    colors = np.array([mask_color(a["id"]) for a, *_ in decoded] or [(0, 0, 0)], np.float32)
    for k, (_, m, x0, y0) in enumerate(decoded):
        region = owner[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        region[m[: region.shape[0], : region.shape[1]]] = k
    out = base.astype(np.float32)
    hit = owner >= 0
    # One blend per pixel (the topmost mask), not a stack of alphas that would
    # darken nested masks into mud.
    out[hit] = (1.0 - alpha) * out[hit] + alpha * colors[owner[hit]]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    for k, (_, m, x0, y0) in enumerate(decoded):
        edge = _outline(m)
        region = out[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        region[edge[: region.shape[0], : region.shape[1]]] = colors[k].astype(np.uint8)
    return out


def _draw_title(panel: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255), font=font)


def render_overlay(
    image: np.ndarray | torch.Tensor,
    annotations: Sequence[dict[str, Any]],
    max_panels: int = 4,
    *,
    alpha: float = 0.5,
    max_side: int | None = 1024,
    titles: bool = True,
) -> np.ndarray:
    """The overlay picture as an array (see :func:`save_overlay`).

    Returns:
        ``uint8[ph, n * pw + (n - 1) * PANEL_GAP, 3]`` with n = number of panels
        (1 when there are no annotations: the plain image), ``(ph, pw)`` the
        image size scaled so that its longer side is at most ``max_side``.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"render_overlay: image should be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    if max_panels < 1:
        raise ValueError(f"render_overlay: max_panels should be >= 1, got {max_panels}")
    H, W = image.shape[:2]
    for a in annotations:
        size = list(a["segmentation"]["size"])
        if size != [H, W]:
            raise ValueError(f"render_overlay: annotation {a.get('id')} has mask size {size}, image is [{H}, {W}]")
    scale = 1.0 if max_side is None or max(H, W) <= max_side else max_side / max(H, W)
    pw, ph = max(1, round(W * scale)), max(1, round(H * scale))
    base = image if scale == 1.0 else np.asarray(Image.fromarray(image).resize((pw, ph), Image.BILINEAR))

    by_level: dict[int, list[dict[str, Any]]] = {}
    for a in annotations:
        by_level.setdefault(int(a.get("level", 0)), []).append(a)
    levels = _pick_levels(list(by_level), max_panels)
    # Partition-ladder regions (source "partition") are drawn as the whole
    # partition of the panel's level: every region present at that cut, not only
    # the ones it splits off, so each panel is a complete segmentation.
    part = [a for a in annotations if a.get("source") == "partition"]
    split_at: dict[Any, int] = {}  # region id -> the level where its first child appears
    for a in part:
        pid = a.get("parent_id")
        if pid is not None:
            split_at[pid] = min(split_at.get(pid, 1 << 30), int(a["level"]))
    for lvl in levels:
        present = [a for a in part if int(a["level"]) < lvl and split_at.get(a["id"], 1 << 30) > lvl]
        by_level[lvl] = present + by_level[lvl]

    panels: list[Image.Image] = []
    for lvl in levels:
        panel = Image.fromarray(_render_panel(base, by_level[lvl], scale, alpha))
        if titles:
            _draw_title(panel, f"level {lvl}: {len(by_level[lvl])} masks")
        panels.append(panel)
    if not panels:
        panel = Image.fromarray(np.ascontiguousarray(base))
        if titles:
            _draw_title(panel, "no masks")
        panels.append(panel)

    n = len(panels)
    canvas = Image.new("RGB", (n * pw + (n - 1) * PANEL_GAP, ph), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * (pw + PANEL_GAP), 0))
    return np.asarray(canvas)


def save_overlay(
    image: np.ndarray | torch.Tensor,
    annotations: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    max_panels: int = 4,
    *,
    alpha: float = 0.5,
    max_side: int | None = 1024,
    titles: bool = True,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write an overlay picture of hierarchical masks, one panel per level.

    Args:
        image: ``uint8[H, W, 3]`` RGB (numpy or torch).
        annotations: per-image label records (``id``, ``level``,
            ``segmentation`` RLE of size [H, W]), as in the label JSON.
        path: output file; the format follows the suffix (.png, .jpg/.jpeg, .webp).
            Written atomically (temp file + rename).
        max_panels: at most this many levels are drawn; with more levels,
            an evenly spread subset including the coarsest and finest.
        alpha: opacity of the mask fill (outlines are opaque).
        max_side: each panel is scaled down so its longer side is at most this
            (None: full resolution); 4 panels of a 2250-px SA-1B image would
            otherwise be 9000 px wide.
        titles: write ``level k: n masks`` at each panel's top-left corner.
        tmp_dir: where the temporary file lives until the rename (see
            :func:`unsam.io.atomic_writer`).

    Returns:
        the path written.
    """
    out = Path(path)
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"save_overlay: {out}: unknown picture suffix, use one of {sorted(_FORMATS)}")
    arr = render_overlay(image, annotations, max_panels, alpha=alpha, max_side=max_side, titles=titles)
    with atomic_writer(out, binary=True, tmp_dir=tmp_dir) as f:
        Image.fromarray(arr).save(f, format=fmt[0], **fmt[1])
    return out
