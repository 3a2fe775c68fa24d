"""Drawing and writing helpers shared by the dataset generators (``synth``, ``emoji``) and converters."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from esol_lib.runtime.atomic import atomic_path, atomic_write_text
from esol_lib.runtime.errors import DatasetError

__all__ = ["hsv_to_rgb", "smooth_noise", "dilate", "save_jpeg", "write_lines", "open_benchmark_folder"]


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
