"""The PASCAL VOC colour palette and palette-PNG label files (index = class, 255 = void)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from esol_lib.runtime.atomic import atomic_path

VOID = 255


def voc_palette(n: int = 256) -> np.ndarray:
    """Return the standard VOC palette as an ``(n, 3)`` uint8 array (bit-interleaved colour map)."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def save_label_png(path: str | Path, label: np.ndarray) -> None:
    """Write an ``(H, W)`` integer label map as a VOC palette PNG (mode ``P``).

    Values must lie in ``[0, 255]``; 255 is void. The file is written atomically
    (temporary file, then rename) so an interrupted run never leaves half a PNG.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label map for {path} has values outside [0, 255]")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
