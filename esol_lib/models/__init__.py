"""Every network of esol: backbones, the CAM classifier, the samplers and the ESOL model, IRN's boundary
branch, DeepLab-v2 and the pretraining classifier. The code that trains them is in :mod:`esol_lib.steps`."""

from esol_lib.models.backbone import BACKBONES, IMAGENET_FILES, STAGE_NAMES, Backbone, build_backbone
from esol_lib.models.boundary import BoundaryNet, boundary_map
from esol_lib.models.classifier import CAMClassifier, build_classifier, multilabel_loss
from esol_lib.models.deeplab import ASPP, DeepLabV2, build_deeplab
from esol_lib.models.esol import ESOLModel
from esol_lib.models.glyph import GlyphClassifier
from esol_lib.models.samplers import DeformableSampler, ExpansionSampler, ShrinkageSampler

__all__ = [
    "ASPP",
    "BACKBONES",
    "IMAGENET_FILES",
    "STAGE_NAMES",
    "Backbone",
    "BoundaryNet",
    "CAMClassifier",
    "DeepLabV2",
    "DeformableSampler",
    "ESOLModel",
    "ExpansionSampler",
    "GlyphClassifier",
    "ShrinkageSampler",
    "boundary_map",
    "build_backbone",
    "build_classifier",
    "build_deeplab",
    "multilabel_loss",
]
