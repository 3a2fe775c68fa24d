"""Every network of esol: backbones, the CAM classifier, the samplers and the ESOL model, IRN's boundary
branch, DeepLab-v2 and the pretraining classifier. The code that trains them is in :mod:`esol_lib.steps`.

Its names load lazily (``_EXPORTS``): importing one module of this package never runs another, so
modules here may import their siblings without an import cycle through this ``__init__``.
"""

from __future__ import annotations

from esol_lib.runtime.lazy import lazy_namespace

#: name → the module that defines it (loaded on first use).
_EXPORTS: dict[str, str] = {
    "ASPP": "esol_lib.models.deeplab",
    "BACKBONES": "esol_lib.models.backbone",
    "BACKBONE_LEVELS": "esol_lib.models.backbone",
    "IMAGENET_FILES": "esol_lib.models.backbone",
    "Backbone": "esol_lib.models.backbone",
    "BoundaryNet": "esol_lib.models.boundary",
    "CAMClassifier": "esol_lib.models.classifier",
    "DeepLabV2": "esol_lib.models.deeplab",
    "DeformableSampler": "esol_lib.models.samplers",
    "ESOLModel": "esol_lib.models.esol",
    "ExpansionSampler": "esol_lib.models.samplers",
    "GlyphClassifier": "esol_lib.models.glyph",
    "ShrinkageSampler": "esol_lib.models.samplers",
    "boundary_map": "esol_lib.models.boundary",
    "build_backbone": "esol_lib.models.backbone",
    "build_classifier": "esol_lib.models.classifier",
    "build_deeplab": "esol_lib.models.deeplab",
    "multilabel_loss": "esol_lib.models.classifier",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
