"""The viewer's label folders: the indexed label files of a folder, their images, and checks
that make a bad file a message for its image instead of an error.

Representation (measured on this project's 2-core CPU, headless Chromium,
SA-1B ``sa_000001.jpg``, 2250 x 1500, 1000 masks, 31 levels, 2.8 MB of RLE
text, mask areas summing to 31 image areas):

- server-side level maps, i.e. ``level_partitions`` on the server and one PNG
  label map per level: 15.2 s for the 31 levels (3.8 s of it decoding the
  1000 full-size masks with pycocotools); even a single coarse level (level
  5, 7 masks) took 1.7 s, because every level relabels 3.4 M pixels with
  ``np.unique``. A deep level's map is a 88 kB PNG. Far over the 1 s target
  unless precomputed for every image, which is a labeling job of its own.
- client-side decoding (chosen): the label JSON is sent as it is on disk;
  the page decodes the compressed RLE counts to run lengths once (45-165 ms
  for the 1000 masks, while the browser decodes the JPEG), paints the level's
  owner map with ``TypedArray.fill`` over column-major runs, the order COCO
  RLE stores them in, so every run is one contiguous fill (level 15: 26-75
  ms with the 4-connected uncovered areas; the deepest level ~100 ms), and
  draws it into canvases stored transposed (column-major too) and shown
  through a CSS transpose, so neither step strides across memory. Time to
  interactive (navigation to a fresh page until the partition is drawn and
  clicks work): 0.30-0.64 s over several runs; a level change 35-110 ms.
  The first version drew the overlay at full resolution (3.4 M pixels, 2-px
  outlines) from an Int32 owner map: drawing 210-240 ms, painting 85-205 ms,
  time to interactive 0.83-1.07 s, over the target. The overlay now has one
  canvas pixel per screen pixel (0.48 M at "fit"; at most 4 M at any zoom)
  and the owner map is Uint16 while ids fit: drawing 19-71 ms.
  ``tests/test_view.py::test_sa1b_time_to_interactive`` asserts < 1 s.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import logging
import os
import posixpath
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PAGE_DEFAULT", "PAGE_MAX", "Entry", "LabelSet", "ViewError", "image_bytes", "resolved_inside"]

log = logging.getLogger("unsam.view")

PAGE_MAX = 500  # list entries per request at most
PAGE_DEFAULT = 100
# Formats every browser decodes as PIL reads them; anything else (TIFF, 16-bit,
# CMYK, EXIF-rotated files) is decoded by unsam.io.load_image, exactly as the
# labeler saw it, and sent as PNG.
_BROWSER_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
_BROWSER_MODES = {"RGB", "RGBA", "L", "LA", "P", "1"}
_SKIP_NAMES = {"summary.json"}  # unsam.label's run summary at the folder's top



class ViewError(Exception):
    """Something the page should show instead of an image (a clear, one-line message)."""


# --------------------------------------------------------------------------- label folders


def resolved_inside(path: Path, root: Path) -> Path | None:
    """``path`` with every symlink and ``..`` resolved, if that lies inside ``root`` (resolved);
    None otherwise. Containment is decided on the real file, not on the text of its path: a
    symlink inside a served folder that points out of it is not served."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop
        return None
    return real if real.is_relative_to(root) else None


def _input_root(spec: str, bases: list[Path]) -> Path | None:
    """The image root of a labeling run's recorded ``--input`` (as unsam.label derives it)."""
    from unsam.io import IMAGE_EXTENSIONS, InputError, discover_images

    p = Path(spec).expanduser()
    for base in [Path("/")] if p.is_absolute() else bases:
        q = base / p
        if q.is_dir():
            return q.resolve()
        if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS:
            return q.resolve().parent
        if q.is_file() or set("*?[") & set(str(p)):
            try:
                paths = discover_images(q)
            except InputError:
                continue
            return Path(os.path.commonpath([str(x.resolve().parent) for x in paths]))
    return None


@dataclass
class Entry:
    """What the list and the page need to know about one label file (cached per file version)."""

    key: str
    masks: int | None = None
    levels: int | None = None
    file_name: str | None = None
    width: int | None = None
    height: int | None = None
    image: Path | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.file_name or self.key[:-5], "masks": self.masks, "levels": self.levels, "error": self.error}


