"""``python -m unsam.fuse``: UnSAM+ training labels = human masks + the pseudo-masks they miss (ALGORITHM.md §5).

    python -m unsam.fuse --human sa1b_or_coco.json --pseudo LABELS --output fused.json
    python -m unsam.fuse --human SA1B_JSON_FOLDER --pseudo LABELS --output FUSED_FOLDER

Every human mask is kept as it is; a pseudo-mask is added when its best IoU
with any human mask of the image (crowd regions included) is <= ``--iou``
(default 0.02, published). Images are matched by ``file_name`` (relative
path, then base name).

``--human`` is a COCO-style JSON (output: one COCO JSON; added masks get
``category_id`` of a new category ``unsam_pseudo`` and ``origin: "pseudo"``,
so they can be told apart or filtered), or SA-1B per-image JSONs (a folder or
one file; output: a folder of per-image JSONs with the same names). ``--pseudo``
is a label folder or its COCO export. ``unsam.train --train`` reads either output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from unsam.io import write_json_atomic

__all__ = ["fuse", "fuse_image", "main"]


class FuseError(ValueError):
    pass


def _to_rle(seg: Any, h: int, w: int) -> dict:
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg, dict) and "counts" in seg:
        if isinstance(seg["counts"], list):
            return mask_utils.frPyObjects(seg, h, w)
        c = seg["counts"]
        return {"size": [int(s) for s in seg["size"]], "counts": c.encode("ascii") if isinstance(c, str) else c}
    raise FuseError(f"unsupported segmentation {type(seg).__name__}")


def fuse_image(human: list[Any], pseudo: list[Any], height: int, width: int, iou: float = 0.02) -> list[int]:
    """Indices of the pseudo-masks to add: best IoU with every human mask <= ``iou``.

    Args:
        human, pseudo: segmentations (RLE dicts, str or bytes counts, or polygons).
    """
    if not pseudo:
        return []
    if not human:
        return list(range(len(pseudo)))
    hr = [_to_rle(s, height, width) for s in human]
    pr = [_to_rle(s, height, width) for s in pseudo]
    for r in pr:
        if [int(v) for v in r["size"]] != [height, width]:
            raise FuseError(f"a pseudo-mask is {r['size'][1]}x{r['size'][0]} but the human image is {width}x{height}")
    # iscrowd = 0 for every human mask: plain IoU, crowd regions count as masks to avoid.
    best = np.asarray(mask_utils.iou(pr, hr, [0] * len(hr)), np.float64).reshape(len(pr), len(hr)).max(1)
    return [int(i) for i in np.flatnonzero(best <= iou)]


def _key(name: str) -> str:
    return Path(name.replace("\\", "/")).as_posix()


def _load_pseudo(path: Path) -> dict[str, tuple[dict, list[dict]]]:
    """file_name -> (image entry, annotations) of a label folder or a COCO export."""
    out: dict[str, tuple[dict, list[dict]]] = {}
    if path.is_dir():
        for f in sorted(path.rglob("*.json")):
            try:
                obj = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("image"), dict) and isinstance(obj.get("annotations"), list):
                out[_key(obj["image"]["file_name"])] = (obj["image"], obj["annotations"])
    elif path.is_file():
        coco = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(coco, dict) and isinstance(coco.get("images"), list)):
            raise FuseError(f"--pseudo {path}: neither a label folder nor a COCO JSON")
        by: dict[Any, list[dict]] = {}
        for a in coco.get("annotations", []):
            by.setdefault(a.get("image_id"), []).append(a)
        for img in coco["images"]:
            out[_key(img["file_name"])] = (img, by.get(img["id"], []))
    else:
        raise FuseError(f"--pseudo {path} does not exist")
    if not out:
        raise FuseError(f"--pseudo {path}: no labeled images found")
    return out


def _match(pseudo: dict[str, tuple[dict, list[dict]]], name: str):
    k = _key(name)
    if k in pseudo:
        return pseudo[k]
    base = Path(k).name
    hits = [v for kk, v in pseudo.items() if Path(kk).name == base]
    return hits[0] if len(hits) == 1 else None


def _pseudo_record(a: dict, rle: dict, ann_id: int, image_id: Any, category_id: int | None) -> dict:
    c = rle["counts"]
    seg = {"size": [int(s) for s in rle["size"]], "counts": c.decode("ascii") if isinstance(c, bytes) else c}
    rec = {
        "id": ann_id,
        "image_id": image_id,
        "segmentation": seg,
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
        "score": float(a.get("score", 1.0)),
        "level": int(a.get("level", 0) or 0),
        "origin": "pseudo",
    }
    if category_id is not None:
        rec["category_id"] = category_id
    return rec


def fuse(human: Path, pseudo: Path, output: Path, iou: float = 0.02) -> dict[str, int]:
    """Fuse and write; returns counts (images, matched, human masks, pseudo-masks seen / added)."""
    pmap = _load_pseudo(pseudo)
    stats = {"images": 0, "matched_images": 0, "human_masks": 0, "pseudo_masks": 0, "added": 0}
    if human.is_file():
        obj = json.loads(human.read_text(encoding="utf-8"))
        if isinstance(obj, dict) and isinstance(obj.get("images"), list) and isinstance(obj.get("annotations"), list):
            return _fuse_coco(obj, pmap, output, iou, stats)
        if isinstance(obj, dict) and isinstance(obj.get("image"), dict):
            return _fuse_sa1b([(human.name, obj)], pmap, output, iou, stats)
        raise FuseError(f"--human {human}: neither a COCO JSON nor an SA-1B per-image JSON")
    if human.is_dir():
        files = sorted(human.rglob("*.json"))
        objs = []
        for f in files:
            try:
                o = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(o, dict) and isinstance(o.get("image"), dict):
                objs.append((f.relative_to(human).as_posix(), o))
        if not objs:
            raise FuseError(f"--human {human}: no SA-1B per-image JSON found")
        return _fuse_sa1b(objs, pmap, output, iou, stats)
    raise FuseError(f"--human {human} does not exist")


def _fuse_coco(coco: dict, pmap, output: Path, iou: float, stats: dict) -> dict[str, int]:
    by: dict[Any, list[dict]] = {}
    for a in coco["annotations"]:
        by.setdefault(a.get("image_id"), []).append(a)
    cats = list(coco.get("categories") or [])
    pseudo_cat = max([int(c["id"]) for c in cats] + [0]) + 1
    cats.append({"id": pseudo_cat, "name": "unsam_pseudo", "supercategory": "unsam_pseudo"})
    next_id = max([int(a.get("id", 0)) for a in coco["annotations"]] + [0]) + 1
    added: list[dict] = []
    for img in coco["images"]:
        stats["images"] += 1
        hum = by.get(img["id"], [])
        stats["human_masks"] += len(hum)
        found = _fuse_one(img, hum, pmap, iou, stats)
        if found is None:
            continue
        panns, idx, h, w = found
        for i in idx:
            added.append(_pseudo_record(panns[i], _to_rle(panns[i]["segmentation"], h, w), next_id, img["id"], pseudo_cat))
            next_id += 1
    stats["added"] = len(added)
    out = {**coco, "annotations": list(coco["annotations"]) + added, "categories": cats}
    out["info"] = {**(coco.get("info") or {}), "unsam_fuse": {"iou": iou, **stats}}
    write_json_atomic(output, out)
    return stats


def _fuse_one(img: dict, hum: list[dict], pmap, iou: float, stats: dict):
    """The pseudo-masks of one image to add: (pseudo annotations, kept indices, h, w), or None
    when no pseudo-label file matches the image. Counts into ``stats``."""
    m = _match(pmap, img.get("file_name", ""))
    if m is None:
        return None
    stats["matched_images"] += 1
    h, w = int(img["height"]), int(img["width"])
    panns = m[1]
    stats["pseudo_masks"] += len(panns)
    try:
        idx = fuse_image([a["segmentation"] for a in hum], [a["segmentation"] for a in panns], h, w, iou)
    except FuseError as e:
        raise FuseError(f"image {img.get('file_name')}: {e}") from None
    return panns, idx, h, w


def _fuse_sa1b(objs: list[tuple[str, dict]], pmap, output: Path, iou: float, stats: dict) -> dict[str, int]:
    output.mkdir(parents=True, exist_ok=True)
    for rel, obj in objs:
        img = obj["image"]
        stats["images"] += 1
        hum = obj.get("annotations") or []
        stats["human_masks"] += len(hum)
        anns = list(hum)
        found = _fuse_one(img, hum, pmap, iou, stats)
        if found is not None:
            panns, idx, h, w = found
            next_id = max([int(a.get("id", 0)) for a in hum] + [0]) + 1
            for k, i in enumerate(idx):
                anns.append(_pseudo_record(panns[i], _to_rle(panns[i]["segmentation"], h, w), next_id + k, img.get("image_id"), None))
            stats["added"] += len(idx)
        write_json_atomic(output / rel, {**obj, "annotations": anns})
    return stats


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m unsam.fuse", description="UnSAM+: keep all human masks, add the pseudo-masks that overlap none of them.")
    ap.add_argument("--human", required=True, type=Path, help="human annotations: COCO JSON, or SA-1B per-image JSON(s) (file or folder)")
    ap.add_argument("--pseudo", required=True, type=Path, help="pseudo-labels: unsam.label folder or its COCO export")
    ap.add_argument("--output", "-o", required=True, type=Path, help="fused COCO JSON (COCO input) or folder (SA-1B input)")
    ap.add_argument("--iou", type=float, default=0.02, help="add a pseudo-mask when its best IoU with the human masks is <= this (published 0.02)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.iou <= 1.0:
        print(f"error: --iou should be in [0, 1], got {args.iou}", file=sys.stderr)
        return 2
    try:
        s = fuse(args.human, args.pseudo, args.output, args.iou)
    except (FuseError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"unsam.train.fuse: {s['images']} images ({s['matched_images']} with pseudo-labels); kept {s['human_masks']} human masks, "
        f"added {s['added']} of {s['pseudo_masks']} pseudo-masks (best IoU <= {args.iou}) -> {args.output}"
    )
    if s["matched_images"] == 0:
        print("warning: no image of --human has pseudo-labels (file names do not match)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
