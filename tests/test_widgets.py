"""The α and β sliders redraw when moved: what JupyterLab shows is the Output widget's state, read here."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from esol_lib import widgets
from esol_lib.models import CAMClassifier, build_backbone
from esol_lib.models.esol import ESOLModel


def _png(view) -> str:
    slider, out = view.children
    (only,) = out.outputs
    return only["data"]["image/png"]


def test_alpha_slider_shows_the_cams_of_the_chosen_alpha():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    heats = {a: [np.full((16, 16), v, np.float32) for _ in images] for a, v in ((0.001, 0.0), (0.01, 0.5), (0.1, 1.0))}
    figures = len(plt.get_fignums())
    view = widgets.alpha_explorer(images, heats)
    slider = view.children[0]
    assert slider.value == 0.01 and list(slider.options) == [0.001, 0.01, 0.1]
    first = _png(view)
    slider.value = 0.1
    assert _png(view) != first
    slider.value = 0.01
    assert _png(view) == first  # the same α draws the same picture
    assert len(plt.get_fignums()) == figures  # no figure left open per move
    with pytest.raises(ValueError, match="no α"):
        widgets.alpha_explorer(images, {})


def test_beta_slider_reclips_the_stored_features():
    torch.manual_seed(0)
    baseline = CAMClassifier(build_backbone("small", [1, 2, 2, 1]), num_classes=3).eval()
    cfg = type("C", (), {"offsets": True, "deformable": True, "train_regular": False, "clip": True, "beta": 0.15})
    model = ESOLModel(baseline, cfg, type("S", (), {"offsets": True, "train_regular": False})).eval()
    rng = np.random.default_rng(0)
    samples = [{"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "label": torch.tensor([1.0, 0, 1])}]
    probe = widgets.clip_probe(model, samples, [0.5] * 3, [0.25] * 3)
    view = widgets.beta_explorer(probe, value=0.15)
    slider = view.children[0]
    first = _png(view)
    slider.value = 1.0
    assert _png(view) != first
    energy, _ = probe.maps(1.0)
    unclipped, _ = probe.maps(None)
    np.testing.assert_allclose(energy, unclipped)  # β = 1 clips nothing
