"""IRN's class boundary branch (Ahn et al., CVPR 2019, ``resnet50_irn.Net``): the boundary map the
random walk of :mod:`esol_lib.method.irn` propagates CAMs over."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esol_lib.method.irn import stride_ratio
from esol_lib.models.backbone import BACKBONE_LEVELS, Backbone

__all__ = ["BoundaryNet", "boundary_map"]


class BoundaryNet(nn.Module):
    """IRN's class boundary branch on a frozen backbone (``resnet50_irn.Net``, edge layers only).

    Every level in ``levels`` (default: stem, layer1 … layer4) goes through a 1×1 conv to
    ``channels`` (32), GroupNorm(``groups``) and — after bilinear upsampling to the first level's
    resolution, cropped to its size — a ReLU; the levels are concatenated and a 1×1 conv with bias
    gives the boundary logit. The backbone's features are computed without gradient (IRN detaches
    them) and the backbone stays in eval mode (IRN's ``train`` override), so only the head learns.

    The map has the first level's stride: 4 for IRN's ResNet-50 (stem = conv1 + max-pool), 1 for the
    ``small`` backbone with strides ``[1, 2, 2, 1]``.
    """

    def __init__(
        self, backbone: Backbone, channels: int = 32, groups: int = 4, levels: Sequence[str] = BACKBONE_LEVELS
    ) -> None:
        super().__init__()
        levels = tuple(levels)
        unknown = [lv for lv in levels if lv not in BACKBONE_LEVELS]
        if not levels or unknown:
            raise ValueError(f"BoundaryNet levels must be among {', '.join(BACKBONE_LEVELS)}, got {levels!r}")
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.levels = levels
        in_ch = dict(zip(BACKBONE_LEVELS, [backbone.stem_channels, *backbone.stage_channels]))
        self.edge_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_ch[lv], channels, 1, bias=False), nn.GroupNorm(groups, channels))
            for lv in levels
        )
        self.edge_out = nn.Conv2d(channels * len(levels), 1, 1, bias=True)
        self.train(self.training)

    def train(self, mode: bool = True) -> BoundaryNet:
        """Set the head's mode; the frozen backbone always stays in eval mode (IRN)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The head's parameters (the backbone is frozen)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def logits(self, x: Tensor) -> Tensor:
        """Boundary logits ``(B, h, w)`` of a normalised image batch ``(B, 3, H, W)``."""
        with torch.no_grad():
            feats = self.backbone(x)
        outs: list[Tensor] = []
        size: tuple[int, int] | None = None
        for level, layer in zip(self.levels, self.edge_layers):
            y = layer(feats[level])
            if size is None:
                size = (y.shape[-2], y.shape[-1])
            elif y.shape[-2:] != size:
                s = stride_ratio(max(size), max(y.shape[-2:]))
                y = F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False)
                if y.shape[-2] < size[0] or y.shape[-1] < size[1]:  # odd sizes: never smaller than level 1
                    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
                y = y[..., : size[0], : size[1]]
            outs.append(F.relu(y))
        return self.edge_out(torch.cat(outs, 1))[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        """Boundary probabilities ``(B, h, w)`` in ``[0, 1]``."""
        return torch.sigmoid(self.logits(x))


@torch.no_grad()
def boundary_map(model: BoundaryNet, image: Tensor, flip: bool = True) -> Tensor:
    """The boundary map ``(h, w)`` of one normalised image ``(3, H, W)`` (IRN's ``EdgeDisplacement``).

    With ``flip`` the logits of the image and of its mirror (mirrored back) are averaged before
    the sigmoid, as IRN does at inference.
    """
    if image.ndim != 3:
        raise ValueError(f"boundary_map: image must be (3, H, W), got {tuple(image.shape)}")
    x = image[None]
    if flip:
        x = torch.cat([x, x.flip(-1)], 0)
    out = model.logits(x)
    logit = (out[0] + out[1].flip(-1)) / 2 if flip else out[0]
    return torch.sigmoid(logit)
