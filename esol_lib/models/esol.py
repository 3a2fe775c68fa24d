"""The ESOL model (§3.2–3.3, Fig. 2): the trained CAM classifier with ES and SS in place of its extra convs.

    image → backbone (frozen) → ES (extra conv 1 → ExpansionSampler) → ReLU → feature clip (Eq. 7)
          → SS (extra conv 2 → ShrinkageSampler) → ReLU → GAP → classifier (frozen, bias-free)

The clipping sits after ES during expansion training and stays on whenever the expansion or
shrinkage model computes features (training and CAMs alike), as in Fig. 2; the paper leaves
where it acts open, so ``expansion.clip_in_training`` and ``expansion.clip_in_cams`` turn it off
in expansion training or in the CAMs (:meth:`ESOLModel.clipping`). With ``shrinkage.placement:
first`` SS deforms the same conv as ES (its offsets add to ES's, before the clipping) and the
second conv stays the baseline's. The two stages that train it are
:mod:`esol_lib.steps.expansion` and :mod:`esol_lib.steps.shrinkage`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from esol_lib.method import losses  # a module, not its names: losses imports models.classifier, which imports this
from esol_lib.models.samplers import ExpansionSampler, ShrinkageSampler
from esol_lib.runtime.feature_cache import CachedBackbone

__all__ = ["ESOLModel", "UNTRAINED_IN_EXPANSION"]


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
        self.ss_on_first = getattr(shrinkage, "placement", "second") == "first"
        self.ss = ShrinkageSampler(
            baseline.extra2,
            offsets=shrinkage.offsets and not self.ss_on_first,
            train_regular=shrinkage.train_regular,
        )
        if self.ss_on_first and shrinkage.offsets:
            # SS's offset branch reads ES's input and adds to ES's offsets; the second conv stays
            # plain. It keeps the name ``ss.offset_conv`` so an expansion checkpoint serves both.
            k = self.es.kernel_size
            self.ss.offset_conv = nn.Conv2d(self.es.in_channels, 2 * k * k, k, padding=k // 2)
            nn.init.zeros_(self.ss.offset_conv.weight)
            nn.init.zeros_(self.ss.offset_conv.bias)
        self.clip = bool(expansion.clip)
        self.beta = float(expansion.beta)
        self.clip_in_training = bool(getattr(expansion, "clip_in_training", True))
        self.clip_in_cams = bool(getattr(expansion, "clip_in_cams", True))
        self.clip_gradient = bool(getattr(expansion, "clip_gradient", False))
        self.training_stage: str | None = None  # set by stage_parameters: which stage is training
        self.use_feature_cache(None)
        for p in list(self.backbone.parameters()) + list(self.classifier.parameters()):
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> ESOLModel:
        # Every layer is frozen or offset-only: batch-norm statistics never change in ESOL's stages.
        super().train(mode)
        self.backbone.eval()
        return self

    def use_feature_cache(self, cached: CachedBackbone | None) -> ESOLModel:
        """Read the frozen backbone's features through ``cached`` (:mod:`esol_lib.runtime.feature_cache`); None: off."""
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

    def clipping(self) -> bool:
        """Whether Eq. (7) acts now: in training (``clip_in_training`` concerns the expansion stage
        alone: shrinkage trains on the features its CAMs will see) or in CAMs (``clip_in_cams``)."""
        if not self.clip:
            return False
        if not self.training:
            return self.clip_in_cams
        return self.clip_in_training or self.training_stage != "expansion"

    def expanded(self, feat: torch.Tensor) -> torch.Tensor:
        """ES, ReLU and (when on) feature clipping: ``F'_clip`` of Eq. (7)."""
        extra = None
        if self.ss_on_first:  # SS on the same conv: its offsets add to ES's
            extra = self.ss.offsets(feat)
            if extra is not None:
                self.ss.last_offset_magnitude = float(extra.detach().abs().mean())
        f = F.relu(self.es(feat, extra_offset=extra))
        return losses.feature_clip(f, self.beta, gradient=self.clip_gradient) if self.clipping() else f

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        f = self.expanded(feat)
        return F.relu(self.ss.regular(f) if self.ss_on_first else self.ss(f))

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
        self.training_stage = stage
        sampler = self.es if stage == "expansion" else self.ss
        for other in (self.es, self.ss):
            if other is not sampler:
                for p in other.parameters():
                    p.requires_grad_(False)
        return sampler.learnable_parameters()
