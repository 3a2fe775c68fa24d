"""Feature extractors for the CAM classifier: ResNet-50/101 (IRN's setup) and a small CPU net.

Every backbone is a :class:`Backbone`: five stages ``[stem, layer1, layer2,
layer3, layer4]`` run in order, whose outputs are returned by name so later
code (IRN's boundary branch) can use the multi-level features.

Strides follow IRN's convention: ``strides = (conv1, layer2, layer3, layer4)``.
For the ResNets the max-pool (stride 2) and ``layer1`` (stride 1) are fixed, so
IRN's ``(2, 2, 2, 1)`` gives output stride 16. A stage whose stride is 1 just
drops its down-sampling (no dilation, as in IRN). For ``small`` the first
stride applies to the 3x3 stem and there is no max-pool.

Nothing is ever downloaded: ``pretrained="imagenet"`` reads torchvision's local
cache and raises :class:`~esol_lib.runtime.errors.WeightsNotFoundError` when it is empty;
``pretrained="openmoji"`` reads the ``small`` backbone shipped in ``esol_lib/weights/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from esol_lib.runtime.errors import ConfigError, WeightsNotFoundError

BACKBONES = ("resnet50", "resnet101", "small")
#: The levels of every backbone, input side first (IRN's boundary branch reads each of them).
BACKBONE_LEVELS = ("stem", "layer1", "layer2", "layer3", "layer4")

# torchvision's file names for the ImageNet weights (V1 first, the IRN/ESOL choice).
IMAGENET_FILES: dict[str, tuple[str, ...]] = {
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}
TORCHVISION_URL = "https://download.pytorch.org/models/{file}"

# The proxy-ImageNet ``small`` backbone that ships with the package (``model.pretrained: openmoji``),
# made by ``esol pretrain`` (esol_lib.steps.pretrain) on OpenMoji glyphs of non-VOC classes.
OPENMOJI_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "small-openmoji.pth"

SMALL_STEM_CHANNELS = 32
SMALL_STAGE_CHANNELS = (32, 64, 128, 128)


class Backbone(nn.Module):
    """Five stages run in order; ``forward`` returns every stage's output by name.

    Attributes:
        stages: ``nn.ModuleList`` of ``[stem, layer1, layer2, layer3, layer4]``.
        stem_channels: channels out of the stem.
        stage_channels: channels out of ``layer1`` … ``layer4``.
        out_channels: channels of the last feature map (``stage_channels[-1]``).
        freeze_bn: BatchNorm layers stay in eval mode and their affine params are frozen.
        frozen_stages: the first ``k`` stages get no gradient and stay in eval mode.
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        stem_channels: int,
        stage_channels: Sequence[int],
        *,
        freeze_bn: bool = False,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        if len(stages) != len(BACKBONE_LEVELS) or len(stage_channels) != 4:
            raise ValueError("a Backbone needs 5 stages (stem + 4 layers) and 4 stage channel counts")
        self.stages = nn.ModuleList(stages)
        self.stem_channels = int(stem_channels)
        self.stage_channels = [int(c) for c in stage_channels]
        self.out_channels = self.stage_channels[-1]
        self.freeze_bn = bool(freeze_bn)
        self.frozen_stages = _check_frozen_stages(frozen_stages)
        self._freeze_params()
        self.train(self.training)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run all stages; keys ``stem``, ``layer1`` … ``layer4`` and ``out`` (= ``layer4``)."""
        feats: dict[str, Tensor] = {}
        for name, stage in zip(BACKBONE_LEVELS, self.stages):
            x = stage(x)
            feats[name] = x
        feats["out"] = x
        return feats

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode, keeping frozen stages and (with ``freeze_bn``) BatchNorm in eval."""
        super().train(mode)
        if mode:
            for stage in self.stages[: self.frozen_stages]:
                stage.eval()
            if self.freeze_bn:
                for bn in _batchnorms(self):
                    bn.eval()
        return self

    def _freeze_params(self) -> None:
        """Turn off gradients of the frozen stages and, with ``freeze_bn``, of BatchNorm's affine params."""
        for stage in self.stages[: self.frozen_stages]:
            stage.requires_grad_(False)
        if self.freeze_bn:
            for bn in _batchnorms(self):
                bn.requires_grad_(False)


