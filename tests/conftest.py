"""Fixtures shared by the test modules.

``smoke_stages`` is one smoke run trained through the baseline, expansion and shrinkage (seconds on
12 images of 32 px), made once per test session and shared read-only. A test that writes to a run
works on a copy (:func:`copy_run`), so no test sees another's outputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from esol_lib.runtime.config_io import load_config
from esol_lib.runtime.rundir import RunDir
from esol_lib.steps import expand, open_run, shrink, start_run, train_cam


def copy_run(run: RunDir, dest: Path, overrides: Sequence[str] = ()) -> RunDir:
    """A copy of ``run`` at ``dest`` (its dataset stays where it is), with ``overrides`` applied to its config."""
    shutil.copytree(run.root, dest, ignore=shutil.ignore_patterns(".lock", ".lock.holder"))
    if overrides:
        open_run(dest, overrides)
    return RunDir(Path(dest))


@pytest.fixture(scope="session")
def smoke_stages(tmp_path_factory) -> RunDir:
    """A smoke run with its three stages trained; read it, or copy it (:func:`copy_run`) to write."""
    tmp = tmp_path_factory.mktemp("smoke-stages")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the smoke benchmark is generated under ./data
        run = start_run(tmp / "run", load_config("smoke"), data_root=None)
        train_cam(run, progress=False)
        expand(run, progress=False)
        shrink(run, progress=False)
    return run
