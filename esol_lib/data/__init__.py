"""Datasets in VOC layout: the reader, the generated benchmark, and converters for COCO and SBD.

Its names load lazily (``_EXPORTS``): importing one module of this package never runs another, so
modules here may import their siblings without an import cycle through this ``__init__``.
"""

from __future__ import annotations

from esol_lib.runtime.lazy import lazy_namespace

#: name → the module that defines it (loaded on first use).
_EXPORTS: dict[str, str] = {
    "EmojiSpec": "esol_lib.data.emoji",
    "GENERATORS": "esol_lib.data.benchmark",
    "MissingDependencyError": "esol_lib.runtime.errors",
    "SynthSpec": "esol_lib.data.synth",
    "VOCSegmentation": "esol_lib.data.voc",
    "VOC_CLASSES": "esol_lib.data.voc",
    "VOID": "esol_lib.data.palette",
    "available_splits": "esol_lib.data.voc",
    "benchmark_stats": "esol_lib.data.synth",
    "emoji_spec_from_config": "esol_lib.data.benchmark",
    "emoji_stats": "esol_lib.data.emoji",
    "generate_benchmark": "esol_lib.data.synth",
    "generate_emoji_benchmark": "esol_lib.data.emoji",
    "labels_from_mask": "esol_lib.data.voc",
    "load_image": "esol_lib.data.voc",
    "load_mask": "esol_lib.data.voc",
    "load_part_mask": "esol_lib.data.synth",
    "part_recall": "esol_lib.data.synth",
    "read_classes": "esol_lib.data.voc",
    "read_split": "esol_lib.data.voc",
    "render_emoji_sample": "esol_lib.data.emoji",
    "resolve_data_root": "esol_lib.data.benchmark",
    "save_label_png": "esol_lib.data.palette",
    "synth_spec_from_config": "esol_lib.data.benchmark",
    "voc_palette": "esol_lib.data.palette",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
