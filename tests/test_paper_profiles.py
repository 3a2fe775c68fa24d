"""The paper's profiles, ``voc12`` and ``coco14``, run every step at toy length on CPU (issue 29).

Everything a GPU user runs is kept: ResNet-50 classifier with its two 2048-channel extra convolutions,
IRN's boundary branch on its own frozen ResNet-50, DeepLab-v2 on ResNet-101 with ASPP rates 6–24,
four-scale CAMs with flips, the random walk at radius 5, ``train_aug`` and COCO's split names. Only
lengths, batches, crops and the device are set small, and the baseline's learning rate: the weights
are random stand-ins (:mod:`esol_lib.models.random_imagenet`), and IRN's 0.1 makes them diverge in
two steps (measured: loss 0.7 → 1.9e4 on 64 px crops) while the loss stays finite; the CAMs then
come out NaN, and make-cam stops there with one line naming ``train_cam.lr`` (``test_cam``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: Lengths, batches and crops a CPU runs in seconds; every other field is the profile's.
TOY_LENGTH = [
    "device=cpu",
    "data.num_workers=0",
    "train_cam.max_steps=2",
    "train_cam.batch_size=2",
    "train_cam.crop_size=32",
    "train_cam.resize_long=[32,48]",
    "expansion.max_steps=2",
    "expansion.batch_size=2",
    "shrinkage.max_steps=2",
    "shrinkage.batch_size=2",
    "irn.max_steps=2",
    "irn.batch_size=2",
    "irn.crop_size=32",
    "seg.max_steps=2",
    "seg.batch_size=2",
    "seg.crop_size=32",
    "recam.max_steps=2",
    "recam.batch_size=2",
    "advcam.steps=2",
    "lpcam.num_clusters=2",
    "lpcam.kmeans_iters=3",
]
#: The random stand-in weights need a lower baseline lr than IRN's 0.1 (see the module docstring).
STAND_IN_LR = ["train_cam.lr=0.001"]


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def run_esol(args: list[str], cwd: Path, torch_home: Path, launcher: list[str] | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TORCH_HOME=str(torch_home))
    cmd = (launcher or [sys.executable, "-m", "esol_lib"]) + args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Stand-in ImageNet weights in a TORCH_HOME, a tiny VOC-layout dataset with ``train_aug``."""
    from esol_lib.data.synth import SynthSpec, generate_benchmark
    from esol_lib.models.random_imagenet import write_random_imagenet_weights

    base = tmp_path_factory.mktemp("paper")
    write_random_imagenet_weights(base / "torch")
    voc = generate_benchmark(base / "voc", SynthSpec(train=4, val=2, size=32, num_classes=3), progress=False)
    lists = Path(voc) / "ImageSets" / "Segmentation"
    shutil.copy(lists / "train.txt", lists / "train_aug.txt")
    yield base
    shutil.rmtree(base / "torch")  # the stand-in weights, 270 MB


def finished(run: Path) -> dict[str, dict]:
    """The run's metrics files, each checked to hold finite headline numbers."""
    out = {}
    for path in sorted(run.glob("metrics/*.json")):
        m = json.loads(path.read_text())
        assert math.isfinite(m["miou"]), path.name
        out[path.stem] = m
    return out


EXPECTED = {
    *(f"{s}_train" for s in ("baseline", "expansion", "shrinkage")),
    *(f"{s}_crf_train" for s in ("baseline", "expansion", "shrinkage")),
    "mask-baseline_train",
    "mask-shrinkage_train",
    "seg-baseline_val",
    "seg-shrinkage_val",
}


def check_profile_kept(run: Path, profile: str) -> None:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["profile"] == profile
    assert cfg["model"]["backbone"] == "resnet50" and cfg["model"]["extra_kernel"] == 3
    assert cfg["irn"]["backbone"] == "pretrained" and cfg["irn"]["radius"] == 5
    assert cfg["seg"]["backbone"] == "resnet101" and cfg["seg"]["dilations"] == [6, 12, 18, 24]
    assert cfg["cam"]["scales"] == [1.0, 0.5, 1.5, 2.0] and cfg["cam"]["flip"]


