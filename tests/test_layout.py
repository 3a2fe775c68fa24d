"""The package's shape: four kinds of code on the floors of docs/ARCHITECTURE.md, networks in ``models/``,
one module per pipeline step in ``steps/``, no import cycle, every module importable alone, no module
name twice, no private name used outside its module, and one namespace for the chapters."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import esol_lib

PACKAGE = Path(esol_lib.__file__).resolve().parent
ROOT = PACKAGE.parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


@functools.cache
def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` of every ``import esol_lib…`` / ``from esol_lib… import name`` in a file, at any depth."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esol_lib") and not node.level:
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.startswith("esol_lib")]
    return out


@functools.cache
def _lazy_table(package: str) -> dict[str, str]:
    """A package's lazy names (``_EXPORTS``, and ``esol_lib``'s ``_MODULES``): name → the module it loads."""
    module = importlib.import_module(package)
    table = dict(getattr(module, "_EXPORTS", {}))
    table.update(getattr(module, "_MODULES", {}))
    return table


def _import_graph() -> dict[str, set[str]]:
    """module → the modules its import statements run (function-level ones too).

    ``import esol_lib.a.b`` runs ``esol_lib/__init__.py`` and ``esol_lib/a/__init__.py`` before
    ``b``, so it is an edge to each parent package as well; ``from esol_lib.a import name``, where
    ``name`` is one of ``esol_lib.a``'s lazy names, runs the module that defines it, so it is an edge
    to that module too."""
    modules = _modules()
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    tables = {package: _lazy_table(package) for package in packages}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, imported in _imports(path):
            targets = []
            if f"{module}.{imported}" in modules:
                targets.append(f"{module}.{imported}")
            elif module in modules:
                targets.append(module)
                if module in tables and imported in tables[module]:
                    targets.append(tables[module][imported])
            for target in list(targets):
                parts = target.split(".")
                targets += [".".join(parts[:i]) for i in range(1, len(parts))]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycle_between_the_packages_modules():
    """Function-level imports count too: a cycle hidden inside a function is still a cycle. So do
    the parent packages an import runs, and the module a package's lazy name loads."""
    graph = _import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_cycle_check_sees_parent_packages_and_lazy_names():
    graph = _import_graph()
    assert "esol_lib.models" in graph["esol_lib.method.losses"]  # it imports esol_lib.models.classifier
    assert "esol_lib.method.losses" in graph["esol_lib.models.esol"]
    for package in ("esol_lib", "esol_lib.models", "esol_lib.data", "esol_lib.steps", "esol_lib.book"):
        eager = graph[package] - {"esol_lib", "esol_lib.runtime", "esol_lib.runtime.lazy"}
        assert not eager, f"{package}'s __init__ imports {sorted(eager)} eagerly; only its lazy table's helper may run"


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each module is imported with no other esol_lib module loaded before it (one interpreter; every
    ``esol_lib`` entry is dropped from ``sys.modules`` between two modules). ``__main__`` runs the CLI."""
    script = textwrap.dedent(
        r"""
        import importlib, sys, traceback
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "esol_lib" or m.startswith("esol_lib.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except BaseException:
                failed.append(name + ": " + traceback.format_exc(limit=-3))
        print("\n".join(failed))
        sys.exit(1 if failed else 0)
        """
    )
    names = sorted(name for name in _modules() if name != "esol_lib.__main__")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, env=env)
    assert done.returncode == 0, "modules that fail to import alone:\n" + done.stdout + done.stderr


def test_no_module_name_at_two_levels():
    """A module's name says what it is wherever it is imported: no ``deeplab`` in two folders."""
    where: dict[str, list[str]] = {}
    for name, path in _modules().items():
        if path.name != "__init__.py":
            where.setdefault(name.rsplit(".", 1)[1], []).append(name)
    twice = {short: names for short, names in where.items() if len(names) > 1}
    assert not twice, f"module names used twice: {twice}"


def test_no_exported_name_of_a_package_is_one_of_its_submodules():
    """Loading ``esol_lib.steps.X`` sets the package's attribute ``X`` to the module, so an exported
    name that is also a submodule would be shadowed by the module once something imports it."""
    for package in ("esol_lib.steps", "esol_lib.models", "esol_lib.data", "esol_lib.book"):
        submodules = {info.name for info in pkgutil.iter_modules(importlib.import_module(package).__path__)}
        assert not submodules & set(_lazy_table(package)), package


@pytest.mark.slow
def test_a_step_function_is_not_shadowed_by_its_module():
    """``from esol_lib.steps import make_cam`` gives the function even after every step module is
    imported (a fresh interpreter, so nothing was loaded before)."""
    code = (
        "import importlib, pkgutil, esol_lib.steps as s\n"
        "for i in pkgutil.iter_modules(s.__path__): importlib.import_module('esol_lib.steps.' + i.name)\n"
        "from esol_lib.steps import make_cam, train_cam, refine, train_seg\n"
        "assert all(callable(f) and not isinstance(f, type(s)) for f in (make_cam, train_cam, refine, train_seg))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_no_private_name_is_imported_from_another_module():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    private = [
        f"{path.relative_to(ROOT)}: {module}.{name}"
        for path in files
        for module, name in _imports(path)
        if name and name.startswith("_") and not name.startswith("__")
    ]
    assert not private, "private names used outside their module: " + ", ".join(private)


def test_every_network_lives_in_models():
    outside = []
    for info in pkgutil.walk_packages(esol_lib.__path__, "esol_lib."):
        if info.name in ("esol_lib.__main__",):
            continue
        module = __import__(info.name, fromlist=["_"])
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, torch.nn.Module)
                and obj.__module__ == info.name
                and not info.name.startswith("esol_lib.models")
            ):
                outside.append(f"{info.name}.{name}")
    assert not outside, f"nn.Module classes outside esol_lib/models/: {outside}"


