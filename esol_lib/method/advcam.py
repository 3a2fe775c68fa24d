"""AdvCAM (Lee, Kim & Yoon, CVPR 2021): better CAMs from a trained classifier by climbing the image anti-adversarially.

Lee, Kim, Yoon, "Anti-Adversarially Manipulated Attributions for Weakly and Semi-Supervised Semantic
Segmentation", CVPR 2021. AdvCAM trains nothing: for each labelled class it perturbs the *input* so that
the class score grows (the opposite of an adversarial attack), which spreads the class's evidence over
more of the object, and accumulates the class map of every perturbed image. A regulariser keeps the
already-discriminative region from growing without bound, so the new regions can catch up.

Written after the public code, ``jbeomlee93/AdvCAM`` at commit ``2650fcd`` (files ``obtain_CAM_masking.py``,
``gradCAM.py``, ``net/resnet50_cam.py``, ``misc/torchutils.py``, ``voc12/dataloader.py``); line numbers
below are that commit's. Per scale ``s`` and labelled class ``c``, starting from the pair ``x⁰ = [I_s,
flip(I_s)]`` (``dataloader.py`` 199; the pair is restarted for every class, ``obtain_CAM_masking.py`` 89-92):

1. **Attribution** ``A^t = a(x^t)[0] + flip(a(x^t)[1])`` (``obtain_CAM_masking.py`` 110-118), with ``a`` the
   code's Grad-CAM on the final feature map ``F`` (``stage4``; :func:`gradcam_map`): the gradient of
   ``Σ_b Σ_xy ReLU(w_c^T F)`` (global *sum* pooling, ``gradCAM.py`` 22-24, 36-37) with respect to ``F``, pooled
   per channel by ``misc/torchutils.py`` ``gap2d_pos`` (78-83), which divides the spatial sum by the number of
   positive entries of the *whole* gradient tensor (both flips, all channels), then
   ``ReLU(Σ_k F_k · weight_k)`` (``gradCAM.py`` 86-98). The weights are constants (no graph through them).
   For this project's bias-free linear classifier the gradient is ``w_c · 1[w_c^T F > 0]``, so per flip
   ``a_b = n_b / (P · (n_0 + n_1)) · ReLU(w_c^T F_b)``: ``n_b`` is the number of cells where the CAM is
   positive and ``P`` the number of positive weights in ``w_c``. It is proportional to the plain CAM, but
   the factor (about ``1 / (2P)``) sets the scale of the regulariser below, so it is kept by default
   (``attribution="gradcam"``); ``attribution="cam"`` uses ``ReLU(w_c^T F)`` itself. ``A⁰`` (step 0) is kept.
2. **Accumulation**: the result is ``Σ_{t=0}^{T-1} A^t``, raw and unnormalised, each map taken *before* that
   iteration's step (``obtain_CAM_masking.py`` 123), so ``T`` iterations make ``T`` forward passes and ``T-1``
   steps that matter (the code also takes a last step whose image is never looked at; it is skipped here).
3. **Score** ``S = Σ_b [ s_c(x_b) − Σ_{k≠c} s_k(x_b) ]`` over both flips and *every* other class, labelled or
   not (``obtain_CAM_masking.py`` 124-129: ``−2·logit[:, c] + Σ logit``), with ``s_k = mean_xy ReLU(w_k^T F)``:
   the GAP of the *ReLU'd* raw maps (``gradCAM.py`` 29 returns the raw maps of ``CAM.forward(separate=True)``,
   ``net/resnet50_cam.py`` 59-70), not the classifier's logit ``mean_xy w_k^T F``.
4. **Mask** ``M^t = [A^t / max A^t > τ]``, recomputed from the current map at every iteration and held constant
   (``obtain_CAM_masking.py`` 65-68, 131-132).
5. **Regulariser** ``L_AD = Σ_xy |A^t − A⁰| ⊙ M^t``, a *sum* over cells (134); the objective climbed is
   ``S − λ·L_AD`` (136). At ``t = 0`` both ``L_AD`` and its gradient are zero (``d|u|/du = 0`` at ``u = 0``).
6. **Step** ``x^{t+1} = clamp(x^t + ξ · g / (max|g| + 1e-12), min x^t, max x^t)`` with ``g = ∇_x (S − λ·L_AD)``
   on the normalised pair (``adv_climb``, 59-63): max-normalised, not a sign step, and clamped to the scalar
   minimum and maximum of the *current* pair (both flips, all channels together), so the allowed range can
   only shrink from step to step. ``value_range`` replaces this with fixed bounds (e.g. per channel
   ``((0 − mean)/std, (1 − mean)/std)``, the range of a valid image).

Defaults (``obtain_CAM_masking.py`` 42, 48-51): scales ``(1.0, 0.5, 1.5, 2.0)``, ``T = 27`` (``adv_iter``),
``λ = 7`` (``AD_coeff``), ``ξ = 0.08`` (``AD_stepsize``), ``τ = 0.5`` (``score_th``).

**The half-scale quirk** (94-105): the scales are visited in the order 0.5, 1.0, 1.5, 2.0 (88; by list index
1, which is 0.5 for the default list). For the 0.5 scale the code runs ``T // 2`` iterations (13) when
``T > 10``, 5 when ``6 ≤ T ≤ 10``, ``T`` when ``T < 6`` (:func:`half_scale_steps`), and sets a weight
``mul_for_scale`` (2, or 1 when ``T ≤ 10``) that is never reset, so every later scale carries the same weight.
Net effect: the 0.5× map accumulates half as many steps as the others at the *same* weight (the common
weight only meets the final ``+ 1e-5``). ``half_steps_at_half_scale=True`` (default) reproduces this, keyed
by the scale's value 0.5; ``False`` runs ``T`` iterations at weight 1 for every scale.

**λ depends on the feature-map size**: ``L_AD`` is a sum over the ``h·w`` cells while ``S`` is a mean, so at
the same λ the regulariser's weight against the score grows in proportion to ``h·w``: VOC (a 512-pixel input
at output stride 16, 32×32 = 1024 cells) gives it 16 times the weight it has on this project's 8×8 maps and 4
times the weight on 16×16 ones. ``reg_reduction="sum"`` is the code's (λ as written); ``"area"`` multiplies the sum by
``reference_cells / (h·w)``, so λ means what it would on a map of ``reference_cells`` cells (λ carried by a
VOC-sized map); the two agree when ``h·w == reference_cells``. With ``attribution="gradcam"`` the regulariser
also carries the Grad-CAM factor ``≈ 1/(2P)``, and ``P`` is at most the channels of ``F`` (2048 for IRN's
ResNet-50, 128 for the ``small`` backbone): neither option corrects for that.

**Aggregation** as IRN (149-157): each scale's accumulated map is resized bilinearly to the image size,
the scales are summed, and each class map is divided by its maximum + 1e-5. The code rescales the
uint8 image bicubically before normalisation (``dataloader.py`` 196); here the normalised tensor is
resized bilinearly, as :func:`esol_lib.method.cam.multiscale_cam` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esol_lib.method.cam import rescale

__all__ = [
    "ADVCAM_SCALES",
    "Attribution",
    "RegReduction",
    "AdvStep",
    "half_scale_steps",
    "gradcam_map",
    "attribution_map",
    "score_term",
    "anti_adversarial_step",
    "advcam_maps",
    "AdvCamProducer",
]

#: The public code's inference scales (``--cam_scales``), the order the maps are summed in.
ADVCAM_SCALES: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)

Attribution = Literal["gradcam", "cam"]
RegReduction = Literal["sum", "area"]

_ATTRIBUTIONS = ("gradcam", "cam")
_REG_REDUCTIONS = ("sum", "area")


class AdvStep(NamedTuple):
    """One anti-adversarial step on a pair ``[image, flipped image]``.

    ``image`` is the pair after the step (clamped); ``attribution`` the map ``A`` (h, w) of the pair *before*
    the step (the one that is accumulated); ``init`` the step-0 map ``A⁰`` used by the regulariser (``A``
    itself when none was given); ``mask`` the boolean ``A / max A > τ``; ``score`` the score term ``S`` and
    ``regulariser`` ``L_AD`` (after ``reg_reduction``) before the step; ``step`` the unclamped update
    ``ξ · g / max|g|``.
    """

    image: Tensor
    attribution: Tensor
    init: Tensor
    mask: Tensor
    score: Tensor
    regulariser: Tensor
    step: Tensor


def half_scale_steps(steps: int) -> int:
    """Iterations the public code runs at the 0.5 scale for ``steps`` iterations elsewhere.

    ``steps // 2`` when ``steps > 10``, ``steps`` when ``steps < 6``, else 5 (``obtain_CAM_masking.py`` 94-105).
    """
    if steps > 10:
        return steps // 2
    if steps < 6:
        return steps
    return 5


def _common_weight(steps: int) -> float:
    """The code's ``mul_for_scale`` that every scale carries once the 0.5 scale has set it (2 if ``T > 10``)."""
    return 2.0 if steps > 10 else 1.0


