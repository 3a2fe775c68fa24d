"""The seed-results table of chapter 08: per-seed gains, mean ± std, how often a claim held."""

import json
from pathlib import Path

from esol_lib.book.results import (
    CLAIMS,
    Claim,
    claim_gains,
    claims_table,
    headline_table,
    load_seed_results,
    seed_report,
    stage_table,
)

ROOT = Path(__file__).resolve().parents[1]


def _seed(base, exp, shr, mask_b, mask_s):
    st = lambda m: {"miou": m, "precision": m + 10, "recall": m + 5, "f1": m + 1, "ap": m + 2}  # noqa: E731
    return {
        "seeds_train": {"baseline": st(base), "expansion": st(exp), "shrinkage": st(shr)},
        "masks_train": {"baseline": {"miou": mask_b}, "shrinkage": {"miou": mask_s}},
        "seg_val": {"baseline": None, "shrinkage": None},
    }


RESULTS = {"seeds": {"0": _seed(50, 45, 54, 60, 63), "1": _seed(48, 47, 47, 58, 57)}}


def test_gains_per_seed_and_self_comparison_against_seeds():
    seeds = CLAIMS[0]
    assert seeds.group == "seeds_train" and claim_gains(RESULTS, seeds) == [4, -1]
    mask_gain = next(c for c in CLAIMS if c.label.startswith("baseline: IRN"))
    assert claim_gains(RESULTS, mask_gain) == [10, 10]  # masks - the same stage's seeds


def test_table_reports_mean_std_and_count_and_not_run():
    table = claims_table(RESULTS)
    assert "| ESOL seeds − baseline seeds, mIoU (train) | +5.2 | +1.5 ± 2.5 | 1 of 2 |" in table
    assert "| ESOL − baseline, DeepLab-v2, mIoU (val) | +6.4 | not run | – |" in table
    one = claims_table(
        {"seeds": {"0": RESULTS["seeds"]["0"]}}, (Claim("x", "seeds_train", "miou", "shrinkage", "baseline", None),)
    )
    assert "| x | – | +4.0 | 1 of 1 |" in one


def test_stage_table():
    table = stage_table(RESULTS)
    assert "| baseline | 49.0 ± 1.0 | 59.0 ± 1.0 |" in table


def test_offsets_table():
    from esol_lib.book.results import offsets_table

    table = offsets_table({"seeds": {"0": {"offsets": {"expansion": 0.07, "shrinkage": 3.8}}, "1": {}}})
    assert "| 0 | 0.07 | 3.80 |" in table and "| 1 | – | – |" in table


def test_table5_table_reports_each_variants_drop_from_the_reference_and_how_often_it_held():
    from esol_lib.book.ablation import TABLE5
    from esol_lib.book.results import table5_table

    first, second = TABLE5[0], TABLE5[1]
    seeds = {
        "0": {
            "table5_val": {
                "_meta": {"split": "val", "max_steps": 156},
                "reference": {"miou": 42.0},
                first.name: {"miou": 40.0},
                second.name: {"miou": 43.0},
            }
        },
        "1": {"table5_val": {"reference": {"miou": 44.0}, first.name: {"miou": 41.0}}},
        "2": {},
    }  # a seed without Table 5 is left out
    table = table5_table({"seeds": seeds})
    assert "trained for 156 steps per ESOL stage; 2 seed(s)" in table
    assert "| Expansion + Shrinkage (reference) | 53.6 | – | 43.0 ± 1.0 | – | – |" in table
    assert (
        f"| {first.label} | {first.paper:.1f} | {first.paper - 53.6:+.1f} | 40.5 ± 0.5 | -2.5 ± 0.5 | 2 of 2 |" in table
    )
    assert f"| {second.label} | {second.paper:.1f} | {second.paper - 53.6:+.1f} | 43.0 | +1.0 | 0 of 1 |" in table
    assert "not run" in table5_table({"seeds": {"0": {}}})


def test_headline_table_sets_the_papers_table1_beside_the_seed_means():
    table = headline_table(RESULTS).splitlines()
    assert table[0] == "| | paper, PASCAL VOC: baseline → ESOL | this benchmark, 2 generator seeds: baseline → ESOL |"
    assert table[2] == "| CAM seeds, mIoU (train) | 48.8 → 53.6 | 49.0 ± 1.0 → 50.5 ± 3.5 |"
    assert table[4] == "| IRN pseudo masks, mIoU (train) | 66.3 → 68.7 | 59.0 ± 1.0 → 60.0 ± 3.0 |"
    assert table[5] == "| DeepLab-v2, mIoU (val) | 63.5 → 69.9 | not run → not run |"


def test_the_readme_results_are_the_committed_seed_results():
    """The README's table is headline_table of book/results/emoji_seeds.json, not numbers typed by hand."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- results:", 1)[1].split("-->", 1)[1].split("<!-- /results -->", 1)[0].strip()
    expected = headline_table(load_seed_results(ROOT / "book" / "results" / "emoji_seeds.json"))
    assert block == expected, "README's results table is stale: paste esol_lib.book.results.headline_table's output"


def test_seed_report_puts_the_claims_first_and_a_table_per_group_with_numbers():
    report = seed_report(RESULTS)
    assert report.startswith(claims_table(RESULTS))
    assert "**seeds (train)**, mean ± std over the seeds (%)\n\n" + stage_table(RESULTS, "seeds_train") in report
    assert "**IRN pseudo masks (train)**" in report
    assert "**seeds (val)**" not in report and "**seeds + CRF (train)**" not in report  # no numbers: no table


def test_the_rendered_results_were_measured_under_the_profiles_as_they_resolve_today():
    """A results file the README or a chapter renders records the settings digest it was measured under
    (``measured_under.settings_digest``, :func:`esol_lib.runtime.config_io.settings_digest` of its runs'
    configs). When a default changes, the profile's digest changes and this fails until the file is measured
    again: the front door cannot stay on old numbers. The controls' sections count only for ``controls.json``."""
    from esol_lib.runtime.config_io import load_config, settings_digest
    from esol_lib.runtime.stages import CONTROL_STAGES

    results = ROOT / "book" / "results"
    for name, profile, exclude in (
        ("emoji_seeds.json", "cpu", CONTROL_STAGES),
        ("controls.json", "cpu", ()),
    ):
        path = results / name
        assert path.is_file(), f"{path} is missing: the README or a chapter renders it"
        recorded = json.loads(path.read_text(encoding="utf-8")).get("measured_under", {}).get("settings_digest")
        today = settings_digest(load_config(profile), exclude_sections=exclude)
        assert recorded == today, (
            f"{name} was measured under other {profile!r} settings (digest {recorded}) than the profile resolves "
            f"to today ({today}): measure it again (benchmarks/{'emoji_seeds' if 'seeds' in name else 'controls'}.py)"
        )


def test_the_settings_digest_ignores_where_and_which_seed_but_not_a_setting():
    from esol_lib.runtime.config_io import load_config, settings_digest

    cpu = settings_digest(load_config("cpu"))
    assert settings_digest(load_config("cpu", ["data.emoji.seed=2", "profile=cpu-seed2", "data.root=/x"])) == cpu
    assert settings_digest(load_config("cpu", ["train_cam.warmup_steps=0"])) != cpu
    assert settings_digest(load_config("cpu", ["advcam.steps=3"])) != cpu
    assert settings_digest(load_config("cpu", ["advcam.steps=3"]), exclude_sections=("advcam",)) == settings_digest(
        load_config("cpu"), exclude_sections=("advcam",)
    )
