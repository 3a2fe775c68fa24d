"""What a training loop writes as it goes, and the guard that stops a dead network.

:class:`JsonlLogger` appends one JSON object per record to ``RUN/log.jsonl`` (rank 0 only);
:class:`DeadOutputGuard` stops a stage whose network gives every image the same outputs.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esol_lib.runtime.errors import DivergenceError


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


class DeadOutputGuard:
    """Stops a stage whose network has died: every image of a batch gets the same outputs.

    A learning rate too high for the network can kill every ReLU before the pooling layer in a few
    dozen steps (IRN's lr 0.1 did so to the ``small`` backbone by step 40). The features are then
    all zero, every image gets the classifier's bias as its scores, the multi-label loss sits at
    ``ln 2`` and the NaN check never fires; the CAMs of such a network are all zero. Call
    :meth:`check` with each batch's outputs; after ``patience`` batches in a row whose outputs are
    equal across the batch it raises :class:`DivergenceError` naming ``lr_key``.
    """

    def __init__(self, stage: str, lr_key: str, patience: int = 20) -> None:
        self.stage, self.lr_key, self.patience = stage, lr_key, patience
        self.dead_batches = 0
        self.batches = 0

    def check(self, outputs: torch.Tensor) -> None:
        self.batches += 1
        out = outputs.detach()
        if out.shape[0] < 2 or bool((out != out[:1]).any()):
            self.dead_batches = 0
            return
        self.dead_batches += 1
        if self.dead_batches >= self.patience:
            raise DivergenceError(
                f"stage '{self.stage}' died by batch {self.batches}: the last {self.patience} batches gave every "
                f"image the same outputs (every feature zero: dead ReLUs; the loss stays flat). Nothing was "
                f"overwritten, but the partial checkpoint holds the dead network: delete it, lower "
                f"{self.lr_key} (`--set {self.lr_key}=...`) and run the command again."
            )
