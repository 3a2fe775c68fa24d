"""The generated benchmark: a small VOC-layout dataset that shows the partial-localization problem.

Every object is a **body** whose look is shared by all classes (a striped, tan ellipse) carrying a
small **discriminative part** whose colour says the class (a disc near one end of the body, like a
head). An image classifier only needs the part to name the class, so its CAM lights up the part and
leaves most of the body dark: the problem ESOL's expansion attacks (paper, Fig. 1). Objects sit on
cluttered, textured backgrounds whose shapes are desaturated, so they never look like a part.

Besides the VOC files the generator writes ``SegmentationPart/<id>.png``: the class index on the
part's pixels and 0 elsewhere, so that how much of the part and of the rest of each object a seed
covers can be measured (:func:`part_recall`).

Everything is drawn from ``numpy.random.default_rng([seed, split, index])``: the same spec gives
byte-identical files, and any one image can be re-rendered alone (:func:`render_sample`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from esol_lib.data.drawing import (
    dilate,
    hsv_to_rgb,
    smooth_noise,
    write_benchmark,
)
from esol_lib.data.palette import VOID
from esol_lib.runtime.errors import DatasetError

__all__ = [
    "SynthSpec",
    "SynthSample",
    "CLASS_NAMES",
    "generate_benchmark",
    "render_sample",
    "benchmark_stats",
    "sample_id",
    "part_recall",
]

SPLITS = ("train", "val")
PART_DIR = "SegmentationPart"
SPEC_FILE = "spec.json"
FORMAT_VERSION = 1
# Class names are the part's colour; the body is the same for every class.
CLASS_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "violet", "lime", "pink", "teal", "brown")
# Part hues (HSV, in turns), one per class, as far apart as the class count allows.
_PART_HUES = (0.0, 0.33, 0.62, 0.15, 0.83, 0.5, 0.08, 0.73, 0.25, 0.93, 0.44, 0.05)
_PART_SAT = (0.85, 0.75, 0.8, 0.85, 0.7, 0.75, 0.9, 0.6, 0.8, 0.45, 0.8, 0.75)
_PART_VAL = (0.9, 0.75, 0.9, 0.95, 0.85, 0.85, 0.95, 0.8, 0.9, 0.95, 0.6, 0.5)


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines the generated benchmark (same spec → same bytes).

    Attributes:
        train, val: number of images in each split.
        size: image side in pixels (square images).
        seed: generator seed; three seeds give three independent benchmarks.
        num_classes: foreground classes (at most 12), named after their part's colour.
        min_objects, max_objects: objects per image.
        max_classes_per_image: distinct classes per image (VOC images rarely have more than two).
        object_scale: range of the body's length (its long axis) as a fraction of ``size``.
        part_fraction: area of the discriminative part relative to the body's area.
        void_border: width in pixels of the void (255) ring drawn around every object, as in VOC.
    """

    train: int = 1000
    val: int = 200
    size: int = 64
    seed: int = 0
    num_classes: int = 4
    min_objects: int = 1
    max_objects: int = 3
    max_classes_per_image: int = 2
    object_scale: tuple[float, float] = (0.4, 0.65)
    part_fraction: float = 0.25
    void_border: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.train >= 1 and self.val >= 1, "train and val must be at least 1"),
            (self.size >= 16, "size must be at least 16 pixels"),
            (1 <= self.num_classes <= len(CLASS_NAMES), f"num_classes must be in 1..{len(CLASS_NAMES)}"),
            (1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects"),
            (self.max_classes_per_image >= 1, "max_classes_per_image must be at least 1"),
            (
                len(self.object_scale) == 2 and 0.05 <= self.object_scale[0] <= self.object_scale[1] <= 0.9,
                "object_scale must be (low, high) with 0.05 <= low <= high <= 0.9",
            ),
            (0.02 <= self.part_fraction <= 0.6, "part_fraction must be in [0.02, 0.6]"),
            (0 <= self.void_border <= 3, "void_border must be in 0..3"),
        ]
        for ok, message in checks:
            if not ok:
                raise DatasetError(f"invalid benchmark spec: {message} (got {self})")

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES[: self.num_classes])

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["object_scale"] = list(self.object_scale)
        return {"format": FORMAT_VERSION, "spec": d}


@dataclass
class SynthSample:
    """One rendered image with its label map, part map and object list."""

    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8: 0 background, 1..K class, 255 void
    part: np.ndarray  # (H, W) uint8: class index on part pixels, else 0
    objects: list[dict]


