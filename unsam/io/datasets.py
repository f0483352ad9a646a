"""Label sets in: a folder of per-image label JSONs or one COCO-style JSON -> :class:`Record` per image.

Used by training (``unsam.train.data``), the point-prompt evaluation and self-training:

- a folder of per-image JSONs written by ``unsam.label`` (or ``unsam.predict``,
  ``unsam.selftrain``); the images are found under ``image_root``, by default
  the ``--input`` folder recorded in the folder's ``config.yaml``;
- one COCO-style JSON (``unsam.export`` output, ``unsam.fuse`` output, or human
  COCO / LVIS annotations): RLE or polygon segmentations, crowd regions skipped;
  ``image_root`` defaults to the JSON's folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["DatasetError", "Record", "image_root_of_label_dir", "load_records", "rle_areas"]

log = logging.getLogger(__name__)

class DatasetError(ValueError):
    """A training or evaluation set cannot be used (missing, empty, malformed); the message names the file."""


@dataclass
class Record:
    """One image of a label set: where it is and its annotations (RLE dicts, areas, boxes, levels)."""

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    rles: list[dict] = field(default_factory=list)  # pycocotools-ready compressed RLEs
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))  # x, y, w, h
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _rle_of(seg: Any, h: int, w: int, where: str) -> dict:
    if isinstance(seg, list):  # polygons
        if not seg:
            raise DatasetError(f"{where}: empty polygon list")
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [h, w]:
            raise DatasetError(f"{where}: segmentation size {seg['size']} != image [height, width] [{h}, {w}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects(seg, h, w)
        return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise DatasetError(f"{where}: segmentation should be RLE {{size, counts}} or polygons, got {type(seg).__name__}")


def _record(img: dict, anns: list[dict], image_root: Path, where: str, min_area: int) -> Record:
    try:
        h, w = int(img["height"]), int(img["width"])
        name = str(img["file_name"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: image entry needs file_name, width and height, got {img!r:.200}") from None
    rles, levels = [], []
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or a.get("iscrowd", 0):
            continue
        rle = _rle_of(a.get("segmentation"), h, w, f"{where}: annotation {a.get('id', i)}")
        rles.append(rle)
        levels.append(int(a.get("level", 0) or 0))
    areas = rle_areas(rles)
    boxes = mask_utils.toBbox(rles).astype(np.float64) if rles else np.zeros((0, 4))
    keep = areas >= max(1, min_area)
    path = Path(name) if Path(name).is_absolute() else image_root / name
    return Record(
        image_id=int(img.get("image_id", img.get("id", 0)) or 0),
        file_name=name,
        path=path,
        height=h,
        width=w,
        rles=[r for r, k in zip(rles, keep) if k],
        areas=areas[keep],
        boxes=boxes[keep].reshape(-1, 4),
        levels=np.asarray(levels, np.int64)[keep] if rles else np.zeros(0, np.int64),
    )


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Areas of many compressed RLEs, ``int64[N]``.

    In chunks: pycocotools' ``area`` on a list of more than 255 RLEs overflows a
    uint8 under numpy 2 ("Python integer 288 out of bounds for uint8").
    """
    if not rles:
        return np.zeros(0, np.int64)
    return np.concatenate([np.asarray(mask_utils.area(rles[i : i + 200]), np.int64) for i in range(0, len(rles), 200)])


def image_root_of_label_dir(label_dir: Path) -> Path | None:
    cfg = label_dir / "config.yaml"
    if not cfg.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(cfg.read_text()) or {}
        inp = (data.get("_run") or {}).get("input")
    except (yaml.YAMLError, AttributeError, OSError):
        return None
    if not inp:
        return None
    p = Path(inp)
    return p if p.is_dir() else p.parent


def load_records(
    source: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    min_area: int = 1,
    check_images: bool = True,
    limit: int | None = None,
) -> list[Record]:
    """Read a label set: a folder of per-image JSONs or one COCO-style JSON.

    Args:
        source: folder (searched recursively for ``*.json``; ``config.json``,
            ``summary.json`` and other non-label JSON ignored) or a COCO JSON file.
        image_root: folder the ``file_name`` entries are relative to. Default: the
            label folder's recorded ``--input`` (``config.yaml``), else the folder
            itself; for a COCO file, the file's folder.
        min_area: drop masks smaller than this many pixels.
        check_images: raise if image files are missing (names the first few).
        limit: read at most this many images (sorted order).

    Returns:
        the records, in sorted order (folder) or file order (COCO). Images with
        no masks are kept (they teach "no object").

    Raises:
        DatasetError: missing source, no images, unreadable JSON, missing image files.
    """
    src = Path(source)
    if not src.exists():
        raise DatasetError(f"label set {src} does not exist (expected a folder of per-image JSONs or a COCO JSON file)")
    records: list[Record] = []
    if src.is_dir():
        root = Path(image_root) if image_root is not None else (image_root_of_label_dir(src) or src)
        files = sorted((p for p in src.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(src).parts)), key=lambda p: p.relative_to(src).as_posix())
        bad = 0
        for f in files:
            try:
                obj = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                bad += 1
                continue
            if not (isinstance(obj, dict) and isinstance(obj.get("image"), dict) and isinstance(obj.get("annotations"), list)):
                continue  # config.json, summary.json, a COCO export sitting in the folder...
            records.append(_record(obj["image"], obj["annotations"], root, str(f), min_area))
            if limit is not None and len(records) >= limit:
                break
        if bad:
            log.warning("label set %s: skipped %d unreadable JSON file(s)", src, bad)
        if not records:
            raise DatasetError(f"label set {src} is empty: no per-image label JSON ({{image, annotations}}) found in it")
    else:
        root = Path(image_root) if image_root is not None else src.parent
        try:
            coco = json.loads(src.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read COCO JSON {src}: {e}") from None
        if isinstance(coco, dict) and isinstance(coco.get("image"), dict):  # a single per-image JSON
            records.append(_record(coco["image"], coco.get("annotations") or [], root, str(src), min_area))
        else:
            if not (isinstance(coco, dict) and isinstance(coco.get("images"), list) and isinstance(coco.get("annotations"), list)):
                raise DatasetError(f"{src}: not a COCO-style JSON (needs 'images' and 'annotations' lists)")
            by_img: dict[Any, list[dict]] = {}
            for a in coco["annotations"]:
                by_img.setdefault(a.get("image_id"), []).append(a)
            for img in coco["images"]:
                rec = _record(img, by_img.get(img.get("id"), []), root, f"{src} (image {img.get('id')})", min_area)
                rec.image_id = int(img.get("id", 0))
                records.append(rec)
                if limit is not None and len(records) >= limit:
                    break
        if not records:
            raise DatasetError(f"label set {src} is empty: it lists no images")
    if check_images:
        missing = [r.path for r in records if not r.path.is_file()]
        if missing:
            shown = ", ".join(str(m) for m in missing[:3]) + (f" ... ({len(missing)} in all)" if len(missing) > 3 else "")
            raise DatasetError(
                f"label set {src}: {len(missing)} of {len(records)} image files not found under image root {root}: {shown}. "
                "Set data.image_root (--image-root) to the folder the labels' file_name entries are relative to."
            )
    return records
