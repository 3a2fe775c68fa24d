"""The ESOL model and its two training stages (§3.2–3.3, Fig. 2).

Architecture (one model for both stages, built from the trained baseline)::

    image → backbone (frozen) → ES (extra conv 1 → ExpansionSampler) → ReLU → feature clip (Eq. 7)
          → SS (extra conv 2 → ShrinkageSampler) → ReLU → GAP → classifier (frozen, bias-free)

- **Expansion** (``esol expand``): only ES's offset branch learns, by *maximising* the
  classification loss, Eq. (5). SS still has zero offsets, so it equals the baseline's second conv.
- **Shrinkage** (``esol shrink``): initialised from the expansion model; everything before SS is
  frozen; only SS's offset branch learns, with ``γ·L_cls + μ·L_area``, Eq. (6).

The clipping sits after ES during expansion training and stays on whenever the expansion or
shrinkage model computes features (training and CAMs alike), as in Fig. 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from esol_lib.errors import DivergenceError, StageError
from esol_lib.feature_cache import CachedBackbone, cached_backbone
from esol_lib.losses import expansion_loss, feature_clip, shrinkage_loss
from esol_lib.run import holds_run_lock
from esol_lib.samplers import ExpansionSampler, ShrinkageSampler

__all__ = ["ESOLModel", "OffsetGuard", "build_esol_model", "expand", "shrink", "load_stage_model"]


#: What the expansion stage leaves untrained: the shrinkage sampler's offset branch (zero-initialised).
#: Whether it exists depends on ``shrinkage.offsets`` alone, so an expansion checkpoint serves
#: shrinkage configs with and without DT_s (Table 5 shares one expansion model between them).
UNTRAINED_IN_EXPANSION = ("ss.offset_conv.",)


class ESOLModel(nn.Module):
    """A trained CAM classifier with its extra convolutions replaced by ES and SS (Fig. 2).

    Args:
        baseline: the trained :class:`~esol_lib.models.CAMClassifier` (its modules are reused).
        expansion / shrinkage: the two config sections (switches for every ablation).
    """

    def __init__(self, baseline: nn.Module, expansion, shrinkage) -> None:
        super().__init__()
        self.backbone = baseline.backbone
        self.classifier = baseline.classifier
        self.es = ExpansionSampler(
            baseline.extra1,
            offsets=expansion.offsets,
            deformable=expansion.deformable,
            train_regular=expansion.train_regular,
        )
        self.ss = ShrinkageSampler(baseline.extra2, offsets=shrinkage.offsets, train_regular=shrinkage.train_regular)
        self.clip = bool(expansion.clip)
        self.beta = float(expansion.beta)
        self.use_feature_cache(None)
        for p in list(self.backbone.parameters()) + list(self.classifier.parameters()):
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> ESOLModel:
        # Every layer is frozen or offset-only: batch-norm statistics never change in ESOL's stages.
        super().train(mode)
        self.backbone.eval()
        return self

    def use_feature_cache(self, cached: CachedBackbone | None) -> ESOLModel:
        """Read the frozen backbone's features through ``cached`` (:mod:`esol_lib.feature_cache`); None: off."""
        self.cached_features = cached
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features, detached: no gradient ever reaches the backbone (§4.1).

        With a feature cache, an input seen before (the same batch in the other stage, the same
        image in an ablation's CAMs) is not passed through the backbone again.
        """
        if self.cached_features is not None and not self.backbone.training:
            return self.cached_features(x)
        with torch.no_grad():
            return self.backbone(x)["out"]

    def expanded(self, feat: torch.Tensor) -> torch.Tensor:
        """ES, ReLU and (when on) feature clipping: ``F'_clip`` of Eq. (7)."""
        f = F.relu(self.es(feat))
        return feature_clip(f, self.beta) if self.clip else f

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        return F.relu(self.ss(self.expanded(feat)))

    def cam_from_head(self, f: torch.Tensor) -> torch.Tensor:
        return F.conv2d(f, self.classifier.weight)

    def forward(self, x: torch.Tensor, return_cams: bool = False):
        """Logits ``(B, K)``; with ``return_cams`` also the raw class maps ``(B, K, h, w)``.

        The classifier is linear and bias-free, so GAP of the maps equals the logits.
        """
        cams = self.cam_from_head(self.head(self.features(x)))
        logits = cams.mean(dim=(-2, -1))
        return (logits, cams) if return_cams else logits

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return self(x, return_cams=True)[1]

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """What a stage trains: ES's learnable parameters (expansion) or SS's (shrinkage)."""
        sampler = self.es if stage == "expansion" else self.ss
        for other in (self.es, self.ss):
            if other is not sampler:
                for p in other.parameters():
                    p.requires_grad_(False)
        return sampler.learnable_parameters()


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
    from esol_lib.stages import load_baseline

    baseline = load_baseline(run, cfg, num_classes, torch.device(device))
    model = ESOLModel(baseline, cfg.expansion, cfg.shrinkage).to(device)
    return model.use_feature_cache(
        cached_backbone(model.backbone, cfg.feature_cache_mb, run.feature_cache() if run is not None else None)
    )


def load_stage_model(run, cfg, stage: str, num_classes: int, device: torch.device) -> ESOLModel:
    """The ESOL model after ``stage`` (``expansion`` or ``shrinkage``), in eval mode."""
    from esol_lib.engine import load_stage_checkpoint

    model = build_esol_model(cfg, num_classes, run, device)
    command = {"expansion": "esol expand", "shrinkage": "esol shrink"}[stage]
    load_stage_checkpoint(
        run,
        stage,
        model,
        hint=f"run `{command} --run {run.root}` first",
        optional=UNTRAINED_IN_EXPANSION if stage == "expansion" else (),
    )
    return model.eval()


def _stage_loader(cfg, stage_cfg, split: str):
    from esol_lib.data.transforms import AugmentedDataset, TrainTransform
    from esol_lib.distributed import make_loader
    from esol_lib.stages import _dataset, _LabelledOnly

    base = _dataset(cfg, split)
    tc = cfg.train_cam
    transform = TrainTransform(
        resize_long=tuple(tc.resize_long), crop_size=tc.crop_size, mean=cfg.data.mean, std=cfg.data.std, flip=tc.flip
    )
    data = AugmentedDataset(_LabelledOnly(base), transform, seed=cfg.seed + 1)
    loader = make_loader(
        data, stage_cfg.batch_size, shuffle=True, seed=cfg.seed + 1, num_workers=cfg.data.num_workers, drop_last=True
    )
    if len(loader) == 0:
        raise StageError(
            f"split {split!r} has {len(base)} images, fewer than one batch of "
            f"{stage_cfg.batch_size}; lower the stage's batch_size"
        )
    return base, loader


def _train_stage(run, stage: str, model: ESOLModel, loss_fn, stage_cfg, cfg, loader, progress: bool):
    from esol_lib.distributed import init_distributed, wrap_ddp
    from esol_lib.engine import PolyLR, make_sgd, save_untrained_stage, train_loop

    params = model.stage_parameters(stage)
    sampler = model.es if stage == "expansion" else model.ss
    if not params:  # an ablation with nothing to learn (no offsets, frozen weights): save as is
        return save_untrained_stage(run, stage, model, f"{stage}: no offsets and frozen regular weights")
    max_steps = stage_cfg.max_steps
    optimizer = make_sgd(
        [{"params": params, "lr": stage_cfg.lr}],
        stage_cfg.lr,
        momentum=stage_cfg.momentum,
        weight_decay=stage_cfg.weight_decay,
    )
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
    )


