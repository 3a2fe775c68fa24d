"""A stage's checkpoints: the resumable partial one, the final one, and reading them back.

A checkpoint holds tensors and plain Python values only, is written atomically by rank 0 and read
with ``torch.load(weights_only=True)``. It records the ``inputs`` it was trained from; one trained from
other inputs is set aside (:func:`check_done`) or refused (:func:`load_stage_checkpoint`). The
partial checkpoint also holds every rank's RNG states, so a resumed run ends with exactly the weights
of an uninterrupted one (:mod:`esol_lib.runtime.engine`).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from esol_lib.runtime.atomic import atomic_save
from esol_lib.runtime.distributed import all_gather_object, barrier, get_dist_info, unwrap
from esol_lib.runtime.errors import StageError
from esol_lib.runtime.rundir import RunDir
from esol_lib.runtime.train_log import JsonlLogger


@dataclass
class StageResult:
    """What :func:`train_loop` did.

    ``steps`` counts the optimizer steps taken by this call (0 when the stage was already done);
    ``resumed_from`` is the step it started from (0 fresh, the partial checkpoint's step on
    resume, ``max_steps`` of the final checkpoint when already done).
    """

    stage: str
    steps: int
    final_loss: float
    seconds: float
    resumed_from: int = 0


def partial_checkpoint_path(run_dir: RunDir, stage: str) -> Path:
    """``RUN/checkpoints/<stage>.partial.pt``, the resumable mid-stage checkpoint."""
    return run_dir.checkpoint(stage).with_suffix(".partial.pt")


def load_checkpoint(path: Path, fix: str = "run the same command again: the stage that wrote it retrains") -> dict:
    """``torch.load`` of a checkpoint (``weights_only``); an unreadable one (empty, cut short, or not
    a checkpoint) is one :class:`StageError` naming the file and ``fix``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        lines = str(e).strip().splitlines()  # an empty file's EOFError has no text at all
        why = f"{type(e).__name__}: {lines[0][:120]}" if lines else type(e).__name__
        raise StageError(f"{path} is unreadable ({why}); delete it and {fix}") from None
    if not isinstance(ckpt, dict):
        raise StageError(f"{path} is not a checkpoint (it holds a {type(ckpt).__name__}); delete it and {fix}")
    return ckpt


#: Key of a checkpoint's record of what it was trained from (:func:`train_loop`'s ``inputs``).
INPUTS_KEY = "inputs"


def stale_inputs(ckpt: dict, inputs: dict[str, str] | None) -> list[str]:
    """The names of ``inputs`` whose value differs from what checkpoint ``ckpt`` records it was
    trained from (its data's fingerprint, the upstream checkpoints' digests, ...). A checkpoint
    written before these records existed (no ``inputs`` key) is trusted, as it always was."""
    recorded = ckpt.get(INPUTS_KEY)
    if not inputs or not isinstance(recorded, dict):
        return []
    return sorted(k for k, v in inputs.items() if recorded.get(k) != v)


def set_aside(run_dir: RunDir, path: Path, why: str) -> Path:
    """Move a checkpoint trained from other inputs to ``RUN/superseded/<time>/checkpoints/`` (nothing
    a user trained is deleted); log one warning naming it and ``why``. Rank 0 only."""
    import logging

    dest = run_dir.root / "superseded" / time.strftime("%Y%m%d-%H%M%S") / "checkpoints" / path.name
    if get_dist_info().is_main and path.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        logging.getLogger(__name__).warning("%s was trained from other %s: moved to %s, to retrain", path, why, dest)
    return dest


def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (``weights_only``-loadable)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _state_of(extra_state: Any) -> Any:
    if extra_state is None:
        return None
    if hasattr(extra_state, "state_dict"):
        return extra_state.state_dict()
    return extra_state()


def _restore_extra(extra_state: Any, saved: Any) -> None:
    if extra_state is not None and saved is not None and hasattr(extra_state, "load_state_dict"):
        extra_state.load_state_dict(saved)


def check_done(
    run_dir: RunDir, stage: str, model: nn.Module, optional: Sequence[str] = (), inputs: dict[str, str] | None = None
) -> dict | None:
    """The final checkpoint's dict (weights loaded into ``model``) if the stage is done from ``inputs``.

    A final or partial checkpoint trained from other inputs is set aside (:func:`set_aside`): the
    stage trains again instead of reporting an old model as done on new data.
    """
    final, partial = run_dir.checkpoint(stage), partial_checkpoint_path(run_dir, stage)
    kept = None  # the final checkpoint, read once (a voc12 one is large)
    if inputs:
        for path in (final, partial):
            if path.is_file():
                ckpt = load_checkpoint(path)
                stale = stale_inputs(ckpt, inputs)
                if stale:
                    set_aside(run_dir, path, " and ".join(stale))
                elif path == final:
                    kept = ckpt
        barrier()
    if not final.is_file():
        return None
    ckpt = kept if kept is not None else load_checkpoint(final)
    if not ckpt.get("done"):
        return None
    load_weights(model, ckpt["model"], optional)
    return ckpt


def load_weights(model: nn.Module, state: dict, optional: Sequence[str] = ()) -> None:
    """``model.load_state_dict(state)``, except that parameters under the ``optional`` prefixes may be
    absent from either side (the model keeps its own; the file's extra ones are ignored)."""
    target = unwrap(model)
    if optional:
        own = target.state_dict()
        state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(optional))}
        state.update({k: v for k, v in own.items() if k not in state and k.startswith(tuple(optional))})
    target.load_state_dict(state)


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    batch: int = 0


