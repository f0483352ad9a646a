"""Images in, label JSON out.

Input side: :func:`discover_images` turns a folder, a glob or a list file into a
deterministic list of paths; :func:`load_image` decodes one file to an
``(H, W, 3)`` uint8 RGB array, converting every PIL mode we meet in the wild
(16-bit, float, palette, alpha, CMYK, EXIF rotation) and refusing bad files
with an :class:`ImageError` whose ``reason`` is short and machine-friendly;
:class:`ImageDataset` wraps that for ``torch.utils.data.DataLoader`` workers and
never raises.

Output side: COCO compressed RLE helpers (column-major, what pycocotools
writes), the per-image SA-1B-style record builders (:func:`image_record`,
:func:`annotation_record`), :func:`validate_label_json`, an atomic writer (a
run killed at any moment leaves no half-written JSON) and
:func:`read_label_json` used for resume. :func:`export_coco` merges a labeled
folder into one COCO-style JSON (CLI: ``python -m unsam.export``).

Per-image JSON layout (ALGORITHM.md §4)::

    {"image": {"image_id": int, "file_name": str, "width": W, "height": H},
     "annotations": [{"id": int, "area": int, "bbox": [x, y, w, h],
                      "segmentation": {"size": [H, W], "counts": str},
                      "level": int, "parent_id": int | None, "score": float,
                      "source": "divide" | "conquer" | "atoms" | "partition", ...optional extras}]}
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import secrets
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "InputError",
    "ImageError",
    "discover_images",
    "load_image",
    "pil_to_rgb",
    "ImageDataset",
    "collate_images",
    "mask_to_rle",
    "masks_to_rles",
    "rle_to_mask",
    "rle_area",
    "rle_bbox",
    "atomic_writer",
    "write_json_atomic",
    "read_label_json",
    "image_record",
    "annotation_record",
    "validate_label_json",
    "export_coco",
    "COCO_CATEGORY",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
# atoms, partition: unsam.atoms (partition: a region of the partition-level ladder); model: unsam.predict
SOURCES: frozenset[str] = frozenset({"divide", "conquer", "atoms", "partition", "model"})
COCO_CATEGORY: dict[str, Any] = {"id": 1, "name": "fg", "supercategory": "fg"}

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


# --------------------------------------------------------------------------- RLE


def _as_binary_uint8(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    m = np.asarray(masks)
    # pycocotools' encoder toggles on every change of value, so a 0/255 mask
    # would give garbage runs: make it strictly 0/1 first.
    return m.astype(np.uint8) if m.dtype == np.bool_ else (m != 0).astype(np.uint8)


def _rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_to_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Encode one binary mask ``[H, W]`` (bool, or any dtype with nonzero = foreground) as COCO compressed RLE.

    Returns:
        ``{"size": [H, W], "counts": str}`` — JSON-ready, identical to what
        pycocotools writes (column-major run lengths).
    """
    m = _as_binary_uint8(mask)
    if m.ndim != 2:
        raise ValueError(f"mask_to_rle: mask should be 2-D [H, W], got shape {tuple(m.shape)}")
    return _rle_to_json(mask_utils.encode(np.asfortranarray(m)))


def masks_to_rles(masks: np.ndarray | torch.Tensor) -> list[dict[str, Any]]:
    """Encode ``K`` binary masks ``[K, H, W]`` (numpy or torch, nonzero = foreground) in one pycocotools call.

    Returns:
        list of K ``{"size": [H, W], "counts": str}``; ``[]`` when K == 0.
    """
    m = _as_binary_uint8(masks)
    if m.ndim != 3:
        raise ValueError(f"masks_to_rles: masks should be 3-D [K, H, W], got shape {tuple(m.shape)}")
    if m.shape[0] == 0:
        return []
    # pycocotools wants [H, W, K] in Fortran order: each mask column-major and
    # contiguous. One copy here, then a single C call for all K masks.
    hwk = np.asfortranarray(m.transpose(1, 2, 0))
    return [_rle_to_json(r) for r in mask_utils.encode(hwk)]