def sample_id(split: str, index: int) -> str:
    """Image id of the ``index``-th image of ``split`` (``synth_train_00012``)."""
    return f"synth_{split}_{index:05d}"


# ----------------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Textured, cluttered background: coloured smooth noise, fine grain and desaturated shapes."""
    base = hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.4), rng.uniform(0.35, 0.75))
    tint = smooth_noise(rng, n, int(rng.integers(3, 7)), 3) - 0.5
    img = base[None, None, :] + 90.0 * tint + rng.normal(0.0, 10.0, (n, n, 3)).astype(np.float32)
    for _ in range(int(rng.integers(3, 8))):  # clutter: rectangles, rings and lines
        colour = hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.95))
        cy, cx = rng.uniform(0, n, 2)
        r = rng.uniform(0.05, 0.2) * n
        kind = int(rng.integers(3))
        if kind == 0:
            mask = (np.abs(yy - cy) < r * rng.uniform(0.3, 1.0)) & (np.abs(xx - cx) < r)
        elif kind == 1:
            d = np.hypot(yy - cy, xx - cx)
            mask = (d < r) & (d > r * 0.6)
        else:
            theta = rng.uniform(0, np.pi)
            dist = np.abs((yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta))
            mask = dist < max(0.8, 0.02 * n)
        img[mask] = 0.5 * img[mask] + 0.5 * colour
    return img


def _body_texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The look shared by every class: tan stripes at a random angle and period."""
    light = hsv_to_rgb(0.09 + rng.uniform(-0.02, 0.02), rng.uniform(0.3, 0.45), rng.uniform(0.7, 0.85))
    dark = hsv_to_rgb(0.07 + rng.uniform(-0.02, 0.02), rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55))
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 6.0)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (yy * np.cos(theta) + xx * np.sin(theta)) / period)
    return dark[None, None] + wave[..., None] * (light - dark)[None, None]


def _place_objects(rng: np.random.Generator, spec: SynthSpec) -> list[dict]:
    """Sample 1–3 objects (at most ``max_classes_per_image`` classes), limiting overlap."""
    n = spec.size
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    n_cls = int(rng.integers(1, min(spec.max_classes_per_image, count, spec.num_classes) + 1))
    classes = list(rng.choice(spec.num_classes, size=n_cls, replace=False) + 1)
    classes += list(rng.choice(classes, size=count - n_cls))
    objects: list[dict] = []
    for cls in classes:
        for _ in range(30):  # rejection sampling: keep bodies from hiding each other
            a = rng.uniform(*spec.object_scale) * n / 2  # long radius
            b = a * rng.uniform(0.55, 0.85)
            cy, cx = rng.uniform(a * 0.8, n - a * 0.8, 2)
            if all(np.hypot(cy - o["cy"], cx - o["cx"]) > 0.75 * (a + o["a"]) for o in objects):
                break
        theta = rng.uniform(0, 2 * np.pi)
        rp = float(np.sqrt(spec.part_fraction * a * b))
        off = a - 0.9 * rp  # part centre near one end of the long axis
        objects.append(
            {
                "cls": int(cls),
                "cy": float(cy),
                "cx": float(cx),
                "a": float(a),
                "b": float(b),
                "theta": float(theta),
                "rp": rp,
                "py": float(cy + off * np.sin(theta)),
                "px": float(cx + off * np.cos(theta)),
            }
        )
    return objects


def render_sample(spec: SynthSpec, index: int, split: str = "train") -> SynthSample:
    """Render image ``index`` of ``split`` (deterministic in ``spec.seed``, ``split`` and ``index``)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown benchmark split {split!r}; use one of {SPLITS}")
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
    n = spec.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    img = _background(rng, n, yy, xx)
    label = np.zeros((n, n), np.uint8)
    part_map = np.zeros((n, n), np.uint8)
    objects = _place_objects(rng, spec)
    for obj in objects:
        k = obj["cls"]
        dy, dx = yy - obj["cy"], xx - obj["cx"]
        c, s = np.cos(obj["theta"]), np.sin(obj["theta"])
        u, v = dx * c + dy * s, -dx * s + dy * c
        body = (u / obj["a"]) ** 2 + (v / obj["b"]) ** 2 <= 1.0
        part = np.hypot(yy - obj["py"], xx - obj["px"]) <= obj["rp"]
        whole = body | part
        img[body] = _body_texture(rng, yy, xx)[body] * rng.uniform(0.9, 1.1)
        hue = _PART_HUES[k - 1] + rng.uniform(-0.02, 0.02)
        colour = hsv_to_rgb(hue, _PART_SAT[k - 1], _PART_VAL[k - 1] * rng.uniform(0.85, 1.0))
        img[part] = colour + rng.normal(0.0, 8.0, (int(part.sum()), 3))
        if spec.void_border:  # VOC-style void ring just outside the object's outline
            label[dilate(whole, spec.void_border) & ~whole] = VOID
        label[whole] = k
        part_map[whole] = 0  # an object in front hides the parts behind it
        part_map[part] = k
    image = np.clip(img, 0, 255).astype(np.uint8)
    return SynthSample(image=image, label=label, part=part_map, objects=objects)


