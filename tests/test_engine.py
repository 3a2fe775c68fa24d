"""The training engine: poly lr, SGD keywords, checkpoints, exact resume, divergence, logging."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from esol_lib.runtime.atomic import atomic_save
from esol_lib.runtime.checkpoint import load_stage_checkpoint, partial_checkpoint_path
from esol_lib.runtime.distributed import SeededSampler, make_loader
from esol_lib.runtime.engine import seed_everything, train_loop
from esol_lib.runtime.errors import DivergenceError, StageError
from esol_lib.runtime.rundir import RunDir
from esol_lib.runtime.schedule import PolyLR, make_sgd, poly_lr
from esol_lib.runtime.train_log import DeadOutputGuard, JsonlLogger, StalledGradientGuard

# --------------------------------------------------------------------------- fixtures


def regression_data(n: int = 40, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    return TensorDataset(x, y)


class NoisyDataset(Dataset):
    """Augments in ``__getitem__`` with the global torch, numpy and python RNGs."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        noise = 0.05 * torch.randn(4) + float(np.random.uniform(-0.05, 0.05)) + random.uniform(-0.05, 0.05)
        return x + noise, y


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def mse(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    return loss, {"target_mean": float(y.mean())}


def setup(num_workers: int = 0, seed: int = 0):
    """Model, optimizer, scheduler and loader, built the same way for every run."""
    torch.manual_seed(123)
    model = mlp()
    opt = make_sgd(model.parameters(), lr=0.05)
    sched = PolyLR(opt, max_steps=12)
    loader = make_loader(NoisyDataset(regression_data()), 8, seed=seed, num_workers=num_workers)
    return model, opt, sched, loader


class Interrupt(Exception):
    """Stands in for Ctrl-C / a killed job."""


def interrupt_at(step_to_fail: int):
    def hook(step: int, model: nn.Module, extras: dict) -> None:
        if step == step_to_fail:
            raise Interrupt

    return hook


def run(tmp_path, name: str = "run") -> RunDir:
    return RunDir(tmp_path / name)


# --------------------------------------------------------------------------- lr and optimizer


def test_poly_lr_values():
    assert poly_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 50, 100, power=1.0) == pytest.approx(0.05)
    assert poly_lr(0.1, 100, 100) == 0.0
    assert poly_lr(0.1, 150, 100) == 0.0


def test_poly_scheduler_scales_every_group_from_its_own_lr():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = make_sgd([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    sched = PolyLR(opt, max_steps=10)
    for step in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(poly_lr(0.1, step, 10))
        assert opt.param_groups[1]["lr"] == pytest.approx(poly_lr(1.0, step, 10))
        opt.step()
        sched.step()
    params = [{"params": [nn.Parameter(torch.zeros(1))]}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0}]
    restored = PolyLR(make_sgd(params, lr=0.1), max_steps=10)
    restored.load_state_dict(sched.state_dict())
    assert restored.last_epoch == 10


def test_make_sgd_passes_momentum_and_weight_decay_by_keyword():
    opt = make_sgd(nn.Linear(2, 2).parameters(), lr=0.01)
    group = opt.param_groups[0]
    assert group["momentum"] == 0.9
    assert group["weight_decay"] == 1e-4
    assert group["nesterov"] is False and group["lr"] == 0.01
    custom = make_sgd(nn.Linear(2, 2).parameters(), 0.1, momentum=0.5, weight_decay=5e-4, nesterov=True)
    assert custom.param_groups[0]["momentum"] == 0.5 and custom.param_groups[0]["weight_decay"] == 5e-4


# --------------------------------------------------------------------------- helpers


def test_seed_everything_repeats_all_rngs():
    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_atomic_save_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    atomic_save({"a": torch.ones(2)}, path)
    atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]


def test_jsonl_logger_appends_lines_and_can_be_disabled(tmp_path):
    log = JsonlLogger(tmp_path / "log.jsonl")
    log.log(stage="s", step=1, loss=torch.tensor(0.5), bad=float("nan"))
    log.log(stage="s", step=2, loss=np.float32(0.25))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and lines[0]["loss"] == 0.5 and "time" in lines[0]
    assert lines[0]["bad"] == "nan"
    JsonlLogger(tmp_path / "off.jsonl", enabled=False).log(step=1)
    assert not (tmp_path / "off.jsonl").exists()


def test_seeded_sampler_order_depends_only_on_seed_and_epoch():
    data = list(range(20))
    s1, s2 = SeededSampler(data, seed=3), SeededSampler(data, seed=3)
    s1.set_epoch(2)
    s2.set_epoch(2)
    assert list(s1) == list(s2) and sorted(s1) == data
    s2.set_epoch(3)
    assert list(s1) != list(s2)
    s1.skip(5)
    assert list(s1) == s1.order()[5:]
    assert list(s1) == s1.order()  # a skip applies to one pass only
    assert list(SeededSampler(data, shuffle=False)) == data
    assert isinstance(make_loader(TensorDataset(torch.zeros(20, 1)), 4).sampler, SeededSampler)