@holds_run_lock
def expand(run, *, progress: bool = True):
    """Expansion stage (§3.2): ES's offsets learn by maximising Eq. (1), Eq. (5) → ``checkpoints/expansion.pt``."""
    from esol_lib.engine import seed_everything
    from esol_lib.stages import resolve_device

    cfg = run.load_config()
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    base, loader = _stage_loader(cfg, cfg.expansion, cfg.data.train_split)
    model = build_esol_model(cfg, base.num_classes, run, device)
    alpha = cfg.expansion.alpha

    def loss_fn(m: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = m(batch["image"].to(device))
        loss = expansion_loss(logits, batch["label"].to(device), alpha)
        return loss, {"cls": float(-loss.detach()) / alpha if alpha else 0.0}

    return _train_stage(run, "expansion", model, loss_fn, cfg.expansion, cfg, loader, progress)


@holds_run_lock
def shrink(run, *, progress: bool = True):
    """Shrinkage stage (§3.3): SS's offsets learn with Eq. (6) → ``checkpoints/shrinkage.pt``."""
    from esol_lib.engine import load_stage_checkpoint, seed_everything
    from esol_lib.stages import resolve_device

    cfg = run.load_config()
    seed_everything(cfg.seed)
    device = resolve_device(cfg)
    base, loader = _stage_loader(cfg, cfg.shrinkage, cfg.data.train_split)
    model = build_esol_model(cfg, base.num_classes, run, device)
    load_stage_checkpoint(
        run, "expansion", model, hint=f"run `esol expand --run {run.root}` first", optional=UNTRAINED_IN_EXPANSION
    )
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

    return _train_stage(run, "shrinkage", model, loss_fn, sc, cfg, loader, progress)
