"""The book: execute every chapter notebook with papermill, then build the Jupyter Book.

The chapters live in ``notebooks/`` (committed with outputs stripped); the pages that are not
notebooks live in ``book/``; ``_config.yml`` and ``_toc.yml`` at the repository root describe the
book. :func:`make_book` (``esol book`` / ``make book``) does both steps:

1. :func:`execute_notebooks` runs each chapter of :data:`CHAPTERS` in order with papermill,
   injecting the parameters ``profile``, ``run_dir`` and ``data_root``, into ``OUT/executed/``;
2. :func:`build_book` assembles a Jupyter Book source folder ``OUT/src`` (same relative layout
   as the repository: ``book/`` and ``notebooks/``) and runs ``jupyter-book build`` on it,
   offline, without re-executing anything (``execute_notebooks: "off"``). The published copy of
   a chapter (:func:`publishable_notebook`) drops its two parameter cells and writes the build
   machine's paths relative to the repository; :func:`check_published` then refuses a page that
   still names one, or that loads a script, stylesheet or font from the network.

The HTML lands in ``OUT/_build/html/index.html``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from esol_lib.book.performance import GPU_CHECK_FILE, gpu_check_section, load_comparisons, performance_page
from esol_lib.runtime.atomic import atomic_write_text, read_json
from esol_lib.runtime.errors import StageError
from esol_lib.runtime.stage_log import stage_times

__all__ = [
    "CHAPTERS",
    "REPO_ROOT",
    "TIMING_FILE",
    "execute_notebooks",
    "build_book",
    "make_book",
    "jupyter_book_command",
    "build_time_page",
    "publishable_notebook",
    "machine_paths",
    "check_published",
    "claim_build_folder",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The chapters, in reading (and execution) order; names of files in ``notebooks/``.
CHAPTERS: list[str] = [
    "00_problem_and_data.ipynb",
    "01_cam.ipynb",
    "02_expansion.ipynb",
    "03_feature_clipping.ipynb",
    "04_shrinkage.ipynb",
    "05_refinement.ipynb",
    "06_deeplab.ipynb",
    "07_ablations.ipynb",
    "08_reproduction.ipynb",
    "09_where_the_stages_lose_it.ipynb",
]

#: Written by :func:`execute_notebooks` beside the executed copies: seconds per chapter and the machine.
TIMING_FILE = "timing.json"
#: The book page :func:`build_book` generates from it (the committed file is only a placeholder).
BUILD_TIME_PAGE = "build_time.md"
PERFORMANCE_PAGE = "performance.md"  # generated from book/results/compare.json (benchmarks/compare.py)
COMPARE_FILE = "compare.json"
#: Beside the executed chapters: where a chapter runs, and where a failed one is kept (neither is published).
RUNNING_DIR, FAILED_DIR = ".running", "failed"
#: The file that marks a build folder as made by ``esol book``: the manifest of what builds wrote there
#: (:func:`claim_build_folder`); only files it lists are ever deleted.
OWNER_FILE = ".esol-book"


# ----------------------------------------------------------------------------- execution


def _select(only: Sequence[str] | None) -> list[str]:
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
    chapters = _select(only)
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
        _write_timing(
            out_dir / TIMING_FILE, profile, seconds, started, complete=len(seconds) == len(CHAPTERS), stages=stages
        )
    return executed


def _write_timing(
    path: Path,
    profile: str,
    seconds: dict[str, float],
    started: float,
    complete: bool,
    stages: dict[str, dict[str, float]] | None = None,
) -> None:
    """The chapters' execution seconds (and per chapter the seconds of each stage it ran, from the
    run folder's ``stage_time`` records) and the machine they ran on, for :func:`build_time_page`."""
    import platform

    from esol_lib.runtime.parallel import cpu_workers

    record = {
        "profile": profile,
        "chapters": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
        "stages": stages or {},
        "complete": complete,
        "cores": cpu_workers(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "commit": _git_commit(),
    }
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def build_time_page(timing: dict) -> str:
    """The book's "Build time" page (Markdown) from :data:`TIMING_FILE`'s record.

    One row per executed chapter with its minutes, and the total; a build of only some chapters
    says so instead of presenting a partial sum as the book's time.
    """
    chapters = timing.get("chapters") or {}
    total = float(timing.get("total_seconds", sum(chapters.values())))
    lines = [
        "# Build time",
        "",
        f"How long executing the chapters took in the build that produced this book: profile "
        f"`{timing.get('profile', '?')}`, {timing.get('cores', '?')} CPU cores ({timing.get('machine', '?')}, "
        f"Python {timing.get('python', '?')}), started {timing.get('started', '?')}"
        + (f", commit `{timing['commit']}`" if timing.get("commit") else "")
        + ".",
        "Each chapter reuses what the earlier ones trained in the same run folder, so a chapter's "
        "time is the work it adds. Generated by `esol book` from its own clock, not typed in.",
        "",
        "| chapter | minutes |",
        "|---|---:|",
    ]
    for name, sec in chapters.items():
        lines.append(f"| {Path(name).stem} | {sec / 60:.1f} |")
    lines.append(f"| **all chapters** | **{total / 60:.1f}** |")
    lines.append("")
    stages = timing.get("stages") or {}
    if any(stages.values()):
        lines += [
            "Where each chapter's time went: the stages it ran (seconds of the outermost stage calls, "
            "from the run folder's `stage_time` records in `log.jsonl`; a stage whose outputs were already "
            "current takes milliseconds and is not listed); everything else is figures, tables, reading files and "
            "work outside the stage functions.",
            "",
            "| chapter | stage | minutes | share of the chapter |",
            "|---|---|---:|---:|",
        ]
        for name, sec in chapters.items():
            per = {k: v for k, v in (stages.get(name) or {}).items() if v >= 1.0}
            rest = sec - sum(per.values())
            for stage, s in sorted(per.items(), key=lambda kv: -kv[1]):
                lines.append(f"| {Path(name).stem} | {stage} | {s / 60:.1f} | {100 * s / max(sec, 1e-9):.0f} % |")
            lines.append(
                f"| {Path(name).stem} | *everything else* | {max(rest, 0) / 60:.1f} | "
                f"{100 * max(rest, 0) / max(sec, 1e-9):.0f} % |"
            )
        lines.append("")
    if not timing.get("complete", False):
        lines += ["This build executed only the chapters above, so the total is not the book's time.", ""]
    lines += [
        "`make book` also installs the environment on a fresh clone and renders the HTML "
        "(`jupyter-book build`) after this table was written; neither is counted here.",
        "",
    ]
    return "\n".join(lines)


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


# ----------------------------------------------------------------------------- building


def jupyter_book_command() -> list[str]:
    """``jupyter-book`` of this interpreter's environment (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "jupyter-book"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    return [sys.executable, "-m", "jupyter_book.cli.main"]


def toc_files(toc: dict) -> Iterable[str]:
    """Every ``file:`` named by a Jupyter Book 1.x ``_toc.yml`` (root included)."""
    if "root" in toc:
        yield toc["root"]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                yield node["file"]
            for v in node.values():
                if isinstance(v, (list, dict)):
                    yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    for key in ("parts", "chapters", "sections"):
        if key in toc:
            yield from walk(toc[key])


def _source_exists(src: Path, entry: str) -> bool:
    p = src / entry
    if p.suffix in (".md", ".ipynb", ".rst") and p.is_file():
        return True
    return any(p.with_name(p.name + ext).is_file() for ext in (".md", ".ipynb", ".rst"))


def _prune_toc(toc: dict, src: Path) -> tuple[dict, list[str]]:
    """Drop toc entries whose file is not in ``src`` (chapters not written or not executed yet)
    and parts left empty; returns the pruned toc and the dropped entries."""
    dropped: list[str] = []

    def prune_list(items: list) -> list:
        kept = []
        for item in items:
            if not isinstance(item, dict):
                kept.append(item)
                continue
            item = dict(item)
            for key in ("chapters", "sections"):
                if key in item:
                    item[key] = prune_list(item[key])
                    if not item[key]:
                        del item[key]
            if "file" in item and not _source_exists(src, item["file"]):
                dropped.append(item["file"])
                continue  # a missing page takes its (remaining) children with it
            if "file" not in item and not any(k in item for k in ("chapters", "sections", "url", "glob")):
                continue  # an emptied part
            kept.append(item)
        return kept

    toc = dict(toc)
    for key in ("parts", "chapters", "sections"):
        if key in toc:
            toc[key] = prune_list(toc[key])
            if not toc[key]:
                del toc[key]
    return toc, dropped


def build_book(
    executed_dir: Path,
    out: Path,
    root: Path = REPO_ROOT,
    *,
    config: Path | None = None,
    toc: Path | None = None,
    timeout: int | None = None,
    expect: dict | None = None,
) -> Path:
    """Assemble a Jupyter Book 1.x source folder ``out/src`` and build its HTML; returns ``index.html``.

    ``out/src`` gets ``_config.yml`` and ``_toc.yml`` (from ``root``, or the paths ``config`` /
    ``toc``), ``root/book/*.md|*.bib|*.png`` into ``src/book/`` and the executed notebooks of
    ``executed_dir`` into ``src/notebooks/`` — the repository's own layout, so the same toc works
    in both places. Toc entries whose file is missing (chapters not written yet) are dropped from
    the copied toc with a warning, and so are executed chapters whose papermill parameters differ
    from ``expect`` (``{"profile": ..., "run_dir": ...}``: a chapter left by a build for another
    profile or run folder). ``out`` must be empty or made by ``esol book``
    (:func:`claim_build_folder`). Then ``jupyter-book build out/src --path-output out`` runs
    offline; the HTML is ``out/_build/html``.

    Raises:
        StageError: the config/toc is missing, or ``jupyter-book`` exits non-zero (the tail of
            its output is in the message).
    """
    import yaml

    root = Path(root).resolve()
    out = Path(out).resolve()
    executed_dir = Path(executed_dir).resolve()
    config = Path(config) if config else root / "_config.yml"
    toc = Path(toc) if toc else root / "_toc.yml"
    for f in (config, toc):
        if not f.is_file():
            raise StageError(
                f"book: {f} is missing; the book needs _config.yml and _toc.yml "
                f"(Jupyter Book 1.x) at the repository root"
            )

    claim_build_folder(out)
    src = out / "src"
    clear_owned(out, "src")
    pages = root / "book"
    page_files = sorted(f for pattern in ("*.md", "*.bib", "*.png") for f in pages.glob(pattern))
    chapters = sorted(executed_dir.glob("*.ipynb")) if executed_dir.is_dir() else []
    own(
        out,
        ["src/_config.yml", "src/_toc.yml", f"src/book/{BUILD_TIME_PAGE}", f"src/book/{PERFORMANCE_PAGE}"]
        + [f"src/book/{f.name}" for f in page_files]
        + [f"src/notebooks/{f.name}" for f in chapters],
    )
    (src / "book").mkdir(parents=True, exist_ok=True)
    (src / "notebooks").mkdir(parents=True, exist_ok=True)
    shutil.copy2(config, src / "_config.yml")
    for f in page_files:
        shutil.copy2(f, src / "book" / f.name)
    if executed_dir.is_dir():
        for f in chapters:
            why = not_this_build(f, expect)
            if why:
                log.warning("book: leaving out %s: %s", f.name, why)
                continue
            _publish_notebook(f, src / "notebooks" / f.name, extra_paths=(str(out), str(executed_dir)))
        timing = executed_dir / TIMING_FILE
        if timing.is_file():
            (src / "book" / BUILD_TIME_PAGE).write_text(
                build_time_page(json.loads(timing.read_text("utf-8"))), encoding="utf-8"
            )
    comparisons = root / "book" / "results" / COMPARE_FILE
    if comparisons.is_file():
        gpu = root / "book" / "results" / GPU_CHECK_FILE
        page = performance_page(load_comparisons(comparisons)) + "\n" + gpu_check_section(read_json(gpu))
        (src / "book" / PERFORMANCE_PAGE).write_text(page, encoding="utf-8")

    toc_data = yaml.safe_load(toc.read_text(encoding="utf-8")) or {}
    if "root" not in toc_data or not _source_exists(src, toc_data["root"]):
        raise StageError(
            f"book: the toc's root page {toc_data.get('root')!r} is not among the pages copied from {pages}"
        )
    toc_data, dropped = _prune_toc(toc_data, src)
    for entry in dropped:
        log.warning("book: %s is in %s but has no page or executed notebook; left out of this build", entry, toc)
    (src / "_toc.yml").write_text(yaml.safe_dump(toc_data, sort_keys=False), encoding="utf-8")

    cmd = jupyter_book_command() + ["build", str(src), "--path-output", str(out), "--builder", "html"]
    log.info("book: %s", " ".join(cmd))
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1")
    try:
        proc = subprocess.run(
            cmd, cwd=str(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise StageError(f"book: `{' '.join(cmd)}` ran past {timeout} s") from e
    except OSError as e:
        raise StageError(
            f"book: could not run jupyter-book ({e}); install it with `pip install 'jupyter-book<2'`"
        ) from e
    (out / "jupyter-book.log").write_text(proc.stdout or "", encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-40:])
        raise StageError(
            f"book: `jupyter-book build` failed (exit {proc.returncode}); full log in "
            f"{out / 'jupyter-book.log'}; last lines:\n{tail}"
        )
    index = out / "_build" / "html" / "index.html"
    if not index.is_file():
        raise StageError(f"book: jupyter-book finished but {index} does not exist; see {out / 'jupyter-book.log'}")
    forbidden = {str(root), str(out), str(executed_dir), str(Path.home()), sys.prefix}
    for f in sorted(executed_dir.glob("*.ipynb")) if executed_dir.is_dir() else ():
        forbidden.update(_executed_paths(json.loads(f.read_text(encoding="utf-8")).get("metadata", {})))
    (out / "check_published.txt").unlink(missing_ok=True)
    problems = check_published(index.parent, forbidden)
    if problems:
        (out / "check_published.txt").write_text("\n".join(problems) + "\n", encoding="utf-8")
        raise StageError(
            f"book: {len(problems)} published file(s) would not read right offline or name this "
            f"machine; first: {problems[0]} (all in {out / 'check_published.txt'}); a chapter "
            f"that prints an absolute path should print it relative to the run folder"
        )
    return index


# ----------------------------------------------------------------------------- publishing

#: Cells with these tags hold the notebook's parameters (the defaults, and the values papermill
#: injected). The published page leaves both out; the notebooks keep them for JupyterLab and papermill.
PARAMETER_TAGS = ("parameters", "injected-parameters")
#: Jupyter Book's tag for "not on the page at all" (``hide-input`` would still ship the source).
_REMOVE_TAG = "remove-cell"
#: A ``<script src>``, a ``<link href>`` or a CSS ``url()`` / ``@import`` that points at the network.
_REMOTE_ASSET = re.compile(
    r"""<script\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//[^"'\s>]+"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//[^"'\s>]+"""
    r"""|@import\s+(?:url\()?\s*["']?(?:https?:)?//[^"')\s;]+"""
    r"""|url\(\s*["']?(?:https?:)?//[^"')\s]+""",
    re.IGNORECASE,
)
_SYSTEM_PREFIXES = {"/", "/usr", "/usr/local", "/opt"}
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: What a slider's output says on the static page, where no kernel can redraw it.
WIDGET_PLACEHOLDER = (
    "[an interactive widget: it redraws only with a running kernel; open this chapter in JupyterLab to use it]"
)


def machine_paths(*extra: str | os.PathLike | None, root: Path = REPO_ROOT) -> dict[str, str]:
    """The build machine's absolute paths that a published page must not show, each with what it
    is written as instead, longest first (so the most specific one wins).

    The repository becomes ``""`` (its paths read as a reader's own clone: ``runs/book-cpu``);
    ``extra`` paths outside it (a run folder or dataset elsewhere) become ``<name>`` of their last
    component; the Python environment outside the repository becomes ``<python>`` and the home
    folder ``~``. System prefixes (``/usr``) are not machine-specific and are left alone.
    """
    root = Path(root).resolve()
    out: dict[str, str] = {}
    for p in extra:
        if p:
            p = Path(p).resolve()
            if p != root and root not in p.parents and str(p) not in _SYSTEM_PREFIXES:
                out[str(p)] = f"<{p.name or 'path'}>"
    for prefix in {sys.prefix, sys.base_prefix}:
        p = Path(prefix).resolve()
        if str(p) not in _SYSTEM_PREFIXES and p != root and root not in p.parents:
            out.setdefault(str(p), "<python>")
    out[str(root)] = ""
    home = Path.home()
    if str(home) not in _SYSTEM_PREFIXES:
        out.setdefault(str(home), "~")
    return dict(sorted(out.items(), key=lambda kv: -len(kv[0])))


def _scrub(text: str, paths: dict[str, str]) -> str:
    """``text`` with every path of ``paths`` (and what follows it) rewritten; ``/repo/runs/x`` -> ``runs/x``."""
    for path, name in paths.items():
        if path in text:
            if name:
                text = text.replace(path, name)
            else:  # the repository: "/repo/runs/x" -> "runs/x", a bare "/repo" -> "."
                text = text.replace(path + os.sep, "").replace(path, ".")
    return text


def _scrub_tree(obj, paths: dict[str, str]):
    if isinstance(obj, str):
        return _scrub(obj, paths)
    if isinstance(obj, list):
        return [_scrub_tree(v, paths) for v in obj]
    if isinstance(obj, dict):
        return type(obj)((k, _scrub_tree(v, paths)) for k, v in obj.items())
    return obj


def publishable_notebook(nb, paths: dict[str, str]):
    """The published copy of the executed chapter ``nb`` (which is left as it is).

    - its parameter cells (:data:`PARAMETER_TAGS`) get Jupyter Book's ``remove-cell`` tag: the page
      starts with the chapter's story, not with ``run_dir = "/home/..."``; the intro page says how
      to run a chapter with other parameters;
    - every cell source, output and metadata value has the machine ``paths`` rewritten
      (:func:`machine_paths`), so neither the page nor its downloadable ``.ipynb`` names the
      machine that built it;
    - the saved ipywidgets state is dropped: a static page cannot run a slider's Python callback
      anyway, and the state would make the page load the widget manager from a CDN (the chapters
      draw a static grid beside each slider for the book). A tqdm progress bar's output is left
      out (its saved state is a frozen bar, not the result); any other widget's output becomes
      :data:`WIDGET_PLACEHOLDER`.
    """
    import nbformat

    nb = nbformat.from_dict(_scrub_tree(json.loads(json.dumps(nb)), paths))
    state = (nb.metadata.pop("widgets", None) or {}).get("application/vnd.jupyter.widget-state+json", {})
    state = state.get("state", {}) if isinstance(state, dict) else {}
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(t in PARAMETER_TAGS for t in tags) and _REMOVE_TAG not in tags:
            tags.append(_REMOVE_TAG)
        if "outputs" not in cell:
            continue
        kept = []
        for out in cell["outputs"]:
            view = out.get("data", {}).get(_WIDGET_VIEW)
            if view is not None:
                if _is_progress_bar(view.get("model_id"), state, out["data"].get("text/plain", "")):
                    continue
                out["data"] = {"text/plain": WIDGET_PLACEHOLDER}
            kept.append(out)
        cell["outputs"] = kept
    return nb


_TQDM_TEXT = re.compile(r"^[^\n]*\d+%\|.*\|")


def _is_progress_bar(model_id: str | None, state: dict, text: str | list) -> bool:
    """Whether a widget output is a progress bar (tqdm's: a box around a ``FloatProgress``), by the
    saved widget state, or by tqdm's text form when no state was saved."""
    model = state.get(model_id or "", {})
    if model:
        names = {model.get("model_name")}
        for child in model.get("state", {}).get("children", []):
            names.add(state.get(str(child).replace("IPY_MODEL_", ""), {}).get("model_name"))
        return bool(names & {"FloatProgressModel", "IntProgressModel"})
    return bool(_TQDM_TEXT.match("".join(text)))


def _executed_paths(metadata: dict) -> list[str]:
    """The folders an executed notebook's papermill metadata names: its run folder and dataset, and
    the repository it was executed from (normally the one building the book)."""
    pm = metadata.get("papermill") or {}
    params = pm.get("parameters") or {}
    paths = [str(Path(params[k]).resolve()) for k in ("run_dir", "data_root") if params.get(k)]
    if pm.get("input_path"):
        paths.append(str(Path(pm["input_path"]).resolve().parent.parent))  # <repo>/notebooks/<chapter>
    return paths


def _publish_notebook(src: Path, dst: Path, extra_paths: Sequence[str] = ()) -> None:
    """Copy the executed notebook ``src`` to the book source ``dst`` as :func:`publishable_notebook`."""
    import nbformat

    nb = nbformat.read(str(src), as_version=4)
    paths = machine_paths(*_executed_paths(nb.metadata), *extra_paths)
    nbformat.write(publishable_notebook(nb, paths), str(dst))


def check_published(html_dir: Path, forbidden: Iterable[str]) -> list[str]:
    """What a reader offline would trip over in the built book ``html_dir``; empty when nothing.

    One line per problem and file: a page or stylesheet that loads a script, stylesheet or font
    from the network (it would not load offline: equations would show as raw LaTeX), or any text
    file that contains one of the ``forbidden`` absolute paths (of the machine that built it).
    """
    html_dir = Path(html_dir)
    forbidden = sorted({str(p) for p in forbidden if p and str(p) not in _SYSTEM_PREFIXES}, key=len, reverse=True)
    problems = []
    for f in sorted(html_dir.rglob("*")):
        if not f.is_file() or f.suffix not in (".html", ".css", ".js", ".ipynb", ".txt", ".md", ".json"):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        rel = f.relative_to(html_dir)
        if f.suffix in (".html", ".css"):
            remote = _REMOTE_ASSET.search(text)
            if remote:
                problems.append(f"{rel}: loads {remote.group(0)[:100]!r} from the network")
        for path in forbidden:
            if path in text:
                problems.append(f"{rel}: contains the build machine's path {path}")
                break
    return problems


# ----------------------------------------------------------------------------- both


def make_book(
    profile: str,
    out: Path = Path("_build"),
    run_dir: Path | None = None,
    data_root: str | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Execute the chapters of ``notebooks/`` for ``profile`` and build the book; returns ``index.html``.

    Notebooks share one run folder (default ``runs/book-<profile>`` in the repository), so a later
    chapter reuses what an earlier one trained. Executed copies go to ``out/executed/``, the book
    source to ``out/src/``, the HTML to ``out/_build/html/``.
    """
    out = Path(out).resolve()
    claim_build_folder(out)  # before anything is executed or deleted
    run_dir = Path(run_dir).resolve() if run_dir else REPO_ROOT / "runs" / f"book-{profile}"
    run_dir.mkdir(parents=True, exist_ok=True)
    executed_dir = out / "executed"
    if not only:
        clear_owned(out, "executed")  # a full build never publishes a stale chapter
    own(
        out,
        [f"executed/{d}{name}" for name in _select(only) for d in ("", f"{RUNNING_DIR}/", f"{FAILED_DIR}/")]
        + [f"executed/{TIMING_FILE}"],
    )
    execute_notebooks(
        profile, REPO_ROOT / "notebooks", executed_dir, run_dir, data_root=data_root, only=only, progress=progress
    )
    return build_book(executed_dir, out, REPO_ROOT, expect={"profile": profile, "run_dir": str(run_dir)})


def claim_build_folder(out: Path) -> None:
    """Make sure ``esol book`` may write into ``out``, then mark it as a build folder.

    ``out`` must be new, empty, or marked by :data:`OWNER_FILE` (a build made it). The marker is the
    build's manifest: the files under ``src/`` and ``executed/`` a build wrote, the only ones a later
    build deletes (:func:`clear_owned`); a file a user put there is kept. No symbolic link may sit at
    or under ``out/src``, ``out/executed`` or ``out/_build``: a build never follows or removes one,
    so it stops here, before any chapter runs.

    Raises:
        StageError: ``out`` is a file, holds anything while unmarked (``--out`` pointed at a project
            folder), or holds a symbolic link where the build writes.
    """
    out = Path(out)
    if out.is_symlink() and not out.is_dir() or out.exists() and not out.is_dir():
        raise StageError(f"book: --out {out} is a file; give a folder for the build")
    if out.is_dir() and not (out / OWNER_FILE).is_file():
        foreign = sorted(p.name for p in out.iterdir())
        if foreign:
            raise StageError(
                f"book: --out {out} is not empty and was not made by `esol book` (it holds "
                f"{', '.join(foreign[:5])}); the build writes src/ and executed/ there, so give "
                f"a new or empty folder"
            )
    for top in _WRITTEN_TOPS:
        link = _first_link(out, top)
        if link is not None:
            raise StageError(
                f"book: {link} is a symbolic link (to {os.readlink(link)}); the build writes under "
                f"{out / top} and never follows or removes links: remove the link (its target is "
                f"not touched), or give another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    if not (out / OWNER_FILE).is_file():
        _write_manifest(out, set())


#: What a build writes under ``--out`` (besides ``jupyter-book.log`` and ``check_published.txt``).
_WRITTEN_TOPS = ("src", "executed", "_build")


def _first_link(out: Path, top: str) -> Path | None:
    """The first symbolic link at or below ``out/top`` (links are not followed); None if none."""
    path = out / top
    if path.is_symlink():
        return path
    if not path.is_dir():
        return None
    for dirpath, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            if (Path(dirpath) / name).is_symlink():
                return Path(dirpath) / name
    return None


def owned_files(out: Path) -> set[str] | None:
    """The files (paths relative to ``out``) that builds wrote into ``out``, from its manifest; None
    for a marker written before manifests (it promised the build all of ``src/`` and ``executed/``)."""
    try:
        record = json.loads((Path(out) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    owned = record.get("owned") if isinstance(record, dict) else None
    return set(owned) if isinstance(owned, list) else None


def _write_manifest(out: Path, owned: set[str]) -> None:
    record = {"made_by": "esol book", "note": "a build deletes only the files listed here", "owned": sorted(owned)}
    atomic_write_text(Path(out) / OWNER_FILE, json.dumps(record, indent=1) + "\n")


def own(out: Path, paths: Iterable[str]) -> None:
    """Add ``paths`` (relative to ``out``) to the manifest before the build writes them: a build
    killed in between leaves nothing it wrote unlisted."""
    owned = recorded = owned_files(out)
    if owned is None:  # an old marker: all of src/ and executed/ is the build's; start listing
        owned = {
            p.relative_to(out).as_posix()
            for top in ("src", "executed")
            if (out / top).is_dir()
            for p in (out / top).rglob("*")
            if p.is_file() and not p.is_symlink()
        }
    new = owned | set(paths)
    if new != recorded:
        _write_manifest(out, new)


def clear_owned(out: Path, top: str) -> list[str]:
    """Delete the files under ``out/top`` that the manifest lists (all of them under an old marker),
    then the folders left empty; return what was deleted. A user's file is kept, and a symbolic link
    is never followed or removed (:func:`claim_build_folder` refuses them first)."""
    out = Path(out)
    folder = out / top
    if folder.is_symlink() or not folder.is_dir():
        return []
    owned = owned_files(out)
    removed = []
    for dirpath, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(dirpath) / name
            rel = path.relative_to(out).as_posix()
            if not path.is_symlink() and (owned is None or rel in owned):
                path.unlink()
                removed.append(rel)
        for name in dirs:
            sub = Path(dirpath) / name
            if not sub.is_symlink():
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only when empty
    with contextlib.suppress(OSError):
        folder.rmdir()
    if owned is not None:
        _write_manifest(out, owned - set(removed))
    else:
        own(out, [])
    return removed


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
