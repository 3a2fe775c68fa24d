"""The training engine shared by every training stage (CAM classifier, ESOL expansion and
shrinkage, IRN, DeepLab-v2).

:func:`train_loop` runs a fixed number of optimizer steps over a loader it cycles through, logs to
``RUN/log.jsonl``, writes a resumable ``RUN/checkpoints/<stage>.partial.pt`` every
``checkpoint_every`` steps and the final ``RUN/checkpoints/<stage>.pt`` at the end (both
atomically, rank 0 only). A stage whose final checkpoint exists is not trained again.

Exact resume
------------
A run interrupted after a partial checkpoint and started again ends with *exactly* the weights of
an uninterrupted run, provided the loader is built with
:func:`esol_lib.runtime.distributed.make_loader` (or any loader whose order depends only on the epoch
given to ``loader.sampler.set_epoch``). At the start of every epoch the engine calls
``loader.sampler.set_epoch(epoch)``, ``loader.dataset.set_epoch(epoch)`` when the dataset has
one, and reseeds ``loader.generator`` from ``(seed, epoch, rank)``, so worker seeds repeat. On
resume it skips the batches of the current epoch already consumed, then restores the RNG states
(torch, CUDA, numpy, python ``random``) of every rank as they were when the checkpoint was
written; dropout and main-process augmentations therefore draw the same numbers again.
Checkpoints contain tensors and plain Python values only and are read with
``torch.load(weights_only=True)``; an ``extra_state`` must keep to that too.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from esol_lib.runtime.atomic import atomic_save
from esol_lib.runtime.distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    get_dist_info,
    unwrap,
)
from esol_lib.runtime.errors import ConfigError, DivergenceError, EsolError, StageError
from esol_lib.runtime.rundir import RunDir

__all__ = [
    "DeadOutputGuard",
    "JsonlLogger",
    "PolyLR",
    "StageResult",
    "atomic_save",
    "load_stage_checkpoint",
    "make_sgd",
    "partial_checkpoint_path",
    "poly_lr",
    "seed_everything",
    "train_loop",
]

# --------------------------------------------------------------------------- learning rate


def poly_lr(base_lr: float, step: int, max_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / max_steps) ** power``; 0 from ``max_steps`` on."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    frac = min(max(step, 0), max_steps) / max_steps
    return base_lr * (1.0 - frac) ** power


@dataclass
class _PolyFactor:
    """The poly multiplier as a picklable callable (so ``PolyLR.state_dict`` keeps it)."""

    max_steps: int
    power: float = 0.9

    def __call__(self, step: int) -> float:
        return poly_lr(1.0, step, self.max_steps, self.power)


class PolyLR(LambdaLR):
    """Poly schedule: each param group's lr is its initial lr × ``(1 - step/max_steps)^power``.

    Call ``scheduler.step()`` once after every ``optimizer.step()``; optimizer step ``k``
    (0-based) then runs with factor ``(1 - k/max_steps)^power``, as in IRN's PolyOptimizer.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, max_steps: int, power: float = 0.9, last_epoch: int = -1
    ) -> None:
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.max_steps = max_steps
        self.power = power
        super().__init__(optimizer, _PolyFactor(max_steps, power), last_epoch=last_epoch)


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


# --------------------------------------------------------------------------- small helpers


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _json_value(value: Any) -> Any:
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
        record = {k: _json_value(v) for k, v in record.items()}
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


# --------------------------------------------------------------------------- RNG states


def _rng_state() -> dict:
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


def _set_rng_state(state: dict) -> None:
    """Restore what :func:`_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for the loader's generator, from ``(seed, epoch, rank)``."""
    words = np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 ^ int(words[1])


# --------------------------------------------------------------------------- data order


