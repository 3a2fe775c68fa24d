"""esol_lib: ESOL (Expansion and Shrinkage of Localization, NeurIPS 2022) for WSSS.

The chapters' one namespace, after Dive into Deep Learning's ``d2l``: every pipeline step, data
set, loader and figure helper a notebook needs is importable from here (``from esol_lib import
train_cam, viz``), whatever module defines it. Names load lazily on first use, so ``import
esol_lib`` (and the ``esol`` command) costs nothing until a name is asked for.

    ========================  ===============================================================
    pipeline (chapters 01-06) ``notebook_run``, ``train_cam``, ``make_cam``, ``eval_cam``,
                              ``expand``, ``shrink``, ``refine``, ``train_seg``, ``eval_seg``
    data                      ``VOCSegmentation``, ``load_mask``, ``load_cam``, ``to_tensor``, ...
    figures and tables        ``viz`` (pictures), ``charts``, ``tables``, ``widgets``
    the paper and the runs    ``paper``, ``ablation``, ``results``, ``recipes``, ``readings``,
                              ``study``, ``verdicts``, ``RunDir``
    ========================  ===============================================================

The package shows four kinds of code (docs/ARCHITECTURE.md says what may import what): ``method/``
(the paper's operations, with the networks in ``models/`` and the datasets in ``data/``),
``runtime/`` (config, run folder, training loop, processes), ``steps/`` (the pipeline) and ``book/``
(the book's code; the modules of the table above that are namespaces live there). The entry points
``cli``, ``pipeline`` and ``plan`` sit at the top.
"""

from __future__ import annotations

from esol_lib.runtime.lazy import lazy_namespace

__version__ = "0.1.0"

#: name → the module that defines it.
_EXPORTS: dict[str, str] = {
    # the pipeline, one function per step
    "notebook_run": "esol_lib.steps",
    "resolve_device": "esol_lib.steps",
    "train_cam": "esol_lib.steps",
    "make_cam": "esol_lib.steps",
    "eval_cam": "esol_lib.steps",
    "expand": "esol_lib.steps",
    "shrink": "esol_lib.steps",
    "load_stage_model": "esol_lib.steps",
    "refine": "esol_lib.steps.refinement",
    "load_irn": "esol_lib.steps.refinement",
    "ir_label_dir": "esol_lib.steps.refinement",
    "TRAIN_RADIUS_FACTOR": "esol_lib.steps.refinement",
    "train_seg": "esol_lib.steps.segmentation",
    "eval_seg": "esol_lib.steps.segmentation",
    "prediction_dir": "esol_lib.steps.segmentation",
    "seg_stage_name": "esol_lib.steps.segmentation",
    "RunDir": "esol_lib.runtime.rundir",
    "load_config": "esol_lib.runtime.config_io",
    # data
    "VOCSegmentation": "esol_lib.data",
    "load_mask": "esol_lib.data",
    "load_part_mask": "esol_lib.data",
    "benchmark_stats": "esol_lib.data",
    "emoji_stats": "esol_lib.data",
    "is_emoji_benchmark": "esol_lib.data.emoji",
    "VOC_GLYPHS": "esol_lib.data.openmoji",
    "other_glyphs": "esol_lib.data.openmoji",
    "glyph_name": "esol_lib.data.openmoji",
    "to_tensor": "esol_lib.data.transforms",
    "render_glyph_set": "esol_lib.steps.pretrain",
    "OPENMOJI_WEIGHTS": "esol_lib.models.backbone",
    # what the chapters inspect
    "load_cam": "esol_lib.method.cam",
    "sampling_points": "esol_lib.models.samplers",
    "affinity_pairs": "esol_lib.method.irn",
    "boundary_map": "esol_lib.models.boundary",
    "BACKBONE_LR_MULT": "esol_lib.method.seg_recipe",
    "aspp_lr_mult": "esol_lib.method.seg_recipe",
    "at_best_thresholds": "esol_lib.method.metrics",
    "read_metrics": "esol_lib.method.metrics",
    "load_seed_results": "esol_lib.book.results",
    "measured_under_sentence": "esol_lib.book.results",
    "claims_table": "esol_lib.book.results",
    "stage_table": "esol_lib.book.results",
    "seed_report": "esol_lib.book.results",
    "offsets_table": "esol_lib.book.results",
    "table5_table": "esol_lib.book.results",
    "run_sentences": "esol_lib.book.verdicts",
}
#: Modules the chapters use as namespaces (``viz.show_cams``, ``paper.TABLE6``): name → the module.
#: They live in ``esol_lib/book/``; ``from esol_lib import viz`` is the chapters' spelling.
_MODULES: dict[str, str] = {
    name: f"esol_lib.book.{name}"
    for name in (
        "viz",
        "charts",
        "tables",
        "widgets",
        "ablation",
        "paper",
        "results",
        "recipes",
        "controls",
        "readings",
        "study",
        "verdicts",
    )
}

__all__ = sorted([*_EXPORTS, *_MODULES])


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, _MODULES)
