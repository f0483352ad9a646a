"""unsam.io: image discovery and decoding, RLE helpers, atomic JSON, label records."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from unsam import io
from unsam.io import ImageError, InputError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "examples" / "images").glob("*.jpg"))


def _write(path: Path, im: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose IHDR declares w x h RGB, followed by a tiny bogus IDAT: decodable header, no pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * 8) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- discovery


class TestDiscover:
    def test_folder_recursive_sorted_filtered(self, tmp_path):
        rgb = Image.new("RGB", (16, 16))
        for rel in ["b.png", "a.JPG", "sub/c.jpeg", "sub/deeper/d.WebP", "z.tif", "y.BMP"]:
            _write(tmp_path / rel, rgb, format="PNG")  # content format is irrelevant to discovery
        (tmp_path / "notes.txt").write_text("x")
        _write(tmp_path / ".hidden.png", rgb)
        _write(tmp_path / ".cache" / "e.png", rgb)
        got = io.discover_images(tmp_path)
        rel = [p.relative_to(tmp_path).as_posix() for p in got]
        assert rel == ["a.JPG", "b.png", "sub/c.jpeg", "sub/deeper/d.WebP", "y.BMP", "z.tif"]
        assert io.discover_images(str(tmp_path)) == got  # str and Path agree, order is stable

    def test_single_image_file(self, tmp_path):
        p = _write(tmp_path / "one.png", Image.new("RGB", (16, 16)))
        assert io.discover_images(p) == [p]

    def test_glob(self, tmp_path):
        for rel in ["x/2.jpg", "x/1.jpg", "x/3.png", "x/n.txt", "x/sub/4.jpg"]:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(b"")
        assert [p.name for p in io.discover_images(str(tmp_path / "x" / "*.jpg"))] == ["1.jpg", "2.jpg"]
        assert [p.name for p in io.discover_images(str(tmp_path / "x" / "*"))] == ["1.jpg", "2.jpg", "3.png"]
        got = io.discover_images(str(tmp_path / "x" / "**" / "*.jpg"))
        assert [p.name for p in got] == ["1.jpg", "2.jpg", "4.jpg"]
        with pytest.raises(InputError, match="no matches"):
            io.discover_images(str(tmp_path / "x" / "*.webp"))
        with pytest.raises(InputError, match="none an image"):
            io.discover_images(str(tmp_path / "x" / "*.txt"))

    def test_list_file(self, tmp_path):
        lst = tmp_path / "lists" / "images.txt"
        lst.parent.mkdir()
        abs_img = tmp_path / "abs.png"
        lst.write_text(f"# my images\n\n  rel/a.jpg  \n{abs_img}\nrel/a.jpg\n   # indented comment\nb#1.png\n")
        got = io.discover_images(lst)
        assert got == [lst.parent / "rel" / "a.jpg", abs_img, lst.parent / "b#1.png"]

    def test_errors_name_the_input(self, tmp_path):
        with pytest.raises(InputError, match="does not exist"):
            io.discover_images(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.md").write_text("no images")
        with pytest.raises(InputError, match="no images found in folder .*empty"):
            io.discover_images(tmp_path / "empty")
        lst = tmp_path / "list.txt"
        lst.write_text("# nothing\n\n")
        with pytest.raises(InputError, match="list.txt names no image"):
            io.discover_images(lst)
        assert issubclass(InputError, ValueError)


# --------------------------------------------------------------------------- decoding


class TestLoadImage:
    def test_sample_jpeg(self):
        a = io.load_image(SAMPLES[0])
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.flags.c_contiguous
        assert max(a.shape[:2]) == 320

    def test_16bit_png_scaled_not_clipped(self, tmp_path):
        vals = np.array([[0, 257, 65535, 32896], [1000, 12850, 64250, 65278]] * 4, np.uint16)  # 8 x 4
        im = Image.fromarray(vals)
        assert im.mode == "I;16"
        a = io.load_image(_write(tmp_path / "g16.png", im), min_side=1)
        want = np.rint(vals / 257.0).astype(np.uint8)
        assert a.shape == (8, 4, 3)
        np.testing.assert_array_equal(a[..., 0], want)
        np.testing.assert_array_equal(a[..., 1], a[..., 2])
        assert want[0, 2] == 255 and want[0, 1] == 1 and want[0, 3] == 128

    def test_16bit_big_endian_tiff(self, tmp_path):
        vals = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(">u2")
        im = Image.fromarray(vals)
        assert im.mode == "I;16B"
        a = io.load_image(_write(tmp_path / "g16b.tif", im))
        np.testing.assert_array_equal(a[..., 0], np.rint(vals.astype(np.float64) / 257).astype(np.uint8))

    def test_int32_and_float_modes(self):
        i16 = Image.fromarray(np.full((8, 8), 65535, np.int32))
        assert i16.mode == "I"
        assert (io.pil_to_rgb(i16) == 255).all()  # 16-bit data in an I image
        wide = np.linspace(-1000, 1000, 64, dtype=np.int32).reshape(8, 8)
        out = io.pil_to_rgb(Image.fromarray(wide))[..., 0]
        assert out.min() == 0 and out.max() == 255  # out-of-16-bit range: stretched
        unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
        f = io.pil_to_rgb(Image.fromarray(unit))
        np.testing.assert_array_equal(f[..., 0], np.rint(unit * 255).astype(np.uint8))
        nan = unit.copy()
        nan[0, 0] = np.nan
        assert io.pil_to_rgb(Image.fromarray(nan))[0, 0, 0] == 0

    def test_rgba_transparent_over_white(self, tmp_path):
        a = np.zeros((8, 8, 4), np.uint8)
        a[..., 0] = 255  # red everywhere underneath
        a[:4, :, 3] = 0  # top half fully transparent
        a[4:, :4, 3] = 255  # opaque red
        a[4:, 4:] = (0, 0, 0, 128)  # half-transparent black
        out = io.load_image(_write(tmp_path / "rgba.png", Image.fromarray(a, "RGBA")))
        assert (out[:4] == 255).all()
        assert (out[4:, :4] == (255, 0, 0)).all()
        assert (out[4:, 4:] == 127).all()  # 255 * (1 - 128/255), rounded

    def test_gray_and_gray_alpha(self, tmp_path):
        g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
        out = io.load_image(_write(tmp_path / "g.png", Image.fromarray(g, "L")))
        assert (out == g[..., None]).all()
        la = np.stack([g, np.where(np.arange(8) < 4, 0, 255).astype(np.uint8)[None].repeat(8, 0)], -1)
        out = io.load_image(_write(tmp_path / "la.png", Image.fromarray(la, "LA")))
        assert (out[:, :4] == 255).all() and (out[:, 4:] == g[:, 4:, None]).all()

    def test_one_bit(self, tmp_path):
        bits = np.zeros((8, 8), bool)
        bits[2:5, 3:7] = True
        out = io.load_image(_write(tmp_path / "b.png", Image.fromarray(bits)))
        assert set(np.unique(out)) == {0, 255}
        assert (out[..., 0] == np.where(bits, 255, 0)).all()

    def test_palette_with_and_without_transparency(self, tmp_path):
        p = Image.new("P", (8, 8))
        p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
        p.putdata([0] * 32 + [1] * 32)
        out = io.load_image(_write(tmp_path / "p.png", p))
        assert (out[:4] == (10, 20, 30)).all() and (out[4:] == (200, 100, 50)).all()
        out = io.load_image(_write(tmp_path / "pt.png", p, transparency=0))
        assert (out[:4] == 255).all() and (out[4:] == (200, 100, 50)).all()

    def test_exif_orientation_6(self, tmp_path):
        a = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high
        a[:, :20] = (255, 0, 0)  # left half red
        a[:, 20:] = (0, 0, 255)  # right half blue
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        out = io.load_image(_write(tmp_path / "rot.jpg", Image.fromarray(a), exif=exif, quality=95))
        assert out.shape == (40, 20, 3)
        # Clockwise: the stored left column becomes the displayed top row.
        assert out[:16, :, 0].mean() > 200 and out[:16, :, 2].mean() < 50
        assert out[24:, :, 2].mean() > 200 and out[24:, :, 0].mean() < 50

    def test_cmyk_jpeg(self, tmp_path):
        im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
        out = io.load_image(_write(tmp_path / "cmyk.jpg", im))
        r, g, b = out.reshape(-1, 3).mean(0)
        assert r > 200 and g < 60 and b < 60

    @pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
    def test_webp(self, tmp_path):
        out = io.load_image(_write(tmp_path / "w.webp", Image.new("RGB", (16, 16), (0, 128, 0)), lossless=True))
        assert (out == (0, 128, 0)).all()

    # ----------------------------------------------------------------- bad files

    def _reason(self, path, **kw) -> ImageError:
        with pytest.raises(ImageError) as ei:
            io.load_image(path, **kw)
        assert str(path) in str(ei.value)  # the message names the file
        return ei.value

    def test_truncated_jpeg_is_corrupt(self, tmp_path):
        data = SAMPLES[0].read_bytes()
        p = tmp_path / "half.jpg"
        p.write_bytes(data[: len(data) // 2])
        assert not ImageFile.LOAD_TRUNCATED_IMAGES
        assert self._reason(p).reason == "corrupt"

    def test_text_named_jpg_is_not_an_image(self, tmp_path):
        p = tmp_path / "fake.jpg"
        p.write_text("this is not a picture\n" * 10)
        assert self._reason(p).reason == "not-an-image"

    def test_empty_file_is_corrupt(self, tmp_path):
        p = tmp_path / "empty.png"
        p.write_bytes(b"")
        assert self._reason(p).reason == "corrupt"

    def test_too_small(self, tmp_path):
        assert self._reason(_write(tmp_path / "1x1.png", Image.new("RGB", (1, 1)))).reason == "too-small"
        assert self._reason(_write(tmp_path / "thin.png", Image.new("RGB", (100, 4)))).reason == "too-small"
        assert io.load_image(tmp_path / "thin.png", min_side=4).shape == (4, 100, 3)

    def test_too_large_checked_on_header_without_decoding(self, tmp_path, monkeypatch):
        def no_decode(self, *a, **k):
            raise AssertionError("load_image decoded pixels of an over-limit image")

        monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
        big = _png_header_only(tmp_path / "big.png", 9000, 9000)  # 81 MP, below PIL's own bomb limit
        err = self._reason(big)
        assert err.reason == "too-large" and "max_pixels" in err.message
        # Far above PIL's decompression-bomb limit: PIL refuses in Image.open, still "too-large".
        huge = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
        assert self._reason(huge).reason == "too-large"
        # The limit is configurable.
        small = _png_header_only(tmp_path / "small.png", 100, 100)
        assert self._reason(small, max_pixels=9_999).reason == "too-large"

    def test_missing_and_folder_are_unreadable(self, tmp_path):
        assert self._reason(tmp_path / "nope.jpg").reason == "unreadable"
        assert self._reason(tmp_path).reason == "unreadable"

    def test_image_error_pickles(self):
        import pickle

        e = pickle.loads(pickle.dumps(ImageError("corrupt", "x.jpg: bad")))
        assert e.reason == "corrupt" and str(e) == "corrupt: x.jpg: bad"


class TestDataset:
    def test_never_raises_and_works_in_workers(self, tmp_path):
        bad = tmp_path / "bad.jpg"
        bad.write_text("not an image")
        paths = [SAMPLES[0], bad, SAMPLES[1], tmp_path / "missing.png"]
        ds = io.ImageDataset(paths)
        assert len(ds) == 4
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=io.collate_images)
        items = [it for batch in loader for it in batch]
        assert [it["index"] for it in items] == [0, 1, 2, 3]
        assert [it["path"] for it in items] == [str(p) for p in paths]
        for i in (0, 2):
            img = items[i]["image"]
            assert items[i]["error"] is None and img.dtype == torch.uint8 and img.shape[2] == 3
            np.testing.assert_array_equal(img.numpy(), io.load_image(paths[i]))
        assert items[1]["image"] is None and items[1]["error"].startswith("not-an-image: ")
        assert items[3]["image"] is None and items[3]["error"].startswith("unreadable: ")

    def test_limits_passed_through(self):
        it = io.ImageDataset([SAMPLES[0]], max_pixels=100)[0]
        assert it["image"] is None and it["error"].startswith("too-large: ")


# --------------------------------------------------------------------------- RLE


def _np_bbox(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


class TestRLE:
    @pytest.mark.parametrize("shape", [(1, 1), (7, 13), (40, 31), (64, 64)])
    def test_round_trip_area_bbox(self, shape):
        rng = np.random.default_rng(shape[0] * 100 + shape[1])
        masks = [rng.random(shape) < p for p in (0.0, 0.05, 0.5, 1.0)]
        blob = np.zeros(shape, bool)
        blob[shape[0] // 3 : shape[0] // 3 + 3, shape[1] // 2 :] = True
        masks.append(blob)
        for m in masks:
            rle = io.mask_to_rle(m)
            assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
            json.dumps(rle)  # JSON-ready
            np.testing.assert_array_equal(io.rle_to_mask(rle), m)
            assert io.rle_area(rle) == int(m.sum())
            assert io.rle_bbox(rle) == _np_bbox(m)

    def test_batched_equals_single(self):
        rng = np.random.default_rng(0)
        masks = rng.random((6, 23, 17)) < 0.3
        batched = io.masks_to_rles(masks)
        assert batched == [io.mask_to_rle(m) for m in masks]
        assert io.masks_to_rles(torch.from_numpy(masks)) == batched  # torch input
        assert io.masks_to_rles(np.zeros((0, 5, 5), bool)) == []

    def test_non_bool_masks_are_binarised(self):
        m = np.zeros((9, 9), np.uint8)
        m[2:6, 3:8] = 255  # a 0/255 mask must not confuse the encoder
        assert io.rle_area(io.mask_to_rle(m)) == 20
        np.testing.assert_array_equal(io.rle_to_mask(io.mask_to_rle(m)), m > 0)

    def test_uncompressed_and_bytes_counts(self):
        from pycocotools import mask as mask_utils

        m = np.zeros((5, 4), bool)
        m[1:3, 1:3] = True
        # Uncompressed RLE, column-major runs: 6 zeros, 2 ones, 3 zeros, 2 ones, 7 zeros.
        unc = {"size": [5, 4], "counts": [6, 2, 3, 2, 7]}
        np.testing.assert_array_equal(io.rle_to_mask(unc), m)
        raw = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert isinstance(raw["counts"], bytes) and io.rle_area(raw) == 4

    def test_shape_checks(self):
        with pytest.raises(ValueError, match="2-D"):
            io.mask_to_rle(np.zeros((2, 3, 4), bool))
        with pytest.raises(ValueError, match="3-D"):
            io.masks_to_rles(np.zeros((3, 4), bool))


# --------------------------------------------------------------------------- JSON


class TestAtomicJson:
    def test_write_and_overwrite(self, tmp_path):
        p = tmp_path / "sub" / "x.json"
        io.write_json_atomic(p, {"a": 1})
        assert json.loads(p.read_text()) == {"a": 1}
        io.write_json_atomic(p, {"a": [1, 2]}, indent=2)
        assert json.loads(p.read_text()) == {"a": [1, 2]}
        assert sorted(q.name for q in p.parent.iterdir()) == ["x.json"]

    def test_failure_midway_keeps_old_content(self, tmp_path, monkeypatch):
        p = tmp_path / "x.json"
        io.write_json_atomic(p, {"old": True})

        def broken_dump(obj, f, **kw):
            f.write('{"new": [1, 2, ')  # half a document reaches the file
            f.flush()
            raise RuntimeError("disk full")

        monkeypatch.setattr(json, "dump", broken_dump)
        with pytest.raises(RuntimeError, match="disk full"):
            io.write_json_atomic(p, {"new": [1, 2, 3]})
        assert json.loads(p.read_text()) == {"old": True}
        assert [q.name for q in tmp_path.iterdir()] == ["x.json"]  # no temp left behind

        fresh = tmp_path / "fresh.json"
        with pytest.raises(RuntimeError):
            io.write_json_atomic(fresh, {"x": 1})
        assert not fresh.exists()
        assert [q.name for q in tmp_path.iterdir()] == ["x.json"]

    def test_nan_is_refused(self, tmp_path):
        with pytest.raises(ValueError):
            io.write_json_atomic(tmp_path / "n.json", {"score": float("nan")})
        assert list(tmp_path.iterdir()) == []


def _label(image_id=1, h=12, w=10, n=3, file_name="img.jpg"):
    rng = np.random.default_rng(image_id)
    anns = []
    for k in range(n):
        m = np.zeros((h, w), bool)
        m[k : k + 4, 1 : 2 + 2 * k] = True
        m &= rng.random((h, w)) < 0.9
        anns.append(io.annotation_record(k + 1, m, level=k, parent_id=k if k else None, score=0.9 - 0.1 * k,
                                         source="divide" if k == 0 else "conquer"))
    return {"image": io.image_record(image_id, file_name, w, h), "annotations": anns}


class TestRecords:
    def test_builders_valid_and_consistent(self):
        lab = _label()
        assert io.validate_label_json(lab, check_masks=True) == []
        a = lab["annotations"][1]
        assert set(a) == {"id", "area", "bbox", "segmentation", "level", "parent_id", "score", "source"}
        m = io.rle_to_mask(a["segmentation"])
        assert a["area"] == int(m.sum()) and a["bbox"] == _np_bbox(m)
        json.dumps(lab, allow_nan=False)

    def test_numpy_scalars_and_extras_become_python(self):
        a = io.annotation_record(np.int64(4), io.mask_to_rle(np.ones((3, 3), bool)), level=np.int32(1),
                                 parent_id=np.int64(2), score=np.float32(0.25), source="conquer",
                                 predicted_iou=np.float32(0.5), ncut=torch.tensor(0.125))
        assert type(a["id"]) is int and type(a["level"]) is int and type(a["parent_id"]) is int
        assert type(a["score"]) is float and a["predicted_iou"] == 0.5 and a["ncut"] == 0.125
        json.dumps(a)
        unc = io.annotation_record(1, {"size": [5, 4], "counts": [6, 2, 3, 2, 7]}, level=0, parent_id=None,
                                   score=1.0, source="divide")
        assert isinstance(unc["segmentation"]["counts"], str) and unc["area"] == 4 and unc["bbox"] == [1, 1, 2, 2]
        with pytest.raises(ValueError, match="source"):
            io.annotation_record(1, np.ones((3, 3), bool), level=0, parent_id=None, score=1.0, source="crf")

    def test_image_record_posix_name(self):
        assert io.image_record(3, Path("a") / "b.jpg", 5, 6) == {
            "image_id": 3, "file_name": "a/b.jpg", "width": 5, "height": 6}

    def test_validate_finds_problems(self):
        lab = _label()
        anns = lab["annotations"]
        anns[1]["id"] = anns[0]["id"]  # duplicate
        anns[2]["source"] = "crf"
        anns[2]["parent_id"] = 99  # dangling
        anns[0]["segmentation"]["size"] = [1, 1]
        probs = io.validate_label_json(lab)
        assert any("duplicated" in p for p in probs)
        assert any("source" in p for p in probs)
        assert any("parent_id 99" in p for p in probs)
        assert any("segmentation.size" in p for p in probs)
        lab2 = _label()
        lab2["annotations"][0]["area"] += 1
        assert io.validate_label_json(lab2) == []  # shallow check does not decode
        assert any("RLE area" in p for p in io.validate_label_json(lab2, check_masks=True))
        assert io.validate_label_json([]) and io.validate_label_json({"image": {}})

    def test_read_label_json(self, tmp_path):
        p = tmp_path / "a.json"
        io.write_json_atomic(p, _label())
        assert io.read_label_json(p) == json.loads(p.read_text())
        text = p.read_text()
        p.write_text(text[: len(text) // 2])  # half-written (not by us)
        assert io.read_label_json(p) is None
        assert io.read_label_json(tmp_path / "missing.json") is None
        io.write_json_atomic(p, {"backbone": "classic"})  # a config, not a label file
        assert io.read_label_json(p) is None
        io.write_json_atomic(p, {"image": {"image_id": 1, "file_name": "x", "width": 4, "height": 4},
                                 "annotations": []})
        assert io.read_label_json(p) is not None  # no masks is a valid, finished image
