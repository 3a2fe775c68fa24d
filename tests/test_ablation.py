"""Ablations as forked run folders (chapter 07): what is shared, what is retrained, what is reused,
and a runaway variant recorded as a result instead of stopping the sweep."""

from __future__ import annotations

import pytest
from conftest import copy_run

from esol_lib import ablation as ab
from esol_lib.runtime.config_io import apply_overrides, config_to_dict, load_config
from esol_lib.runtime.errors import ConfigError
from esol_lib.steps import expand


def test_variant_checks_its_name_stage_and_overrides():
    with pytest.raises(ConfigError, match="stage"):
        ab.Variant("x", "x", stage="baseline")
    with pytest.raises(ConfigError, match="name"):
        ab.Variant("../escape", "x")
    with pytest.raises(ConfigError, match="key=value"):
        ab.Variant("x", "x", ("expansion.alpha",))
    assert ab.Variant("x", "x", ("shrinkage.mu=0.5", "shrinkage.gamma=2")).shrinkage_only
    assert not ab.Variant("x", "x", ("shrinkage.mu=0.5", "expansion.beta=0.3")).shrinkage_only
    assert not ab.Variant("x", "x", ()).shrinkage_only


def test_every_predefined_ablation_is_a_valid_config_change():
    values = config_to_dict(load_config("cpu"))
    for v in ab.TABLE5 + ab.LOSS_COMBINATIONS + ab.AREA_READINGS + ab.APPENDIX:
        changed = apply_overrides(values, list(v.overrides))
        assert changed != values, f"{v.name} changes nothing"
        load_config("cpu", list(v.overrides))  # every key exists and has the right type
    assert [v.paper for v in ab.TABLE5] == [48.5, 49.1, 51.8, 50.1, 50.9, 52.8]  # the paper's Table 5


def test_sweep_values_survive_yaml_as_numbers():
    variants = ab.sweep("expansion.alpha", [1e-5, 0.01, 2], stage="expansion", symbol="α")
    assert [v.name for v in variants] == ["alpha-1e-05", "alpha-0.01", "alpha-2"]
    alphas = [load_config("cpu", list(v.overrides)).expansion.alpha for v in variants]
    assert alphas == [1e-5, 0.01, 2.0]
    assert variants[0].label == "α = 1e-05" and variants[0].stage == "expansion"


def test_check_claims_states_each_table5_row_and_a11_against_the_reference():
    main = {"baseline": {"miou": 0.40}, "expansion": {"miou": 0.45}, "shrinkage": {"miou": 0.50}}
    table5 = {v.name: {"miou": 0.48} for v in ab.TABLE5}
    table5["no-fl"] = {"miou": 0.52}  # one component that did not help here
    table5["no-dts"] = {"diverged": "step 3"}
    checks = ab.check_claims(main, table5, {"a11-no-deformable": {"miou": 0.47}})
    assert len(checks) == len(ab.TABLE5) + 1
    by_claim = {c.claim: c for c in checks}
    no_fl = by_claim["'Expansion w/o FL + Shrinkage' scores below full ESOL"]
    assert not no_fl.held and no_fl.detail == "52.00 vs 50.00"
    assert by_claim["'Expansion + Shrinkage w/o DT_s' scores below full ESOL"].held  # diverged: no better seeds
    a11 = checks[-1]
    assert not a11.held and a11.detail == "47.00 vs ESOL's expansion 45.00 and baseline 40.00"
    assert str(a11).startswith("[did not hold] loss maximisation without offsets does not expand (A.1.1)")
    assert str(checks[0]).startswith("[held] ")


def test_the_papers_numbers_agree_with_themselves():
    from esol_lib import paper

    for precision, recall, f1 in paper.TABLE6.values():  # Table 6's F1 is the harmonic mean of its P and R
        assert 2 * precision * recall / (precision + recall) == pytest.approx(f1, abs=0.15)
    assert paper.TABLE5_ESOL_SEED == paper.TABLE1["voc12"]["shrinkage"]["Seed"]
    assert {v.name: v.paper for v in ab.TABLE5} == paper.TABLE5
    assert paper.TABLE5_ESOL_SEED - paper.TABLE5_BASELINE_SEED == pytest.approx(5.2)  # §4.1's gain
    assert paper.for_dataset("coco14")[0] == "coco14" and paper.for_dataset("cpu")[0] == "voc12"
    assert {k: paper.TABLE1["voc12"]["shrinkage"][k] for k in ("val", "test")} == {"val": 69.9, "test": 69.3}


