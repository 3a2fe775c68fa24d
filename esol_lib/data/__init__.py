"""Datasets in VOC layout: the reader, the generated benchmark, and converters for COCO and SBD."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from esol_lib.data.palette import VOID, save_label_png, voc_palette
from esol_lib.data.synth import SynthSpec, benchmark_stats, generate_benchmark, load_part_mask, part_recall
from esol_lib.data.voc import (
    VOC_CLASSES, VOCSegmentation, available_splits, labels_from_mask, load_image, load_mask, read_classes,
    read_split,
)
from esol_lib.errors import MissingDependencyError

__all__ = [
    "VOID", "VOC_CLASSES", "MissingDependencyError", "SynthSpec", "VOCSegmentation", "available_splits",
    "benchmark_stats", "generate_benchmark", "labels_from_mask", "load_image", "load_mask", "load_part_mask",
    "part_recall", "read_classes", "read_split", "resolve_data_root", "save_label_png",
    "synth_spec_from_config", "voc_palette",
]


def synth_spec_from_config(synth_cfg=None) -> SynthSpec:
    """The :class:`SynthSpec` described by a config's ``data.synth`` section (defaults when None)."""
    if synth_cfg is None:
        return SynthSpec()
    values = dataclasses.asdict(synth_cfg)
    values["object_scale"] = tuple(values["object_scale"])
    return SynthSpec(**values)


def resolve_data_root(cfg, data_root: str | Path | None = None, *, generate: bool = True,
                      synth_dir: str | Path = "data") -> Path:
    """The dataset root a run uses: ``--data-root``, else ``data.root``, else the generated benchmark.

    With neither set, the benchmark described by ``data.synth`` lives in ``<synth_dir>/synth-<profile>`` and
    is generated there when missing (deterministic, so regenerating gives the same files).
    """
    if data_root:
        return Path(data_root)
    if cfg.data.root:
        return Path(cfg.data.root)
    root = Path(synth_dir) / f"synth-{cfg.profile}"
    if generate:
        generate_benchmark(root, synth_spec_from_config(cfg.data.synth))
    return root
