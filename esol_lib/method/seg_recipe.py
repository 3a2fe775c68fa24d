"""DeepLab-v2's training recipe and inference (Chen et al., "DeepLab: Semantic Image Segmentation
with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI 2017): the
segmentation network the paper trains on its pseudo masks (§4.1, Table 3); the network itself is
:mod:`esol_lib.models.deeplab`.

The model is a backbone at output stride 8 followed by ASPP-L (§3.3 of DeepLab-v2): four parallel
3×3 convolutions with atrous rates ``r ∈ {6, 12, 18, 24}`` applied to the same feature map ``x``,
each mapping straight to the ``K + 1`` class scores, and summed:

    f(x) = Σ_r  W_r ⊛_r x + b_r                                                  (DeepLab-v2, Fig. 7)

Training minimises the pixel-wise cross-entropy with void (255) ignored; inference averages the
softmax maps over scales and a horizontal flip, and may be refined by the fully connected CRF
(Krähenbühl & Koltun, 2011) with DeepLab's published parameters.

Output stride 8: for the ResNets ``layer3`` and ``layer4`` keep their resolution (strides
``(2, 2, 1, 1)``) and their 3×3 convolutions become atrous with rates 2 and 4, as in DeepLab-v2's
ResNet-101 (every block of ``res4`` / ``res5``). :func:`esol_lib.models.backbone.build_backbone`
has no dilation option, so :func:`esol_lib.models.deeplab.dilate_stage` converts the built stages in
place (the weights are unchanged, only where the kernel samples). The CPU ``small`` backbone uses
strides ``(1, 2, 2, 1)`` (output stride 4 on the toy's tiny images) and no dilation.
``seg.strides`` overrides the layout: a pretrained backbone runs at the strides it was pretrained
at (the ``cpu`` profile's OpenMoji ``small`` net at ``(2, 2, 2, 1)``, output stride 8; at
``(1, 2, 2, 1)`` its stem would see a resolution it never saw in pretraining, at four times the cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esol_lib.data.transforms import to_tensor
from esol_lib.method.crf import crf_from_probs
from esol_lib.method.metrics import IGNORE
from esol_lib.models.deeplab import DeepLabV2
from esol_lib.runtime.distributed import unwrap
from esol_lib.runtime.errors import ConfigError

__all__ = [
    "aspp_lr_mult",
    "crf_postprocess",
    "param_groups",
    "predict",
    "seg_loss",
    "upsample_logits",
]

# DeepLab-v2's learning-rate multipliers (its Caffe prototxt; IRN's and deeplab-pytorch's too).
BACKBONE_LR_MULT = 1.0
ASPP_WEIGHT_LR_MULT = 10.0
ASPP_BIAS_LR_MULT = 20.0


def aspp_lr_mult(seg_cfg: Any) -> tuple[float, float]:
    """The ASPP's ``(weight, bias)`` learning-rate multipliers of a ``seg`` config section.

    ``seg.aspp_lr_mult`` when set; otherwise DeepLab-v2's 10× / 20× on a pretrained backbone, where
    the head is the only new layer, and 1× / 1× on a backbone trained from scratch, where every layer
    is new: there the large multipliers let the head's first steps swamp the untrained backbone
    (on the toy benchmark a run ended predicting background only).
    """
    mult = seg_cfg.aspp_lr_mult
    if mult is None:
        return (ASPP_WEIGHT_LR_MULT, ASPP_BIAS_LR_MULT) if seg_cfg.pretrained else (1.0, 1.0)
    if len(mult) != 2 or any(not m > 0 for m in mult):
        raise ConfigError(f"seg.aspp_lr_mult: expected [weight, bias] multipliers > 0, got {mult!r}")
    return float(mult[0]), float(mult[1])


def param_groups(
    model: nn.Module, lr: float, aspp_mult: Sequence[float] = (ASPP_WEIGHT_LR_MULT, ASPP_BIAS_LR_MULT)
) -> list[dict[str, Any]]:
    """SGD groups of DeepLab-v2: backbone at ``lr``, ASPP weights and biases at ``aspp_mult`` × ``lr``
    (DeepLab-v2: 10× and 20×; :func:`aspp_lr_mult` picks them from the config).

    The bias group has no weight decay (``decay_mult: 0`` in DeepLab-v2's prototxt). Frozen
    parameters are left out; ``model`` may be wrapped in DDP.
    """
    net = unwrap(model)
    if not isinstance(net, DeepLabV2):
        raise TypeError(f"param_groups expects a DeepLabV2, got {type(net).__name__}")
    aspp_weights = [p for n, p in net.aspp.named_parameters() if p.requires_grad and not n.endswith("bias")]
    aspp_biases = [p for n, p in net.aspp.named_parameters() if p.requires_grad and n.endswith("bias")]
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    return [
        {"params": backbone, "lr": lr * BACKBONE_LR_MULT, "name": "backbone"},
        {"params": aspp_weights, "lr": lr * aspp_mult[0], "name": "aspp_weight"},
        {"params": aspp_biases, "lr": lr * aspp_mult[1], "weight_decay": 0.0, "name": "aspp_bias"},
    ]


# --------------------------------------------------------------------------------------- loss


def upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling of ``(B, C, h, w)`` logits to ``size = (H, W)`` (a no-op at that size)."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def seg_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel-wise cross-entropy at label resolution, void (255) ignored:

        L = -1/|V| Σ_{p ∈ V} log softmax(up(f(x)))_{p, y_p},   V = {p : y_p ≠ 255}

    ``logits`` ``(B, C, h, w)`` are upsampled bilinearly to the ``(B, H, W)`` target's size. A batch
    without any labelled pixel gives a zero loss (still attached to the graph) instead of NaN.
    """
    if target.ndim != 3 or logits.ndim != 4 or logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"seg_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} do not "
            "fit (expected (B, C, h, w) and (B, H, W))"
        )
    target = target.long()
    logits = upsample_logits(logits, target.shape[-2:])
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


