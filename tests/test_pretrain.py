"""esol pretrain: the proxy-ImageNet backbone loads through model.pretrained; the recipe caches it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from esol_lib.cli import main
from esol_lib.models.backbone import OPENMOJI_WEIGHTS, build_backbone
from esol_lib.models.classifier import build_classifier
from esol_lib.runtime.config_io import load_config
from esol_lib.steps.pretrain import PretrainRecipe, pretrain_backbone, recipe_fingerprint, render_glyph_set

TINY = PretrainRecipe(steps=2, batch_size=4, renders_per_class=1, heldout_per_class=1, size=32, warmup=1)


def test_renders_are_deterministic_and_streams_differ():
    a, ya = render_glyph_set((0x1F34E, 0x1F333), 2, 32, (0.5, 1.0), 0, 0)
    b, _ = render_glyph_set((0x1F34E, 0x1F333), 2, 32, (0.5, 1.0), 0, 0)
    c, _ = render_glyph_set((0x1F34E, 0x1F333), 2, 32, (0.5, 1.0), 0, 1)
    assert (a == b).all() and not (a == c).all()
    assert ya.tolist() == [0, 0, 1, 1]


@pytest.mark.slow
def test_pretrain_writes_a_backbone_that_model_pretrained_loads(tmp_path):
    out = tmp_path / "bb.pth"
    card = pretrain_backbone(out, TINY, progress=False)
    assert card["fingerprint"] == recipe_fingerprint(TINY) and card["classes"] > 800
    assert 0.0 <= card["heldout_top1"] <= card["heldout_top5"] <= 1.0
    saved = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in saved)
    cfg = load_config("cpu", [f"model.pretrained={out}"])
    model = build_classifier(cfg.model, 20)
    for k, v in saved.items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    # the same recipe is not trained again; another one is
    mtime = out.stat().st_mtime_ns
    assert pretrain_backbone(out, TINY, progress=False) == card and out.stat().st_mtime_ns == mtime
    other = dataclasses.replace(TINY, seed=1)
    assert pretrain_backbone(out, other, progress=False)["fingerprint"] != card["fingerprint"]


@pytest.mark.slow  # trains a backbone end to end through the command line
def test_cli_pretrain(tmp_path, monkeypatch, capsys):
    import esol_lib.steps.pretrain as pretrain

    monkeypatch.setattr(pretrain, "PretrainRecipe", lambda: TINY)
    assert main(["pretrain", "--out", str(tmp_path / "b.pth"), "--steps", "1"]) == 0
    assert "held-out top-1" in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["recipe"]["steps"] == 1


def test_shipped_backbone_loads_as_openmoji():
    assert OPENMOJI_WEIGHTS.is_file(), "esol_lib/weights/small-openmoji.pth is shipped with the package"
    card = json.loads(OPENMOJI_WEIGHTS.with_suffix(".json").read_text())
    assert card["fingerprint"] == recipe_fingerprint(PretrainRecipe())
    a = build_backbone("small", [2, 2, 2, 1], "openmoji")
    b = build_backbone("small", [2, 2, 2, 1], None)
    assert not torch.equal(a.stages[0][0].weight, b.stages[0][0].weight)


def test_missing_weights_file_names_it(tmp_path):
    from esol_lib.runtime.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        build_backbone("small", [2, 2, 2, 1], str(tmp_path / "nope.pth"))


def test_a_missing_shipped_backbone_is_trained_once_when_a_config_needs_it(tmp_path, monkeypatch):
    import esol_lib.steps.pretrain as pretrain

    calls = []
    target = tmp_path / "small-openmoji.pth"
    monkeypatch.setattr(pretrain, "SHIPPED_WEIGHTS", target)
    monkeypatch.setattr(pretrain, "pretrain_backbone", lambda out, **kw: calls.append(out) or out.write_bytes(b"x"))
    pretrain.ensure_openmoji_weights(load_config("toy"))  # no openmoji weights asked for
    assert calls == []
    pretrain.ensure_openmoji_weights(load_config("cpu"))
    pretrain.ensure_openmoji_weights(load_config("cpu"))
    assert calls == [target]
