"""The labels of the committed example images, byte for byte, for every preset.

The digests below are the SHA-256 of the JSON files ``python -m unsam.label``
writes for ``examples/images`` with the weight-free ``classic`` backbone. They
pin the labels across refactors (a change of layout must not change a label):
a change that means to change the labels updates them here and says why in its
commit. They hold for any thread count (checked with ``--threads 1`` and 2) on
the project's x86-64 CPUs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from unsam.label import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"

DIGESTS = {
    "full": {
        "coco_062554.json": "bc737f2a82462caf8a44abe52109438f1c3420f81d7b48b2315935cbac717562",
        "coco_397133.json": "7cff5f22b1d1d946394a1f55be90bd90f72b46f8825a20aa0670e7de6cac546e",
        "coco_475678.json": "0215abfe6c518527c9483a5869a27c98ef140da06867cee19ba661d94aa09478",
    },
    "unsam": {
        "coco_062554.json": "bab27128d06e9b733f390f488f1f946c3d6a22b3d9a9a1807df223b8416ed201",
        "coco_397133.json": "1a6473574c3daa752535c95bd7a0c8c6a2842812b6910f9987aa59b0c5b68950",
        "coco_475678.json": "fa5e8d47cc0fbe893d21e3c5f689a1daa52c61f899e49ed4f50e4ecccecb0d4a",
    },
    "maskcut": {
        "coco_062554.json": "7254a4a2d168b6c14503ce627e4fa289e620de4b3d0fa98dd7a76bce9ac21dd9",
        "coco_397133.json": "ed1043cf685e8a822fa451f53e0d42b75a3b3852c237da433f7ce33b3efd031a",
        "coco_475678.json": "6afbc0f4fc643993de1abf8d78112e048c85941ac146b1ecd7790bf8b71545ba",
    },
}


@pytest.mark.parametrize("preset", sorted(DIGESTS))
def test_example_labels_are_byte_identical(tmp_path, preset):
    out = tmp_path / preset
    rc = main(["--input", str(EXAMPLES), "--output", str(out), "--backbone", "classic", "--preset", preset, "--quiet", "--workers", "0"])
    assert rc == 0
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.json")) if p.name != "summary.json"}
    assert got == DIGESTS[preset]
