"""Lazy package namespaces: a package names what its modules define and loads each on first use.

Every package ``__init__`` of esol_lib is such a table (or empty), so importing one module never runs
another and no import cycle can pass through a package (docs/ARCHITECTURE.md). This module imports
nothing of esol_lib, so any ``__init__`` may use it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_namespace"]


def lazy_namespace(
    package: str, exports: Mapping[str, str], modules: Mapping[str, str] | None = None
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of package ``package`` (PEP 562).

    ``exports`` maps a name to the module that defines it (``"ESOLModel": "esol_lib.models.esol"``),
    ``modules`` a name to a module given as a whole (``"viz": "esol_lib.book.viz"``). A name is
    imported on first use and kept in the package, so the next use costs nothing; any other name
    raises AttributeError as a module's would.
    """
    exports, modules = dict(exports), dict(modules or {})
    names = sorted({*exports, *modules})

    def __getattr__(name: str) -> object:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in modules:
            value = importlib.import_module(modules[name])
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
