"""Every chapter of the book executes with papermill on the smoke profile and draws at least one figure.

All chapters share one run folder, in book order, as ``esol book`` runs them, so each stage is
computed once (the smoke profile trains each stage for a few steps on 12 images of 32 pixels).
Also: the figure and table helpers the chapters share (:mod:`esol_lib.book.viz`,
:mod:`~esol_lib.book.charts`, :mod:`~esol_lib.book.tables`), and the one namespace they import from.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from esol_lib.book.chapters import execute_notebooks
from esol_lib.book.html_build import build_book
from esol_lib.book.publish import WIDGET_PLACEHOLDER, check_published
from esol_lib.book.sources import CHAPTERS, REPO_ROOT

# One thread per kernel: the smoke tensors are tiny, and OpenMP threads that spin-wait for a busy core
# make the IRN random walk (hundreds of small sparse products) up to 100x slower on a shared machine.
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """Every chapter of CHAPTERS executed on the smoke profile into one run folder: {name: notebook}."""
    missing = [c for c in CHAPTERS if not (REPO_ROOT / "notebooks" / c).is_file()]
    root = tmp_path_factory.mktemp("book-smoke")
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in SINGLE_THREAD.items():
            mp.setenv(key, value)
        paths = execute_notebooks("smoke", REPO_ROOT / "notebooks", root / "executed", root / "run", progress=False)
    print(f"\n{len(paths)} chapters executed on the smoke profile in {time.perf_counter() - start:.1f} s")
    return missing, {p.name: nbformat.read(str(p), as_version=4) for p in paths}, root


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_executes_and_draws_a_figure(book, chapter):
    missing, executed, _ = book
    assert chapter not in missing, f"notebooks/{chapter} does not exist; every chapter of the book must"
    nb = executed[chapter]
    errors = [f"{o['ename']}: {o['evalue']}" for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors, f"{chapter}: {errors}"
    assert sum(_images(c) for c in nb.cells if c.cell_type == "code") >= 1, f"{chapter} draws no figure"


@pytest.mark.slow
def test_chapter_03_has_the_static_beta_grid(book):
    """The widget does not render in the static book; `widgets.beta_grid` is its published stand-in."""
    _, executed, _ = book
    cells = [
        c for c in executed["03_feature_clipping.ipynb"].cells if c.cell_type == "code" and "beta_grid(" in c.source
    ]
    assert cells, "chapter 03 no longer calls widgets.beta_grid"
    assert all(_images(c) == 1 for c in cells), "the static beta grid did not draw its figure"


@pytest.mark.slow
def test_chapter_07_has_the_alpha_slider_and_its_static_grid(book):
    """The alpha slider steps through CAMs of trained runs; alpha_grid is its stand-in in the static book."""
    _, executed, _ = book
    code = [c for c in executed["07_ablations.ipynb"].cells if c.cell_type == "code"]
    slider = [c for c in code if "alpha_explorer(" in c.source]
    grid = [c for c in code if "alpha_grid(" in c.source]
    assert slider and grid, "chapter 07 no longer shows the alpha slider and its static grid"
    assert any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for c in slider for o in c.get("outputs", [])
    ), "the alpha slider was not displayed"
    assert all(_images(c) == 1 for c in grid), "the static alpha grid did not draw its figure"


@pytest.mark.slow
def test_the_built_smoke_book_reads_offline(book):
    """The whole smoke book, built: no page loads a remote script, stylesheet or font (equations render
    from the build's own MathJax), none names this machine's folders, none shows a parameters cell."""
    _, executed, root = book
    index = build_book(root / "executed", root / "site")  # raises if check_published finds anything
    html = index.parent
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    forbidden = [str(REPO_ROOT), str(root), str(Path.home())]
    for chapter in executed:
        page = (html / "notebooks" / chapter).with_suffix(".html").read_text(encoding="utf-8")
        if "<script" in page and "mathjax" in " ".join(re.findall(r"<script[^>]*>", page)).lower():
            assert 'src="../_static/mathjax/tex-chtml.js"' in page, f"{chapter}: MathJax not served by the build"
        assert "http" not in " ".join(re.findall(r"<script[^>]*>", page)), f"{chapter}: a remote script"
        assert not [p for p in forbidden if p in page], f"{chapter}: a machine path is published"
        assert "# Parameters (papermill" not in page and "profile = &quot;smoke&quot;" not in page, (
            f"{chapter}: a parameters cell is on the page"
        )
    assert check_published(html, forbidden) == []
    assert "tex-chtml.js" in (html / "notebooks" / "04_shrinkage.html").read_text(encoding="utf-8")  # Eq. (6)
    # display(Markdown(table)) outputs are tables on the page, not a paragraph of pipes
    for chapter in ("05_refinement.html", "08_reproduction.html"):
        page = (html / "notebooks" / chapter).read_text(encoding="utf-8")
        assert "<table" in page and "|---|" not in page and "|—|" not in page, f"{chapter}: a Markdown table as text"
    slider_page = (html / "notebooks" / "07_ablations.html").read_text(encoding="utf-8")
    assert html_lib.escape(WIDGET_PLACEHOLDER) in slider_page or WIDGET_PLACEHOLDER in slider_page
    assert "alpha_explorer" in slider_page  # the code stays: the reader sees what to run in JupyterLab


# ----------------------------------------------------------------------------- figure and table helpers


def test_show_columns_draws_images_label_maps_and_heat_maps():
    import matplotlib.pyplot as plt

    from esol_lib import viz

    image = np.zeros((8, 8, 3), np.uint8)
    label = np.full((8, 8), 255, np.uint8)
    heat = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)  # another size, like a boundary map
    fig = viz.show_columns(
        {"image": [image, image], "label": [label, None], "boundary": [heat, heat]}, row_labels=["a", "b"]
    )
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["image", "label", "boundary"]
    assert axes[1, 0].get_ylabel() == "b" and not axes[1, 1].axison  # None: a blank cell
    assert (axes[0, 1].images[0].get_array()[0, 0] == 255).all()  # void/ignored drawn white
    assert axes[0, 2].images[0].get_clim() == (0, 1)
    plt.close(fig)
    with pytest.raises(ValueError, match="different numbers"):
        viz.show_columns({"a": [image], "b": [image, image]})


def test_file_table_reads_metrics_files_and_keeps_quoted_numbers(tmp_path):
    from esol_lib import tables

    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"miou": 0.5361, "precision": 0.25}))
    table = tables.file_table(
        {
            "paper": {"Seed": 53.6, "Mask": "68.7"},
            "ours": {"Seed": path, "Mask": tmp_path / "missing.json", "P": (path, "precision")},
        }
    )
    lines = table.splitlines()
    assert lines[0] == "| | Seed | Mask | P |"
    assert lines[2] == "| paper | 53.6 | 68.7 | – |"
    assert lines[3] == "| ours | 53.6 | not run | 25.0 |"
    assert "n/a" in tables.file_table({"r": {"c": Path(tmp_path / "none.json")}}, missing="n/a")


def test_markdown_table_and_its_row_check():
    from esol_lib import tables

    table = tables.markdown_table(["setting", "value"], [("lr", 0.01), ("crop", 128)])
    assert table.splitlines() == ["| setting | value |", "|---|---|", "| lr | 0.01 |", "| crop | 128 |"]
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        tables.markdown_table(["a", "b"], [(1, 2, 3)])


def test_grouped_bars_puts_each_series_beside_the_others_with_gaps_for_none():
    import matplotlib.pyplot as plt

    from esol_lib import charts

    fig, ax = plt.subplots()
    charts.grouped_bars(
        ax,
        {"baseline": [1.0, 2.0, None], "shrinkage": [3.0, 4.0, 5.0]},
        ["Seed", "CRF", "Mask"],
        labels={"shrinkage": "ESOL"},
    )
    bars = ax.patches
    assert len(bars) == 6
    xs = [round(b.get_x() + b.get_width() / 2, 2) for b in bars]
    assert xs == [-0.19, 0.81, 1.81, 0.19, 1.19, 2.19]  # centred pairs around each category
    assert np.isnan(bars[2].get_height()) and bars[5].get_height() == 5.0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Seed", "CRF", "Mask"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline", "ESOL"]
    assert bars[0].get_facecolor()[:3] == pytest.approx(plt.matplotlib.colors.to_rgb(charts.STAGE_COLORS["baseline"]))
    with pytest.raises(ValueError, match="2 values for 3 categories"):
        charts.grouped_bars(ax, {"x": [1, 2]}, ["a", "b", "c"])
    plt.close(fig)


def test_training_curves_draws_a_panel_per_column_and_a_line_per_stage():
    import matplotlib.pyplot as plt

    from esol_lib import charts

    logs = {
        "seg-baseline": {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.5]},
        "seg-shrinkage": {"step": [1, 2, 3], "loss": [2.5, 1.0, 0.5]},
    }
    fig = charts.training_curves(logs, {"loss": "cross-entropy"}, title="DeepLab-v2 training")
    (ax,) = fig.axes
    assert ax.get_title() == "cross-entropy" and ax.get_xlabel() == "step"
    assert fig.get_suptitle() == "DeepLab-v2 training"
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == [charts.STAGE_NAMES["baseline"], charts.STAGE_NAMES["shrinkage"]]
    assert list(lines[1].get_ydata()) == [2.5, 1.0, 0.5] and lines[1].get_marker() == "."
    assert lines[0].get_color() == charts.STAGE_COLORS["baseline"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [line.get_label() for line in lines]
    plt.close(fig)

    one = {"shrinkage": {"step": list(range(60)), "cls": [0.0] * 60, "area": [1.0] * 60}}
    fig = charts.training_curves(one, {"cls": "L_cls", "area": "L_area"})
    assert [ax.get_title() for ax in fig.axes] == ["L_cls", "L_area"]
    assert fig.axes[0].get_legend() is None and fig.axes[0].get_lines()[0].get_marker() in ("None", "", None)
    plt.close(fig)

    with pytest.raises(ValueError, match="stage 'shrinkage' logged no column 'offset'; it has: area, cls, step"):
        charts.training_curves(one, {"offset": "mean |offset|"})
    with pytest.raises(ValueError, match="stage 'expansion' has no step records.*train it first"):
        charts.training_curves({"expansion": {}}, {"cls": "L_cls"})


def test_every_table_and_chart_names_a_stage_from_the_one_table():
    import matplotlib.pyplot as plt

    from esol_lib import charts, tables

    m = {"miou": 0.5, "precision": 0.6, "recall": 0.7, "f1": 0.65, "threshold": 0.2}
    m["sweep"] = [{"threshold": 0.1, "miou": 0.4, "precision": 0.5, "recall": 0.8}, {**m}]
    rows = tables.metrics_table({"shrinkage": m, "shrinkage_crf": m}, paper={"shrinkage": 53.6}).splitlines()
    assert rows[2].startswith(f"| {charts.STAGE_NAMES['shrinkage']} |") and rows[2].endswith("| 53.6 |")
    assert rows[3].startswith("| shrinkage_crf |")  # not a bare stage: shown as it is
    fig = charts.plot_sweeps({"baseline": m, "expansion": m})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        charts.STAGE_NAMES["baseline"],
        charts.STAGE_NAMES["expansion"],
    ]
    plt.close(fig)


def test_stage_heats_reads_each_stages_cams_by_run_or_folder(tmp_path):
    from esol_lib import viz
    from esol_lib.runtime.errors import StageError
    from esol_lib.runtime.rundir import RunDir

    run = RunDir(tmp_path / "run")
    for stage, scale in (("baseline", 0.5), ("expansion", 1.0)):
        folder = run.cams(stage)
        folder.mkdir(parents=True)
        cams = np.stack([np.full((4, 4), scale, np.float16), np.eye(4, dtype=np.float16)])
        np.savez(folder / "img1.npz", cams=cams, keys=np.array([3, 7]))
    heats = viz.stage_heats(run, ["baseline", "expansion"], ["img1"])
    assert list(heats) == ["baseline", "expansion"] and len(heats["baseline"]) == 1
    assert heats["baseline"][0][0, 0] == 1.0 and heats["baseline"][0][0, 1] == 0.5  # max over the classes
    assert np.array_equal(viz.stage_heats(str(run.root), ["expansion"], ["img1"])["expansion"][0], np.ones((4, 4)))
    with pytest.raises(StageError, match="esol make-cam"):
        viz.stage_heats(run, ["shrinkage"], ["img1"])


def test_chapters_import_from_the_one_esol_lib_namespace_and_every_name_exists():
    """A chapter imports library code only as ``from esol_lib import ...`` (the names of its ``__all__``)."""
    import esol_lib

    for chapter in CHAPTERS:
        nb = nbformat.read(str(REPO_ROOT / "notebooks" / chapter), as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        deep = re.findall(r"^\s*(?:from|import) (esol_lib\.[\w.]+)", code, flags=re.M)
        assert not deep, f"{chapter} imports from {deep}: add the name to esol_lib's namespace instead"
        for names in re.findall(r"^\s*from esol_lib import (.+)$", code, flags=re.M):
            for name in (n.strip().split(" as ")[0] for n in names.split(",")):
                assert name in esol_lib.__all__, f"{chapter}: esol_lib has no {name!r}"
                assert getattr(esol_lib, name) is not None
    assert "stage_heats" in dir(esol_lib.book.viz) and "train_cam" in dir(esol_lib)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        esol_lib.nothing  # noqa: B018


EMOJI_TINY = """base: cpu
profile: emoji-tiny
train_cam: {batch_size: 4, epochs: 1, max_steps: 2, resize_long: [40, 56], crop_size: 48}
cam: {scales: [1.0]}
"""


@pytest.mark.slow
def test_chapters_00_and_01_show_the_emoji_benchmark_and_its_backbone(tmp_path):
    """On the cpu profile's data and backbone (shrunk), chapter 00 draws the dataset card's figures
    (samples, histograms, glyph table) and chapter 01 the pretraining card and renders."""
    from esol_lib.data.emoji import EmojiSpec, generate_emoji_benchmark

    data = generate_emoji_benchmark(tmp_path / "emoji", EmojiSpec(train=8, val=4, size=48), progress=False)
    profile = tmp_path / "emoji-tiny.yaml"
    profile.write_text(EMOJI_TINY)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in SINGLE_THREAD.items():
            mp.setenv(key, value)
        paths = execute_notebooks(
            str(profile),
            REPO_ROOT / "notebooks",
            tmp_path / "executed",
            tmp_path / "run",
            data_root=str(data),
            only=["00", "01"],
            progress=False,
        )
    nbs = {p.name[:2]: nbformat.read(str(p), as_version=4) for p in paths}
    for name, nb in nbs.items():
        errors = [f"{o['ename']}: {o['evalue']}" for o in _outputs(nb) if o.get("output_type") == "error"]
        assert not errors, f"chapter {name}: {errors}"
    code00 = [c for c in nbs["00"].cells if c.cell_type == "code"]
    assert any("emoji_histograms(" in c.source and _images(c) == 1 for c in code00)
    assert any("glyph_table(" in c.source and _images(c) == 1 for c in code00)
    pre = [c for c in nbs["01"].cells if c.cell_type == "code" and "render_glyph_set(" in c.source]
    assert pre and _images(pre[0]) == 1
    assert "held-out top-1" in json.dumps(pre[0].outputs)
