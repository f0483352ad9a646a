"""``python -m unsam.view``: a local web viewer for hierarchical mask labels.

    python -m unsam.view LABELS [--images ROOT] [--compare LABELS2] [--checkpoint FILE] [--port 8000] [--host 127.0.0.1]
    python -m unsam.view labels                          # the quick start's output, then open the printed address

``LABELS`` is a folder written by ``unsam.label``, ``unsam.baselines`` or
``unsam.predict`` (one JSON per image, searched recursively; the run's
``summary.json`` is skipped). The page lists the images (name, masks, levels;
filter by name; pages of at most 500 entries, so a folder of 100 000 images is
never sent at once; keyboard left/right for the previous/next image, up/down
for the level) and shows the selected image at full resolution with its masks
over it:

- a level slider: the partition of level l by the evaluation rule of
  :func:`unsam.evaluate.level_partitions` (each pixel takes its deepest mask of
  level <= l, inside a level the smaller; each 4-connected uncovered area is a
  segment of its own), with its segment count;
- hover highlights the mask under the pointer at that level; click selects it
  and shows its id, source, score, area, level, its chain of ancestors
  (``parent_id``) and its children, each clickable to walk the tree;
- filters by source and minimum score, outlines or filled, opacity, zoom;
- ``--compare LABELS2``: a second labeled folder of the same images side by
  side (a preset against a baseline, say), levels and hover linked;
- ``--checkpoint FILE``: a promptable model trained by ``unsam.train``;
  shift-click runs it on that point (on the server) and lists its masks, one
  per granularity, as candidates.

Images are found through ``image.file_name`` under ``--images ROOT``, else
under the input recorded in ``LABELS/config.yaml`` (``unsam.label`` and
``unsam.predict`` write it; a relative input is tried against the current
folder, then against LABELS' parent). The server binds 127.0.0.1 unless
``--host`` says otherwise, serves only the indexed label files, the images
they name inside the image root and its own page (anything else is a 404),
and answers only requests addressed to the host it listens on (no DNS
rebinding). A bad label file, a missing image or a mask whose size does not
match its image is reported on the page for that image; the rest keeps
working. The model is loaded once at start; a bad checkpoint is an error
there (exit status 2).

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

import argparse
import bisect
import contextlib
import io
import json
import logging
import os
import posixpath
import signal
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["STATIC_DIR", "LabelSet", "Viewer", "address", "build_parser", "main", "make_server"]

log = logging.getLogger("unsam.view")

STATIC_DIR = Path(__file__).resolve().parent / "view_static"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
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


def _is_inside(path: str, root: str) -> bool:
    """Lexical containment of normalised absolute paths (no ``..`` can climb out)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
            if p.is_file():
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
        path = self.root / key
        # One check per file at a time: the page asks for a file's labels and its image together.
        with self._key_locks[hash(key) % len(self._key_locks)]:
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
        root = str(self.images_root)
        # Normalise lexically: a file_name with '..' or an absolute path must stay inside the root.
        p = os.path.normpath(os.path.join(root, file_name))
        if not _is_inside(p, root):
            raise ViewError(f"image.file_name {file_name!r} lies outside the image root {root}; not served")
        if not os.path.isfile(p):
            raise ViewError(f"image not found: {p} (image.file_name {file_name!r} under {root}, from {self.images_how})")
        return Path(p)


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


def _image_bytes(path: Path) -> tuple[bytes, str]:
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


# --------------------------------------------------------------------------- the app


