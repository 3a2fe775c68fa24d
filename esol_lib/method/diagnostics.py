"""Why a stage's offsets learn, or do not: the gradient that reaches them, per kind of feature cell.

The ESOL stages train only a sampler's offset branch (§3.2–3.3). Whether the offsets move depends
on the gradient of the stage's loss with respect to the offsets ``Δp`` of Eq. (4), and that
gradient depends on where it comes from: cells on the object, cells on the background, and cells
whose features the clipping of Eq. (7) flattened (a clipped value passes no gradient unless the
ceiling is differentiated, ``expansion.clip_gradient``). :func:`offset_gradients` measures it on
a fixed set of training crops with their ground-truth masks (used for the measurement only, never
for training), together with the fraction of clipped feature values and the classifier's
confidence ``σ(z)`` in the classes present.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CELL_KINDS", "cell_kinds", "offset_gradients"]

#: The cell classes the gradient is reported on: ``object`` (at least half its pixels foreground),
#: ``background`` (no foreground pixel), ``clipped`` (at least :data:`CLIPPED_SHARE` of its channels
#: at the Eq. (7) ceiling, object or not) and ``all``.
CELL_KINDS = ("object", "background", "clipped", "all")
#: The share of a cell's channels at the ceiling that makes it a clipped cell. Clipping acts per
#: channel, so few cells have most of their channels clipped; a quarter marks the cells it shapes.
CLIPPED_SHARE = 0.25


def cell_kinds(masks: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(object, background)`` boolean maps ``(B, h, w)`` of the feature grid from pixel masks ``(B, H, W)``.

    A cell's foreground fraction is the share of its pixels with a class in 1..254 (255, void, counts
    as neither); object cells have a fraction of at least 0.5, background cells of 0. Cells in
    between (object borders) belong to neither.
    """
    fg = ((masks > 0) & (masks < 255)).float().unsqueeze(1)
    frac = F.adaptive_avg_pool2d(fg, size).squeeze(1)
    return frac >= 0.5, frac == 0


def offset_gradients(
    model: torch.nn.Module,
    stage: str,
    loss_fn: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict] | torch.Tensor],
    batch: dict,
) -> dict[str, float]:
    """The stage's loss gradient with respect to its sampler's offsets, per kind of cell.

    Args:
        model: an :class:`~esol_lib.models.esol.ESOLModel` in the state to measure (before or after
            the stage's training); it is put in training mode (frozen batch-norm) for the pass and
            its parameters' gradients are cleared afterwards.
        stage: ``expansion`` (ES's offsets) or ``shrinkage`` (SS's).
        loss_fn: the stage's loss, ``loss_fn(model, batch)``, as the stage trains with it.
        batch: training crops, ``image`` ``(B, 3, H, W)``, ``label`` ``(B, K)`` and ``mask`` ``(B, H, W)``.

    Returns:
        ``grad_<kind>``: the mean over cells of that kind of the L2 norm (over the ``2·k·k`` offset
        channels) of ``∂loss/∂Δp``, for each kind in :data:`CELL_KINDS` (NaN where no cell is of
        that kind); ``cells_<kind>``: the share of cells of that kind; ``clipped_fraction``: the
        share of the expanded feature values at the clipping ceiling, ``clipped_share_object`` and
        ``clipped_share_background`` the mean share of clipped channels per cell of each kind; ``confidence``: the mean
        ``σ(z_k)`` over the classes present; ``offset``: the mean ``|Δp|`` of the stage's sampler.
    """
    sampler = model.es if stage == "expansion" else model.ss
    if sampler.offset_conv is None:
        raise ValueError(f"stage {stage!r} has no offset branch to measure (offsets switched off)")
    captured: dict[str, torch.Tensor] = {}

    def keep_offsets(_module, _inputs, output):
        output.retain_grad()
        captured["offset"] = output

    def keep_expanded(_module, _inputs, output):
        captured["expanded"] = output.detach()

    was_training = model.training
    model.train()
    hooks = [sampler.offset_conv.register_forward_hook(keep_offsets), model.es.register_forward_hook(keep_expanded)]
    try:
        out = loss_fn(model, batch)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    try:
        with torch.no_grad():
            logits = model(batch["image"])
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    offset = captured["offset"]
    grad = offset.grad.norm(dim=1)  # (B, h, w)
    obj, bg = cell_kinds(batch["mask"], tuple(grad.shape[-2:]))
    f = F.relu(captured["expanded"])  # ES's output before the clipping
    ceiling = model.beta * f.amax(dim=(-2, -1), keepdim=True)
    at_ceiling = (f >= ceiling) & (ceiling > 0)  # (B, C, h, w)
    share = at_ceiling.float().mean(dim=1)  # (B, h, w): the share of each cell's channels at the ceiling
    clipped = share >= CLIPPED_SHARE
    kinds = {"object": obj, "background": bg, "clipped": clipped, "all": torch.ones_like(obj)}
    result: dict[str, float] = {}
    for name, where in kinds.items():
        result[f"grad_{name}"] = float(grad[where].mean()) if bool(where.any()) else float("nan")
        result[f"cells_{name}"] = float(where.float().mean())
    labels = batch["label"].bool()
    result["clipped_fraction"] = float(at_ceiling.float().mean())
    result["clipped_share_object"] = float(share[obj].mean()) if bool(obj.any()) else float("nan")
    result["clipped_share_background"] = float(share[bg].mean()) if bool(bg.any()) else float("nan")
    result["confidence"] = float(torch.sigmoid(logits)[labels].mean()) if bool(labels.any()) else float("nan")
    result["offset"] = float(offset.detach().abs().mean())
    result["loss"] = float(loss.detach())
    return {k: (float(f"{v:.4g}") if np.isfinite(v) else v) for k, v in result.items()}
