"""The pipeline, IRN-style: each step a function of a run folder, with its inputs and outputs on disk.

In order (chapters 01-06; ``esol <command>`` runs each alone, ``esol pipeline`` all of them)::

    baseline.train_cam       → checkpoints/baseline.pt                        esol train-cam   (01)
    expansion.expand         → checkpoints/expansion.pt                       esol expand      (02, 03)
    shrinkage.shrink         → checkpoints/shrinkage.pt                       esol shrink      (04)
    cams.make_cam            → cams/<stage>/<id>.npz                          esol make-cam    (01-04)
    cams.eval_cam            → metrics/<stage>[_crf]_<split>.json             esol eval-cam    (01-05)
    refinement.refine        → ir_labels/, checkpoints/irn-<stage>.pt,
                               pseudo_masks/<stage>/, metrics/mask-<stage>_*   esol refine      (05)
    segmentation.train_seg   → checkpoints/seg-<stage>.pt                     esol train-seg   (06)
    segmentation.eval_seg    → seg_predictions/, metrics/seg-<stage>_<split>  esol eval-seg    (06)

``common`` opens run folders and holds what the steps share; ``esol_training`` what the two ESOL
steps share. Any step can be re-run alone; one whose inputs are missing names the command to run
first.

Words: a **step** is one of these functions (one ``esol`` command). A **stage** is one of the
paper's three CAM models, ``baseline``, ``expansion`` and ``shrinkage`` (``--stage``, ``cams/<stage>/``);
the refinement and segmentation steps run once per stage they refine, under the checkpoint names
``irn-<stage>`` and ``seg-<stage>``. The backbone's levels (stem, layer1-4) are *levels*; only the
config key ``frozen_stages`` keeps IRN's and mmdetection's name for them.
"""

from esol_lib.steps._esol_shared import load_stage_model
from esol_lib.steps._shared import (
    STAGE_COMMAND,
    load_baseline,
    notebook_run,
    open_run,
    resolve_device,
    start_run,
)
from esol_lib.steps.baseline import train_cam
from esol_lib.steps.cams import (
    cam_metrics_inputs,
    current_cam_metrics,
    eval_cam,
    make_cam,
    part_localization,
    stage_cam_fn,
)
from esol_lib.steps.expansion import expand
from esol_lib.steps.refinement import refine
from esol_lib.steps.segmentation import current_seg_metrics, eval_seg, train_seg
from esol_lib.steps.shrinkage import shrink

__all__ = [
    "STAGE_COMMAND",
    "cam_metrics_inputs",
    "current_cam_metrics",
    "current_seg_metrics",
    "eval_cam",
    "eval_seg",
    "expand",
    "load_baseline",
    "load_stage_model",
    "make_cam",
    "notebook_run",
    "open_run",
    "part_localization",
    "refine",
    "resolve_device",
    "shrink",
    "stage_cam_fn",
    "start_run",
    "train_cam",
    "train_seg",
]