def gradcam_map(f: Tensor, cam: Tensor, target: int) -> Tensor:
    """The public code's Grad-CAM of class ``target``, per image: ``(B, h, w)``.

    ``f`` is the final feature map ``(B, C, h, w)`` and ``cam`` the raw maps ``(B, K, h, w)`` computed from it
    (in the autograd graph). The gradient of ``Σ_b Σ_xy ReLU(cam[:, target])`` with respect to ``f`` is pooled
    per channel as ``gap2d_pos`` does (spatial sum divided by the number of positive entries of the whole
    gradient tensor, + 1e-12); the map is ``ReLU(Σ_k f_k · weight_k)``. The weights are constants, so the map's
    gradient flows through ``f`` only, as in the code (whose weights come from a backward hook).
    """
    (grads,) = torch.autograd.grad(F.relu(cam[:, target]).sum(), f, retain_graph=True)
    weights = grads.sum(dim=(2, 3), keepdim=True) / ((grads > 0).sum() + 1e-12)
    return F.relu((f * weights).sum(dim=1))


def _attribute(model: nn.Module, pair: Tensor, target: int, attribution: Attribution) -> tuple[Tensor, Tensor]:
    """``(A (h, w), raw maps (2, K, h, w))`` of a pair ``[image, flipped image]``, in the autograd graph."""
    f = model.head(model.features(pair))
    cam = model.cam_from_head(f)
    per_image = gradcam_map(f, cam, target) if attribution == "gradcam" else F.relu(cam[:, target])
    return per_image[0] + per_image[1].flip(-1), cam


