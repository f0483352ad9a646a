"""One rank's labeling run: which images it labels, the loop over them, and what it records.

- :func:`select_jobs`: this rank's share of the sorted image list (every ``world``-th
  image), less the images already labeled (a valid JSON exists: resume) and those that
  failed in an earlier run (``--retry-failed`` takes only those, ``--overwrite`` all).
- :func:`label_jobs`: decoding in DataLoader workers, the labeler's batched stages,
  the per-image stages, the JSON (and picture) of each image written atomically.
  One image's failure (an exception in any stage, a file that cannot be written) is
  reported and the loop goes on; a batch whose batched stages fail is retried one image
  at a time.
- :class:`Events`: what the loop tells the outside — each stage as it starts, each image
  done or failed. The in-process run (:class:`LocalEvents`) writes failures to the run's
  failure journal itself; a supervised run (:mod:`unsam.label.supervise`) sends them to
  the supervisor, which also enforces the per-image time limit.

Failure journal: ``DIR/.unsam/failed-r<rank>.jsonl``, one ``{"path", "file", "stage",
"reason"}`` per line, appended as failures happen (a killed run keeps them). An image
counts as failed while the journal names it and its JSON is absent.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unsam.io import (
    ImageDataset,
    collate_images,
    image_record,
    read_label_json,
    write_json_atomic,
)
from unsam.label.faults import inject
from unsam.label.pipeline import die_with_parent

__all__ = ["Events", "Job", "LocalEvents", "failures", "label_jobs", "select_jobs", "state_dir", "tmp_dir"]

log = logging.getLogger("unsam.label")


@dataclass(frozen=True)
class Job:
    index: int  #: position in the sorted list of all images (image_id = index + 1)
    path: str  #: the image file
    rel: str  #: its path relative to the input root (posix): the output's relative path
    out: str  #: the label JSON it gets


def state_dir(out_dir: Path) -> Path:
    """Where a run keeps its state: the failure journals and the temporary files."""
    return Path(out_dir) / ".unsam"


def tmp_dir(out_dir: Path, rank: int) -> Path:
    """This rank's folder of temporary files (a killed writer's are removed at the next start)."""
    return state_dir(out_dir) / f"tmp-r{rank}"


def _journal(out_dir: Path, rank: int) -> Path:
    return state_dir(out_dir) / f"failed-r{rank}.jsonl"


def record_failure(out_dir: Path, rank: int, job: Job, stage: str, reason: str) -> None:
    """Append one failure to this rank's journal (one write of one line: a kill cannot split it)."""
    path = _journal(out_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"path": job.path, "file": job.rel, "stage": stage, "reason": reason[:2000]}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def failures(out_dir: Path) -> dict[str, dict]:
    """Every journaled failure whose image has no valid JSON now (the last entry per image), by ``file``."""
    out: dict[str, dict] = {}
    for path in sorted(state_dir(out_dir).glob("failed-r*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                out[str(entry["file"])] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a full disk: the image is simply retried
    return {k: v for k, v in out.items() if read_label_json(Path(out_dir) / Path(k).with_suffix(".json")) is None}


def select_jobs(paths: list[Path], root: Path, out_dir: Path, rank: int, world: int, overwrite: bool, retry_failed: bool):
    """This rank's jobs: (jobs to label, how many were done before, how many failed before and are skipped)."""
    failed = {} if overwrite else failures(out_dir)
    jobs, done, skipped = [], 0, 0
    for idx in range(rank, len(paths), world):  # every world-th image: no two ranks share one
        p = paths[idx]
        rp = p.resolve()
        rel = (rp.relative_to(root) if rp.is_relative_to(root) else Path(p.name)).as_posix()
        out = out_dir / Path(rel).with_suffix(".json")
        if retry_failed:
            if rel in failed:
                jobs.append(Job(idx, str(p), rel, str(out)))
            continue
        if not overwrite and read_label_json(out) is not None:
            done += 1
        elif rel in failed:
            skipped += 1
        else:
            jobs.append(Job(idx, str(p), rel, str(out)))
    return jobs, done, skipped


class Events:
    """What the labeling loop reports. ``current`` holds each image's stage in progress."""

    def __init__(self) -> None:
        self.current: dict[int, str] = {}

    def stage(self, stage: str, jobs: list[Job]) -> None:
        for j in jobs:
            self.current[j.index] = stage

    def done(self, job: Job, masks: int) -> None:
        self.current.pop(job.index, None)

    def failed(self, job: Job, stage: str, reason: str) -> None:
        self.current.pop(job.index, None)


class LocalEvents(Events):
    """In-process run: failures go straight to the journal."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        super().__init__()
        self.out_dir, self.rank = Path(out_dir), rank
        self.failed_list: list[dict] = []

    def failed(self, job: Job, stage: str, reason: str) -> None:
        super().failed(job, stage, reason)
        record_failure(self.out_dir, self.rank, job, stage, reason)
        self.failed_list.append({"path": job.path, "file": job.rel, "stage": stage, "reason": reason})


def _reason(e: BaseException) -> str:
    return f"error: {type(e).__name__}: {e}"


def label_jobs(args, labeler, jobs: list[Job], out_dir: Path, rank: int, world: int, events: Events, solo: list[Job] = ()) -> dict[str, Any]:
    """Label ``solo`` one image at a time, then ``jobs`` in batches of ``args.batch_size``.
    Returns this run's counts and stage seconds."""
    out_dir = Path(out_dir)
    tmp = tmp_dir(out_dir, rank)
    stats = {"labeled": 0, "masks": 0, "decode_wait": 0.0, "write": 0.0}
    bar = _progress(args, len(jobs) + len(solo), rank, world)

    def on_stage(stage: str, which: int | None, batch: list[Job]) -> None:
        events.stage(stage, batch if which is None else [batch[which]])

    def submit(good: list[dict], batch: list[Job]) -> list:
        """The batch's futures; if its batched stages fail, one image at a time."""
        labeler.on_stage = lambda st, which: on_stage(st, which, batch)
        try:
            return labeler.submit_batch([it["image"].numpy() for it in good], [j.rel for j in batch])
        except Exception as e:  # one failing batch must not end the run: retry one by one
            if len(good) == 1:
                f: Future = Future()
                f.set_exception(e)
                return [f]
            log.warning("batch failed (%s); retrying its images one by one", e)
            return [fut for it, j in zip(good, batch) for fut in submit([it], [j])]

    def drain(good: list[dict], batch: list[Job], futs: list, retry: bool = True) -> None:
        for it, job, anns in zip(good, batch, labeler.collect(futs, errors="return")):
            if isinstance(anns, BrokenProcessPool) and retry:
                # A CPU worker died (killed for memory, say): the pool fails every image it
                # held, most of them innocent. Each goes once more, alone, to a fresh pool.
                drain([it], [job], submit([it], [job]), retry=False)
                continue
            if isinstance(anns, Exception):
                events.failed(job, events.current.get(job.index, "unknown"), _reason(anns))
                bar.update(1)
                continue
            t0 = time.perf_counter()
            events.stage("write", [job])
            try:
                inject("write", [job.rel])
                h, w = it["image"].shape[:2]
                write_json_atomic(job.out, {"image": image_record(job.index + 1, job.rel, w, h), "annotations": anns}, tmp_dir=tmp)
                if args.save_vis:
                    from unsam.label.vis import save_overlay

                    save_overlay(it["image"].numpy(), anns, out_dir / "vis" / Path(job.rel).with_suffix(".jpg"), tmp_dir=tmp)
            except (OSError, ValueError, RuntimeError) as e:
                events.failed(job, "write", f"unwritable: {e}" if isinstance(e, OSError) else _reason(e))
                bar.update(1)
                continue
            stats["write"] += time.perf_counter() - t0
            stats["labeled"] += 1
            stats["masks"] += len(anns)
            events.done(job, len(anns))
            bar.update(1)
            bar.set_postfix(masks_per_img=f"{stats['masks'] / stats['labeled']:.0f}")

    t_start = time.perf_counter()
    # Batches in flight: while the workers run the CPU stages of earlier batches, this
    # process runs the next batch's batched stages; without workers submit() did everything.
    depth = labeler.batches_in_flight(args.batch_size)
    for part, bs in ((list(solo), 1), (list(jobs), max(1, args.batch_size))):
        if not part:
            continue
        ds = ImageDataset([j.path for j in part], max_pixels=labeler.cfg.max_pixels)
        workers = max(0, args.workers)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=bs, num_workers=workers, collate_fn=collate_images, worker_init_fn=_loader_worker_init,
            # Forked, not spawned: this process may itself be a spawned child (a supervised run),
            # whose default would make every decoding worker import torch again (seconds each).
            multiprocessing_context="fork" if workers and sys.platform.startswith("linux") else None,
        )
        pending: deque = deque()
        it = iter(loader)
        for start in range(0, len(part), bs):
            batch_jobs = part[start : start + bs]
            events.stage("decode", batch_jobs)
            t0 = time.perf_counter()
            batch = next(it)
            stats["decode_wait"] += time.perf_counter() - t0
            good, good_jobs = [], []
            for item in batch:
                job = part[item["index"]]
                if item["error"] is not None:
                    events.failed(job, "decode", item["error"])
                    bar.update(1)
                else:
                    good.append(item)
                    good_jobs.append(job)
            if good:
                pending.append((good, good_jobs, submit(good, good_jobs)))
            while len(pending) > depth:
                drain(*pending.popleft())
        while pending:
            drain(*pending.popleft())
    bar.close()
    times = dict(labeler.timings)
    times["decode_wait"] = stats["decode_wait"]
    times["write"] = stats["write"] + times.pop("output", 0.0)
    return {"labeled": stats["labeled"], "masks": stats["masks"], "wall_s": time.perf_counter() - t_start, "stage_s": times,
            "peak_rss_gib": peak_rss_gib()}


def peak_rss_gib() -> float:
    """This process's peak resident memory (GiB): VmHWM, which exec resets (getrusage's
    maximum would count the parent it was forked from), else getrusage's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _loader_worker_init(_: int) -> None:
    die_with_parent()  # a decoding worker must not outlive a labeler that was killed


def _progress(args, total: int, rank: int, world: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=f"unsam.label[{rank}/{world}]" if world > 1 else "unsam.label",
        unit="img",
        disable=args.quiet or not sys.stderr.isatty() and os.environ.get("UNSAM_PROGRESS") != "1",
        position=rank if world > 1 else None,
    )
