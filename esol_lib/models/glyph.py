"""The proxy-ImageNet classifier of ``esol pretrain`` (:mod:`esol_lib.steps.pretrain`): a backbone over glyphs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esol_lib.models.backbone import Backbone

__all__ = ["GlyphClassifier"]


class GlyphClassifier(nn.Module):
    """Backbone → global average pooling → linear layer over the glyph classes."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(x)["out"]
        return self.fc(F.adaptive_avg_pool2d(feat, 1).flatten(1))
