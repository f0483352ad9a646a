"""Planted faults, for the tests of per-image isolation (``tests/test_isolation.py``).

``UNSAM_INJECT_FAULT="STAGE:NAME:KIND"`` makes stage ``STAGE`` (``decode`` excepted:
``features``, ``divide``, ``conquer``, ``atoms``, ``masks``, ``write``) of every image
whose name contains ``NAME`` raise (``raise``), hang (``hang``) or kill its process
(``crash``: SIGSEGV, as a crash in compiled code would). Several faults are separated
by ``;``. Nothing happens unless the variable is set; it is read once per process
(spawned workers inherit it).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterable

__all__ = ["inject"]

KINDS = ("raise", "hang", "crash")


@functools.lru_cache(maxsize=1)
def _faults() -> tuple[tuple[str, str, str], ...]:
    spec = os.environ.get("UNSAM_INJECT_FAULT", "")
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        stage, name, kind = part.split(":")
        if kind not in KINDS:
            raise ValueError(f"UNSAM_INJECT_FAULT: kind should be one of {', '.join(KINDS)}, got {kind!r}")
        out.append((stage, name, kind))
    return tuple(out)


def inject(stage: str, names: Iterable[str]) -> None:
    """Act out a planted fault if one names this stage and one of these images."""
    faults = _faults()
    if not faults:
        return
    names = list(names)
    for f_stage, f_name, kind in faults:
        if f_stage == stage and any(f_name in n for n in names):
            if kind == "raise":
                raise RuntimeError(f"injected fault in {stage}")
            if kind == "hang":
                while True:
                    time.sleep(3600)
            os.kill(os.getpid(), signal.SIGSEGV)
