"""The emoji benchmark: a VOC-layout WSSS dataset of real object artwork in the 20 PASCAL VOC classes.

A stand-in for PASCAL VOC 2012 that a laptop can train on (``esol data emoji``). What it keeps of VOC:

* the 20 VOC classes in VOC order, drawn by OpenMoji glyphs (several per class where OpenMoji has
  them; :data:`~esol_lib.data.openmoji.VOC_GLYPHS`), with VOC's palette and a 1-px void ring
  around every object;
* objects whose whole extent carries class evidence (a dog's body, legs and tail are all dog),
  so that a classifier that looks only at the most discriminative part (the head) leaves the
  rest of the object for expansion to find, as on VOC (paper, Fig. 1);
* 1–3 objects of at most 2 classes per image (VOC: 1.5 classes and 2.4 objects per image), large
  objects (VOC's median object covers about a fifth of its image), random scale, position,
  flip, small rotation and colour jitter, truncation at the border and occlusion between objects;
* cluttered backgrounds: textures plus glyphs of classes that are not VOC classes, labelled
  background, as VOC's unlabelled stuff is.

A pixel is an object's when the glyph's alpha at that pixel is at least one half, so the mask is
exactly the rendered alpha. Everything is drawn from ``numpy.random.default_rng([seed, split,
index])``: the same spec gives byte-identical files, and any image can be re-rendered alone.
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
from esol_lib.data.openmoji import ATTRIBUTION, VOC_GLYPHS, glyph_sprite, other_glyphs
from esol_lib.data.palette import VOID
from esol_lib.runtime.errors import DatasetError

__all__ = [
    "EmojiSpec",
    "EmojiSample",
    "VOC_CLASS_NAMES",
    "generate_emoji_benchmark",
    "render_emoji_sample",
    "emoji_sample_id",
    "emoji_stats",
    "is_emoji_benchmark",
    "render_glyph_on_texture",
    "background_texture",
]

SPLITS = ("train", "val")
SPEC_FILE = "spec.json"
ATTRIBUTION_FILE = "ATTRIBUTION.txt"
FORMAT = "esol-emoji-1"
VOC_CLASS_NAMES = tuple(VOC_GLYPHS)
ALPHA_CUT = 128  # a pixel belongs to a glyph where its alpha is at least one half


@dataclass(frozen=True)
class EmojiSpec:
    """Everything that determines the emoji benchmark (same spec → same bytes).

    Attributes:
        train, val: number of images in each split.
        size: image side in pixels (square images).
        seed: generator seed; three seeds give three independent benchmarks.
        min_objects, max_objects: objects per image.
        max_classes_per_image: distinct classes per image.
        object_scale: range of an object's long side as a fraction of ``size``.
        max_rotation: largest rotation in degrees, either way.
        clutter: range of the number of background clutter glyphs.
        void_border: width in pixels of the void (255) ring around every object, as in VOC.
    """

    train: int = 1000
    val: int = 200
    size: int = 128
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 3
    max_classes_per_image: int = 2
    object_scale: tuple[float, float] = (0.4, 0.9)
    max_rotation: float = 15.0
    clutter: tuple[int, int] = (2, 6)
    void_border: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.train >= 1 and self.val >= 1, "train and val must be at least 1"),
            (self.size >= 32, "size must be at least 32 pixels"),
            (1 <= self.min_objects <= self.max_objects <= 6, "need 1 <= min_objects <= max_objects <= 6"),
            (1 <= self.max_classes_per_image <= len(VOC_CLASS_NAMES), "max_classes_per_image must be in 1..20"),
            (
                len(self.object_scale) == 2 and 0.1 <= self.object_scale[0] <= self.object_scale[1] <= 1.2,
                "object_scale must be (low, high) with 0.1 <= low <= high <= 1.2",
            ),
            (0 <= self.max_rotation <= 45, "max_rotation must be in [0, 45] degrees"),
            (
                len(self.clutter) == 2 and 0 <= self.clutter[0] <= self.clutter[1] <= 20,
                "clutter must be (low, high) with 0 <= low <= high <= 20",
            ),
            (0 <= self.void_border <= 3, "void_border must be in 0..3"),
        ]
        for ok, message in checks:
            if not ok:
                raise DatasetError(f"invalid emoji benchmark spec: {message} (got {self})")

    @property
    def class_names(self) -> list[str]:
        return list(VOC_CLASS_NAMES)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["object_scale"] = list(self.object_scale)
        d["clutter"] = list(self.clutter)
        return {"format": FORMAT, "spec": d}


@dataclass
class EmojiSample:
    """One rendered scene: image, label map and the objects drawn (class, glyph, box)."""

    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8: 0 background, 1..20 VOC class, 255 void
    objects: list[dict]


def emoji_sample_id(split: str, index: int) -> str:
    """Image id of the ``index``-th image of ``split`` (``emoji_train_00012``)."""
    return f"emoji_{split}_{index:05d}"


# ----------------------------------------------------------------------------------- drawing


def background_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A float RGB texture: a colour ramp with low-frequency tint, optional stripes and grain."""
    n = max(h, w)
    base = hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.9))
    tint = smooth_noise(rng, n, int(rng.integers(2, 8)), 3)[:h, :w] - 0.5
    img = base[None, None, :] + rng.uniform(40, 120) * tint
    if rng.random() < 0.4:  # stripes or tiles, as floors, walls and fabrics
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(0.04, 0.2) * n
        wave = np.sin(2 * np.pi * (yy * np.cos(theta) + xx * np.sin(theta)) / period)
        img = img + rng.uniform(10, 35) * wave[..., None]
    img = img + rng.normal(0.0, rng.uniform(2, 10), (h, w, 3)).astype(np.float32)
    return img.astype(np.float32)


