"""Figures and tables the notebooks draw (matplotlib/seaborn); every table is filled from a run's files.

All functions return the matplotlib figure (or a Markdown table string) so a notebook cell is one
call, and the same figure can be saved for the static book.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from esol_lib.data.openmoji import glyph_sprite
from esol_lib.data.palette import VOID, voc_palette
from esol_lib.method.cam import load_cam
from esol_lib.method.metrics import read_metrics
from esol_lib.runtime.rundir import RunDir

__all__ = [
    "overlay",
    "colorize",
    "show_samples",
    "show_cams",
    "plot_sweeps",
    "plot_pr_curves",
    "metrics_table",
    "draw_sampling_points",
    "show_feature_maps",
    "part_recall_bars",
    "cam_heat",
    "glyph_table",
    "emoji_histograms",
    "show_images",
]

STAGE_COLORS = {"baseline": "#4c72b0", "expansion": "#dd8452", "shrinkage": "#55a868"}


def colorize(label: np.ndarray) -> np.ndarray:
    """A label map as the VOC palette's RGB colours (void in white)."""
    pal = voc_palette().copy()
    pal[VOID] = 255
    return pal[np.asarray(label, dtype=np.int64).clip(0, 255)]


def cam_heat(cams: np.ndarray) -> np.ndarray:
    """One heat map per image: the max over its ground-truth classes' CAMs (zeros when it has none)."""
    return cams.max(0) if len(cams) else np.zeros(cams.shape[1:], np.float32)


