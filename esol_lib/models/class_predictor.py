"""ReCAM's class predictor W' (Chen et al., CVPR 2022): a network, so it lives with the networks.

:mod:`esol_lib.method.recam` uses it (and re-exports it) for ReCAM's softmax loss and its W' * W CAMs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassPredictor"]


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