# --------------------------------------------------------------------------- train_loop


def test_train_loop_reduces_loss_and_writes_final_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = make_sgd(model.parameters(), lr=0.05)
    loader = make_loader(regression_data(64), 16)
    x, y = regression_data(64).tensors
    before = nn.functional.mse_loss(model(x), y).item()
    result = train_loop("reg", model, opt, mse, loader, 60, run(tmp_path), scheduler=PolyLR(opt, 60), progress=False)
    after = nn.functional.mse_loss(model(x), y).item()
    assert after < 0.1 * before
    assert result.stage == "reg" and result.steps == 60 and result.resumed_from == 0
    assert math.isfinite(result.final_loss) and result.seconds > 0
    ckpt = torch.load(run(tmp_path).checkpoint("reg"), weights_only=True)
    assert ckpt["done"] is True and ckpt["step"] == 60 and ckpt["stage"] == "reg"
    assert not partial_checkpoint_path(run(tmp_path), "reg").exists()


def _final_weights(tmp_path, name, *, every, stop_at=None, num_workers=0):
    """Train 12 steps (5 batches per epoch); optionally interrupt at ``stop_at`` and resume."""
    rd = run(tmp_path, name)
    model, opt, sched, loader = setup(num_workers)
    kwargs = dict(scheduler=sched, checkpoint_every=every, seed=5, progress=False, log_every=1)
    if stop_at is not None:
        with pytest.raises(Interrupt):
            train_loop("cam", model, opt, mse, loader, 12, rd, after_step=interrupt_at(stop_at), **kwargs)
        assert partial_checkpoint_path(rd, "cam").is_file()
        model, opt, sched, loader = setup(num_workers)  # a new process: fresh objects
        torch.manual_seed(999)  # and a different global RNG state
        kwargs["scheduler"] = sched
    result = train_loop("cam", model, opt, mse, loader, 12, rd, **kwargs)
    return model.state_dict(), result, opt


@pytest.mark.parametrize(
    "every, stop_at, num_workers",
    [
        (3, 7, 0),  # resume mid-epoch (epoch 1, batch 1 done); the batch is skipped without loading
        (5, 11, 0),  # the checkpoint falls on an epoch boundary
        (3, 8, 1),  # a worker process: skipped batches are loaded and dropped
    ],
)
def test_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(tmp_path, every, stop_at, num_workers):
    ref, ref_result, ref_opt = _final_weights(tmp_path, "a", every=every, num_workers=num_workers)
    got, result, opt = _final_weights(tmp_path, "b", every=every, stop_at=stop_at, num_workers=num_workers)
    resumed = (stop_at // every) * every
    assert result.resumed_from == resumed and result.steps == 12 - resumed
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert result.final_loss == ref_result.final_loss
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["momentum"] == 0.9

    # logged losses of the resumed steps equal those of the uninterrupted run
    def losses(name):
        recs = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in recs if "loss" in r and "event" not in r}

    a, b = losses("a"), losses("b")
    assert all(a[s] == b[s] for s in range(1, 13))


def test_without_restoring_rng_the_runs_would_differ(tmp_path):
    """Guards the test above: dropout and augmentation really depend on the RNG state."""
    ref, _, _ = _final_weights(tmp_path, "a", every=0)
    model, opt, sched, loader = setup()
    train_loop("cam", model, opt, mse, loader, 12, run(tmp_path, "c"), scheduler=sched, seed=6, progress=False)
    assert any(not torch.equal(ref[k], model.state_dict()[k]) for k in ref)


def test_nan_loss_raises_divergence_and_keeps_the_last_checkpoint(tmp_path):
    rd = run(tmp_path)
    model, opt, sched, loader = setup()
    partial = partial_checkpoint_path(rd, "expansion")
    seen: dict = {}

    def exploding(model, batch):
        seen["n"] = seen.get("n", 0) + 1
        loss, _ = mse(model, batch)
        if seen["n"] == 5:  # step 5; the checkpoint of step 4 is on disk
            seen["before"] = partial.read_bytes()
            return loss * float("nan")
        return loss

    with pytest.raises(DivergenceError) as err:
        train_loop(
            "expansion", model, opt, exploding, loader, 12, rd, scheduler=sched, checkpoint_every=2, progress=False
        )
    msg = str(err.value)
    assert "expansion" in msg and "step 5" in msg
    assert str(partial) in msg and "last good checkpoint" in msg and "learning rate" in msg
    assert "--set expansion.lr=" in msg and "--run <new folder>" in msg  # a command that works as written
    assert partial.read_bytes() == seen["before"]
    assert torch.load(partial, weights_only=True)["step"] == 4
    assert not rd.checkpoint("expansion").exists()
    assert json.loads(rd.log_path.read_text().splitlines()[-1])["event"] == "diverged"


