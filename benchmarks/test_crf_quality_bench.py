"""Quality with and without the dense CRF, each preset (``classic`` features), on held-out GT.

    pytest benchmarks/ --benchmark -k crf_quality -s
    UNSAM_QUALITY_LIMIT=5 pytest benchmarks/ --benchmark -k crf_quality -s    # quick run

Evaluation data only (``unsam.evaluate.splits``): the COCO-mini evaluation half (39 images)
and BSDS500 val (100 images), evaluated as ``benchmarks/test_quality_bench.py`` does
(COCO: class-agnostic AR/AP; BSDS500: covering / PRI / VI at ODS and OIS, level rule). The
CRF's settings are the published ones (CutLER's ``maskcut/crf.py``): nothing was tuned.

Methods: ``full`` and ``unsam`` without and with ``--refine crf`` (on the masks that survive
the first NMS; a mask the CRF moves to IoU < 0.5 with itself is dropped, as MaskCut drops
it), ``maskcut`` as published (its step 5, the CRF, included) and without step 5. Whether the
CRF becomes a default is decided by this table (README "Evaluation"); the benchmark asserts
that every image was labeled and evaluated. Results: ``benchmarks/results/quality_crf.json``
(``quality_crf_limit<N>.json`` for a limited run).
"""

from __future__ import annotations

import os

import pytest

from benchmarks._util import DATA, RESULTS, machine
from benchmarks.test_quality_bench import BSDS_ROWS, _label_set
from unsam.evaluate.splits import COCO_MINI_EVAL_IDS, bsds_gt_dir, bsds_images, coco_mini_gt, coco_mini_images

pytestmark = pytest.mark.benchmark

METHODS = {
    "full": ("full", {}),
    "full+crf": ("full", {"refine": "crf"}),
    "unsam": ("unsam", {}),
    "unsam+crf": ("unsam", {"refine": "crf"}),
    "maskcut": ("maskcut", {}),
    "maskcut-no-crf": ("maskcut", {"divide": {"crf": False}}),
}
COCO_ROWS = ("AR@10", "AR@100", "AR@1000", "AP")


def _labeler(method: str):
    from unsam.label import Labeler, label_config

    preset, over = METHODS[method]
    lab = Labeler(label_config({"backbone": "classic", **over}, preset=preset))
    return lambda im: lab.label_batch([im])[0]


def test_crf_quality(tmp_path_factory):
    coco_gt, bsds_gt = coco_mini_gt(DATA), bsds_gt_dir(DATA, "eval")
    if not (coco_gt.is_file() and bsds_gt.is_dir()):
        pytest.skip(f"shared evaluation data not found under {DATA}")
    from unsam.evaluate import evaluate_bsds, evaluate_coco
    from unsam.io import write_json_atomic

    limit = int(os.environ["UNSAM_QUALITY_LIMIT"]) if os.environ.get("UNSAM_QUALITY_LIMIT") else None
    sets = {"coco": coco_mini_images(DATA, "eval"), "bsds": bsds_images(DATA, "eval")}
    if limit:
        sets = {k: v[:limit] for k, v in sets.items()}
    coco_ids = COCO_MINI_EVAL_IDS[: len(sets["coco"])]
    results: dict = {"coco": {}, "bsds": {}}
    for ds, paths in sets.items():
        for m in METHODS:
            out = tmp_path_factory.mktemp(f"{ds}_{m.replace('+', '_')}")
            timing = _label_set(m, paths, out, _labeler(m))
            if ds == "coco":
                r = evaluate_coco(out, coco_gt, image_ids=coco_ids)
            else:
                r = evaluate_bsds(out, bsds_gt, limit=len(paths), scale="level")
            assert not r.missing and not r.unmatched, (m, r.missing, r.unmatched)
            results[ds][m] = {**r.metrics, **timing}
    rows = [("COCO-mini eval " + k, "coco", k) for k in (*COCO_ROWS, "masks_per_image", "seconds_per_image")]
    rows += [("BSDS500 val " + k, "bsds", k) for k in (*BSDS_ROWS, "masks_per_image", "seconds_per_image")]
    w0 = max(len(r[0]) for r in rows)
    lines = ["metric".ljust(w0) + "".join(m.rjust(15) for m in METHODS)]
    for name, ds, key in rows:
        cells = [(f"{results[ds][m][key]:.1f}" if key == "masks_per_image" else f"{results[ds][m][key]:.3f}").rjust(15) for m in METHODS]
        lines.append(name.ljust(w0) + "".join(cells))
    table = "\n".join(lines)
    print(f"\n== quality with and without the CRF ({len(sets['coco'])} COCO-mini eval images, {len(sets['bsds'])} BSDS500 val) ==")
    print(table)
    stem = f"quality_crf_limit{limit}" if limit else "quality_crf"
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        RESULTS / f"{stem}.json",
        {
            "machine": machine(),
            "images": {k: len(v) for k, v in sets.items()},
            "methods": {m: {"preset": p, "overrides": o} for m, (p, o) in METHODS.items()},
            "crf": "published settings (maskcut/crf.py), unsam.kernels.dense_crf",
            "coco": results["coco"],
            "bsds": results["bsds"],
            "table": table.splitlines(),
        },
        indent=1,
    )
    assert all(len(results[ds]) == len(METHODS) for ds in results)
