"""The book machinery: the toc, stripping, papermill execution and an offline jupyter-book build."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from esol_lib.book.build import make_book
from esol_lib.book.chapters import execute_notebooks, not_this_build
from esol_lib.book.html_build import build_book, toc_files
from esol_lib.book.ownership import OWNER_FILE, claim_build_folder, clear_owned, own, owned_files
from esol_lib.book.publish import WIDGET_PLACEHOLDER, check_published, machine_paths, publishable_notebook
from esol_lib.book.sources import CHAPTERS, REPO_ROOT
from esol_lib.book.timing import TIMING_FILE, build_time_page
from esol_lib.runtime.errors import StageError

PARAMS = 'profile = "cpu"\nrun_dir = ""\ndata_root = ""'


def _notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("# A tiny chapter\n\nWith math: $a^2 + b^2 = c^2$."))
    nb.cells.append(nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]}))
    nb.cells.extend(nbformat.v4.new_code_cell(s) for s in sources)
    return nb


def _outputs_text(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


# ----------------------------------------------------------------------------- (a) toc


def test_toc_lists_every_chapter_and_every_page_exists():
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    files = list(toc_files(toc))
    notebooks = [f for f in files if f.startswith("notebooks/")]
    assert [Path(f).name + ".ipynb" for f in notebooks] == CHAPTERS  # every chapter, in book order
    pages = [f for f in files if not f.startswith("notebooks/")]
    assert toc["root"] == "book/intro" and {"book/method", "book/dataset", "book/bibliography"} <= set(pages)
    for page in pages:
        assert (REPO_ROOT / f"{page}.md").is_file(), f"{page}.md named in _toc.yml does not exist"


def test_config_never_executes_and_cites_from_the_bib_file():
    cfg = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["only_build_toc_files"] is True
    assert cfg["author"] == "esol contributors"
    for bib in cfg["bibtex_bibfiles"]:
        assert (REPO_ROOT / bib).is_file()
    assert "sphinx.ext.intersphinx" not in (cfg.get("sphinx", {}).get("extra_extensions") or [])


# ----------------------------------------------------------------------------- (b) stripping


def test_notebooks_in_git_are_stripped():
    """The chapters are committed without outputs: nbstripout (``make strip``) finds nothing to remove."""
    notebooks = sorted(str(p) for p in (REPO_ROOT / "notebooks").glob("*.ipynb"))
    done = subprocess.run(
        [sys.executable, "-m", "nbstripout", "--keep-id", "--verify", *notebooks], capture_output=True, text=True
    )
    assert done.returncode == 0, f"notebooks committed with outputs; run `make strip`:\n{done.stdout}{done.stderr}"


# ----------------------------------------------------------------------------- (c) execution


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Two tiny chapters (named like CHAPTERS[0] and CHAPTERS[2]) executed by papermill."""
    root = tmp_path_factory.mktemp("book")
    nb_dir, out_dir = root / "notebooks", root / "executed"
    nb_dir.mkdir()
    nbformat.write(
        _notebook('print(f"profile={profile}")', 'print(f"run_dir={run_dir}")\nimport os; print(f"cwd={os.getcwd()}")'),
        str(nb_dir / CHAPTERS[0]),
    )
    bare = _notebook('print(f"data_root={data_root!r}")')
    del bare.metadata["kernelspec"]  # hand-made, no language metadata: still runs (as Python)
    nbformat.write(bare, str(nb_dir / CHAPTERS[2]))
    paths = execute_notebooks("smoke", nb_dir, out_dir, root / "run", data_root=str(root / "data"), progress=False)
    return root, paths


