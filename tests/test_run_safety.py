"""The run folder under concurrency and faults (issue 18): a lock per run folder, writes that are
all-or-nothing with temp names no two writers share, and unreadable bookkeeping that costs a
recomputation instead of a crash. The race tests use real processes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from esol_lib.data import VOCSegmentation
from esol_lib.data.synth import SynthSpec, generate_benchmark
from esol_lib.method.cam import compute_cams
from esol_lib.runtime import lock, rundir, stage_log
from esol_lib.runtime.atomic import atomic_path, atomic_write_text, link_or_copy, read_json
from esol_lib.runtime.errors import StageError
from esol_lib.runtime.lock import HOLDER_FILE, RunBusyError, run_lock
from esol_lib.runtime.rundir import holds_run_lock

ROOT = Path(__file__).resolve().parents[1]


def _holder(run: Path, ready: Path) -> subprocess.Popen:
    """Another process that takes ``run``'s lock, says so by creating ``ready`` and waits to be killed."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from esol_lib.runtime.lock import run_lock
        with run_lock({str(run)!r}, command="esol train-cam --run {run}", create=True):
            Path({str(ready)!r}).touch()
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "the lock holder died"
        assert time.monotonic() < deadline, "the lock holder never took the lock"
        time.sleep(0.05)
    return proc


