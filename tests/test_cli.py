"""The command line: errors are one clear message (exit 2), unbuilt stages say where they belong."""

import hashlib

import pytest
import yaml

from esol_lib.cli import PENDING, main
from esol_lib.runtime.config_io import load_config
from esol_lib.runtime.errors import ConfigError
from esol_lib.runtime.rundir import RunDir, create_run


def test_config_shows_resolved_yaml_with_overrides(capsys):
    assert main(["config", "--config", "smoke", "--set", "expansion.alpha=0.5"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["profile"] == "smoke" and cfg["expansion"]["alpha"] == 0.5


def test_unknown_config_key_exits_2_naming_the_key(capsys):
    assert main(["config", "--config", "cpu", "--set", "shrinkage.gama=2"]) == 2
    err = capsys.readouterr().err
    assert "shrinkage.gama" in err and "Traceback" not in err


def test_every_design_command_is_built():
    assert PENDING == {}


@pytest.mark.parametrize("command", ["refine", "train-seg", "eval-seg", "make-cam", "eval-cam"])
def test_stage_commands_on_a_missing_run_name_the_fix(command, capsys, tmp_path):
    assert main([command, "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "esol train-cam" in err
    assert not (tmp_path / "run").exists()  # nothing is created


def test_create_run_writes_config_first_and_refuses_a_baseline_change(tmp_path):
    cfg = load_config("smoke")
    run = create_run(tmp_path / "run", cfg)
    assert run.config_path.is_file()
    assert RunDir(tmp_path / "run").load_config() == cfg
    create_run(tmp_path / "run", cfg)  # same config: resume
    fixed = load_config("smoke", ["expansion.alpha=0.3"])
    create_run(tmp_path / "run", fixed)  # nothing was made with the first one yet: the correction is taken
    assert RunDir(tmp_path / "run").load_config() == fixed
    (tmp_path / "run" / "log.jsonl").write_text("{}\n")  # a stage has started
    with pytest.raises(ConfigError, match="train_cam.lr.*shape the baseline"):
        create_run(tmp_path / "run", load_config("smoke", ["expansion.alpha=0.3", "train_cam.lr=0.123"]))
    assert RunDir(tmp_path / "run").load_config() == fixed  # refused: the config stays
    create_run(tmp_path / "run", cfg)  # a later stage's key changes in place (test_faults checks what moves)
    assert RunDir(tmp_path / "run").load_config() == cfg


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_data_synth_twice_gives_byte_identical_files(tmp_path):
    for name in ("a", "b"):
        assert main(["data", "synth", "--out", str(tmp_path / name), "--profile", "smoke", "--train", "5"]) == 0
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    from esol_lib.data import VOCSegmentation

    ds = VOCSegmentation(tmp_path / "a", "train")
    assert len(ds) == 5 and ds[0]["label"].sum() >= 1


@pytest.mark.slow
def test_pipeline_generates_the_benchmark_and_opens_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "--config", "smoke", "--run", "runs/s"]) == 0
    assert (tmp_path / "data" / "synth-smoke" / "ImageSets" / "Segmentation" / "train.txt").is_file()
    assert (tmp_path / "runs" / "s" / "config.yaml").is_file()


def test_eval_cam_prints_the_metrics_file_it_wrote(tmp_path, capsys):
    """Without --split it printed 'baseline_None' and a path that does not exist."""
    from esol_lib.data.synth import SynthSpec, generate_benchmark

    data = generate_benchmark(tmp_path / "d", SynthSpec(train=6, val=2, size=32, num_classes=3), progress=False)
    run = tmp_path / "run"
    assert main(["train-cam", "--config", "smoke", "--data-root", str(data), "--run", str(run)]) == 0
    assert main(["make-cam", "--run", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval-cam", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("baseline_train: mIoU") and out.rstrip().endswith(
        str(run / "metrics" / "baseline_train.json")
    )
