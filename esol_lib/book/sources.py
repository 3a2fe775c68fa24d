"""Where the book's sources are: the repository root, and the chapters in reading order.

The chapters live in ``notebooks/`` (committed with outputs stripped); the pages that are not
notebooks live in ``book/``; ``_config.yml`` and ``_toc.yml`` at the repository root describe the book.
"""

from __future__ import annotations

from pathlib import Path

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
    "10_positive_controls.ipynb",
]
