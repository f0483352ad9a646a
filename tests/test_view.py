"""``python -m unsam.view``: the server over HTTP, and the page in a real (headless) Chromium.

Expectations are computed from the label JSONs the server serves (they change
as the pipeline changes): segment counts and whole partitions come from
``unsam.evaluate.level_partitions``; the mask under a pixel is the README's
rule read straight off the JSON. Browser tests skip without chromium,
chromedriver or selenium, except under CI (``CI=true``), where .ci/run
installs them and a missing browser is an error.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from unsam.evaluate import level_partitions
from unsam.io import annotation_record, image_record, read_label_json, write_json_atomic
from unsam.view import PAGE_MAX, LabelSet, Viewer, address, make_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
import view_browser as vb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
DATA = Path(os.environ.get("UNSAM_DATA", ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    """The quick start's main job on the sample images."""
    from unsam.label import main as label_main

    out = tmp_path_factory.mktemp("view") / "labels"
    assert label_main(["--input", str(IMAGES), "--output", str(out), "--backbone", "classic", "--workers", "0", "--quiet"]) == 0
    assert keys_of(out) == ["coco_062554.json", "coco_397133.json", "coco_475678.json"]
    return out


def load(labels: Path, key: str) -> dict:
    obj = read_label_json(labels / key)
    assert obj is not None, key
    return obj


def keys_of(labels: Path) -> list[str]:
    return sorted(p.name for p in labels.glob("*.json") if p.name != "summary.json")


