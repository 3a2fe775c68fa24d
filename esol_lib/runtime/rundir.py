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
an output is current is decided by content, never by time stamps (a ``cp -r`` of a run folder
keeps it current; :mod:`esol_lib.runtime.freshness`):

- a folder of per-image files is current when its ``_meta.json`` signature equals its inputs'
  and every file is there; a file whose size or digest differs from ``_sizes.json`` is damaged
  and redone (:func:`drop_damaged`), and one found so when read is deleted and named
  (:func:`read_verified`);
- a trained model is current when the ``inputs`` its checkpoint records (its data's fingerprint,
  the checkpoint it started from) equal the current ones (:mod:`esol_lib.runtime.checkpoint`);
- a metrics file is current when it reads back and its ``inputs`` equal the signature of what it
  would score now (:func:`current_metrics`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from esol_lib.runtime.atomic import link_or_copy
from esol_lib.runtime.config import Config
from esol_lib.runtime.config_io import (
    NEUTRAL_KEYS,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    read_yaml_mapping,
    save_config,
)
from esol_lib.runtime.errors import ConfigError, StageError
from esol_lib.runtime.lock import OUTPUTS, run_lock
from esol_lib.runtime.stage_log import STAGE_TIME_EVENT, log_stage_time, read_log
from esol_lib.runtime.stages import STAGE_TABLE

_F = TypeVar("_F", bound=Callable)


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


def _started(run: RunDir) -> bool:
    """Whether any stage has written into ``run`` (even a partial checkpoint). A log that holds only
    the timings of stages that failed (a bad batch size, a wrong data root) does not count: the
    corrected command must be able to replace the config."""
    for name in OUTPUTS:
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
#: What each CAM stage's checkpoint is trained from, besides the baseline's keys.
_STAGE_SECTIONS = {s.name: set(s.sections) for s in STAGE_TABLE}


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
