"""The CAM classifier of §3.1 / §4.1: backbone, two extra convolutions, GAP and a bias-free 1x1 classifier.

The paper trains a classifier as in IRN "except that we add two additional
convolution layers (3x3 or 1x1) that would be used to perform the deformable
transformation" (§4.1). The extra convolutions are plain ``nn.Conv2d``
attributes ``extra1`` / ``extra2`` and the ReLUs live in :meth:`CAMClassifier.head`,
so the Expansion/Shrinkage stages can swap in deformable samplers with the same
``module(x) -> y`` signature (copying their ``.weight``) without other changes.

Because the classifier is linear and bias-free, GAP and the 1x1 convolution
commute: the class logits are the spatial mean of the un-normalised CAM
``w_c^T F`` (the numerator of Eq. (2)).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from esol_lib.models.backbone import Backbone, build_backbone
from esol_lib.runtime.errors import ConfigError


class CAMClassifier(nn.Module):
    """Backbone → ``extra1`` → ReLU → ``extra2`` → ReLU → GAP → bias-free 1x1 ``classifier`` (§3.1).

    Args:
        backbone: the feature extractor f(·; θ_f).
        num_classes: number of foreground classes K (no background class).
        extra_kernel: kernel size of the two extra convolutions, 1 or 3 (``model.extra_kernel``).
        extra_channels: their channels; ``None`` or 0 keeps ``backbone.out_channels``.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        extra_kernel: int = 3,
        extra_channels: int | None = None,
    ) -> None:
        super().__init__()
        if extra_kernel not in (1, 3) or isinstance(extra_kernel, bool):
            raise ConfigError(f"model.extra_kernel: expected 1 or 3 (the paper's 1x1 or 3x3), got {extra_kernel!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes: expected a positive integer, got {num_classes!r}")
        channels = _extra_channels(extra_channels, backbone.out_channels)
        self.backbone = backbone
        self.num_classes = num_classes
        self.extra_kernel = extra_kernel
        self.extra1 = nn.Conv2d(backbone.out_channels, channels, extra_kernel, padding=extra_kernel // 2, bias=False)
        self.extra2 = nn.Conv2d(channels, channels, extra_kernel, padding=extra_kernel // 2, bias=False)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False)

    def features(self, x: Tensor) -> Tensor:
        """The backbone's last feature map ``f(x; θ_f)``, shape (B, C_b, h, w)."""
        return self.backbone(x)["out"]

    def head(self, feat: Tensor) -> Tensor:
        """The final feature map F = ReLU(extra2(ReLU(extra1(feat)))), shape (B, C, h, w)."""
        f = F.relu(self.extra1(feat))
        return F.relu(self.extra2(f))

    def cam_from_head(self, f: Tensor) -> Tensor:
        """Raw class activation maps ``w_c^T F`` (Eq. (2) before ReLU / max normalisation), shape (B, K, h, w)."""
        return F.conv2d(f, self.classifier.weight)

    def cam(self, x: Tensor) -> Tensor:
        """Raw class activation maps of an image batch, shape (B, K, h, w)."""
        return self.cam_from_head(self.head(self.features(x)))

    def logits_from_head(self, f: Tensor) -> Tensor:
        """Class logits from the final feature map: 1x1 classifier on its global average, shape (B, K)."""
        pooled = F.adaptive_avg_pool2d(f, 1)
        return self.classifier(pooled).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Multi-label logits ŷ of Eq. (1), shape (B, K)."""
        return self.logits_from_head(self.head(self.features(x)))

    def param_groups(self, lr: float, new_layer_lr_mult: float) -> list[dict[str, Any]]:
        """Two SGD parameter groups, IRN style: the backbone at ``lr``, new layers at ``lr * new_layer_lr_mult``.

        "New" is every parameter outside the backbone (``extra1``, ``extra2``,
        ``classifier``, and whatever replaces them). Parameters with
        ``requires_grad=False`` are left out; both groups are always returned.
        """
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) in backbone_ids], "lr": lr, "name": "backbone"},
            {
                "params": [p for p in trainable if id(p) not in backbone_ids],
                "lr": lr * new_layer_lr_mult,
                "name": "new",
            },
        ]


def multilabel_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin (sigmoid cross-entropy) loss, Eq. (1).

    ``L = -1/C Σ_i y_i log σ(ŷ_i) + (1 - y_i) log(1 - σ(ŷ_i))``, averaged over the
    batch; written with ``logsigmoid`` (``log(1 - σ(z)) = logsigmoid(-z)``) for
    stability. Equal to ``F.multilabel_soft_margin_loss(logits, labels)``.

    Args:
        logits: ŷ, shape (B, C).
        labels: y in {0, 1} (soft labels allowed), shape (B, C).
    """
    if logits.shape != labels.shape:
        raise ValueError(f"multilabel_loss: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    y = labels.to(logits.dtype)
    per_class = y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)
    return -per_class.mean(dim=-1).mean()


def build_classifier(model_cfg: Any, num_classes: int) -> CAMClassifier:
    """Build the CAM classifier from a :class:`~esol_lib.runtime.config.ModelConfig` (fields of ``cfg.model``)."""
    backbone = build_backbone(
        model_cfg.backbone,
        model_cfg.strides,
        model_cfg.pretrained,
        freeze_bn=model_cfg.freeze_bn,
        frozen_stages=model_cfg.frozen_stages,
    )
    return CAMClassifier(
        backbone,
        num_classes,
        extra_kernel=model_cfg.extra_kernel,
        extra_channels=model_cfg.extra_channels,
    )


def _extra_channels(extra_channels: int | None, default: int) -> int:
    """``extra_channels`` if positive, ``default`` if None or 0, else ConfigError naming ``model.extra_channels``."""
    if extra_channels is None or (extra_channels == 0 and not isinstance(extra_channels, bool)):
        return default
    if isinstance(extra_channels, bool) or not isinstance(extra_channels, int) or extra_channels < 0:
        raise ConfigError(
            f"model.extra_channels: expected a positive integer, or null/0 for the backbone's channels, "
            f"got {extra_channels!r}"
        )
    return extra_channels
