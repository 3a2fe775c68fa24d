"""The generated benchmark: deterministic, valid VOC layout, parts inside objects, clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from esol_lib.data import VOCSegmentation, read_classes
from esol_lib.data.synth import (
    SynthSpec,
    benchmark_stats,
    generate_benchmark,
    load_part_mask,
    part_recall,
    render_sample,
    sample_id,
)
from esol_lib.runtime.errors import DatasetError

SPEC = SynthSpec(train=10, val=4, size=32, num_classes=3)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".esol_cache" not in p.parts
    }


def test_same_spec_gives_byte_identical_files(tmp_path):
    a = _digest(generate_benchmark(tmp_path / "a", SPEC, progress=False))
    b = _digest(generate_benchmark(tmp_path / "b", SPEC, progress=False))
    assert a == b
    assert len([k for k in a if k.startswith("JPEGImages")]) == 14


def test_another_seed_gives_other_images():
    a = render_sample(SPEC, 0).image
    b = render_sample(dataclasses.replace(SPEC, seed=1), 0).image
    assert not np.array_equal(a, b)


def test_reader_loads_it_with_its_classes(tmp_path):
    root = generate_benchmark(tmp_path / "b", SPEC, progress=False)
    assert read_classes(root) == ["red", "green", "blue"]
    ds = VOCSegmentation(root, "train")
    assert len(ds) == 10
    sample = ds[0]
    assert sample["image"].shape == (32, 32, 3) and sample["image"].dtype == np.uint8
    assert sample["id"] == sample_id("train", 0)
    labels = ds.labels()
    assert labels.shape == (10, 3)
    assert (labels.sum(1) >= 1).all() and (labels.sum(1) <= 2).all()  # one to two classes per image


def test_objects_classes_and_parts_are_consistent():
    spec = SynthSpec(train=60, val=1, size=48, num_classes=4)
    seen = set()
    for i in range(spec.train):
        s = render_sample(spec, i)
        assert len(s.objects) in (1, 2, 3)
        assert len({o["cls"] for o in s.objects}) <= 2
        assert set(np.unique(s.label)) <= {0, 1, 2, 3, 4, 255}
        visible = (s.label > 0) & (s.label != 255)
        # parts lie on their object's pixels (or on its void border) and carry the object's class
        on_part = s.part > 0
        assert ((s.label[on_part] == s.part[on_part]) | (s.label[on_part] == 255)).all()
        assert on_part.sum() < visible.sum()  # a part is the small piece of an object
        seen |= {o["cls"] for o in s.objects}
    assert seen == {1, 2, 3, 4}


def test_part_fraction_is_what_the_spec_asks():
    spec = SynthSpec(train=40, val=1, size=64, part_fraction=0.25, void_border=0)
    part = whole = 0
    for i in range(spec.train):
        s = render_sample(spec, i)
        part += (s.part > 0).sum()
        whole += (s.label > 0).sum()
    assert 0.12 < part / whole < 0.3  # about part_fraction / (1 + small overhang), minus occlusion


def test_existing_folder_with_other_spec_is_an_error(tmp_path):
    generate_benchmark(tmp_path / "b", SPEC, progress=False)
    generate_benchmark(tmp_path / "b", SPEC, progress=False)  # same spec: nothing to do
    with pytest.raises(DatasetError, match="different spec"):
        generate_benchmark(tmp_path / "b", dataclasses.replace(SPEC, seed=5), progress=False)


def test_interrupted_generation_is_completed(tmp_path):
    root = generate_benchmark(tmp_path / "b", SPEC, progress=False)
    before = _digest(root)
    (root / "spec.json").unlink()  # as if killed before the end
    (root / "JPEGImages" / f"{sample_id('val', 3)}.jpg").unlink()
    generate_benchmark(root, SPEC, progress=False)
    assert _digest(root) == before


def test_bad_spec_names_the_field():
    with pytest.raises(DatasetError, match="num_classes"):
        SynthSpec(num_classes=99)
    with pytest.raises(DatasetError, match="object_scale"):
        SynthSpec(object_scale=(0.5, 0.2))


def test_part_recall_counts_by_hand():
    label = np.array([[1, 1, 1, 0], [1, 1, 255, 0]], np.uint8)
    part = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 1, 1], [0, 0, 0, 0]], np.uint8)
    on_part, rest = part_recall(label, part, pred)
    assert on_part.tolist() == [1, 2] and rest.tolist() == [1, 3]


def test_stats_and_part_masks(tmp_path):
    root = generate_benchmark(tmp_path / "b", SPEC, progress=False)
    stats = benchmark_stats(root)
    assert stats["splits"]["train"]["images"] == 10
    assert sum(stats["splits"]["train"]["images_per_class"].values()) >= 10
    assert 0 < stats["splits"]["train"]["part_fraction_of_foreground"] < 0.5
    assert load_part_mask(root, sample_id("train", 0)).shape == (32, 32)
    with pytest.raises(DatasetError, match="part mask"):
        load_part_mask(root, "nope")
