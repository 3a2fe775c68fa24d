"""The emoji benchmark: VOC layout, determinism, masks equal to the rendered alpha, attribution."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from esol_lib.cli import main
from esol_lib.data import VOCSegmentation, emoji_spec_from_config, resolve_data_root
from esol_lib.data.emoji import (
    ALPHA_CUT,
    EmojiSpec,
    emoji_stats,
    generate_emoji_benchmark,
    render_emoji_sample,
    transformed_sprite,
)
from esol_lib.data.openmoji import VOC_GLYPHS, glyph_sprite, other_glyphs, voc_codepoints
from esol_lib.data.palette import VOID
from esol_lib.data.voc import VOC_CLASSES
from esol_lib.runtime.config_io import load_config
from esol_lib.runtime.errors import DatasetError

TINY = EmojiSpec(train=6, val=3, size=48)


def test_voc_classes_in_voc_order_each_with_a_glyph():
    assert tuple(VOC_GLYPHS) == tuple(VOC_CLASSES)
    for name, cps in VOC_GLYPHS.items():
        assert cps, name
        for cp in cps:
            sprite = glyph_sprite(cp)
            assert sprite.shape[2] == 4 and (sprite[..., 3] >= ALPHA_CUT).sum() > 500, (name, hex(cp))


def test_other_glyphs_are_disjoint_from_voc_and_many():
    others = set(other_glyphs())
    assert not others & voc_codepoints()
    assert len(others) > 800
    for cp in (0x1F415, 0x1F9D1, 0x1F697, 0x1F431):  # dog, person, car, cat faces never sneak in
        assert cp not in others


def test_same_spec_same_bytes_and_other_seed_differs():
    a = render_emoji_sample(TINY, 2, "train")
    b = render_emoji_sample(TINY, 2, "train")
    c = render_emoji_sample(dataclasses.replace(TINY, seed=1), 2, "train")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)


def test_scene_rules_objects_classes_and_void_ring():
    spec = EmojiSpec(train=40, val=1, size=64)
    object_counts, class_counts = set(), set()
    for i in range(spec.train):
        s = render_emoji_sample(spec, i)
        classes = {o["cls"] for o in s.objects}
        object_counts.add(len(s.objects))
        class_counts.add(len(classes))
        present = set(np.unique(s.label)) - {0, VOID}
        assert present <= classes and present  # an object may be hidden, never a foreign class
        fg = (s.label > 0) & (s.label != VOID)
        ring = np.zeros_like(fg)
        ring[1:] |= fg[:-1]
        ring[:-1] |= fg[1:]
        ring[:, 1:] |= fg[:, :-1]
        ring[:, :-1] |= fg[:, 1:]
        # every background pixel next to an object is void: the 1-px VOC ring
        assert not (ring & (s.label == 0)).any()
    assert object_counts == {1, 2, 3} and class_counts == {1, 2}  # the spec's bounds, each reached


def test_mask_is_the_rendered_alpha():
    """With no void ring and one object, the label is exactly where the glyph's alpha is >= 1/2."""
    spec = EmojiSpec(train=30, val=1, size=64, min_objects=1, max_objects=1, void_border=0, clutter=(0, 0))
    for i in range(5):
        s = render_emoji_sample(spec, i)
        obj = s.objects[0]
        # redraw the sprite with the generator's random stream to compare the alpha directly
        rng = np.random.default_rng([spec.seed, 0, i, 7])
        from esol_lib.data.emoji import background_texture

        background_texture(rng, spec.size, spec.size)
        rng.integers(0, 1)  # the clutter count (0..0)
        rng.integers(1, 2)  # objects per image
        rng.integers(1, 2)  # classes per image
        rng.choice(20, size=1, replace=False)
        rng.choice([obj["cls"]], size=0)
        glyphs = VOC_GLYPHS[obj["class"]]
        rng.integers(len(glyphs))
        _, alpha = transformed_sprite(
            rng, int(obj["glyph"][2:], 16), rng.uniform(*spec.object_scale) * spec.size, spec.max_rotation
        )
        h, w = alpha.shape
        top = int(rng.integers(-h // 3, max(spec.size - 2 * h // 3, -h // 3 + 1)))
        left = int(rng.integers(-w // 3, max(spec.size - 2 * w // 3, -w // 3 + 1)))
        full = np.zeros((spec.size, spec.size), bool)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, spec.size), min(left + w, spec.size)
        full[y0:y1, x0:x1] = alpha[y0 - top : y1 - top, x0 - left : x1 - left] >= ALPHA_CUT
        if full.sum() < 0.02 * spec.size**2:
            continue  # the generator redrew this placement
        assert np.array_equal(s.label == obj["cls"], full)


def test_generate_writes_voc_layout_with_attribution(tmp_path):
    out = generate_emoji_benchmark(tmp_path / "e", TINY, progress=False)
    assert (out / "classes.txt").read_text().split() == list(VOC_CLASSES)
    assert "CC BY-SA 4.0" in (out / "ATTRIBUTION.txt").read_text()
    ds = VOCSegmentation(out, "train")
    assert len(ds) == 6 and ds.num_classes == 20
    item = ds[0]
    assert item["image"].shape[:2] == (48, 48)
    png = Image.open(out / "SegmentationClass" / "emoji_train_00000.png")
    assert png.mode == "P"
    labels = ds.labels()
    assert labels.shape == (6, 20) and (labels.sum(1) >= 1).all()
    stats = emoji_stats(out)
    assert stats["splits"]["val"]["images"] == 3 and 1 <= stats["splits"]["train"]["mean_classes_per_image"] <= 2


def test_regenerate_is_byte_identical_and_other_spec_refused(tmp_path):
    assert main(["data", "emoji", "--out", str(tmp_path / "a"), "--train", "3", "--val", "2", "--size", "40"]) == 0
    assert main(["data", "emoji", "--out", str(tmp_path / "b"), "--train", "3", "--val", "2", "--size", "40"]) == 0
    for f in sorted((tmp_path / "a").rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    with pytest.raises(DatasetError, match="different spec"):
        generate_emoji_benchmark(tmp_path / "a", dataclasses.replace(TINY, seed=5), progress=False)
    spec = json.loads((tmp_path / "a" / "spec.json").read_text())
    assert spec["format"] == "esol-emoji-1"


def test_bad_spec_is_a_clear_error():
    with pytest.raises(DatasetError, match="object_scale"):
        EmojiSpec(object_scale=(0.9, 0.2))


def test_cpu_profile_generates_the_emoji_benchmark(tmp_path):
    cfg = load_config("cpu", ["data.emoji.train=2", "data.emoji.val=1", "data.emoji.size=40"])
    root = resolve_data_root(cfg, synth_dir=tmp_path)
    assert root == tmp_path / "emoji-cpu"
    assert (
        json.loads((root / "spec.json").read_text())["spec"] == emoji_spec_from_config(cfg.data.emoji).to_json()["spec"]
    )
