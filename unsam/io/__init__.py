"""Images in, label JSON out: the I/O every layer of unsam shares.

- :mod:`unsam.io.images` — input specifications to paths, files to RGB arrays, a DataLoader dataset;
- :mod:`unsam.io.rle` — COCO compressed RLE;
- :mod:`unsam.io.records` — the per-image label JSON (record builders, schema check);
- :mod:`unsam.io.files` — atomic writes and the resume check;
- :mod:`unsam.io.coco` — a labeled folder merged into one COCO JSON;
- :mod:`unsam.io.datasets` — label sets (a folder of label JSONs or a COCO JSON) read as records.

Everything is importable from ``unsam.io`` directly.
"""

from unsam.io.coco import COCO_CATEGORY, export_coco
from unsam.io.files import (
    atomic_writer,
    read_label_json,
    remove_temp_files,
    write_json_atomic,
)
from unsam.io.images import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageError,
    InputError,
    collate_images,
    discover_images,
    load_image,
    pil_to_rgb,
)
from unsam.io.records import (
    SOURCES,
    annotation_record,
    image_record,
    validate_label_json,
)
from unsam.io.rle import mask_to_rle, masks_to_rles, rle_area, rle_bbox, rle_to_mask

__all__ = [
    "COCO_CATEGORY",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "ImageDataset",
    "ImageError",
    "InputError",
    "annotation_record",
    "atomic_writer",
    "collate_images",
    "discover_images",
    "export_coco",
    "image_record",
    "load_image",
    "mask_to_rle",
    "masks_to_rles",
    "pil_to_rgb",
    "read_label_json",
    "remove_temp_files",
    "rle_area",
    "rle_bbox",
    "rle_to_mask",
    "validate_label_json",
    "write_json_atomic",
]