def test_metrics_table_marks_diverged_runs_and_quotes_the_paper():
    from esol_lib import tables

    rows = {"a": {"miou": 0.5, "precision": 0.25, "recall": 1.0, "f1": 0.4}, "b": {"diverged": "ran away"}}
    lines = tables.metrics_table(rows, extra=(), paper={"a": 48.4}).splitlines()
    assert lines[0] == "|  | mIoU | precision | recall | f1 | paper mIoU (VOC) |"
    assert lines[2] == "| a | 50.0 | 25.0 | 100.0 | 40.0 | 48.4 |"
    assert lines[3] == "| b | diverged | diverged | diverged | diverged | – |"
    assert tables.metrics_table({"a": rows["a"]}).splitlines()[0] == "|  | mIoU | precision | recall | f1 | threshold |"
    with_ap = tables.metrics_table({"a": {**rows["a"], "ap": 0.625}, "c": rows["a"]}, columns=("miou", "ap"), extra=())
    assert with_ap.splitlines()[0] == "|  | mIoU | AP |"
    assert with_ap.splitlines()[2:] == ["| a | 50.0 | 62.5 |", "| c | 50.0 | – |"]  # an older metrics file: no AP


@pytest.fixture(scope="module")
def main_run(smoke_stages, tmp_path_factory):
    """The session's finished smoke run, copied: ablation.max_steps off, these tests check forks of
    the main run itself."""
    return copy_run(smoke_stages, tmp_path_factory.mktemp("ablation") / "main", ["ablation.max_steps=null"])


def _log_stages(run) -> list[str]:
    import json

    if not run.log_path.is_file():
        return []
    return [json.loads(line)["stage"] for line in run.log_path.read_text().splitlines() if '"event": "done"' in line]


def test_the_main_runs_own_setting_trains_nothing(main_run, tmp_path):
    alpha = main_run.load_config().expansion.alpha
    (same,) = ab.sweep("expansion.alpha", [alpha], stage="expansion")
    result = ab.run_variant(main_run, same, tmp_path)
    assert result["same_as_main"] and result["run_dir"] == str(main_run.root)
    assert not (tmp_path / same.name).exists()
    cfg = main_run.load_config()
    assert main_run.metrics(f"expansion_{cfg.ablation.split or cfg.data.cam_split}").is_file()


def test_a_shrinkage_variant_shares_the_baseline_and_the_expansion_and_is_read_back(main_run, tmp_path):
    variant = ab.Variant("mu-half", "μ = 0.5", ("shrinkage.mu=0.5",))
    first = ab.run_variant(main_run, variant, tmp_path)
    fork = tmp_path / "mu-half"
    for stage in ("baseline", "expansion"):  # hard links (or copies) of the main run's checkpoints
        assert (fork / "checkpoints" / f"{stage}.pt").read_bytes() == main_run.checkpoint(stage).read_bytes()
    assert _log_stages(type(main_run)(fork)) == ["shrinkage"]  # only what the change touches is trained
    assert 0.0 <= first["miou"] <= 1.0 and first["variant"] == "mu-half" and first["run_dir"] == str(fork)
    stamp = (fork / "checkpoints" / "shrinkage.pt").stat().st_mtime_ns
    again = ab.run_variant(main_run, variant, tmp_path)
    assert again["miou"] == first["miou"]
    assert (fork / "checkpoints" / "shrinkage.pt").stat().st_mtime_ns == stamp


def test_an_expansion_variant_retrains_expansion_but_not_the_baseline(main_run, tmp_path):
    variant = ab.Variant("no-fl", "no clipping", ("expansion.clip=false",))
    result = ab.run_variant(main_run, variant, tmp_path)
    fork = type(main_run)(tmp_path / "no-fl")
    assert _log_stages(fork) == ["expansion", "shrinkage"]
    assert fork.load_config().expansion.clip is False and "miou" in result