class Viewer:
    """The server's state: the label sets, and the promptable model if any (loaded once)."""

    def __init__(self, labels: LabelSet, compare: LabelSet | None = None, predictor=None, checkpoint: str | None = None) -> None:
        self.labels = labels
        self.compare = compare
        self.predictor = predictor
        self.checkpoint = checkpoint
        self._model_lock = threading.Lock()
        self._images: OrderedDict[str, Any] = OrderedDict()  # decoded images for the model, 2 at most

    def info(self) -> dict[str, Any]:
        def side(s: LabelSet) -> dict[str, Any]:
            return {"folder": str(s.root), "name": s.name, "images": len(s), "images_root": str(s.images_root) if s.images_root else None, "images_how": s.images_how}

        return {
            "main": side(self.labels),
            "compare": side(self.compare) if self.compare is not None else None,
            "model": self.checkpoint if self.predictor is not None else None,
            "page_max": PAGE_MAX,
        }

    def label(self, side: str, key: str) -> tuple[bytes, Entry]:
        """Bytes and check of the label file of ``key`` (a main-set key) on ``side``."""
        if key not in self.labels.index:
            raise KeyError(key)
        if side == "main":
            return self.labels.read(key)
        if self.compare is None:
            raise KeyError(key)
        main = self.labels.entry(key)
        ck = self.compare.match(key)
        if ck is None:
            return b"", Entry(key, error=f"{key}: no label file for this image in {self.compare.root}")
        if main.width is None:
            return self.compare.read(ck)
        return self.compare.read(ck, expect_size=(main.width, main.height))

    def image(self, key: str) -> tuple[bytes, str]:
        if key not in self.labels.index:
            raise KeyError(key)
        e = self.labels.entry(key)
        if e.image is None:
            raise ViewError(e.error or f"{key}: no image")
        return _image_bytes(e.image)

    def predict(self, key: str, x: float, y: float) -> dict[str, Any]:
        """The model's masks for a click at pixel (x, y) (integers: the pixel; its centre is used)."""
        from unsam.io import load_image, masks_to_rles

        if self.predictor is None:
            raise ViewError("no model: start the viewer with --checkpoint FILE (a promptable unsam.train checkpoint)")
        if key not in self.labels.index:
            raise KeyError(key)
        e = self.labels.entry(key)
        if e.image is None:
            raise ViewError(e.error or f"{key}: no image")
        if not (0 <= x < e.width and 0 <= y < e.height):
            raise ValueError(f"point ({x}, {y}) lies outside the {e.width}x{e.height} image")
        with self._model_lock:
            t0 = time.perf_counter()
            img = self._images.get(str(e.image))
            if img is None:
                img = load_image(e.image)
                self._images[str(e.image)] = img
                while len(self._images) > 2:
                    self._images.popitem(last=False)
            self._images.move_to_end(str(e.image))
            masks, ious = self.predictor.predict_points(img, [[float(x) + 0.5, float(y) + 0.5]])
            ms = (time.perf_counter() - t0) * 1000
        m = masks[0].numpy()
        rles = masks_to_rles(m)
        cands = [
            {"granularity": g, "iou": round(float(ious[0, g]), 4), "area": int(m[g].sum()), "segmentation": rles[g]}
            for g in range(m.shape[0])
        ]
        return {"key": key, "point": [x, y], "candidates": cands, "ms": round(ms, 1)}


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server_version = "unsam.view"
    protocol_version = "HTTP/1.1"
    viewer: Viewer  # set on the subclass made by make_server
    allowed_hosts: frozenset[str] | None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    # ---------------------------------------------------------------- replies

    def _send(self, status: int, body: bytes, ctype: str, cache: str = "no-cache") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _not_found(self) -> None:
        self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    # ---------------------------------------------------------------- routing

    def _host_ok(self) -> bool:
        if self.allowed_hosts is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        return host in self.allowed_hosts

    def _parts(self) -> tuple[list[str], dict[str, str]] | None:
        """The request path as decoded segments and the query; None for anything odd (then 404)."""
        raw, _, query = self.path.partition("?")
        if not raw.startswith("/") or raw.startswith("//"):
            return None
        segs = [urllib.parse.unquote(s, errors="strict") for s in raw.split("/")[1:]]
        # A decoded segment may not climb, hide a separator or a NUL: '%2e%2e', '..%2f..' and the like.
        if any(s in (".", "..") or "/" in s or "\\" in s or "\0" in s for s in segs):
            return None
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
        return segs, q

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._post()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _get(self) -> None:
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
        try:
            parsed = self._parts()
        except UnicodeDecodeError:
            parsed = None
        if parsed is None:
            return self._not_found()
        segs, q = parsed
        v = self.viewer
        if segs == [""] or segs == ["index.html"]:
            return self._static("index.html")
        if len(segs) == 2 and segs[0] == "static":
            return self._static(segs[1])
        if segs == ["api", "info"]:
            return self._json(HTTPStatus.OK, v.info())
        if segs == ["api", "images"]:
            try:
                offset, limit = int(q.get("offset", 0)), int(q.get("limit", PAGE_DEFAULT))
            except ValueError:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": "offset and limit should be integers"})
            stats = q.get("stats", "1") != "0"
            return self._json(HTTPStatus.OK, v.labels.page(offset, limit, q.get("q", ""), q.get("at"), stats))
        if len(segs) >= 3 and segs[:2] in (["api", "label"], ["api", "image"]):
            key = "/".join(segs[2:])
            if key not in v.labels.index:
                return self._not_found()
            if segs[1] == "label":
                side = q.get("side", "main")
                if side not in ("main", "compare") or (side == "compare" and v.compare is None):
                    return self._not_found()
                raw, entry = v.label(side, key)
                if entry.error is not None:
                    return self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": entry.error, "key": key})
                return self._send(HTTPStatus.OK, raw, "application/json")
            try:
                body, ctype = v.image(key)
            except ViewError as e:
                return self._json(HTTPStatus.NOT_FOUND, {"error": str(e), "key": key})
            return self._send(HTTPStatus.OK, body, ctype, cache="private, max-age=60")
        return self._not_found()

    def _static(self, name: str) -> None:
        path = STATIC_DIR / name
        ctype = _STATIC_TYPES.get(path.suffix)
        if ctype is None or not path.is_file():
            return self._not_found()
        self._send(HTTPStatus.OK, path.read_bytes(), ctype)

    def _post(self) -> None:
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= 1 << 16:
            self.close_connection = True  # the unread body would be taken for the next request
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "expected a small JSON body"})
        body = self.rfile.read(length)
        if self.path.partition("?")[0] != "/api/predict":
            return self._not_found()
        # JSON only: a cross-site form post cannot send it without a CORS preflight, which this server refuses.
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send application/json"})
        try:
            req = json.loads(body)
            key, x, y = str(req["key"]), int(req["x"]), int(req["y"])
        except (ValueError, KeyError, TypeError):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "expected {key, x, y}"})
        try:
            return self._json(HTTPStatus.OK, self.viewer.predict(key, x, y))
        except KeyError:
            return self._not_found()
        except (ViewError, ValueError) as e:
            return self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a model failure is shown on the page, the server goes on
            log.exception("prediction failed")
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"the model failed: {type(e).__name__}: {e}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive connections must not hold up Ctrl-C
    allow_reuse_address = True


