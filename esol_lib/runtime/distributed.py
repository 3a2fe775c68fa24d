"""Single-process and ``torchrun`` multi-process training behind one small API.

Every training command runs unchanged under ``torchrun --nproc_per_node=N``: torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` sees ``WORLD_SIZE > 1`` and joins the process group (NCCL on GPUs,
gloo on CPU). Without torchrun every helper here degrades to the single-process case, so
library code calls them unconditionally.

Data order is the basis of exact resume: :func:`make_loader` builds a loader whose order depends
only on ``(seed, epoch)`` (a :class:`SeededSampler`, or a :class:`SeededDistributedSampler` under
torchrun), and whose samplers can skip the first samples of an epoch cheaply.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from esol_lib.runtime.errors import StageError

_T = TypeVar("_T")

__all__ = [
    "main_process_only",
    "DistInfo",
    "SeededDistributedSampler",
    "SeededSampler",
    "all_gather_object",
    "all_reduce_mean",
    "barrier",
    "cleanup_distributed",
    "get_dist_info",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "make_loader",
    "rank",
    "unwrap",
    "world_size",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (``rank 0 of 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main: bool = True


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_dist_info() -> DistInfo:
    """The current :class:`DistInfo`, without initialising anything."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    r = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", r))
    return DistInfo(rank=r, world_size=dist.get_world_size(), local_rank=local, is_main=r == 0)


def init_distributed() -> DistInfo:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE > 1``); idempotent.

    The backend is ``nccl`` when CUDA is available (and the process is pinned to GPU
    ``LOCAL_RANK``), ``gloo`` otherwise. Without ``WORLD_SIZE > 1`` nothing is initialised and
    the single-process info is returned.
    """
    if dist.is_available() and dist.is_initialized():
        return get_dist_info()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return get_dist_info()


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return get_dist_info().rank


def world_size() -> int:
    """The number of processes in the job (1 when not distributed)."""
    return get_dist_info().world_size


def is_main_process() -> bool:
    """True on rank 0, the only process that writes files."""
    return get_dist_info().is_main


def barrier() -> None:
    """Wait for every process (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: nn.Module, info: DistInfo | None = None) -> nn.Module:
    """``DistributedDataParallel(model)`` when ``world_size > 1``, else ``model`` itself.

    Move the model to its device first; a CUDA model gets ``device_ids=[its device]``. DDP
    broadcasts rank 0's parameters and buffers, so every rank starts from the same weights.
    """
    info = info or get_dist_info()
    if info.world_size <= 1:
        return model
    param = next(model.parameters(), None)
    if param is not None and param.is_cuda:
        index = param.device.index if param.device.index is not None else info.local_rank
        return nn.parallel.DistributedDataParallel(model, device_ids=[index], output_device=index)
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or ``model``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes, as a new tensor (a copy when not distributed)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed); collective."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


#: How many :func:`main_process_only` calls enclose the running code on rank 0: a nested one must not
#: start a collective the other ranks are not in.
_MAIN_ONLY_DEPTH = 0


def main_process_only(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Decorate a step that does not distribute (CAMs, scores): under ``torchrun`` rank 0 runs it and
    the other ranks wait and return rank 0's result; a failure on rank 0 fails every rank with its
    message. Two ranks running it would each compute everything and race on the same folder (one
    emptying it while the other writes). Without torchrun it is just a call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _MAIN_ONLY_DEPTH
        info = init_distributed()
        if info.world_size <= 1 or _MAIN_ONLY_DEPTH:  # nested (eval-cam --crf scores without CRF first): rank 0 alone
            return fn(*args, **kwargs)
        outcome: tuple[str, Any] = ("ok", None)
        if info.is_main:
            _MAIN_ONLY_DEPTH += 1
            try:
                outcome = ("ok", fn(*args, **kwargs))
            except Exception as e:
                outcome = ("error", f"{type(e).__name__}: {e}")
                all_gather_object(outcome)
                raise
            finally:
                _MAIN_ONLY_DEPTH -= 1
        kind, value = all_gather_object(outcome)[0]
        if kind == "error":
            raise StageError(f"{fn.__name__} failed on rank 0: {value}")
        return value

    return wrapper


class SeededSampler(Sampler[int]):
    """Indices in an order that depends only on ``(seed, epoch)``.

    The permutation is ``torch.randperm(n, generator=Generator().manual_seed(seed + epoch))``
    (``range(n)`` when ``shuffle`` is False); call :meth:`set_epoch` before each epoch.
    :meth:`skip` drops the first samples of the next pass only (used to resume mid-epoch).
    """

    def __init__(self, data_source: Sized, shuffle: bool = True, seed: int = 0) -> None:
        self.num_samples = len(data_source)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` (and forget any pending skip)."""
        self.epoch = epoch
        self._skip = 0

    def skip(self, n: int) -> None:
        """Leave out the first ``n`` indices of the next pass."""
        self._skip = max(0, int(n))

    def order(self) -> list[int]:
        """The full order of the current epoch."""
        if not self.shuffle:
            return list(range(self.num_samples))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self._skip = self._skip, 0
        return iter(self.order()[start:])

    def __len__(self) -> int:
        return self.num_samples


class SeededDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (order from ``seed + epoch``, one shard per rank) that can skip.

    :meth:`skip` drops the first ``n`` indices of this rank's next pass only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` (and forget any pending skip)."""
        super().set_epoch(epoch)
        self._skip = 0

    def skip(self, n: int) -> None:
        """Leave out the first ``n`` indices of the next pass."""
        self._skip = max(0, int(n))

    def __iter__(self) -> Iterator[int]:
        start, self._skip = self._skip, 0
        return iter(list(super().__iter__())[start:])


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = True,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A ``DataLoader`` whose order depends only on ``(seed, epoch)``: what exact resume needs.

    Under torchrun each rank reads its own shard through a :class:`SeededDistributedSampler`
    (``batch_size`` is per process); otherwise a :class:`SeededSampler` is used. The loader
    carries a ``torch.Generator`` that :func:`esol_lib.runtime.engine.train_loop` reseeds every epoch,
    so the seeds of worker processes (and the augmentations they draw) repeat too.
    """
    sampler: Sampler[int]
    if is_distributed():
        sampler = SeededDistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = SeededSampler(dataset, shuffle=shuffle, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )
