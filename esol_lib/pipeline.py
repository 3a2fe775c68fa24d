"""``esol pipeline``: every stage in order on one run folder, resuming where a previous run stopped.

A stage whose outputs are complete is skipped (training stages keep a finished checkpoint, CAM
folders skip images already written, metrics are recomputed only when their CAMs are newer);
a stage that was interrupted is resumed or redone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from esol_lib.runtime.distributed import all_gather_object, init_distributed
from esol_lib.runtime.rundir import RunDir, holds_run_lock
from esol_lib.runtime.stages import METHOD_STAGES, REFINED_STAGES
from esol_lib.steps import current_cam_metrics, eval_cam, expand, make_cam, shrink, train_cam
from esol_lib.steps.refinement import refine as refine_stage
from esol_lib.steps.segmentation import current_seg_metrics, eval_seg, train_seg

__all__ = ["PipelineStep", "REFINED_STAGES", "TRAINERS", "pipeline_steps", "run_pipeline"]


@dataclass
class PipelineStep:
    name: str
    action: Callable[[], object]
    done: Callable[[], bool] = field(default=lambda: False)


#: What trains each of the method's stages (the stage table's ``METHOD_STAGES``, in order).
TRAINERS = {"baseline": train_cam, "expansion": expand, "shrinkage": shrink}
assert tuple(TRAINERS) == METHOD_STAGES, "TRAINERS must follow esol_lib.runtime.stages.METHOD_STAGES"


def pipeline_steps(
    run: RunDir, *, progress: bool = True, crf: bool = True, refine: bool = True, segment: bool = True
) -> list[PipelineStep]:
    """The ordered steps of the full pipeline for ``run``.

    Seeds of every stage (train → make-cam → eval-cam [--crf]); then, for the baseline and the
    shrinkage stage, IRN pseudo masks (``refine``) and DeepLab-v2 trained on them and scored on
    ``data.val_split`` (``segment``).
    """
    cfg = run.load_config()
    split = cfg.data.cam_split
    steps: list[PipelineStep] = []
    for stage, trainer in TRAINERS.items():
        steps.append(PipelineStep(f"train {stage}", lambda t=trainer: t(run, progress=progress)))
        steps.append(PipelineStep(f"make-cam {stage}", lambda s=stage: make_cam(run, s, split, progress=progress)))
        steps.append(
            PipelineStep(
                f"eval-cam {stage}",
                lambda s=stage: eval_cam(run, s, split, progress=progress),
                lambda s=stage: current_cam_metrics(run, s, split) is not None,
            )
        )
        if crf:
            steps.append(
                PipelineStep(
                    f"eval-cam --crf {stage}",
                    lambda s=stage: eval_cam(run, s, split, crf=True, progress=progress),
                    lambda s=stage: current_cam_metrics(run, s, split, crf=True) is not None,
                )
            )
    if refine:
        for stage in REFINED_STAGES:
            steps.append(PipelineStep(f"refine {stage}", lambda s=stage: refine_stage(run, s, progress=progress)))
    if refine and segment:
        for stage in REFINED_STAGES:
            steps.append(PipelineStep(f"train-seg {stage}", lambda s=stage: train_seg(run, s, progress=progress)))
            steps.append(
                PipelineStep(
                    f"eval-seg {stage}",
                    lambda s=stage: eval_seg(run, s, progress=progress),
                    lambda s=stage: current_seg_metrics(run, s, cfg.data.val_split) is not None,
                )
            )
    return steps


@holds_run_lock
def run_pipeline(
    run: RunDir,
    *,
    progress: bool = True,
    crf: bool = True,
    refine: bool = True,
    segment: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run every step not yet complete; returns seconds per step (0 for skipped ones)."""
    times: dict[str, float] = {}
    init_distributed()  # under torchrun: the group every rank's decisions below go through
    for step in pipeline_steps(run, progress=progress, crf=crf, refine=refine, segment=segment):
        # Under torchrun every rank takes rank 0's answer: a rank asking later could find the outputs
        # rank 0 is writing, skip the step and fall out of step with the others' collectives.
        if all_gather_object(step.done())[0]:
            log(f"[skip] {step.name}: outputs complete")
            times[step.name] = 0.0
            continue
        start = time.perf_counter()
        step.action()
        times[step.name] = time.perf_counter() - start
        log(f"[done] {step.name}: {times[step.name]:.1f} s")
    return times