def _to_coco_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """A pycocotools-ready compressed RLE (accepts str counts and uncompressed list counts)."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed str/bytes counts or uncompressed list) to ``bool[H, W]``."""
    return mask_utils.decode(_to_coco_rle(rle)).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of a COCO RLE, without decoding it."""
    return int(mask_utils.area(_to_coco_rle(rle)))


def rle_bbox(rle: dict[str, Any]) -> list[float]:
    """Tight box ``[x, y, w, h]`` (floats, pixel units) of a COCO RLE; ``[0, 0, 0, 0]`` if empty."""
    return [float(v) for v in mask_utils.toBbox(_to_coco_rle(rle))]


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    The temp file is ``.<name>.<random>.tmp`` in the same folder (a rename is
    only atomic within one file system). If the block raises (or the process
    is killed), ``path`` keeps its old content, or stays absent; on an
    exception the temp file is removed. The parent folder is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            # os.open with 0o666 lets the umask decide the final permissions,
            # unlike mkstemp's 0o600, which would make shared label sets unreadable.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # Make the rename itself durable (the directory entry); best effort.
    with contextlib.suppress(OSError):
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`atomic_writer`).

    Compact by default: label files are dominated by RLE strings and written
    by the million.
    """
    separators = (",", ":") if indent is None else None
    with atomic_writer(path) as f:
        json.dump(obj, f, indent=indent, separators=separators, allow_nan=False)


