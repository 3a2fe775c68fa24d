"""The run folder (DESIGN.md): one directory that every stage reads and writes.

```
RUN/config.yaml                 the resolved config, written first
RUN/checkpoints/<stage>.pt      resumable
RUN/cams/<stage>/<id>.npz       high-res CAMs of the GT classes
RUN/cams/<stage>/_meta.json     the model's signature (content hash of the checkpoint, CAM settings)
RUN/cams/<stage>/_data_<split>.json   the split's data fingerprint (ids, image and mask bytes)
RUN/cams/<stage>/_sizes.json    size and digest of every finished file (also in ir_labels/, pseudo_masks/, ...)
RUN/metrics/<stage>_<split>.json   with ``inputs``: the signature of what it scored
RUN/pseudo_masks/<stage>/<id>.png
RUN/log.jsonl
RUN/.lock, RUN/.lock.holder     held by the one process that writes (run_lock)
```

Every file is written atomically under a temp name of its own (:mod:`esol_lib.runtime.atomic`). Whether
an output is current is decided here, by content, never by time stamps (a ``cp -r`` of a run
folder keeps it current):

- a folder of per-image files is current when its ``_meta.json`` signature equals its inputs'
  and every file is there; a file whose size or digest differs from ``_sizes.json`` is damaged
  and redone (:func:`drop_damaged`), and one found so when read is deleted and named
  (:func:`read_verified`);
- a trained model is current when the ``inputs`` its checkpoint records (its data's fingerprint,
  the checkpoint it started from) equal the current ones (:mod:`esol_lib.runtime.engine`);
- a metrics file is current when it reads back and its ``inputs`` equal the signature of what it
  would score now (:func:`current_metrics`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from esol_lib.runtime.atomic import TEMP_NAME, atomic_write_text, link_or_copy, read_json
from esol_lib.runtime.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    read_yaml_mapping,
    save_config,
)
from esol_lib.runtime.errors import ConfigError, StageError

STAGES = ("baseline", "expansion", "shrinkage")
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"


class RunBusyError(StageError):
    """Another process is writing to the run folder."""


# The run folders whose lock this process holds. A stage called inside another (the pipeline calls
# train_cam) re-enters its own lock instead of waiting for itself.
_HELD: set[str] = set()
_F = TypeVar("_F", bound=Callable)


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
    for name in _OUTPUTS + ("superseded",):
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


def holds_run_lock(fn: _F) -> _F:
    """Decorate a stage function whose first argument is the :class:`RunDir` it writes: the call
    holds :func:`run_lock` (see there), from the command line and from a notebook alike."""

    @functools.wraps(fn)
    def wrapper(run, *args, **kwargs):
        global _STAGE_DEPTH
        root = run.root if isinstance(run, RunDir) else Path(run)
        with run_lock(root):
            depth, _STAGE_DEPTH = _STAGE_DEPTH, _STAGE_DEPTH + 1
            start, ok = time.perf_counter(), False
            try:
                out = fn(run, *args, **kwargs)
                ok = True
                return out
            finally:
                _STAGE_DEPTH = depth
                log_stage_time(root, fn.__name__, time.perf_counter() - start, depth, ok)

    return wrapper  # type: ignore[return-value]


# How many stage calls enclose the running one in this process: 0 for a call from a notebook or the
# command line, 1 for train_cam inside run_pipeline. The book's build-time page sums depth 0 only.
_STAGE_DEPTH = 0

#: ``event`` of the ``log.jsonl`` records :func:`log_stage_time` writes.
STAGE_TIME_EVENT = "stage_time"


def log_stage_time(root: Path, stage: str, seconds: float, depth: int, ok: bool) -> None:
    """Append one ``{"event": "stage_time", ...}`` line to ``root/log.jsonl``: where the time of a
    chapter or a pipeline went. A stage that returns at once (its outputs current) logs its few
    milliseconds too. A folder that cannot be written is left alone (the stage has reported that)."""
    record = {
        "event": STAGE_TIME_EVENT,
        "stage": stage,
        "seconds": round(seconds, 3),
        "depth": depth,
        "ok": ok,
        "time": round(time.time(), 3),
    }
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 speaks for all (as with the lock)
        return
    with contextlib.suppress(OSError):
        if root.is_dir():
            with open(root / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def stage_times(root: str | Path, since: float = 0.0, until: float = float("inf")) -> dict[str, float]:
    """Seconds per stage of the outermost stage calls that ended in ``[since, until]`` (unix time),
    summed over ``root/log.jsonl`` and the logs of the run folders below it (chapter 07's forks,
    named ``ablation <stage>``)."""
    root = Path(root)
    totals: dict[str, float] = {}
    for log_file in sorted(root.rglob("log.jsonl")):
        prefix = "ablation " if "ablations" in log_file.relative_to(root).parts else ""
        for rec in read_log(log_file):
            if rec.get("event") == STAGE_TIME_EVENT and rec.get("depth") == 0 and since <= rec.get("time", 0) <= until:
                name = prefix + str(rec.get("stage"))
                totals[name] = totals.get(name, 0.0) + float(rec.get("seconds", 0.0))
    return totals


def read_log(path: Path) -> list[dict]:
    """The JSON-object lines of log file ``path``; [] when it is missing or unreadable. Lines that are
    not (a line cut by a kill: silently; others: one warning naming the file) are skipped."""
    import logging

    try:
        data = path.read_bytes()
    except OSError:
        return []
    records, bad = [], 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += i < len(lines) - 1  # the last line may be one a kill cut short
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    if bad:
        logging.getLogger(__name__).warning("%s: %d unreadable line(s) skipped", path, bad)
    return records


SIZES_FILE = "_sizes.json"


def signature_of(parts: dict) -> str:
    """A content signature of ``parts`` (JSON-serialisable settings and other signatures)."""
    import hashlib

    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()


def current_metrics(path: str | Path, inputs: str) -> dict | None:
    """The metrics in ``path`` if they read back and were computed from ``inputs``; else None (recompute)."""
    metrics = read_json(path)
    return metrics if metrics is not None and metrics.get("inputs") == inputs else None


def file_digest(path: str | Path) -> str:
    """The content hash (BLAKE2b) of one file: a copy, a touch or a restore from backup keeps it.

    Remembered for this process by (path, inode, size, mtime): a pipeline asks for the same
    checkpoint's digest at several steps, and a voc12 checkpoint is 400 MB. A file rewritten in
    place gets a new mtime (or inode, through an atomic rename) and is hashed again."""
    import hashlib

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}


def _bytes_digest(data: bytes) -> str:
    import hashlib

    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _recorded(entry) -> tuple[int | None, str | None]:
    """``(size, digest)`` of one ``_sizes.json`` entry: ``[size, digest]``, or a bare size (older runs)."""
    if isinstance(entry, list) and len(entry) == 2:
        return entry[0], entry[1]
    return (entry, None) if isinstance(entry, int) else (None, None)


def record_sizes(folder: str | Path, names: Sequence[str]) -> None:
    """Add the byte size and content digest of ``folder``'s finished files ``names`` to its
    ``_sizes.json`` (called again on a complete folder, it fills in what a kill between the last
    file and the record left out). Files already recorded at their size are not hashed again."""
    folder = Path(folder)
    old = read_json(folder / SIZES_FILE) or {}
    sizes = dict(old)
    for name in names:
        with contextlib.suppress(OSError):
            size = (folder / name).stat().st_size
            if _recorded(sizes.get(name))[0] != size or _recorded(sizes.get(name))[1] is None:
                sizes[name] = [size, file_digest(folder / name)]
    if sizes != old or not (folder / SIZES_FILE).is_file():  # written only when it changes
        atomic_write_text(folder / SIZES_FILE, json.dumps(sizes, sort_keys=True) + "\n")


def drop_damaged(folder: str | Path) -> list[str]:
    """Delete the files of ``folder`` whose size or content differs from what :func:`record_sizes`
    recorded (cut short by a full disk, overwritten by a copy or an editor); return their names.
    Every file it covers is derived, so the stage that writes it redoes exactly those."""
    import logging

    folder = Path(folder)
    sizes = read_json(folder / SIZES_FILE)
    if not sizes:
        return []
    damaged = []
    for name, entry in sizes.items():
        path = folder / name
        size, digest = _recorded(entry)
        try:
            if path.stat().st_size != size or digest is not None and file_digest(path) != digest:
                path.unlink()
                damaged.append(name)
        except FileNotFoundError:
            continue
    if damaged:
        logging.getLogger(__name__).warning(
            "%s: %d damaged file(s) deleted to be redone (e.g. %s)", folder, len(damaged), damaged[0]
        )
        atomic_write_text(
            folder / SIZES_FILE, json.dumps({k: v for k, v in sizes.items() if k not in damaged}, sort_keys=True) + "\n"
        )
    return damaged


class DamagedFileError(StageError):
    """A derived file does not match the checksum recorded when it was written (it was deleted)."""


def read_verified(path: str | Path, fix: str) -> bytes:
    """The bytes of derived file ``path``, checked against the digest its folder's ``_sizes.json``
    recorded. A file that differs is deleted (it is derived: the step that makes it redoes it) and
    :class:`DamagedFileError` names it and ``fix``, the command that remakes it. A file not (yet)
    recorded is returned as it is."""
    path = Path(path)
    data = path.read_bytes()
    size, digest = _recorded(_sizes_record(path.parent).get(path.name))
    if digest is not None and (len(data) != size or _bytes_digest(data) != digest):
        raise damaged(path, fix, "it differs from what was written: its checksum in _sizes.json does not match")
    return data


def _sizes_record(folder: Path) -> dict:
    """``folder/_sizes.json``, parsed once per version of the file: readers verify one file at a time,
    and a VOC folder's record lists thousands."""
    try:
        st = (folder / SIZES_FILE).stat()
    except OSError:
        return {}
    key = (str(folder.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if _SIZES_CACHE.get("key") != key:
        _SIZES_CACHE.update(key=key, record=read_json(folder / SIZES_FILE) or {})
    return _SIZES_CACHE["record"]


_SIZES_CACHE: dict = {}


def damaged(path: Path, fix: str, why: str) -> DamagedFileError:
    """Delete derived file ``path`` (and its record) and return the error that says so and names ``fix``."""
    with contextlib.suppress(OSError):
        path.unlink()
    sizes = read_json(path.parent / SIZES_FILE)
    if sizes and path.name in sizes:
        del sizes[path.name]
        with contextlib.suppress(OSError):
            atomic_write_text(path.parent / SIZES_FILE, json.dumps(sizes, sort_keys=True) + "\n")
    return DamagedFileError(f"{path} is damaged ({why}); it was deleted: {fix}")


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder; creating the object touches nothing on disk."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "log.jsonl"

    def checkpoint(self, stage: str) -> Path:
        return self.root / "checkpoints" / f"{stage}.pt"

    def cams(self, stage: str) -> Path:
        return self.root / "cams" / stage

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    def pseudo_masks(self, stage: str) -> Path:
        return self.root / "pseudo_masks" / stage

    def feature_cache(self) -> Path:
        """``cache/features/``: backbone features memoised by content (:mod:`esol_lib.runtime.feature_cache`);
        a forked run's ``cache`` links to its source's. Safe to delete."""
        return self.root / "cache" / "features"

    def log_records(self) -> list[dict]:
        """Every record of ``log.jsonl`` in order; none when there is no log. Unreadable lines (one cut
        by a kill, bytes that are not UTF-8 JSON objects) are skipped with one warning naming the file."""
        return read_log(self.log_path)

    def training_log(self, stage: str) -> dict[str, list[float]]:
        """The step records of training stage ``stage`` (``baseline``, ``irn-shrinkage``, ``seg-baseline``, ...)
        as columns, ``{"step": [...], "loss": [...], ...}``, sorted by step.

        A step logged twice (a run resumed from a checkpoint before it) keeps its last record; the
        columns are the numbers every step record of the stage has. Empty when the stage never logged.
        """
        by_step: dict[int, dict] = {}
        for rec in self.log_records():
            if rec.get("stage") == stage and "step" in rec and "event" not in rec:
                by_step[int(rec["step"])] = rec
        if not by_step:
            return {}
        rows = [by_step[step] for step in sorted(by_step)]
        keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and all(k in r for r in rows)]
        return {k: [r[k] for r in rows] for k in keys if k not in ("time", "epoch")}

    def trained_seconds(self) -> dict[str, float]:
        """Seconds each training stage of this run took, from its ``done`` record, in the order they finished."""
        return {r["stage"]: float(r["seconds"]) for r in self.log_records() if r.get("event") == "done"}

    def load_config(self) -> Config:
        """The run's resolved config; a missing one names the command that writes it."""
        if not self.config_path.is_file():
            raise StageError(
                f"{self.config_path} not found: start the run with "
                f"`esol train-cam --config cpu --run {self.root}` (or `esol pipeline`) first"
            )
        fix = (
            "it is written when the run starts: restore it, or start over in a new --run folder "
            "(this one's results were made with the config it held)"
        )
        values = read_yaml_mapping(self.config_path, empty_ok=False, fix=fix)
        try:
            return config_from_dict(values)
        except ConfigError as err:  # a damaged or hand-edited file: name it, not only the key
            raise ConfigError(f"{self.config_path}: {err}; {fix}") from err


def create_run(root: str | Path, cfg: Config, *, unchanged: Sequence[str] = ()) -> RunDir:
    """Open run folder ``root`` for ``cfg``; write ``config.yaml`` first.

    ``unchanged``: keys whose new value is known to change no result (``data.root`` of a dataset
    that moved with its content intact, :func:`esol_lib.steps._shared.start_run` checks that);
    they are taken without moving anything aside.

    Re-opening a run with the same config resumes it. Before any stage has written into the folder
    (a typo in ``--data-root`` or ``--set`` caught by the first stage) a corrected config replaces
    the old one. After that, a change to a later stage's settings moves what depended on the old
    value aside (:func:`supersede`) and the stages redo it; a change to the baseline's is refused.
    """
    run = RunDir(Path(root))
    with run_lock(run.root, create=True):
        return _open_or_start(run, cfg, unchanged)


#: What a stage leaves in a run folder; while none of it exists, the config has not been used yet.
_OUTPUTS = ("checkpoints", "cams", "metrics", "ir_labels", "pseudo_masks", "seg_predictions", "ablations", "log.jsonl")


def _started(run: RunDir) -> bool:
    """Whether any stage has written into ``run`` (even a partial checkpoint). A log that holds only
    the timings of stages that failed (a bad batch size, a wrong data root) does not count: the
    corrected command must be able to replace the config."""
    for name in _OUTPUTS:
        p = run.root / name
        if name == "log.jsonl" and p.is_file():
            if any(not (r.get("event") == STAGE_TIME_EVENT and r.get("ok") is False) for r in run.log_records()):
                return True
        elif p.is_file() or (p.is_dir() and any(p.iterdir())):
            return True
    return False


def _open_or_start(run: RunDir, cfg: Config, unchanged: Sequence[str] = ()) -> RunDir:
    if run.config_path.is_file():
        try:
            old = config_to_dict(run.load_config())
        except ConfigError:
            if _started(run):
                raise
            old = None  # a config that never got used (written by an older version, or damaged): replace it
        new = config_to_dict(cfg)
        diff = _diff(old, new) if old is not None else ["(unreadable)"]
        if diff and not _started(run):
            save_config(cfg, run.config_path)  # nothing was made with the old one: take the corrected config
            return run
        if diff:
            supersede(run, [k for k in diff if k not in unchanged])  # or a ConfigError saying why not
            save_config(cfg, run.config_path)
        return run
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config_path)
    return run


