"""Configs: presets load, overrides apply, unknown keys and wrong types name the key."""

import re

import pytest

from esol_lib.runtime.config_io import PRESETS, config_to_dict, load_config, save_config
from esol_lib.runtime.errors import ConfigError


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_names_itself(name):
    cfg = load_config(name)
    assert cfg.profile == name


def test_voc12_carries_the_paper_and_irn_settings():
    cfg = load_config("voc12")
    assert cfg.model.backbone == "resnet50" and cfg.model.strides == [2, 2, 2, 1]
    assert cfg.train_cam.crop_size == 512 and cfg.train_cam.batch_size == 16
    assert cfg.train_cam.lr == 0.1 and cfg.train_cam.weight_decay == 1e-4
    assert cfg.cam.scales == [1.0, 0.5, 1.5, 2.0]
    assert cfg.expansion.lr == 0.01 and cfg.expansion.max_steps == 6610 and cfg.expansion.beta == 0.15
    assert cfg.shrinkage.lr == 0.1 and cfg.shrinkage.gamma == 1.0 and cfg.shrinkage.mu == 1.0
    assert cfg.data.train_split == "train_aug"


def test_coco14_inherits_voc12_and_changes_what_the_paper_changes():
    cfg = load_config("coco14")
    assert cfg.model.backbone == "resnet50"  # from the base preset
    assert cfg.expansion.lr == 0.001 and cfg.expansion.max_steps == 51730
    assert cfg.shrinkage.lr == 0.02 and cfg.shrinkage.max_steps == 51730


def test_cpu_toy_and_smoke_need_no_downloads():
    for name in ("toy", "smoke"):
        cfg = load_config(name)
        assert cfg.model.pretrained is None and cfg.seg.pretrained is None
        assert cfg.data.root == "" and cfg.data.generator == "synth"  # the toy benchmark
    cfg = load_config("cpu")  # the emoji benchmark on the shipped proxy-ImageNet backbone
    assert cfg.data.root == "" and cfg.data.generator == "emoji"
    assert cfg.model.pretrained == cfg.seg.pretrained == "openmoji" and cfg.irn.backbone == "pretrained"


def test_cpu_esol_settings_are_the_papers():
    """§4.1: alpha (as chosen in §4.3.1), beta, gamma, mu, lrs; 10 epochs of the training split."""
    cfg = load_config("cpu")
    assert (cfg.expansion.alpha, cfg.expansion.lr, cfg.expansion.beta) == (0.01, 0.01, 0.15)
    assert (cfg.shrinkage.gamma, cfg.shrinkage.mu, cfg.shrinkage.lr) == (1.0, 1.0, 0.1)
    epochs = lambda steps, batch: steps * batch / cfg.data.emoji.train  # noqa: E731
    assert epochs(cfg.expansion.max_steps, cfg.expansion.batch_size) == 10.0
    assert epochs(cfg.shrinkage.max_steps, cfg.shrinkage.batch_size) == 10.0


def test_unknown_generator_names_the_key(tmp_path):
    from esol_lib.data import resolve_data_root

    with pytest.raises(ConfigError, match="data.generator"):
        resolve_data_root(load_config("cpu", ["data.generator=voc"]), synth_dir=tmp_path)


def test_overrides_parse_yaml_values():
    cfg = load_config(
        "cpu",
        [
            "expansion.alpha=0.05",
            "cam.scales=[1.0, 2.0]",
            "model.pretrained=null",
            "expansion.clip=false",
            "data.synth.seed=3",
        ],
    )
    assert cfg.expansion.alpha == 0.05
    assert cfg.cam.scales == [1.0, 2.0]
    assert cfg.model.pretrained is None
    assert cfg.expansion.clip is False
    assert cfg.data.synth.seed == 3