def _jitter(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Colour jitter of a glyph: brightness, contrast and saturation in ±20 %, a small hue-free tint."""
    rgb = rgb.astype(np.float32)
    grey = rgb.mean(axis=-1, keepdims=True)
    rgb = grey + (rgb - grey) * rng.uniform(0.8, 1.2)  # saturation
    rgb = (rgb - 128.0) * rng.uniform(0.8, 1.2) + 128.0  # contrast
    rgb = rgb * rng.uniform(0.8, 1.2) + rng.uniform(-10, 10, 3)  # brightness and tint
    return rgb


def transformed_sprite(
    rng: np.random.Generator, cp: int, long_side: float, max_rotation: float, jitter: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The glyph ``cp`` scaled to ``long_side`` px, maybe flipped and rotated: (float RGB, uint8 alpha)."""
    sprite = Image.fromarray(glyph_sprite(cp))
    scale = long_side / max(sprite.size)
    w, h = max(2, round(sprite.width * scale)), max(2, round(sprite.height * scale))
    sprite = sprite.resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
    if max_rotation > 0:
        sprite = sprite.rotate(float(rng.uniform(-max_rotation, max_rotation)), Image.BILINEAR, expand=True)
    arr = np.asarray(sprite)
    rgb = _jitter(rng, arr[..., :3]) if jitter else arr[..., :3].astype(np.float32)
    return rgb, arr[..., 3]


def _paste(img: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, top: int, left: int) -> tuple[np.ndarray, tuple]:
    """Alpha-composite a sprite onto ``img`` at (top, left), cut at the border; return its full-size alpha."""
    H, W = img.shape[:2]
    h, w = alpha.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, H), min(left + w, W)
    full = np.zeros((H, W), np.uint8)
    if y0 >= y1 or x0 >= x1:
        return full, (y0, x0, y0, x0)
    a = alpha[y0 - top : y1 - top, x0 - left : x1 - left]
    af = (a.astype(np.float32) / 255.0)[..., None]
    img[y0:y1, x0:x1] = af * rgb[y0 - top : y1 - top, x0 - left : x1 - left] + (1 - af) * img[y0:y1, x0:x1]
    full[y0:y1, x0:x1] = a
    return full, (y0, x0, y1, x1)