def _start_epoch(loader: Iterable, epoch: int, seed: int, rank: int, skip: int = 0) -> Iterator:
    """Set up epoch ``epoch`` of ``loader`` and return its iterator, ``skip`` batches in.

    Skipping is free (no sample is loaded) for single-process loaders whose sampler has
    ``skip`` (those of :func:`make_loader`); otherwise the batches are loaded and dropped, which
    also advances worker RNGs exactly as the interrupted run did.
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(_epoch_seed(seed, epoch, rank))
    if skip and _can_skip_cheaply(loader):
        sampler.skip(skip * loader.batch_size)
        return iter(loader)
    it = iter(loader)
    for _ in range(skip):
        next(it, None)
    return it


def _can_skip_cheaply(loader: Any) -> bool:
    batch_sampler = getattr(loader, "batch_sampler", None)
    return (
        getattr(loader, "num_workers", 1) == 0
        and getattr(loader, "batch_size", None) is not None
        and hasattr(getattr(loader, "sampler", None), "skip")
        and getattr(batch_sampler, "sampler", None) is loader.sampler
    )


# --------------------------------------------------------------------------- checkpoints


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(out, tuple):
        loss, extras = out
        return loss, dict(extras or {})
    return out, {}


def _state_of(extra_state: Any) -> Any:
    if extra_state is None:
        return None
    if hasattr(extra_state, "state_dict"):
        return extra_state.state_dict()
    return extra_state()


def _restore_extra(extra_state: Any, saved: Any) -> None:
    if extra_state is not None and saved is not None and hasattr(extra_state, "load_state_dict"):
        extra_state.load_state_dict(saved)


def _diverged_message(stage: str, step: int, loss: float, partial: Path) -> str:
    if partial.is_file():
        kept_step = load_checkpoint(partial).get("step", "?")
        kept = f"the last good checkpoint is kept: {partial} (step {kept_step}); rerunning resumes from it"
    else:
        kept = f"the last good checkpoint is kept (none written yet for this stage: {partial})"
    section = {"baseline": "train_cam"}.get(stage) or (
        "irn" if stage.startswith("irn") else "seg" if stage.startswith("seg") else stage
    )
    run_dir = partial.parent.parent
    return (
        f"stage '{stage}' diverged at step {step}: loss is {loss}. Nothing was overwritten; {kept}. "
        f"A run folder keeps the config it started with, so lower the learning rate ({section}.lr) in a new one: "
        f"`esol pipeline --config {run_dir / 'config.yaml'} --set {section}.lr=<smaller> --run <new folder>`."
    )


def _check_done(
    run_dir: RunDir, stage: str, model: nn.Module, optional: Sequence[str] = (), inputs: dict[str, str] | None = None
) -> dict | None:
    """The final checkpoint's dict (weights loaded into ``model``) if the stage is done from ``inputs``.

    A final or partial checkpoint trained from other inputs is set aside (:func:`set_aside`): the
    stage trains again instead of reporting an old model as done on new data.
    """
    final, partial = run_dir.checkpoint(stage), partial_checkpoint_path(run_dir, stage)
    kept = None  # the final checkpoint, read once (a voc12 one is 400 MB)
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
    _load_weights(model, ckpt["model"], optional)
    return ckpt


def _load_weights(model: nn.Module, state: dict, optional: Sequence[str] = ()) -> None:
    """``model.load_state_dict(state)``, except that parameters under the ``optional`` prefixes may be
    absent from either side (the model keeps its own; the file's extra ones are ignored)."""
    target = unwrap(model)
    if optional:
        own = target.state_dict()
        state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(optional))}
        state.update({k: v for k, v in own.items() if k not in state and k.startswith(tuple(optional))})
    target.load_state_dict(state)


@dataclass
class _Position:
    step: int = 0
    epoch: int = 0
    batch: int = 0


def _resume(
    partial: Path,
    stage: str,
    max_steps: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_state: Any,
) -> tuple[_Position, list | None]:
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
    return _Position(ckpt["step"], ckpt["epoch"], ckpt["batch"]), ckpt.get("rng")


def _save_partial(
    path: Path,
    stage: str,
    max_steps: int,
    pos: _Position,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra_state: Any,
    loss: float,
    is_main: bool,
    inputs: dict[str, str] | None = None,
) -> None:
    """Write the resumable checkpoint (collective: every rank contributes its RNG state)."""
    rng = all_gather_object(_rng_state())
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


# --------------------------------------------------------------------------- the loop


