"""The performance page (issue 20): generated from benchmarks/compare.py's JSON, never typed in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esol_lib.book.performance import COMPARISONS, load_comparisons, markdown_table, performance_page, slower_rows

ROOT = Path(__file__).resolve().parents[1]

MACHINE = {
    "cores": 2,
    "cpu": "x86_64",
    "torch": "2.14.1",
    "threads": 2,
    "date": "2026-12-02 13:00 UTC",
    "commit": "abc1234",
}
RECORD = {
    "cpu": {
        "cam": {
            "rows": [
                {
                    "size": 128,
                    "images": 32,
                    "batch": 8,
                    "scales": [1.0, 0.5],
                    "floor_s": 1.0,
                    "esol_s": 1.1,
                    "irn_loop_s": 2.0,
                    "irn_loop_max_diff": 1e-7,
                    "gradcam_s": 20.0,
                    "gradcam_corr": 0.9999,
                },
                {
                    "size": 320,
                    "images": 8,
                    "batch": 8,
                    "scales": [1.0, 0.5],
                    "floor_s": 1.0,
                    "esol_s": 1.5,
                    "irn_loop_s": 1.4,
                    "irn_loop_max_diff": 1e-7,
                    "gradcam_s": 9.0,
                    "gradcam_corr": 0.9999,
                },
            ],
            "machine": MACHINE,
            "seconds": 60.0,
        },
        "walk": {
            "rows": [
                {
                    "side": 16,
                    "image_px": 64,
                    "N": 256,
                    "sparse_s": 0.02,
                    "sparse_peak_mib": 3.0,
                    "dense_s": 0.01,
                    "dense_peak_mib": 4.0,
                    "agree": True,
                },
                {
                    "side": 512,
                    "image_px": 2048,
                    "N": 262144,
                    "sparse_s": 9.0,
                    "sparse_peak_mib": 900.0,
                    "dense_note": "does not fit: 768 GiB",
                },
            ],
            "memory_gib": 24,
            "radius": 5,
            "beta": 10.0,
            "exp_times": 8,
            "machine": MACHINE,
            "seconds": 30.0,
        },
    }
}


def test_each_comparison_is_a_table_with_absolute_numbers_and_ratios():
    cam = markdown_table("cam", RECORD["cpu"]["cam"])
    assert "| 128 | 32 | 29.1 | – | 16.0 | 1.6 | 32.0 | 0.55 | 0.06 | 1.10 |" in cam  # img/s and esol/peer times
    assert "r = 0.9999" in cam
    walk = markdown_table("walk", RECORD["cpu"]["walk"])
    assert "| 512² (2048) | 262,144 | 9.00 | 900 | – | – | – | does not fit: 768 GiB |" in walk
    assert "same result" in walk


def test_rows_where_esol_is_slower_are_named_with_the_reason():
    assert slower_rows("cam", RECORD["cpu"]["cam"]) == [
        "320 px: slower than the IRN-style loop (1.07×)",
        "320 px: 1.50× its forward passes (target ≤ 1.2)",
    ]
    assert slower_rows("walk", RECORD["cpu"]["walk"]) == ["16² map: 2.00× the dense walk"]
    page = performance_page(RECORD)
    assert page.startswith("# Performance")
    assert "Where esol is not the fastest: 320 px: slower than the IRN-style loop" in page
    assert "Not measured on `cpu` yet." in page  # sampler and crf are missing from the record: said so
    assert "commit `abc1234`" in page
    assert "No measurements yet" in performance_page({})


def test_the_page_says_when_esol_is_fastest_everywhere():
    fast = {
        "cpu": {
            "crf": {
                "rows": [{"size": 64, "images": 64, "workers": 2, "serial_s": 2.0, "pool_s": 1.1}],
                "machine": MACHINE,
                "seconds": 5.0,
            }
        }
    }
    assert slower_rows("crf", fast["cpu"]["crf"]) == []
    assert "esol is at least as fast as each peer on every row." in performance_page(fast)


@pytest.mark.slow
def test_compare_script_runs_every_comparison_and_the_page_reads_its_json(tmp_path):
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert set(record["cpu"]) == set(COMPARISONS) - {"suite"}  # the suite (make test) runs only when asked
    for name, result in record["cpu"].items():
        assert result["rows"] and not any("error" in r for r in result["rows"]), (name, result["rows"])
        assert f"### {COMPARISONS[name][0].upper()}" in proc.stdout  # each table printed
    cam = record["cpu"]["cam"]["rows"][0]
    assert cam["irn_loop_max_diff"] < 1e-4  # the loop computes the same CAMs
    assert cam.get("gradcam_corr", 1.0) > 0.99 or cam.get("gradcam_note")
    sampler = record["cpu"]["sampler"]["rows"][0]
    assert sampler["max_diff"] < 1e-4 and sampler["grad_max_diff"] < 1e-3  # both samplers compute Eq. (4)
    assert all(r.get("agree") for r in record["cpu"]["walk"]["rows"])  # dense and sparse walks agree
    page = performance_page(record)
    assert "a `--quick` run" in page
    assert page.count("Not measured") == 1 and "Not measured" in page.split("### The test suite")[1]


def test_the_committed_page_is_the_one_the_committed_measurements_give():
    """README links book/performance.md: it must be what benchmarks/compare.py wrote from the JSON."""
    record = load_comparisons(ROOT / "book" / "results" / "compare.json")
    assert record, "book/results/compare.json is missing: run python benchmarks/compare.py"
    page = (ROOT / "book" / "performance.md").read_text(encoding="utf-8")
    assert page == performance_page(record), "book/performance.md is stale: run python benchmarks/compare.py"


def test_a_ratio_that_the_table_shows_as_1_00_is_not_called_slower():
    tie = {"rows": [{"size": 64, "images": 8, "workers": 2, "serial_s": 1.000, "pool_s": 1.004}]}
    assert "| 1.00 |" in markdown_table("crf", tie) and slower_rows("crf", tie) == []
    tie["rows"][0]["pool_s"] = 1.006
    assert slower_rows("crf", tie) == ["64 px, 8 images: the pool takes 1.01× one process"]


def test_the_gpu_section_says_plainly_when_no_gpu_has_run_it():
    from esol_lib.book.performance import gpu_check_section

    assert "has not run on a GPU yet" in gpu_check_section(None)
    assert "has not run on a GPU yet" in gpu_check_section({"device": "cpu", "reduced": True})
    record = {
        "device": "cuda",
        "machine": {"gpu": "NVIDIA H100", "torch": "2.x", "date": "2027-01-01"},
        "sampler": {"channels": 2048, "size": 32, "batch": 16, "output_relative": 1e-6, "offset_grad_relative": 2e-6,
                    "weight_grad_relative": 3e-6},
        "plan": [{"step": "train-cam", "iterations": None, "batch": 16, "crop": 512, "peak_gib": 11.5}],
        "pipeline": {"returncode": 0, "seconds": 40.0, "stage_seconds": {"train_cam": 3.0}},
    }  # fmt: skip
    page = gpu_check_section(record)
    assert "NVIDIA H100" in page and "| train-cam | - | 16 | 512 | 11.5 |" in page and "train_cam 3.0 s" in page
