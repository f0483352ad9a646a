"""A labeled folder merged into one COCO-style JSON (CLI: ``python -m unsam.export``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from unsam.io.files import read_label_json, write_json_atomic
from unsam.io.images import InputError

__all__ = ["COCO_CATEGORY", "export_coco"]

log = logging.getLogger(__name__)

COCO_CATEGORY: dict[str, Any] = {"id": 1, "name": "fg", "supercategory": "fg"}

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
