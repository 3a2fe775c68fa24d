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

from collections.abc import Sequence
from pathlib import Path

from esol_lib.book.chapters import FAILED_DIR, RUNNING_DIR, execute_notebooks, select_chapters
from esol_lib.book.html_build import build_book
from esol_lib.book.ownership import claim_build_folder, clear_owned, own
from esol_lib.book.sources import REPO_ROOT
from esol_lib.book.timing import TIMING_FILE


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
        [f"executed/{d}{name}" for name in select_chapters(only) for d in ("", f"{RUNNING_DIR}/", f"{FAILED_DIR}/")]
        + [f"executed/{TIMING_FILE}"],
    )
    execute_notebooks(
        profile, REPO_ROOT / "notebooks", executed_dir, run_dir, data_root=data_root, only=only, progress=progress
    )
    return build_book(executed_dir, out, REPO_ROOT, expect={"profile": profile, "run_dir": str(run_dir)})
