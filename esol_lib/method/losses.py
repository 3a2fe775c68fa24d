"""Losses of ESOL: Eq. (1) classification, Eq. (5) expansion, Eq. (6) shrinkage with the area loss,
and the feature clipping of Eq. (7) that sits between the two samplers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esol_lib.models.classifier import multilabel_loss  # Eq. (1), shared with the baseline

__all__ = ["multilabel_loss", "expansion_loss", "area_loss", "shrinkage_loss", "feature_clip", "area_maps"]


def expansion_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. (5): ``L_expansion = (-1.0) · α · L(ŷ, y)`` — minimising it *maximises* the classification loss."""
    return -alpha * multilabel_loss(logits, labels)


def feature_clip(x: torch.Tensor, beta: float, gradient: bool = False) -> torch.Tensor:
    """Eq. (7): per image and channel, values above ``β · max`` (spatial max) are set to ``β · max``.

    Flattens the activation bias left by expansion so every pixel has a fair chance in shrinkage.
    ``x`` is ``(B, C, H, W)``. The paper does not say whether the ceiling is differentiated:
    ``gradient=False`` (``expansion.clip_gradient``) treats it as a statistic, so a clipped cell
    passes no gradient at all; ``True`` lets the gradient reach the channel's maximum through it.
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"feature clipping needs 0 < beta <= 1, got {beta}")
    ceiling = beta * (x if gradient else x.detach()).amax(dim=(-2, -1), keepdim=True)
    return torch.minimum(x, ceiling)


def area_maps(cams: torch.Tensor, kind: str = "cam") -> torch.Tensor:
    """The localization maps ``P_k`` the area loss measures (the paper leaves them undefined; DESIGN.md).

    ``'cam'`` (``shrinkage.area_map``'s default): ReLU'd CAMs divided by their spatial max —
    Eq. (2)'s localization map, the map that is thresholded into seeds. The gradient passes through
    the max too, so raising a class's peak lowers the whole map's area.
    ``'cam-detached'``: the same map with the max held constant: the area falls only where the
    class score itself falls.
    ``'sigmoid'``: ``σ(w_k^T F)``, each pixel's own classification probability (not in the
    paper's text). The sampler cannot make scores negative, so it lowers this area only by reading
    features that score lower, and a saturated sigmoid passes little gradient.
    """
    if kind == "sigmoid":
        return torch.sigmoid(cams)
    if kind in ("cam", "cam-detached"):
        cams = F.relu(cams)
        peak = cams.amax(dim=(-2, -1), keepdim=True)
        return cams / ((peak.detach() if kind == "cam-detached" else peak) + 1e-5)
    raise ValueError(f"shrinkage.area_map must be 'cam', 'cam-detached' or 'sigmoid', got {kind!r}")


def area_loss(maps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (6): ``L_area = 1/C Σ_c S_c`` with ``S_c = 1/(HW) Σ_{h,w} P_c(h, w)``, averaged over the batch.

    With ``labels`` (``(B, C)`` multi-hot), the mean runs over each image's ground-truth classes only
    (``shrinkage.area_classes: present``) instead of all ``C`` classes.
    """
    if labels is None:
        return maps.mean()
    areas = maps.mean(dim=(-2, -1))  # (B, C): S_c per image
    present = labels.to(areas.dtype)
    return (areas * present).sum() / present.sum().clamp_min(1.0)


def shrinkage_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    *,
    gamma: float = 1.0,
    mu: float = 1.0,
    use_area: bool = True,
    area_map: str = "cam",
    area_classes: str = "present",
) -> tuple[torch.Tensor, dict]:
    """Eq. (6): ``γ · L(ŷ, y) + μ · L_area``; returns the loss and its two terms for logging.

    ``area_classes``: ``'all'`` averages the area over all ``C`` classes, as Eq. (6) is written;
    ``'present'`` over the image's ground-truth classes only (absent classes have no object to shrink).
    """
    if area_classes not in ("all", "present"):
        raise ValueError(f"shrinkage.area_classes must be 'all' or 'present', got {area_classes!r}")
    cls = multilabel_loss(logits, labels)
    if use_area:
        area = area_loss(area_maps(cams, area_map), labels if area_classes == "present" else None)
    else:
        area = cls.new_zeros(())
    return gamma * cls + mu * area, {"cls": float(cls.detach()), "area": float(area.detach())}
