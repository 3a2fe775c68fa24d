"""esol beside the tools a user would otherwise pick, on the same inputs, in one process per case.

    python benchmarks/compare.py                       # every comparison, writes book/results/compare.json
    python benchmarks/compare.py --only cam walk       # some of them
    python benchmarks/compare.py --quick --out /tmp/c.json   # tiny sizes: checks the script, not the speed

Comparisons (each is one Markdown table on stdout and one entry of the JSON file):

``cam``      Multi-scale CAMs (Eq. 2, the profile's scales + flip) with :func:`esol_lib.method.cam.multiscale_cam`,
             against a per-image, per-scale loop written as IRN's ``make_cam.py`` does it, against
             ``pytorch-grad-cam``'s ``GradCAM`` looped over the same scales and flips (on a GAP + linear
             head GradCAM is the CAM), and against the floor: the plain forward passes the scales need.
``sampler``  The deformable sampler's forward + backward (Eq. 4), esol's ``grid_sample`` path against
             ``torchvision.ops.deform_conv2d`` on the same tensors, at the ESOL stages' shapes.
``walk``     IRN's random walk: esol's sparse walk against the dense one (IRN's ``trans_mat`` squared
             ``exp_times`` times), time and peak memory, up to where the dense one no longer fits.
``crf``      DenseCRF (pydensecrf) per image, one process against esol's worker pool.

``suite``    (only when asked: ``--only suite``) ``make test``'s command, timed, with each test file's
             share, beside the last ``make book``'s chapters and stages (``_build/executed/timing.json``).

Weights and images are random: speed does not depend on them. Each case runs in a fresh Python
process, so its peak resident memory is its own. Written to ``book/results/compare.json`` (entries
of other comparisons and devices are kept) and, from it, ``book/performance.md``, the book's
Performance page (:func:`esol_lib.book.performance.performance_page`; ``esol book`` regenerates it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esol_lib.book.performance import COMPARISONS, markdown_table, performance_page
from esol_lib.method.cam import cam_batch_size, multiscale_cam
from esol_lib.method.crf import crf_from_labels
from esol_lib.method.irn import random_walk, transition_matrix
from esol_lib.models import build_backbone, build_classifier
from esol_lib.models.samplers import deform_conv2d_sampled
from esol_lib.runtime.config_io import load_config
from esol_lib.runtime.parallel import cpu_workers, map_ordered

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "book" / "results" / "compare.json"
PAGE = ROOT / "book" / "performance.md"  # esol book regenerates it from DEFAULT_OUT as well


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], device: torch.device, repeats: int, budget: float = 20.0) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up (fewer when one call takes over ``budget`` s)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if sum(times) > budget:
            break
    return min(times)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    """This process image's peak resident set (``VmHWM``; ``ru_maxrss`` would include the parent's,
    which an ``exec`` keeps)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str, kwargs: dict) -> dict:
    """One case in this process (the ``--case`` child): its result plus ``peak_mib``, the resident
    memory it added (CUDA: the allocator's peak)."""
    rss0 = _rss_mib()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out = CASES[name](**kwargs)
    out["peak_mib"] = max(0.0, _peak_rss_mib() - rss0)
    if out.get("device") == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def isolated(name: str, **kwargs) -> dict:
    """Case ``name`` in a fresh Python process, so its peak memory is its own and a crash or an
    out-of-memory kill is a row with ``error`` (a forked child can hang in torch's thread pool)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", name, json.dumps(kwargs)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {**kwargs, "error": f"the case failed (exit {proc.returncode}; out of memory?): {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- 1. multi-scale CAMs


class _CamHead(nn.Module):
    """The classifier with its last ReLU as a module, so GradCAM can hook the final feature map F."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        f = self.act(m.extra2(F.relu(m.extra1(m.features(x)))))
        return m.logits_from_head(f)