# ----------------------------------------------------------------------------------- writing


def _spec_from_json(d: dict) -> SynthSpec | None:
    try:
        if d.get("format") != FORMAT_VERSION:
            return None
        values = dict(d["spec"])
        values["object_scale"] = tuple(values["object_scale"])
        return SynthSpec(**values)
    except (KeyError, TypeError, DatasetError):
        return None


def generate_benchmark(out: str | Path, spec: SynthSpec | None = None, *, progress: bool = True) -> Path:
    """Write the benchmark described by ``spec`` in VOC layout under ``out`` and return ``out``.

    Writes ``JPEGImages/``, ``SegmentationClass/``, ``SegmentationPart/``,
    ``ImageSets/Segmentation/{train,val}.txt``, ``classes.txt`` and, last, ``spec.json``. A folder
    whose ``spec.json`` matches ``spec`` is complete and left alone; one with a different spec is an
    error (pick another folder); one without ``spec.json`` (an interrupted run) is completed.
    """
    return write_benchmark(
        Path(out),
        spec or SynthSpec(),
        read_spec=_spec_from_json,
        sample_id=sample_id,
        render=render_sample,
        label_dirs={PART_DIR: "part"},
        splits=SPLITS,
        progress=progress,
    )


# ----------------------------------------------------------------------------------- measuring


def load_part_mask(root: str | Path, image_id: str) -> np.ndarray:
    """The part map of ``image_id`` (class index on discriminative-part pixels, else 0)."""
    path = Path(root) / PART_DIR / f"{image_id}.png"
    if not path.is_file():
        raise DatasetError(
            f"part mask {path} is missing; part masks exist only for the generated "
            "benchmark (esol data synth writes them)"
        )
    return np.asarray(Image.open(path))


def part_recall(label: np.ndarray, part: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts for recall on discriminative parts vs on the rest of each object.

    Returns two ``[hit, total]`` pairs: part pixels predicted as their class, and object pixels
    outside the part predicted as their class (void ignored). Sum them over a split and divide.
    """
    obj = (label > 0) & (label != VOID)
    on_part = obj & (part > 0)
    rest = obj & (part == 0)
    hit = pred == label
    return (
        np.array([(hit & on_part).sum(), on_part.sum()], np.int64),
        np.array([(hit & rest).sum(), rest.sum()], np.int64),
    )


def benchmark_stats(root: str | Path) -> dict:
    """Statistics of a generated benchmark (image counts, class frequencies, object and part sizes)."""
    root = Path(root)
    spec = _spec_from_json(json.loads((root / SPEC_FILE).read_text(encoding="utf-8")))
    if spec is None:
        raise DatasetError(f"{root / SPEC_FILE} is missing or unreadable; regenerate with esol data synth")
    stats: dict = {"spec": spec.to_json()["spec"], "classes": spec.class_names, "splits": {}}
    for split in SPLITS:
        ids = [sample_id(split, i) for i in range(getattr(spec, split))]
        images_per_class = np.zeros(spec.num_classes, np.int64)
        classes_per_image, fg, part_px, void = [], 0, 0, 0
        for name in ids:
            label = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))
            part = np.asarray(Image.open(root / PART_DIR / f"{name}.png"))
            present = [k for k in np.unique(label) if 0 < k <= spec.num_classes]
            classes_per_image.append(len(present))
            for k in present:
                images_per_class[k - 1] += 1
            fg += int(((label > 0) & (label != VOID)).sum())
            part_px += int(((part > 0) & (label > 0) & (label != VOID)).sum())
            void += int((label == VOID).sum())
        total = len(ids) * spec.size**2
        stats["splits"][split] = {
            "images": len(ids),
            "images_per_class": dict(zip(spec.class_names, images_per_class.tolist())),
            "mean_classes_per_image": float(np.mean(classes_per_image)),
            "foreground_fraction": fg / total,
            "void_fraction": void / total,
            "part_fraction_of_foreground": part_px / max(fg, 1),
        }
    return stats
