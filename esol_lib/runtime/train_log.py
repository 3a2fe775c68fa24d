"""What a training loop writes as it goes, and the guard that stops a dead network.

:class:`JsonlLogger` appends one JSON object per record to ``RUN/log.jsonl`` (rank 0 only);
:class:`DeadOutputGuard` and :class:`StalledGradientGuard` watch for a network that died while its
loss stayed finite (the engine stops the stage when one trips).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch


def json_value(value: Any) -> Any:
    """Tensors and numpy scalars as Python numbers; non-finite floats as strings."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogger:
    """Appends one JSON object per :meth:`log` call to ``path`` (adds ``"time"``, unix seconds).

    The file is opened in append mode for each record and flushed, so a crash loses nothing and
    several stages can share ``RUN/log.jsonl``. ``enabled=False`` (ranks other than 0) writes
    nothing.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def log(self, **record: Any) -> None:
        """Write ``record`` (plus ``time``) as one line."""
        if not self.enabled:
            return
        record = {k: json_value(v) for k, v in record.items()}
        record["time"] = round(time.time(), 3)
        line = json.dumps(record, default=str, allow_nan=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()


class _DeadWindow:
    """The last ``window`` steps, each dead or alive: tripped when at least ``fraction`` of a full window
    is dead, suspect while any step of it is. A dying network still lets an odd crop through (one of
    20 batches, on the smoke profile), so a streak would reset where a window does not."""

    def __init__(self, window: int = 40, fraction: float = 0.9) -> None:
        self.window, self.fraction = window, fraction
        self.steps: deque[bool] = deque(maxlen=window)

    def add(self, dead: bool) -> None:
        self.steps.append(dead)

    @property
    def dead(self) -> int:
        return sum(self.steps)

    @property
    def suspect(self) -> bool:
        return self.dead > 0

    @property
    def full(self) -> bool:
        return len(self.steps) == self.window and self.dead >= self.fraction * self.window


class DeadOutputGuard(_DeadWindow):
    """Watches for a dead network: every image of a batch gets the same outputs.

    A learning rate too high for the network can kill every ReLU before the pooling layer in a few
    dozen steps (IRN's lr 0.1 did so to the ``small`` backbone by step 60 on one dataset). The features
    are then all zero, every image gets the same scores (zero: the classifier is bias-free), the
    multi-label loss sits at ``ln 2`` and the NaN check never fires; the CAMs of such a network are all
    zero. Call :meth:`check` with each batch's outputs and pass the guard to
    :func:`~esol_lib.runtime.engine.train_loop` (``guards=``): while a batch of the last ``window`` was
    dead the guard is :attr:`suspect` (no partial checkpoint is written, so the last one before is
    kept), and once ``fraction`` of a full window is dead :attr:`tripped` says what was seen and the
    loop stops the stage.
    """

    def check(self, outputs: torch.Tensor) -> None:
        out = outputs.detach()
        self.add(out.shape[0] >= 2 and not bool((out != out[:1]).any()))

    @property
    def tripped(self) -> str | None:
        if not self.full:
            return None
        return (
            f"{self.dead} of the last {self.window} batches gave every image the same outputs "
            "(every feature zero: dead ReLUs, the loss flat)"
        )


class StalledGradientGuard(_DeadWindow):
    """Watches for training that has stopped: the gradient of every parameter is (all but) zero.

    Every trained stage's loop keeps one (:func:`~esol_lib.runtime.engine.train_loop`): a network whose
    ReLUs all died gets exactly zero gradients (the models here are bias-free after their last ReLU)
    while its loss stays at its untrained value (``ln 2`` for the multi-label loss) and finite. A step
    whose gradient norm is at most ``tol`` is dead; the window is :class:`DeadOutputGuard`'s. A
    training step that is alive never has an exactly zero gradient, so a healthy run is never suspect
    and writes its checkpoints as before.
    """

    def __init__(self, window: int = 40, fraction: float = 0.9, tol: float = 1e-12) -> None:
        super().__init__(window, fraction)
        self.tol = tol
        self.loss = math.nan

    def observe(self, loss: float, grad_norm: float) -> None:
        self.loss = loss
        self.add(grad_norm <= self.tol)

    @property
    def tripped(self) -> str | None:
        if not self.full:
            return None
        return f"the gradient was zero in {self.dead} of the last {self.window} steps, the loss flat at {self.loss:.4f}"
