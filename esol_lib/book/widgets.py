"""α / β explorers for JupyterLab (ipywidgets), with static figure grids for the published book.

Slow work is precomputed: β (feature clipping, Eq. (7)) acts on stored sampler outputs, so a slider
move costs one clip and one 3×3 convolution; α (Eq. (5)) needs one expansion run per value, so its
slider steps through CAMs computed beforehand (chapter 07 trains them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from esol_lib.book.viz import overlay
from esol_lib.data.transforms import to_tensor
from esol_lib.method.losses import feature_clip

__all__ = ["ClipProbe", "clip_probe", "beta_grid", "beta_explorer", "alpha_grid", "alpha_explorer"]


@dataclass
class ClipProbe:
    """What the β explorer needs for a few images: the expansion sampler's output before clipping."""

    images: list[np.ndarray]  # (H, W, 3) uint8
    expanded: torch.Tensor  # (B, C, h, w): ReLU(ES(features)), unclipped
    model: torch.nn.Module  # the ESOL model (its SS and classifier finish the computation)
    keys: list[np.ndarray]  # ground-truth class indices (0-based) per image

    @torch.no_grad()
    def maps(self, beta: float | None) -> tuple[np.ndarray, np.ndarray]:
        """``(feature energy (B, h, w), CAM heat (B, H, W))`` with clipping at ``beta`` (None: no clip)."""
        f = self.expanded if beta is None else feature_clip(self.expanded, beta)
        energy = f.mean(1)
        cams = F.relu(self.model.cam_from_head(F.relu(self.model.ss(f))))
        size = self.images[0].shape[:2]
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        heat = []
        for b, keys in enumerate(self.keys):
            c = cams[b, keys] if len(keys) else torch.zeros(1, *size)
            c = c / (c.flatten(1).amax(1)[:, None, None] + 1e-5)
            heat.append(c.amax(0))
        energy = energy / (energy.flatten(1).amax(1)[:, None, None] + 1e-5)
        return energy.numpy(), torch.stack(heat).numpy()


@torch.no_grad()
def clip_probe(model: torch.nn.Module, samples: Sequence[dict], mean, std) -> ClipProbe:
    """Run the frozen part of ``model`` (backbone → ES → ReLU) once for ``samples``."""
    x = torch.stack([to_tensor(s["image"], mean, std) for s in samples])
    feat = model.features(x)
    expanded = F.relu(model.es(feat))
    keys = [np.nonzero(np.asarray(s["label"]) > 0.5)[0] for s in samples]
    return ClipProbe([s["image"] for s in samples], expanded, model, keys)


def beta_grid(probe: ClipProbe, betas: Sequence[float | None] = (None, 0.6, 0.3, 0.15, 0.05)):
    """Static version of the β slider: feature energy and CAM per image (rows) and β (columns)."""
    n = len(probe.images)
    fig, axes = plt.subplots(2 * n, len(betas), figsize=(1.9 * len(betas), 3.8 * n), squeeze=False)
    for j, beta in enumerate(betas):
        energy, heat = probe.maps(beta)
        for i in range(n):
            axes[2 * i, j].imshow(energy[i], cmap="viridis", vmin=0, vmax=1)
            axes[2 * i + 1, j].imshow(overlay(probe.images[i], heat[i]))
        axes[0, j].set_title("no clipping" if beta is None else f"β = {beta}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(n):
        axes[2 * i, 0].set_ylabel("features", fontsize=8)
        axes[2 * i + 1, 0].set_ylabel("CAM", fontsize=8)
    fig.tight_layout()
    return fig


def _slider_view(slider, render):
    """``VBox([slider, Output])`` whose output shows ``render(slider.value)`` (a Figure) as a PNG.

    The PNG is put into the Output widget's own state (``outputs``) rather than printed inside a
    capture context, so JupyterLab shows it and a test can read it without a kernel. Figures are
    closed after rendering: a slider moved a hundred times leaves no figure behind.
    """
    import base64
    import io

    import ipywidgets as widgets

    out = widgets.Output()

    def draw(change=None) -> None:
        fig = render(slider.value)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        png = base64.b64encode(buf.getvalue()).decode("ascii")
        out.outputs = ({"output_type": "display_data", "data": {"image/png": png}, "metadata": {}},)

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])


def beta_explorer(probe: ClipProbe, value: float = 0.15):
    """An ipywidgets slider for β that redraws the clipped features and the CAMs on every move."""
    import ipywidgets as widgets

    slider = widgets.FloatSlider(
        value=value, min=0.02, max=1.0, step=0.01, description="β", continuous_update=False, readout_format=".2f"
    )

    def render(beta: float):
        energy, heat = probe.maps(beta)
        n = len(probe.images)
        fig, axes = plt.subplots(2, n, figsize=(2 * n, 4), squeeze=False)
        for i in range(n):
            axes[0, i].imshow(energy[i], cmap="viridis", vmin=0, vmax=1)
            axes[1, i].imshow(overlay(probe.images[i], heat[i]))
        for ax in axes.flat:
            ax.set_axis_off()
        fig.suptitle(f"feature clipping at β = {beta:.2f}: features (top), CAMs (bottom)", fontsize=9)
        return fig

    return _slider_view(slider, render)


def alpha_grid(images: Sequence[np.ndarray], heats: Mapping[float, Sequence[np.ndarray]]):
    """Static version of the α slider: expansion CAMs per image (rows) and α (columns)."""
    alphas = sorted(heats)
    fig, axes = plt.subplots(len(images), len(alphas), figsize=(1.9 * len(alphas), 1.9 * len(images)), squeeze=False)
    for j, a in enumerate(alphas):
        for i, image in enumerate(images):
            axes[i, j].imshow(overlay(image, heats[a][i]))
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(f"α = {a:g}", fontsize=9)
    fig.tight_layout()
    return fig


def alpha_explorer(images: Sequence[np.ndarray], heats: Mapping[float, Sequence[np.ndarray]]):
    """An ipywidgets slider stepping through expansion CAMs trained with different α (precomputed)."""
    import ipywidgets as widgets

    alphas = sorted(heats)
    if not alphas:
        raise ValueError("alpha_explorer: no α has CAMs to show (every run diverged or none was run)")
    slider = widgets.SelectionSlider(
        options=alphas, value=alphas[len(alphas) // 2], description="α", continuous_update=True
    )

    def render(alpha: float):
        n = len(images)
        fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.2), squeeze=False)
        for i in range(n):
            axes[0, i].imshow(overlay(images[i], heats[alpha][i]))
            axes[0, i].set_axis_off()
        fig.suptitle(f"expansion CAMs, α = {alpha:g}", fontsize=9)
        return fig

    return _slider_view(slider, render)