def stage_heats(run, stages: Sequence[str], image_ids: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """``{stage: [one heat map per image]}`` from a run's stored CAMs (``cams/<stage>/<id>.npz``, :func:`cam_heat`).

    ``run`` is a :class:`~esol_lib.runtime.rundir.RunDir` or a run folder path (an ablation variant's ``run_dir``).
    A missing CAM file raises the :class:`~esol_lib.runtime.errors.StageError` that names ``esol make-cam``.
    """
    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    return {st: [cam_heat(load_cam(run.cams(st), image_id)[0]) for image_id in image_ids] for st in stages}


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``image`` (H, W, 3) uint8 blended with a [0, 1] heat map in ``cmap`` colours."""
    colours = plt.get_cmap(cmap)(np.clip(heat, 0, 1))[..., :3]
    return ((1 - alpha) * image / 255.0 + alpha * colours).clip(0, 1)


def _grid(rows: int, cols: int, size: float = 1.8):
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def show_samples(samples: Sequence[dict], parts: Sequence[np.ndarray] | None = None, class_names=None):
    """Images, ground-truth masks and (for the generated benchmark) discriminative-part masks."""
    rows = 3 if parts is not None else 2
    fig, axes = _grid(rows, len(samples))
    for j, s in enumerate(samples):
        axes[0, j].imshow(s["image"])
        if class_names is not None and "label" in s:
            present = [class_names[k] for k in np.nonzero(np.asarray(s["label"]))[0]]
            axes[0, j].set_title(", ".join(present), fontsize=8)
        axes[1, j].imshow(colorize(s["mask"]))
        if parts is not None:
            axes[2, j].imshow(colorize(parts[j]))
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("mask")
    if parts is not None:
        axes[2, 0].set_ylabel("part")
    fig.tight_layout()
    return fig


def show_cams(
    images: Sequence[np.ndarray], heats: Mapping[str, Sequence[np.ndarray]], masks: Sequence[np.ndarray] | None = None
):
    """A grid: one row per image; columns = the image, each stage's CAM overlay, the ground truth."""
    cols = 1 + len(heats) + (masks is not None)
    fig, axes = _grid(len(images), cols)
    for i, image in enumerate(images):
        axes[i, 0].imshow(image)
        for j, (name, maps) in enumerate(heats.items(), start=1):
            axes[i, j].imshow(overlay(image, maps[i]))
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
        if masks is not None:
            axes[i, -1].imshow(colorize(masks[i]))
            if i == 0:
                axes[i, -1].set_title("ground truth", fontsize=9)
    fig.tight_layout()
    return fig


def plot_sweeps(metrics: Mapping[str, dict], keys: Sequence[str] = ("miou", "precision", "recall")):
    """One panel per metric: its value against the background threshold, one line per stage."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, m in metrics.items():
            t = [s["threshold"] for s in m["sweep"]]
            ax.plot(
                t,
                [100 * s[key] for s in m["sweep"]],
                marker=".",
                label=name,
                color=STAGE_COLORS.get(name.split("_")[0]),
            )
        ax.set_xlabel("background threshold")
        ax.set_ylabel(f"{key} (%)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pr_curves(metrics: Mapping[str, dict]):
    """Precision against recall over the threshold sweep, one curve per stage (the paper's Fig. 7)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    for name, m in metrics.items():
        ax.plot(
            [100 * s["recall"] for s in m["sweep"]],
            [100 * s["precision"] for s in m["sweep"]],
            marker=".",
            label=name,
            color=STAGE_COLORS.get(name.split("_")[0]),
        )
    ax.set_xlabel("recall (%)")
    ax.set_ylabel("precision (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


_COLUMN_NAMES = {"miou": "mIoU", "ap": "AP"}


def metrics_table(
    rows: Mapping[str, dict],
    columns: Sequence[str] = ("miou", "precision", "recall", "f1"),
    extra: Sequence[str] = ("threshold",),
    paper: Mapping[str, float] | None = None,
) -> str:
    """A Markdown table (percentages) with one row per named metrics dict; missing values as '–'.

    A dict with a ``"diverged"`` entry (an ablation whose training ran away) says so in every
    metric cell. With ``paper`` (row name → the paper's seed mIoU, %) a last column quotes it.
    """
    head = ["", *[_COLUMN_NAMES.get(c, c) for c in columns], *extra] + (["paper mIoU (VOC)"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows.items():
        cells = [name]
        if m and "diverged" in m:
            cells += ["diverged"] * (len(columns) + len(extra))
        else:
            cells += [f"{100 * m[c]:.1f}" if m and m.get(c) is not None else "–" for c in columns]
            cells += [f"{m[e]:.2f}" if m and isinstance(m.get(e), (int, float)) else "–" for e in extra]
        if paper:
            cells.append("–" if paper.get(name) is None else f"{paper[name]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_sampling_points(
    ax, image: np.ndarray, regular: np.ndarray, deformed: np.ndarray, stride: float, title: str = ""
):
    """The kernel's sampling points before (white) and after (red) the learned offsets, on the image.

    ``regular``/``deformed`` are ``(k·k, 2)`` (row, col) feature-map coordinates from
    :func:`esol_lib.models.samplers.sampling_points`; ``stride`` maps them to pixels (cell centres).
    """
    ax.imshow(image)
    to_px = lambda p: (np.asarray(p, dtype=float) + 0.5) * stride - 0.5  # noqa: E731
    r, d = to_px(regular), to_px(deformed)
    for a, b in zip(r, d):
        ax.annotate("", xy=(b[1], b[0]), xytext=(a[1], a[0]), arrowprops=dict(arrowstyle="->", color="yellow", lw=0.8))
    ax.scatter(r[:, 1], r[:, 0], s=14, c="white", edgecolors="black", linewidths=0.5, label="regular grid")
    ax.scatter(d[:, 1], d[:, 0], s=14, c="red", edgecolors="black", linewidths=0.5, label="with offsets")
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def show_feature_maps(images: Sequence[np.ndarray], maps: Mapping[str, Sequence[np.ndarray]]):
    """Feature visualisations (the paper's Fig. 3b/c): channel-mean activation maps per image."""
    fig, axes = _grid(len(images), 1 + len(maps))
    for i, image in enumerate(images):
        axes[i, 0].imshow(image)
        for j, (name, per_image) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(per_image[i], cmap="viridis")
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def part_recall_bars(results: Mapping[str, dict]):
    """Seed recall on the discriminative parts vs on the rest of each object, per stage."""
    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3.2))
    ax.bar(x - 0.2, [100 * results[n]["part_recall"] for n in names], 0.4, label="discriminative part")
    ax.bar(x + 0.2, [100 * results[n]["rest_recall"] for n in names], 0.4, label="rest of the object")
    ax.set_xticks(x, names)
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- chapters 05, 06 and 08


def show_columns(
    columns: Mapping[str, Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    size: float = 1.8,
    heat_cmap: str = "gray_r",
):
    """A grid with one row per image and one column per named list of pictures, each drawn by kind.

    ``(H, W, 3)`` arrays are shown as RGB images (uint8, or floats in [0, 1] such as :func:`overlay`);
    integer ``(H, W)`` arrays as label maps (:func:`colorize`: VOC palette, void/ignored in white);
    float ``(H, W)`` arrays as [0, 1] maps in ``heat_cmap`` (a boundary map, a probability).
    Every column must hold the same number of pictures; a picture may be ``None`` (left blank).
    """
    names = list(columns)
    rows = {len(columns[n]) for n in names}
    if len(rows) != 1:
        raise ValueError(
            f"show_columns: the columns hold different numbers of pictures: { {n: len(columns[n]) for n in names} }"
        )
    fig, axes = _grid(rows.pop(), len(names), size)
    for j, name in enumerate(names):
        axes[0, j].set_title(name, fontsize=9)
        for i, pic in enumerate(columns[name]):
            if pic is None:
                axes[i, j].set_axis_off()
                continue
            pic = np.asarray(pic)
            if pic.ndim == 3:
                axes[i, j].imshow(pic)
            elif np.issubdtype(pic.dtype, np.integer) or pic.dtype == bool:
                axes[i, j].imshow(colorize(pic), interpolation="nearest")
            else:
                axes[i, j].imshow(pic, cmap=heat_cmap, vmin=0, vmax=1)
    if row_labels is not None:
        for i, label in enumerate(row_labels):
            axes[i, 0].set_ylabel(str(label), fontsize=8)
    fig.tight_layout()
    return fig


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: one header row, then one line per row; every cell is shown with ``str``."""
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"markdown_table: a row has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grouped_bars(
    ax,
    series: Mapping[str, Sequence[float | None]],
    categories: Sequence[str],
    colors: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    width: float = 0.76,
    legend: bool = True,
):
    """Bars of every series side by side for each category (the book's stage-against-stage charts).

    ``series`` maps a name (a stage) to one value per category; a None is left as a gap. ``colors``
    and ``labels`` are looked up by series name (default: :data:`STAGE_COLORS`, the name itself).
    Sets the x ticks to ``categories`` and (with ``legend``) adds a legend; returns ``ax``.
    """
    colors = STAGE_COLORS if colors is None else colors
    labels = labels or {}
    x = np.arange(len(categories))
    bar = width / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        if len(values) != len(categories):
            raise ValueError(f"grouped_bars: series {name!r} has {len(values)} values for {len(categories)} categories")
        heights = [np.nan if v is None else v for v in values]
        offset = (k - (len(series) - 1) / 2) * bar
        ax.bar(x + offset, heights, bar, label=labels.get(name, name), color=colors.get(name))
    ax.set_xticks(x, list(categories))
    if legend:
        ax.legend(fontsize=8)
    return ax


def file_table(rows: Mapping[str, Mapping[str, object]], key: str = "miou", missing: str = "not run") -> str:
    """A Markdown table whose numbers are read from metrics files (for the paper-vs-run tables).

    ``rows`` maps a row name to ``{column: cell}``. A cell that is a path (``str`` paths are not
    paths here: use :class:`pathlib.Path`) shows ``key`` of that metrics JSON file as a percentage
    with one decimal, or ``missing`` when the file does not exist; a ``(path, key)`` tuple reads
    another key; any other cell (a number quoted from the paper, a note) is shown as it is.
    Columns are the union of the rows' columns in first-seen order; absent cells are '–'.
    """

    def cell(value) -> str:
        k = key
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Path):
            value, k = value
        if isinstance(value, Path):
            if not value.is_file():
                return missing
            v = read_metrics(value).get(k)
            return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "–"
        return "–" if value is None else str(value)

    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


__all__ += ["show_columns", "file_table", "markdown_table", "grouped_bars", "stage_heats"]


# ----------------------------------------------------------------------------- chapter 07 (ablations)


def sensitivity_plot(
    values: Sequence[float],
    results: Sequence[dict],
    *,
    xlabel: str,
    keys: Sequence[str] = ("miou", "precision", "recall"),
    logx: bool = False,
    references: Mapping[str, dict] | None = None,
    title: str = "",
):
    """Seed metrics against one hyper-parameter (the paper's Fig. 6): one line per metric.

    ``results[i]`` is the metrics dict of the run at ``values[i]`` (:func:`esol_lib.book.ablation.run_variant`);
    a diverged run (``"diverged"`` in its dict) is drawn as a red cross on the x axis. ``references``
    (e.g. ``{"baseline": metrics}``) draws each as a dotted horizontal line of its mIoU.
    """
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    x = np.asarray(values, dtype=float)
    ok = np.array(["diverged" not in r for r in results], dtype=bool)
    for key in keys:
        y = np.array([100 * r[key] if "diverged" not in r else np.nan for r in results])
        ax.plot(x, y, marker="o", label="mIoU" if key == "miou" else key)
    if (~ok).any():
        ax.scatter(x[~ok], np.zeros((~ok).sum()), marker="x", color="red", s=50, label="diverged", zorder=3)
    for name, m in (references or {}).items():
        ax.axhline(100 * m["miou"], ls=":", color=STAGE_COLORS.get(name, "gray"), label=f"{name} mIoU")
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def ablation_bars(rows: Mapping[str, dict], paper: Mapping[str, float] | None = None, reference: str | None = None):
    """Horizontal bars of each row's seed mIoU (%), with the paper's number beside it when it has one.

    With ``reference`` (a row name), a second panel shows each row's gain over that row in points,
    ours next to the paper's: on a benchmark other than VOC only the gains can be compared.
    """
    names = list(rows)
    ours = np.array([np.nan if "diverged" in rows[n] else 100 * rows[n]["miou"] for n in names])
    theirs = np.array([np.nan if paper is None or paper.get(n) is None else paper[n] for n in names])
    panels = 2 if reference is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 0.45 * len(names) + 1.2), squeeze=False, sharey=True)
    y = np.arange(len(names))
    h = 0.38
    axes[0, 0].barh(y - h / 2, ours, h, label="this run", color=STAGE_COLORS["shrinkage"])
    axes[0, 0].barh(y + h / 2, theirs, h, label="paper (VOC)", color="#999999")
    axes[0, 0].set_xlabel("seed mIoU (%)")
    if reference is not None:
        i = names.index(reference)
        axes[0, 1].barh(y - h / 2, ours - ours[i], h, color=STAGE_COLORS["shrinkage"])
        axes[0, 1].barh(y + h / 2, theirs - theirs[i], h, color="#999999")
        axes[0, 1].axvline(0, color="black", lw=0.8)
        axes[0, 1].set_xlabel(f"gain over '{reference}' (points)")
    axes[0, 0].set_yticks(y, names, fontsize=8)
    axes[0, 0].invert_yaxis()
    axes[0, 0].legend(fontsize=7, loc="lower right")
    for ax in axes[0]:
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


__all__ += ["sensitivity_plot", "ablation_bars"]


def glyph_table(glyphs: Mapping[str, Sequence[int]], per_row: int = 12):
    """The dataset card's class table: each VOC class (a row) with every OpenMoji glyph that draws it."""
    names = list(glyphs)
    cols = min(per_row, max(len(v) for v in glyphs.values()))
    fig, axes = plt.subplots(
        len(names),
        cols + 1,
        figsize=(0.75 * (cols + 1) + 1.0, 0.62 * len(names)),
        gridspec_kw={"width_ratios": [2.2] + [1] * cols},
    )
    for r, name in enumerate(names):
        axes[r, 0].text(1.0, 0.5, f"{r + 1} {name}", ha="right", va="center", fontsize=9)
        for c in range(cols + 1):
            axes[r, c].axis("off")
        for c, cp in enumerate(glyphs[name][:cols]):
            axes[r, c + 1].imshow(glyph_sprite(cp))
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.01, right=0.99, top=0.99, bottom=0.01)
    return fig


def emoji_histograms(stats: Mapping, split: str = "train"):
    """Object size (visible area / image area), objects and classes per image, images per class."""
    st = stats["splits"][split]
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.6))
    axes[0].hist(100 * np.asarray(st["object_area_fraction"]), bins=20, color="#4c72b0")
    axes[0].set_xlabel("object area (% of the image)")
    axes[0].set_ylabel("objects")
    for ax, key, label in (
        (axes[1], "objects_per_image", "objects per image"),
        (axes[2], "classes_per_image", "classes per image"),
    ):
        values, counts = np.unique(st[key], return_counts=True)
        ax.bar(values, counts, color="#dd8452")
        ax.set_xticks(values)
        ax.set_xlabel(label)
        ax.set_ylabel("images")
    names = list(st["images_per_class"])
    axes[3].bar(range(len(names)), [st["images_per_class"][n] for n in names], color="#55a868")
    axes[3].set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axes[3].set_ylabel("images")
    fig.suptitle(f"the '{split}' split", fontsize=10)
    fig.tight_layout()
    return fig


def show_images(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, cols: int = 8):
    """A grid of images with optional small titles (e.g. the pretraining renders and their classes)."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = _grid(rows, cols, 1.5)
    for i, ax in enumerate(np.asarray(axes).reshape(-1)):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i])
            if titles:
                ax.set_title(titles[i], fontsize=6)
    return fig


def reading_tradeoff(result: Mapping, split: str = "val"):
    """Each reading as one point per seed: expansion's change in recall (x) against shrinkage's change in
    precision over expansion (y), both at the best threshold, from ``readings.json``. The paper's
    direction (Table 6 on VOC: +24.5 recall, +26.0 precision) is the upper right quadrant."""
    from esol_lib.book import readings as rd

    effects = rd.effects_by_reading(result, split)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    markers = "osD^v<>pPX*h"
    for k, (name, per_seed) in enumerate(effects.items()):
        xs = [e["expansion_recall"] for e in per_seed if e["expansion_recall"] is not None]
        ys = [e["shrinkage_precision"] for e in per_seed if e["expansion_recall"] is not None]
        if xs:
            ax.scatter(xs, ys, marker=markers[k % len(markers)], s=36, label=name, alpha=0.85)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("expansion: Δ recall over the baseline (points)")
    ax.set_ylabel("shrinkage: Δ precision over expansion (points)")
    ax.set_title(f"what each stage did, per reading ({split}; the paper: upper right)", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def reading_offsets(result: Mapping, seed: str = "0"):
    """Mean |offset| (feature cells) over training steps, per reading, for both stages (the runs' logs)."""
    from esol_lib.book import readings as rd

    runs = result.get("seeds", {}).get(seed, {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, stage in zip(axes, ("expansion", "shrinkage")):
        for name in rd.reading_names(result):
            curve = ((runs.get(name) or {}).get("offsets") or {}).get(stage)
            if curve:
                steps, values = zip(*curve)
                ax.plot(steps, values, lw=1, label=name)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("step")
        ax.set_title(f"{stage}: mean |offset| (cells)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def reading_gradients(result: Mapping, seed: str = "0", key: str = "expansion_start"):
    """The gradient reaching the offsets (``∂L/∂Δp``, mean L2 norm per cell) on object, background and
    clipped cells, per reading, at one point (``expansion_start``, ``expansion_end``, ``shrinkage_start``, ...)."""
    from esol_lib.book import readings as rd

    runs = result.get("seeds", {}).get(seed, {})
    names, series = [], {"object": [], "background": [], "clipped": []}
    for name in rd.reading_names(result):
        d = ((runs.get(name) or {}).get("diagnostics") or {}).get(key)
        if not d or "skipped" in d:
            continue
        names.append(name)
        for kind in series:
            v = d.get(f"grad_{kind}")
            series[kind].append(None if v is None or not np.isfinite(v) or v <= 0 else v)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 3.4))
    if names:
        colors = {"object": "#d62728", "background": "#7f7f7f", "clipped": "#1f77b4"}
        grouped_bars(ax, series, names, colors=colors)
        ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=35, labelsize=7)
    ax.set_ylabel("mean ‖∂L/∂Δp‖ per cell")
    ax.set_title(f"{key.replace('_', ' at its ')}: gradient reaching the offsets, by cell", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def reading_sampling(result: Mapping, seed: str = "0", max_rows: int = 12):
    """Where ES and SS sample after training, per reading, on the same val image (``readings.json``):
    white the regular 3×3 grid of each drawn output cell, red the learned positions."""
    import base64
    import io

    from PIL import Image

    from esol_lib.book import readings as rd

    runs = result.get("seeds", {}).get(seed, {})
    picture = runs.get("_image")
    names = [n for n in rd.reading_names(result) if (runs.get(n) or {}).get("sampling")][:max_rows]
    if not picture or not names:
        return None
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(picture["png"]))).convert("RGB"))
    fig, axes = plt.subplots(len(names), 2, figsize=(5.0, 2.5 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        s = runs[name]["sampling"]
        for col, stage in enumerate(("expansion", "shrinkage")):
            ax = axes[row, col]
            points = s.get(stage)
            if not points:
                ax.imshow(image)
                ax.set_title(f"{name}: {stage} has no offsets", fontsize=8)
                ax.axis("off")
                continue
            regular = np.concatenate([np.asarray(p[0]) for p in points])
            deformed = np.concatenate([np.asarray(p[1]) for p in points])
            draw_sampling_points(ax, image, regular, deformed, s["stride"], title=f"{name}: {stage}")
            ax.title.set_fontsize(8)
    fig.suptitle(f"val image {picture['id']} (generator seed {seed})", fontsize=9)
    fig.tight_layout()
    return fig