def resume_partial(
    partial: Path,
    stage: str,
    max_steps: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_state: Any,
) -> tuple[Position, list | None]:
    """Load a partial checkpoint into the training objects; return its position and RNG states."""
    ckpt = load_checkpoint(partial)
    if ckpt.get("max_steps") != max_steps:
        raise StageError(
            f"{partial} was written by a run of stage '{stage}' with max_steps={ckpt.get('max_steps')}, "
            f"this one has max_steps={max_steps}; delete that file to start the stage over"
        )
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    _restore_extra(extra_state, ckpt.get("extra"))
    return Position(ckpt["step"], ckpt["epoch"], ckpt["batch"]), ckpt.get("rng")


def save_partial(
    path: Path,
    stage: str,
    max_steps: int,
    pos: Position,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_state: Any,
    loss: float,
    is_main: bool,
    inputs: dict[str, str] | None = None,
) -> None:
    """Write the resumable checkpoint (collective: every rank contributes its RNG state)."""
    rng = all_gather_object(rng_state())
    if is_main:
        atomic_save(
            {
                "stage": stage,
                "done": False,
                "max_steps": max_steps,
                "step": pos.step,
                "epoch": pos.epoch,
                "batch": pos.batch,
                "loss": loss,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "extra": _state_of(extra_state),
                "rng": rng,
                "world_size": len(rng),
                INPUTS_KEY: inputs,
            },
            path,
        )


def save_final(
    final_path: Path,
    partial: Path,
    stage: str,
    max_steps: int,
    model: nn.Module,
    extra_state: Any,
    loss: float,
    is_main: bool,
    inputs: dict[str, str] | None = None,
) -> None:
    """Write ``<stage>.pt`` (done) and drop the partial checkpoint; every rank waits for it."""
    if is_main:
        atomic_save(
            {
                "stage": stage,
                "done": True,
                "step": max_steps,
                "final_loss": loss,
                "model": unwrap(model).state_dict(),
                "extra": _state_of(extra_state),
                INPUTS_KEY: inputs,
            },
            final_path,
        )
        partial.unlink(missing_ok=True)
    barrier()


def save_untrained_stage(
    run_dir: RunDir, stage: str, model: nn.Module, reason: str, inputs: dict[str, str] | None = None
) -> StageResult:
    """Finish ``stage`` without a single step: its final checkpoint holds ``model`` as it is.

    For ablations whose stage has nothing to learn (e.g. ESOL's expansion with the offsets switched
    off and frozen regular weights): later stages and ``make-cam`` find a done checkpoint as usual.
    """
    info = get_dist_info()
    final_path = run_dir.checkpoint(stage)
    save_final(
        final_path, partial_checkpoint_path(run_dir, stage), stage, 0, model, None, math.nan, info.is_main, inputs
    )
    JsonlLogger(run_dir.log_path, enabled=info.is_main).log(
        stage=stage, step=0, event="done without training", reason=reason, checkpoint=str(final_path)
    )
    return StageResult(stage, 0, math.nan, 0.0)


def load_stage_checkpoint(
    run_dir: RunDir,
    stage: str,
    model: nn.Module,
    *,
    hint: str = "",
    optional: Sequence[str] = (),
    inputs: dict[str, str] | None = None,
) -> dict:
    """Load the finished stage's weights (``RUN/checkpoints/<stage>.pt``) into ``model``.

    ``model`` may be wrapped in DDP. Returns the checkpoint dict. A missing file raises
    :class:`StageError` naming it and ``hint`` (the command that produces it, e.g.
    "run `esol train-cam` first"). Parameters whose names start with one of the ``optional``
    prefixes may be absent from either side: absent from the file, the model keeps its own;
    absent from the model, the file's are ignored. Every other parameter must match exactly.
    A checkpoint trained from other ``inputs`` than the run holds now (:func:`stale_inputs`: new
    data in place, a retrained upstream stage) is refused with ``hint``: it would score an old
    model on new data.
    """
    path = run_dir.checkpoint(stage)
    if not path.is_file():
        todo = hint or f"run the '{stage}' stage first"
        raise StageError(f"{path} not found: stage '{stage}' has not finished; {todo}")
    ckpt = load_checkpoint(path, hint or "run that stage again")
    if "model" not in ckpt:
        raise StageError(f"{path} holds no model weights; delete it and {hint or 'run that stage again'}")
    stale = stale_inputs(ckpt, inputs)
    if stale:
        raise StageError(
            f"{path} was trained from other {' and '.join(stale)} than this run holds now (the data changed in "
            f"place, or an earlier stage was retrained); {(hint or 'run that stage again').removesuffix(' first')} "
            f"(it retrains)"
        )
    try:
        load_weights(model, ckpt["model"], optional)
    except RuntimeError as e:  # size mismatch / missing keys: another dataset's classes or another model
        what = "; ".join(
            line.strip()
            for line in str(e).splitlines()
            if line.strip().startswith(("size mismatch", "Missing key", "Unexpected key"))
        )
        raise StageError(
            f"{path} does not fit the model this run's config builds ({(what or str(e))[:400]}): the run's "
            f"data (its classes) or model settings changed since it was trained; use a new --run "
            f"folder for the new data"
        ) from None
    return ckpt
