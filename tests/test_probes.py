"""The hostile-user probes of issue 30, one test per numbered case, each as a user would type it
(real ``esol`` processes on the smoke profile). Each case ends in a correct result or one error line
that names the file, key or flag and the fix, with nothing already computed lost.

1. a dataset whose contents are replaced in place: no old model is reported as done on new data;
2. a moved dataset: ``--data-root`` / ``--set data.root`` on the existing run, nothing redone;
3. ``esol book --out`` on a folder holding only ``src/`` (more in ``test_book``);
4. feature-cache entries overwritten: recomputed, not trusted;
5. derived files damaged (checkpoint, CAM, pseudo mask, log): named with the command that remakes them;
6. settings out of range or out of order, and a failed first stage that must not lock the config;
7. a symbolic link where a run writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def esol(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "esol_lib.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The single ``esol <cmd>: error:`` line of a failed command (and no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if ": error:" in line and line.startswith("esol ")]
    assert proc.returncode == 2 and len(lines) == 1, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def pipeline(data: Path, run: Path, *extra: str) -> list[str]:
    return ["pipeline", "--config", "smoke", "--data-root", str(data), "--run", str(run), *extra]


def metrics(run: Path) -> dict[str, str]:
    return {
        p.name: hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest() for p in sorted(run.glob("metrics/*.json"))
    }


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Two generated datasets (seeds 0 and 7) and a finished smoke pipeline on the first."""
    base = tmp_path_factory.mktemp("probes")
    for name, seed in (("d0", "0"), ("d7", "7")):
        ok(esol("data", "synth", "--out", str(base / name), "--profile", "smoke", "--seed", seed, cwd=base))
    ok(esol(*pipeline(base / "d0", base / "ref0"), cwd=base))
    return base


def test_1_data_replaced_in_place_retrains_every_model_and_scores_as_a_fresh_run(ws, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(ws / "d0", data)
    ok(esol(*pipeline(data, run), cwd=tmp_path))
    shutil.rmtree(data)
    shutil.copytree(ws / "d7", data)  # same path, other images
    # a step run alone refuses the old model
    line = one_error(esol("make-cam", "--run", str(run), "--stage", "expansion", cwd=tmp_path))
    assert "baseline.pt was trained from other data" in line and "esol train-cam --run" in line
    proc = ok(esol(*pipeline(data, run), cwd=tmp_path))
    for ckpt in ("baseline", "expansion", "shrinkage", "seg-baseline", "seg-shrinkage"):
        assert f"{ckpt}.pt was trained from other" in proc.stderr, ckpt
    fresh = tmp_path / "fresh"
    ok(esol(*pipeline(data, fresh), cwd=tmp_path))
    assert metrics(run) == metrics(fresh) and len(metrics(run)) == 10
    assert sorted(p.name for p in run.glob("superseded/*/checkpoints/*.pt")) == sorted(
        ["baseline.pt", "expansion.pt", "shrinkage.pt", "seg-baseline.pt", "seg-shrinkage.pt"]
    )  # the old models are kept aside, not deleted


def test_2_a_moved_dataset_is_accepted_on_the_existing_run_and_nothing_is_redone(ws, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ws / "ref0", run)  # made on ws/d0
    before = metrics(run)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace(str(ws / "d0"), str(tmp_path / "gone")))  # the data moved away
    line = one_error(esol("eval-cam", "--run", str(run), "--stage", "baseline", cwd=tmp_path))
    assert "--set data.root=" in line
    shutil.copytree(ws / "d0", tmp_path / "moved")
    proc = ok(esol("eval-cam", "--run", str(run), "--stage", "baseline", "--set", "data.root=moved", cwd=tmp_path))
    assert "nothing needs redoing" in proc.stderr
    models = {p.name: p.read_bytes() for p in run.glob("checkpoints/*.pt")}
    proc = ok(esol(*pipeline(tmp_path / "moved", run), cwd=tmp_path))
    assert "trained from other" not in proc.stderr and not (run / "superseded").exists()
    assert {p.name: p.read_bytes() for p in run.glob("checkpoints/*.pt")} == models
    assert metrics(run) == before
    # other data at the new place is refused, as any change of the baseline's data is
    line = one_error(esol(*pipeline(ws / "d7", run), cwd=tmp_path))
    assert "data.root" in line and "new --run folder" in line


def test_3_book_out_on_a_folder_holding_only_src_deletes_nothing(ws, tmp_path):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "important.py").write_text("x")
    line = one_error(esol("book", "--profile", "smoke", "--out", str(proj), "--only", "00", cwd=tmp_path))
    assert "not made by `esol book`" in line
    assert (proj / "src" / "important.py").read_text() == "x"


