"""The pipeline, IRN-style: each step a function of a run folder, with its inputs and outputs on disk.

In order (chapters 01-06; ``esol <command>`` runs each alone, ``esol pipeline`` all of them)::

    pretrain.pretrain_backbone → a backbone pretrained on glyphs (--out)       esol pretrain
    baseline.train_cam       → checkpoints/baseline.pt                        esol train-cam   (01)
    expansion.expand         → checkpoints/expansion.pt                       esol expand      (02, 03)
    shrinkage.shrink         → checkpoints/shrinkage.pt                       esol shrink      (04)
    cams.make_cam            → cams/<stage>/<id>.npz                          esol make-cam    (01-04)
    cams.eval_cam            → metrics/<stage>[_crf]_<split>.json             esol eval-cam    (01-05)
    control_models.train_recam → checkpoints/recam.pt (a positive control)     esol train-recam (10)
    refinement.refine        → ir_labels/, checkpoints/irn-<stage>.pt,
                               pseudo_masks/<stage>/, metrics/mask-<stage>_*   esol refine      (05)
    segmentation.train_seg   → checkpoints/seg-<stage>.pt                     esol train-seg   (06)
    segmentation.eval_seg    → seg_predictions/, metrics/seg-<stage>_<split>  esol eval-seg    (06)

``_shared`` opens run folders and holds what the steps share; ``_esol_shared`` what the two ESOL
steps share (the underscore: neither is a step). A step module is named after what it makes, not
after its function: loading a module ``steps/<name>.py`` sets the package's attribute ``<name>`` to the module,
which would shadow a function of the same name. Any step can be re-run alone; one whose inputs are
missing names the command to run first.

Words: a **step** is one of these functions (one ``esol`` command). A **stage** is a way of making CAMs,
an entry of :data:`esol_lib.runtime.stages.STAGE_TABLE` (``--stage``, ``cams/<stage>/``): the paper's
``baseline``, ``expansion`` and ``shrinkage``, and the positive controls ``recam``, ``advcam``, ``lpcam``;
``producers.PRODUCERS`` says what makes each one's CAMs;
the refinement and segmentation steps run once per stage they refine, under the checkpoint names
``irn-<stage>`` and ``seg-<stage>``. The backbone's levels (stem, layer1-4) are *levels*; only the
config key ``frozen_stages`` keeps IRN's and mmdetection's name for them.

Its names load lazily (``_EXPORTS``): importing one module of this package never runs another, so
modules here may import their siblings without an import cycle through this ``__init__``.
"""

from __future__ import annotations

from esol_lib.runtime.lazy import lazy_namespace

#: name → the module that defines it (loaded on first use).
_EXPORTS: dict[str, str] = {
    "STAGE_COMMAND": "esol_lib.steps._shared",
    "cam_metrics_inputs": "esol_lib.steps.cams",
    "current_cam_metrics": "esol_lib.steps.cams",
    "current_seg_metrics": "esol_lib.steps.segmentation",
    "eval_cam": "esol_lib.steps.cams",
    "eval_seg": "esol_lib.steps.segmentation",
    "expand": "esol_lib.steps.expansion",
    "load_baseline": "esol_lib.steps._shared",
    "load_stage_model": "esol_lib.steps._esol_shared",
    "make_cam": "esol_lib.steps.cams",
    "notebook_run": "esol_lib.steps._shared",
    "open_run": "esol_lib.steps._shared",
    "part_localization": "esol_lib.steps.cams",
    "refine": "esol_lib.steps.refinement",
    "resolve_device": "esol_lib.steps._shared",
    "shrink": "esol_lib.steps.shrinkage",
    "stage_cam_fn": "esol_lib.steps.cams",
    "start_run": "esol_lib.steps._shared",
    "train_cam": "esol_lib.steps.baseline",
    "train_seg": "esol_lib.steps.segmentation",
    "train_recam": "esol_lib.steps.control_models",
    "make_prototypes": "esol_lib.steps.control_models",
    "cam_maker": "esol_lib.steps.producers",
    "PRODUCERS": "esol_lib.steps.producers",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
