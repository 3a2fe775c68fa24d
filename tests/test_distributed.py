"""Two CPU processes (gloo) train with DDP through ``train_loop``: weights stay in sync, each rank
reads its own shard, and only rank 0 writes files."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
STEPS = 6


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    """One torchrun-like process: env vars, init, DDP, train_loop, save its parameters."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    from torch import nn
    from torch.utils.data import TensorDataset

    from esol_lib.runtime.distributed import (
        SeededDistributedSampler,
        all_reduce_mean,
        cleanup_distributed,
        init_distributed,
        make_loader,
        unwrap,
        wrap_ddp,
    )
    from esol_lib.runtime.engine import train_loop
    from esol_lib.runtime.rundir import RunDir
    from esol_lib.runtime.schedule import PolyLR, make_sgd

    info = init_distributed()
    assert init_distributed() == info  # idempotent
    assert info.rank == rank and info.world_size == WORLD and info.is_main == (rank == 0)
    try:
        out = Path(tmp)
        torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        if rank == 0:
            torch.save(model.state_dict(), out / "initial.pt")
        model = wrap_ddp(model, info)
        assert isinstance(model, nn.parallel.DistributedDataParallel)

        g = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=g)
        data = TensorDataset(x, x.sum(1, keepdim=True), torch.arange(32))
        loader = make_loader(data, 4, seed=1)
        assert isinstance(loader.sampler, SeededDistributedSampler)
        seen: list[int] = []

        def loss_fn(m, batch):
            xb, yb, idx = batch
            seen.extend(idx.tolist())
            return nn.functional.mse_loss(m(xb), yb), {"rank_batch": float(idx[0])}

        opt = make_sgd(model.parameters(), lr=0.05)
        run = RunDir(out / f"run{rank}")  # one folder per rank, to see who writes what
        result = train_loop(
            "ddp",
            model,
            opt,
            loss_fn,
            loader,
            STEPS,
            run,
            scheduler=PolyLR(opt, STEPS),
            checkpoint_every=3,
            log_every=2,
            progress=False,
        )
        assert result.steps == STEPS
        mean = all_reduce_mean(torch.tensor([float(rank)]))
        torch.save({"params": unwrap(model).state_dict(), "seen": seen, "mean": mean.item()}, out / f"rank{rank}.pt")
    finally:
        cleanup_distributed()


def _spawn(tmp: Path, timeout: float = 50.0) -> None:
    ctx = mp.start_processes(_worker, args=(free_port(), str(tmp)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {WORLD} DDP processes did not finish in {timeout:.0f} s")


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend unavailable")
@pytest.mark.slow
def test_two_process_ddp_stays_in_sync_and_only_rank0_writes(tmp_path):
    _spawn(tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = torch.load(tmp_path / "initial.pt", weights_only=True)

    for key, value in r0["params"].items():
        assert torch.equal(value, r1["params"][key]), f"{key} differs between ranks"
    assert any(not torch.equal(v, initial[k]) for k, v in r0["params"].items()), "weights did not move"

    # each rank read its own shard (DistributedSampler)
    assert len(r0["seen"]) == len(r1["seen"]) == STEPS * 4
    assert set(r0["seen"][:16]).isdisjoint(r1["seen"][:16])
    assert r0["mean"] == r1["mean"] == 0.5

    run0, run1 = tmp_path / "run0", tmp_path / "run1"
    records = [json.loads(line) for line in (run0 / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r and "event" not in r] == [2, 4, 6]
    assert (run0 / "checkpoints" / "ddp.pt").is_file()
    assert not (run0 / "checkpoints" / "ddp.partial.pt").exists()
    assert not run1.exists() or not any(run1.rglob("*")), "rank 1 wrote files"


def _main_only_worker(rank: int, port: int, tmp: str) -> None:
    """Two torchrun-like processes call a step that does not distribute."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    from esol_lib.runtime.distributed import cleanup_distributed, main_process_only
    from esol_lib.runtime.errors import StageError

    calls = Path(tmp) / "calls"

    @main_process_only
    def step(x: int) -> int:
        with open(calls, "a") as f:
            f.write(f"{rank}\n")
        return x * 10

    @main_process_only
    def failing() -> None:
        raise ValueError("disk on fire")

    @main_process_only
    def outer() -> int:
        return step(1) + 1  # nested: must not start a collective of its own (eval-cam --crf calls eval-cam)

    try:
        got = step(4) + outer() - 11
        try:
            failing()
            failed = ""
        except (ValueError, StageError) as e:
            failed = str(e)
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({"got": got, "failed": failed}))
    finally:
        cleanup_distributed()


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="gloo backend unavailable")
@pytest.mark.slow
def test_a_step_that_does_not_distribute_runs_on_rank_zero_only(tmp_path):
    """Under torchrun make-cam ran on every rank: each computed every CAM, and one could empty the
    folder the other was writing (issue 29). Now rank 0 runs it; the others get its result."""
    ctx = mp.start_processes(
        _main_only_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        assert time.monotonic() < deadline, "the processes did not finish"
    assert (tmp_path / "calls").read_text() == "0\n0\n"
    for r in range(WORLD):
        out = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert out["got"] == 40 and "disk on fire" in out["failed"]
