"""The `cpu` baseline recipe study: its rule (``benchmarks/cam_recipes.py``), its results file and the
table and sentences chapter 01 reads from it (``esol_lib.book.recipes``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from esol_lib.book import recipes
from esol_lib.runtime.config_io import load_config

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "book" / "results" / "cam_recipes.json"


def study_script():
    spec = importlib.util.spec_from_file_location("cam_recipes", ROOT / "benchmarks" / "cam_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs_of(cr, scores: dict[str, list[float | None]]) -> dict:
    """``runs[recipe][benchmark]`` as collect_one records them; None is a run a guard stopped."""
    out = {}
    for recipe, values in scores.items():
        out[recipe] = {}
        for bench, v in zip(cr.BENCHMARKS, values):
            stopped = v is None
            out[recipe][bench] = {
                "stopped": "dead" if stopped else None,
                "collapsed": stopped or v < cr.COLLAPSE_MIOU,
                **({} if stopped else {"val": {"miou": v}}),
            }
    return out


def test_the_rule_drops_every_recipe_that_collapses_once_and_breaks_ties_towards_irn():
    cr = study_script()
    assert list(cr.RECIPES) == ["irn", "irn-warmup", "irn-1x", "momentum-0.9"]  # the tie-break order
    assert len(cr.BENCHMARKS) == 7
    scores = {
        "irn": [60, 60, 60, 60, 60, 60, None],  # best mean but stopped by a guard once: out
        "irn-warmup": [50, 50, 50, 50, 50, 50, 49.8],
        "irn-1x": [50, 50, 50, 50, 50, 50, 52.0],  # 0.31 above irn-warmup's mean: a tie
        "momentum-0.9": [55, 55, 55, 55, 55, 55, 19.0],  # one score under 20: collapsed
    }
    decision = cr.decide(runs_of(cr, scores))
    assert decision["summary"]["irn"]["collapsed_on"] == ["large-sparse"]
    assert decision["summary"]["momentum-0.9"]["collapsed_on"] == ["large-sparse"]
    assert decision["adopted"] == "irn-warmup" and "irn-warmup, irn-1x" in decision["why"]

    scores["irn-1x"][-1] = 56.0  # now 0.89 above: no longer a tie
    assert cr.decide(runs_of(cr, scores))["adopted"] == "irn-1x"
    unfinished = runs_of(cr, scores)
    del unfinished["irn-1x"]["seed3"]
    assert cr.decide(unfinished)["adopted"] is None
    every_one_collapses = {r: [None] * 7 for r in cr.RECIPES}
    assert "every recipe collapsed" in cr.decide(runs_of(cr, every_one_collapses))["why"]


def test_the_table_and_the_verdict_are_read_from_the_study():
    cr = study_script()
    runs = runs_of(
        cr,
        {"irn": [40, 41, 42, 43, 44, 45, None], "irn-warmup": [50] * 7, "irn-1x": [30] * 7, "momentum-0.9": [48] * 7},
    )
    study = {
        "rule": cr.RULE,
        "recipes": {r: {"about": about, "set": sets} for r, (about, sets) in cr.RECIPES.items()},
        "benchmarks": {b: {"about": about, "set": sets} for b, (about, sets) in cr.BENCHMARKS.items()},
        "runs": runs,
        "decision": cr.decide(runs),
        "machine": {"cpu": "Some CPU", "torch_threads": 1},
        "commit": "abc1234",
    }
    table = recipes.recipe_table(study)
    assert "| **irn-warmup** (adopted) | 50.0 |" in table and "stopped (dead)" in table
    assert "| irn | 40.0 | 41.0 |" in table and "large-sparse |" in table.splitlines()[0]
    assert recipes.recipe_of(study, "irn-warmup") == {
        "lr": 0.1,
        "momentum": 0.0001,
        "new_layer_lr_mult": 10.0,
        "warmup_steps": 63.0,
    }
    voc = load_config("voc12").train_cam  # IRN's: lr 0.1, momentum 1e-4, 10x, no warm-up
    verdict = recipes.recipe_verdict(study, voc)
    assert "adopted **irn-warmup**" in verdict and "commit abc1234 on Some CPU, 1 thread(s)" in verdict
    assert verdict.endswith("differs from it: warmup_steps 0 (the study's 63).")
    warm = load_config("voc12", ["train_cam.warmup_steps=63"]).train_cam
    assert recipes.recipe_verdict(study, warm).endswith("trains with it.")


def test_the_committed_study_is_complete_and_the_cpu_profile_trains_with_what_it_adopted():
    """The file chapter 01 renders: every run of the rule's grid is in it, and the rule's outcome is the
    cpu profile's train_cam (a default changed without the study would leave the chapter wrong)."""
    assert STUDY.is_file(), "book/results/cam_recipes.json is missing: run python benchmarks/cam_recipes.py"
    cr = study_script()
    study = json.loads(STUDY.read_text(encoding="utf-8"))
    assert set(study["recipes"]) == set(cr.RECIPES) and set(study["benchmarks"]) == set(cr.BENCHMARKS)
    assert study["rule"] == cr.RULE and study["decision"] == cr.decide(study["runs"])
    adopted = study["decision"]["adopted"]
    assert adopted is not None, study["decision"]["why"]
    assert recipes.recipe_verdict(study, load_config("cpu").train_cam).endswith("trains with it.")


def test_the_spread_sentences_put_the_machine_beside_the_generator_seeds():
    cr = study_script()
    runs = runs_of(cr, {r: [40, 44, 48, 42, 46, 50, 52] for r in cr.RECIPES})
    study = {
        "decision": cr.decide(runs),
        "runs": runs,
        "thread_runs": {"2": {"irn": {"seed1": {"val": {"miou": 44.5}}}}},
    }
    readings = {"seeds": {"1": {"as-built": {"scores": {"val": {"baseline": {"miou": 0.4321}}}}}}}
    first, threads, machine = recipes.spread_sentences(study, readings)
    assert first.startswith("Over 5 generator seeds the adopted recipe's val seeds mIoU is 44.0 ± 2.8")
    assert (
        threads
        == "The same run with 2 threads instead of 1 on one machine: irn on seed1: 44.00 with 1 thread, 44.50 with 2."
    )
    assert "seed 1 43.21 then, 44.00 here" in machine


def test_the_spread_sentences_read_chapter_08s_seeds_as_another_machine():
    cr = study_script()
    runs = runs_of(cr, {r: [40, 44, 48, 42, 46, 50, 52] for r in cr.RECIPES})
    study = {"decision": cr.decide(runs), "runs": runs, "machine": {"cpu": "A", "isa": ["avx2"], "torch_threads": 1}}
    adopted = study["decision"]["adopted"]
    here = runs[adopted]["seed0"]["val"]["miou"]
    machine = {"cpu": "B", "isa": ["avx2", "avx512f"], "torch_threads": 1}
    seeds = {"seeds": {"0": {"seeds_val": {"baseline": {"miou": here + 0.25}}, "machine": machine}}}
    last = recipes.spread_sentences(study, None, seeds)[-1]
    assert "on B (avx2, avx512f; 1 thread) where this study ran on A (avx2; 1 thread)" in last
    assert f"seed 0 {here:.2f} here, {here + 0.25:.2f} there" in last and "at most 0.25 apart" in last
