"""DeepLab-v2 throughput and peak memory: training (images/s) and inference (images/s) per backbone and size.

Run from the repository root::

    .venv/bin/python benchmarks/bench_seg.py                      # small + resnet101, 128 px and 512 px
    .venv/bin/python benchmarks/bench_seg.py --backbones small --sizes 128 --batch 4
    .venv/bin/python benchmarks/bench_seg.py --json out.json      # also write the rows as JSON

Every model is DeepLab-v2 as :func:`esol_lib.models.deeplab.build_deeplab` builds it (random weights, output
stride 8 for the ResNets: strides (2, 2, 1, 1) with atrous layer3/layer4; the ``small`` CPU net at
strides (1, 2, 2, 1)), with 21 classes (VOC) and ASPP rates 6/12/18/24.

- training: forward + :func:`~esol_lib.method.seg_recipe.seg_loss` + backward + SGD step (DeepLab's lr groups)
  on ``--batch`` random crops of ``size``×``size``;
- inference: one forward pass of a single image plus bilinear upsampling to its size and softmax
  (one scale, no flip — :func:`~esol_lib.method.seg_recipe.predict` costs ``len(test_scales) × 2`` of these).

Each (case, mode) runs in its own subprocess, so peak memory is that mode's alone. On CPU the peak is
the process's maximum resident set (``ru_maxrss``) minus its resident set just before the timed
work (the model and the torch library included in the former, not in the delta); ``tracemalloc``
would miss torch's tensors, which its C++ allocator owns. On CUDA it is
``torch.cuda.max_memory_allocated``. Timings: one warm-up iteration, then iterations until
``--budget`` seconds or ``--iters`` iterations, whichever comes first (at least ``--min-iters``);
on CPU a warm-up longer than the budget is itself the measurement (marked in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    """Current resident set size of this process (Linux ``/proc``), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _maxrss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def _timed(step, device, budget: float, max_iters: int, min_iters: int) -> tuple[int, float, float, bool]:
    """Run ``step()`` once to warm up, then repeatedly; return ``(iterations, seconds, warm-up s, warm_only)``.

    When the warm-up alone takes longer than ``budget`` (ResNet-101 at 512 px on a laptop CPU) that
    one iteration is the measurement (``warm_only``), so a case stays around a minute.
    """
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    step()
    sync()
    warm = time.perf_counter() - t0
    if warm >= budget and device.type != "cuda":
        return 1, warm, warm, True
    n, t0 = 0, time.perf_counter()
    while n < max_iters and (n < min_iters or time.perf_counter() - t0 < budget):
        step()
        n += 1
    sync()
    return n, time.perf_counter() - t0, warm, False


def run_case(
    backbone: str,
    size: int,
    mode: str,
    batch: int,
    budget: float,
    max_iters: int,
    min_iters: int,
    device_name: str,
    threads: int | None,
) -> dict:
    """One (backbone, size, mode) measurement in this process; returns a result row."""
    import torch

    from esol_lib.method.seg_recipe import param_groups, seg_loss, upsample_logits
    from esol_lib.models.deeplab import build_deeplab
    from esol_lib.runtime.config import SegConfig
    from esol_lib.runtime.schedule import make_sgd

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    cfg = SegConfig(backbone=backbone, pretrained=None, dilations=[6, 12, 18, 24])
    model = build_deeplab(cfg, 21).to(device)
    n_images = batch if mode == "train" else 1
    x = torch.randn(n_images, 3, size, size, device=device)
    if mode == "train":
        target = torch.randint(0, 21, (n_images, size, size), device=device)
        opt = make_sgd(param_groups(model, 1e-3), 1e-3, momentum=0.9, weight_decay=5e-4)
        model.train()

        def step() -> None:
            loss = seg_loss(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                upsample_logits(model(x), (size, size)).softmax(1)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_mib()
    iters, seconds, warm, warm_only = _timed(step, device, budget, max_iters, min_iters)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        peak_kind = "cuda max_memory_allocated"
    else:
        peak = _maxrss_mib() - rss_before
        peak_kind = "ru_maxrss - rss before"
    return {
        "backbone": backbone,
        "size": size,
        "mode": mode,
        "batch": n_images,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "iters": iters,
        "seconds": round(seconds, 3),
        "images_per_s": round(iters * n_images / seconds, 4),
        "s_per_iter": round(seconds / iters, 4),
        "warmup_s": round(warm, 3),
        "warm_only": warm_only,
        "peak_mib": round(peak, 1),
        "peak_kind": peak_kind,
        "rss_total_mib": round(_maxrss_mib(), 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }


def _child(args: argparse.Namespace, backbone: str, size: int, mode: str) -> dict:
    """Run one case in a fresh interpreter (so ``ru_maxrss`` is this case's peak)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        backbone,
        str(size),
        mode,
        "--batch",
        str(args.batch),
        "--budget",
        str(args.budget),
        "--iters",
        str(args.iters),
        "--min-iters",
        str(args.min_iters),
        "--device",
        args.device,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
    if proc.returncode != 0:
        return {"backbone": backbone, "size": size, "mode": mode, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    head = (
        f"{'backbone':<10} {'size':>5} {'mode':<6} {'batch':>5} {'iters':>5} {'s/iter':>8} {'img/s':>8} {'peak MiB':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backbone']:<10} {r['size']:>5} {r['mode']:<6} failed: {r['error']}")
            continue
        lines.append(
            f"{r['backbone']:<10} {r['size']:>5} {r['mode']:<6} {r['batch']:>5} {r['iters']:>5} "
            f"{r['s_per_iter']:>8.3f} {r['images_per_s']:>8.3f} {r['peak_mib']:>9.0f}"
            + ("  (warm-up iteration only)" if r.get("warm_only") else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=["small", "resnet101"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 512])
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--batch", type=int, default=1, help="training batch size (inference uses 1 image)")
    p.add_argument("--budget", type=float, default=12.0, help="seconds of timed iterations per case")
    p.add_argument("--iters", type=int, default=20, help="at most this many timed iterations")
    p.add_argument("--min-iters", type=int, default=2, help="at least this many timed iterations")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.add_argument("--child", nargs=3, metavar=("BACKBONE", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        backbone, size, mode = args.child
        row = run_case(
            backbone, int(size), mode, args.batch, args.budget, args.iters, args.min_iters, args.device, args.threads
        )
        print(json.dumps(row))
        return 0
    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            for mode in args.modes:
                t0 = time.perf_counter()
                rows.append(_child(args, backbone, size, mode))
                print(f"  {backbone} {size}px {mode}: {time.perf_counter() - t0:.1f} s wall", file=sys.stderr)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"DeepLab-v2 (21 classes, ASPP 6/12/18/24), device {args.device}, {os.cpu_count()} CPUs "
        f"(load average now {load}); peak = {rows[0].get('peak_kind', '?') if rows else '?'}"
    )
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


if __name__ == "__main__":
    sys.exit(main())