def build_backbone(
    name: str,
    strides: Sequence[int] = (2, 2, 2, 1),
    pretrained: str | None = None,
    *,
    freeze_bn: bool = False,
    frozen_stages: int = 0,
) -> Backbone:
    """Build a backbone by name (``resnet50``, ``resnet101`` or ``small``).

    Args:
        name: the architecture (config key ``model.backbone``).
        strides: ``(stem, layer2, layer3, layer4)`` strides, each 1 or 2 (``model.strides``).
        pretrained: ``None`` (random init), ``"imagenet"`` (torchvision's local cache,
            ResNets only) or the path of a ``.pth`` state dict (``model.pretrained``).
        freeze_bn: keep BatchNorm in eval mode and freeze its affine params (IRN).
        frozen_stages: freeze the first ``k`` of ``[stem, layer1, …, layer4]``.

    Raises:
        ConfigError: an unknown name, bad strides or bad ``frozen_stages``, or a weights
            file that does not fit the architecture.
        WeightsNotFoundError: the asked-for weights file is not on this machine.
    """
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    strides = _check_strides(strides)
    _check_frozen_stages(frozen_stages)
    if name == "small":
        stages, stem_ch, stage_ch = _small_stages(strides)
    else:
        stages, stem_ch, stage_ch = _resnet_stages(name, strides, pretrained)
    backbone = Backbone(stages, stem_ch, stage_ch, freeze_bn=freeze_bn, frozen_stages=frozen_stages)
    if name == "small" and pretrained is not None and pretrained != "":
        _load_small_weights(backbone, pretrained)
    return backbone


# ----------------------------------------------------------------------------- validation


def _check_strides(strides: Sequence[int]) -> tuple[int, int, int, int]:
    """Return the strides as a 4-tuple of ints in {1, 2}, or raise ConfigError naming ``model.strides``."""
    ok = (
        isinstance(strides, Sequence)
        and not isinstance(strides, str)
        and len(strides) == 4
        and all(isinstance(s, int) and not isinstance(s, bool) and s in (1, 2) for s in strides)
    )
    if not ok:
        raise ConfigError(
            f"model.strides: expected 4 integers, each 1 or 2 (stem, layer2, layer3, layer4), got {strides!r}; "
            "e.g. [2, 2, 2, 1] for ResNet-50 (output stride 16) or [1, 2, 2, 1] for small"
        )
    return tuple(int(s) for s in strides)  # type: ignore[return-value]


def _check_frozen_stages(frozen_stages: int) -> int:
    """Return ``frozen_stages`` if it is an int in 0..5, else raise ConfigError naming ``model.frozen_stages``."""
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not 0 <= frozen_stages <= 5:
        raise ConfigError(
            f"model.frozen_stages: expected an integer from 0 to 5 (how many of stem, layer1..layer4 to freeze), "
            f"got {frozen_stages!r}"
        )
    return frozen_stages


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """All BatchNorm layers inside ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ----------------------------------------------------------------------------- ResNets


def _resnet_stages(
    name: str, strides: tuple[int, int, int, int], pretrained: str | None
) -> tuple[list[nn.Module], int, list[int]]:
    """Build a torchvision ResNet with IRN's strides, load weights, and split it into 5 stages."""
    net: ResNet = getattr(torchvision.models, name)(weights=None)
    _set_resnet_strides(net, strides)
    del net.fc  # the ImageNet classifier is never used; its weights are dropped on load
    if pretrained is not None and pretrained != "":
        path = _find_imagenet_file(name) if pretrained == "imagenet" else _existing_path(pretrained)
        _load_state_dict(net, path, name)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    stage_channels = [layer[-1].conv3.out_channels for layer in layers]
    return [stem, *layers], net.conv1.out_channels, stage_channels


def _set_resnet_strides(net: ResNet, strides: tuple[int, int, int, int]) -> None:
    """Set conv1's stride and the stride of layer2..4's first block (conv2 and downsample), IRN style."""
    net.conv1.stride = (strides[0], strides[0])
    for layer, stride in zip((net.layer2, net.layer3, net.layer4), strides[1:]):
        block = layer[0]
        block.conv2.stride = (stride, stride)
        block.stride = stride
        if block.downsample is not None:
            block.downsample[0].stride = (stride, stride)