def test_steps_folder_reads_as_the_pipeline():
    from esol_lib import steps

    pipeline = {
        "baseline": "train_cam",
        "expansion": "expand",
        "shrinkage": "shrink",
        "cams": "make_cam",
        "refinement": "refine",
        "segmentation": "train_seg",
    }
    for module, step in pipeline.items():
        assert getattr(steps, step).__module__ == f"esol_lib.steps.{module}", step
    assert steps.eval_cam.__module__ == "esol_lib.steps.cams"
    assert steps.eval_seg.__module__ == "esol_lib.steps.segmentation"


def test_the_chapter_namespace_names_no_submodule():
    """``from esol_lib import refine`` must give one thing: a facade name never shadows a submodule."""
    submodules = {info.name for info in pkgutil.iter_modules(esol_lib.__path__)}
    clashes = [n for n in esol_lib.__all__ if n in submodules and not inspect.ismodule(getattr(esol_lib, n))]
    assert not clashes, f"esol_lib's exported names that are also submodules: {clashes}"


def _floors() -> tuple[dict[str, str], dict[str, set[str]]]:
    """docs/ARCHITECTURE.md's "May import" table: module prefix → floor, and floor → the floors it may import."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("## May import", 1)[1].split("\n## ", 1)[0]
    prefixes: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("floor", "") or set(cells[0]) <= {"-"}:
            continue
        floor, modules, may = cells
        for prefix in re.findall(r"`([\w.]+)`", modules):
            prefixes[prefix] = floor
        allowed[floor] = {f.strip() for f in may.split(",") if f.strip() not in ("—", "-", "")}
    return prefixes, allowed


def _floor_of(module: str, prefixes: dict[str, str]) -> str | None:
    matches = [p for p in prefixes if module == p or module.startswith(p + ".")]
    return prefixes[max(matches, key=len)] if matches else None


def test_every_import_goes_down_the_floors_of_architecture_md():
    prefixes, allowed = _floors()
    assert {"entry", "book", "steps", "method", "data", "runtime"} <= set(allowed), allowed
    assert all(floors <= set(allowed) for floors in allowed.values()), "a floor the table does not define"
    graph = _import_graph()
    homeless = [m for m in graph if _floor_of(m, prefixes) is None]
    assert not homeless, f"modules on no floor of docs/ARCHITECTURE.md: {homeless}"
    wrong = sorted(
        f"{a} → {b}"
        for a, targets in graph.items()
        for b in targets
        if b != "esol_lib"
        and _floor_of(a, prefixes) != _floor_of(b, prefixes)
        and _floor_of(b, prefixes) not in allowed[_floor_of(a, prefixes)]
    )
    assert not wrong, "imports docs/ARCHITECTURE.md does not allow: " + ", ".join(wrong)


def test_the_floor_check_catches_an_upward_import():
    prefixes, allowed = _floors()
    assert _floor_of("esol_lib.runtime.rundir", prefixes) == "runtime"
    assert _floor_of("esol_lib.models.esol", prefixes) == "method"
    assert "steps" not in allowed["runtime"] and "book" not in allowed["steps"]


def test_signatures_are_made_in_runtime_freshness_only():
    """One freshness contract: no other module hashes what a run folder records. The others that hash
    make names, not signatures: cache keys (feature_cache, the label cache of data/voc) and the
    pretrained weights' file name (steps/pretrain)."""
    hashing = {name for name, path in _modules().items() if re.search(r"^\s*import hashlib", path.read_text(), re.M)}
    allowed = {
        "esol_lib.runtime.freshness",
        "esol_lib.runtime.feature_cache",
        "esol_lib.data.voc",
        "esol_lib.steps.pretrain",
    }
    assert hashing <= allowed, f"modules that hash outside runtime/freshness: {sorted(hashing - allowed)}"
    meta = {name for name, path in _modules().items() if '"_meta.json"' in path.read_text()}
    assert meta == {"esol_lib.runtime.freshness"}, meta


