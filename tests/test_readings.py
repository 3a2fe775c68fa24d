"""The readings of the paper as settings: clipping's placement and gradient, P_k's normaliser, SS on
the first conv, the offset-gradient diagnostics, and the selection protocol on made-up scores."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from esol_lib import readings as rd
from esol_lib import study, verdicts
from esol_lib.method.diagnostics import cell_kinds, offset_gradients
from esol_lib.method.losses import area_maps, expansion_loss, feature_clip, shrinkage_loss
from esol_lib.models import CAMClassifier, build_backbone
from esol_lib.models.esol import ESOLModel


def _baseline() -> CAMClassifier:
    torch.manual_seed(0)
    return CAMClassifier(build_backbone("small", [1, 2, 2, 1]), num_classes=3).eval()


def _cfg(exp=None, shr=None):
    e = dict(offsets=True, deformable=True, train_regular=False, clip=True, beta=0.15)
    s = dict(offsets=True, train_regular=False)
    return SimpleNamespace(**(e | (exp or {}))), SimpleNamespace(**(s | (shr or {})))


def test_clip_ceiling_passes_gradient_only_when_asked():
    x = torch.tensor([[[[1.0, 4.0], [3.0, 0.5]]]], requires_grad=True)
    feature_clip(x, 0.5).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]  # clipped cells pass nothing
    x.grad = None
    feature_clip(x, 0.5, gradient=True).sum().backward()
    # the two clipped cells each give β to the channel's maximum (4.0)
    assert x.grad.flatten().tolist() == [1.0, 1.0, 0.0, 1.0]


def test_detached_max_leaves_the_map_but_not_its_gradient():
    cams = torch.rand(2, 3, 5, 5, requires_grad=True)
    a, b = area_maps(cams, "cam"), area_maps(cams, "cam-detached")
    torch.testing.assert_close(a, b)
    (ga,) = torch.autograd.grad(a.mean(), cams)
    (gb,) = torch.autograd.grad(b.mean(), cams)
    assert (gb >= 0).all() and (ga < 0).any()  # through the max, raising the peak lowers the area


def test_clipping_acts_where_the_readings_say():
    model = ESOLModel(_baseline(), *_cfg({"clip_in_training": False, "clip_in_cams": True}))
    model.stage_parameters("expansion")
    model.train()
    assert not model.clipping()  # expansion trains unclipped
    model.stage_parameters("shrinkage")
    assert model.clipping()  # shrinkage trains on the features its CAMs see
    model.eval()
    assert model.clipping()
    model = ESOLModel(_baseline(), *_cfg({"clip_in_cams": False}))
    assert not model.eval().clipping() and model.train().clipping()


def test_shrinkage_on_the_first_conv_starts_at_the_expansion_model_and_learns_there():
    base = _baseline()
    second = ESOLModel(copy.deepcopy(base), *_cfg())
    with torch.no_grad():
        second.es.offset_conv.bias.fill_(0.3)  # a trained expansion
    first = ESOLModel(copy.deepcopy(base), *_cfg(shr={"placement": "first"}))
    expansion_state = {k: v for k, v in second.state_dict().items() if not k.startswith("ss.offset_conv")}
    missing, unexpected = first.load_state_dict(expansion_state, strict=False)
    assert not unexpected and all(k.startswith("ss.offset_conv") for k in missing)  # the same checkpoint serves
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(first.eval()(x), second.eval()(x), rtol=1e-5, atol=1e-5)
    params = first.stage_parameters("shrinkage")
    assert params and all(p is q for p, q in zip(params, first.ss.offset_conv.parameters()))
    first.train()
    logits, cams = first(x, return_cams=True)
    shrinkage_loss(logits, torch.tensor([[1, 0, 0], [0, 1, 1]]).float(), cams)[0].backward()
    assert first.ss.offset_conv.weight.grad.abs().sum() > 0  # its gradient flows through ES's sampling
    assert first.ss.offset_conv.weight.shape[1] == first.es.in_channels


def test_cell_kinds_split_object_border_and_background():
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1  # one full object cell of a 2x2 grid
    masks[0, 2, 2] = 255  # void counts as neither
    masks[0, 3, 3] = 2  # a quarter: a border cell
    obj, bg = cell_kinds(masks, (2, 2))
    assert obj.tolist() == [[[True, False], [False, False]]]
    assert bg.tolist() == [[[False, True], [True, False]]]


def test_offset_gradients_are_zero_on_clipped_cells_without_the_ceiling_gradient():
    torch.manual_seed(1)
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "label": torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]).float(),
        "mask": torch.randint(0, 3, (4, 32, 32)),
    }

    def loss_fn(m, b):
        return expansion_loss(m(b["image"]), b["label"], 1.0), {}

    model = ESOLModel(_baseline(), *_cfg({"beta": 0.05}))  # a low ceiling: most values clipped
    model.stage_parameters("expansion")
    d = offset_gradients(model, "expansion", loss_fn, batch)
    assert 0 < d["clipped_fraction"] < 1 and 0 < d["confidence"] < 1 and d["offset"] == 0.0
    assert d["grad_all"] > 0 and math.isclose(d["cells_all"], 1.0)
    assert all(p.grad is None for p in model.parameters())  # the measurement leaves no gradient behind
    through = ESOLModel(_baseline(), *_cfg({"beta": 0.05, "clip_gradient": True}))
    through.stage_parameters("expansion")
    assert offset_gradients(through, "expansion", loss_fn, batch)["grad_clipped"] > d["grad_clipped"]


def _m(miou, precision=50.0, recall=50.0):
    return {"miou": miou, "precision": precision, "recall": recall, "f1": 0.5, "ap": 0.5}


def test_protocol_picks_per_factor_keeps_ties_and_skips_diverged():
    scores = {rd.REFERENCE: _m(0.40), "clip-gradient": _m(0.45), "clip-after": _m(0.47), "alpha-0.001": _m(0.40)}
    scores["pk-sigmoid"] = {"diverged": "ran away"}
    sel = rd.select_readings(scores)
    assert sel["clip-training"]["chosen"] == "clip-after"
    assert sel["alpha"]["chosen"] == rd.REFERENCE  # a tie keeps the as-built level
    assert sel["pk-map"]["chosen"] == rd.REFERENCE and sel["pk-map"]["candidates"]["pk-sigmoid"] is None
    assert rd.selected_overrides(sel) == ("expansion.clip_in_training=false",)
    (change,) = rd.default_changes(sel)
    assert change["reading"] == "clip-after" and change["allowed"] is False  # silent < implied
    with pytest.raises(ValueError, match="as-built"):
        rd.select_readings({"clip-after": _m(0.5)})


def test_every_reading_names_a_known_factor_and_config_keys():
    from esol_lib.runtime.config_io import load_config

    assert {r.factor for r in rd.READINGS} == set(rd.FACTORS)
    for r in rd.READINGS:
        load_config("cpu", list(r.overrides))  # every override is a valid key and value


def test_profiles_carry_exactly_the_permitted_changes_and_the_study_its_reference():
    """Step 3 checked on the real profiles: a chosen level is a default only where it is permitted."""
    from esol_lib.runtime.config_io import load_config

    sel = {f: {"chosen": rd.REFERENCE} for f in rd.FACTORS}
    sel |= {"optimiser": {"chosen": "opt-irn"}, "pk-map": {"chosen": "pk-sigmoid"}, "length": {"chosen": "len-6610"}}
    changes = {c["reading"]: c for c in rd.default_changes(sel)}
    assert changes["opt-irn"]["allowed"] and not changes["pk-sigmoid"]["allowed"]  # implied ≥ silent; silent < implied
    cpu = {c["reading"]: c for c in rd.profile_adoption("cpu", list(changes.values()))}
    assert cpu["opt-irn"]["adopted"] and cpu["opt-irn"]["values"] == {
        "expansion.momentum": 1e-4,
        "shrinkage.momentum": 1e-4,
    }
    assert not cpu["pk-sigmoid"]["adopted"] and not cpu["len-6610"]["adopted"]  # cpu keeps 10 passes
    voc = {c["reading"]: c for c in rd.profile_adoption(load_config("voc12"), list(changes.values()))}
    assert voc["opt-irn"]["adopted"] and voc["len-6610"]["adopted"] and not voc["pk-sigmoid"]["adopted"]
    # the as-built reference is pinned: the cpu profile under AS_BUILT is every factor's as-built level,
    # and the toy profile (toy_seeds.json, the smoke tests) still carries it
    for profile, extra in (("cpu", list(rd.AS_BUILT)), ("toy", [])):
        adopted = rd.profile_adoption(load_config(profile, extra), list(changes.values()))
        assert not any(c["adopted"] for c in adopted if c["reading"] != "len-6610"), profile


def test_stage_effects_and_verdicts_come_from_the_numbers():
    def stage(p, r, miou):
        sweep = [{"threshold": 0.1, "precision": p, "recall": r, "miou": miou}]
        return {"miou": miou, "precision": p, "recall": r, "f1": 0.5, "ap": 0.5, "sweep": sweep}

    run = {"baseline": stage(0.7, 0.6, 0.5), "expansion": stage(0.6, 0.7, 0.45), "shrinkage": stage(0.65, 0.65, 0.48)}
    e = verdicts.stage_effects(run)
    assert e["expansion_recall"] == pytest.approx(10.0) and e["expansion_recall_sweep"] == pytest.approx(10.0)
    assert e["shrinkage_precision"] == pytest.approx(5.0) and e["esol_miou"] == pytest.approx(-2.0)
    other = verdicts.stage_effects({"baseline": run["baseline"]})
    lines = verdicts.stage_verdicts({"as-built": [e, e], "other": [other], "selected": [e, e]}, "selected")
    assert lines[0].startswith("Expansion raised recall") and "1 of 2 readings (`as-built` +10.0 points" in lines[0]
    assert "under none of them" in lines[2]  # the selected combination is not counted as a reading
    assert lines[3].startswith("The selected combination") and "-2.0 ± 0.0 points (2 seeds) mIoU" in lines[3]


def test_a_reading_forked_from_a_retrained_run_is_measured_from_its_own_baseline():
    def stage(p, r, miou):
        return {"miou": miou, "precision": p, "recall": r, "f1": 0.5, "ap": 0.5, "sweep": []}

    recorded = {"baseline": stage(0.7, 0.6, 0.50), "expansion": stage(0.6, 0.6, 0.4), "shrinkage": stage(0.5, 0.6, 0.3)}
    retrained = {
        "baseline": stage(0.7, 0.5, 0.45),
        "expansion": stage(0.6, 0.55, 0.41),
        "shrinkage": stage(0.5, 0.5, 0.3),
    }
    reading = {"scores": {"val": {"expansion": stage(0.6, 0.55, 0.4), "shrinkage": stage(0.5, 0.5, 0.3)}}}
    result = {
        "seeds": {
            "1": {
                rd.REFERENCE: {"scores": {"val": recorded}},
                "len-6610": reading | {"reference": {"scores": {"val": retrained}}},
                "alpha-0.001": reading,
            }
        }
    }
    assert study.stage_metrics(result, "1", "len-6610", "val")["baseline"] is retrained["baseline"]
    assert study.stage_metrics(result, "1", "alpha-0.001", "val")["baseline"] is recorded["baseline"]
    result["toy"] = {"0": {"selected": {"diverged": "offsets ran away", "scores": {"val": {"expansion": {}}}}}}
    assert study.stopped_runs(result) == ["`selected` on toy seed 0 was stopped (offsets ran away); scored: expansion."]
    (line,) = study.retrained_references(result)
    assert "`len-6610` on seed 1" in line and "45.0 mIoU against the recorded 50.0" in line and "41.0, 30.0" in line


@pytest.mark.slow
def test_readings_benchmark_runs_the_protocol_end_to_end_on_the_smoke_profile(tmp_path):
    """benchmarks/readings.py on the smoke profile: two readings, the selection, the selected run, the book's view."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out, js = tmp_path / "runs", tmp_path / "readings.json"
    cmd = [
        sys.executable,
        str(root / "benchmarks" / "readings.py"),
        "--profile",
        "smoke",
        "--seeds",
        "0",
        "--out",
        str(out),
    ]
    cmd += ["--json", str(js), "--only", "alpha-0.001", "ss-first"]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600)
    result = json.loads(js.read_text())
    runs = result["seeds"]["0"]
    assert set(runs) == {rd.REFERENCE, "alpha-0.001", "ss-first", "baseline-momentum-0.9"}
    assert runs["baseline-momentum-0.9"]["scores"]["train"]["baseline"]["miou"] >= 0
    ref = runs[rd.REFERENCE]
    assert set(ref["scores"]) == {"val", "train"} and ref["scores"]["val"]["shrinkage"]["sweep"]
    assert "grad_object" in ref["diagnostics"]["expansion_start"] and ref["offsets"]["expansion"]
    assert (out / "seed0" / "readings" / "ss-first" / "checkpoints" / "shrinkage.pt").is_file()
    assert result["selection"]["missing"]  # 8 readings were left out: selection only, nothing selected is run
    assert "selected" not in result or not result["selected"]
    assert "| baseline (no ESOL) |" in study.readings_table(result) and "`ss-first`" in study.diagnostics_table(result)
    assert study.verdict(result)[0].startswith("Expansion raised recall")
    subprocess.run([*cmd, "--sampling"], check=True, cwd=tmp_path, timeout=600)
    result = json.loads(js.read_text())
    points = result["seeds"]["0"]["ss-first"]["sampling"]["shrinkage"]
    assert len(points) == 16 and len(points[0][0]) == 9  # a 4x4 grid of cells, nine taps each
    assert result["seeds"]["0"]["_image"]["png"] and study.mechanism_sentences(result)
    from esol_lib import charts, viz

    for fig in (viz.reading_sampling(result), charts.reading_tradeoff(result), charts.reading_offsets(result)):
        assert fig is not None
    assert charts.reading_gradients(result, "0", "expansion_start") is not None


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "readings.py"
    spec = importlib.util.spec_from_file_location("readings_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_a_retrained_run_keeps_its_own_reference_only_when_its_baseline_moved(monkeypatch):
    bench = _benchmark()
    now = {"val": {"baseline": _m(0.45), "expansion": _m(0.4), "shrinkage": _m(0.3)}}
    monkeypatch.setattr(bench, "score", lambda run, stages, splits: now)
    assert bench.own_reference(None, {"val": {"baseline": _m(0.45)}}) is None  # reproduced: the recorded one
    ref = bench.own_reference(None, {"val": {"baseline": _m(0.50)}})
    assert ref["scores"] is now and "trained again" in ref["why"]


def test_a_second_study_on_one_seed_waits_for_the_first_instead_of_failing(monkeypatch, tmp_path):
    """Two ``benchmarks/readings.py`` processes on one seed share its run; the lock's holder goes first."""
    import esol_lib.pipeline
    import esol_lib.steps
    from esol_lib.runtime.lock import RunBusyError

    bench = _benchmark()
    busy = iter([True, True, False])
    calls = []

    def start_run(root, cfg):
        calls.append(root)
        if next(busy):
            raise RunBusyError(f"{root} is in use by another esol process")
        return SimpleNamespace(root=root)

    monkeypatch.setattr(esol_lib.steps, "start_run", start_run)
    monkeypatch.setattr(esol_lib.pipeline, "pipeline_steps", lambda run, **kw: [])
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    run = bench.main_run("smoke", 0, tmp_path, [])
    assert run.root == tmp_path / "seed0" and len(calls) == 3
    monkeypatch.setattr(bench, "BUSY_WAIT", 10.0)
    busy = iter([True, True, True])
    with pytest.raises(RunBusyError):  # it gives up after BUSY_WAIT seconds
        bench.main_run("smoke", 0, tmp_path, [])
