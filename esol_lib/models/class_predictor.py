"""The positive controls' networks (chapter 10): ReCAM's class predictor W' and its fine-tuned pair, LPCAM's prototypes.

:mod:`esol_lib.method.recam` uses :class:`ClassPredictor` (and re-exports it) for ReCAM's softmax loss and its
W' * W CAMs; :class:`ReCAMModel` is what ``checkpoints/recam.pt`` holds, :class:`PrototypeHead` what
``checkpoints/lpcam.pt`` holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassPredictor", "PrototypeHead", "ReCAMModel"]


class ClassPredictor(nn.Module):
    """ReCAM's ``Class_Predictor``: a new bias-free 1x1 layer ``W'`` classifying class features over all K classes.

    The weight lives in ``classifier`` (shape (K, C, 1, 1), PyTorch's default ``Conv2d`` initialisation), as in
    ReCAM, so its state dict has ReCAM's key ``classifier.weight`` and :func:`recam_weight` can multiply it with
    the CAM classifier's weight elementwise.

    Args:
        num_classes: K, the foreground classes (no background), as the CAM classifier's.
        channels: C, the channels of the final feature map F.
    """

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"ClassPredictor: num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ClassPredictor: channels must be a positive integer, got {channels!r}")
        self.num_classes = num_classes
        self.channels = channels
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False)

    def forward(self, class_features: Tensor) -> Tensor:
        """Class logits ``W' z`` of class features (N, C) → (N, K); a 1x1 convolution of a 1x1 map is a matmul."""
        if class_features.ndim != 2 or class_features.shape[1] != self.channels:
            raise ValueError(
                f"ClassPredictor: expected class features (N, {self.channels}), got {tuple(class_features.shape)}"
            )
        return F.linear(class_features, self.classifier.weight.flatten(1))


class ReCAMModel(nn.Module):
    """The CAM classifier fine-tuned by ReCAM together with its predictor ``W'``: one module, one checkpoint.

    ``checkpoints/recam.pt`` holds both (keys ``cam.*`` and ``predictor.*``). ``train()`` is the classifier's
    (a ``freeze_bn`` backbone keeps its BatchNorm statistics), so ReCAM's ``model.train()`` changes nothing else.
    """

    def __init__(self, cam: nn.Module, predictor: ClassPredictor) -> None:
        super().__init__()
        self.cam = cam
        self.predictor = predictor

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(F, GAP logits)`` of a batch: the classifier's final feature map (B, C, h, w) and its logits
        (B, K), what ReCAM's loss reads (:func:`esol_lib.method.recam.recam_loss_of`)."""
        f = self.cam.head(self.cam.features(images))
        return f, self.cam.logits_from_head(f)

    def train(self, mode: bool = True) -> ReCAMModel:
        self.training = mode
        self.cam.train(mode)
        self.predictor.train(mode)
        return self


class PrototypeHead(nn.Module):
    """LPCAM's prototypes as a module, so they are a checkpoint (``checkpoints/lpcam.pt``) like a trained stage's.

    ``weight`` (K, C, 1, 1) is :func:`esol_lib.method.lpcam.lpcam_weight`: per class the mean unit foreground
    prototype minus the mean unit context prototype, so ``conv2d(F / ||F||, weight)`` is LPCAM's raw map.
    ``counts`` (K, 2) records how many foreground and context prototypes each class kept.
    """

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, channels, 1, 1))
        self.register_buffer("counts", torch.zeros(num_classes, 2, dtype=torch.long))