# ------------------------------------------------------------------ changing a later stage's setting

#: Config sections (and the top-level ``seed``) that shape the baseline, which every other stage
#: starts from: changing them means a new run folder.
BASELINE_SECTIONS = ("seed", "data", "model", "train_cam")
#: Keys that change no result (where and how fast it runs).
NEUTRAL_KEYS = ("device", "profile", "feature_cache_mb", "data.num_workers")
#: What each CAM stage's checkpoint is trained from, besides the baseline's keys.
_STAGE_SECTIONS = {"baseline": set(), "expansion": {"expansion"}, "shrinkage": {"expansion", "shrinkage"}}


def _key_tags(key: str) -> set[str]:
    """What a changed config key invalidates, as tags that :func:`_output_tags` matches."""
    section = key.split(".", 1)[0]
    if key == "cam.thresholds":
        return {"seed-scores"}
    if key.startswith("crf.seg_") or key in ("seg.test_scales", "seg.crf"):
        return {"seg-scores"}
    return {section}


def _output_tags(rel: str) -> set[str] | None:
    """The tags an output of the run folder (path relative to it, first two parts) depends on;
    None for files that are not results (config, log, lock, cache, superseded/)."""
    parts = rel.split("/")
    top, name = parts[0], (parts[1] if len(parts) > 1 else "")
    if top == "ablations":
        return {"ablation"} | set().union(*_STAGE_SECTIONS.values()) | {"cam"}
    if top == "checkpoints":
        stem = name.split(".", 1)[0]
        kind, _, stage = stem.partition("-")
        if stem in _STAGE_SECTIONS:
            return set(_STAGE_SECTIONS[stem])
        later = {"irn": {"cam", "crf", "irn"}, "seg": {"cam", "crf", "irn", "seg"}}.get(kind)
        return set(_STAGE_SECTIONS.get(stage, set())) | later if later is not None else None
    folders = {
        "cams": {"cam"},
        "ir_labels": {"cam", "crf", "irn"},
        "pseudo_masks": {"cam", "crf", "irn"},
        "seg_predictions": {"cam", "crf", "irn", "seg", "seg-scores"},
    }
    if top in folders:
        return set(_STAGE_SECTIONS.get(name, set())) | folders[top]
    if top == "metrics":
        stem = name[: -len(".json")] if name.endswith(".json") else name
        kind, _, rest = stem.partition("-") if stem.startswith(("mask-", "seg-")) else ("", "", stem)
        stage = rest.split("_", 1)[0]
        tags = set(_STAGE_SECTIONS.get(stage, set())) | {"cam"}
        if kind == "mask":
            return tags | {"crf", "irn"}
        if kind == "seg":
            return tags | {"crf", "irn", "seg", "seg-scores"}
        return tags | {"seed-scores"} | ({"crf"} if "_crf_" in stem else set())
    return None


