"""The checks to run the day a GPU is available: ``python benchmarks/gpu_check.py``.

1. **The two deformable-sampling paths agree.** On CUDA :class:`~esol_lib.models.samplers.DeformableSampler`
   calls ``torchvision.ops.deform_conv2d``; on a CPU it samples with ``grid_sample``
   (:func:`~esol_lib.models.samplers.deform_conv2d_sampled`). Both run on the same inputs, at the
   voc12 shapes (2048 channels, a 32×32 map: 512 px crops at output stride 16); outputs and the
   gradients reaching the offsets and the weights are compared.
2. **What each training step costs**: :func:`esol_lib.plan.plan_pipeline` on the ``voc12`` profile,
   measured on the device (``torch.cuda.max_memory_allocated`` of one real step at the full batch).
3. **The voc12 pipeline end to end at toy length** on the device, from a generated dataset and
   random ImageNet-shaped stand-in weights (:mod:`esol_lib.models.random_imagenet`), with the
   seconds each step took.

On CUDA it writes ``book/results/gpu_check.json``, which the book's Performance page shows. With
``--reduced`` (what the test suite runs, on a CPU) every check runs at small shapes on the smoke
profile and the JSON goes to ``--out`` only: the script cannot rot before a GPU comes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sampler_agreement(device: str, channels: int, size: int, batch: int) -> dict:
    """deform_conv2d against the grid_sample path on the same inputs: largest differences."""
    import torch
    from torchvision.ops import deform_conv2d

    from esol_lib.models.samplers import deform_conv2d_sampled

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g)
    offset = 2.0 * torch.randn(batch, 18, size, size, generator=g)
    weight = torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels**0.5)
    results = {}
    outs = {}
    for name in ("deform_conv2d", "grid_sample"):
        xs, os_, ws = (t.clone().to(device).requires_grad_(True) for t in (x, offset, weight))
        start = time.perf_counter()
        if name == "deform_conv2d":
            y = deform_conv2d(xs, os_, ws, None, padding=(1, 1))
        else:
            y = deform_conv2d_sampled(xs, os_, ws, None)
        y.square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        results[f"{name}_seconds"] = round(time.perf_counter() - start, 4)
        outs[name] = (y.detach().cpu(), os_.grad.cpu(), ws.grad.cpu())
    a, b = outs["deform_conv2d"], outs["grid_sample"]
    for label, i in (("output", 0), ("offset_grad", 1), ("weight_grad", 2)):
        scale = float(a[i].abs().max()) or 1.0
        results[f"{label}_max_abs_diff"] = float((a[i] - b[i]).abs().max())
        results[f"{label}_relative"] = results[f"{label}_max_abs_diff"] / scale
    results.update(device=device, channels=channels, size=size, batch=batch)
    return results


def plan(profile: str) -> list[dict]:
    from esol_lib.plan import plan_pipeline
    from esol_lib.runtime.config_io import load_config

    return [
        {
            "step": s.name,
            "iterations": s.steps,
            "batch": s.batch,
            "crop": s.crop,
            "peak_gib": round(s.peak_bytes / 2**30, 2),
            "measured": s.measured_on,
        }
        for s in plan_pipeline(load_config(profile))
    ]


TOY_LENGTH = [
    "data.num_workers=0",
    "train_cam.max_steps=4",
    "train_cam.batch_size=2",
    "train_cam.crop_size=64",
    "train_cam.resize_long=[64,96]",
    "train_cam.lr=0.001",  # the stand-in weights diverge at IRN's 0.1 (tests/test_paper_profiles.py)
    "expansion.max_steps=4",
    "expansion.batch_size=2",
    "shrinkage.max_steps=4",
    "shrinkage.batch_size=2",
    "irn.max_steps=4",
    "irn.batch_size=2",
    "irn.crop_size=64",
    "seg.max_steps=4",
    "seg.batch_size=2",
    "seg.crop_size=64",
]


def toy_pipeline(profile: str, device: str, work: Path) -> dict:
    """The profile's every step at toy length on ``device``: seconds per step, from the run's log."""
    from esol_lib.data.synth import SynthSpec, generate_benchmark
    from esol_lib.models.random_imagenet import write_random_imagenet_weights

    write_random_imagenet_weights(work / "torch")
    data = generate_benchmark(work / "data", SynthSpec(train=8, val=4, size=64, num_classes=3), progress=False)
    lists = Path(data) / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").write_text((lists / "train.txt").read_text())
    sets = [f"device={device}", *(TOY_LENGTH if profile != "smoke" else ["data.num_workers=0"])]
    cmd = [sys.executable, "-m", "esol_lib", "pipeline", "--config", profile, "--data-root", str(data)]
    cmd += ["--run", str(work / "run")] + [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCH_HOME=str(work / "torch"))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    record = {"profile": profile, "device": device, "returncode": proc.returncode}
    record["seconds"] = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        record["error"] = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return record
    steps = {}
    for line in (work / "run" / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "stage_time" and rec.get("depth") == 1:
            steps[rec["stage"]] = round(steps.get(rec["stage"], 0.0) + rec["seconds"], 2)
    record["stage_seconds"] = steps
    return record


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reduced", action="store_true", help="small shapes on the smoke profile (what the tests run)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: book/results/gpu_check.json on CUDA)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = args.out or (ROOT / "book" / "results" / "gpu_check.json" if device == "cuda" else None)
    if out is None:
        p.error("no GPU here: pass --reduced --out FILE to check the script on a CPU")
    profile = "smoke" if args.reduced else "voc12"
    record = {
        "device": device,
        "reduced": args.reduced,
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "sampler": sampler_agreement(device, *((16, 8, 2) if args.reduced else (2048, 32, 16))),
        "plan": plan(profile),
    }
    with tempfile.TemporaryDirectory() as tmp:
        record["pipeline"] = toy_pipeline(profile, device, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    s = record["sampler"]
    print(
        f"sampler paths: output differs by {s['output_max_abs_diff']:.2e}, "
        f"offset grads by {s['offset_grad_relative']:.2e} (relative)"
    )
    return 0 if record["pipeline"]["returncode"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