def train_loop(
    stage: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], Any],
    loader: Iterable,
    max_steps: int,
    run_dir: RunDir,
    *,
    scheduler: Any = None,
    checkpoint_every: int = 0,
    seed: int = 0,
    extra_state: Any = None,
    after_step: Callable[[int, nn.Module, dict], None] | None = None,
    progress: bool = True,
    log_every: int = 10,
    optional: Sequence[str] = (),
    inputs: dict[str, str] | None = None,
) -> StageResult:
    """Train ``model`` for ``max_steps`` optimizer steps as stage ``stage`` of ``run_dir``.

    - ``loss_fn(model, batch)`` returns a loss tensor or ``(loss, {name: float})``; the extras
      are logged. The loss is averaged over ranks for logging and the divergence check.
    - ``loader`` is cycled (see the module docstring for what exact resume needs of it).
    - ``scheduler.step()`` (e.g. :class:`PolyLR`) is called after every optimizer step.
    - ``after_step(step, model, extras)`` runs after each optimizer step (``step`` 1-based); it
      may raise :class:`DivergenceError` (ESOL bounds its offsets that way).
    - ``extra_state``: an object with ``state_dict()``/``load_state_dict()`` (saved and restored
      on resume) or a callable returning a dict (saved only); stored under ``"extra"``.
    - A fresh start calls ``seed_everything(seed + rank)``; a resume restores the RNG states.
    - Logs ``{"stage", "step", "loss", "lr", "epoch", **extras}`` every ``log_every`` steps and at
      the last one (rank 0 only) to ``run_dir.log_path``.
    - A NaN/inf loss raises :class:`DivergenceError`; the last partial checkpoint is kept.
    - A stage already done is loaded, not retrained; ``optional`` is as in :func:`load_stage_checkpoint`.
    - ``inputs`` (name → signature: the data's fingerprint, upstream checkpoints' digests) is
      recorded in the checkpoints; one trained from other inputs is set aside and the stage retrains.

    The model's mode is left to the caller (``model.train()``, frozen BatchNorm layers kept in
    eval, ...). Only rank 0 writes files; every rank reads them. Returns a :class:`StageResult`.
    """
    if max_steps <= 0:
        raise ConfigError(f"stage '{stage}': max_steps must be positive, got {max_steps}")
    t0 = time.perf_counter()
    info = get_dist_info()
    logger = JsonlLogger(run_dir.log_path, enabled=info.is_main)
    final_path = run_dir.checkpoint(stage)
    partial = partial_checkpoint_path(run_dir, stage)

    done = _check_done(run_dir, stage, model, optional, inputs)
    if done is not None:
        logger.log(stage=stage, step=done.get("step", max_steps), event="already done", checkpoint=str(final_path))
        return StageResult(
            stage,
            0,
            float(done.get("final_loss", math.nan)),
            time.perf_counter() - t0,
            resumed_from=int(done.get("step", max_steps)),
        )

    pos, rng = _Position(), None
    if partial.is_file():
        pos, rng = _resume(partial, stage, max_steps, model, optimizer, scheduler, extra_state)
        logger.log(stage=stage, step=pos.step, event="resumed", checkpoint=str(partial))
    else:
        seed_everything(seed + info.rank)
    start = pos.step

    batches = _start_epoch(loader, pos.epoch, seed, info.rank, skip=pos.batch)
    if rng is not None and len(rng) == info.world_size:
        _set_rng_state(rng[info.rank])
    elif rng is not None:  # resumed with another number of processes: reproducible, not exact
        seed_everything(seed + info.rank + pos.step)

    loss_value = math.nan
    bar = tqdm(total=max_steps, initial=start, desc=stage, disable=not progress or not info.is_main, dynamic_ncols=True)
    try:
        while pos.step < max_steps:
            batch, batches = _next_batch(batches, loader, pos, seed, info.rank, stage)
            loss, extras = _split_loss(loss_fn(model, batch))
            loss_value = float(all_reduce_mean(loss.detach().float()).item())
            if not math.isfinite(loss_value):
                logger.log(stage=stage, step=pos.step + 1, event="diverged", loss=loss_value)
                raise DivergenceError(_diverged_message(stage, pos.step + 1, loss_value, partial))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            pos.step += 1
            extras = {k: _json_value(v) for k, v in extras.items()}
            if after_step is not None:
                after_step(pos.step, model, extras)
            if pos.step % max(log_every, 1) == 0 or pos.step == max_steps:
                record = {"stage": stage, "step": pos.step, "loss": loss_value, "lr": lr, "epoch": pos.epoch}
                logger.log(**record, **{k: v for k, v in extras.items() if k not in record})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}")
            if checkpoint_every > 0 and pos.step % checkpoint_every == 0 and pos.step < max_steps:
                _save_partial(
                    partial,
                    stage,
                    max_steps,
                    pos,
                    model,
                    optimizer,
                    scheduler,
                    extra_state,
                    loss_value,
                    info.is_main,
                    inputs,
                )
    finally:
        bar.close()

    _save_final(final_path, partial, stage, max_steps, model, extra_state, loss_value, info.is_main, inputs)
    seconds = time.perf_counter() - t0
    logger.log(stage=stage, step=max_steps, event="done", checkpoint=str(final_path), seconds=seconds)
    return StageResult(stage, max_steps - start, loss_value, seconds, resumed_from=start)


def _next_batch(
    batches: Iterator, loader: Iterable, pos: _Position, seed: int, rank: int, stage: str
) -> tuple[Any, Iterator]:
    """The next batch, starting a new epoch when the current one is exhausted."""
    try:
        batch = next(batches)
    except StopIteration:
        pos.epoch += 1
        pos.batch = 0
        batches = _start_epoch(loader, pos.epoch, seed, rank)
        try:
            batch = next(batches)
        except StopIteration:
            raise EsolError(
                f"stage '{stage}': the data loader yields no batches (is the dataset smaller than "
                "the batch size with drop_last?); use a smaller batch size or more images"
            ) from None
    pos.batch += 1
    return batch, batches


def _save_final(
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
    _save_final(
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
        _load_weights(model, ckpt["model"], optional)
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
