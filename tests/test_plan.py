"""``esol pipeline --dry-run``: each training step's length, batches and peak memory, before a run."""

from __future__ import annotations

import dataclasses

import torch

from esol_lib.cli import main
from esol_lib.plan import plan_pipeline, plan_table
from esol_lib.runtime.config_io import load_config


def test_the_plan_lists_every_training_step_with_its_global_batch_and_memory():
    cfg = load_config("smoke")
    steps = plan_pipeline(cfg, world_size=4)
    assert [s.name for s in steps] == ["train-cam", "expand", "shrink", "train-irn", "train-seg"]
    by = {s.name: s for s in steps}
    assert (
        by["train-cam"].batch == cfg.train_cam.batch_size
        and by["train-cam"].global_batch == 4 * cfg.train_cam.batch_size
    )
    assert by["expand"].steps == cfg.expansion.max_steps and by["train-seg"].crop == cfg.seg.crop_size
    params = sum(p.numel() for p in torch.nn.Linear(1, 1).parameters())
    assert all(s.peak_bytes > 4 * s.parameters > 4 * params for s in steps)
    assert by["expand"].trainable < by["train-cam"].trainable  # only the sampler's offsets learn
    table = plan_table(steps, cfg)
    assert "global" in table and sum(line.endswith("cpu estimate") for line in table.splitlines()) == 5


def test_memory_grows_with_the_batch_and_the_crop():
    cfg = load_config("smoke")
    small = {s.name: s.peak_bytes for s in plan_pipeline(cfg)}
    cfg = dataclasses.replace(cfg, train_cam=dataclasses.replace(cfg.train_cam, batch_size=16, crop_size=64))
    big = {s.name: s.peak_bytes for s in plan_pipeline(cfg)}
    assert big["train-cam"] > small["train-cam"] and big["train-seg"] == small["train-seg"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["pipeline", "--config", "smoke", "--dry-run", "--processes", "3", "--run", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train-cam" in out and "peak memory" in out and "3 process(es)" in out
    assert not (tmp_path / "run").exists()


def test_pipeline_without_run_or_dry_run_is_one_error(capsys):
    assert main(["pipeline", "--config", "smoke"]) == 2
    assert "--run" in capsys.readouterr().err