def test_a_second_writer_stops_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run, tmp_path / "ready")
    try:
        with pytest.raises(RunBusyError) as err:
            with run_lock(run):
                pass
        msg = str(err.value)
        assert "esol train-cam --run" in msg and f"pid {proc.pid}" in msg and "another --run" in msg
        assert json.loads((run / HOLDER_FILE).read_text())["pid"] == proc.pid
    finally:
        proc.kill()  # SIGKILL: no clean-up code runs, the operating system drops the lock
        proc.wait()
    with run_lock(run):  # free again
        assert json.loads((run / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert not (run / HOLDER_FILE).exists()  # a finished holder leaves no description of itself


def test_the_busy_message_waits_for_the_new_holder_instead_of_naming_a_dead_one(tmp_path):
    """The holder describes itself just after taking the lock; a second writer looking in between
    used to name the previous (dead) holder's command (a CI failure, 1 run in ~10)."""
    (tmp_path / HOLDER_FILE).write_text(json.dumps({"pid": 2**22 + 1, "command": "esol train-cam"}))

    def describe_later():
        time.sleep(0.3)
        atomic_write_text(tmp_path / HOLDER_FILE, json.dumps({"pid": os.getpid(), "command": "esol make-cam"}))

    thread = threading.Thread(target=describe_later)
    thread.start()
    assert lock.current_holder(tmp_path, wait=10)["command"] == "esol make-cam"
    thread.join()
    (tmp_path / HOLDER_FILE).write_text(json.dumps({"pid": 2**22 + 1, "command": "esol train-cam"}))
    assert lock.current_holder(tmp_path, wait=0.1)["command"] == "esol train-cam"  # all there is


def test_stage_calls_log_their_time_and_only_the_outermost_count(tmp_path):
    run = rundir.RunDir(tmp_path / "run")
    run.root.mkdir()
    fork = rundir.RunDir(run.root / "ablations" / "a")
    fork.root.mkdir(parents=True)

    @holds_run_lock
    def inner(r):
        time.sleep(0.05)

    @holds_run_lock
    def outer(r):
        inner(r)
        inner(fork)  # a fork's stage inside a stage of the main run: depth 1, not counted twice

    outer(run)
    inner(fork)
    records = [json.loads(line) for line in (run.root / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["depth"], r["ok"]) for r in records] == [("inner", 1, True), ("outer", 0, True)]
    times = stage_log.stage_times(run.root)
    assert set(times) == {"outer", "ablation inner"}
    assert times["outer"] >= 0.1 and 0.05 <= times["ablation inner"] < times["outer"]
    assert stage_log.stage_times(run.root, since=time.time() + 1) == {}  # a window after the calls

    @holds_run_lock
    def failing(r):
        raise ValueError("boom")

    with pytest.raises(ValueError):
        failing(run)
    assert json.loads((run.root / "log.jsonl").read_text().splitlines()[-1])["ok"] is False


def test_stage_functions_take_the_lock_and_reenter_it(tmp_path):
    run = rundir.RunDir(tmp_path / "run")
    run.root.mkdir()
    calls = []

    @holds_run_lock
    def inner(r):
        calls.append(str(r.root))

    @holds_run_lock
    def outer(r):
        inner(r)  # the pipeline calls stages: the same process re-enters its own lock
        inner(r)

    outer(run)
    assert len(calls) == 2 and not lock._HELD
    proc = _holder(run.root, tmp_path / "ready")
    try:
        with pytest.raises(RunBusyError):
            outer(run)
    finally:
        proc.kill()
        proc.wait()


def test_a_missing_run_folder_is_not_created_by_the_lock(tmp_path):
    with run_lock(tmp_path / "nope"):
        pass
    assert not (tmp_path / "nope").exists()


@pytest.mark.slow
def test_two_train_cam_with_different_seeds_never_both_succeed(tmp_path):
    """Both used to exit 0 while the second request was silently dropped (issue 18, item 4)."""
    data = tmp_path / "d"
    generate_benchmark(data, SynthSpec(train=12, val=4, size=32, num_classes=3), progress=False)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "esol_lib",
        "train-cam",
        "--config",
        "smoke",
        "--data-root",
        str(data),
        "--run",
        str(run),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            cmd + ["--set", f"seed={s}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for s in (1, 2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, [o[1][-500:] for o in outs])
    refused = outs[codes.index(2)][1]
    assert "Traceback" not in refused and (
        "is in use by `esol train-cam" in refused or "started with another config" in refused
    )
    seed = rundir.RunDir(run).load_config().seed
    assert seed == (1, 2)[codes.index(0)]  # the run folder holds what the successful command asked for


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_path_gives_each_writer_its_own_temp_and_cleans_up(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path and a.name.startswith(".m.json.")
        a.write_text("A")
        b.write_text("B")
    assert target.read_text() == "A"  # the last rename (the outer writer finishes last) wins, whole
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "A" and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    with atomic_path(tmp_path / "c.npz", suffix=".npz") as tmp:
        assert tmp.name.endswith(".npz")  # np.savez keeps the name
        np.savez(tmp, x=np.zeros(1))
    assert np.load(tmp_path / "c.npz")["x"].shape == (1,)


def test_read_json_treats_a_truncated_file_as_missing(tmp_path, caplog):
    path = tmp_path / "_meta.json"
    atomic_write_text(path, json.dumps({"signature": "abc"}))
    assert read_json(path) == {"signature": "abc"}
    path.write_text('{"signa')  # a kill or a full disk before writes were atomic
    assert read_json(path) is None and "unreadable" in caplog.text and str(path) in caplog.text
    assert read_json(tmp_path / "missing.json") is None


def test_a_truncated_cam_meta_file_makes_the_cams_recomputed_not_a_crash(tmp_path):
    root = generate_benchmark(tmp_path / "d", SynthSpec(train=2, val=1, size=32, num_classes=3), progress=False)
    ds = VOCSegmentation(root, "train")
    out = tmp_path / "cams"
    calls = []

    def cam_fn(x):
        calls.append(x.shape[0])
        return torch.ones(x.shape[0], 3, 8, 8)

    kwargs = dict(mean=[0.5] * 3, std=[0.5] * 3, scales=[1.0], flip=False, progress=False, signature="s")
    compute_cams(cam_fn, ds, out, **kwargs)
    (out / "_meta.json").write_text('{"sig')
    compute_cams(cam_fn, ds, out, **kwargs)  # used to raise an unnamed JSONDecodeError
    assert json.loads((out / "_meta.json").read_text())["signature"] == "s"
    assert sum(calls) == 2 * len(ds)  # recomputed, since nothing said which model made the old ones
    assert not list(out.glob(".*tmp*"))


def test_a_copy_cut_short_never_sits_at_the_destination(tmp_path, monkeypatch):
    """A fork copies checkpoints where it cannot hard-link; a later fork skips any file that exists."""
    import shutil

    src = tmp_path / "a.pt"
    src.write_bytes(b"x" * 1000)
    dst = tmp_path / "fork" / "a.pt"

    def no_link(*a, **k):
        raise OSError(errno.EXDEV, "cross-device link")

    def half_copy(s, d, *a, **k):
        Path(d).write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copy2", half_copy)
    with pytest.raises(OSError):
        link_or_copy(src, dst)
    assert not dst.exists() and list(dst.parent.iterdir()) == []
    monkeypatch.undo()
    link_or_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()


def test_a_failed_feature_cache_write_warns_and_the_stage_goes_on(tmp_path, monkeypatch, caplog):
    from esol_lib.runtime.feature_cache import FeatureCache

    cache = FeatureCache(max_mb=1)

    def full_disk(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    x = torch.ones(1, 3, 4, 4)
    out = cache.compute(lambda t: t * 2, "m", x, directory=tmp_path / "cache")
    assert torch.equal(out, x * 2) and "could not write" in caplog.text
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no temp file left behind


def test_config_yaml_is_written_atomically(tmp_path, monkeypatch):
    from esol_lib.runtime.config_io import load_config, save_config

    path = tmp_path / "config.yaml"
    save_config(load_config("smoke"), path)
    before = path.read_bytes()

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        save_config(load_config("smoke", ["seed=7"]), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_read_only_lock_failure_is_one_clear_error(tmp_path, monkeypatch):
    import filelock

    (tmp_path / "run").mkdir()

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", denied)
    with pytest.raises(StageError, match="cannot lock run folder .*make it writable"):
        with run_lock(tmp_path / "run"):
            pass


@pytest.mark.slow
def test_two_make_cam_on_one_stage_end_with_one_complete_folder(tmp_path):
    """They used to crash in 3 of 4 trials on the shared temp name ``<id>.tmp.npz`` (issue 18, item 4)."""
    data = tmp_path / "d"
    generate_benchmark(data, SynthSpec(train=12, val=4, size=32, num_classes=3), progress=False)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "esol_lib"]
    subprocess.run(
        base + ["train-cam", "--config", "smoke", "--data-root", str(data), "--run", str(run)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    procs = [
        subprocess.Popen(
            base + ["make-cam", "--stage", "baseline", "--run", str(run)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes and set(codes) <= {0, 2}, (codes, [o[1][-800:] for o in outs])
    for code, (_, err) in zip(codes, outs):
        assert "Traceback" not in err
        if code == 2:
            assert "is in use by `esol make-cam --stage baseline" in err
    cams = rundir.RunDir(run).cams("baseline")
    ids = VOCSegmentation(data, "train").ids
    assert sorted(p.stem for p in cams.glob("*.npz")) == sorted(ids)
    assert not [p for p in cams.iterdir() if "tmp" in p.name]


# ----------------------------------------------------------------------------- signatures over the data


@pytest.mark.slow
def test_cams_and_scores_follow_the_data_not_only_the_model(tmp_path):
    """Repointing a run at another dataset with the same ids used to keep the old CAMs and score them
    (18.7 mIoU where fresh CAMs gave 22.9); then make-cam redid the CAMs with the model trained on the
    old data (issue 30, case 1); with other classes make-cam crashed in load_state_dict."""
    import dataclasses

    from esol_lib.runtime.config_io import load_config, save_config
    from esol_lib.steps import eval_cam, make_cam, start_run, train_cam

    spec = SynthSpec(train=10, val=4, size=32, num_classes=3)
    d0 = generate_benchmark(tmp_path / "d0", spec, progress=False)
    d1 = generate_benchmark(tmp_path / "d1", dataclasses.replace(spec, seed=1), progress=False)
    d4 = generate_benchmark(tmp_path / "d4", dataclasses.replace(spec, num_classes=4), progress=False)
    assert VOCSegmentation(d0, "train").ids == VOCSegmentation(d1, "train").ids

    run = start_run(tmp_path / "run", load_config("smoke"), d0)
    train_cam(run, progress=False)
    make_cam(run, progress=False)
    eval_cam(run, progress=False)

    def repoint(r, root):
        cfg = r.load_config()
        save_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root))), r.config_path)

    repoint(run, d1)
    with pytest.raises(StageError, match="made from other data .*make-cam"):
        eval_cam(run, progress=False)
    with pytest.raises(StageError, match="baseline.pt was trained from other data .*esol train-cam"):
        make_cam(run, progress=False)
    train_cam(run, progress=False)  # retrains on d1 (the old model is kept aside)
    make_cam(run, progress=False)
    after = eval_cam(run, progress=False)
    assert list(run.root.glob("superseded/*/checkpoints/baseline.pt"))

    fresh = start_run(tmp_path / "fresh", load_config("smoke"), d1)
    train_cam(fresh, progress=False)
    make_cam(fresh, progress=False)
    assert after["miou"] == pytest.approx(eval_cam(fresh, progress=False)["miou"])

    repoint(run, d4)
    with pytest.raises(StageError, match="trained from other data|does not fit the model .*new --run"):
        make_cam(run, progress=False)


def test_a_missing_split_is_found_before_the_run_folder_is_written(tmp_path):
    """A missing val split used to surface at eval-seg, after every training stage (issue 18, item 9)."""
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import start_run

    data = generate_benchmark(tmp_path / "d", SynthSpec(train=4, val=2, size=32, num_classes=3), progress=False)
    (data / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(StageError, match=r"data.val_split is 'val', but .* has no val.txt .*--set data.val_split"):
        start_run(tmp_path / "run", load_config("smoke"), data)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_folder_is_complete_only_with_every_file_undamaged_and_made_from_its_signature(tmp_path):
    from esol_lib.runtime.freshness import (
        SIZES_FILE,
        folder_complete,
        folder_signature,
        record_sizes,
        reset_stale_folder,
        write_folder_signature,
    )

    folder = tmp_path / "ir_labels" / "shrinkage"
    reset_stale_folder(folder, "sig-a")
    assert folder.is_dir() and folder_signature(folder) is None
    write_folder_signature(folder, "sig-a", scales=[1.0])
    assert json.loads((folder / "_meta.json").read_text()) == {"signature": "sig-a", "scales": [1.0]}
    names = ["a.png", "b.png"]
    (folder / "a.png").write_bytes(b"aaaa")
    assert not folder_complete(folder, names, "sig-a")  # b.png is missing
    (folder / "b.png").write_bytes(b"bbbb")
    assert not folder_complete(folder, names, "sig-b")  # made from other inputs
    assert not (folder / SIZES_FILE).exists()
    assert folder_complete(folder, names, record=False) and not (folder / SIZES_FILE).exists()
    assert folder_complete(folder, names, "sig-a")  # complete: the sizes a kill could have cut off are recorded
    assert set(json.loads((folder / SIZES_FILE).read_text())) == set(names)

    (folder / "b.png").write_bytes(b"b")  # damaged after it was recorded: deleted, so it is made again
    assert not folder_complete(folder, names, "sig-a") and not (folder / "b.png").exists()
    record_sizes(folder, ["a.png"])

    reset_stale_folder(folder, "sig-a")  # same inputs: the files stay
    assert (folder / "a.png").is_file()
    reset_stale_folder(folder, "sig-b")  # other inputs: emptied, never mixed with new files
    assert folder.is_dir() and not any(folder.iterdir())