class LabelSet:
    """One labeled folder: its sorted label files, their checks, and where their images are.

    Args:
        root: the folder (searched recursively for ``*.json``; hidden files and
            folders and the top-level ``summary.json`` skipped).
        images: image root; ``None``: the input recorded in ``root/config.yaml``.
    """

    def __init__(self, root: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> None:
        self.name = os.fspath(root)  # as the user gave it: the page's title
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ViewError(f"label folder {root} does not exist or is not a folder")
        keys = []
        for p in self.root.rglob("*.json"):
            rel = p.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or (len(rel.parts) == 1 and rel.name in _SKIP_NAMES):
                continue
            if p.is_file() and resolved_inside(p, self.root) is not None:  # a symlink out of the folder is not indexed
                keys.append(rel.as_posix())
        self.keys: list[str] = sorted(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self._by_stem: dict[str, str] = {}
        for k in self.keys:
            self._by_stem.setdefault(posixpath.basename(k), k)
        self.images_root, self.images_how = self._find_images_root(images)
        self._cache: dict[str, tuple[tuple[int, int], Entry]] = {}
        self._lock = threading.Lock()
        self._key_locks = [threading.Lock() for _ in range(64)]
        self._filtered: tuple[str, list[str]] = ("", self.keys)

    def _find_images_root(self, images: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
        if images is not None:
            p = Path(images).expanduser().resolve()
            if not p.is_dir():
                raise ViewError(f"--images {images}: not a folder")
            return p, "--images"
        cfg = self.root / "config.yaml"
        if cfg.is_file():
            import yaml

            try:
                spec = ((yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("_run") or {}).get("input")
            except (OSError, yaml.YAMLError, AttributeError):
                spec = None
            if isinstance(spec, str) and spec:
                found = _input_root(spec, [Path.cwd(), self.root.parent, self.root])
                if found is not None:
                    return found, f"{cfg.name} (input {spec})"
                return None, f"{cfg.name} records input {spec!r}, which is not found from here; give --images ROOT"
        return None, "no --images and no config.yaml with the labeling input; give --images ROOT"

    def __len__(self) -> int:
        return len(self.keys)

    def match(self, key: str) -> str | None:
        """This set's key for another set's ``key``: the same relative path, else the same file name."""
        if key in self.index:
            return key
        return self._by_stem.get(posixpath.basename(key))

    # ---------------------------------------------------------------- listing

    def page(self, offset: int = 0, limit: int = PAGE_DEFAULT, q: str = "", at: str | None = None, stats: bool = True) -> dict[str, Any]:
        """One page of the (filtered) list; ``at``: the page that holds this key (offset ignored).

        ``stats``: check every file of the page for its masks, levels and errors
        (an SA-1B-size file takes ~25 ms); without, only what earlier checks
        cached (``masks`` etc. None otherwise). The page asks without first, so
        that checking a page of big files does not hold up the image it shows.
        """
        limit = max(1, min(PAGE_MAX, int(limit)))
        q = q.strip().lower()
        with self._lock:
            if self._filtered[0] != q:
                self._filtered = (q, [k for k in self.keys if q in k.lower()] if q else self.keys)
            keys = self._filtered[1]
        if at is not None:
            i = bisect.bisect_left(keys, at)
            if i < len(keys) and keys[i] == at:
                offset = i // limit * limit
        offset = max(0, min(int(offset), max(0, len(keys) - 1) // limit * limit))
        items = [(self.entry(k) if stats else self.cached(k)).summary() for k in keys[offset : offset + limit]]
        return {"total": len(keys), "all": len(self.keys), "offset": offset, "limit": limit, "q": q, "items": items}

    # ---------------------------------------------------------------- checks

    def read(self, key: str, expect_size: tuple[int, int] | None = None) -> tuple[bytes, Entry]:
        """The label file's bytes and its checked entry (``entry.error`` set when it cannot be shown).

        ``expect_size``: (width, height) the labels must have (a compare set's
        labels are checked against the main set's image; not cached).
        """
        # One check per file at a time: the page asks for a file's labels and its image together.
        with self._key_locks[hash(key) % len(self._key_locks)]:
            path = resolved_inside(self.root / key, self.root)  # again now: the file may have become a symlink
            if path is None:
                return b"", Entry(key, error=f"{key}: not found inside the label folder")
            try:
                st = path.stat()
                raw = path.read_bytes()
            except OSError as e:
                return b"", Entry(key, error=f"{key}: cannot read ({e.strerror or e})")
            sig = (st.st_mtime_ns, st.st_size)
            if expect_size is None:
                with self._lock:
                    hit = self._cache.get(key)
                if hit is not None and hit[0] == sig:
                    return raw, hit[1]
                entry = self._check(key, raw, None)
                return raw, self._remember(key, sig, entry)
            return raw, self._check(key, raw, expect_size)

    def cached(self, key: str) -> Entry:
        """The last check of a file if there was one (possibly of an older version), else an unchecked entry."""
        with self._lock:
            hit = self._cache.get(key)
        return hit[1] if hit is not None else Entry(key)

    def entry(self, key: str) -> Entry:
        """The cached check of one label file (read and checked again when the file changed)."""
        try:
            st = (self.root / key).stat()
            sig = (st.st_mtime_ns, st.st_size)
        except OSError:
            sig = None
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] == sig:
            return hit[1]
        return self.read(key)[1]

    def _remember(self, key: str, sig: tuple[int, int], entry: Entry) -> Entry:
        with self._lock:
            self._cache[key] = (sig, entry)
        return entry

    def _check(self, key: str, raw: bytes, expect_size: tuple[int, int] | None) -> Entry:
        from unsam.io import validate_label_json

        e = Entry(key)
        try:
            obj = json.loads(raw)
        except UnicodeDecodeError as err:
            e.error = f"{key}: not a UTF-8 text file ({err.reason})"
            return e
        except ValueError as err:
            # json.JSONDecodeError carries the position: "truncated" is what a cut-off copy looks like.
            where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
            tail = " (the file ends early: truncated?)" if isinstance(err, json.JSONDecodeError) and err.pos >= len(raw.rstrip()) else ""
            e.error = f"{key}: malformed JSON{where}: {err.msg if isinstance(err, json.JSONDecodeError) else err}{tail}"
            return e
        if not isinstance(obj, dict) or "image" not in obj:
            e.error = f"{key}: not a per-image label file (no 'image' entry; a COCO export or a run summary?)"
            return e
        problems = validate_label_json(obj)
        anns = obj.get("annotations") if isinstance(obj.get("annotations"), list) else []
        e.masks = len(anns)
        lv = [a.get("level") for a in anns if isinstance(a, dict) and isinstance(a.get("level"), int)]
        e.levels = max(lv) + 1 if lv else (1 if not anns else None)
        img = obj.get("image") if isinstance(obj.get("image"), dict) else {}
        e.file_name = img.get("file_name") if isinstance(img.get("file_name"), str) else None
        if problems:
            size = [p for p in problems if ".segmentation.size" in p]
            head = "mask size does not match its image" if size else "not a valid label file"
            shown = (size or problems)[:3]
            more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
            e.error = f"{key}: {head}: " + "; ".join(shown) + more
            return e
        e.width, e.height = int(img["width"]), int(img["height"])
        if expect_size is not None:
            if (e.width, e.height) != expect_size:
                e.error = f"{key}: labels are for a {e.width}x{e.height} image, the image is {expect_size[0]}x{expect_size[1]} (width x height)"
            return e
        try:
            e.image = self.image_path(e.file_name)
            w, h = _image_size(e.image)
        except ViewError as err:
            e.error = str(err)
            return e
        if (w, h) != (e.width, e.height):
            e.error = (
                f"{key}: image size does not match the labels: {e.image} is {w}x{h}, "
                f"the label file says {e.width}x{e.height} (width x height)"
            )
        return e

    def image_path(self, file_name: str) -> Path:
        """The image a label file names, inside the image root (``ViewError`` otherwise)."""
        if self.images_root is None:
            raise ViewError(f"cannot find image {file_name!r}: {self.images_how}")
        root = self.images_root.resolve()
        p = root / file_name  # an absolute file_name replaces the root: then it must resolve inside it
        outside = ViewError(f"image.file_name {file_name!r} lies outside the image root {root}; not served")
        if not Path(os.path.normpath(p)).is_relative_to(root):
            raise outside  # by its text ('..', an absolute path elsewhere)
        real = resolved_inside(p, root)
        if real is None:
            if p.exists() or p.is_symlink():
                raise outside  # by the file it names (a symlink out of the root)
            raise ViewError(f"image not found: {p} (image.file_name {file_name!r} under {root}, from {self.images_how})")
        if not real.is_file():
            raise ViewError(f"image not found: {p} is not a file (image.file_name {file_name!r}, from {self.images_how})")
        return real


def _orientation(im) -> int:
    with contextlib.suppress(Exception):
        return int(im.getexif().get(0x0112, 1) or 1)
    return 1


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the labeler saw the file: after its EXIF rotation; header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ViewError(f"image {path} cannot be read: {e}") from None


def image_bytes(path: Path) -> tuple[bytes, str]:
    """The image for the browser: the file itself when the browser shows it as the labeler saw it, else a PNG."""
    from PIL import Image

    with Image.open(path) as im:
        fmt, mode, orient = im.format, im.mode, _orientation(im)
    if fmt in _BROWSER_FORMATS and mode in _BROWSER_MODES and orient == 1:
        return path.read_bytes(), Image.MIME.get(fmt, "application/octet-stream")
    from unsam.io import ImageError, load_image

    try:
        arr = load_image(path)
    except ImageError as e:
        raise ViewError(f"image {path} cannot be decoded: {e}") from None
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "image/png"
