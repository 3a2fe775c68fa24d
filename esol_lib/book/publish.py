"""Scrubbing and checking what the book publishes.

The published copy of a chapter (:func:`publishable_notebook`) drops its parameter cells and its
progress bars and writes the build machine's paths relative to the repository;
:func:`check_published` refuses a page that still names one, or that loads a script, stylesheet or
font from the network.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from esol_lib.book.sources import REPO_ROOT

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


def executed_paths(metadata: dict) -> list[str]:
    """The folders an executed notebook's papermill metadata names: its run folder and dataset, and
    the repository it was executed from (normally the one building the book)."""
    pm = metadata.get("papermill") or {}
    params = pm.get("parameters") or {}
    paths = [str(Path(params[k]).resolve()) for k in ("run_dir", "data_root") if params.get(k)]
    if pm.get("input_path"):
        paths.append(str(Path(pm["input_path"]).resolve().parent.parent))  # <repo>/notebooks/<chapter>
    return paths


def publish_notebook(src: Path, dst: Path, extra_paths: Sequence[str] = ()) -> None:
    """Copy the executed notebook ``src`` to the book source ``dst`` as :func:`publishable_notebook`."""
    import nbformat

    nb = nbformat.read(str(src), as_version=4)
    paths = machine_paths(*executed_paths(nb.metadata), *extra_paths)
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