def decode_all(anns: list[dict]) -> np.ndarray:
    """bool[H, W, n]: every mask of a file."""
    rles = [{"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()} for a in anns]
    return mask_utils.decode(rles).astype(bool)


def partition(anns: list[dict], h: int, w: int, level: int) -> np.ndarray:
    parts = level_partitions(anns, h, w)
    return parts[min(level, len(parts) - 1)]


def mask_at(anns: list[dict], masks: np.ndarray, level: int, x: int, y: int) -> int | None:
    """The README's rule for pixel (x, y) at level l: its deepest mask of level <= l; among masks of one
    level the smaller, then the later in the file. Returns the annotation index (None: no mask there)."""
    hits = [i for i, a in enumerate(anns) if a["level"] <= level and masks[y, x, i]]
    if not hits:
        return None
    return max(hits, key=lambda i: (anns[i]["level"], -int(masks[..., i].sum()), i))


def interior_pixel(part: np.ndarray, seg: int) -> tuple[int, int]:
    """(x, y) of a pixel of segment ``seg`` whose 4 neighbours are in it too (a click there cannot miss)."""
    inner = part == seg
    inner[1:-1, 1:-1] &= (part[:-2, 1:-1] == seg) & (part[2:, 1:-1] == seg) & (part[1:-1, :-2] == seg) & (part[1:-1, 2:] == seg)
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    ys, xs = np.nonzero(inner)
    assert len(ys), f"segment {seg} has no interior pixel"
    return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


def canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered by first appearance in row-major order (what the page's partition() returns)."""
    _, first, inv = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    return rank[inv.ravel()].reshape(labels.shape)


@contextlib.contextmanager
def served(labels, images=None, compare=None):
    """An in-process server (HTTP-level tests: no interpreter start, no browser)."""
    lab = LabelSet(labels, images)
    cmp = LabelSet(compare, images) if compare is not None else None
    if cmp is not None and cmp.images_root is None:
        cmp.images_root, cmp.images_how = lab.images_root, lab.images_how
    srv = make_server(Viewer(lab, cmp), "127.0.0.1", 0)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield address(srv)
    finally:
        srv.shutdown()
        srv.server_close()


def raw_get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (http.client does not normalise '..')."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": u.netloc, **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get_json(url: str, path: str) -> tuple[int, dict]:
    status, body = raw_get(url, path)
    return status, json.loads(body)


# ----------------------------------------------------------------------------- CLI and HTTP


def test_help_and_bad_start(tmp_path, capsys):
    res = subprocess.run([sys.executable, "-m", "unsam.view", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0
    for opt in ("LABELS", "--images", "--compare", "--checkpoint", "--port", "--host", "127.0.0.1"):
        assert opt in res.stdout, opt
    from unsam.view import main

    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_checkpoint_is_an_error_at_start(labels, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    res = subprocess.run([sys.executable, "-m", "unsam.view", str(labels), "--checkpoint", str(junk), "--port", "0"],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error: --checkpoint" in res.stderr and "cannot read checkpoint" in res.stderr
    assert "serving at" not in res.stdout
    from unsam.view import main

    torch.save({"weights": {}}, tmp_path / "other.pt")
    torch.save({"model": {"x": torch.zeros(1)}, "config": {"model": {"name": "unsam_prompt_tiny", "kwargs": {}}}}, tmp_path / "mismatch.pt")
    for bad, words in ((tmp_path / "missing.pt", "not found"), (tmp_path / "other.pt", "not an unsam.train checkpoint"), (tmp_path / "mismatch.pt", "Missing key")):
        assert main([str(labels), "--checkpoint", str(bad), "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --checkpoint {bad}") and words in err, err


def test_server_binds_loopback_prints_its_real_port_and_stops_on_ctrl_c(labels):
    srv = vb.ViewServer(labels)
    try:
        u = urllib.parse.urlsplit(srv.url)
        assert u.hostname == "127.0.0.1" and u.port and u.port != 0  # --port 0: a free port, printed as it is
        status, info = get_json(srv.url, "/api/info")
        assert status == 200 and info["main"]["images"] == 3 and info["compare"] is None and info["model"] is None
        assert Path(info["main"]["images_root"]) == IMAGES.resolve()  # from labels/config.yaml
    finally:
        rc, out = srv.stop()
    assert rc == 0 and "stopped" in out


def test_paths_outside_the_folders_are_404(labels, tmp_path):
    lab = tmp_path / "lab"
    shutil.copytree(labels, lab)
    obj = load(lab, "coco_062554.json")
    obj["image"]["file_name"] = "../view/secret.jpg"  # an image outside the image root
    write_json_atomic(lab / "escape.json", obj)
    with served(lab) as url:
        assert raw_get(url, "/api/label/coco_062554.json")[0] == 200
        assert raw_get(url, "/api/image/coco_062554.json")[0] == 200
        for path in (
            "/api/label/../../../../etc/passwd",
            "/api/label/..%2f..%2f..%2fetc%2fpasswd",
            "/api/label/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/api/label/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
            "/api/label//etc/passwd",
            "/api/label/%2fetc%2fpasswd",
            "/api/image/../../../etc/passwd",
            "/api/image/%2e%2e%2fcoco_062554.json",
            "/static/../view.py",
            "/static/%2e%2e/view.py",
            "/static/..%2fview.py",
            "/../../../../etc/passwd",
            "//etc/passwd",
            "/etc/passwd",
            "/api/label/config.yaml",  # inside LABELS but not a label file
            "/api/label/summary.json",
            "/api/label/coco_062554.json%00",
            "/api/label/coco_062554.json/..",
            f"/api/label/{urllib.parse.quote(str(lab / 'coco_062554.json'), safe='')}",  # absolute path
            "http://127.0.0.1/etc/passwd",
        ):
            status, body = raw_get(url, path)
            assert status == 404, (path, status)
            assert b"root:" not in body and b"import" not in body
        status, body = raw_get(url, "/api/image/escape.json")
        assert status == 404 and b"outside the image root" in body
        # Another site's page that rebinds its own name to 127.0.0.1 sends that name as Host.
        assert raw_get(url, "/api/info", {"Host": "attacker.example:80"})[0] == 403


def test_symlinks_out_of_the_folders_are_404(labels, tmp_path):
    """Containment is decided on the resolved file: a symlink inside the label folder or the
    image root that points out of it is not served (nor listed)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps(load(labels, "coco_062554.json")))
    (outside / "secret.jpg").write_bytes((IMAGES / "coco_062554.jpg").read_bytes())
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    (images / "link.jpg").symlink_to(outside / "secret.jpg")
    (images / "inside_link.jpg").symlink_to(images / "coco_062554.jpg")  # inside: fine
    lab = tmp_path / "lab"
    shutil.copytree(labels, lab)
    (lab / "link.json").symlink_to(outside / "secret.json")
    (lab / "sub").symlink_to(outside, target_is_directory=True)
    for name, file_name in (("to_link.json", "link.jpg"), ("to_inside.json", "inside_link.jpg")):
        obj = load(lab, "coco_062554.json")
        obj["image"]["file_name"] = file_name
        write_json_atomic(lab / name, obj)
    with served(lab, images) as url:
        status, listing = get_json(url, "/api/images?limit=500&stats=0")
        keys = [it["key"] for it in listing["items"]]
        assert "link.json" not in keys and not any(k.startswith("sub/") for k in keys) and "to_link.json" in keys
        for path in ("/api/label/link.json", "/api/label/sub/secret.json", "/api/image/link.json"):
            assert raw_get(url, path)[0] == 404, path
        status, body = raw_get(url, "/api/image/to_link.json")
        assert status == 404 and b"outside the image root" in body
        assert raw_get(url, "/api/image/to_inside.json")[0] == 200
        # A label file replaced by a symlink after the listing is not read through it.
        (lab / "coco_475678.json").unlink()
        (lab / "coco_475678.json").symlink_to(outside / "secret.json")
        assert raw_get(url, "/api/label/coco_475678.json")[0] == 422


def _request(url: str, method: str, path: str, headers: dict, body: bytes | None) -> int | None:
    """One request sent byte for byte over a socket (any bytes in the path); its status, None when
    the server closed the connection without one."""
    import socket

    u = urllib.parse.urlsplit(url)
    head = f"{method} ".encode() + path.encode("utf-8", "surrogateescape") + b" HTTP/1.1\r\n"
    head += b"".join(f"{k}: {v}\r\n".encode("latin-1", "replace") for k, v in headers.items()) + b"Connection: close\r\n\r\n"
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        try:
            sock.sendall(head + (body or b""))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while b"\r\n" not in data:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit() else None


def test_bad_bodies_are_400_and_every_page_carries_a_csp(labels):
    with served(labels) as url:
        host = urllib.parse.urlsplit(url).netloc
        for body in (b'{"key": "coco_062554.json", "x": Infinity, "y": 3}', b'{"key": "coco_062554.json", "x": NaN, "y": 3}',
                     b'{"key": "coco_062554.json", "x": 1e400, "y": 3}', b'{"key": "coco_062554.json", "x": 1e300, "y": 3}',
                     b'{"key": 5, "x": 1, "y": 3}', b'{"key": "coco_062554.json", "x": true, "y": 3}', b"[" * 5000 + b"]" * 5000,
                     b"\xff\xfe", b'{"key": "a"}'):
            status = _request(url, "POST", "/api/predict", {"Host": host, "Content-Type": "application/json", "Content-Length": str(len(body))}, body)
            assert status == 400, (body[:40], status)
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        for path in ("/", "/static/app.js", "/api/info", "/nope"):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            csp = r.getheader("Content-Security-Policy") or ""
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        conn.close()


def test_request_fuzz_every_request_gets_an_answer(labels):
    """Random paths, methods, headers and bodies: each gets a status line, and the server
    keeps serving (the page's own requests still work after all of them)."""
    rng = np.random.default_rng(0)
    pieces = ["api", "label", "image", "images", "info", "predict", "static", "app.js", "..", "%2e%2e", "%2f", "%00", "%ff",
              "coco_062554.json", "x" * 300, "\u00e9", "?", "#", ";", "%", "~", "index.html", ""]
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "GETT"]
    n = 0
    with served(labels) as url:
        host = urllib.parse.urlsplit(url).netloc
        for _ in range(400):
            path = "/" + "/".join(rng.choice(pieces, size=int(rng.integers(0, 5))))
            if rng.random() < 0.3:
                path += "?" + "&".join(f"{rng.choice(['offset', 'limit', 'q', 'at', 'side', 'stats'])}={rng.choice(['-1', '1e9', 'x', '', '0', 'main', 'compare'])}" for _ in range(int(rng.integers(1, 4))))
            headers = {"Host": str(rng.choice([host, host, "evil.example", "", "127.0.0.1:1"]))}
            body = None
            if rng.random() < 0.5:
                body = bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8)) if rng.random() < 0.5 else json.dumps(
                    {"key": str(rng.choice(pieces)), "x": float(rng.choice([1.0, -1e308, 1e308, 3.5])), "y": int(rng.integers(-5, 5))}).encode()
                headers["Content-Type"] = str(rng.choice(["application/json", "text/plain", "application/json; charset=utf-8"]))
                headers["Content-Length"] = str(rng.choice([len(body), len(body), -1, 1 << 40]) if rng.random() < 0.9 else "abc")
                if headers["Content-Length"] != str(len(body)):
                    body = body[: max(0, min(len(body), int(headers["Content-Length"]) if headers["Content-Length"].lstrip("-").isdigit() else 0))]
            status = _request(url, str(rng.choice(methods)), path.replace(" ", "%20"), headers, body)
            assert status is None or 200 <= status < 600
            n += status is not None
        assert n >= 380  # all but connections the server closed on purpose (oversized bodies) got a status line
        assert raw_get(url, "/api/label/coco_062554.json")[0] == 200
        assert raw_get(url, "/api/image/coco_062554.json")[0] == 200
        assert get_json(url, "/api/info")[0] == 200


def make_bad_folder(labels: Path, root: Path) -> tuple[Path, Path]:
    """A label folder with every kind of bad file, and one good one, over an image root."""
    images = root / "images"
    images.mkdir()
    shutil.copy(IMAGES / "coco_062554.jpg", images / "coco_062554.jpg")
    from PIL import Image

    with Image.open(IMAGES / "coco_062554.jpg") as im:
        im.resize((im.width // 2, im.height // 2)).save(images / "small.jpg")
    bad = root / "bad"
    bad.mkdir()
    good = load(labels, "coco_062554.json")
    raw = json.dumps(good)
    (bad / "good.json").write_text(raw)
    (bad / "truncated.json").write_text(raw[: len(raw) // 2])
    (bad / "malformed.json").write_text('{"image": {"file_name": "coco_062554.jpg"}, "annotations": [}')
    o = json.loads(raw)
    o["image"]["file_name"] = "missing.jpg"
    (bad / "missing_image.json").write_text(json.dumps(o))
    o = json.loads(raw)
    o["annotations"][3]["segmentation"]["size"] = [o["image"]["height"] + 1, o["image"]["width"]]
    (bad / "mask_size.json").write_text(json.dumps(o))
    o = json.loads(raw)
    o["image"]["file_name"] = "small.jpg"  # labels of the full-size image over a half-size file
    (bad / "image_size.json").write_text(json.dumps(o))
    (bad / "not_labels.json").write_text('{"images": [], "annotations": []}')
    return bad, images


BAD_MESSAGES = {
    "truncated.json": ("malformed JSON", "truncated"),
    "malformed.json": ("malformed JSON", "line 1"),
    "missing_image.json": ("image not found", "missing.jpg"),
    "mask_size.json": ("mask size does not match its image", "annotations[3]"),
    "image_size.json": ("image size does not match the labels", "small.jpg"),
    "not_labels.json": ("not a per-image label file",),
}


def test_bad_files_are_reported_per_image_over_http(labels, tmp_path):
    bad, images = make_bad_folder(labels, tmp_path)
    with served(bad, images) as url:
        for key, words in BAD_MESSAGES.items():
            status, body = get_json(url, f"/api/label/{key}")
            assert status == 422, key
            assert all(w in body["error"] for w in words), (key, body["error"])
        status, page = get_json(url, "/api/images?limit=50")
        assert status == 200 and page["total"] == 7
        by_key = {it["key"]: it for it in page["items"]}
        assert by_key["good.json"]["error"] is None and by_key["good.json"]["masks"] == len(load(labels, "coco_062554.json")["annotations"])
        assert all(by_key[k]["error"] for k in BAD_MESSAGES)
        # The server kept serving.
        assert raw_get(url, "/api/label/good.json")[0] == 200 and raw_get(url, "/api/image/good.json")[0] == 200


def test_image_list_is_paged_on_the_server(tmp_path):
    lab = tmp_path / "many"
    n = 300
    expect = {}
    for i in range(n):
        k = i % 4  # masks in the file: levels 0 .. k-1, one mask each
        anns = []
        for lv in range(k):
            m = np.zeros((8, 8), bool)
            m[: 8 - lv, : 8 - lv] = True
            anns.append(annotation_record(lv + 1, m, level=lv, parent_id=lv or None, score=0.5, source="atoms"))
        key = f"{'ab'[i % 2]}/sub{i % 3}/img_{i:04d}.json"
        write_json_atomic(lab / key, {"image": image_record(i + 1, key[:-5] + ".jpg", 8, 8), "annotations": anns})
        expect[key] = (k, k if k else 1)
    (lab / "summary.json").write_text("{}")
    (lab / "config.yaml").write_text("_run: {input: nowhere}\n")
    (lab / ".hidden.json").write_text("{}")
    (lab / "vis").mkdir()
    (lab / "vis" / "x.jpg").write_bytes(b"")
    keys = sorted(expect)
    with served(lab) as url:
        _, p = get_json(url, "/api/images?limit=64&stats=0")  # files not read yet: names only, at once
        assert [it["key"] for it in p["items"]] == keys[:64] and all(it["masks"] is None and it["error"] is None for it in p["items"])
        seen = []
        for off in range(0, n, 64):
            status, p = get_json(url, f"/api/images?offset={off}&limit=64")
            assert status == 200 and p["total"] == n and p["offset"] == off and len(p["items"]) == min(64, n - off)
            for it in p["items"]:
                assert (it["masks"], it["levels"]) == expect[it["key"]], it
                assert "image not found" in it["error"] or "not found from here" in it["error"]
            seen += [it["key"] for it in p["items"]]
        assert seen == keys  # every file once, sorted, config and summary and hidden files left out
        _, p = get_json(url, "/api/images?limit=64&stats=0")  # read before: from the cache, without reading again
        assert [(it["masks"], it["levels"]) for it in p["items"]] == [expect[k] for k in keys[:64]]
        _, p = get_json(url, "/api/images?limit=1000000")
        assert p["limit"] == PAGE_MAX and len(p["items"]) == n  # never more than PAGE_MAX in one answer
        _, p = get_json(url, "/api/images?offset=100000&limit=64")
        assert p["offset"] == 256 and len(p["items"]) == n - 256  # clamped to the last page
        _, p = get_json(url, "/api/images?q=SUB2/IMG_01&limit=10")
        want = [k for k in keys if "sub2/img_01" in k]
        assert p["total"] == len(want) > 10 and [it["key"] for it in p["items"]] == want[:10]
        target = keys[137]
        _, p = get_json(url, f"/api/images?at={urllib.parse.quote(target)}&limit=50")
        assert p["offset"] == 100 and target in [it["key"] for it in p["items"]]
        assert get_json(url, "/api/images?offset=x")[0] == 400


def test_images_are_sent_as_the_labeler_saw_them(labels, tmp_path):
    """JPEG/PNG as they are; TIFF and EXIF-rotated files decoded by unsam.io.load_image and sent as PNG."""
    import io

    from PIL import Image

    images, lab = tmp_path / "images", tmp_path / "lab"
    images.mkdir()
    shutil.copy(IMAGES / "coco_062554.jpg", images / "plain.jpg")
    with Image.open(IMAGES / "coco_062554.jpg") as im:
        im.save(images / "scan.tif")
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
        im.save(images / "phone.jpg", exif=exif)
        w, h = im.size
    obj = load(labels, "coco_062554.json")
    for name, size in (("plain.jpg", (w, h)), ("scan.tif", (w, h)), ("phone.jpg", (h, w))):
        o = json.loads(json.dumps(obj))
        o["image"].update(file_name=name, width=size[0], height=size[1])
        o["annotations"] = [annotation_record(1, np.ones(size[::-1], bool), level=0, parent_id=None, score=1.0, source="partition")]
        write_json_atomic(lab / f"{name}.json", o)
    with served(lab, images) as url:
        for name, size, fmt in (("plain.jpg", (w, h), "JPEG"), ("scan.tif", (w, h), "PNG"), ("phone.jpg", (h, w), "PNG")):
            assert raw_get(url, f"/api/label/{name}.json")[0] == 200, name
            status, body = raw_get(url, f"/api/image/{name}.json")
            assert status == 200
            with Image.open(io.BytesIO(body)) as got:
                assert (got.format, got.size) == (fmt, size), name
        assert raw_get(url, "/api/image/plain.jpg.json")[1] == (images / "plain.jpg").read_bytes()


def test_image_root_from_the_recorded_input(labels, tmp_path, monkeypatch):
    # unsam.label records --input as given: a relative one is tried from here, then from LABELS' parent.
    proj = tmp_path / "proj"
    shutil.copytree(IMAGES, proj / "data" / "imgs")
    lab = proj / "labels"
    shutil.copytree(labels, lab)
    (lab / "config.yaml").write_text("_run: {input: data/imgs}\n")
    monkeypatch.chdir(tmp_path)
    s = LabelSet(lab)
    assert s.images_root == (proj / "data" / "imgs").resolve()
    assert s.entry("coco_062554.json").error is None
    (lab / "config.yaml").write_text("_run: {input: 'data/imgs/*.jpg'}\n")  # a glob, as the labeler resolves it
    assert LabelSet(lab).images_root == (proj / "data" / "imgs").resolve()
    assert LabelSet(lab, images=IMAGES).images_root == IMAGES.resolve()  # --images wins
    (lab / "config.yaml").unlink()
    s = LabelSet(lab)
    assert s.images_root is None and "give --images" in s.entry("coco_062554.json").error


# ----------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    found = vb.find_browser()
    if isinstance(found, str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run under CI: {found}")
        pytest.skip(found)
    drv = vb.make_driver(*found, str(tmp_path_factory.mktemp("chromium-profile")))
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def server(labels):
    with vb.ViewServer(labels) as srv:
        yield srv


def open_key(drv, srv, key: str) -> dict:
    drv.get("about:blank")
    drv.get(f"{srv.url}#key={urllib.parse.quote(key)}")
    return vb.wait_ready(drv, key)


def js(drv, script: str, *args):
    return drv.execute_script(script, *args)


def wait_list(drv, timeout: float = 30) -> None:
    """Wait until the list shows masks, levels and problems (asked for after the image)."""
    deadline = time.monotonic() + timeout
    while not js(drv, "return window.unsamView.listReady;"):
        assert time.monotonic() < deadline, "the list's masks and levels never came"
        time.sleep(0.05)


def page_partition(drv, side: str, h: int, w: int) -> np.ndarray:
    b64 = js(drv, "return window.unsamView.partition(arguments[0]);", side)
    return np.frombuffer(base64.b64decode(b64), np.int32).reshape(h, w)


def test_page_lists_the_images(driver, server, labels):
    driver.get(server.url)
    st = vb.wait_ready(driver)
    keys = keys_of(labels)
    assert st["key"] == keys[0] and not st["errors"]
    wait_list(driver)
    rows = js(driver, "return [...document.querySelectorAll('#list tbody tr')].map(r => [r.dataset.key, ...[...r.cells].map(c => c.textContent)]);")
    want = []
    for k in keys:
        o = load(labels, k)
        want.append([k, o["image"]["file_name"], str(len(o["annotations"])), str(max(a["level"] for a in o["annotations"]) + 1)])
    assert rows == want
    assert driver.find_element("id", "page-info").text == "1–3 of 3"
    # Filter by name.
    box = driver.find_element("id", "filter")
    box.send_keys("397")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and js(driver, "return document.querySelectorAll('#list tbody tr').length;") != 1:
        time.sleep(0.05)
    assert js(driver, "return [...document.querySelectorAll('#list tbody tr')].map(r => r.dataset.key);") == ["coco_397133.json"]


def test_level_slider_shows_the_level_partition(driver, server, labels):
    from selenium.webdriver.common.keys import Keys

    for key in keys_of(labels):
        obj = load(labels, key)
        anns, h, w = obj["annotations"], obj["image"]["height"], obj["image"]["width"]
        parts = level_partitions(anns, h, w)
        open_key(driver, server, key)
        assert int(js(driver, "return document.getElementById('level').max;")) == len(parts) - 1
        for lv in range(len(parts)):
            js(driver, "window.unsamView.setLevel(arguments[0]);", lv)
            shown = js(driver, "return document.querySelector('.panel[data-side=main]').dataset.segments;")
            assert int(shown) == int(parts[lv].max()), (key, lv)
            if key == keys_of(labels)[0]:  # the whole partition, pixel by pixel, on one image
                np.testing.assert_array_equal(page_partition(driver, "main", h, w), canonical(parts[lv]), err_msg=f"{key} level {lv}")
    # The slider itself, by keyboard: Home, then three steps right.
    slider = driver.find_element("id", "level")
    slider.send_keys(Keys.HOME)
    slider.send_keys(Keys.ARROW_RIGHT * 3)
    assert js(driver, "return window.unsamView.level;") == 3
    assert int(js(driver, "return document.querySelector('.panel[data-side=main]').dataset.segments;")) == int(parts[3].max())
    assert driver.find_element("id", "level-label").text.startswith("3 /")


def test_click_selects_the_mask_there_and_walks_the_tree(driver, server, labels):
    key = keys_of(labels)[1]
    obj = load(labels, key)
    anns, h, w = obj["annotations"], obj["image"]["height"], obj["image"]["width"]
    masks = decode_all(anns)
    by_id = {a["id"]: a for a in anns}
    open_key(driver, server, key)
    walked = None
    for lv in (2, len(level_partitions(anns, h, w)) // 2, 99):
        js(driver, "window.unsamView.setLevel(arguments[0]);", lv)
        lv = js(driver, "return window.unsamView.level;")
        part = partition(anns, h, w, lv)
        # A pixel inside the largest and inside a middle-sized segment, away from their borders.
        ids, counts = np.unique(part, return_counts=True)
        for seg in (ids[np.argmax(counts)], ids[np.argsort(counts)[len(counts) // 2]]):
            x, y = interior_pixel(part, seg)
            vb.click_pixel(driver, "main", x, y)
            assert js(driver, "return window.unsamView.lastPixel;") == {"side": "main", "x": x, "y": y}
            i = mask_at(anns, masks, lv, x, y)
            sel = js(driver, "return window.unsamView.selected;")
            if i is None:
                assert sel is None
                continue
            assert masks[..., i][part == part[y, x]].all()  # the rule and level_partitions agree on this segment
            assert sel == {"side": "main", "id": anns[i]["id"]}, (lv, x, y)
            assert driver.find_element("id", "sel-id").text == str(anns[i]["id"])
            assert driver.find_element("id", "sel-level").text == str(anns[i]["level"])
            assert driver.find_element("id", "sel-source").text == anns[i]["source"]
            # The ancestors: parent_id, then its parent_id, ...
            chain, p = [], anns[i]["parent_id"]
            while p is not None:
                chain.append(p)
                p = by_id[p]["parent_id"]
            shown = [int(e.get_attribute("data-id")) for e in driver.find_elements("css selector", "#chain li")]
            assert shown == chain
            kids = [a["id"] for a in anns if a["parent_id"] == anns[i]["id"]]
            assert [int(e.get_attribute("data-id")) for e in driver.find_elements("css selector", "#children li")] == kids
            if chain:
                walked = (sel["id"], chain)
    # Up the tree and back down: click the parent, then the child we came from.
    assert walked, "some selected mask should have a parent"
    child, chain = walked
    js(driver, "window.unsamView.select(arguments[0], arguments[1]);", "main", child)
    driver.find_element("css selector", "#chain li").click()
    assert js(driver, "return window.unsamView.selected;")["id"] == chain[0]
    kids = driver.find_elements("css selector", "#children li")
    assert child in [int(e.get_attribute("data-id")) for e in kids]
    next(e for e in kids if int(e.get_attribute("data-id")) == child).click()
    assert js(driver, "return window.unsamView.selected;")["id"] == child


def test_hover_filters_and_keyboard(driver, server, labels):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    keys = keys_of(labels)
    obj = load(labels, keys[0])
    anns, h, w = obj["annotations"], obj["image"]["height"], obj["image"]["width"]
    masks = decode_all(anns)
    open_key(driver, server, keys[0])
    js(driver, "window.unsamView.setLevel(6);")
    # Hover: the status line names the mask under the pointer, and the highlight layer is drawn there.
    part = partition(anns, h, w, 6)
    ids, counts = np.unique(part, return_counts=True)
    x, y = interior_pixel(part, ids[np.argmax(counts)])
    pt = js(driver, "return window.unsamView.clientPoint('main', arguments[0], arguments[1]);", x, y)
    chain = ActionChains(driver)
    chain.w3c_actions.pointer_action.move_to_location(round(pt["x"]), round(pt["y"]))
    chain.perform()
    time.sleep(0.15)
    i = mask_at(anns, masks, 6, x, y)
    assert (f"main: mask #{anns[i]['id']} " if i is not None else "main: uncovered area") in driver.find_element("id", "status").text
    assert js(driver, "return window.unsamView.layerAlpha('main', 'hover', arguments[0], arguments[1]);", x, y) > 0
    # Filters: minimum score and source, against level_partitions of the masks they keep.
    thr = float(np.median([a["score"] for a in anns]))
    score = driver.find_element("id", "min-score")
    score.clear()
    score.send_keys(f"{thr:.6f}", Keys.ENTER)
    for lv in (6, 20):
        js(driver, "window.unsamView.setLevel(arguments[0]);", lv)
        kept = [a for a in anns if a["score"] >= float(f"{thr:.6f}")]
        assert js(driver, "return window.unsamView.segments();") == int(partition(kept, h, w, lv).max()), lv
    score.clear()
    score.send_keys("0", Keys.ENTER)
    driver.find_element("css selector", "input[data-source=partition]").click()
    kept = [a for a in anns if a["source"] != "partition"]
    assert js(driver, "return window.unsamView.segments();") == int(partition(kept, h, w, 20).max())
    driver.find_element("css selector", "input[data-source=partition]").click()
    assert js(driver, "return window.unsamView.segments();") == int(partition(anns, h, w, 20).max())
    # Outlines only: the fill goes (at an inner pixel of a segment of level 6), the outlines stay.
    js(driver, "window.unsamView.setLevel(6);")
    alpha_filled = js(driver, "return window.unsamView.layerAlpha('main', 'over', arguments[0], arguments[1]);", x, y)
    from selenium.webdriver.support.ui import Select

    covered = js(driver, "return window.unsamView.layerCoverage('main', 'over');")
    Select(driver.find_element("id", "mode")).select_by_value("outlines")
    assert alpha_filled > 0 and js(driver, "return window.unsamView.layerAlpha('main', 'over', arguments[0], arguments[1]);", x, y) == 0
    assert 0 < js(driver, "return window.unsamView.layerCoverage('main', 'over');") < 0.5 * covered
    Select(driver.find_element("id", "mode")).select_by_value("filled")
    # Keyboard: right and left arrows step through the list.
    js(driver, "document.activeElement.blur();")
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    assert vb.wait_ready(driver, keys[1])["key"] == keys[1]
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    vb.wait_ready(driver, keys[2])
    ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()
    vb.wait_ready(driver, keys[1])
    assert js(driver, "return document.querySelector('#list tr.current').dataset.key;") == keys[1]


def test_bad_files_show_a_message_and_the_rest_keeps_working(driver, labels, tmp_path):
    bad, images = make_bad_folder(labels, tmp_path)
    with vb.ViewServer(bad, "--images", images) as srv:
        driver.get(srv.url)
        vb.wait_ready(driver)
        wait_list(driver)
        flagged = js(driver, "return [...document.querySelectorAll('#list tr.bad')].map(r => r.dataset.key);")
        assert sorted(flagged) == sorted(BAD_MESSAGES)
        for key, words in BAD_MESSAGES.items():
            st = open_key(driver, srv, key)
            msg = driver.find_element("css selector", ".panel[data-side=main] .message").text
            assert all(wd in msg for wd in words), (key, msg)
            assert st["errors"]["main"] == msg
        st = open_key(driver, srv, "good.json")
        assert not st["errors"] and js(driver, "return window.unsamView.segments();") > 1
        assert driver.find_element("css selector", ".panel[data-side=main] .message").text == ""


@pytest.fixture(scope="module")
def prompt_checkpoint(labels, tmp_path_factory) -> Path:
    """A promptable model trained for one step on the labels (as tests/test_train.py trains its tiny models)."""
    from unsam.train import Trainer, config_from_dict

    out = tmp_path_factory.mktemp("prompt")
    cfg = config_from_dict({
        "model": {"name": "unsam_prompt_tiny", "kwargs": {"depth": 1}},
        "data": {"train": str(labels), "crop_size": 96, "max_masks": 8, "min_mask_area": 100, "clicks": 2, "workers": 0},
        "train": {"steps": 1, "batch_size": 1, "device": "cpu", "threads": 1, "log_every": 1, "ckpt_every": 1, "keep_checkpoints": 0},
    })  # fmt: skip
    Trainer(cfg, out).fit()
    assert (out / "model.pt").is_file()
    return out / "model.pt"


def test_compare_side_by_side_and_the_promptable_click(driver, labels, prompt_checkpoint, tmp_path):
    # The compare folder: the same images with only the partition ladder (a coarser "preset").
    cmp = tmp_path / "partition_only"
    for key in keys_of(labels):
        o = load(labels, key)
        keep = [a for a in o["annotations"] if a["source"] == "partition"]
        ids = {a["id"] for a in keep}
        for a in keep:
            a["parent_id"] = a["parent_id"] if a["parent_id"] in ids else None
        o["annotations"] = keep
        write_json_atomic(cmp / key, o)
    key = keys_of(labels)[2]
    main_obj, cmp_obj = load(labels, key), load(cmp, key)
    h, w = main_obj["image"]["height"], main_obj["image"]["width"]
    with vb.ViewServer(labels, "--compare", cmp, "--checkpoint", prompt_checkpoint) as srv:
        open_key(driver, srv, key)
        assert js(driver, "return [...document.querySelectorAll('.panel')].map(p => p.dataset.side);") == ["main", "compare"]
        for lv in (1, 5, 12):  # one slider for both sides
            js(driver, "window.unsamView.setLevel(arguments[0]);", lv)
            assert js(driver, "return window.unsamView.segments('main');") == int(partition(main_obj["annotations"], h, w, lv).max())
            assert js(driver, "return window.unsamView.segments('compare');") == int(partition(cmp_obj["annotations"], h, w, lv).max())
        np.testing.assert_array_equal(page_partition(driver, "compare", h, w), canonical(partition(cmp_obj["annotations"], h, w, 12)))
        # Clicking on the compare side selects there.
        cmasks = decode_all(cmp_obj["annotations"])
        x, y = w // 2, h // 2
        vb.click_pixel(driver, "compare", x, y)
        i = mask_at(cmp_obj["annotations"], cmasks, 12, x, y)
        assert js(driver, "return window.unsamView.selected;") == {"side": "compare", "id": cmp_obj["annotations"][i]["id"]}

        # Shift-click: the model runs on the server and its masks come back as candidates.
        from unsam.io import load_image
        from unsam.models.predict import Predictor

        pred = Predictor.from_checkpoint(prompt_checkpoint)
        x, y = w // 3, h // 3
        vb.click_pixel(driver, "main", x, y, shift=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not js(driver, "return window.unsamView.candidates;"):
            time.sleep(0.05)
        got = js(driver, "return window.unsamView.candidates;")
        assert got and "error" not in got, got
        want_m, want_iou = pred.predict_points(load_image(IMAGES / main_obj["image"]["file_name"]), [[x + 0.5, y + 0.5]])
        assert got["point"] == [x, y] and len(got["list"]) == pred.model.num_outputs == 6
        for g, c in enumerate(got["list"]):
            assert c["granularity"] == g
            assert c["iou"] == pytest.approx(float(want_iou[0, g]), abs=2e-3)
            area = int(want_m[0, g].sum())
            assert abs(c["area"] - area) <= 5 + 0.01 * area, (g, c["area"], area)
        assert len(driver.find_elements("css selector", "#candidates li")) == 6
        driver.find_elements("css selector", "#candidates li")[1].click()
        assert "on" in driver.find_elements("css selector", "#candidates li")[1].get_attribute("class")


@pytest.fixture(scope="module")
def sa1b_labels(tmp_path_factory) -> Path:
    src = DATA / "sa1b-samples"
    if not src.is_dir():
        pytest.skip(f"shared data not found at {src}")
    from unsam.label import main as label_main

    out = tmp_path_factory.mktemp("sa1b")
    assert label_main(["--input", str(src), "--limit", "1", "--output", str(out), "--backbone", "classic", "--workers", "0", "--quiet"]) == 0
    return out


def test_sa1b_time_to_interactive(driver, sa1b_labels):
    """The page of an SA-1B image (about 2250 x 1500) with about 1,000 masks is interactive within 1 s."""
    (key,) = keys_of(sa1b_labels)
    obj = load(sa1b_labels, key)
    assert obj["image"]["width"] * obj["image"]["height"] > 3_000_000
    assert len(obj["annotations"]) >= 500, "expected an SA-1B image with about 1,000 masks"
    with vb.ViewServer(sa1b_labels) as srv:
        ttis = []
        for _ in range(3):  # a fresh page each time; the first also meets a cold server
            st = open_key(driver, srv, key)
            ttis.append(st["tti"])
            print(f"SA-1B {key}: {len(obj['annotations'])} masks, interactive at {st['tti']:.0f} ms after navigation; {st['timings']}")
            # Interactive: the partition is there and a click selects.
            x, y = obj["image"]["width"] // 2, obj["image"]["height"] // 2
            vb.click_pixel(driver, "main", x, y)
            got = js(driver, "return window.unsamView.lastPixel;")  # one screen pixel is ~2.6 image pixels at "fit"
            assert abs(got["x"] - x) <= 2 and abs(got["y"] - y) <= 2, got
            i = js(driver, "return window.unsamView.maskAt('main', arguments[0], arguments[1]);", got["x"], got["y"])
            assert js(driver, "return window.unsamView.selected;") == (None if i is None else {"side": "main", "id": i})
        # (level_partitions takes 15 s on this image: the partition itself is checked on the smaller ones.)
        assert js(driver, "return window.unsamView.segments();") > 1
    assert max(ttis) < 1000, f"time to interactive {ttis} ms, target < 1000 ms"
