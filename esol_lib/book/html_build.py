"""Building the HTML: a Jupyter Book source folder ``OUT/src`` from ``book/`` and the executed chapters,
then ``jupyter-book build`` on it, offline and without executing anything.

The table of contents is pruned to the pages that exist; the build-time and performance pages are
generated; every published chapter goes through :mod:`esol_lib.book.publish`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from esol_lib.book.chapters import not_this_build
from esol_lib.book.ownership import claim_build_folder, clear_owned, own
from esol_lib.book.performance import GPU_CHECK_FILE, gpu_check_section, load_comparisons, performance_page
from esol_lib.book.publish import check_published, executed_paths, publish_notebook
from esol_lib.book.sources import REPO_ROOT
from esol_lib.book.timing import BUILD_TIME_PAGE, TIMING_FILE, build_time_page
from esol_lib.runtime.atomic import read_json
from esol_lib.runtime.errors import StageError

log = logging.getLogger(__name__)


PERFORMANCE_PAGE = "performance.md"  # generated from book/results/compare.json (benchmarks/compare.py)


COMPARE_FILE = "compare.json"


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
            publish_notebook(f, src / "notebooks" / f.name, extra_paths=(str(out), str(executed_dir)))
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
        forbidden.update(executed_paths(json.loads(f.read_text(encoding="utf-8")).get("metadata", {})))
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