#: The positive controls' commands after the pipeline (chapter 10): each control's CAMs scored, one refined.
CONTROLS = [
    ["train-recam"],
    *(["make-cam", "--stage", st] for st in ("recam", "advcam", "lpcam")),
    *(["eval-cam", "--stage", st] for st in ("recam", "advcam", "lpcam")),
    ["refine", "--stage", "lpcam"],
]
CONTROLS_EXPECTED = {"recam_train", "advcam_train", "lpcam_train", "mask-lpcam_train"}


def run_profile(
    profile: str, data: Path, ws: Path, tmp_path: Path, torchrun: bool = False, controls: bool = False
) -> None:
    """Every step of ``profile`` at toy length on ``data``; its metrics files checked, then the run deleted.
    With ``controls`` the positive controls' commands run after the pipeline, on the same run."""
    run = tmp_path / "run"
    args = ["pipeline", "--config", profile, "--data-root", str(data), "--run", str(run)]
    args += sets(*TOY_LENGTH, *STAND_IN_LR)
    launcher = None
    if torchrun:  # the README's form: without the `--` torchrun takes `--run` for its `--run-path`
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        args = ["-m", "esol_lib", "--", *args]
    proc = run_esol(args, tmp_path, ws / "torch", launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = set(EXPECTED)
    for command in CONTROLS if controls else ():
        proc = run_esol([*command, "--run", str(run)], tmp_path, ws / "torch")
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        expected |= CONTROLS_EXPECTED
    assert set(finished(run)) == expected
    check_profile_kept(run, profile)
    shutil.rmtree(run)  # about 2 GB of ResNet checkpoints: pytest keeps the last three sessions' folders


def test_voc12_runs_every_step_at_toy_length(ws, tmp_path):
    """The pipeline, then ReCAM, AdvCAM and LPCAM on its baseline (ResNet-50's 2048-channel head)."""
    run_profile("voc12", ws / "voc", ws, tmp_path, controls=True)


def test_voc12_runs_every_step_under_torchrun_with_two_processes(ws, tmp_path):
    """Two gloo processes on CPU, through the README's `torchrun ... -m esol_lib -- pipeline ...`."""
    run_profile("voc12", ws / "voc", ws, tmp_path, torchrun=True)


def _tiny_coco(root: Path) -> None:
    """Four training and two validation images in COCO 2014's layout: rectangles of three categories
    whose ids are not contiguous (1 person, 18 dog, 44 bottle)."""
    rng = np.random.default_rng(0)
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 44, "name": "bottle"}]
    (root / "annotations").mkdir(parents=True)
    ann_id = 1
    for split, n in (("train2014", 4), ("val2014", 2)):
        (root / split).mkdir()
        images, anns = [], []
        for k in range(n):
            image_id = 100 * (split == "val2014") + k + 1
            name = f"COCO_{split}_{image_id:012d}.jpg"
            arr = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            for j, cat in enumerate(cats[: 1 + k % 3]):
                x0, y0 = 2 + 9 * j, 4 + 3 * j
                arr[y0 : y0 + 12, x0 : x0 + 8] = (200, 60 * j, 255 - 80 * j)
                poly = [x0, y0, x0 + 8, y0, x0 + 8, y0 + 12, x0, y0 + 12]
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cat["id"],
                        "segmentation": [[float(v) for v in poly]],
                        "area": 96.0,
                        "bbox": [x0, y0, 8, 12],
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
            Image.fromarray(arr).save(root / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": 32, "width": 32})
        data = {"images": images, "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_coco14_runs_every_step_under_torchrun_from_a_converted_folder(ws, tmp_path):
    """coco14 under two processes (its one-process run is voc12's code with COCO's splits; the suite's
    time goes to the path a GPU user takes)."""
    pytest.importorskip("pycocotools.coco")
    _tiny_coco(tmp_path / "coco")
    proc = run_esol(["data", "coco", "--coco-root", str(tmp_path / "coco"), "--out", str(tmp_path / "C")], tmp_path, ws)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_profile("coco14", tmp_path / "C", ws, tmp_path, torchrun=True)
