"""Predictions in: a folder of per-image label JSONs, a COCO-style set, or a COCO results list,
matched to ground-truth images by file name without folders (:func:`load_predictions`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

__all__ = ["EvalError", "MATCH_RULE", "PredImage", "load_predictions", "pred_rles"]

MATCH_RULE = "predictions matched to GT images by file name without folders (basename)"


class EvalError(ValueError):
    """Evaluation input that cannot be used; the message names the file."""


@dataclass
class PredImage:
    """The predictions for one image."""

    key: str  #: basename of ``file_name`` (COCO) or its stem (BSDS): what GT is matched on
    source: str  #: file the predictions came from (for messages)
    file_name: str
    width: int
    height: int
    anns: list[dict[str, Any]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not a UTF-8 JSON file ({e})") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: malformed JSON ({e})") from None
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror or e})") from None


def _check_anns(anns: Any, h: int, w: int, where: str) -> None:
    """Structural checks an evaluation needs (RLE of the right size, score a number if given)."""
    if not isinstance(anns, list):
        raise EvalError(f"{where}: 'annotations' should be a list, got {type(anns).__name__}")
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise EvalError(f"{where}: annotations[{i}] should be an object, got {type(a).__name__}")
        seg = a.get("segmentation")
        if not (
            isinstance(seg, dict) and isinstance(seg.get("counts"), (str, list)) and isinstance(seg.get("size"), list)
        ):
            raise EvalError(
                f"{where}: annotations[{i}].segmentation should be a COCO RLE {{size: [H, W], counts}}, got {type(seg).__name__}"
            )
        if seg["size"] != [h, w]:
            raise EvalError(
                f"{where}: annotations[{i}].segmentation.size {seg['size']} does not match the image's "
                f"[height, width] [{h}, {w}]"
            )
        s = a.get("score")
        if s is not None and not (isinstance(s, (int, float)) and not isinstance(s, bool)):
            raise EvalError(f"{where}: annotations[{i}].score should be a number, got {s!r}")


def _key(file_name: str, stem: bool) -> str:
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if stem and "." in base else base


def _pred_from_label(obj: dict, path: Path, stem: bool) -> PredImage:
    img = obj.get("image")
    if not isinstance(img, dict):
        raise EvalError(f"{path}: 'image' should be an object with file_name, width, height")
    fn, w, h = img.get("file_name"), img.get("width"), img.get("height")
    if not isinstance(fn, str) or not fn:
        raise EvalError(f"{path}: image.file_name should be a non-empty string, got {fn!r}")
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        raise EvalError(f"{path}: image.width / image.height should be positive ints, got {w!r} / {h!r}")
    if "annotations" not in obj:
        raise EvalError(f"{path}: missing 'annotations' list")
    _check_anns(obj["annotations"], h, w, str(path))
    return PredImage(_key(fn, stem), str(path), fn, w, h, obj["annotations"])


def _preds_from_set(obj: dict, path: Path, stem: bool) -> list[PredImage]:
    """A COCO-style set (``python -m unsam.export``): images + annotations with image_id."""
    images, anns = obj.get("images"), obj.get("annotations")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise EvalError(f"{path}: a COCO-style set needs 'images' and 'annotations' lists")
    by_id: dict[int, PredImage] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise EvalError(f"{path}: images[{i}] should have an int 'id' and a 'file_name'")
        w, h = im.get("width"), im.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            raise EvalError(f"{path}: images[{i}] ({im['file_name']}) needs positive int width and height")
        by_id[im["id"]] = PredImage(
            _key(im["file_name"], stem), f"{path} [{im['file_name']}]", im["file_name"], w, h, []
        )
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or a.get("image_id") not in by_id:
            got = a.get("image_id") if isinstance(a, dict) else a
            raise EvalError(f"{path}: annotations[{i}].image_id {got!r} is not an image of this file")
        by_id[a["image_id"]].anns.append(a)
    for p in by_id.values():
        _check_anns(p.anns, p.height, p.width, p.source)
    return list(by_id.values())


def _json_files(folder: Path) -> list[Path]:
    out = []
    for p in folder.rglob("*.json"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(rel)
    return [folder / r for r in sorted(out, key=lambda r: r.as_posix())]


def load_predictions(
    pred: str | os.PathLike[str], stem: bool = False, progress: bool = False
) -> tuple[list[PredImage] | list[dict[str, Any]], list[str]]:
    """Read predictions: a folder of per-image JSONs, one per-image JSON, a COCO-style set, or a results list.

    Returns ``(items, notes)``: ``items`` is a list of :class:`PredImage`, or,
    for a COCO results file (a JSON list), that list of result dicts; notes say
    what was skipped. ``stem`` keys images by file name without extension
    (BSDS) instead of the basename.

    Raises:
        EvalError: missing path, malformed or mismatched JSON, an empty folder,
            two prediction files for the same image; the message names the file.
    """
    path = Path(pred)
    notes: list[str] = []
    if path.is_dir():
        files = _json_files(path)
        if not files:
            raise EvalError(f"prediction folder {path} is empty: no .json files (searched recursively)")
        items: list[PredImage] = []
        other = 0
        from tqdm import tqdm

        for f in tqdm(files, desc="reading predictions", unit="file", disable=not progress):
            obj = _read_json(f)
            if isinstance(obj, dict) and "image" in obj:
                items.append(_pred_from_label(obj, f, stem))
            elif isinstance(obj, dict) and "images" in obj and "annotations" in obj:
                items.extend(_preds_from_set(obj, f, stem))
            else:
                other += 1  # the run's summary.json and the like
        if not items:
            raise EvalError(
                f"prediction folder {path} holds no per-image label JSON ({len(files)} .json file(s), "
                "none with an 'image' entry)"
            )
        if other:
            notes.append(f"{other} JSON file(s) in {path} are not label files (no 'image' entry) and were skipped")
    elif path.is_file():
        obj = _read_json(path)
        if isinstance(obj, list):
            return obj, notes
        if isinstance(obj, dict) and "image" in obj:
            items = [_pred_from_label(obj, path, stem)]
        elif isinstance(obj, dict) and "images" in obj and "annotations" in obj:
            items = _preds_from_set(obj, path, stem)
        else:
            raise EvalError(
                f"{path}: not a prediction file (expected a per-image label JSON with 'image', a COCO-style set "
                "with 'images' and 'annotations', or a COCO results list)"
            )
    else:
        raise EvalError(f"prediction path {path} does not exist (expected a folder of per-image JSONs or a JSON file)")
    seen: dict[str, PredImage] = {}
    for p in items:
        if p.key in seen:
            raise EvalError(
                f"two predictions for image '{p.key}': {seen[p.key].source} and {p.source} "
                "(images are matched by file name without folders)"
            )
        seen[p.key] = p
    return items, notes


def pred_rles(anns: Sequence[dict], h: int, w: int) -> list[dict]:
    out = []
    for a in anns:
        seg = a["segmentation"]
        c = seg["counts"]
        if isinstance(c, list):
            out.append(mask_utils.frPyObjects({"size": [h, w], "counts": c}, h, w))
        else:
            out.append({"size": [h, w], "counts": c.encode("ascii") if isinstance(c, str) else c})
    return out
