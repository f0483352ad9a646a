"""A rank's labeling run in a child process that it watches: no single image can stop or hang a run.

The supervisor (the rank's own process: under torchrun, the rank) starts a child
in a session of its own (:func:`_child`), which labels the rank's images with
:func:`unsam.label.run.label_jobs` and reports every stage of every image as it
starts. The supervisor keeps each image's clock:

- a stage that runs over the time limit (``--image-timeout`` seconds per image; a
  batched stage of B images gets B times that) gets the whole child's session killed
  (its decoding and CPU workers with it);
- a child that dies (a crash in compiled code, the out-of-memory killer) is noticed;
- an exception in any stage is reported by the child itself and the child goes on.

After a kill or a death the image that was in the stage is recorded as failed (stage,
"timeout" or "crashed", in the run's failure journal) and a fresh child takes the
rest; when several images were in one batched stage, the fresh child labels them one
at a time first, so the culprit is found and the others are labeled. Images finished
before stay finished (their JSON exists); temporary files of a killed child are removed.
A child that fails twice before starting any image is a fatal error (a bad
checkpoint, no GPU memory): the run stops with its message.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

from unsam.io import remove_temp_files
from unsam.label.run import Events, Job, label_jobs, record_failure, tmp_dir

__all__ = ["SupervisorError", "run_supervised"]

_MAIN_STAGES = ("decode", "features", "divide", "conquer", "atoms", "masks", "write")


class SupervisorError(RuntimeError):
    """The labeling child cannot run at all (its message says why)."""


class _PipeEvents(Events):
    """In the child: every event goes to the supervisor."""

    def __init__(self, conn) -> None:
        super().__init__()
        self.conn = conn

    def stage(self, stage: str, jobs: list[Job]) -> None:
        super().stage(stage, jobs)
        self.conn.send(("stage", stage, [j.index for j in jobs]))

    def done(self, job: Job, masks: int) -> None:
        super().done(job, masks)
        self.conn.send(("done", job.index, masks))

    def failed(self, job: Job, stage: str, reason: str) -> None:
        super().failed(job, stage, reason)
        self.conn.send(("failed", job.index, stage, reason))


def _child(args, cfg, device: str, jobs: list[Job], solo: list[Job], out_dir: str, rank: int, world: int, cpu_workers: int, conn) -> None:
    """The labeling child: a session of its own (killed as one), dies with its supervisor."""
    import torch

    from unsam.label.pipeline import Labeler, die_with_parent

    os.setsid()
    die_with_parent()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    try:
        labeler = Labeler(cfg, device=device, cpu_workers=cpu_workers)
    except Exception as e:  # noqa: BLE001 - told to the supervisor, which stops the run
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        conn.close()
        return
    try:
        result = label_jobs(args, labeler, jobs, Path(out_dir), rank, world, _PipeEvents(conn), solo=solo)
        conn.send(("summary", result))
    finally:
        labeler.close()
        conn.close()


def _kill_session(proc) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.join()


def _signame(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"exit status {code}"


def run_supervised(args, cfg, jobs: list[Job], out_dir: Path, rank: int, world: int, device: str, cpu_workers: int, timeout: float) -> dict[str, Any]:
    """Label ``jobs`` in watched children (see the module docstring); returns the rank's counts:
    ``labeled``, ``masks``, ``failed`` (this run's failures), ``stage_s``, ``wall_s``, ``restarts``."""
    ctx = multiprocessing.get_context("spawn")
    by_index = {j.index: j for j in jobs}
    finished: set[int] = set()
    result: dict[str, Any] = {"labeled": 0, "masks": 0, "failed": [], "stage_s": {}, "restarts": 0}
    todo, solo = list(jobs), []
    barren = 0  # children in a row that died before starting an image
    t_start = time.perf_counter()

    def fail(index: int, stage: str, reason: str) -> None:
        job = by_index[index]
        finished.add(index)
        record_failure(out_dir, rank, job, stage, reason)
        result["failed"].append({"path": job.path, "file": job.rel, "stage": stage, "reason": reason})

    while todo or solo:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(args, cfg, device, todo, solo, str(out_dir), rank, world, cpu_workers, send))
        proc.start()
        send.close()
        inflight: dict[int, tuple[str, float, int]] = {}  # index -> (stage, started, images in that stage call)
        started_any, summary, fatal, over = False, None, None, []
        try:
            while True:
                if recv.poll(0.2):
                    try:
                        msg = recv.recv()
                    except EOFError:
                        break
                    kind = msg[0]
                    if kind == "stage":
                        now = time.monotonic()
                        started_any = True
                        for i in msg[2]:
                            inflight[i] = (msg[1], now, len(msg[2]))
                    elif kind == "done":
                        inflight.pop(msg[1], None)
                        finished.add(msg[1])
                        result["labeled"] += 1
                        result["masks"] += msg[2]
                    elif kind == "failed":
                        inflight.pop(msg[1], None)
                        fail(msg[1], msg[2], msg[3])
                    elif kind == "summary":
                        summary = msg[1]
                    elif kind == "fatal":
                        fatal = msg[1]
                elif not proc.is_alive():
                    break
                now = time.monotonic()
                over = [i for i, (_, t0, n) in inflight.items() if now - t0 > timeout * n]
                if over:
                    break
        except BaseException:
            _kill_session(proc)  # Ctrl-C, SIGTERM: the child's session goes with the supervisor
            raise
        if summary is not None and fatal is None:
            proc.join(60)  # a clean exit: its workers are shut down already
        _kill_session(proc)  # anything left of its session
        recv.close()
        if summary is not None:
            for k, v in summary["stage_s"].items():
                result["stage_s"][k] = result["stage_s"].get(k, 0.0) + v
            result["peak_rss_gib"] = max(result.get("peak_rss_gib", 0.0), summary["peak_rss_gib"])
        if fatal is not None:
            raise SupervisorError(fatal)
        if summary is not None:
            for j in todo + solo:  # every job is reported done or failed; this is a safety net, not a path
                if j.index not in finished:
                    fail(j.index, "unknown", "the labeling process ended without reporting this image")
            break
        remove_temp_files(tmp_dir(out_dir, rank))
        result["restarts"] += 1
        if over:
            stage, t0, n = inflight[over[0]]
            group = sorted(i for i, v in inflight.items() if v[0] == stage and v[1] == t0)
            why = f"timeout: the {stage} stage ran over {timeout * n:.0f} s (--image-timeout {timeout:g} s per image)"
        else:
            group = sorted(i for i, v in inflight.items() if v[0] in _MAIN_STAGES)
            stage = inflight[group[0]][0] if group else "start"
            why = f"crashed: the labeling process died ({_signame(proc.exitcode)}) in the {stage} stage"
        suspects: list[int] = []
        if len(group) == 1:
            fail(group[0], stage, why)
        elif group:
            suspects = group  # one at a time next: the culprit stands out
        barren = 0 if (started_any or group) else barren + 1
        if barren >= 2:
            raise SupervisorError(f"the labeling process died twice before labeling any image ({_signame(proc.exitcode)})")
        todo = [j for j in todo + solo if j.index not in finished and j.index not in suspects]
        solo = [by_index[i] for i in suspects]
    result["wall_s"] = time.perf_counter() - t_start
    return result
