"""The book's charts: training curves, threshold sweeps, stage-against-stage bars, ablation and readings plots.

Every function returns its matplotlib figure (or the axes it drew on), so a chapter cell is one call.
A stage is named and coloured the same way in every chapter: :data:`STAGE_NAMES` and
:data:`STAGE_COLORS` are the one table of both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from esol_lib.runtime.stages import STAGE_TABLE

__all__ = [
    "STAGE_COLORS",
    "STAGE_NAMES",
    "STAGE_SHORT",
    "stage_label",
    "training_curves",
    "plot_sweeps",
    "plot_pr_curves",
    "part_recall_bars",
    "grouped_bars",
    "sensitivity_plot",
    "ablation_bars",
    "emoji_histograms",
    "reading_tradeoff",
    "reading_offsets",
    "reading_gradients",
    "control_gains_plot",
]

#: Each stage's colour in every chart of the book (the stage table's, esol_lib.runtime.stages).
STAGE_COLORS = {s.name: s.color for s in STAGE_TABLE}
#: Each stage's name in the chapters' tables and legends; the shrinkage stage's CAM is ESOL's output.
STAGE_NAMES = {s.name: s.label for s in STAGE_TABLE}
#: The same, where a column or panel title has little room.
STAGE_SHORT = {s.name: s.short for s in STAGE_TABLE}


def stage_label(name: str) -> str:
    """How the book names ``name``: :data:`STAGE_NAMES`' entry for a bare stage key, any other name as it is."""
    return STAGE_NAMES.get(name, name)


#: A curve with at most this many logged steps is drawn with a marker on each step.
_MARKED_STEPS = 50


def training_curves(
    logs: Mapping[str, Mapping[str, Sequence[float]]],
    keys: Mapping[str, str],
    title: str | None = None,
    panel_width: float = 4.0,
):
    """Training curves: one panel per logged column, one line per stage, against the step.

    ``logs`` maps a stage to its log columns as :meth:`~esol_lib.runtime.rundir.RunDir.training_log`
    returns them (``{"step": [...], "loss": [...]}``); ``keys`` maps each column to plot to its
    panel's title. A stage's line takes its colour from :data:`STAGE_COLORS` and its legend label
    from :data:`STAGE_NAMES` (a stage named ``irn-<stage>`` or ``seg-<stage>`` too); a legend is
    drawn only for more than one stage. Returns the figure.

    Raises:
        ValueError: a stage that never logged (an empty log), or a column a stage's log does not
            have, naming the stage, the column and the columns it has.
    """
    if not logs or not keys:
        raise ValueError("training_curves: give at least one stage's log and one column to plot")
    for stage, log in logs.items():
        if not log:
            raise ValueError(f"training_curves: stage {stage!r} has no step records in log.jsonl: train it first")
        for key in ("step", *keys):
            if key not in log:
                raise ValueError(
                    f"training_curves: stage {stage!r} logged no column {key!r}; it has: {', '.join(sorted(log))}"
                )
    fig, axes = plt.subplots(1, len(keys), figsize=(panel_width * len(keys) + 1, 2.6), squeeze=False)
    for ax, (key, panel) in zip(axes[0], keys.items()):
        for stage, log in logs.items():
            base = stage.split("-", 1)[1] if stage.startswith(("irn-", "seg-")) else stage
            ax.plot(
                log["step"],
                log[key],
                marker="." if len(log["step"]) <= _MARKED_STEPS else None,
                label=STAGE_NAMES.get(base, stage),
                color=STAGE_COLORS.get(base),
            )
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        if len(logs) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
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
                label=stage_label(name),
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
            label=stage_label(name),
            color=STAGE_COLORS.get(name.split("_")[0]),
        )
    ax.set_xlabel("recall (%)")
    ax.set_ylabel("precision (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def part_recall_bars(results: Mapping[str, dict]):
    """Seed recall on the discriminative parts vs on the rest of each object, per stage."""
    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3.2))
    ax.bar(x - 0.2, [100 * results[n]["part_recall"] for n in names], 0.4, label="discriminative part")
    ax.bar(x + 0.2, [100 * results[n]["rest_recall"] for n in names], 0.4, label="rest of the object")
    ax.set_xticks(x, [stage_label(n) for n in names])
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


def reading_tradeoff(result: Mapping, split: str = "val"):
    """Each reading as one point per seed: expansion's change in recall (x) against shrinkage's change in
    precision over expansion (y), both at the best threshold, from ``readings.json``. The paper's
    direction (Table 6 on VOC: +24.5 recall, +26.0 precision) is the upper right quadrant."""
    from esol_lib.book import study

    effects = study.effects_by_reading(result, split)
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
    from esol_lib.book import study

    runs = result.get("seeds", {}).get(seed, {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, stage in zip(axes, ("expansion", "shrinkage")):
        for name in study.reading_names(result):
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
    from esol_lib.book import study

    runs = result.get("seeds", {}).get(seed, {})
    names, series = [], {"object": [], "background": [], "clipped": []}
    for name in study.reading_names(result):
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


def control_gains_plot(study: Mapping, need: Mapping[str, float], esol: Sequence[float] = ()):
    """Each control's train seeds mIoU gain over the baseline per generator seed (bars), the rule's required
    mean gain (a dashed line per control) and ESOL's gain on the same seeds (``esol``)."""
    from esol_lib.runtime.stages import CONTROL_STAGES

    seeds = sorted(study["seeds"])
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    groups = [*CONTROL_STAGES, *(["shrinkage"] if len(esol) else [])]
    width = 0.8 / max(1, len(seeds))
    for j, name in enumerate(groups):
        gains = (
            study["summary"].get(name, {}).get("seeds_train", {}).get("per_seed", {})
            if name != "shrinkage"
            else {s: g for s, g in zip(seeds, esol)}
        )
        for i, s in enumerate(seeds):
            if s in gains:
                ax.bar(
                    j - 0.4 + width * (i + 0.5),
                    gains[s],
                    width * 0.9,
                    color=STAGE_COLORS.get(name, "gray"),
                    alpha=0.55 + 0.15 * i,
                    label=f"seed {s}" if j == 0 else None,
                )
        if name in need:
            ax.hlines(need[name], j - 0.45, j + 0.45, colors="black", linestyles="--", lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)), [STAGE_NAMES.get(g, g) for g in groups])
    ax.set_ylabel("train seeds mIoU − baseline")
    ax.set_title("Gain over the baseline per generator seed (dashed: the rule's required mean)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
