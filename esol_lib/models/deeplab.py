"""DeepLab-v2's network (Chen et al., TPAMI 2017): a backbone at output stride 8 and ASPP-L.

    f(x) = Σ_r  W_r ⊛_r x + b_r                                                  (DeepLab-v2, Fig. 7)

The training recipe (learning-rate multipliers, loss, multi-scale inference, CRF) is
:mod:`esol_lib.method.seg_recipe`; why the layouts are what they are is in its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from esol_lib.models.backbone import Backbone, build_backbone
from esol_lib.runtime.errors import ConfigError

__all__ = ["ASPP", "DeepLabV2", "DEEPLAB_LAYOUT", "build_deeplab", "dilate_stage"]

# Per backbone: the strides handed to build_backbone and the atrous rate of each stage (index into
# [stem, layer1, layer2, layer3, layer4]) that DeepLab-v2 makes atrous to keep output stride 8.
DEEPLAB_LAYOUT: dict[str, tuple[tuple[int, int, int, int], dict[int, int]]] = {
    "resnet50": ((2, 2, 1, 1), {3: 2, 4: 4}),
    "resnet101": ((2, 2, 1, 1), {3: 2, 4: 4}),
    "small": ((1, 2, 2, 1), {}),
}


class ASPP(nn.Module):
    """DeepLab-v2's atrous spatial pyramid pooling (ASPP-L): ``Σ_r conv3x3_r(x)``.

    One 3×3 convolution per rate in ``dilations`` (padding = rate, so the size is kept), each from
    ``in_channels`` straight to ``num_classes`` scores with a bias; the branch outputs are summed.
    Weights are drawn from ``N(0, 0.01²)`` and biases start at 0, as in DeepLab-v2.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int]) -> None:
        super().__init__()
        rates = [int(d) for d in dilations]
        if not rates or any(d < 1 for d in rates):
            raise ConfigError(f"seg.dilations: expected one or more positive atrous rates, got {list(dilations)!r}")
        self.dilations = rates
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``(B, num_classes, h, w)`` of a feature map ``(B, in_channels, h, w)``."""
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """Backbone (output stride 8) → :class:`ASPP`; ``forward`` returns logits at feature resolution.

    Use :func:`upsample_logits` (or :func:`seg_loss` / :func:`predict`, which call it) to bring them
    to the label or image size.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dilations: Sequence[int]) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes: expected an integer >= 2 (background + classes), got {num_classes!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.aspp = ASPP(backbone.out_channels, num_classes, dilations)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K + 1, h, w)`` of a normalised image batch ``(B, 3, H, W)``."""
        return self.aspp(self.backbone(x)["out"])


def dilate_stage(stage: nn.Module, rate: int) -> None:
    """Make every k×k (k > 1) convolution in ``stage`` atrous with ``rate`` (padding keeps the size).

    DeepLab-v2's ResNet-101 uses rate 2 in every block of ``res4`` (``layer3``) and 4 in ``res5``
    (``layer4``) once their strides are removed; the pretrained weights stay valid.
    """
    for conv in stage.modules():
        if isinstance(conv, nn.Conv2d) and max(conv.kernel_size) > 1:
            conv.dilation = (rate, rate)
            conv.padding = tuple(rate * (k - 1) // 2 for k in conv.kernel_size)


def build_deeplab(
    seg_cfg: Any, num_classes: int, *, pretrained: str | None = "config", freeze_bn: bool | None = None
) -> DeepLabV2:
    """DeepLab-v2 from a :class:`~esol_lib.runtime.config.SegConfig` (``backbone``, ``strides``, ``pretrained``,
    ``dilations``).

    Args:
        seg_cfg: the ``seg`` section of the config.
        num_classes: ``K + 1`` (background included).
        pretrained: ``"config"`` uses ``seg_cfg.pretrained``; anything else overrides it (``None`` when
            a checkpoint is loaded right after, so no ImageNet file is needed to evaluate).
        freeze_bn: keep BatchNorm in eval mode with frozen affine params. ``None``: frozen for a
            pretrained backbone (DeepLab-v2 keeps ImageNet's BN statistics; batches of 10 are too
            small to re-estimate them), trained for a backbone from scratch (the CPU profiles).
    """
    name = seg_cfg.backbone
    if name not in DEEPLAB_LAYOUT:
        raise ConfigError(f"seg.backbone: unknown backbone {name!r}; choose one of {', '.join(DEEPLAB_LAYOUT)}")
    weights = seg_cfg.pretrained if pretrained == "config" else pretrained
    if freeze_bn is None:
        freeze_bn = bool(seg_cfg.pretrained)
    strides, rates = DEEPLAB_LAYOUT[name]
    if seg_cfg.strides is not None:
        if not _valid_strides(seg_cfg.strides):
            raise ConfigError(
                f"seg.strides: expected 4 integers, each 1 or 2 (stem, layer2, layer3, layer4), "
                f"got {seg_cfg.strides!r}; or leave it unset for DeepLab-v2's output stride 8"
            )
        strides = tuple(int(s) for s in seg_cfg.strides)
    backbone = build_backbone(name, strides, weights, freeze_bn=freeze_bn, frozen_stages=0)
    for index, rate in rates.items():
        dilate_stage(backbone.stages[index], rate)
    return DeepLabV2(backbone, num_classes, seg_cfg.dilations)


def _valid_strides(strides: Any) -> bool:
    return (
        isinstance(strides, (list, tuple))
        and len(strides) == 4
        and all(isinstance(s, int) and not isinstance(s, bool) and s in (1, 2) for s in strides)
    )
