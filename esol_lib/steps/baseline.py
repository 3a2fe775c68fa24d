"""Step 1, chapter 01: the baseline CAM classifier (§3.1, Eq. (1)) → ``checkpoints/baseline.pt``."""

from __future__ import annotations

import torch

from esol_lib.models import build_classifier, multilabel_loss
from esol_lib.runtime.distributed import init_distributed, wrap_ddp
from esol_lib.runtime.engine import seed_everything, train_loop
from esol_lib.runtime.rundir import RunDir, holds_run_lock
from esol_lib.runtime.schedule import PolyLR, stage_sgd, stage_steps
from esol_lib.runtime.train_log import DeadOutputGuard
from esol_lib.steps._shared import cam_training_loader, resolve_device, stage_inputs

__all__ = ["train_cam"]


@holds_run_lock
def train_cam(run: RunDir, *, progress: bool = True):
    """Train the baseline classifier (§3.1, Eq. (1)) → ``checkpoints/baseline.pt``. Resumes if interrupted."""
    cfg = run.load_config()
    tc = cfg.train_cam
    seed_everything(cfg.seed)
    info = init_distributed()
    device = resolve_device(cfg)
    base, loader = cam_training_loader(cfg, cfg.data.train_split, tc.batch_size, cfg.seed, "train_cam.batch_size")
    max_steps = stage_steps(tc, len(loader))
    model = build_classifier(cfg.model, base.num_classes).to(device)
    optimizer = stage_sgd(model.param_groups(tc.lr, tc.new_layer_lr_mult), tc)
    model = wrap_ddp(model, info)
    model.train()

    dead = DeadOutputGuard()

    def loss_fn(m: torch.nn.Module, batch: dict) -> torch.Tensor:
        logits = m(batch["image"].to(device))
        dead.check(logits)
        return multilabel_loss(logits, batch["label"].to(device))

    return train_loop(
        "baseline",
        model,
        optimizer,
        loss_fn,
        loader,
        max_steps,
        run,
        scheduler=PolyLR(optimizer, max_steps, warmup_steps=tc.warmup_steps),
        checkpoint_every=tc.checkpoint_every,
        seed=cfg.seed,
        progress=progress,
        inputs=stage_inputs(run, cfg, "baseline"),
        guards=(dead,),
    )
