"""Stand-ins for torchvision's ImageNet weights: random ResNets saved under the names the paper's
profiles look for, so that ``voc12`` and ``coco14`` run every step on a machine without the real files
(the test suite, ``benchmarks/gpu_check.py``). Nothing is downloaded.

A freshly initialised ResNet in eval mode keeps batch-norm statistics of 0 and 1, which no trained
network has; the stand-ins get statistics measured on random images (train-mode passes with a
cumulative average), so every block sees inputs of the scale its batch norm expects. They are *not*
ImageNet features: the paper's learning rates can diverge on them (IRN's ``train_cam.lr`` 0.1 does
within two steps, measured with ``tests/test_paper_profiles.py``), so runs on them set lower ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from esol_lib.models.backbone import IMAGENET_FILES

__all__ = ["write_random_imagenet_weights"]

_CONSTRUCTORS = {"resnet50": torchvision.models.resnet50, "resnet101": torchvision.models.resnet101}


def write_random_imagenet_weights(
    torch_home: str | Path, archs: tuple[str, ...] = ("resnet50", "resnet101"), seed: int = 0, size: int = 64
) -> list[Path]:
    """Write one ImageNet-shaped random state dict per arch to ``torch_home/hub/checkpoints/<torchvision
    name>`` (where ``model.pretrained: imagenet`` looks when ``TORCH_HOME`` is ``torch_home``); return
    the paths. Batch-norm statistics come from 4 batches of 8 random ``size``-pixel images."""
    folder = Path(torch_home) / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for arch in archs:
        if arch not in _CONSTRUCTORS:
            raise ValueError(f"no ImageNet-shaped stand-in for {arch!r}; one of {', '.join(_CONSTRUCTORS)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _CONSTRUCTORS[arch]()
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.reset_running_stats()
                    module.momentum = None  # a cumulative average over the calibration batches
            model.train()
            with torch.no_grad():
                for _ in range(4):
                    model(torch.randn(8, 3, size, size))
        path = folder / IMAGENET_FILES[arch][0]
        torch.save(model.state_dict(), path)
        written.append(path)
    return written