def read_label_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Load a per-image label JSON if it is complete and structurally valid, else ``None``.

    Used for resume: a file that is missing, unparsable, or lacks
    ``image.{file_name,width,height}`` or an ``annotations`` list counts as
    not done. Annotations are checked for their keys, not decoded.
    """
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if not validate_label_json(obj) else None


# --------------------------------------------------------------------------- records


def image_record(image_id: int, file_name: str | os.PathLike[str], width: int, height: int) -> dict[str, Any]:
    """The ``image`` entry of a per-image JSON.

    ``file_name`` should be the image path relative to the input root, with
    ``/`` separators (what COCO tools join onto an image folder).
    """
    name = Path(file_name).as_posix() if not isinstance(file_name, str) else file_name.replace(os.sep, "/")
    return {"image_id": int(image_id), "file_name": name, "width": int(width), "height": int(height)}


def annotation_record(
    ann_id: int,
    segmentation: dict[str, Any] | np.ndarray | torch.Tensor,
    *,
    level: int,
    parent_id: int | None,
    score: float,
    source: str,
    area: int | None = None,
    bbox: Sequence[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One annotation of a per-image JSON, with plain Python types (JSON-ready).

    Args:
        ann_id: id, unique within the image.
        segmentation: COCO RLE dict (``size``, ``counts``) or a binary mask ``[H, W]``.
        level: granularity level (0 = coarsest; see the README's output format).
        parent_id: id of the parent mask (a partition region: the region holding it one level up;
            another mask: the smallest larger mask holding ``contain`` of it), or ``None`` for a root.
        score: confidence.
        source: ``"divide"``, ``"conquer"``, ``"atoms"`` or ``"partition"``.
        area, bbox: computed from the RLE when omitted.
        extra: optional fields (e.g. ``predicted_iou``, ``ncut``), numpy scalars
            converted to Python numbers.
    """
    if source not in SOURCES:
        raise ValueError(f"annotation_record: source should be one of {sorted(SOURCES)}, got {source!r}")
    # Normalise any RLE flavour (bytes or uncompressed list counts) to the stored form.
    rle = _rle_to_json(_to_coco_rle(segmentation)) if isinstance(segmentation, dict) else mask_to_rle(segmentation)
    rec: dict[str, Any] = {
        "id": int(ann_id),
        "area": int(rle_area(rle) if area is None else area),
        "bbox": [float(v) for v in (rle_bbox(rle) if bbox is None else bbox)],
        "segmentation": rle,
        "level": int(level),
        "parent_id": None if parent_id is None else int(parent_id),
        "score": float(score),
        "source": source,
    }
    for k, v in extra.items():
        rec[k] = v.item() if isinstance(v, (np.generic, torch.Tensor)) else v
    return rec


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_label_json(obj: Any, check_masks: bool = False) -> list[str]:
    """Problems with a per-image label JSON (empty list = valid).

    Checks the layout of the module docstring: types, ``segmentation.size ==
    [height, width]``, unique ids, ``parent_id`` naming another annotation of
    the same image, ``source`` in {divide, conquer, atoms, model}. With ``check_masks`` the
    RLEs are also decoded (via pycocotools' area/bbox) and compared with the
    stored ``area`` and ``bbox``.
    """
    if not isinstance(obj, dict):
        return [f"top level should be an object, got {type(obj).__name__}"]
    problems: list[str] = []
    img = obj.get("image")
    h = w = None
    if not isinstance(img, dict):
        problems.append("missing 'image' object")
    else:
        if not _is_int(img.get("image_id")):
            problems.append(f"image.image_id should be an int, got {img.get('image_id')!r}")
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            problems.append(f"image.file_name should be a non-empty string, got {img.get('file_name')!r}")
        for key in ("width", "height"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                problems.append(f"image.{key} should be a positive int, got {img.get(key)!r}")
        if not problems:
            h, w = img["height"], img["width"]
    anns = obj.get("annotations")
    if not isinstance(anns, list):
        problems.append("missing 'annotations' list")
        return problems
    ids: set[int] = set()
    for i, a in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            problems.append(f"{where} should be an object")
            continue
        aid = a.get("id")
        if not _is_int(aid):
            problems.append(f"{where}.id should be an int, got {aid!r}")
        elif aid in ids:
            problems.append(f"{where}.id {aid} is duplicated")
        else:
            ids.add(aid)
        if not _is_num(a.get("area")) or a["area"] < 0:
            problems.append(f"{where}.area should be a non-negative number, got {a.get('area')!r}")
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(_is_num(v) for v in bb) and bb[2] >= 0 and bb[3] >= 0):
            problems.append(f"{where}.bbox should be [x, y, w, h] with w, h >= 0, got {bb!r}")
        seg = a.get("segmentation")
        if not (isinstance(seg, dict) and isinstance(seg.get("counts"), str) and isinstance(seg.get("size"), list)):
            problems.append(f"{where}.segmentation should be compressed RLE {{size, counts: str}}")
        elif h is not None and seg["size"] != [h, w]:
            problems.append(f"{where}.segmentation.size {seg['size']} != image [height, width] [{h}, {w}]")
        elif check_masks:
            try:
                area, box = rle_area(seg), rle_bbox(seg)
            except Exception as e:  # noqa: BLE001 - any decode failure is a problem to report
                problems.append(f"{where}.segmentation does not decode ({e})")
            else:
                if _is_num(a.get("area")) and area != a["area"]:
                    problems.append(f"{where}.area {a['area']} != RLE area {area}")
                if isinstance(bb, list) and len(bb) == 4 and not np.allclose(bb, box, atol=0.5):
                    problems.append(f"{where}.bbox {bb} != RLE bbox {box}")
        if not _is_int(a.get("level")) or a["level"] < 0:
            problems.append(f"{where}.level should be a non-negative int, got {a.get('level')!r}")
        pid = a.get("parent_id", "missing")
        if pid is not None and not _is_int(pid):
            problems.append(f"{where}.parent_id should be an int or null, got {pid!r}")
        if not _is_num(a.get("score")):
            problems.append(f"{where}.score should be a finite number, got {a.get('score')!r}")
        if a.get("source") not in SOURCES:
            problems.append(f"{where}.source should be one of {', '.join(sorted(SOURCES))}, got {a.get('source')!r}")
    for i, a in enumerate(anns):
        if isinstance(a, dict) and _is_int(a.get("parent_id")):
            if a["parent_id"] not in ids:
                problems.append(f"annotations[{i}].parent_id {a['parent_id']} is not an annotation of this image")
            elif a["parent_id"] == a.get("id"):
                problems.append(f"annotations[{i}] is its own parent")
    return problems


# --------------------------------------------------------------------------- COCO export


