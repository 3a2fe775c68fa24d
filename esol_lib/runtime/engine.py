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

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from esol_lib.runtime.checkpoint import (
    Position,
    StageResult,
    check_done,
    load_checkpoint,
    partial_checkpoint_path,
    resume_partial,
    save_final,
    save_partial,
    set_rng_state,
)
from esol_lib.runtime.distributed import (
    all_reduce_mean,
    get_dist_info,
)
from esol_lib.runtime.errors import ConfigError, DivergenceError, EsolError
from esol_lib.runtime.machine import machine_record
from esol_lib.runtime.rundir import RunDir
from esol_lib.runtime.train_log import JsonlLogger, StalledGradientGuard, json_value

__all__ = ["seed_everything", "train_loop"]


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for the loader's generator, from ``(seed, epoch, rank)``."""
    words = np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 ^ int(words[1])


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


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(out, tuple):
        loss, extras = out
        return loss, dict(extras or {})
    return out, {}


def _kept_checkpoint(partial: Path) -> str:
    if partial.is_file():
        kept_step = load_checkpoint(partial).get("step", "?")
        return f"the last good checkpoint is kept: {partial} (step {kept_step}); rerunning resumes from it"
    return f"the last good checkpoint is kept (none written yet for this stage: {partial})"


def _lr_fix(stage: str, partial: Path) -> str:
    section = {"baseline": "train_cam"}.get(stage) or (
        "irn" if stage.startswith("irn") else "seg" if stage.startswith("seg") else stage
    )
    run_dir = partial.parent.parent
    return (
        f"A run folder keeps the config it started with, so lower the learning rate ({section}.lr) in a new one: "
        f"`esol pipeline --config {run_dir / 'config.yaml'} --set {section}.lr=<smaller> --run <new folder>`."
    )


def _diverged_message(stage: str, step: int, loss: float, partial: Path) -> str:
    return (
        f"stage '{stage}' diverged at step {step}: loss is {loss}. Nothing was overwritten; "
        f"{_kept_checkpoint(partial)}. {_lr_fix(stage, partial)}"
    )


def _dead_message(stage: str, step: int, seen: str, partial: Path) -> str:
    return (
        f"stage '{stage}' stopped training at step {step}: {seen}; the network is dead. Nothing was "
        f"overwritten; {_kept_checkpoint(partial)}, but it may be dying already. {_lr_fix(stage, partial)}"
    )


def _grad_norm(model: nn.Module) -> float:
    """The L2 norm of every parameter's gradient together (0 when none has one)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item())


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
    guards: Sequence[Any] = (),
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
    - A dead network raises :class:`DivergenceError` too: every step keeps a
      :class:`~esol_lib.runtime.train_log.StalledGradientGuard` (the gradient zero in 36 of the last
      40 steps), and ``guards`` adds others with the same ``suspect``/``tripped`` properties (e.g. a
      :class:`~esol_lib.runtime.train_log.DeadOutputGuard` that ``loss_fn`` feeds). While any guard is
      suspect no partial checkpoint is written, so the one kept is from before the network died.
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

    done = check_done(run_dir, stage, model, optional, inputs)
    if done is not None:
        logger.log(stage=stage, step=done.get("step", max_steps), event="already done", checkpoint=str(final_path))
        return StageResult(
            stage,
            0,
            float(done.get("final_loss", math.nan)),
            time.perf_counter() - t0,
            resumed_from=int(done.get("step", max_steps)),
        )

    pos, rng = Position(), None
    if partial.is_file():
        pos, rng = resume_partial(partial, stage, max_steps, model, optimizer, scheduler, extra_state)
        logger.log(stage=stage, step=pos.step, event="resumed", checkpoint=str(partial))
    else:
        seed_everything(seed + info.rank)
    start = pos.step

    batches = _start_epoch(loader, pos.epoch, seed, info.rank, skip=pos.batch)
    if rng is not None and len(rng) == info.world_size:
        set_rng_state(rng[info.rank])
    elif rng is not None:  # resumed with another number of processes: reproducible, not exact
        seed_everything(seed + info.rank + pos.step)

    stall = StalledGradientGuard()
    watch = (stall, *guards)
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
            stall.observe(loss_value, _grad_norm(model))
            seen = next((g.tripped for g in watch if g.tripped), None)
            if seen is not None:
                logger.log(stage=stage, step=pos.step + 1, event="dead", loss=loss_value, seen=seen)
                raise DivergenceError(_dead_message(stage, pos.step + 1, seen, partial))
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            pos.step += 1
            extras = {k: json_value(v) for k, v in extras.items()}
            if after_step is not None:
                after_step(pos.step, model, extras)
            if pos.step % max(log_every, 1) == 0 or pos.step == max_steps:
                record = {"stage": stage, "step": pos.step, "loss": loss_value, "lr": lr, "epoch": pos.epoch}
                logger.log(**record, **{k: v for k, v in extras.items() if k not in record})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}")
            suspect = any(g.suspect for g in watch)  # a network that may be dying: keep the last good one
            if checkpoint_every > 0 and pos.step % checkpoint_every == 0 and pos.step < max_steps and not suspect:
                save_partial(
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

    save_final(final_path, partial, stage, max_steps, model, extra_state, loss_value, info.is_main, inputs)
    seconds = time.perf_counter() - t0
    logger.log(
        stage=stage, step=max_steps, event="done", checkpoint=str(final_path), seconds=seconds, machine=machine_record()
    )
    return StageResult(stage, max_steps - start, loss_value, seconds, resumed_from=start)


def _next_batch(
    batches: Iterator, loader: Iterable, pos: Position, seed: int, rank: int, stage: str
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
