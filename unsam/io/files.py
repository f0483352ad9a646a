"""Files out: atomic writes (a run killed at any moment leaves no half-written file) and the
resume check of a per-image label JSON."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from unsam.io.records import validate_label_json

__all__ = ["atomic_writer", "read_label_json", "remove_temp_files", "write_json_atomic"]



@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], binary: bool = False, tmp_dir: str | os.PathLike[str] | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file; on success fsync it and rename it onto ``path``.

    The temp file is ``.<name>.<random>.tmp`` next to ``path``, or in ``tmp_dir``
    (a folder on the same file system: a rename is only atomic within one),
    where a run that was killed can find and remove what it left
    (:func:`remove_temp_files`). If the block raises (or the process is
    killed), ``path`` keeps its old content, or stays absent; on an exception
    the temp file is removed. The parent folder is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent if tmp_dir is None else Path(tmp_dir)
    if tmp_dir is not None:
        folder.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            # os.open with 0o666 lets the umask decide the final permissions,
            # unlike mkstemp's 0o600, which would make shared label sets unreadable.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # Make the rename itself durable (the directory entry); best effort.
    with contextlib.suppress(OSError):
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, indent: int | None = None, tmp_dir: str | os.PathLike[str] | None = None
) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`atomic_writer`).

    Compact by default: label files are dominated by RLE strings and written
    by the million. Non-finite numbers are an error (JSON has none).
    """
    separators = (",", ":") if indent is None else None
    with atomic_writer(path, tmp_dir=tmp_dir) as f:
        json.dump(obj, f, indent=indent, separators=separators, allow_nan=False)


def remove_temp_files(tmp_dir: str | os.PathLike[str]) -> int:
    """Remove the temporary files :func:`atomic_writer` left in ``tmp_dir`` (a killed
    writer's); returns how many. Only names it makes (``.<name>.<hex>.tmp``) are touched."""
    n = 0
    folder = Path(tmp_dir)
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
    return n


def read_label_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Load a per-image label JSON if it is complete and structurally valid, else ``None``.

    Used for resume: a file that is missing, unparsable, or lacks
    ``image.{file_name,width,height}`` or an ``annotations`` list counts as
    not done. Annotations are checked for their keys, not decoded.
    """
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if not validate_label_json(obj) else None