def test_a_runaway_variant_is_a_result_not_a_crash(main_run, tmp_path):
    # A bound no offset can stay under: the divergence guard stops expansion after its first step.
    variant = ab.Variant("runaway", "runaway", ("expansion.max_offset=0.0", "expansion.alpha=100.0"), stage="expansion")
    result = ab.run_variant(main_run, variant, tmp_path)
    assert "diverged" in result and "max_offset" in result["diverged"]
    assert (tmp_path / "runaway" / "diverged.txt").is_file()
    assert not (tmp_path / "runaway" / "checkpoints" / "expansion.pt").exists()
    assert ab.run_variant(main_run, variant, tmp_path)["diverged"] == result["diverged"]  # not trained again


@pytest.mark.slow
def test_every_row_of_table5_and_the_appendix_trains_and_scores(main_run, tmp_path):
    results = ab.run_variants(main_run, ab.TABLE5 + ab.LOSS_COMBINATIONS + ab.APPENDIX, tmp_path, progress=False)
    assert set(results) == {v.name for v in ab.TABLE5 + ab.LOSS_COMBINATIONS + ab.APPENDIX}
    for name, m in results.items():
        assert "diverged" in m or 0.0 <= m["miou"] <= 1.0, name
    # Without DT_s the second conv's regular weights learn Eq. (6): with and without the area loss they differ.
    assert results["no-dts-area"]["miou"] != results["no-dts"]["miou"]


def test_a_fork_without_dts_can_run_expand_again(main_run, tmp_path):
    """`esol expand` on a 'w/o DT_s' fork finds the shared expansion done and loads it (not a key error)."""
    ab.run_variant(main_run, ab.Variant("no-dts", "no DT_s", ("shrinkage.offsets=false",)), tmp_path)
    result = expand(type(main_run)(tmp_path / "no-dts"), progress=False)
    assert result.steps == 0 and result.resumed_from == main_run.load_config().expansion.max_steps


def test_a_fork_with_another_beta_recomputes_the_shared_expansion_cams(main_run, tmp_path):
    """Clipping acts at inference too: sharing the expansion checkpoint must not share its CAMs."""
    from esol_lib.runtime.rundir import fork_run

    base = ab.score_stage(main_run, "expansion")
    fork = fork_run(main_run.root, tmp_path / "beta", ["expansion.beta=1.0"], share=("baseline", "expansion"))
    no_clip = ab.score_stage(fork, "expansion")
    assert no_clip["sweep"] != base["sweep"]


def test_ablation_max_steps_compares_every_variant_with_a_reference_of_that_length(main_run, tmp_path):
    """With ablation.max_steps, a 'reference' fork (the main config at that length) replaces the main
    run: the main setting is read from it, and a shrinkage variant shares its expansion."""
    from esol_lib.runtime.rundir import RunDir, fork_run

    short = fork_run(
        main_run.root, tmp_path / "short-main", ["ablation.max_steps=1"], share=("baseline", "expansion", "shrinkage")
    )
    root = tmp_path / "ablations"
    ref = ab.reference_run(short, root)
    assert ref.root == root / "reference"
    assert ref.load_config().expansion.max_steps == ref.load_config().shrinkage.max_steps == 1
    assert _log_stages(ref) == ["expansion", "shrinkage"]
    assert ref.checkpoint("baseline").read_bytes() == main_run.checkpoint("baseline").read_bytes()
    alpha = main_run.load_config().expansion.alpha
    (same,) = ab.sweep("expansion.alpha", [alpha], stage="expansion")
    assert ab.run_variant(short, same, root)["run_dir"] == str(ref.root)
    ab.run_variant(short, ab.Variant("mu-half", "μ = 0.5", ("shrinkage.mu=0.5",)), root)
    fork = RunDir(root / "mu-half")
    assert fork.checkpoint("expansion").read_bytes() == ref.checkpoint("expansion").read_bytes()
    assert fork.load_config().shrinkage.max_steps == 1
    with pytest.raises(ConfigError, match="ablation.max_steps"):
        ab.reference_run(fork_run(main_run.root, tmp_path / "bad", ["ablation.max_steps=0"]), tmp_path / "x")
