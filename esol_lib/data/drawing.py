"""Drawing and writing helpers shared by the dataset generators (``synth``, ``emoji``) and converters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["hsv_to_rgb", "smooth_noise", "dilate", "save_jpeg", "write_lines"]


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
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def write_lines(path: Path, lines: list[str]) -> None:
    """Write one item per line, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{i}\n" for i in lines), encoding="utf-8")
    tmp.replace(path)


def save_jpeg(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image as JPEG quality 95 without chroma subsampling, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="JPEG", quality=95, subsampling=0)
    tmp.replace(path)
