"""Per-image CPU work on several processes gives what a plain loop gives, in the same order."""

import os

import numpy as np
import pytest
import torch

from esol_lib.data.synth import SynthSpec, generate_benchmark
from esol_lib.data.voc import VOCSegmentation
from esol_lib.method.cam import compute_cams, evaluate_cams
from esol_lib.method.crf import crf_from_labels
from esol_lib.runtime.errors import StageError
from esol_lib.runtime.parallel import cpu_workers, map_ordered
from tests.test_cam import _Subset


def _square_and_pid(x):
    return x * x, os.getpid()


def test_results_come_back_in_input_order_from_other_processes():
    out = list(map_ordered(_square_and_pid, list(range(23)), workers=2, chunksize=3))
    assert [v for v, _ in out] == [x * x for x in range(23)]
    assert any(pid != os.getpid() for _, pid in out)  # the work really left this process
    serial = list(map_ordered(_square_and_pid, list(range(5)), workers=1))
    assert {pid for _, pid in serial} == {os.getpid()}


def test_a_closure_runs_without_pickling_and_errors_reach_the_caller():
    offset = np.arange(3)  # captured, never pickled: the workers are forked with it
    assert list(map_ordered(lambda i: int((offset + i).sum()), range(4), workers=2)) == [3, 6, 9, 12]

    def fails(i):
        if i == 2:
            raise ValueError(f"bad item {i}")
        return i

    with pytest.raises(ValueError, match="bad item 2"):
        list(map_ordered(fails, range(4), workers=2))
    assert list(map_ordered(fails, [0, 1], workers=2)) == [0, 1]  # a failed pool leaves none behind


def test_cpu_workers_splits_the_cores_among_ranks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = cpu_workers()
    monkeypatch.setenv("WORLD_SIZE", str(alone * 4))
    assert alone >= 1 and cpu_workers() == 1


def test_crf_sweep_on_two_workers_equals_the_serial_one(tmp_path):
    root = generate_benchmark(tmp_path / "d", SynthSpec(train=6, val=1, size=32, num_classes=3), progress=False)
    ds = VOCSegmentation(root, "train")
    gen = torch.Generator().manual_seed(0)

    def noisy_oracle(x):  # the true masks, blurred by noise: a CRF has something to change
        m = torch.from_numpy(noisy_oracle.mask.astype(np.int64))
        maps = torch.stack([(m == k).float() for k in range(1, 4)])[None]
        return (maps + 0.6 * torch.rand(maps.shape, generator=gen)).expand(x.shape[0], -1, -1, -1)

    out = tmp_path / "cams"
    for i in range(len(ds)):
        noisy_oracle.mask = ds[i]["mask"]
        compute_cams(
            noisy_oracle,
            _Subset(ds, i),
            out,
            mean=[0.5] * 3,
            std=[0.5] * 3,
            scales=[1.0],
            flip=False,
            signature="s",
            progress=False,
        )

    def crf(image, labellings, n):
        return [crf_from_labels(image, labels, n) for labels in labellings]

    serial = evaluate_cams(out, ds, [0.3, 0.5, 0.7], crf=crf, progress=False, workers=1)
    pooled = evaluate_cams(out, ds, [0.3, 0.5, 0.7], crf=crf, progress=False, workers=2)
    assert serial == pooled
    plain = evaluate_cams(out, ds, [0.3, 0.5, 0.7], progress=False)
    assert plain["sweep"] != serial["sweep"]  # the CRF did change the seeds


def _dies_on_three(i):
    if i == 3:
        os.kill(os.getpid(), 9)  # what the OOM killer does to a worker
    return i


def test_a_killed_worker_is_one_clear_error_not_a_hang():
    with pytest.raises(StageError, match="worker process died"):
        list(map_ordered(_dies_on_three, list(range(8)), workers=2, chunksize=1))
    assert list(map_ordered(_square_and_pid, [2, 3], workers=2))[0][0] == 4  # the next pool works


def test_workers_die_with_a_killed_parent(tmp_path):
    """A parent killed with SIGKILL must not leave workers behind, holding its files (the run lock)."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time
    from pathlib import Path

    pids = tmp_path / "pids"
    code = textwrap.dedent(f"""
        import os, time
        from esol_lib.runtime.parallel import map_ordered
        def slow(i):
            open({str(pids)!r}, "a").write(f"{{os.getpid()}}\\n")
            time.sleep(60)
        list(map_ordered(slow, list(range(4)), workers=2, chunksize=1))
    """)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    deadline = time.monotonic() + 30
    while len(pids.read_text().split()) < 2 if pids.exists() else True:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    workers = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while any(
        Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2] for p in workers
    ):
        assert time.monotonic() < deadline, f"workers {workers} outlived their parent"
        time.sleep(0.05)
