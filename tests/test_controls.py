"""The positive controls as stages (chapter 10): the stage table, the producers, the steps and the rule.

The methods themselves are checked against their defining properties in ``test_recam``, ``test_advcam``
and ``test_lpcam``; here: that each control is one entry everywhere a stage is listed, that its CAMs go
through make-cam, eval-cam and refine like the baseline's, that they are redone when the baseline they
read changes, and that the book's rule says what the numbers say.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_run

from esol_lib.runtime.errors import ConfigError, StageError
from esol_lib.runtime.stages import CONTROL_STAGES, METHOD_STAGES, STAGE_TABLE, STAGES, stage_spec

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ the table


def test_every_stage_list_is_derived_from_the_table():
    from esol_lib import charts
    from esol_lib.cli import STAGE_CHOICES
    from esol_lib.pipeline import REFINED_STAGES, TRAINERS
    from esol_lib.runtime import rundir
    from esol_lib.steps import PRODUCERS
    from esol_lib.steps._shared import STAGE_COMMAND, UPSTREAM

    assert STAGES == ("baseline", "expansion", "shrinkage", "recam", "advcam", "lpcam")
    assert METHOD_STAGES == ("baseline", "expansion", "shrinkage") and CONTROL_STAGES == ("recam", "advcam", "lpcam")
    assert STAGE_CHOICES == STAGES and tuple(PRODUCERS) == STAGES
    assert tuple(TRAINERS) == METHOD_STAGES and REFINED_STAGES == ("baseline", "shrinkage")
    assert set(charts.STAGE_NAMES) == set(charts.STAGE_COLORS) == set(STAGES)
    assert len(set(charts.STAGE_COLORS.values())) == len(STAGES)  # every stage its own colour
    assert UPSTREAM == {"baseline": None, "expansion": "baseline", "shrinkage": "expansion"} | dict.fromkeys(
        CONTROL_STAGES, "baseline"
    )
    assert STAGE_COMMAND["recam"] == "esol train-recam" and "make-cam" in STAGE_COMMAND["advcam"]
    assert rundir._STAGE_SECTIONS["shrinkage"] == {"expansion", "shrinkage"}
    assert rundir._STAGE_SECTIONS["advcam"] == {"advcam"}


def test_no_stage_list_is_written_anywhere_else():
    """A tuple, list or set literal naming the method's three stages, or two or more controls, is a
    hand-written stage list: only the table may hold one (and the producers' and trainers' registries, which
    tests keep equal to it). Tables of data keyed by stage (the paper's numbers) and pairs a chapter compares
    (baseline vs ESOL) are not lists of the stages."""
    allowed = {"esol_lib/runtime/stages.py", "esol_lib/steps/producers.py", "esol_lib/pipeline.py"}
    found = []
    for path in sorted((ROOT / "esol_lib").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                continue
            listed = {n.value for n in node.elts if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            if set(METHOD_STAGES) <= listed or len(listed & set(CONTROL_STAGES)) >= 2:
                found.append(f"{rel}:{node.lineno} {sorted(listed)}")
    assert not found, "stage lists written outside runtime/stages.py: " + "; ".join(found)


def test_an_unknown_stage_gets_one_line_naming_the_choices(smoke_stages):
    from esol_lib.steps import make_cam

    with pytest.raises(StageError, match="unknown stage 'gradcam'; use one of baseline, .*lpcam"):
        stage_spec("gradcam")
    with pytest.raises(StageError, match="unknown stage"):
        make_cam(smoke_stages, "gradcam")


def test_control_settings_are_range_checked():
    from esol_lib.runtime.config_io import load_config

    for bad, key in (
        ("advcam.reg_reduction=mean", "advcam.reg_reduction"),
        ("advcam.steps=0", "advcam.steps"),
        ("advcam.max_images=0", "advcam.max_images"),
        ("recam.lr=0", "recam.lr"),
        ("lpcam.ctx_range=[0.9,0.05]", "lpcam.ctx_range"),
        ("lpcam.cam_threshold=1.5", "lpcam.cam_threshold"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config("smoke", [bad])


def test_profiles_carry_the_published_settings():
    from esol_lib.runtime.config_io import load_config

    voc, coco, cpu = (load_config(p) for p in ("voc12", "coco14", "cpu"))
    assert (voc.recam.lr, voc.recam.epochs, voc.recam.loss_weight, voc.recam.batch_size) == (5e-4, 4, 1.0, 16)
    assert (voc.advcam.steps, voc.advcam.step_size, voc.advcam.lam, voc.advcam.mask_threshold) == (27, 0.08, 7.0, 0.5)
    assert voc.advcam.max_images is None and voc.advcam.reg_reduction == "sum"
    assert (voc.lpcam.num_clusters, voc.lpcam.cam_threshold, voc.lpcam.fg_min) == (12, 0.1, 0.9)
    assert (coco.recam.loss_weight, coco.lpcam.num_clusters, coco.lpcam.fallback_best) == (0.1, 20, True)
    # cpu keeps every published value; only AdvCAM's images are limited, for its cost
    assert (cpu.recam.lr, cpu.recam.epochs, cpu.advcam.steps, cpu.advcam.lam) == (5e-4, 4, 27, 7.0)
    assert cpu.advcam.max_images == 100


# ------------------------------------------------------------------------------------ producers


def test_compute_cams_leaves_autograd_on_for_a_producer_that_needs_it(smoke_stages, tmp_path):
    from esol_lib.method.cam import MultiScaleCams, compute_cams
    from esol_lib.steps._shared import split_dataset

    ds = split_dataset(smoke_stages.load_config(), "train").first(3)

    seen = []

    class Probe:
        needs_grad = True

        def __call__(self, images, labels):
            seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            return torch.ones(images.shape[0], labels.shape[1], *images.shape[2:])

    compute_cams(Probe(), ds, tmp_path / "p", mean=[0, 0, 0], std=[1, 1, 1], scales=[1.0], progress=False)
    assert seen and all(state == (False, True) for state in seen)
    plain = MultiScaleCams(lambda x: x[:, :2], [1.0])
    assert plain.needs_grad is False


def test_advcam_producer_fills_the_labelled_classes_with_advcam_maps():
    from esol_lib.method.advcam import AdvCamProducer, advcam_maps
    from esol_lib.models import build_classifier
    from esol_lib.runtime.config_io import load_config

    torch.manual_seed(0)
    model = build_classifier(load_config("smoke").model, 3).eval()
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    out = AdvCamProducer(model, [1.0, 0.5], steps=3)(images, labels)
    want = advcam_maps(model, images[:1], [0, 2], scales=[1.0, 0.5], steps=3)
    assert torch.allclose(out[0, [0, 2]], want) and out[0, 1].abs().sum() == 0
    assert out[1].abs().sum() == 0  # no labelled class: nothing climbed


def test_first_n_ids_are_a_named_view_of_the_split(smoke_stages):
    from esol_lib.steps._shared import split_dataset

    ds = split_dataset(smoke_stages.load_config(), "train")
    view = ds.first(5)
    assert view.ids == ds.ids[:5] and view.split == "train-first5" and len(ds) == 12
    assert view[4]["id"] == ds[4]["id"] and np.array_equal(view.labels(), ds.labels()[:5])
    with pytest.raises(ValueError, match="positive integer"):
        ds.first(0)


# ------------------------------------------------------------------------------------ the steps


@pytest.mark.slow
def test_each_control_makes_scores_and_refines_its_cams(smoke_stages, tmp_path):
    from esol_lib.steps import eval_cam, make_cam, train_recam
    from esol_lib.steps.refinement import refine

    run = copy_run(smoke_stages, tmp_path / "run", ["advcam.max_images=5"])
    train_recam(run, progress=False)
    for stage in CONTROL_STAGES:
        make_cam(run, stage, "train", progress=False)
        m = eval_cam(run, stage, "train", progress=False)
        assert np.isfinite(m["miou"]) and 0 < m["threshold"] < 1
    assert len(list(run.cams("advcam").glob("*.npz"))) == 5  # the first 5 ids only
    assert run.metrics("advcam_train-first5").is_file() and not run.metrics("advcam_train").exists()
    assert run.checkpoint("lpcam").is_file() and run.checkpoint("recam").is_file()
    refine(run, "recam", progress=False)
    assert run.metrics("mask-recam_train").is_file()
    from esol_lib.steps import eval_seg, train_seg

    train_seg(run, "recam", progress=False)
    assert np.isfinite(eval_seg(run, "recam", progress=False)["miou"]) and run.metrics("seg-recam_val").is_file()
    with pytest.raises(StageError, match=r"advcam\.max_images is 5.*--set advcam\.max_images=null"):
        refine(run, "advcam", progress=False)


@pytest.mark.slow
def test_a_retrained_baseline_makes_the_controls_cams_stale(smoke_stages, tmp_path):
    """AdvCAM has no checkpoint of its own and LPCAM's prototypes come from the baseline: the CAM folders'
    signatures cover the baseline, so new baseline weights redo them (and refuse the old ReCAM model)."""
    from esol_lib.runtime.freshness import folder_signature
    from esol_lib.steps import make_cam, train_recam

    run = copy_run(smoke_stages, tmp_path / "run", ["advcam.max_images=2"])
    train_recam(run, progress=False)
    before = {}
    for stage in CONTROL_STAGES:
        make_cam(run, stage, "train", progress=False)
        before[stage] = folder_signature(run.cams(stage))
    state = torch.load(run.checkpoint("baseline"), weights_only=False)
    state["model"]["classifier.weight"] = state["model"]["classifier.weight"] * 1.5
    torch.save(state, run.checkpoint("baseline"))
    for stage in ("advcam", "lpcam"):
        make_cam(run, stage, "train", progress=False)
        assert folder_signature(run.cams(stage)) != before[stage], stage
    with pytest.raises(StageError, match="trained from other baseline"):
        make_cam(run, "recam", "train", progress=False)


@pytest.mark.slow
def test_a_control_setting_changed_on_a_run_supersedes_that_control_only(smoke_stages, tmp_path):
    from esol_lib.steps import make_cam, open_run

    run = copy_run(smoke_stages, tmp_path / "run", ["advcam.max_images=2"])
    make_cam(run, "advcam", "train", progress=False)
    make_cam(run, "lpcam", "train", progress=False)
    open_run(run.root, ["advcam.steps=3"])
    assert not run.cams("advcam").exists() and run.cams("lpcam").is_dir() and run.checkpoint("baseline").is_file()


# ------------------------------------------------------------------------------------ the rule


def _study(gains: dict[str, list[float]]) -> dict:
    seeds = {}
    for i in range(3):
        s = str(i)
        seeds[s] = {"seeds_train": {"baseline": {"miou": 40.0}}, "advcam_subset_train": {"baseline": {"miou": 30.0}}}
        for control, g in gains.items():
            base = 30.0 if control == "advcam" else 40.0
            if i < len(g):  # a control not run on this seed has no entry
                seeds[s]["seeds_train"][control] = {"miou": base + g[i]}
    return {"seeds": seeds}


def test_the_rule_needs_a_gain_on_every_seed_and_half_the_published_one():
    from esol_lib.book.controls import PUBLISHED, controls_sentences, controls_summary, rule_outcome

    assert PUBLISHED["recam"].seed_gain == 6.0 and PUBLISHED["advcam"].seed_gain == 6.8
    out = rule_outcome(_study({"recam": [4.0, 3.5, 2.6], "advcam": [9.0, 9.0, -0.1], "lpcam": [1.0, 1.0, 1.0]}))
    assert out["controls"]["recam"]["passes"] and out["controls"]["recam"]["need"] == 3.0
    assert not out["controls"]["advcam"]["passes"] and not out["controls"]["advcam"]["every_seed"]  # lost on seed 2
    assert "(it lost on 1 of 3 seeds)" in " ".join(
        controls_sentences({"seeds": _study({"advcam": [9.0, 9.0, -0.1]})["seeds"]})
    )
    assert out["controls"]["advcam"]["need"] == 3.4 and not out["controls"]["lpcam"]["passes"]
    assert out["can_see"]
    study = _study({"recam": [1.0, 1.0, 1.0], "advcam": [3.3, 3.3, 3.3], "lpcam": [5.0, 5.0]})
    out = rule_outcome(study)
    assert not out["can_see"] and not out["controls"]["lpcam"]["measured"]
    study["summary"] = controls_summary(study["seeds"])
    assert study["summary"]["advcam"]["seeds_train"]["mean"] == pytest.approx(3.3)  # read on AdvCAM's own ids
    text = " ".join(controls_sentences(study))
    assert "AdvCAM changed train seeds mIoU by +3.3, +3.3, +3.3" in text and "(too small)" in text
    assert "the benchmark itself is the suspect" in text


def test_the_committed_controls_file_renders_and_the_readme_says_what_it_holds():
    from esol_lib.book.controls import (
        controls_sentences,
        controls_table,
        diagnosis_sentences,
        load_controls,
        readme_summary,
    )

    path = ROOT / "book" / "results" / "controls.json"
    assert path.is_file(), f"{path} is missing: run python benchmarks/controls.py (chapter 10 renders it)"
    study = load_controls(path)
    assert set(study["summary"]) == set(CONTROL_STAGES) and set(study["seeds"]) == {"0", "1", "2"}
    assert controls_table(study).count("\n") == 1 + len(CONTROL_STAGES)
    assert controls_sentences(study)[-1].startswith("So ") and diagnosis_sentences(study)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- controls:", 1)[1].split("-->", 1)[1].split("<!-- /controls -->", 1)[0].strip()
    assert block == readme_summary(study), "README's controls paragraph is stale: paste readme_summary's output"


def test_stage_table_entries_are_complete():
    for s in STAGE_TABLE:
        assert s.label and s.short and s.color.startswith("#") and s.role in ("method", "control")
        assert s.upstream is None or s.upstream in STAGES
        assert s.trained == (s.command is not None)


@pytest.mark.slow
def test_a_killed_advcam_pass_resumes_to_the_bytes_of_an_uninterrupted_one(smoke_stages, tmp_path, monkeypatch):
    """AdvCAM's CAMs are written image by image like every stage's: a pass stopped after 3 images resumes
    from the 4th, and the folder ends as an uninterrupted pass leaves it."""
    from esol_lib.method import advcam
    from esol_lib.steps import make_cam

    clean = copy_run(smoke_stages, tmp_path / "clean", ["advcam.max_images=6", "feature_cache_mb=0"])
    make_cam(clean, "advcam", "train", progress=False)
    killed = copy_run(smoke_stages, tmp_path / "killed", ["advcam.max_images=6", "feature_cache_mb=0"])
    calls = {"n": 0}
    original = advcam.AdvCamProducer.__call__

    def dies_after_three(self, images, labels):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return original(self, images, labels)

    monkeypatch.setattr(advcam.AdvCamProducer, "__call__", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        make_cam(killed, "advcam", "train", progress=False)
    assert len(list(killed.cams("advcam").glob("*.npz"))) == 3
    monkeypatch.setattr(advcam.AdvCamProducer, "__call__", original)
    make_cam(killed, "advcam", "train", progress=False)
    names = sorted(p.name for p in clean.cams("advcam").glob("*.npz"))
    assert names == sorted(p.name for p in killed.cams("advcam").glob("*.npz")) and len(names) == 6
    for name in names:
        assert (clean.cams("advcam") / name).read_bytes() == (killed.cams("advcam") / name).read_bytes(), name


def test_the_chapter_helpers_say_what_the_numbers_say():
    """The sentences and the figure chapter 10 computes, on made-up numbers."""
    import matplotlib

    matplotlib.use("Agg")
    from esol_lib.book import controls

    live = controls.live_control_sentence("lpcam", {"miou": 0.40}, {"miou": 0.45}, "train")
    assert live == (
        "On this run's train split LPCAM scores 45.0 mIoU against the baseline's 40.0 (+5.0); on VOC 2012 train "
        "its paper reports 48.8 → 54.9 (+6.1)."
    )
    row = {"image": "a", "class": "dog", "score_first": 0.0, "score_last": 1.0, "regulariser_last": 0.1}
    record = {
        "rows": [
            {**row, "lam": 7.0, "area05": [0.1, 0.1], "area015": [0.3, 0.32], "moved": 0.2},
            {**row, "lam": 0.0, "area05": [0.1, 0.2], "area015": [0.3, 0.5], "moved": 1.0},
        ]
    }
    assert controls.climb_table(record).count("\n") == 3
    sentence = controls.climb_sentence(record)
    assert "at λ = 7 an image's largest change was 0.20 (mean) and its map's area over 0.15 grew by +0.020" in sentence
    assert "at λ = 0 an image's largest change was 1.00" in sentence and "+0.200" in sentence
    assert controls.required_gain("advcam") == 3.4 and controls.required_gain("recam") == 3.0
    study = _study({"recam": [4.0, 3.5, 2.6], "advcam": [1.0, 1.0, 1.0], "lpcam": [-1.0, -1.0, -1.0]})
    for s in study["seeds"].values():
        s["seeds_train"]["shrinkage"] = {"miou": 38.0}
    study["summary"] = controls.controls_summary(study["seeds"])
    assert controls.esol_gains(study) == [-2.0, -2.0, -2.0]
    assert "where ReCAM gained by the rule" in controls.esol_verdict(study)
    fig = controls.gains_figure(study)
    assert len(fig.axes[0].patches) == 4 * 3  # three controls and ESOL, a bar per seed


def test_a_results_file_says_whether_it_was_measured_under_the_profile_of_today():
    from esol_lib.book.results import measured_under_sentence
    from esol_lib.runtime.config_io import load_config, settings_digest

    today = settings_digest(load_config("cpu"))
    assert "predate the record" in measured_under_sentence({})
    same = {"measured_under": {"settings_digest": today, "commit": "abc"}}
    assert measured_under_sentence(same).startswith("Measured under the `cpu` profile's settings as they resolve today")
    assert "a default changed since" in measured_under_sentence({"measured_under": {"settings_digest": "x"}})


def test_run_machine_reads_a_stages_done_line_and_code_commit_names_the_checkout(tmp_path):
    from esol_lib.runtime.machine import code_commit, run_machine

    records = [
        {"stage": "baseline", "event": "done", "machine": {"cpu": "old"}},
        {"stage": "recam", "event": "done", "machine": {"cpu": "B"}},
        {"stage": "baseline", "event": "done", "machine": {"cpu": "A"}},
    ]
    assert run_machine(records) == {"cpu": "A"} and run_machine(records, "recam") == {"cpu": "B"}
    assert run_machine(records, "lpcam") is None
    assert code_commit(tmp_path) == "unknown"  # not a checkout
    head = code_commit(ROOT)
    assert head == "unknown" or len(head.split("+")[0]) == 12