def render_glyph_on_texture(
    rng: np.random.Generator, cp: int, size: int, scale: tuple[float, float] = (0.5, 1.0), max_rotation: float = 15.0
) -> np.ndarray:
    """One glyph over a random texture, as ``esol pretrain``'s training and held-out renders (uint8 RGB).

    The glyph's long side is ``scale`` × ``size``; it may be shifted partly out of the frame by up
    to a tenth of its size, flipped, rotated and colour-jittered.
    """
    img = background_texture(rng, size, size)
    rgb, alpha = transformed_sprite(rng, cp, rng.uniform(*scale) * size, max_rotation)
    h, w = alpha.shape
    slack_y, slack_x = size - h, size - w
    top = int(rng.integers(min(0, slack_y) - h // 10, max(0, slack_y) + h // 10 + 1))
    left = int(rng.integers(min(0, slack_x) - w // 10, max(0, slack_x) + w // 10 + 1))
    _paste(img, rgb, alpha, top, left)
    return np.clip(img, 0, 255).astype(np.uint8)


def _choose_classes(rng: np.random.Generator, spec: EmojiSpec) -> list[int]:
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    n_cls = int(rng.integers(1, min(spec.max_classes_per_image, count) + 1))
    classes = list(rng.choice(len(VOC_CLASS_NAMES), size=n_cls, replace=False) + 1)
    classes += list(rng.choice(classes, size=count - n_cls))
    return [int(k) for k in classes]


def render_emoji_sample(spec: EmojiSpec, index: int, split: str = "train") -> EmojiSample:
    """Render scene ``index`` of ``split`` (deterministic in ``spec.seed``, ``split`` and ``index``).

    Clutter glyphs are drawn first (background), then the objects in order; a later object hides
    what it covers of an earlier one. A placement that would hide more than half of an earlier
    object's visible pixels is redrawn (up to 20 tries).
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown benchmark split {split!r}; use one of {SPLITS}")
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index, 7])
    n = spec.size
    img = background_texture(rng, n, n)
    clutter_pool = other_glyphs()
    for _ in range(int(rng.integers(spec.clutter[0], spec.clutter[1] + 1))):
        cp = int(clutter_pool[int(rng.integers(len(clutter_pool)))])
        rgb, alpha = transformed_sprite(rng, cp, rng.uniform(0.15, 0.45) * n, 30.0)
        rgb = rgb * 0.7 + 0.3 * rgb.mean(axis=-1, keepdims=True)  # a little duller than objects
        h, w = alpha.shape
        _paste(img, rgb, alpha, int(rng.integers(-h // 3, n - 2 * h // 3)), int(rng.integers(-w // 3, n - 2 * w // 3)))
    owner = np.zeros((n, n), np.int16)  # 0: background, i: object i (1-based) owns the pixel
    objects: list[dict] = []
    for k in _choose_classes(rng, spec):
        glyphs = VOC_GLYPHS[VOC_CLASS_NAMES[k - 1]]
        cp = int(glyphs[int(rng.integers(len(glyphs)))])
        for _attempt in range(20):
            rgb, alpha = transformed_sprite(rng, cp, rng.uniform(*spec.object_scale) * n, spec.max_rotation)
            h, w = alpha.shape
            # the centre anywhere in the frame: objects near the border are truncated
            top = int(rng.integers(-h // 3, max(n - 2 * h // 3, -h // 3 + 1)))
            left = int(rng.integers(-w // 3, max(n - 2 * w // 3, -w // 3 + 1)))
            probe = np.zeros((n, n), bool)
            y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, n), min(left + w, n)
            probe[y0:y1, x0:x1] = alpha[y0 - top : y1 - top, x0 - left : x1 - left] >= ALPHA_CUT
            if probe.sum() < 0.02 * n * n:
                continue
            if all((probe & (owner == i)).sum() <= 0.5 * (owner == i).sum() for i in range(1, len(objects) + 1)):
                break
        full_alpha, box = _paste(img, rgb, alpha, top, left)
        i = len(objects) + 1
        owner[full_alpha >= ALPHA_CUT] = i
        objects.append({"cls": k, "class": VOC_CLASS_NAMES[k - 1], "glyph": f"U+{cp:04X}", "box": list(box)})
    label = np.zeros((n, n), np.uint8)
    cls_of = np.array([0] + [o["cls"] for o in objects], np.uint8)
    label[:] = cls_of[owner]
    for o_idx, obj in enumerate(objects, start=1):
        visible = owner == o_idx
        obj["pixels"] = int(visible.sum())
        if spec.void_border:  # VOC-style void ring just outside each object's outline
            label[dilate(visible, spec.void_border) & ~visible] = VOID
    image = np.clip(img, 0, 255).astype(np.uint8)
    return EmojiSample(image=image, label=label, objects=objects)


# ----------------------------------------------------------------------------------- writing


def _spec_from_json(d: dict) -> EmojiSpec | None:
    try:
        if d.get("format") != FORMAT:
            return None
        values = dict(d["spec"])
        values["object_scale"] = tuple(values["object_scale"])
        values["clutter"] = tuple(values["clutter"])
        return EmojiSpec(**values)
    except (KeyError, TypeError, DatasetError):
        return None


def is_emoji_benchmark(root: str | Path) -> bool:
    """Whether ``root`` holds a complete emoji benchmark (its ``spec.json`` is an emoji spec)."""
    path = Path(root) / SPEC_FILE
    try:
        return _spec_from_json(json.loads(path.read_text(encoding="utf-8"))) is not None
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def generate_emoji_benchmark(out: str | Path, spec: EmojiSpec | None = None, *, progress: bool = True) -> Path:
    """Write the emoji benchmark described by ``spec`` in VOC layout under ``out`` and return ``out``.

    Writes ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/{train,val}.txt``,
    ``classes.txt``, ``objects.jsonl`` (the objects of every image), ``ATTRIBUTION.txt`` (OpenMoji's
    licence) and, last, ``spec.json``. A folder whose ``spec.json`` matches ``spec`` is complete and
    left alone; one with another spec is an error; one without ``spec.json`` (an interrupted run) is
    completed.
    """
    return write_benchmark(
        Path(out),
        spec or EmojiSpec(),
        read_spec=_spec_from_json,
        sample_id=emoji_sample_id,
        render=render_emoji_sample,
        objects_file="objects.jsonl",
        files={ATTRIBUTION_FILE: ATTRIBUTION + "\n"},
        splits=SPLITS,
        desc="emoji benchmark",
        progress=progress,
    )


# ----------------------------------------------------------------------------------- measuring


def emoji_stats(root: str | Path) -> dict:
    """Per-split statistics of an emoji benchmark: images per class, classes and objects per image,
    each object's visible area as a fraction of the image, foreground and void fractions."""
    root = Path(root)
    spec = _spec_from_json(json.loads((root / SPEC_FILE).read_text(encoding="utf-8")))
    if spec is None:
        raise DatasetError(
            f"{root / SPEC_FILE} is missing or not an emoji benchmark; regenerate it with esol data emoji"
        )
    per_image = {}
    for line in (root / "objects.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        per_image[rec["id"]] = rec["objects"]
    stats: dict = {"spec": spec.to_json()["spec"], "classes": spec.class_names, "splits": {}}
    for split in SPLITS:
        ids = [emoji_sample_id(split, i) for i in range(getattr(spec, split))]
        images_per_class = np.zeros(len(VOC_CLASS_NAMES), np.int64)
        classes_per_image, objects_per_image, areas, fg, void = [], [], [], 0, 0
        for name in ids:
            objs = per_image[name]
            present = sorted({o["cls"] for o in objs})
            classes_per_image.append(len(present))
            objects_per_image.append(len(objs))
            areas += [o["pixels"] / spec.size**2 for o in objs]
            for k in present:
                images_per_class[k - 1] += 1
            label = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))
            fg += int(((label > 0) & (label != VOID)).sum())
            void += int((label == VOID).sum())
        total = len(ids) * spec.size**2
        stats["splits"][split] = {
            "images": len(ids),
            "images_per_class": dict(zip(spec.class_names, images_per_class.tolist())),
            "classes_per_image": classes_per_image,
            "objects_per_image": objects_per_image,
            "object_area_fraction": areas,
            "mean_classes_per_image": float(np.mean(classes_per_image)),
            "mean_objects_per_image": float(np.mean(objects_per_image)),
            "foreground_fraction": fg / total,
            "void_fraction": void / total,
        }
    return stats