def _check_pair(pair: Tensor) -> None:
    if pair.ndim != 4 or pair.shape[0] != 2 or pair.shape[1] != 3:
        raise ValueError(f"expected a pair [image, flipped image] of shape (2, 3, H, W), got {tuple(pair.shape)}")


def _check_eval(model: nn.Module) -> None:
    if model.training:  # a forward pass in training mode would move BatchNorm's running statistics
        raise ValueError("AdvCAM: the model must be in eval mode (call model.eval())")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def attribution_map(model: nn.Module, pair: Tensor, target: int, *, attribution: Attribution = "gradcam") -> Tensor:
    """The map ``A = a(pair[0]) + flip(a(pair[1]))`` (h, w) of class ``target`` at the feature resolution.

    ``a`` is :func:`gradcam_map` (``"gradcam"``, the code's) or ``ReLU(w_c^T F)`` (``"cam"``). Gradients are
    turned on here (Grad-CAM needs one with respect to ``F``); the result is detached.
    """
    _check_eval(model)
    _check_pair(pair)
    _check_choice("attribution", attribution, _ATTRIBUTIONS)
    with torch.inference_mode(False), torch.enable_grad():
        x = pair.detach().clone().requires_grad_(True)  # a clone: an inference-mode tensor cannot enter autograd
        a, _ = _attribute(model, x, target, attribution)
    return a.detach()


