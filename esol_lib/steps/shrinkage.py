"""Step 3, chapter 04: the shrinkage stage (§3.3) → ``checkpoints/shrinkage.pt``.

Initialised from the expansion model; everything before SS is frozen; only SS's offset branch learns,
with ``γ·L_cls + μ·L_area``, Eq. (6).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from esol_lib.method.losses import shrinkage_loss
from esol_lib.models.esol import UNTRAINED_IN_EXPANSION
from esol_lib.runtime.checkpoint import load_stage_checkpoint
from esol_lib.runtime.engine import seed_everything
from esol_lib.runtime.rundir import holds_run_lock
from esol_lib.steps._esol_shared import build_esol_model, stage_loader, train_esol_stage
from esol_lib.steps._shared import resolve_device, stage_inputs

__all__ = ["shrink", "shrinkage_objective"]


def shrinkage_objective(cfg, device: torch.device | str = "cpu"):
    """The shrinkage stage's ``loss_fn(model, batch)``: Eq. (6) with the ``shrinkage`` section's terms."""
    sc = cfg.shrinkage

    def loss_fn(m: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logits, cams = m(batch["image"].to(device), return_cams=True)
        return shrinkage_loss(
            logits,
            batch["label"].to(device),
            cams,
            gamma=sc.gamma,
            mu=sc.mu,
            use_area=sc.area_loss,
            area_map=sc.area_map,
            area_classes=sc.area_classes,
        )

    return loss_fn


@holds_run_lock
def shrink(run, *, progress: bool = True):
    """Shrinkage stage (§3.3): SS's offsets learn with Eq. (6) → ``checkpoints/shrinkage.pt``."""
    cfg = run.load_config()
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    base, loader = stage_loader(cfg, cfg.shrinkage, cfg.data.train_split)
    model = build_esol_model(cfg, base.num_classes, run, device)
    load_stage_checkpoint(
        run,
        "expansion",
        model,
        hint=f"run `esol expand --run {run.root}` first",
        optional=UNTRAINED_IN_EXPANSION,
        inputs=stage_inputs(run, cfg, "expansion"),
    )
    return train_esol_stage(
        run, "shrinkage", model, shrinkage_objective(cfg, device), cfg.shrinkage, cfg, loader, progress
    )