# --------------------------------------------------------------------------------------- inference


def predict(
    model: nn.Module,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
) -> np.ndarray:
    """Multi-scale (+ flip) class probabilities ``(K + 1, H, W)`` of one ``(H, W, 3)`` uint8 image.

    For each scale ``s`` the normalised image is resized to ``round(s·H) × round(s·W)`` (bilinear),
    its logits (and those of its mirror image, flipped back) are upsampled to ``(H, W)`` and turned
    into softmax maps; the result is their average over scales and flips (DeepLab-v2's multi-scale inputs, averaged as
    deeplab-pytorch and IRN's evaluation do). Runs under ``torch.inference_mode`` in eval mode
    (the model's mode is restored afterwards), on the model's device.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"predict: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if not scales:
        raise ConfigError("seg.test_scales must list at least one scale")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    h, w = image.shape[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = to_tensor(image, mean, std).unsqueeze(0).to(device)
            total: Tensor | None = None
            for s in scales:
                size = (max(1, round(h * s)), max(1, round(w * s)))
                # An explicit size (not scale_factor) keeps the resampling grid mirror-symmetric.
                xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                if flip:
                    xs = torch.cat([xs, xs.flip(-1)], dim=0)
                probs = upsample_logits(model(xs), (h, w)).float().softmax(dim=1)
                if flip:
                    probs = probs[:1] + probs[1:].flip(-1)
                total = probs if total is None else total + probs
            assert total is not None
            total = total / (len(scales) * (2 if flip else 1))
    finally:
        model.train(was_training)
    return total[0].cpu().numpy()


def crf_postprocess(image: np.ndarray, probs: np.ndarray, crf_cfg: Any) -> np.ndarray:
    """DeepLab-v2's fully connected CRF on ``probs`` ``(K + 1, H, W)`` → labels ``(H, W)`` int64.

    Uses the ``seg_*`` fields of :class:`~esol_lib.runtime.config.CRFConfig` (DeepLab-v2's published
    parameters by default) and ``crf_cfg.iterations`` mean-field steps.
    """
    q = crf_from_probs(image, probs, crf_cfg)
    return q.argmax(0).astype(np.int64)