def score_term(cam: Tensor, target: int) -> Tensor:
    """``S = Σ_b [s_c − Σ_{k≠c} s_k]`` with ``s_k = mean_xy ReLU(cam[:, k])``, summed over the batch (both flips).

    Every other class is suppressed, labelled or not (``obtain_CAM_masking.py`` 124-129).
    """
    s = F.relu(cam).mean(dim=(2, 3))
    return (2 * s[:, target] - s.sum(dim=1)).sum()


def anti_adversarial_step(
    model: nn.Module,
    pair: Tensor,
    target: int,
    init: Tensor | None = None,
    *,
    step_size: float = 0.08,
    lam: float = 7.0,
    mask_threshold: float = 0.5,
    reg_reduction: RegReduction = "sum",
    reference_cells: int = 32 * 32,
    value_range: tuple[Tensor, Tensor] | None = None,
    attribution: Attribution = "gradcam",
) -> AdvStep:
    """One step ``x ← clamp(x + ξ · g / max|g|)``, ``g = ∇_x (S − λ·L_AD)``, on a normalised pair ``(2, 3, h, w)``.

    ``init`` is ``A⁰`` (h, w) at the feature resolution; ``None`` means this is step 0 (``A⁰ = A``, so
    ``L_AD`` and its gradient are zero). ``L_AD = Σ |A − A⁰| ⊙ [A / max A > τ]``, times
    ``reference_cells / (h·w)`` with ``reg_reduction="area"``. The clamp is to the scalar min and max of
    ``pair`` (the code's), or to ``value_range = (low, high)`` (tensors broadcastable to the pair) when given.
    Gradients are taken with respect to the input only: the model's parameters get no ``.grad``.
    """
    _check_eval(model)
    _check_pair(pair)
    _check_choice("attribution", attribution, _ATTRIBUTIONS)
    _check_choice("reg_reduction", reg_reduction, _REG_REDUCTIONS)
    with torch.inference_mode(False), torch.enable_grad():
        x = pair.detach().clone().requires_grad_(True)
        a, cam = _attribute(model, x, target, attribution)
        a0 = a.detach() if init is None else init.detach().clone()
        score = score_term(cam, target)
        a_now = a.detach()
        mask = a_now / a_now.max() > mask_threshold  # an all-zero map: 0/0 is NaN, so no cell is masked
        reg = (torch.abs(a - a0) * mask).sum()
        if reg_reduction == "area":
            reg = reg * (reference_cells / (a.shape[-2] * a.shape[-1]))
        (grad,) = torch.autograd.grad(score - lam * reg, x)
    step = step_size * grad / (grad.abs().max() + 1e-12)
    low, high = (x.detach().min(), x.detach().max()) if value_range is None else value_range
    low = torch.as_tensor(low, dtype=x.dtype, device=x.device)
    high = torch.as_tensor(high, dtype=x.dtype, device=x.device)
    image = torch.minimum(torch.maximum(x.detach() + step, low), high)
    return AdvStep(image, a_now, a0, mask, score.detach(), reg.detach(), step)