@pytest.mark.slow  # papermill starts a kernel per chapter
def test_execute_notebooks_injects_the_parameters(executed):
    root, paths = executed
    assert [p.name for p in paths] == [CHAPTERS[0], CHAPTERS[2]]  # book order; missing chapters skipped
    first = _outputs_text(paths[0])
    assert "profile=smoke" in first
    assert f"run_dir={(root / 'run').resolve()}" in first
    assert f"cwd={(root / 'notebooks').resolve()}" in first  # relative paths behave as in JupyterLab
    assert f"data_root={str((root / 'data').resolve())!r}" in _outputs_text(paths[1])
    nb = nbformat.read(str(paths[0]), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


@pytest.mark.slow  # papermill starts a kernel per chapter
def test_execute_notebooks_writes_each_chapters_time_and_the_page_shows_it(executed):
    root, paths = executed
    timing = json.loads((root / "executed" / TIMING_FILE).read_text())
    assert list(timing["chapters"]) == [p.name for p in paths]
    assert all(sec > 0 for sec in timing["chapters"].values())
    assert timing["total_seconds"] == pytest.approx(sum(timing["chapters"].values()), abs=0.2)
    assert timing["profile"] == "smoke" and timing["cores"] >= 1 and not timing["complete"]  # 2 of 9 chapters
    page = build_time_page(timing)
    assert page.startswith("# Build time")
    assert f"| {Path(CHAPTERS[0]).stem} | {timing['chapters'][CHAPTERS[0]] / 60:.1f} |" in page
    assert "not the book's time" in page  # a partial build says so
    full = build_time_page(
        {
            "profile": "cpu",
            "cores": 2,
            "complete": True,
            "chapters": {c: 120.0 for c in CHAPTERS},
            "total_seconds": 1080.0,
        }
    )
    assert "| **all chapters** | **18.0** |" in full and "not the book's time" not in full
    assert "Where each chapter's time went" not in full  # no stage records: no stage table


def test_the_build_time_page_shows_each_chapters_stages_and_the_rest():
    timing = {
        "profile": "cpu",
        "cores": 2,
        "complete": False,
        "chapters": {CHAPTERS[5]: 600.0},
        "total_seconds": 600.0,
        "stages": {CHAPTERS[5]: {"refine": 420.0, "eval_cam": 120.0, "train_cam": 0.01}},
    }
    page = build_time_page(timing)
    stem = Path(CHAPTERS[5]).stem
    assert f"| {stem} | refine | 7.0 | 70 % |" in page and f"| {stem} | eval_cam | 2.0 | 20 % |" in page
    assert f"| {stem} | *everything else* | 1.0 | 10 % |" in page
    assert "train_cam" not in page  # current outputs: milliseconds, not listed
    assert page.index("| refine |") < page.index("| eval_cam |")  # largest first


@pytest.mark.slow  # papermill starts a kernel per chapter
def test_execute_notebooks_stops_at_a_failing_notebook(executed, tmp_path):
    root, _ = executed
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nbformat.write(_notebook('print("fine")'), str(nb_dir / CHAPTERS[0]))
    nbformat.write(_notebook('raise ValueError("boom")'), str(nb_dir / CHAPTERS[1]))
    nbformat.write(_notebook('print("never")'), str(nb_dir / CHAPTERS[3]))
    out = tmp_path / "executed"
    with pytest.raises(StageError) as err:
        execute_notebooks("smoke", nb_dir, out, tmp_path / "run", progress=False)
    msg = str(err.value)
    assert CHAPTERS[1] in msg and "boom" in msg and "ValueError" in msg
    assert 'raise ValueError("boom")' in msg  # the failing cell's first line
    partial = out / "failed" / CHAPTERS[1]
    assert str(partial) in msg and partial.is_file()  # the partial copy, kept for reading ...
    assert not (out / CHAPTERS[1]).exists()  # ... where no build publishes it
    assert not (out / CHAPTERS[3]).exists()  # stopped at the first failure
    assert (out / CHAPTERS[0]).is_file() and not list((out / ".running").iterdir())


def test_execute_notebooks_without_any_notebook_is_an_error(tmp_path):
    with pytest.raises(StageError, match="none of the chapter notebooks"):
        execute_notebooks("smoke", tmp_path, tmp_path / "out", tmp_path / "run", progress=False)


def test_unknown_chapter_is_an_error(tmp_path):
    with pytest.raises(StageError, match="unknown chapter"):
        execute_notebooks("smoke", tmp_path, tmp_path / "out", tmp_path / "run", only=["99_nope"], progress=False)


def test_book_refuses_an_out_folder_it_did_not_make_and_deletes_nothing(tmp_path):
    """`esol book --out proj` used to delete proj/src and proj/executed unconditionally (issue 18, item 2)."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "important.py").write_text("x")
    (proj / "executed").mkdir()
    (proj / "executed" / "keep.txt").write_text("y")
    (proj / "README.md").write_text("mine")
    with pytest.raises(StageError, match=r"--out .*proj is not empty and was not made by `esol book`.*README.md"):
        make_book("smoke", out=proj, only=["00"], progress=False)
    assert (proj / "src" / "important.py").read_text() == "x" and (proj / "executed" / "keep.txt").is_file()
    assert not (proj / OWNER_FILE).exists()


def test_claim_build_folder_accepts_new_empty_and_marked_folders_only(tmp_path):
    claim_build_folder(tmp_path / "new")
    assert owned_files(tmp_path / "new") == set()
    claim_build_folder(tmp_path / "new")  # marked: fine again
    (tmp_path / "empty").mkdir()
    claim_build_folder(tmp_path / "empty")
    (tmp_path / "file").write_text("")
    with pytest.raises(StageError, match="is a file"):
        claim_build_folder(tmp_path / "file")


@pytest.mark.parametrize("top", ["src", "executed"])
def test_an_unmarked_folder_holding_only_a_build_name_is_refused_before_any_chapter_runs(tmp_path, top):
    """`mkdir -p proj/src && echo x > proj/src/important.py && esol book --out proj` deleted the file:
    `src` passed as one of the build's names (issue 30, case 3)."""
    proj = tmp_path / "proj"
    (proj / top).mkdir(parents=True)
    (proj / top / "important.py").write_text("x")
    with pytest.raises(StageError, match=rf"--out .*proj is not empty and was not made by `esol book` .*{top}"):
        make_book("smoke", out=proj, only=["00"], progress=False)
    assert (proj / top / "important.py").read_text() == "x"
    assert not (proj / OWNER_FILE).exists()


def test_a_build_deletes_only_what_its_manifest_lists(tmp_path):
    out = tmp_path / "out"
    claim_build_folder(out)
    own(out, ["src/book/intro.md", "executed/00_setup.ipynb"])
    for rel in ("src/book/intro.md", "executed/00_setup.ipynb", "src/book/mine.md", "src/notes.py"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(rel)
    assert clear_owned(out, "src") == ["src/book/intro.md"]
    assert clear_owned(out, "executed") == ["executed/00_setup.ipynb"]
    assert (out / "src/book/mine.md").read_text() == "src/book/mine.md" and (out / "src/notes.py").is_file()
    assert not (out / "executed").exists()  # left empty: removed
    assert owned_files(out) == set()


def test_a_marker_from_before_manifests_still_owns_src_and_executed(tmp_path):
    out = tmp_path / "out"
    (out / "src" / "book").mkdir(parents=True)
    (out / "src" / "book" / "old.md").write_text("x")
    (out / "executed").mkdir()
    (out / "executed" / "01_cam.ipynb").write_text("{}")
    (out / OWNER_FILE).write_text("made by `esol book`; it may delete src/ and executed/ here\n")
    claim_build_folder(out)
    assert clear_owned(out, "src") == ["src/book/old.md"]
    assert owned_files(out) == {"executed/01_cam.ipynb"}  # from now on listed


@pytest.mark.parametrize("link", ["src", "src/notebooks", "executed", "_build"])
def test_a_symlink_where_the_build_writes_is_one_error_line_before_any_chapter_runs(tmp_path, link):
    """A symlinked `src` used to end in `OSError: Cannot call rmtree on a symbolic link` after a
    chapter's work (issue 30, case 7); a build never follows or removes a link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    out = tmp_path / "out"
    claim_build_folder(out)
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(outside, target_is_directory=True)
    with pytest.raises(StageError, match=rf"{link} is a symbolic link .*remove the link"):
        make_book("smoke", out=out, only=["00"], progress=False)
    assert (outside / "precious.txt").read_text() == "keep" and (out / link).is_symlink()


@pytest.mark.slow  # papermill starts a kernel per chapter
def test_a_chapter_executed_for_another_profile_or_run_folder_is_not_published(executed, tmp_path):
    """`esol book --only 01` used to publish a 00 lying in executed/ from another build (item 3)."""
    root, paths = executed
    run = str((root / "run").resolve())
    assert not_this_build(paths[0], {"profile": "smoke", "run_dir": run}) is None
    assert "profile='smoke'" in not_this_build(paths[0], {"profile": "cpu", "run_dir": run})
    assert "run_dir" in not_this_build(paths[0], {"profile": "smoke", "run_dir": str(tmp_path)})
    broken = tmp_path / "x.ipynb"
    broken.write_text("{")
    assert "unreadable" in not_this_build(broken, {"profile": "smoke"})


# ----------------------------------------------------------------------------- (d) publishing


def test_machine_paths_write_the_repository_relative_and_others_by_name(tmp_path):
    repo, run = tmp_path / "repo", tmp_path / "elsewhere" / "book-cpu"
    paths = machine_paths(run, repo / "data" / "emoji-cpu", None, root=repo)
    assert paths[str(run.resolve())] == "<book-cpu>"
    assert paths[str(repo.resolve())] == ""
    assert str((repo / "data" / "emoji-cpu").resolve()) not in paths  # inside the repository: made relative
    assert "/usr" not in paths and "/" not in paths
    assert list(paths) == sorted(paths, key=len, reverse=True)  # the most specific path is rewritten first


def test_publishable_notebook_hides_parameters_rewrites_paths_and_replaces_widgets(tmp_path):
    repo, run = tmp_path / "repo", tmp_path / "runs-elsewhere" / "r1"
    nb = _notebook(f'print("{repo.resolve()}/runs/book-cpu | {run.resolve()}/checkpoints")')
    nb.cells.insert(
        2, nbformat.v4.new_code_cell(f'run_dir = "{run.resolve()}"', metadata={"tags": ["injected-parameters"]})
    )
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text=f"{repo.resolve()}/runs/book-cpu | {run.resolve()}\n")]
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "widgets.beta_explorer(probe)",
            outputs=[
                nbformat.v4.new_output(
                    "display_data",
                    data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
                        "text/plain": "interactive(children=(FloatSlider(...)))",
                    },
                )
            ],
        )
    )
    nb.cells[-1].outputs.append(
        nbformat.v4.new_output(  # a tqdm bar: a box around a FloatProgress
            "display_data",
            data={
                "application/vnd.jupyter.widget-view+json": {"model_id": "bar"},
                "text/plain": "shrinkage:   0%|          | 0/3",
            },
        )
    )
    nb.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {
            "state": {
                "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_p", "IPY_MODEL_h"]}},
                "p": {"model_name": "FloatProgressModel", "state": {}},
                "h": {"model_name": "HTMLModel", "state": {}},
                "abc": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_h"]}},
            }
        }
    }
    nb.metadata["papermill"] = {
        "parameters": {"run_dir": str(run.resolve())},
        "output_path": f"{repo.resolve()}/_build/executed/x.ipynb",
    }

    out = publishable_notebook(nb, machine_paths(run, root=repo))
    tags = [c.metadata.get("tags", []) for c in out.cells]
    assert "remove-cell" in tags[1] and "remove-cell" in tags[2]  # the defaults and the injected values
    assert not any("remove-cell" in t for t in tags[3:])
    text = json.dumps(out)
    assert str(repo.resolve()) not in text and str(run.resolve()) not in text
    assert out.cells[3].outputs[0]["text"] == "runs/book-cpu | <r1>\n"
    assert out.cells[2].source == 'run_dir = "<r1>"'
    assert out.metadata["papermill"]["output_path"] == "_build/executed/x.ipynb"
    assert "widgets" not in out.metadata
    assert [o["data"] for o in out.cells[-1].outputs] == [{"text/plain": WIDGET_PLACEHOLDER}]  # bar left out
    nbformat.validate(nbformat.from_dict(out))


def test_check_published_finds_remote_assets_and_machine_paths(tmp_path):
    (tmp_path / "a.html").write_text(
        '<a href="https://arxiv.org/abs/2205.00000">the paper</a><script src="_static/mathjax/tex-chtml.js"></script>'
    )
    assert check_published(tmp_path, ["/home/me/esol"]) == []  # links and local scripts are fine
    (tmp_path / "b.html").write_text('<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/tex.js"></script>')
    (tmp_path / "c.css").write_text("@font-face { src: url('//fonts.example.org/x.woff2') }")
    (tmp_path / "d.html").write_text('<link rel="stylesheet" href="http://example.org/s.css">')
    (tmp_path / "_sources").mkdir()
    (tmp_path / "_sources" / "e.ipynb").write_text('{"text": "/home/me/esol/runs/book-cpu"}')
    problems = check_published(tmp_path, ["/home/me/esol", "/"])
    assert [p.split(":")[0] for p in problems] == ["_sources/e.ipynb", "b.html", "c.css", "d.html"]
    assert "cdn.jsdelivr.net" in problems[1] and "/home/me/esol" in problems[0]


# ----------------------------------------------------------------------------- (e) building


@pytest.mark.slow
def test_build_book_offline(executed, tmp_path):
    """A book of the repository's pages plus the two tiny executed chapters (about 10 s)."""
    _, paths = executed
    exec_dir = tmp_path / "executed"
    exec_dir.mkdir()
    for p in paths:
        (exec_dir / p.name).write_bytes(p.read_bytes())
    site = tmp_path / "site"
    site.mkdir()
    (site / "_config.yml").write_bytes((REPO_ROOT / "_config.yml").read_bytes())
    (site / "book").mkdir()
    for page in ("intro.md", "bibliography.md", "references.bib"):
        (site / "book" / page).write_bytes((REPO_ROOT / "book" / page).read_bytes())
    toc = {
        "format": "jb-book",
        "root": "book/intro",
        "parts": [
            {
                "caption": "Chapters",
                "chapters": [{"file": f"notebooks/{Path(p.name).stem}"} for p in paths]
                + [{"file": "notebooks/08_reproduction"}],
            },  # not executed: left out, not an error
            {"caption": "Reference", "chapters": [{"file": "book/bibliography"}]},
        ],
    }
    (site / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))

    out = tmp_path / "out"
    (exec_dir / TIMING_FILE).write_text(json.dumps({"profile": "smoke", "chapters": {paths[0].name: 6.0}}))
    index = build_book(exec_dir, out, root=site, timeout=85)
    assert index == out / "_build" / "html" / "index.html" and index.is_file()
    html = out / "_build" / "html"
    chapter = (html / "notebooks" / f"{Path(CHAPTERS[0]).stem}.html").read_text()
    assert "profile=smoke" in chapter  # papermill's outputs, not re-executed
    assert (html / "book" / "bibliography.html").is_file()
    assert "Expansion and shrinkage of localization" in (html / "book" / "bibliography.html").read_text()
    assert not (html / "notebooks" / "08_reproduction.html").exists()
    assert "| 00_problem_and_data | 0.1 |" in (out / "src" / "book" / "build_time.md").read_text()
    assert 'src="../_static/mathjax/tex-chtml.js"' in chapter and (html / "_static/mathjax/tex-chtml.js").is_file()
    assert "a^2 + b^2 = c^2" in chapter  # the equation, for the build's own MathJax to typeset
    assert str((executed[0] / "run").resolve()) not in chapter and "injected-parameters" not in chapter
    assert "run_dir=&lt;run&gt;" in chapter  # the run folder outside the repository, by its name


@pytest.mark.slow
def test_build_book_reports_jupyter_book_failure(tmp_path):
    site = tmp_path / "site"
    (site / "book").mkdir(parents=True)
    (site / "book" / "intro.md").write_text("# Intro\n")
    (site / "_config.yml").write_text("title: broken\nsphinx:\n  extra_extensions: [no_such_sphinx_extension]\n")
    (site / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    with pytest.raises(StageError, match="no_such_sphinx_extension"):
        build_book(tmp_path / "none", tmp_path / "out", root=site, timeout=85)


def test_build_book_without_config_is_an_error(tmp_path):
    with pytest.raises(StageError, match="_config.yml"):
        build_book(tmp_path, tmp_path / "out", root=tmp_path)