def make_server(viewer: Viewer, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for ``viewer``; ``port`` 0 picks a free port."""
    loopback = host in ("127.0.0.1", "localhost", "::1")
    server_cls = _Server
    if ":" in host:
        import socket

        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_cls((host, port), type("Handler", (_Handler,), {"viewer": viewer, "allowed_hosts": None}))
    if loopback:
        # A page elsewhere that rebinds its own name to 127.0.0.1 sends its own name as Host: refuse it.
        # (Bound to a network address the files are exposed anyway; the CLI warns about that.)
        real_port = server.server_address[1]
        names = ("127.0.0.1", "localhost", "[::1]")
        server.RequestHandlerClass.allowed_hosts = frozenset(f"{n}:{real_port}" for n in names)
    return server


def address(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m unsam.view",
        description="A local web viewer for hierarchical mask labels (what unsam.label, unsam.baselines and "
        "unsam.predict write): level slider, hover and click through the mask tree, compare two folders, "
        "and click a promptable model.",
        epilog="Example: python -m unsam.view labels   (then open the printed address; Ctrl-C stops it)",
    )
    ap.add_argument("labels", metavar="LABELS", help="labeled folder (one JSON per image, searched recursively)")
    ap.add_argument("--images", metavar="ROOT", help="image root that image.file_name is relative to (default: the input recorded in LABELS/config.yaml)")
    ap.add_argument("--compare", metavar="LABELS2", help="a second labeled folder of the same images, shown side by side")
    ap.add_argument("--checkpoint", metavar="FILE", help="promptable unsam.train checkpoint: shift-click runs it on that point")
    ap.add_argument("--gpu", action="store_true", help="run the --checkpoint model on the GPU")
    ap.add_argument("--port", type=int, default=8000, help="port (0: any free port; the printed address is the real one) [8000]")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback exposes your files to the network [127.0.0.1]")
    ap.add_argument("--verbose", action="store_true", help="log every request")
    return ap


def _load_predictor(checkpoint: str, gpu: bool):
    import torch

    from unsam.predict import Predictor

    if gpu and not torch.cuda.is_available():
        raise ViewError("--gpu given but torch sees no CUDA GPU")
    try:
        pred = Predictor.from_checkpoint(checkpoint, "cuda" if gpu else "cpu")
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ViewError(f"--checkpoint {checkpoint}: {e}") from None
    if pred.task != "prompt":
        raise ViewError(f"--checkpoint {checkpoint}: a whole-image model; the viewer needs a promptable one (model unsam_prompt_*)")
    return pred


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    # Import the label checks (unsam.io imports torch: seconds) now, not on the first page.
    import PIL.Image  # noqa: F401

    import unsam.io  # noqa: F401

    try:
        labels = LabelSet(args.labels, args.images)
        compare = LabelSet(args.compare, args.images) if args.compare else None
        if compare is not None and compare.images_root is None:
            compare.images_root, compare.images_how = labels.images_root, labels.images_how
        predictor = _load_predictor(args.checkpoint, args.gpu) if args.checkpoint else None
        server = make_server(Viewer(labels, compare, predictor, args.checkpoint), args.host, args.port)
    except ViewError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the port is taken, the address is not ours
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    if not labels.keys:
        print(f"warning: no label files (*.json) in {labels.root}", file=sys.stderr)
    if labels.images_root is None:
        print(f"warning: images not found ({labels.images_how})", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read these labels and images", file=sys.stderr)
    extra = (f", compare {compare.root}" if compare else "") + (f", model {args.checkpoint}" if predictor else "")
    print(f"unsam.view: {len(labels)} label files in {labels.root}{extra}", flush=True)
    print(f"unsam.view: serving at {address(server)}  (Ctrl-C to stop)", flush=True)
    # SIGTERM ends the server like Ctrl-C does (a test or a process manager stopping it).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        print("unsam.view: stopped", flush=True)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
