"""Networks: backbones and the CAM classifier (§3.1, §4.1)."""

from esol_lib.models.backbone import BACKBONES, IMAGENET_FILES, STAGE_NAMES, Backbone, build_backbone
from esol_lib.models.classifier import CAMClassifier, build_classifier, multilabel_loss

__all__ = [
    "BACKBONES",
    "IMAGENET_FILES",
    "STAGE_NAMES",
    "Backbone",
    "CAMClassifier",
    "build_backbone",
    "build_classifier",
    "multilabel_loss",
]
