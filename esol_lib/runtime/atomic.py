"""Writes that are all-or-nothing, with temp names no two writers share.

Every file of a run folder, a dataset or a book is written to a temp file in the same folder and
renamed over its final name (``os.replace`` is atomic on POSIX and Windows), so a reader, a rerun
after a kill, or a second process never sees half a file. The temp name carries the process id
and a random part (``.<name>.<pid>.<random>.tmp``): two processes writing the same file each
write their own temp and the last rename wins whole. A failed write removes its temp.

A small JSON file that is unreadable (truncated by a full disk or a kill before these rules
existed) is treated by :func:`read_json` as absent: the signatures it holds only decide whether
to recompute, so recomputing is the safe answer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_save", "atomic_write_text", "atomic_write_bytes", "link_or_copy", "read_json"]

log = logging.getLogger(__name__)

#: A temp file of :func:`atomic_path`: ``.<name>.<pid>.<random>.tmp[<suffix>]``; group 1 is the pid.
TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp[^/]*$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temp path beside ``path``; on a clean exit rename it to ``path``.

    ``suffix`` is appended to the temp name for writers that insist on an extension
    (``np.savez`` adds ``.npz`` to any other name). On an exception the temp file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp), tmp):
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e  # name the real file
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike, *, durable: bool = True) -> None:
    """``torch.save(obj)`` to ``path`` atomically, through an open file.

    Through a file object, not the temp's name: ``torch.save`` names the zip archive's root folder
    after the file it is given, so saving to the (random) temp name would make two saves of the same
    object differ in their bytes, and every signature that hashes the file would differ too.
    ``durable=False`` skips the ``fsync``: for a memo that is checked when read (the feature cache),
    where a file lost to a power cut costs a recomputation, and a sync per entry is wasted time.
    """
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:  # torch reports a failed write (a full disk) as a RuntimeError
                full = shutil.disk_usage(tmp.parent).free < (1 << 20)
                raise OSError(errno.ENOSPC if full else errno.EIO, f"could not write ({e})", str(path)) from e
            f.flush()
            if durable:
                os.fsync(f.fileno())


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst``, or copy it where links are impossible (across file systems),
    through a temp name: a copy cut short never sits at ``dst``, where a later call would take it
    for a finished file. An existing ``dst`` is left alone."""
    dst = Path(dst)
    if dst.exists():
        return
    with atomic_path(dst) as tmp:
        tmp.unlink()  # os.link needs a free name
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``; ``None`` when it is missing or unreadable (logged, not raised)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s is unreadable (%s); treating it as missing, so what it describes is recomputed", path, e)
        return None
    return data if isinstance(data, dict) else None