def advcam_maps(
    model: nn.Module,
    image: Tensor,
    classes: Sequence[int],
    *,
    scales: Sequence[float] = ADVCAM_SCALES,
    steps: int = 27,
    step_size: float = 0.08,
    lam: float = 7.0,
    mask_threshold: float = 0.5,
    half_steps_at_half_scale: bool = True,
    reg_reduction: RegReduction = "sum",
    reference_cells: int = 32 * 32,
    value_range: tuple[Tensor, Tensor] | None = None,
    attribution: Attribution = "gradcam",
    eps: float = 1e-5,
) -> Tensor:
    """AdvCAM maps ``(len(classes), H, W)`` in ``[0, 1]`` of one normalised image ``(1, 3, H, W)``.

    ``classes`` are the image's labelled classes, 0-based, in the order of the output. Per scale (the image
    resized bilinearly, paired with its flip) and class, ``steps`` iterations accumulate the map ``A`` of
    the current pair and take :func:`anti_adversarial_step` (every iteration but the last). With
    ``half_steps_at_half_scale`` the 0.5 scale runs :func:`half_scale_steps` iterations and every scale
    carries the code's common weight (see the module docstring). Each scale's sum is resized bilinearly to
    ``(H, W)``, the scales are added, and each class map is divided by its maximum + ``eps``.

    ``steps=1`` takes no step: the result is the multi-scale Grad-CAM (``attribution="gradcam"``) or exactly
    :func:`esol_lib.method.cam.multiscale_cam` of ``model.cam`` with flips (``attribution="cam"``).
    The model must be in eval mode (BatchNorm statistics must not move); its parameters are left unchanged,
    with no ``.grad``. Gradients are enabled here, also under ``torch.inference_mode``.
    """
    _check_eval(model)
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"advcam_maps: image must be (1, 3, H, W), got {tuple(image.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"advcam_maps: steps must be an integer >= 1, got {steps!r}")
    if not scales:
        raise ValueError("advcam_maps: scales must list at least one scale")
    if any(isinstance(c, bool) or int(c) != c or c < 0 for c in classes):
        raise ValueError(f"advcam_maps: classes must be 0-based class indices, got {list(classes)!r}")
    _check_choice("attribution", attribution, _ATTRIBUTIONS)
    _check_choice("reg_reduction", reg_reduction, _REG_REDUCTIONS)
    _, _, h, w = image.shape
    classes = [int(c) for c in classes]
    image = image.detach()
    weight = _common_weight(steps) if half_steps_at_half_scale else 1.0
    total = torch.zeros(len(classes), h, w, dtype=image.dtype, device=image.device)
    if not classes:
        return total
    for s in scales:
        x = rescale(image, s)
        start = torch.cat([x, x.flip(-1)], dim=0)
        n_steps = half_scale_steps(steps) if half_steps_at_half_scale and s == 0.5 else steps
        acc: Tensor | None = None
        for ci, c in enumerate(classes):
            pair, init = start, None
            for t in range(n_steps):
                if t < n_steps - 1:
                    out = anti_adversarial_step(
                        model,
                        pair,
                        c,
                        init,
                        step_size=step_size,
                        lam=lam,
                        mask_threshold=mask_threshold,
                        reg_reduction=reg_reduction,
                        reference_cells=reference_cells,
                        value_range=value_range,
                        attribution=attribution,
                    )
                    a, init, pair = out.attribution, out.init, out.image
                else:  # the last map: the code's step after it is never looked at
                    a = attribution_map(model, pair, c, attribution=attribution)
                if acc is None:
                    acc = torch.zeros(len(classes), *a.shape, dtype=a.dtype, device=a.device)
                acc[ci] += a * weight
        assert acc is not None
        total = total + F.interpolate(acc[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    peak = total.flatten(1).max(-1).values[:, None, None]
    return total / (peak + eps)


class AdvCamProducer:
    """AdvCAM as a :class:`~esol_lib.method.cam.CamProducer`: :func:`advcam_maps` of each image's labelled classes.

    ``settings`` holds the keyword arguments of :func:`advcam_maps` (``steps``, ``step_size``, ``lam``, ...; the
    ``advcam`` config section). It climbs each image alone (a pair per class and scale); the other classes'
    maps stay zero. ``needs_grad`` is True: :func:`~esol_lib.method.cam.compute_cams` leaves autograd on.
    """

    needs_grad = True

    def __init__(self, model: nn.Module, scales: Sequence[float], **settings) -> None:
        _check_eval(model)
        self.model = model
        self.scales = tuple(float(s) for s in scales)
        self.settings = settings
        self.num_classes = int(model.classifier.weight.shape[0])

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        b, _, h, w = images.shape
        out = torch.zeros(b, self.num_classes, h, w, dtype=images.dtype, device=images.device)
        for i in range(b):
            classes = torch.nonzero(labels[i] > 0.5).flatten().tolist()
            if classes:
                maps = advcam_maps(self.model, images[i : i + 1], classes, scales=self.scales, **self.settings)
                out[i, classes] = maps.to(out.dtype)
        return out