def test_divergence_from_after_step_propagates_and_keeps_checkpoint(tmp_path):
    rd = run(tmp_path)
    model, opt, sched, loader = setup()

    def bound_offsets(step, model, extras):
        if step == 5:
            raise DivergenceError("offsets ran away at step 5")

    with pytest.raises(DivergenceError, match="offsets"):
        train_loop(
            "shrinkage", model, opt, mse, loader, 12, rd, checkpoint_every=4, after_step=bound_offsets, progress=False
        )
    assert torch.load(partial_checkpoint_path(rd, "shrinkage"), weights_only=True)["step"] == 4


def test_finished_stage_short_circuits(tmp_path):
    rd = run(tmp_path)
    model, opt, sched, loader = setup()
    train_loop("baseline", model, opt, mse, loader, 12, rd, scheduler=sched, progress=False)
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    fresh, opt2, sched2, loader2 = setup()
    calls = []
    result = train_loop(
        "baseline", fresh, opt2, lambda m, b: calls.append(1) or mse(m, b), loader2, 12, rd, progress=False
    )
    assert calls == [] and result.steps == 0 and result.resumed_from == 12
    for k in trained:
        assert torch.equal(trained[k], fresh.state_dict()[k])
    events = [json.loads(line).get("event") for line in rd.log_path.read_text().splitlines()]
    assert events[-1] == "already done"


def test_log_lines_are_json_with_stage_step_loss_lr(tmp_path):
    rd = run(tmp_path)
    model, opt, sched, loader = setup()
    train_loop("cam", model, opt, mse, loader, 12, rd, scheduler=sched, log_every=5, progress=False)
    records = [json.loads(line) for line in rd.log_path.read_text().splitlines()]
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == [5, 10, 12]
    for r in steps:
        assert r["stage"] == "cam" and {"loss", "lr", "time", "target_mean"} <= set(r)
    assert steps[0]["lr"] == pytest.approx(poly_lr(0.05, 4, 12))
    assert records[-1]["event"] == "done"


def test_training_log_reads_the_steps_as_columns_and_keeps_a_resumed_steps_last_record(tmp_path):
    rd = run(tmp_path)
    model, opt, sched, loader = setup()
    train_loop("cam", model, opt, mse, loader, 12, rd, scheduler=sched, log_every=5, progress=False)
    records = [json.loads(line) for line in rd.log_path.read_text().splitlines()]
    log = rd.training_log("cam")
    assert log["step"] == [5, 10, 12] and set(log) == {"step", "loss", "lr", "target_mean"}
    assert log["loss"] == [r["loss"] for r in records if "event" not in r]
    with open(rd.log_path, "a") as f:  # a resumed run logs step 10 again, then a line cut by a kill
        f.write(json.dumps({"stage": "cam", "step": 10, "loss": -1.0, "lr": 0.0, "target_mean": 0.0}) + "\n")
        f.write('{"stage": "cam", "step": 1')
    log = rd.training_log("cam")
    assert log["step"] == [5, 10, 12] and log["loss"][1] == -1.0
    assert rd.training_log("never-trained") == {}
    assert list(rd.trained_seconds()) == ["cam"] and rd.trained_seconds()["cam"] >= 0
    assert RunDir(tmp_path / "empty").training_log("cam") == {} and RunDir(tmp_path / "empty").trained_seconds() == {}


