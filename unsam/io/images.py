"""Images in: input specifications to path lists, files to RGB arrays, a DataLoader dataset.

:func:`discover_images` turns a folder, a glob or a list file into a
deterministic list of paths; :func:`load_image` decodes one file to an
``(H, W, 3)`` uint8 RGB array, converting every PIL mode we meet in the wild
(16-bit, float, palette, alpha, CMYK, EXIF rotation) and refusing bad files
with an :class:`ImageError` whose ``reason`` is short and machine-friendly;
:class:`ImageDataset` wraps that for ``torch.utils.data.DataLoader`` workers and
never raises.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageError",
    "InputError",
    "collate_images",
    "discover_images",
    "load_image",
    "pil_to_rgb",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})

_GLOB_CHARS = set("*?[")

# --------------------------------------------------------------------------- errors


class InputError(ValueError):
    """The input specification (folder, glob or list file) yields no usable image paths."""


class ImageError(Exception):
    """One image file cannot be used.

    Attributes:
        reason: short machine-friendly tag, one of ``"corrupt"``, ``"not-an-image"``,
            ``"too-small"``, ``"too-large"``, ``"unreadable"``, ``"unsupported"``.
        message: human-readable detail, naming the file.
    """

    REASONS = ("corrupt", "not-an-image", "too-small", "too-large", "unreadable", "unsupported")

    def __init__(self, reason: str, message: str = "") -> None:
        # args = (reason, message) so the exception pickles across DataLoader workers.
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else self.reason


# --------------------------------------------------------------------------- discovery


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def discover_images(spec: str | os.PathLike[str]) -> list[Path]:
    """Expand an input specification into a deterministic list of image paths.

    ``spec`` is one of:

    - a folder: searched recursively for files with an image extension
      (:data:`IMAGE_EXTENSIONS`, case-insensitive); hidden files and anything
      inside a hidden folder (``.git``, ``.ipynb_checkpoints``) are skipped;
      sorted by relative path;
    - a single image file (image extension): ``[spec]``;
    - any other existing file: a list of paths, one per line; blank lines and
      whole-line ``#`` comments are ignored, relative paths are resolved against the list
      file's folder, order is kept and duplicates dropped. Listed files are not
      checked for existence here (a missing one is reported per image by
      :func:`load_image` as ``"unreadable"``, so one bad line does not stop a run);
    - a glob pattern (``data/*.jpg``, ``data/**/*.png``): matching files with an
      image extension, sorted.

    Raises:
        InputError: the path does not exist, or nothing matches.
    """
    raw = os.fspath(spec)
    path = Path(raw).expanduser()
    if path.is_dir():
        found = []
        for p in path.rglob("*"):
            rel = p.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or not _is_image_name(p) or not p.is_file():
                continue
            found.append(rel)
        if not found:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise InputError(f"no images found in folder {path} (searched recursively for {exts})")
        # Sort on the posix string of the relative path: independent of the file
        # system's listing order and of the platform's separator.
        return [path / rel for rel in sorted(found, key=lambda r: r.as_posix())]
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return [path]
        return _read_list_file(path)
    if _GLOB_CHARS & set(raw):
        matches = sorted(
            {Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=True)},
            key=lambda p: p.as_posix(),
        )
        found = [m for m in matches if _is_image_name(m) and m.is_file()]
        if not found:
            why = f"{len(matches)} match(es), none an image file" if matches else "no matches"
            raise InputError(f"glob pattern {raw!r} gives no images ({why})")
        return found
    raise InputError(f"input {raw!r} does not exist (expected a folder, an image, a list file or a glob pattern)")


def _read_list_file(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"input {path} is neither an image nor a UTF-8 text list of paths ({e})") from None
    except OSError as e:
        raise InputError(f"cannot read list file {path}: {e}") from None
    out: list[Path] = []
    seen: set[Path] = set()
    for line in text.splitlines():
        # Only whole-line comments: '#' is legal inside file names.
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        if not p.is_absolute():
            p = path.parent / p
        if p not in seen:
            seen.add(p)
            out.append(p)
    if not out:
        raise InputError(f"list file {path} names no image paths (empty or only comments)")
    return out


# --------------------------------------------------------------------------- decoding


def _scale_to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map [lo, hi] -> [0, 255], rounded; NaN -> 0."""
    a = np.nan_to_num(a.astype(np.float64), nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 straight alpha -> (H, W, 3) uint8 over a white background."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    # Integer blend with rounding: rgb*a/255 + 255*(255-a)/255.
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to ``(H, W, 3)`` uint8 RGB.

    - transparency (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a ``tRNS``
      entry) is composited over white: a transparent pixel is white, not the
      arbitrary colour stored under it;
    - 16-bit integer modes (``I;16``, ``I;16B``, ...) map the full range
      0..65535 to 0..255 (``v / 257``, rounded), not clipped at 255;
    - ``I`` (int32) is treated as 16-bit when its values lie in 0..65535
      (PIL decodes some 16-bit files to ``I``), else stretched min..max;
    - ``F`` (float32): values in [0, 1] are scaled by 255, values in [0, 255]
      kept, anything else stretched min..max;
    - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ... go through PIL's own conversion.

    Raises:
        ImageError: reason ``"unsupported"`` for a mode PIL cannot convert to RGB.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if mode == "I" and (a.size and (a.min() < 0 or a.max() > 65535)):
            g = _scale_to_uint8(a, float(a.min()), float(a.max()))
        else:
            g = _scale_to_uint8(a, 0.0, 65535.0)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            g = _scale_to_uint8(a, 0.0, 1.0)
        elif lo >= 0.0 and hi <= 255.0:
            g = _scale_to_uint8(a, 0.0, 255.0)
        else:
            g = _scale_to_uint8(a, lo, hi)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = "A" in im.getbands() or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    try:
        if has_alpha:
            return _composite_on_white(np.asarray(im.convert("RGBA")))
        if mode == "RGB":
            return np.asarray(im).copy()
        return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageError("unsupported", f"cannot convert PIL mode {mode!r} to RGB ({e})") from None


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    # PIL's decompression-bomb check runs inside Image.open, before we can see
    # the header: it warns above MAX_IMAGE_PIXELS and raises above twice that.
    # Our own header check is the authoritative one, so silence the warning and
    # make sure PIL's hard limit is not below ours (it is only ever raised).
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS * 2 < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def load_image(path: str | os.PathLike[str], max_pixels: int = 50_000_000, min_side: int = 8) -> np.ndarray:
    """Decode one image file to RGB.

    Applies the EXIF orientation (a phone photo with orientation 6 comes back
    with height and width swapped, as displayed), then :func:`pil_to_rgb`.
    The size limits are checked on the header, before any pixel is decoded.

    Args:
        path: image file.
        max_pixels: refuse images with more than this many pixels (``"too-large"``).
        min_side: refuse images whose shorter side is below this (``"too-small"``);
            the pipeline needs at least one feature patch.

    Returns:
        ``np.ndarray[H, W, 3]`` uint8, RGB, C-contiguous.

    Raises:
        ImageError: ``reason`` is ``"unreadable"`` (missing, a folder, no
            permission), ``"not-an-image"``, ``"corrupt"`` (truncated, bad data,
            empty file), ``"too-small"``, ``"too-large"`` or ``"unsupported"``.
    """
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ImageError("corrupt", f"{p}: empty file (0 bytes)")
    except OSError as e:
        raise ImageError("unreadable", f"{p}: {e.strerror or e}") from None
    with _pil_pixel_limit(max_pixels):
        try:
            im = Image.open(p)
        except Image.DecompressionBombError as e:
            raise ImageError("too-large", f"{p}: {e}") from None
        except UnidentifiedImageError:
            raise ImageError("not-an-image", f"{p}: not a recognised image format") from None
        except OSError as e:
            raise ImageError("unreadable", f"{p}: {e.strerror or e}") from None
        except (ValueError, SyntaxError, EOFError) as e:
            # PIL plugins report malformed headers with assorted exception types.
            raise ImageError("corrupt", f"{p}: bad header ({e})") from None
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError("too-large", f"{p}: {w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
            if min(w, h) < min_side:
                raise ImageError("too-small", f"{p}: {w}x{h}, a side is below min_side={min_side}")
            # We rely on PIL's default LOAD_TRUNCATED_IMAGES = False: with it set,
            # a cut-off file is padded with grey, and a pseudo-label of half an
            # image is worse than a reported skip.
            try:
                im.load()
            except Image.DecompressionBombError as e:
                raise ImageError("too-large", f"{p}: {e}") from None
            except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
                raise ImageError("corrupt", f"{p}: cannot decode ({e})") from None
            try:
                im = ImageOps.exif_transpose(im) or im
            except Exception as e:  # noqa: BLE001 - a broken EXIF block must not lose a good image
                log.warning("%s: ignoring unreadable EXIF orientation (%s)", p, e)
            return np.ascontiguousarray(pil_to_rgb(im))


class ImageDataset(torch.utils.data.Dataset):
    """Decode images in DataLoader workers; bad files become records, never exceptions.

    Item ``i`` is ``{"index": i, "path": str, "image": uint8 Tensor[H, W, 3] | None,
    "error": None | "reason: message"}``. Use with ``collate_fn=collate_images``
    (images have different sizes).
    """

    def __init__(
        self, paths: Sequence[str | os.PathLike[str]], max_pixels: int = 50_000_000, min_side: int = 8
    ) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.max_pixels = max_pixels
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            arr = load_image(path, max_pixels=self.max_pixels, min_side=self.min_side)
        except ImageError as e:
            return {"index": index, "path": path, "image": None, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - one odd file must not kill a worker and the run
            return {"index": index, "path": path, "image": None, "error": f"unreadable: {path}: {e!r}"}
        return {"index": index, "path": path, "image": torch.from_numpy(arr), "error": None}


def collate_images(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader ``collate_fn``: keep the list of item dicts (variable image sizes)."""
    return batch