def _label_files(label_dir: Path, exclude: Path | None) -> list[Path]:
    out = []
    for p in label_dir.rglob("*.json"):
        rel = p.relative_to(label_dir)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if exclude is not None and p.resolve() == exclude:
            continue
        out.append(rel)
    return [label_dir / r for r in sorted(out, key=lambda r: r.as_posix())]


def _is_other_json(path: Path) -> bool:
    """Valid JSON that is plainly not a label file (the run's config.json, summary.json, a COCO export)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return False
    # A label file has a singular "image" entry; a COCO export has "images".
    return not (isinstance(obj, dict) and "image" in obj)


def _coco_file_name(name: str, image_root: Path | None) -> str:
    if image_root is None:
        return name
    p = Path(name)
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            return p.relative_to(image_root).as_posix()
    return name


def export_coco(
    label_dir: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Merge a folder of per-image label JSONs into one COCO-style JSON and write it.

    Files are found recursively (``*.json``, hidden files and ``out_json``
    itself excluded) and read in sorted relative-path order; any that
    :func:`read_label_json` rejects (corrupt, half-copied, inconsistent) is
    skipped, counted and logged as a warning; well-formed JSON that is no label
    file at all (the run's config or summary) is ignored and counted apart. Images keep their ``image_id`` when those are unique
    across the set, else get 1..n in file order. Annotations get ids 1..m in
    file order, ``image_id`` remapped, ``category_id`` 1, ``iscrowd`` 0;
    ``parent_id`` is remapped to the new ids; ``level``, ``score``, ``source`` and extra fields
    are kept. With ``image_root``, absolute ``file_name`` values inside it are
    made relative to it.

    Returns:
        the COCO dict (``images``, ``annotations``, ``categories``, ``info``);
        ``info`` holds the ``label_files``, ``skipped_files`` and
        ``ignored_files`` counts. Loads with ``pycocotools.coco.COCO``.

    Raises:
        InputError: ``label_dir`` is not a folder.
    """
    from tqdm import tqdm

    from unsam import __version__

    label_dir = Path(label_dir)
    out_path = Path(out_json)
    if not label_dir.is_dir():
        raise InputError(f"label folder {label_dir} does not exist or is not a folder")
    root = Path(image_root).resolve() if image_root is not None else None
    files = _label_files(label_dir, out_path.resolve())

    labels: list[dict[str, Any]] = []
    skipped: list[Path] = []
    ignored = 0
    for f in tqdm(files, desc="reading labels", unit="file", disable=not progress):
        obj = read_label_json(f)
        if obj is not None:
            labels.append(obj)
        elif _is_other_json(f):
            ignored += 1
        else:
            skipped.append(f)
    if skipped:
        shown = ", ".join(str(s) for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log.warning("export_coco: skipped %d file(s) that are not valid label JSON: %s", len(skipped), shown)

    old_ids = [obj["image"]["image_id"] for obj in labels]
    keep_ids = len(set(old_ids)) == len(old_ids)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    next_ann = 1
    for n, obj in enumerate(labels, start=1):
        img = obj["image"]
        image_id = img["image_id"] if keep_ids else n
        images.append({
            "id": image_id,
            "file_name": _coco_file_name(img["file_name"], root),
            "width": img["width"],
            "height": img["height"],
        })
        anns = obj["annotations"]
        remap = {a["id"]: next_ann + k for k, a in enumerate(anns)}
        for a in anns:
            pid = a.get("parent_id")
            rec = dict(a)
            rec.update(
                id=remap[a["id"]],
                image_id=image_id,
                category_id=COCO_CATEGORY["id"],
                iscrowd=0,
                # read_label_json guarantees the parent is an annotation of this image.
                parent_id=None if pid is None else remap[pid],
            )
            annotations.append(rec)
        next_ann += len(anns)

    coco = {
        "info": {
            "description": "unsam pseudo-labels (class-agnostic, hierarchical)",
            "version": __version__,
            "label_files": len(labels),
            "skipped_files": len(skipped),
            "ignored_files": ignored,
        },
        "images": images,
        "annotations": annotations,
        "categories": [dict(COCO_CATEGORY)],
    }
    write_json_atomic(out_path, coco)
    return coco