def test_load_stage_checkpoint(tmp_path):
    rd = run(tmp_path)
    with pytest.raises(StageError) as err:
        load_stage_checkpoint(rd, "baseline", mlp(), hint="run `esol train-cam` first")
    assert str(rd.checkpoint("baseline")) in str(err.value) and "esol train-cam" in str(err.value)

    model, opt, sched, loader = setup()
    train_loop("baseline", model, opt, mse, loader, 3, rd, progress=False)
    other = mlp()
    ckpt = load_stage_checkpoint(rd, "baseline", other)
    assert ckpt["done"] and ckpt["step"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_dead_output_guard_trips_on_a_window_of_batches_that_give_every_image_the_same_scores():
    guard = DeadOutputGuard(window=10, fraction=0.9)
    alive, dead = torch.randn(4, 20), torch.full((4, 20), -0.3)
    for _ in range(20):
        guard.check(alive)
    assert not guard.suspect and guard.tripped is None
    guard.check(torch.zeros(1, 20))  # one image: nothing to compare, counts as alive
    for _ in range(8):
        guard.check(dead)
    assert guard.suspect and guard.tripped is None  # 8 of 10: not yet
    guard.check(dead)  # 9 of the last 10 dead, the one live batch among them (a dying network lets some through)
    assert "9 of the last 10 batches" in guard.tripped and "same outputs" in guard.tripped
    for _ in range(10):
        guard.check(alive)
    assert not guard.suspect and guard.tripped is None  # recovered: the window is alive again


def test_stalled_gradient_guard_counts_zero_gradients_only():
    guard = StalledGradientGuard(window=5, fraction=0.8)
    for _ in range(10):
        guard.observe(0.5, 1e-3)  # small is alive: only an exact (<= 1e-12) zero is dead
    assert not guard.suspect
    for _ in range(4):
        guard.observe(math.log(2), 0.0)
    assert guard.tripped == "the gradient was zero in 4 of the last 5 steps, the loss flat at 0.6931"


class DyingNet(nn.Module):
    """A bias-free ReLU network whose weights are zeroed after ``alive`` steps: its outputs, loss and
    gradients then stay exactly where a dead CAM classifier's do (zero, ln 2, zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8, bias=False)
        self.out = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def test_a_dead_network_stops_the_stage_with_one_line_and_keeps_the_checkpoint_from_before_it_died(tmp_path):
    rd = run(tmp_path)
    torch.manual_seed(0)
    model = DyingNet()
    opt = make_sgd(model.parameters(), lr=0.01)
    loader = make_loader(NoisyDataset(regression_data()), 8, seed=0)
    partial = partial_checkpoint_path(rd, "baseline")
    steps = {"n": 0}

    def loss_fn(m, batch):
        steps["n"] += 1
        if steps["n"] == 16:  # steps 1-15 alive; from step 16 on every ReLU is dead
            with torch.no_grad():
                m.hidden.weight.fill_(-1.0)
                m.hidden.weight[:, 0] = 0.0
        x, _ = batch
        logits = m(x.abs())  # every input non-negative: a negative weight row kills its unit
        dead.check(logits)
        return nn.functional.multilabel_soft_margin_loss(logits, torch.ones_like(logits))

    dead = DeadOutputGuard()
    with pytest.raises(DivergenceError) as err:
        train_loop("baseline", model, opt, loss_fn, loader, 500, rd, checkpoint_every=5, progress=False, guards=(dead,))
    msg = str(err.value)
    assert "\n" not in msg
    assert "stage 'baseline' stopped training at step 51" in msg  # 36 dead of 40: the 36th dead step is 51
    assert "the network is dead" in msg and "--set train_cam.lr=<smaller>" in msg
    assert str(partial) in msg and "(step 15)" in msg
    assert torch.load(partial, weights_only=True)["step"] == 15  # none written while it was dying
    assert not rd.checkpoint("baseline").exists()
    last = json.loads(rd.log_path.read_text().splitlines()[-1])
    assert last["event"] == "dead" and last["loss"] == pytest.approx(math.log(1 + math.exp(-0.0)), abs=1e-6)


def test_a_healthy_run_writes_the_same_checkpoints_with_the_guards_watching(tmp_path):
    """The guards only read: a live run's weights and checkpoints do not depend on them."""
    model, opt, sched, loader = setup()
    train_loop("baseline", model, opt, mse, loader, 12, run(tmp_path / "a"), scheduler=sched, progress=False)
    other, opt2, sched2, loader2 = setup()
    guard = DeadOutputGuard()

    def watched(m, batch):
        x, y = batch
        out = m(x)
        guard.check(out)
        return nn.functional.mse_loss(out, y)

    train_loop(
        "baseline",
        other,
        opt2,
        watched,
        loader2,
        12,
        run(tmp_path / "b"),
        scheduler=sched2,
        progress=False,
        guards=(guard,),
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_warm_up_ramps_the_poly_schedule_linearly():
    param = nn.Parameter(torch.zeros(1))
    opt = make_sgd([param], lr=1.0)
    sched = PolyLR(opt, max_steps=100, warmup_steps=4)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([poly_lr(1.0, k, 100) * (k + 1) / 4 for k in range(4)])
    assert seen[4:] == pytest.approx([poly_lr(1.0, k, 100) for k in (4, 5)])
    with pytest.raises(ValueError, match="warmup_steps"):
        PolyLR(opt, max_steps=10, warmup_steps=-1)


def test_a_finished_stage_records_the_machine_it_trained_on(tmp_path):
    """The same seed on another CPU or thread count trains to other numbers: the run folder says which."""
    rd = run(tmp_path)
    model, opt, sched, loader = setup()
    train_loop("baseline", model, opt, mse, loader, 3, rd, scheduler=sched, progress=False)
    done = [json.loads(line) for line in rd.log_path.read_text().splitlines() if '"done"' in line][-1]
    assert done["machine"]["torch_threads"] == torch.get_num_threads() and done["machine"]["torch"] == torch.__version__
    assert done["machine"]["cpu"] and isinstance(done["machine"]["isa"], list)
