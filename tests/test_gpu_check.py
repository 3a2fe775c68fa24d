"""``benchmarks/gpu_check.py`` in its reduced CPU mode, so that it works the day a GPU is available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_reduced_on_a_cpu_and_the_two_sampler_paths_agree(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--reduced", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["reduced"]
    s = record["sampler"]
    for key in ("output_relative", "offset_grad_relative", "weight_grad_relative"):
        assert s[key] < 1e-4, (key, s[key])  # torchvision's CPU deform_conv2d and the grid_sample path
    assert [p["step"] for p in record["plan"]] == ["train-cam", "expand", "shrink", "train-irn", "train-seg"]
    assert record["pipeline"]["returncode"] == 0 and "make_cam" in record["pipeline"]["stage_seconds"]


@pytest.mark.slow  # a fresh interpreter importing torch
def test_without_a_gpu_it_asks_for_the_reduced_mode():
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--reduced --out" in proc.stderr
