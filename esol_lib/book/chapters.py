"""Executing the chapters: each notebook of :data:`CHAPTERS` in order, with papermill, into ``OUT/executed/``.

A chapter runs under ``executed/.running/`` and is moved into place only when it finished; a failed
one is kept under ``executed/failed/``. Neither folder is published. The record of how long each
chapter took is written by :mod:`esol_lib.book.timing`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from esol_lib.book.sources import CHAPTERS
from esol_lib.book.timing import TIMING_FILE, write_timing
from esol_lib.runtime.errors import StageError
from esol_lib.runtime.stage_log import stage_times

log = logging.getLogger(__name__)


#: Beside the executed chapters: where a chapter runs, and where a failed one is kept (neither is published).
RUNNING_DIR, FAILED_DIR = ".running", "failed"


def select_chapters(only: Sequence[str] | None) -> list[str]:
    """The chapters to run: all of :data:`CHAPTERS`, or those named in ``only`` (with or without
    ``.ipynb``, or by their two-digit prefix), kept in book order."""
    if not only:
        return list(CHAPTERS)
    wanted = set()
    for name in only:
        name = Path(str(name)).name
        match = [c for c in CHAPTERS if c == name or c == f"{name}.ipynb" or c.split("_", 1)[0] == name]
        if not match:
            raise StageError(f"book: unknown chapter {name!r}; the chapters are {', '.join(CHAPTERS)}")
        wanted.update(match)
    return [c for c in CHAPTERS if c in wanted]


def _first_line(source: str) -> str:
    for line in (source or "").splitlines():
        if line.strip():
            return line.strip()[:120]
    return "<empty cell>"


def execute_notebooks(
    profile: str,
    notebooks_dir: Path,
    out_dir: Path,
    run_dir: Path,
    data_root: str | None = None,
    only: Sequence[str] | None = None,
    kernel: str = "python3",
    progress: bool = True,
    timeout_per_cell: int | None = None,
) -> list[Path]:
    """Run each existing chapter notebook in order with papermill; returns the executed copies.

    Every notebook gets the parameters ``profile``, ``run_dir`` (absolute) and ``data_root``
    (absolute, or ``""`` for the profile's default dataset), injected after its cell tagged
    ``parameters``. The kernel's working directory is ``notebooks_dir``, so relative paths behave
    as in JupyterLab. A chapter whose notebook does not exist yet is skipped (and logged).

    Raises:
        StageError: no chapter notebook exists in ``notebooks_dir``, or a notebook failed. The
            message names the notebook, the failing cell and the error, and where the partially
            executed copy was written.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    notebooks_dir = Path(notebooks_dir).resolve()
    out_dir = Path(out_dir).resolve()
    chapters = select_chapters(only)
    present = [c for c in chapters if (notebooks_dir / c).is_file()]
    for c in chapters:
        if c not in present:
            log.warning("book: skipping %s: %s does not exist yet", c, notebooks_dir / c)
    if not present:
        raise StageError(
            f"book: none of the chapter notebooks {', '.join(chapters)} exists in {notebooks_dir}; nothing to execute"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    params = {
        "profile": profile,
        "run_dir": str(Path(run_dir).resolve()),
        "data_root": str(Path(data_root).resolve()) if data_root else "",
    }
    executed: list[Path] = []
    seconds: dict[str, float] = {}
    stages: dict[str, dict[str, float]] = {}
    started = time.time()
    bar = tqdm(present, desc=f"notebooks ({profile})", unit="nb", disable=not progress)
    try:
        for name in bar:
            bar.set_postfix_str(name)
            t0, wall0 = time.perf_counter(), time.time()
            executed.append(
                _execute_one(
                    pm, PapermillExecutionError, notebooks_dir / name, out_dir / name, params, kernel, timeout_per_cell
                )
            )
            seconds[name] = round(time.perf_counter() - t0, 1)
            stages[name] = {k: round(v, 1) for k, v in stage_times(params["run_dir"], wall0, time.time()).items()}
    finally:
        bar.close()
        write_timing(
            out_dir / TIMING_FILE, profile, seconds, started, complete=len(seconds) == len(CHAPTERS), stages=stages
        )
    return executed


def _notebook_language(path: Path) -> str | None:
    """The notebook's language from its metadata, or None when it has none (a hand-made notebook)."""
    import nbformat

    try:
        meta = nbformat.read(str(path), as_version=4).metadata
    except Exception:  # unreadable: papermill reports it
        return None
    return (meta.get("kernelspec", {}).get("language") or meta.get("language_info", {}).get("name")) or None


def _execute_one(
    pm, PapermillExecutionError, src: Path, dst: Path, params: dict, kernel: str, timeout_per_cell: int | None
) -> Path:
    """Execute ``src`` into ``dst``'s folder's ``.running/``; only a chapter that ran to its end is
    moved to ``dst`` (what the book publishes). A failed one goes to ``failed/`` for reading, an
    interrupted one stays in ``.running/``: neither can be published by a later build."""
    name = src.name
    running, failed = dst.parent / RUNNING_DIR / name, dst.parent / FAILED_DIR / name
    log.info("book: executing %s -> %s", src, dst)
    if dst.exists():
        dst.unlink()  # never leave a stale copy that looks executed
    running.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(src),
            str(running),
            parameters=params,
            kernel_name=kernel,
            language=None if _notebook_language(src) else "python",
            cwd=str(src.parent),
            progress_bar=False,
            execution_timeout=timeout_per_cell,
        )
    except PapermillExecutionError as e:
        _move(running, failed)
        raise StageError(
            f"book: notebook {name} failed in cell {e.cell_index} of the executed copy (In [{e.exec_count}], "
            f"first line: {_first_line(e.source)!r}): {e.ename}: {e.evalue}. The partially executed "
            f"copy, with the traceback under that cell, is {failed}; fix {src} and run again "
            f"(only={name!r} reruns just this chapter)"
        ) from e
    except Exception as e:  # kernel died, timeout, missing kernel, bad notebook JSON, ...
        _move(running, failed)
        raise StageError(
            f"book: notebook {name} could not be executed: {type(e).__name__}: {e}. "
            f"Partially executed copy (if any): {failed}"
        ) from e
    os.replace(running, dst)
    failed.unlink(missing_ok=True)
    return dst


def _move(src: Path, dst: Path) -> None:
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def not_this_build(executed: Path, expect: dict | None) -> str | None:
    """Why the executed chapter ``executed`` does not belong in a build for ``expect``; None if it does."""
    if not expect:
        return None
    try:
        params = (json.loads(executed.read_text(encoding="utf-8")).get("metadata", {}).get("papermill") or {}).get(
            "parameters"
        ) or {}
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable ({e})"
    for key, want in expect.items():
        have = params.get(key)
        if key == "run_dir" and have:
            have, want = str(Path(have).resolve()), str(Path(want).resolve())
        if have != want:
            return f"executed with {key}={have!r}, this build's is {want!r}; rerun it with --only"
    return None