def irn_style_cams(model: nn.Module, images: torch.Tensor, scales, flip: bool) -> list[torch.Tensor]:
    """IRN's ``make_cam.py`` loop: one image at a time, one forward per scale on (image, mirror)."""
    out = []
    for image in images:
        h, w = image.shape[-2:]
        total = None
        for s in scales:
            x = (
                image[None]
                if s == 1.0
                else F.interpolate(image[None], scale_factor=s, mode="bilinear", align_corners=False)
            )
            if flip:
                x = torch.cat([x, x.flip(-1)])
            cam = F.relu(model.cam(x))
            cam = cam[0] + cam[1].flip(-1) if flip else cam[0]
            cam = F.interpolate(cam[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            total = cam if total is None else total + cam
        out.append(total / (total.flatten(1).max(1).values[:, None, None] + 1e-5))
    return out


def gradcam_cams(cam, images: torch.Tensor, target: int, scales, flip: bool) -> np.ndarray:
    """``pytorch-grad-cam``'s GradCAM looped over the scales and flips, summed and normalised as Eq. (2)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    b, _, h, w = images.shape
    total = np.zeros((b, h, w), np.float32)
    for s in scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * x.shape[0])  # (B', h_s, w_s) in [0, 1]
        maps = torch.from_numpy(np.ascontiguousarray(maps))[:, None]
        if flip:
            maps = maps[:b] + maps[b:].flip(-1)
        total += F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
    return total / (total.reshape(b, -1).max(1)[:, None, None] + 1e-5)


def cam_case(size: int, images: int, batch: int, device: str, repeats: int) -> dict:
    cfg = load_config("cpu")
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_classifier(dataclasses.replace(cfg.model, pretrained=None), 20).to(dev).eval()
    scales, flip = tuple(cfg.cam.scales), True
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # as esol's make-cam runs it
    x = torch.randn(images, 3, size, size, device=dev)
    batches = [x[i : i + batch] for i in range(0, images, batch)]
    row: dict = {"size": size, "images": images, "batch": batch, "device": device, "scales": list(scales)}
    with torch.inference_mode():
        row["esol_batch8_s"] = best_time(
            lambda: [multiscale_cam(model.cam, x[i : i + 8], scales, flip) for i in range(0, images, 8)], dev, repeats
        )

        def floor():
            for xb in batches:
                for s in scales:
                    xs = xb if s == 1.0 else F.interpolate(xb, scale_factor=s, mode="bilinear", align_corners=False)
                    model.cam(torch.cat([xs, xs.flip(-1)]))

        row["floor_s"] = best_time(floor, dev, repeats)
        row["esol_s"] = best_time(lambda: [multiscale_cam(model.cam, xb, scales, flip) for xb in batches], dev, repeats)
        row["irn_loop_s"] = best_time(lambda: irn_style_cams(model, x, scales, flip), dev, repeats)
        ours = torch.cat([multiscale_cam(model.cam, xb, scales, flip) for xb in batches])
        loop = torch.stack(irn_style_cams(model, x, scales, flip))
        row["irn_loop_max_diff"] = float((ours - loop).abs().max())
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        row["gradcam_s"] = None
        row["gradcam_note"] = "pytorch-grad-cam is not installed: pip install -e '.[bench]'"
        return row
    wrapped = _CamHead(model).eval()
    with GradCAM(model=wrapped, target_layers=[wrapped.act]) as cam:
        row["gradcam_s"] = best_time(lambda: [gradcam_cams(cam, xb, 0, scales, flip) for xb in batches], dev, repeats)
        theirs = np.concatenate([gradcam_cams(cam, xb, 0, (1.0,), False) for xb in batches])
    with torch.inference_mode():
        ours1 = torch.cat([multiscale_cam(model.cam, xb, (1.0,), False) for xb in batches])[:, 0].cpu().numpy()
    # GradCAM min-max normalises each map; Eq. (2) divides by the maximum: compare the patterns.
    row["gradcam_corr"] = float(np.corrcoef(ours1.ravel(), theirs.ravel())[0, 1])
    return row


def compare_cams(args) -> dict:
    cfg = load_config("cpu")
    sizes = [32, 48] if args.quick else [cfg.data.emoji.size, 320]
    rows = []
    for size in sizes:
        n = 4 if args.quick else (32 if size <= 128 else 8)
        row = isolated(
            "cam", size=size, images=n, batch=cam_batch_size(args.device), device=args.device, repeats=args.repeats
        )
        rows.append(row)
        _progress("cam", row)
    return {"rows": rows, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- 2. deformable sampler


def sampler_case(batch: int, channels: int, side: int, device: str, repeats: int) -> dict:
    from torchvision.ops import deform_conv2d

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=g).to(dev)
    weight = (torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels**0.5)).to(dev)
    offset0 = (torch.randn(batch, 18, side, side, generator=g) * 1.5).to(dev)  # a few cells: an ESOL stage's range
    row: dict = {"batch": batch, "channels": channels, "side": side, "device": device}

    def step(fn):
        offset = offset0.clone().requires_grad_(True)  # only the offsets learn (A.1.3); x is cached, w frozen
        out = fn(x, offset, weight)
        out.square().mean().backward()
        return out, offset.grad

    ours = lambda x_, o, w: deform_conv2d_sampled(x_, o, w)  # noqa: E731
    theirs = lambda x_, o, w: deform_conv2d(x_, o, w, padding=(1, 1))  # noqa: E731
    row["esol_s"] = best_time(lambda: step(ours), dev, repeats)
    row["torchvision_s"] = best_time(lambda: step(theirs), dev, repeats)
    (a, ga), (b, gb) = step(ours), step(theirs)
    row["max_diff"] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
    row["grad_max_diff"] = float((ga - gb).abs().max() / gb.abs().max().clamp_min(1e-12))
    return row


def compare_sampler(args) -> dict:
    cpu, voc = load_config("cpu"), load_config("voc12")
    cpu_channels, cpu_side = _feature_shape(cpu.model, cpu.data.emoji.size)
    voc_channels, voc_side = _feature_shape(voc.model, voc.train_cam.crop_size)
    full_batch = voc.expansion.batch_size
    shapes = (
        [(2, 16, 8), (2, 16, 12)]
        if args.quick
        else [
            (cpu.expansion.batch_size, cpu_channels, cpu_side),
            (full_batch, cpu_channels, voc_side),
            # ResNet-50's 2048 channels: batch 16 needs ~10 GB and minutes per step on 2 cores.
            (full_batch if args.device == "cuda" else 2, voc_channels, voc_side),
        ]
    )
    rows = []
    for batch, channels, side in shapes:
        row = isolated("sampler", batch=batch, channels=channels, side=side, device=args.device, repeats=args.repeats)
        rows.append(row)
        _progress("sampler", row)
    default = "torchvision deform_conv2d" if args.device == "cuda" else "esol grid_sample"
    return {"rows": rows, "default": default, "threads": torch.get_num_threads()}


def _feature_shape(model_cfg, size: int) -> tuple[int, int]:
    """(channels, side) of the backbone's last feature map for a ``size`` px image: the samplers' input."""
    backbone = build_backbone(model_cfg.backbone, model_cfg.strides, None).eval()
    with torch.inference_mode():
        out = backbone(torch.zeros(1, 3, size, size))["out"]
    return out.shape[1], out.shape[-1]


# ----------------------------------------------------------------------------- 3. random walk


def dense_walk(scores: torch.Tensor, boundary: torch.Tensor, radius: int, beta: float, exp_times: int) -> torch.Tensor:
    """The direct reading of IRN (``to_transition_matrix`` + ``propagate_to_edge``): a dense ``(N, N)``
    transition matrix, squared ``exp_times`` times, then one product. Built from the same affinities
    as esol's sparse matrix, so the two results agree."""
    c, h, w = scores.shape
    trans = transition_matrix(boundary, radius, beta).to_dense()
    for _ in range(exp_times):
        trans = trans @ trans
    v = (scores * (1.0 - boundary)).reshape(c, h * w).t()
    return (trans @ v).t().reshape(c, h, w)


def walk_case(
    side: int, method: str, device: str, repeats: int, radius: int = 5, beta: float = 10.0, exp_times: int = 8
) -> dict:
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    boundary = torch.rand(side, side, generator=g).pow(4).to(dev)  # mostly low, a few edges
    scores = torch.rand(3, side, side, generator=g).to(dev)
    fn = random_walk if method == "sparse" else dense_walk
    seconds = best_time(lambda: fn(scores, boundary, radius, beta, exp_times), dev, repeats, budget=10.0)
    out = fn(scores, boundary, radius, beta, exp_times)
    return {"side": side, "method": method, "device": device, "seconds": seconds, "checksum": float(out.double().sum())}


def compare_walk(args) -> dict:
    sides = [8, 16] if args.quick else [16, 32, 64, 128, 256, 512]
    dense_limit = 16 if args.quick else 64  # measured up to here; the dense squaring is O(N^3)
    memory = _memory_gib()
    rows = []
    for side in sides:
        n = side * side
        row: dict = {"side": side, "image_px": 4 * side, "N": n, "dense_matrix_gib": 3 * n * n * 4 / 2**30}
        sparse = isolated("walk", side=side, method="sparse", device=args.device, repeats=args.repeats)
        row.update(sparse_s=sparse.get("seconds"), sparse_peak_mib=sparse.get("peak_mib"))
        if "error" in sparse:
            row["sparse_error"] = sparse["error"]
        if row["dense_matrix_gib"] > 0.8 * memory:
            row["dense_note"] = f"does not fit: 3 dense matrices of {n:,}² float32 = {row['dense_matrix_gib']:,.0f} GiB"
        elif side > dense_limit:
            last = next(r for r in reversed(rows) if r.get("dense_s"))
            row["dense_est_s"] = last["dense_s"] * (n / last["N"]) ** 3
            row["dense_note"] = f"not run: O(N³) from {last['side']}² gives ~{row['dense_est_s']:,.0f} s"
        else:
            dense = isolated("walk", side=side, method="dense", device=args.device, repeats=args.repeats)
            row.update(dense_s=dense.get("seconds"), dense_peak_mib=dense.get("peak_mib"))
            if dense.get("error"):
                row["dense_note"] = dense["error"]
            elif sparse.get("checksum") is not None:
                row["agree"] = abs(dense["checksum"] - sparse["checksum"]) <= 1e-3 * abs(sparse["checksum"]) + 1e-6
        rows.append(row)
        _progress("walk", row)
    return {
        "rows": rows,
        "memory_gib": memory,
        "radius": 5,
        "beta": 10.0,
        "exp_times": 8,
        "threads": torch.get_num_threads(),
    }


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


# ----------------------------------------------------------------------------- 4. DenseCRF


_CRF_INPUTS: list = []


def _crf_one(index: int) -> np.ndarray:
    image, labels = _CRF_INPUTS[index]
    return crf_from_labels(image, labels, 4)


def crf_case(size: int, images: int, repeats: int) -> dict:
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    _CRF_INPUTS.clear()
    for _ in range(images):
        labels = np.zeros((size, size), np.int64)
        for k, (cy, cx) in enumerate(g.uniform(0.2, 0.8, (3, 2)) * size, start=1):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < (size / 6) ** 2] = k
        image = (g.integers(0, 40, (size, size, 3)) + 60 * labels[..., None]).astype(np.uint8)
        _CRF_INPUTS.append((image, labels))
    items = list(range(images))
    cpu = torch.device("cpu")
    serial = best_time(lambda: [_crf_one(i) for i in items], cpu, repeats)
    pool = best_time(lambda: list(map_ordered(_crf_one, items)), cpu, repeats)
    return {"size": size, "images": images, "workers": cpu_workers(), "serial_s": serial, "pool_s": pool}


def compare_crf(args) -> dict:
    rows = []
    for size, n in [(32, 4), (48, 4)] if args.quick else [(64, 64), (320, 8)]:
        row = isolated("crf", size=size, images=n, repeats=args.repeats)
        rows.append(row)
        _progress("crf", row)
    return {"rows": rows}


# ----------------------------------------------------------------------------- 5. test suite and book


_DURATION = re.compile(r"^\s*([0-9.]+)s\s+(setup|call|teardown)\s+(tests/[^:\s]+)")


def compare_suite(args) -> dict:
    """``make test``'s command, timed, with each test file's share (pytest's ``--durations``), and the
    last ``make book``'s per-chapter and per-stage times (``_build/executed/timing.json``) beside it."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", "--durations-min=0"]
    if args.quick:
        cmd += ["-m", "not slow", "tests/test_performance.py"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    per_file: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        m = _DURATION.match(line)
        if m:
            per_file[m.group(3)] = per_file.get(m.group(3), 0.0) + float(m.group(1))
    summary = next((line.strip("= ") for line in reversed(proc.stdout.splitlines()) if " in " in line), "")
    rows = [{"file": f, "seconds": round(sec, 1)} for f, sec in sorted(per_file.items(), key=lambda kv: -kv[1])]
    book = ROOT / "_build" / "executed" / "timing.json"
    return {
        "rows": rows,
        "wall_s": round(wall, 1),
        "exit": proc.returncode,
        "summary": summary,
        "command": "make test" if not args.quick else " ".join(cmd[1:]),
        "book": json.loads(book.read_text(encoding="utf-8")) if book.is_file() else None,
    }


# ----------------------------------------------------------------------------- running


RUNNERS = {
    "cam": compare_cams,
    "sampler": compare_sampler,
    "walk": compare_walk,
    "crf": compare_crf,
    "suite": compare_suite,
}
CASES = {"cam": cam_case, "sampler": sampler_case, "walk": walk_case, "crf": crf_case}
assert set(RUNNERS) == set(COMPARISONS) and set(CASES) <= set(RUNNERS)
CPU_SET = list(CASES)  # the default: about 10 minutes on 2 cores; "suite" (make test) only when asked


def _progress(name: str, row: dict) -> None:
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if not isinstance(v, list)}
    print(f"  [{name}] {shown}", file=sys.stderr, flush=True)


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": cpu_workers(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _commit(),
    }


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="The JSON file feeds the book's performance page."
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(RUNNERS),
        default=CPU_SET,
        help="comparisons to run (default: %(default)s; 'suite' times make test, ~10 min more)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; the fastest counts")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the script runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to update (default: {DEFAULT_OUT})")
    p.add_argument("--case", nargs=2, metavar=("NAME", "KWARGS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case[0], json.loads(args.case[1]))))
        return {}
    if args.quick:
        args.repeats = 1
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible; leave --device out to run on the CPU")
    try:
        record = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        p.error(f"--out {args.out}: unreadable ({e}); delete it or pass another --out")
    results = record.setdefault(args.device, {})
    start = time.perf_counter()
    for name in args.only:
        t0 = time.perf_counter()
        print(f"{name}: {COMPARISONS[name]} ...", file=sys.stderr, flush=True)
        results[name] = {**RUNNERS[name](args), "machine": machine(), "quick": args.quick}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(markdown_table(name, results[name]) + "\n", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    if args.out.resolve() == DEFAULT_OUT.resolve():  # the committed page, so the README's link shows the numbers
        PAGE.write_text(performance_page(record), encoding="utf-8")
    print(
        f"{len(args.only)} comparison(s) in {time.perf_counter() - start:.0f} s; written to {args.out}", file=sys.stderr
    )
    return record


if __name__ == "__main__":
    main()