def _find_imagenet_file(name: str) -> Path:
    """Find torchvision's cached ImageNet weights for ``name`` in ``torch.hub.get_dir()/checkpoints``."""
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for file in IMAGENET_FILES[name]:
        if (ckpt_dir / file).is_file():
            return ckpt_dir / file
    others = sorted(ckpt_dir.glob(f"{name}-*.pth")) if ckpt_dir.is_dir() else []
    if others:
        return others[0]
    expected = " or ".join(str(ckpt_dir / f) for f in IMAGENET_FILES[name])
    url = TORCHVISION_URL.format(file=IMAGENET_FILES[name][0])
    raise WeightsNotFoundError(
        f"model.pretrained='imagenet': no ImageNet weights for {name} on this machine (nothing is downloaded); "
        f"expected {expected}. Fix: on a machine with internet download {url} and copy it to {ckpt_dir}/ "
        f"(or set TORCH_HOME), or set model.pretrained to the path of the .pth file, "
        f"or set model.pretrained=null to train from random init"
    )


def _existing_path(pretrained: str) -> Path:
    """Return ``pretrained`` as a path if the file exists, else raise WeightsNotFoundError naming it."""
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"model.pretrained: weights file {str(path)!r} not found; give the path of an existing .pth state dict, "
            "'imagenet' for torchvision's local cache, or null for random init"
        )
    return path


# ----------------------------------------------------------------------------- weights


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a state dict (CPU, ``weights_only``) and drop the ImageNet classifier ``fc.*``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, not a torch file
        raise ConfigError(f"model.pretrained: cannot read weights file {str(path)!r}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"model.pretrained: {str(path)!r} does not hold a state dict of tensors")
    return {k: v for k, v in obj.items() if not k.startswith("fc.")}


def _load_state_dict(module: nn.Module, path: Path, arch: str) -> None:
    """Strictly load the weights at ``path`` into ``module``; a mismatch raises ConfigError."""
    state = _read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"model.pretrained: weights file {str(path)!r} does not fit model.backbone={arch!r} "
            f"(check that the file is a {arch} state dict): {exc}"
        ) from exc


def _load_small_weights(backbone: Backbone, pretrained: str) -> None:
    """Load a saved ``small`` backbone state dict; ``openmoji`` is the shipped proxy-ImageNet one."""
    if pretrained == "imagenet":
        raise ConfigError(
            "model.pretrained: there are no ImageNet weights for model.backbone='small'; "
            "set model.pretrained=openmoji (the shipped proxy-ImageNet backbone), null, "
            "or the path of a saved small-backbone state dict"
        )
    if pretrained == "openmoji":
        if not OPENMOJI_WEIGHTS.is_file():
            raise WeightsNotFoundError(
                f"model.pretrained='openmoji': the shipped backbone {OPENMOJI_WEIGHTS} is missing; "
                f"recreate it with: esol pretrain --out {OPENMOJI_WEIGHTS}"
            )
        _load_state_dict(backbone, OPENMOJI_WEIGHTS, "small")
        return
    _load_state_dict(backbone, _existing_path(pretrained), "small")


# ----------------------------------------------------------------------------- small


def _small_stages(strides: tuple[int, int, int, int]) -> tuple[list[nn.Module], int, list[int]]:
    """A 3x3 stem and four one-block residual stages (32, 64, 128, 128 channels) for CPU training."""
    stem = nn.Sequential(
        nn.Conv2d(3, SMALL_STEM_CHANNELS, 3, stride=strides[0], padding=1, bias=False),
        nn.BatchNorm2d(SMALL_STEM_CHANNELS),
        nn.ReLU(inplace=True),
    )
    stage_strides = (1, strides[1], strides[2], strides[3])
    stages: list[nn.Module] = [stem]
    in_ch = SMALL_STEM_CHANNELS
    for out_ch, stride in zip(SMALL_STAGE_CHANNELS, stage_strides):
        stages.append(nn.Sequential(_basic_block(in_ch, out_ch, stride)))
        in_ch = out_ch
    return stages, SMALL_STEM_CHANNELS, list(SMALL_STAGE_CHANNELS)


def _basic_block(in_ch: int, out_ch: int, stride: int) -> BasicBlock:
    """torchvision's BasicBlock with a 1x1 projection shortcut when the shape changes."""
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_ch),
        )
    return BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample)
