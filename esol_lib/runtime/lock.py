"""One writer per run folder: the lock a stage holds while it writes, and what the lock leaves behind.

:func:`run_lock` is the lock (``RUN/.lock``, with ``RUN/.lock.holder`` naming the process that holds
it); a stage called inside another re-enters its own lock instead of waiting for itself. The
decorator that takes it around a stage is :func:`esol_lib.runtime.rundir.holds_run_lock`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from esol_lib.runtime.atomic import TEMP_NAME, atomic_write_text, read_json
from esol_lib.runtime.errors import StageError

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"


#: What a stage leaves in a run folder; while none of it exists, the config has not been used yet.
OUTPUTS = ("checkpoints", "cams", "metrics", "ir_labels", "pseudo_masks", "seg_predictions", "ablations", "log.jsonl")


class RunBusyError(StageError):
    """Another process is writing to the run folder."""


# The run folders whose lock this process holds. A stage called inside another (the pipeline calls
# train_cam) re-enters its own lock instead of waiting for itself.
_HELD: set[str] = set()


#: What this process is, for the message a second writer gets; the command line sets it (``esol ...``).
COMMAND: str | None = None


def _this_command() -> str:
    if COMMAND:
        return COMMAND[:300]
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(argv)[:300]


@contextlib.contextmanager
def run_lock(root: str | Path, command: str | None = None, *, create: bool = False) -> Iterator[None]:
    """Hold run folder ``root``'s lock: one writing process at a time.

    A second process stops at once with :class:`RunBusyError`, naming the holder's command and
    pid, instead of training into the same folder (two ``train-cam`` would both report success
    and keep one of them) or racing on the same files. The lock is the operating system's
    (``filelock``: ``flock`` on POSIX), so a killed holder releases it; ``.lock.holder`` only
    describes the holder for that message. Re-entrant within a process. Under ``torchrun`` only
    rank 0 takes it (the other ranks write nothing of their own). A folder that does not exist is
    created only with ``create`` (:func:`create_run`); otherwise there is nothing to lock yet and
    the stage reports the missing run itself.
    """
    if os.environ.get("RANK", "0") != "0" or not (create or Path(root).is_dir()):
        yield
        return
    import filelock

    root = Path(root).resolve()
    key = str(root)
    if key in _HELD:
        yield
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(root / LOCK_FILE), timeout=0)
        lock.acquire()
    except filelock.Timeout:
        info = current_holder(root)
        since = time.strftime("%H:%M:%S", time.localtime(info["since"])) if info.get("since") else "?"
        raise RunBusyError(
            f"run folder {root} is in use by `{info.get('command', 'another process')}` (pid "
            f"{info.get('pid', '?')}, since {since}); wait for it to finish, or use another --run folder"
        ) from None
    except OSError as e:
        raise StageError(
            f"cannot lock run folder {root} ({e.strerror or e}); every command writes to its "
            f"run folder: make it writable, or copy it and pass the copy as --run"
        ) from None
    _HELD.add(key)
    try:
        try:  # first: a second writer's message names this holder
            atomic_write_text(
                root / HOLDER_FILE,
                json.dumps({"pid": os.getpid(), "since": time.time(), "command": command or _this_command()}) + "\n",
            )
        except OSError:
            pass  # the description is optional; the lock is what counts
        sweep_dead_temps(root)
        refuse_links(root)
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):  # a holder file left behind would describe the wrong process
            (root / HOLDER_FILE).unlink()
        lock.release()


def refuse_links(root: Path) -> None:
    """A run folder's outputs are never written, emptied or deleted through a symbolic link: a link
    at ``RUN/<outputs>`` or ``RUN/<outputs>/<stage>`` (``cams/baseline`` pointed at another folder)
    stops the command before any work, with one line naming it. ``cache`` may be one (a forked
    run's points at its source's: entries are keyed by content)."""
    for name in OUTPUTS + ("superseded",):
        top = root / name
        candidates = [top] + (sorted(top.iterdir()) if top.is_dir() and not top.is_symlink() else [])
        for path in candidates:
            if path.is_symlink() and (path == top or path.is_dir()):  # a linked file is replaced, not followed
                raise StageError(
                    f"{path} is a symbolic link (to {os.readlink(path)}); a run folder's outputs are never "
                    f"written or deleted through links: remove the link (its target is not touched) and run "
                    f"the command again"
                )


def current_holder(root: Path, wait: float = 2.0) -> dict:
    """The live holder's description, for the busy message. The holder writes it just after taking
    the lock, so a second writer may look in between and find none, or a killed holder's: wait up
    to ``wait`` seconds for one whose pid is alive, then give what there is."""
    deadline = time.monotonic() + wait
    while True:
        info = read_json(root / HOLDER_FILE) or {}
        if isinstance(info.get("pid"), int) and _alive(info["pid"]) or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def sweep_dead_temps(root: Path) -> list[Path]:
    """Remove the temp files (:func:`esol_lib.runtime.atomic.atomic_path`) that a killed writer left under
    ``root``; return them. A temp names its writer's pid: only those of processes no longer alive
    go (a forked run's shared ``cache`` may hold a live writer's). Symlinks are not followed."""
    removed = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            m = TEMP_NAME.match(name)
            if m is None or _alive(int(m.group(1))):
                continue
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
