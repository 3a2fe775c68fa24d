"""The book's code: executing the chapters and building the HTML, and what the chapters show.

What the chapters show: pictures (:mod:`~esol_lib.book.viz`), charts (:mod:`~esol_lib.book.charts`),
tables (:mod:`~esol_lib.book.tables`) and sliders (:mod:`~esol_lib.book.widgets`); the paper's
numbers (:mod:`~esol_lib.book.paper`); the runs' results (:mod:`~esol_lib.book.results`,
:mod:`~esol_lib.book.ablation`, :mod:`~esol_lib.book.verdicts`); the readings of the paper
(:mod:`~esol_lib.book.readings`) and what their study found (:mod:`~esol_lib.book.study`); and the
performance page (:mod:`~esol_lib.book.performance`). The book reads run folders' files and calls
the method; no step imports it. ``esol_lib.book.make_book`` is kept as a lazy name, so importing
this package runs nothing else.
"""

from __future__ import annotations

from esol_lib.runtime.lazy import lazy_namespace

#: name → the module that defines it.
_EXPORTS: dict[str, str] = {"make_book": "esol_lib.book.build"}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
