"""``esol pipeline``: every stage in order; an interrupted run resumes without redoing finished work."""

import pytest

from esol_lib.pipeline import REFINED_STAGES, pipeline_steps, run_pipeline
from esol_lib.runtime.config_io import load_config
from esol_lib.steps import refinement as refine_module
from esol_lib.steps import start_run


@pytest.mark.slow
def test_pipeline_resumes_after_an_interrupt_mid_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the smoke benchmark is generated under ./data
    run = start_run(tmp_path / "run", load_config("smoke"), data_root=None)

    # Interrupt the pseudo-mask step of the first refined stage after two images (Ctrl-C / a kill).
    real_pseudo_mask = refine_module.pseudo_mask
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real_pseudo_mask(*args, **kwargs)

    monkeypatch.setattr(refine_module, "pseudo_mask", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run, progress=False, crf=False, log=lambda _: None)
    monkeypatch.setattr(refine_module, "pseudo_mask", real_pseudo_mask)

    stage = REFINED_STAGES[0]
    written = sorted(run.pseudo_masks(stage).glob("*.png"))
    assert len(written) == 2  # what was finished before the interrupt is on disk
    kept = {p.name: p.stat().st_mtime_ns for p in written}
    checkpoint_mtime = run.checkpoint("baseline").stat().st_mtime_ns

    lines: list[str] = []
    run_pipeline(run, progress=False, crf=False, log=lines.append)

    # finished stages were skipped, the two masks were kept, the rest was made
    assert run.checkpoint("baseline").stat().st_mtime_ns == checkpoint_mtime
    assert {p.name: p.stat().st_mtime_ns for p in run.pseudo_masks(stage).glob("*.png") if p.name in kept} == kept
    cfg = run.load_config()
    for s in REFINED_STAGES:
        assert run.metrics(f"mask-{s}_{cfg.data.cam_split}").is_file()
        assert run.metrics(f"seg-{s}_{cfg.data.val_split}").is_file()
    assert any(line.startswith("[skip] eval-cam baseline") for line in lines)

    # a third run finds every output complete
    again: list[str] = []
    times = run_pipeline(run, progress=False, crf=False, log=again.append)
    assert all(t == 0.0 or name.startswith(("train", "make-cam", "refine")) for name, t in times.items())
    assert [s.name for s in pipeline_steps(run, crf=False)] == list(times)
