"""The package's shape: networks in ``models/``, one module per pipeline step in ``steps/``, no import
cycle, no private name used outside its module, and one namespace for the chapters."""

from __future__ import annotations

import ast
import inspect
import pkgutil
from pathlib import Path

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


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` of every ``import esol_lib…`` / ``from esol_lib… import name`` in a file, at any depth."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esol_lib") and not node.level:
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.startswith("esol_lib")]
    return out


def test_no_import_cycle_between_the_packages_modules():
    """Function-level imports count too: a cycle hidden inside a function is still a cycle."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, imported in _imports(path):
            for target in (f"{module}.{imported}", module):
                if target in modules and target != name:
                    graph[name].add(target)
                    break
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
