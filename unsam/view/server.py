"""The viewer's HTTP side: :class:`Viewer` (the label sets and the model) and the request
handler (the page, the image list, label files, images and point prompts; nothing else)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.parse
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from unsam.view.labels import (
    PAGE_DEFAULT,
    PAGE_MAX,
    Entry,
    LabelSet,
    ViewError,
    image_bytes,
    resolved_inside,
)

__all__ = ["PAGE_MAX", "STATIC_DIR", "Viewer", "address", "make_server"]

log = logging.getLogger("unsam.view")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The page loads nothing but its own files: no inline script, no other origin, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


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
        return image_bytes(e.image)

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
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
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
        path = resolved_inside(STATIC_DIR / name, STATIC_DIR)
        ctype = _STATIC_TYPES.get(Path(name).suffix)
        if ctype is None or path is None or not path.is_file():
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
            req = json.loads(body, parse_constant=_no_constant)
            key, x, y = req["key"], req["x"], req["y"]
            if not isinstance(key, str) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
                raise TypeError
            if not all(math.isfinite(v) and abs(v) < 1 << 31 for v in (x, y)):
                return self._json(HTTPStatus.BAD_REQUEST, {"error": "x and y should be finite pixel coordinates"})
            x, y = int(x), int(y)
        except (ValueError, KeyError, TypeError, RecursionError):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "expected a JSON object {key: str, x: number, y: number}"})
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


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


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
