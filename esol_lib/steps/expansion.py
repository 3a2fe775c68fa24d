"""Step 2, chapters 02-03: the expansion stage (§3.2) → ``checkpoints/expansion.pt``.

Only ES's offset branch learns, by *maximising* the classification loss, Eq. (5); feature clipping
(Eq. 7) sits after ES. SS still has zero offsets, so it equals the baseline's second conv.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from esol_lib.method.losses import expansion_loss
from esol_lib.runtime.engine import seed_everything
from esol_lib.runtime.rundir import holds_run_lock
from esol_lib.steps._esol_shared import build_esol_model, stage_loader, train_esol_stage
from esol_lib.steps._shared import resolve_device

__all__ = ["expand", "expansion_objective"]


def expansion_objective(cfg, device: torch.device | str = "cpu"):
    """The expansion stage's ``loss_fn(model, batch)``: Eq. (5) at ``expansion.alpha``, with the
    classification loss it maximises logged as ``cls``."""
    alpha = cfg.expansion.alpha

    def loss_fn(m: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = m(batch["image"].to(device))
        loss = expansion_loss(logits, batch["label"].to(device), alpha)
        return loss, {"cls": float(-loss.detach()) / alpha if alpha else 0.0}

    return loss_fn


@holds_run_lock
def expand(run, *, progress: bool = True):
    """Expansion stage (§3.2): ES's offsets learn by maximising Eq. (1), Eq. (5) → ``checkpoints/expansion.pt``."""
    cfg = run.load_config()
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    base, loader = stage_loader(cfg, cfg.expansion, cfg.data.train_split)
    model = build_esol_model(cfg, base.num_classes, run, device)
    loss_fn = expansion_objective(cfg, device)
    return train_esol_stage(run, "expansion", model, loss_fn, cfg.expansion, cfg, loader, progress)