def test_4_zeroed_feature_cache_entries_are_recomputed(ws, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(ws / "d0", data)
    ok(esol(*pipeline(data, run, "--set", "feature_cache_mb=64"), cwd=tmp_path))
    reference = metrics(run)
    entries = list(run.glob("cache/features/*/*.pt"))
    assert entries
    import torch

    for path in entries:
        entry = torch.load(path, weights_only=True)
        torch.save({**entry, "features": torch.zeros_like(entry["features"])}, path)
    for gone in ("cams", "metrics", "ir_labels", "pseudo_masks", "seg_predictions"):
        shutil.rmtree(run / gone)
    for stage in ("expansion", "shrinkage", "seg-baseline", "seg-shrinkage", "irn-baseline", "irn-shrinkage"):
        (run / "checkpoints" / f"{stage}.pt").unlink()
    proc = ok(esol(*pipeline(data, run), cwd=tmp_path))
    assert "does not match its checksum" in proc.stderr
    assert metrics(run) == reference


def test_5_damaged_derived_files_are_named_with_the_command_that_remakes_them(ws, tmp_path):
    data, run = ws / "d0", tmp_path / "run"
    shutil.copytree(ws / "ref0", run)
    reference = metrics(run)
    # a zero-byte checkpoint
    ckpt = run / "checkpoints" / "expansion.pt"
    saved = ckpt.read_bytes()
    ckpt.write_bytes(b"")
    line = one_error(esol("make-cam", "--run", str(run), "--stage", "expansion", cwd=tmp_path))
    assert "expansion.pt is unreadable (EOFError)" in line and "delete it" in line
    ckpt.write_bytes(saved)
    # a CAM file cut in half, then one of random bytes of the same size
    cam, other = sorted((run / "cams" / "baseline").glob("*.npz"))[:2]
    good, other_good = cam.read_bytes(), other.read_bytes()
    cam.write_bytes(good[: len(good) // 2])
    (run / "metrics" / "baseline_train.json").unlink()
    line = one_error(esol("eval-cam", "--run", str(run), "--stage", "baseline", cwd=tmp_path))
    assert cam.name in line and "esol make-cam" in line and not cam.exists()  # derived: deleted, to be remade
    other.write_bytes(os.urandom(len(other_good)))  # same size: only its checksum tells
    ok(esol(*pipeline(data, run), cwd=tmp_path))
    assert cam.read_bytes() == good and other.read_bytes() == other_good  # remade by make-cam, not left damaged
    assert metrics(run) == reference
    # a damaged pseudo mask: remade by refine, never "remove the id from the split list"
    mask = sorted((run / "pseudo_masks" / "shrinkage").glob("*.png"))[0]
    good = mask.read_bytes()
    mask.write_bytes(os.urandom(len(good)))
    (run / "checkpoints" / "seg-shrinkage.pt").unlink()
    line = one_error(esol("train-seg", "--run", str(run), "--stage", "shrinkage", cwd=tmp_path))
    assert mask.name in line and "esol refine" in line and "split list" not in line
    ok(esol(*pipeline(data, run), cwd=tmp_path))
    assert mask.read_bytes() == good and metrics(run) == reference
    # garbage in the log: skipped with a warning
    with open(run / "log.jsonl", "ab") as f:
        f.write(b"\xff\xfe garbage \x00\n[1, 2]\n")
    from esol_lib.runtime.rundir import RunDir

    assert RunDir(run).training_log("baseline")["step"]


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("irn.radius=100", "irn.radius"),
        ("data.mean=[0.5]", "data.mean"),
        ("data.std=[0,0,0]", "data.std"),
        ("irn.conf_bg_thres=0.5", "irn.conf_bg_thres"),
        ("expansion.sampler_layer=7", "expansion.sampler_layer"),
    ],
)
def test_6_a_setting_out_of_range_is_one_line_naming_the_key(ws, tmp_path, setting, named, capsys):
    from esol_lib.cli import main

    assert main(pipeline(ws / "d0", tmp_path / "run", "--set", setting)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error:" in err[0] and named in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_6_a_failed_first_stage_does_not_lock_the_config(ws, tmp_path):
    run = tmp_path / "run"
    one_error(esol(*pipeline(ws / "d0", run, "--set", "train_cam.batch_size=100"), cwd=tmp_path))
    assert any('"stage_time"' in line for line in (run / "log.jsonl").read_text().splitlines())
    ok(esol(*pipeline(ws / "d0", run), cwd=tmp_path))  # the corrected command replaces the config
    assert metrics(run) == metrics(ws / "ref0")


def test_7_a_symlinked_output_folder_is_one_line_and_its_target_is_untouched(ws, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ws / "ref0", run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    shutil.rmtree(run / "cams" / "baseline")
    (run / "cams" / "baseline").symlink_to(outside, target_is_directory=True)
    config = (run / "config.yaml").read_bytes()
    line = one_error(esol(*pipeline(ws / "d0", run), cwd=tmp_path))
    assert "cams/baseline is a symbolic link" in line and "remove the link" in line
    assert [p.name for p in outside.iterdir()] == ["precious.txt"]
    assert (run / "config.yaml").read_bytes() == config
