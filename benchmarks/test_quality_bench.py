"""Quality benchmark: unsam (offline ``classic`` backbone) beside the FH and SLIC baselines, on real GT.

    pytest benchmarks/ --benchmark -k quality -s
    UNSAM_QUALITY_LIMIT=5 pytest benchmarks/ --benchmark -k quality -s    # quick run: 5 images per set

Labels ``../shared/data/coco-mini/val2017`` (79 images) and
``../shared/data/bsds500/images/val`` (100 images) with each method in this
process, evaluates everything with :mod:`unsam.evaluate` (COCO: class-agnostic
AR/AP; BSDS500: covering / PRI / VI at ODS and OIS) and prints one table
(metric x method). Seconds per image = the labeling call only (decoded image
in, annotation list out: no decoding, no JSON writing), averaged after one
untimed warm-up image. Results go to ``benchmarks/results/quality.json`` and
an AR-vs-masks-per-image plot ``benchmarks/results/quality_ar_curve.png``
(``quality_limit<N>.*`` for a limited run, so a quick run never overwrites the
full one).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from benchmarks._util import DATA, RESULTS, machine

pytestmark = pytest.mark.benchmark

COCO_IMAGES = DATA / "coco-mini" / "val2017"
COCO_GT = DATA / "coco-mini" / "instances_val2017.json"
BSDS_IMAGES = DATA / "bsds500" / "images" / "val"
BSDS_GT = DATA / "bsds500" / "groundTruth" / "val"
METHODS = ("unsam", "unsam+edge", "fh", "slic")  # unsam+edge: --refine edge
CURVE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
COCO_ROWS = ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000", "AP", "AP50")
BSDS_ROWS = ("covering_ods", "covering_ois", "pri_ods", "pri_ois", "vi_ods", "vi_ois")


def _limit() -> int | None:
    v = os.environ.get("UNSAM_QUALITY_LIMIT")
    return int(v) if v else None


def _labeler(method: str):
    """A function: uint8 [H, W, 3] RGB -> annotation list."""
    if method.startswith("unsam"):
        from unsam.pipeline import LabelConfig, Labeler

        refine = method.split("+")[1] if "+" in method else "none"
        lab = Labeler(LabelConfig(backbone="classic", refine=refine))
        return lambda im: lab.label_batch([im])[0]
    from unsam.baselines import label_image

    return lambda im: label_image(im, method)


def _label_set(method: str, paths: list[Path], out: Path) -> dict:
    """Label images into out/ (per-image JSON); returns seconds and masks per image."""
    from unsam.io import image_record, load_image, write_json_atomic

    fn = _labeler(method)
    fn(load_image(paths[0]))  # warm-up (lazy imports, first allocations), not timed
    total = 0.0
    n_masks = 0
    t_start = time.perf_counter()
    for idx, p in enumerate(paths):
        im = load_image(p)
        t0 = time.perf_counter()
        anns = fn(im)
        total += time.perf_counter() - t0
        n_masks += len(anns)
        h, w = im.shape[:2]
        write_json_atomic(out / f"{p.stem}.json", {"image": image_record(idx + 1, p.name, w, h), "annotations": anns})
    print(
        f"  labeled {len(paths)} images with {method}: {total / len(paths):.2f} s/image, "
        f"{n_masks / len(paths):.0f} masks/image (wall {time.perf_counter() - t_start:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return {"seconds_per_image": total / len(paths), "masks_per_image": n_masks / len(paths)}


def _table(results: dict) -> str:
    rows = [("COCO-mini " + k, "coco", k) for k in (*COCO_ROWS, "masks_per_image", "seconds_per_image")]
    rows += [("BSDS500 val " + k, "bsds", k) for k in (*BSDS_ROWS, "masks_per_image", "seconds_per_image")]
    w0 = max(len(r[0]) for r in rows)
    lines = ["metric".ljust(w0) + "".join(m.rjust(10) for m in METHODS)]
    for name, ds, key in rows:
        cells = []
        for m in METHODS:
            v = results[ds][m].get(key)
            cells.append(("n/a" if v is None else f"{v:.1f}" if key == "masks_per_image" else f"{v:.3f}").rjust(10))
        lines.append(name.ljust(w0) + "".join(cells))
    return "\n".join(lines)


def _plot(curves: dict[str, dict[int, float]], path: Path, n_images: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for m, c in curves.items():
        ks = sorted(c)
        ax.plot(ks, [c[k] for k in ks], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("masks per image (top-k by score)")
    ax.set_ylabel("class-agnostic mask AR@k")
    ax.set_title(f"COCO-mini ({n_images} images): AR vs masks per image")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def test_quality(tmp_path_factory):
    if not (COCO_GT.is_file() and BSDS_GT.is_dir()):
        pytest.skip(f"shared evaluation data not found under {DATA}")
    pytest.importorskip("skimage", reason="the baselines need scikit-image (the 'eval' extra)")
    from unsam.evaluate import evaluate_bsds, evaluate_coco
    from unsam.io import discover_images, write_json_atomic

    limit = _limit()
    sets = {"coco": discover_images(COCO_IMAGES), "bsds": discover_images(BSDS_IMAGES)}
    if limit:
        sets = {k: v[:limit] for k, v in sets.items()}
    results: dict = {"coco": {}, "bsds": {}}
    curves: dict[str, dict[int, float]] = {}
    notes: dict[str, list[str]] = {}
    for ds, paths in sets.items():
        for m in METHODS:
            out = tmp_path_factory.mktemp(f"{ds}_{m}")
            timing = _label_set(m, paths, out)
            if ds == "coco":
                r = evaluate_coco(out, COCO_GT, limit=len(paths), curve=CURVE)
                curves[m] = r.curve
            else:
                r = evaluate_bsds(out, BSDS_GT, limit=len(paths))
                results[ds].setdefault("_ods_scale", {})[m] = r.ods_scale
            assert not r.missing and not r.unmatched, (r.missing, r.unmatched)
            results[ds][m] = {**r.metrics, **timing}
            notes[f"{ds}/{m}"] = r.notes
    scales = results["bsds"].pop("_ods_scale")
    baselines = [m for m in METHODS if not m.startswith("unsam")]
    ours = [m for m in METHODS if m.startswith("unsam")]
    best_ar = max(results["coco"][b]["AR@1000"] for b in baselines)
    best_cov = max(results["bsds"][b]["covering_ods"] for b in baselines)
    our_ar = max(results["coco"][m]["AR@1000"] for m in ours)
    our_cov = max(results["bsds"][m]["covering_ods"] for m in ours)
    targets = {
        "coco_ar1000_ratio_vs_best_baseline": our_ar / best_ar if best_ar else None,
        "coco_target_met (>= 1.2)": bool(best_ar and our_ar >= 1.2 * best_ar),
        "bsds_covering_ods_margin_vs_best_baseline": our_cov - best_cov,
        "bsds_target_met (above every baseline)": bool(our_cov > best_cov),
    }
    table = _table(results)
    print(f"\n== quality ({len(sets['coco'])} COCO-mini images, {len(sets['bsds'])} BSDS500 val images) ==")
    print(table)
    for k, v in targets.items():
        print(f"  {k}: {v:.3f}" if isinstance(v, float) else f"  {k}: {v}")
    stem = f"quality_limit{limit}" if limit else "quality"
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        RESULTS / f"{stem}.json",
        {
            "machine": machine(),
            "images": {k: len(v) for k, v in sets.items()},
            "seconds_per_image": "labeling call only (decoded image -> annotations), mean after one warm-up image",
            "coco": results["coco"],
            "bsds": results["bsds"],
            "bsds_ods_scale (target segment count)": scales,
            "ar_curve_coco": {m: {str(k): v for k, v in c.items()} for m, c in curves.items()},
            "targets": targets,
            "notes": notes,
            "table": table.splitlines(),
        },
        indent=1,
    )
    if _plot(curves, RESULTS / f"{stem}_ar_curve.png", len(sets["coco"])):
        print(f"  plot: {RESULTS / f'{stem}_ar_curve.png'}")
    print(f"  results: {RESULTS / f'{stem}.json'}")
