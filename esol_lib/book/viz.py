"""The book's pictures: images, CAM heat maps, label maps, sampling points and glyphs, in grids.

Every function returns its matplotlib figure, so a chapter cell is one call. The charts are in
:mod:`esol_lib.book.charts`, the tables in :mod:`esol_lib.book.tables`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from esol_lib.data.openmoji import glyph_sprite
from esol_lib.data.palette import VOID, voc_palette
from esol_lib.method.cam import load_cam
from esol_lib.runtime.rundir import RunDir

__all__ = [
    "colorize",
    "cam_heat",
    "stage_heats",
    "overlay",
    "show_samples",
    "show_cams",
    "draw_sampling_points",
    "show_feature_maps",
    "show_columns",
    "glyph_table",
    "show_images",
    "reading_sampling",
]


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


def reading_sampling(result: Mapping, seed: str = "0", max_rows: int = 12):
    """Where ES and SS sample after training, per reading, on the same val image (``readings.json``):
    white the regular 3×3 grid of each drawn output cell, red the learned positions."""
    import base64
    import io

    from PIL import Image

    from esol_lib.book import study

    runs = result.get("seeds", {}).get(seed, {})
    picture = runs.get("_image")
    names = [n for n in study.reading_names(result) if (runs.get(n) or {}).get("sampling")][:max_rows]
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
