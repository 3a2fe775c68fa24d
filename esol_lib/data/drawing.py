"""Drawing and writing helpers shared by the dataset generators (``synth``, ``emoji``) and converters."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from esol_lib.data.palette import save_label_png
from esol_lib.runtime.atomic import atomic_path, atomic_write_text
from esol_lib.runtime.errors import DatasetError

__all__ = [
    "hsv_to_rgb",
    "smooth_noise",
    "dilate",
    "save_jpeg",
    "write_lines",
    "open_benchmark_folder",
    "write_benchmark",
]


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (each in [0, 1]; hue wraps) as float32 RGB in [0, 255]."""
    rgb = Image.new("HSV", (1, 1), (int(h % 1.0 * 255), int(s * 255), int(v * 255))).convert("RGB")
    return np.asarray(rgb, dtype=np.float32)[0, 0]


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a ``cells``-square grid upsampled bicubically to ``size``."""
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    out = np.empty((size, size, channels), np.float32)
    for c in range(channels):
        img = Image.fromarray(grid[:, :, c], mode="F").resize((size, size), Image.BICUBIC)
        out[:, :, c] = np.asarray(img)
    return np.clip(out, 0.0, 1.0)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)-square (no wrap-around at the image edge)."""
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def write_lines(path: Path, lines: list[str]) -> None:
    """Write one item per line, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(f"{i}\n" for i in lines))


def save_jpeg(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image as JPEG quality 95 without chroma subsampling, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=95, subsampling=0)


def open_benchmark_folder(
    out: Path, spec: object, read_spec: Callable[[dict], object | None], subdirs: Sequence[str]
) -> bool:
    """Prepare ``out`` for a generator whose ``spec.json`` is written last; True if it is already complete.

    A folder whose ``spec.json`` reads back (``read_spec``) as ``spec`` is complete; one with another
    spec is refused, so two benchmarks never mix; one without it (an interrupted run) is completed.
    """
    spec_path = out / "spec.json"
    if spec_path.is_file():
        try:
            existing = read_spec(json.loads(spec_path.read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            existing = None
        if existing == spec:
            return True
        raise DatasetError(
            f"{out} already holds a benchmark with a different spec ({spec_path}); "
            f"write this one to another folder (--out) or delete {out}"
        )
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder; pass --out a folder path")
    for sub in subdirs:
        (out / sub).mkdir(parents=True, exist_ok=True)
    return False


def write_benchmark(
    out: Path,
    spec: Any,
    *,
    read_spec: Callable[[dict], object | None],
    sample_id: Callable[[str, int], str],
    render: Callable[[Any, int, str], Any],
    label_dirs: Mapping[str, str] | None = None,
    objects_file: str | None = None,
    files: Mapping[str, str] | None = None,
    splits: Sequence[str] = ("train", "val"),
    desc: str = "benchmark",
    progress: bool = True,
) -> Path:
    """Write a generated benchmark in VOC layout under ``out``, ``spec.json`` last, and return ``out``.

    The one writer behind every generator (``synth``, ``emoji``). For each split of ``splits`` and
    each index below ``spec.<split>``, ``render(spec, index, split)`` draws a sample, whose ``image``
    goes to ``JPEGImages/<id>.jpg`` and ``label`` to ``SegmentationClass/<id>.png``; ``label_dirs``
    maps another folder to the sample's attribute written there (``{"SegmentationPart": "part"}``),
    and with ``objects_file`` each sample's ``objects`` are written there as JSON lines. Then the
    id lists (``ImageSets/Segmentation/<split>.txt``), ``classes.txt`` (``spec.class_names``), the
    text ``files`` (name → content) and, last, ``spec.json`` (``spec.to_json()``). A folder is
    complete, refused or completed as :func:`open_benchmark_folder` says.
    """
    out = Path(out)
    label_dirs = dict(label_dirs or {})
    subdirs = ("JPEGImages", "SegmentationClass", *label_dirs, "ImageSets/Segmentation")
    if open_benchmark_folder(out, spec, read_spec, subdirs):
        return out
    records = []
    todo = [(split, i) for split in splits for i in range(getattr(spec, split))]
    for split, i in tqdm(todo, desc=f"{desc} -> {out}", disable=not progress, unit="img"):
        name = sample_id(split, i)
        sample = render(spec, i, split)
        save_jpeg(out / "JPEGImages" / f"{name}.jpg", sample.image)
        save_label_png(out / "SegmentationClass" / f"{name}.png", sample.label)
        for folder, attribute in label_dirs.items():
            save_label_png(out / folder / f"{name}.png", getattr(sample, attribute))
        if objects_file:
            records.append(json.dumps({"id": name, "objects": sample.objects}))
    for split in splits:
        write_lines(
            out / "ImageSets" / "Segmentation" / f"{split}.txt",
            [sample_id(split, i) for i in range(getattr(spec, split))],
        )
    if objects_file:
        write_lines(out / objects_file, records)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in spec.class_names), encoding="utf-8")
    for file_name, text in (files or {}).items():
        (out / file_name).write_text(text, encoding="utf-8")
    atomic_write_text(out / "spec.json", json.dumps(spec.to_json(), indent=2) + "\n")
    return out