def test_int_widens_to_float():
    assert load_config("cpu", ["expansion.alpha=1"]).expansion.alpha == 1.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("expansion.alpah=0.1", "expansion.alpah"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("data.synth.colour=3", "data.synth.colour"),
    ],
)
def test_unknown_key_is_an_error_naming_it(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config("cpu", [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("expansion.max_steps=ten", "expansion.max_steps"),
        ("expansion.max_steps=1.5", "expansion.max_steps"),
        ("expansion.clip=3", "expansion.clip"),
        ("cam.scales=1.0", "cam.scales"),
        ("cam.scales=[1.0, big]", r"cam.scales\[1\]"),
        ("model.backbone=5", "model.backbone"),
        ("expansion=3", "expansion"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config("cpu", [override])


def test_malformed_override_and_missing_config():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("cpu", ["expansion.alpha"])
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("no-such-preset")


def test_yaml_file_with_base_and_unknown_key(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("base: smoke\nexpansion: {alpha: 0.02}\n")
    cfg = load_config(good)
    assert cfg.profile == "smoke" and cfg.expansion.alpha == 0.02
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\nshrinkage: {muu: 2}\n")
    with pytest.raises(ConfigError, match="shrinkage.muu"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("cpu", ["seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_overrides_never_modify_the_dict_they_patch():
    from esol_lib.runtime.config_io import apply_overrides, config_to_dict

    values = config_to_dict(load_config("cpu"))
    patched = apply_overrides(values, ["expansion.clip=false"])
    assert patched["expansion"]["clip"] is False
    assert values["expansion"]["clip"] is True


@pytest.mark.parametrize(
    "override, key",
    [
        ("train_cam.lr=-1", "train_cam.lr"),
        ("train_cam.batch_size=0", "train_cam.batch_size"),
        ("expansion.max_steps=-5", "expansion.max_steps"),
        ("expansion.max_steps=0", "expansion.max_steps"),
        ("train_cam.crop_size=0", "train_cam.crop_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("expansion.beta=0", "expansion.beta"),
        ("expansion.beta=1.5", "expansion.beta"),
        ("cam.scales=[]", "cam.scales"),
        ("shrinkage.area_map=foo", "shrinkage.area_map"),
        ("device=tpu", "device"),
        ("expansion.alpha=0", "expansion.alpha"),
        ("seg.lr=.nan", "seg.lr"),
        ("cam.thresholds=[0.5,1.5]", "cam.thresholds"),
        ("irn.conf_fg_thres=2", "irn.conf_fg_thres"),
    ],
)
def test_values_out_of_range_are_refused_before_anything_runs(override, key):
    """They used to end in raw tracebacks, some minutes into training (issue 18, item 5)."""
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': .* out of range; expected"):
        load_config("smoke", [override])


def test_a_number_in_exponent_notation_is_a_number():
    assert load_config("smoke", ["expansion.lr=1e-3"]).expansion.lr == pytest.approx(1e-3)  # YAML 1.1: a string


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "is empty"),
        (b"seed: [1, 2\n", "not valid YAML"),
        (b"- 1\n- 2\n", "holds a list, not a mapping"),
        (b"profile: caf\xe9\n", "not UTF-8"),
    ],
)
def test_a_damaged_run_config_is_one_clear_error(tmp_path, content, says):
    from esol_lib.runtime.rundir import RunDir

    run = RunDir(tmp_path)
    run.config_path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(run.config_path))} .*{says}.*new --run"):
        run.load_config()


def test_train_cam_and_irn_use_irns_effective_optimiser():
    """IRN's PolyOptimizer puts its weight decay in SGD's momentum slot and its param groups set the
    weight decay: momentum 1e-4, weight decay 1e-4 is what IRN (and the paper's baseline) trained with."""
    for preset in ("voc12", "coco14", "cpu"):
        tc, ic = load_config(preset).train_cam, load_config(preset).irn
        assert (tc.lr, tc.momentum, tc.weight_decay) == (0.1, 1e-4, 1e-4), preset
        assert (ic.momentum, ic.weight_decay) == (1e-4, 1e-4), preset
    assert load_config("toy").train_cam.momentum == 0.9  # a from-scratch backbone: its own recipe
    assert load_config("cpu", ["train_cam.momentum=0.9"]).train_cam.momentum == 0.9  # the meant one, a setting
