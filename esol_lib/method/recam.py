"""ReCAM: class re-activation maps by a softmax cross-entropy on CAM-weighted class features.

Chen, Wang, Wu, Hua, Zhang & Sun, "Class Re-Activation Maps for Weakly-Supervised Semantic
Segmentation", CVPR 2022 (arXiv 2203.00962); public code ``zhaozhengChen/ReCAM``. ReCAM takes an
already trained CAM classifier (backbone, final feature map ``F`` and bias-free 1x1 classifier ``W``,
here :class:`~esol_lib.models.classifier.CAMClassifier`) and fine-tunes it together with a new
bias-free 1x1 layer ``W'`` (:class:`ClassPredictor`). The multi-label sigmoid loss alone lets one
class's CAM spread over co-occurring classes and stop at the most discriminative parts; a softmax
over the classes makes a class feature that carries another class's evidence costly.

For an image with final feature map ``F`` (C, h, w) and each of its labelled classes ``c``:

    A_c   = ReLU(w_c^T F) / (max_{x,y} ReLU(w_c^T F) + 1e-5)          max-normalised CAM
    z_c   = 1/(hw) Σ_{x,y} A_c(x, y) · F(x, y)                         class feature, a C-vector
    L_ce  = 1/B Σ_i  1/|Y_i| Σ_{c ∈ Y_i}  CE(softmax(W' z_c), c)       softmax over all K classes
    L     = L_bce(GAP logits, y) + λ · L_ce                            λ = ``recam_loss_weight``

and the re-activated CAMs use the elementwise product of the two weights:

    M_c   = ReLU( (w'_c ⊙ w_c)^T F )       → IRN's scales, flips and max-normalisation (Eq. (2))

What the public code does, checked in its files (HEAD ``2bdbcd2``, June 2022):

- ``net/resnet50_cam.py``, ``Net_CAM_Feature.forward``: ``cams = relu(conv2d(feature, classifier.weight))``,
  ``cams / (adaptive_max_pool2d(cams, 1) + 1e-5)``, then the mean over pixels of ``cams[:, k] * feature``
  for every class, giving (B, K, C). Nothing is detached: the CE term's gradient reaches the backbone,
  ``W`` through the weighting ``A_c`` (its spatial max included) and ``W'``.
- ``net/resnet50_cam.py``, ``Class_Predictor``: ``nn.Conv2d(2048, 20, 1, bias=False)`` (attribute
  ``classifier``); keeps the rows of the labelled classes (``label > 0``, image by image, classes in
  ascending order), per image ``F.cross_entropy(logits, classes)`` (the mean over that image's labelled
  classes), summed over images and divided by the batch size (images without a class count in the
  denominator). It is *not* the mean over all labelled pairs of the batch.
- ``step/train_recam.py``: ``loss = multilabel_soft_margin_loss(x, label) + recam_loss_weight * loss_ce``;
  the CAM model is loaded from the trained CAM weights and trained in full (``model.train()``); the
  optimiser is IRN's ``PolyOptimizer`` with three groups: the backbone at ``0.1 * recam_learning_rate``,
  the original classifier (``newly_added``) also at ``0.1 * recam_learning_rate``, and the predictor at
  ``recam_learning_rate``, each group with ``weight_decay = cam_weight_decay`` (1e-4). ``PolyOptimizer``
  calls ``SGD(params, lr, weight_decay)``, so the 1e-4 lands in SGD's momentum slot (momentum 1e-4), and
  its lr is ``initial · (1 - step/max_step)^0.9`` with ``max_step = len(train) // batch * epochs``
  (``drop_last=True``). Augmentation is IRN's classification one: ``resize_long=(320, 640)``, random
  horizontal flip, random 512 crop. Batch ``cam_batch_size``.
- ``run_sample.py`` (VOC): ``recam_num_epoches=4``, ``recam_learning_rate=5e-4``, ``recam_loss_weight=1.0``,
  ``cam_batch_size=16``, ``cam_crop_size=512``, ``cam_weight_decay=1e-4``, ``train_list=voc12/train_aug.txt``,
  ``cam_scales=(1.0, 0.5, 1.5, 2.0)``; its own thresholds ``cam_eval_thres=0.21`` (seeds),
  ``conf_fg_thres=0.35``, ``conf_bg_thres=0.10``, ``sem_seg_bg_thres=0.28``. (``run_sample_coco.py`` differs:
  ``recam_loss_weight=0.1``, ``recam_batch_size=6``, ``cam_eval_thres=0.15``, ``sem_seg_bg_thres=0.25``.)
- ``step/make_recam.py`` with ``CAM.forward2``: ``conv2d(feature, weight * self.classifier.weight)``, where
  ``weight`` is the predictor's ``classifier.weight``: the elementwise product ``W' ⊙ W`` (both (K, C, 1, 1)),
  then ReLU per scale, the flipped copy flipped back and added, bilinear resizing, the sum over scales and
  max-normalisation (+1e-5) — IRN's ``make_cam`` with the product weight, i.e. :func:`~esol_lib.method.cam.
  multiscale_cam` with :func:`recam_cam_fn`. It uses the last epoch's model and predictor.

Differences from the public code, all without effect on the numbers: ``F`` here is the CAM classifier's
:meth:`~esol_lib.models.classifier.CAMClassifier.head` (after the two extra convolutions of §4.1), where
ReCAM's is ResNet-50's ``layer4``; the class features are computed as one batched matrix product instead of
ReCAM's (B, K, C, h·w) intermediate; and the frozen stem / frozen BatchNorm of IRN's ResNet are the backbone's
``freeze_bn`` / ``frozen_stages`` settings, not this module's concern.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from esol_lib.models.class_predictor import ClassPredictor
from esol_lib.models.classifier import CAMClassifier, multilabel_loss

__all__ = [
    "ClassPredictor",
    "class_features",
    "recam_loss",
    "recam_objective",
    "recam_loss_of",
    "recam_weight",
    "recam_cam_fn",
    "recam_param_groups",
]


def _label_mask(labels: Tensor) -> Tensor:
    """The labelled (image, class) pairs, (B, K) bool: ``labels > 0.5``, ReCAM's ``label > 0`` for {0, 1} labels.

    0.5 (the project's rule for an image's keys, :func:`~esol_lib.method.cam.compute_cams`) keeps a small soft
    label from making a class present.
    """
    return labels > 0.5


def class_features(f: Tensor, classifier_weight: Tensor, labels: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """ReCAM's CAM-weighted class features: one C-vector per labelled (image, class) pair.

    ``z_{b,c} = mean_{x,y} A_{b,c}(x, y) · F_b(x, y)`` with ``A_{b,c} = ReLU(w_c^T F_b) / (max ReLU(w_c^T F_b) + eps)``
    (``Net_CAM_Feature``). Nothing is detached, as in ReCAM: gradients reach ``F`` both directly and through
    the CAM, and ``classifier_weight`` through the CAM.

    Args:
        f: the final feature map F, (B, C, h, w).
        classifier_weight: the CAM classifier's bias-free 1x1 weight W, (K, C, 1, 1).
        labels: image labels y, (B, K); a class is labelled where ``labels > 0.5``.
        eps: added to each CAM's spatial maximum (ReCAM: 1e-5), so an all-zero CAM gives a zero feature.

    Returns:
        ``(features (N, C), targets (N,))``: the rows image by image, within an image in ascending class order
        (ReCAM's order, which :func:`recam_loss` relies on), and each row's class index (int64).
    """
    if f.ndim != 4:
        raise ValueError(f"class_features: f must be (B, C, h, w), got {tuple(f.shape)}")
    b, c, h, w = f.shape
    if classifier_weight.ndim != 4 or classifier_weight.shape[1:] != (c, 1, 1):
        raise ValueError(
            f"class_features: classifier_weight must be (K, {c}, 1, 1) for F with {c} channels, "
            f"got {tuple(classifier_weight.shape)}"
        )
    k = classifier_weight.shape[0]
    if labels.shape != (b, k):
        raise ValueError(f"class_features: labels must be ({b}, {k}), got {tuple(labels.shape)}")
    cams = F.relu(F.conv2d(f, classifier_weight)).flatten(2)  # (B, K, hw)
    cams = cams / (cams.amax(dim=-1, keepdim=True) + eps)
    # mean over pixels of A_k · F for every class: (B, K, hw) @ (B, hw, C) / hw → (B, K, C)
    per_class = torch.bmm(cams, f.flatten(2).transpose(1, 2)) / (h * w)
    pairs = _label_mask(labels).nonzero()  # (N, 2), row-major: image by image, classes ascending
    return per_class[pairs[:, 0], pairs[:, 1]], pairs[:, 1]


def recam_loss(
    logits: Tensor, labels: Tensor, class_logits: Tensor, targets: Tensor, weight: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """ReCAM's training loss ``L_bce + weight · L_ce`` (``step/train_recam.py``).

    ``L_bce`` is the multi-label soft-margin loss of the GAP logits (:func:`~esol_lib.models.classifier.
    multilabel_loss`). ``L_ce`` is ReCAM's ``Class_Predictor`` loss: per image the softmax cross-entropy of its
    class logits against their classes, averaged over that image's labelled classes, then summed over images
    and divided by the batch size B (an image without classes adds nothing but counts in B). A batch without any
    labelled class gives ``L_ce = 0``.

    Args:
        logits: the CAM classifier's GAP logits, (B, K).
        labels: image labels, (B, K).
        class_logits: :class:`ClassPredictor` logits of :func:`class_features`, (N, K).
        targets: the class of each row, from :func:`class_features` (rows must be in its order), (N,).
        weight: λ, ``recam_loss_weight`` (ReCAM VOC: 1.0; COCO: 0.1).

    Returns:
        ``(loss, {"cls": L_bce, "recam": L_ce})``, the parts as floats (``L_ce`` unweighted, as ReCAM logs it).

    Raises:
        ValueError: shapes that do not fit, or rows that are not :func:`class_features`' labelled pairs in order.
    """
    cls = multilabel_loss(logits, labels)
    b, k = labels.shape
    pairs = _label_mask(labels).nonzero()
    if class_logits.ndim != 2 or class_logits.shape != (len(pairs), k):
        raise ValueError(
            f"recam_loss: class_logits must be ({len(pairs)}, {k}) for the {len(pairs)} labelled pairs of these "
            f"labels, got {tuple(class_logits.shape)}"
        )
    if targets.shape != (len(pairs),) or not torch.equal(targets.to(pairs.device, torch.long), pairs[:, 1]):
        raise ValueError("recam_loss: targets are not the labelled classes of these labels in class_features' order")
    if len(pairs) == 0:
        ce = class_logits.sum() * 0.0
    else:
        per_pair = F.cross_entropy(class_logits, pairs[:, 1].to(class_logits.device), reduction="none")
        per_image = _label_mask(labels).sum(dim=1).to(per_pair.dtype)  # |Y_i| ≥ 1 for every image with a row
        share = 1.0 / (b * per_image[pairs[:, 0]])
        ce = (per_pair * share.to(per_pair.device)).sum()
    loss = cls + weight * ce
    return loss, {"cls": float(cls.detach()), "recam": float(ce.detach())}


def recam_objective(
    model: CAMClassifier, predictor: ClassPredictor, images: Tensor, labels: Tensor, weight: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """One ReCAM forward pass and its loss: F once, GAP logits and class features from it, :func:`recam_loss`.

    The CAMs are recomputed from the current weights at every step, as in ReCAM.
    """
    f = model.head(model.features(images))
    return recam_loss_of(f, model.logits_from_head(f), model.classifier.weight, predictor, labels, weight)


def recam_loss_of(
    f: Tensor, logits: Tensor, classifier_weight: Tensor, predictor: ClassPredictor, labels: Tensor, weight: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """:func:`recam_loss` of a forward pass already made: the final feature map ``f`` (B, C, h, w) and its
    GAP logits (B, K) (what :class:`~esol_lib.models.class_predictor.ReCAMModel` returns)."""
    feats, targets = class_features(f, classifier_weight, labels)
    return recam_loss(logits, labels, predictor(feats), targets, weight)


def recam_weight(classifier_weight: Tensor, predictor: ClassPredictor) -> Tensor:
    """The weight of ReCAM's CAMs: ``W' ⊙ W``, the elementwise product of the two (K, C, 1, 1) weights.

    ``make_recam.py`` / ``CAM.forward2``: ``conv2d(feature, weight * self.classifier.weight)`` with ``weight``
    the predictor's ``classifier.weight``.
    """
    pw = predictor.classifier.weight
    if classifier_weight.shape != pw.shape:
        raise ValueError(
            f"recam_weight: the classifier weight {tuple(classifier_weight.shape)} and the predictor weight "
            f"{tuple(pw.shape)} differ"
        )
    return pw * classifier_weight


def recam_cam_fn(model: CAMClassifier, predictor: ClassPredictor) -> Callable[[Tensor], Tensor]:
    """``images (B, 3, H, W) → conv2d(F, W' ⊙ W)`` (B, K, h, w): ReCAM's raw maps, for :func:`multiscale_cam`.

    :func:`~esol_lib.method.cam.multiscale_cam` adds the ReLU per scale, the flips, the resizing, the sum over
    scales and the max-normalisation, as ``make_recam.py`` does. The product weight is formed on each call,
    so the function follows later changes of either weight.
    """

    def cam_fn(images: Tensor) -> Tensor:
        return F.conv2d(model.head(model.features(images)), recam_weight(model.classifier.weight, predictor))

    return cam_fn


def recam_param_groups(
    model: CAMClassifier, predictor: ClassPredictor, lr: float, backbone_mult: float = 0.1
) -> list[dict[str, Any]]:
    """ReCAM's three SGD groups: the fine-tuned CAM classifier at ``lr * backbone_mult``, the predictor at ``lr``.

    ``step/train_recam.py`` gives the backbone *and* the original classifier (its ``newly_added``) ``0.1 *
    recam_learning_rate`` and only the new ``Class_Predictor`` ``recam_learning_rate`` (5e-4 on VOC) — unlike
    IRN's CAM training, where new layers get 10x. Here the groups are ``backbone`` (the backbone), ``new``
    (everything else of the CAM classifier: ``extra1``, ``extra2``, ``classifier``), both at ``lr *
    backbone_mult``, and ``predictor`` at ``lr``. Each group sets only ``lr`` (and ``name``); ReCAM's per-group
    weight decay 1e-4 and IRN's effective momentum 1e-4 come from the stage's optimiser settings
    (:class:`~esol_lib.runtime.config.OptimiserConfig`'s defaults, applied by
    :func:`~esol_lib.runtime.schedule.stage_sgd`). Parameters with ``requires_grad=False`` are left out.
    """
    groups = model.param_groups(lr * backbone_mult, 1.0)
    groups.append({"params": [p for p in predictor.parameters() if p.requires_grad], "lr": lr, "name": "predictor"})
    return groups
