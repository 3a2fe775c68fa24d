"""What the two ESOL stages share (§3.2–3.3): the model built on the trained baseline, its loader and loop.

:mod:`esol_lib.steps.expansion` and :mod:`esol_lib.steps.shrinkage` each train one sampler's
offsets of :class:`~esol_lib.models.esol.ESOLModel` with these; :class:`OffsetGuard` stops a stage
whose offsets run away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from esol_lib.models.esol import UNTRAINED_IN_EXPANSION, ESOLModel
from esol_lib.runtime.checkpoint import load_stage_checkpoint, save_untrained_stage
from esol_lib.runtime.distributed import init_distributed, wrap_ddp
from esol_lib.runtime.engine import train_loop
from esol_lib.runtime.errors import DivergenceError
from esol_lib.runtime.feature_cache import cached_backbone
from esol_lib.runtime.schedule import PolyLR, stage_sgd
from esol_lib.runtime.stages import stage_spec
from esol_lib.steps._shared import cam_training_loader, load_baseline, stage_inputs

__all__ = ["OffsetGuard", "build_esol_model", "load_stage_model", "stage_loader", "train_esol_stage"]


@dataclass
class OffsetGuard:
    """Stops a stage whose offsets run away (§4.1 gives no bound; the CPU prototype saw tens of cells).

    Loss maximisation has no natural end, and shrinkage at a high learning rate can push offsets
    far outside the feature map while the loss still looks fine. Called after every step.
    """

    stage: str
    sampler: nn.Module
    max_offset: float

    def __call__(self, step: int, model: nn.Module, logs: dict) -> None:
        magnitude = float(getattr(self.sampler, "last_offset_magnitude", 0.0))
        logs["offset"] = magnitude
        if not magnitude == magnitude or magnitude > self.max_offset:  # NaN or runaway
            raise DivergenceError(
                f"stage {self.stage!r}, step {step}: the sampler's mean |offset| is {magnitude:.3g} feature "
                f"cells, above the bound {self.stage}.max_offset = {self.max_offset}; the offsets ran away. "
                f"Lower {self.stage}.lr (or expansion.alpha); the last good checkpoint is kept"
            )


def build_esol_model(cfg, num_classes: int, run=None, device: torch.device | str = "cpu") -> ESOLModel:
    """The ESOL model on top of the run's trained baseline (``checkpoints/baseline.pt``)."""
    baseline = load_baseline(run, cfg, num_classes, torch.device(device))
    model = ESOLModel(baseline, cfg.expansion, cfg.shrinkage).to(device)
    return model.use_feature_cache(
        cached_backbone(model.backbone, cfg.feature_cache_mb, run.feature_cache() if run is not None else None)
    )


def load_stage_model(run, cfg, stage: str, num_classes: int, device: torch.device) -> ESOLModel:
    """The ESOL model after ``stage`` (``expansion`` or ``shrinkage``), in eval mode."""
    model = build_esol_model(cfg, num_classes, run, device)
    command = stage_spec(stage).command
    load_stage_checkpoint(
        run,
        stage,
        model,
        hint=f"run `{command} --run {run.root}` first",
        optional=UNTRAINED_IN_EXPANSION if stage == "expansion" else (),
        inputs=stage_inputs(run, cfg, stage),
    )
    return model.eval()


def stage_loader(cfg, stage_cfg, split: str):
    """The training split and a loader of labelled, augmented crops for an ESOL stage (``stage_cfg.batch_size``).

    Augmented as the baseline was (``train_cam``'s resize, crop and flip), drawn with seed + 1.
    """
    return cam_training_loader(cfg, split, stage_cfg.batch_size, cfg.seed + 1, "the stage's batch_size")


def train_esol_stage(run, stage: str, model: ESOLModel, loss_fn, stage_cfg, cfg, loader, progress: bool):
    """Train ``stage``'s sampler (``expansion``: ES, ``shrinkage``: SS) with ``loss_fn`` → ``checkpoints/<stage>.pt``.

    SGD on the sampler's learnable parameters at ``stage_cfg.lr`` with the poly schedule, guarded by
    :class:`OffsetGuard`; a stage with nothing to learn (an ablation) saves the model as it is.
    """
    params = model.stage_parameters(stage)
    sampler = model.es if stage == "expansion" else model.ss
    inputs = stage_inputs(run, cfg, stage)
    if not params:  # an ablation with nothing to learn (no offsets, frozen weights): save as is
        return save_untrained_stage(run, stage, model, f"{stage}: no offsets and frozen regular weights", inputs)
    max_steps = stage_cfg.max_steps
    optimizer = stage_sgd([{"params": params, "lr": stage_cfg.lr}], stage_cfg)
    wrapped = wrap_ddp(model, init_distributed())
    wrapped.train()  # ESOLModel.train keeps the backbone's batch-norm statistics frozen
    return train_loop(
        stage,
        wrapped,
        optimizer,
        loss_fn,
        loader,
        max_steps,
        run,
        scheduler=PolyLR(optimizer, max_steps),
        checkpoint_every=cfg.train_cam.checkpoint_every,
        seed=cfg.seed,
        after_step=OffsetGuard(stage, sampler, stage_cfg.max_offset),
        progress=progress,
        optional=UNTRAINED_IN_EXPANSION if stage == "expansion" else (),
        inputs=inputs,
    )
