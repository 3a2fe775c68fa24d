"""The optimiser and the learning-rate schedule every training step uses: SGD and the poly decay.

The schedule is DeepLab's and IRN's ``lr = base_lr * (1 - step / max_steps) ** power``, applied after
every optimizer step; :func:`make_sgd` passes every setting by keyword, and :func:`stage_sgd` and
:func:`stage_steps` read them from a stage's :class:`~esol_lib.runtime.config.OptimiserConfig` section.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LambdaLR

if TYPE_CHECKING:
    from esol_lib.runtime.config import OptimiserConfig


def poly_lr(base_lr: float, step: int, max_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / max_steps) ** power``; 0 from ``max_steps`` on."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    frac = min(max(step, 0), max_steps) / max_steps
    return base_lr * (1.0 - frac) ** power


@dataclass
class _PolyFactor:
    """The poly multiplier as a picklable callable (so ``PolyLR.state_dict`` keeps it), times a
    linear warm-up ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps (0: none, IRN)."""

    max_steps: int
    power: float = 0.9
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        factor = poly_lr(1.0, step, self.max_steps, self.power)
        if step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor


class PolyLR(LambdaLR):
    """Poly schedule: each param group's lr is its initial lr × ``(1 - step/max_steps)^power``.

    Call ``scheduler.step()`` once after every ``optimizer.step()``; optimizer step ``k``
    (0-based) then runs with factor ``(1 - k/max_steps)^power``, as in IRN's PolyOptimizer. With
    ``warmup_steps`` > 0 (no paper or IRN setting: ``train_cam.warmup_steps``) step ``k`` of the first
    ``warmup_steps`` is further scaled by ``(k + 1) / warmup_steps``, a linear ramp to the base rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_steps: int,
        power: float = 0.9,
        last_epoch: int = -1,
        warmup_steps: int = 0,
    ) -> None:
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
        self.max_steps = max_steps
        self.power = power
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, _PolyFactor(max_steps, power, warmup_steps), last_epoch=last_epoch)


def make_sgd(
    param_groups: Iterable[Any],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> torch.optim.SGD:
    """SGD with momentum and weight decay passed by keyword.

    IRN's ``PolyOptimizer`` passed ``weight_decay`` positionally into SGD's ``momentum`` slot,
    so its momentum silently became 1e-4; keywords rule that out. ``param_groups`` is an
    iterable of parameters or of dicts (groups may set their own ``lr``/``weight_decay``).
    """
    return torch.optim.SGD(list(param_groups), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def stage_sgd(param_groups: Iterable[Any], section: OptimiserConfig) -> torch.optim.SGD:
    """SGD at a stage's ``lr``, ``momentum`` and ``weight_decay``; a param group may set its own lr."""
    return make_sgd(param_groups, section.lr, momentum=section.momentum, weight_decay=section.weight_decay)


def stage_steps(section: OptimiserConfig, batches_per_epoch: int) -> int:
    """T of a stage's poly schedule: ``max_steps`` when set, else ``epochs`` passes over its loader."""
    if section.max_steps:
        return section.max_steps
    epochs = getattr(section, "epochs", None)
    if epochs is None:
        raise ValueError(f"{type(section).__name__} has no epochs: set its max_steps")
    return epochs * batches_per_epoch
