"""The book's code: executing the chapters and building the HTML, and what the chapters show.

The figures (:mod:`~esol_lib.book.viz`, :mod:`~esol_lib.book.charts`, :mod:`~esol_lib.book.tables`,
:mod:`~esol_lib.book.widgets`), the paper's numbers
(:mod:`~esol_lib.book.paper`), the runs' tables (:mod:`~esol_lib.book.results`,
:mod:`~esol_lib.book.readings`, :mod:`~esol_lib.book.ablation`) and the performance page
(:mod:`~esol_lib.book.performance`). The book reads run folders' files and calls the method; no
step imports it. ``esol_lib.book.make_book`` is kept as a lazy name, so importing this package runs
nothing else.
"""

from __future__ import annotations

import importlib

#: name → the module that defines it.
_EXPORTS: dict[str, str] = {"make_book": "esol_lib.book.build"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