@functools.cache
def _top_level_names(path: Path) -> set[str]:
    """The names a module binds at its top level: definitions, assignments (tuples too), imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def test_every_import_of_the_package_names_something_that_exists():
    """Function-level imports run only when their function does: a moved module they still name would
    fail late, in a chapter or a benchmark. Each ``from esol_lib.X import name`` must find ``name``
    in ``X`` (a module, a lazy name or a definition) without running anything."""
    modules = _modules()
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    missing = []
    for path in files:
        for module, name in _imports(path):
            if module not in modules:
                missing.append(f"{path.relative_to(ROOT)}: {module}")
            elif name and f"{module}.{name}" not in modules and name != "*":
                if name not in _top_level_names(modules[module]) and name not in _lazy_table(module):
                    missing.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not missing, "imports of names that do not exist: " + ", ".join(missing)


def test_every_dotted_esol_lib_name_in_the_docs_and_docstrings_resolves():
    """A moved or renamed function leaves its old dotted name behind in prose (``esol_lib.x.f`` in a
    docstring, a chapter's text, README or docs/): each must still name a module or an attribute of one."""
    pattern = re.compile(r"\besol_lib(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
    files = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "notebooks").glob("*.ipynb"),
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "book").glob("*.md"),
        ROOT / "README.md",
    ]
    broken = set()
    for path in files:
        for ref in set(pattern.findall(path.read_text(encoding="utf-8"))):
            if ref.endswith(".__main__"):
                continue  # importing it runs the command line
            parts = ref.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attribute in parts[i:]:
                    if not hasattr(obj, attribute):
                        broken.add(f"{path.relative_to(ROOT)}: {ref}")
                        break
                    obj = getattr(obj, attribute)
                break
    assert not broken, "dotted names that no longer exist: " + ", ".join(sorted(broken))