def supersede(run: RunDir, changed: Sequence[str]) -> list[Path]:
    """Make way for a changed setting of a later stage in a started run: move every output that
    depends on one of the ``changed`` keys into ``RUN/superseded/<time>/`` (same relative paths;
    nothing is deleted), so the stages redo exactly those. Keys that shape the baseline are
    refused with a :class:`ConfigError` that says why and what to do instead.

    Granularity: a config section (``expansion.*`` → the expansion and shrinkage checkpoints and
    everything made from them), refined for keys that only change scores (``cam.thresholds``,
    ``seg.test_scales``, ``seg.crf``, ``crf.seg_*``).
    """
    import logging

    changed = [k for k in changed if k not in NEUTRAL_KEYS]
    blocked = [k for k in changed if k.split(".", 1)[0] in BASELINE_SECTIONS]
    if blocked:
        raise ConfigError(
            f"run folder {run.root} was started with another config ({run.config_path.name} differs in: "
            f"{', '.join(blocked)}); those keys shape the baseline, which every other stage starts from, so "
            f"nothing here could be kept: use a new --run folder (`esol pipeline --config {run.config_path} "
            f"--set KEY=VALUE --run <new folder>`)"
        )
    tags = set().union(*(_key_tags(k) for k in changed)) if changed else set()
    moved: list[Path] = []
    if not tags:
        return moved
    dest = run.root / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    for top in ("checkpoints", "cams", "ir_labels", "pseudo_masks", "seg_predictions", "metrics", "ablations"):
        folder = run.root / top
        if not folder.is_dir():
            continue
        entries = [folder] if top == "ablations" else sorted(folder.iterdir())
        for entry in entries:
            rel = entry.relative_to(run.root).as_posix()
            needs = _output_tags(rel if top != "ablations" else "ablations")
            if needs is None or not (needs & tags):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry, target)
            moved.append(target)
    if moved:
        logging.getLogger(__name__).warning(
            "%s: %s changed; %d output(s) made with the old value moved to %s, to be redone",
            run.root,
            ", ".join(changed),
            len(moved),
            dest,
        )
    return moved


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def fork_run(
    src: str | Path, dst: str | Path, overrides: Sequence[str] = (), share: Sequence[str] = ("baseline",)
) -> RunDir:
    """A new run folder ``dst`` whose config is ``src``'s with ``overrides`` (``key=value``) applied,
    reusing ``src``'s finished stages listed in ``share`` (their checkpoints and CAM folders are
    hard-linked, or copied where links are impossible) — how ablations share one trained baseline.

    Re-forking with the same overrides reopens ``dst``; other overrides are refused as in
    :func:`create_run`.
    """
    source = RunDir(Path(src))
    cfg = config_from_dict(apply_overrides(config_to_dict(source.load_config()), list(overrides)))
    run = create_run(dst, cfg)
    _share_cache(source, run)
    for stage in share:
        ckpt = source.checkpoint(stage)
        if not ckpt.is_file():
            raise StageError(f"cannot share stage {stage!r}: {ckpt} is missing; finish it in {source.root} first")
        link_or_copy(ckpt, run.checkpoint(stage))
        cams = source.cams(stage)
        if cams.is_dir():
            for f in cams.iterdir():
                link_or_copy(f, run.cams(stage) / f.name)
    return run


def _share_cache(source: RunDir, run: RunDir) -> None:
    """Point ``run/cache`` at ``source/cache``: its entries are keyed by content, so sharing is always safe."""
    link, target = run.root / "cache", (source.root / "cache").resolve()
    if link.exists() or link.is_symlink():
        return
    target.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(target, target_is_directory=True)
    except OSError:  # no symlinks here: the fork keeps its own cache
        pass
