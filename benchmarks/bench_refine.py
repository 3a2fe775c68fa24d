"""Pseudo-mask throughput and memory of IRN's refinement (boundary map + sparse random walk).

For each backbone (``small`` with strides [1, 2, 2, 1], ``resnet50`` with IRN's [2, 2, 2, 1], random
weights) and input size (128 and 512 px) it times :func:`esol_lib.models.boundary.boundary_map` +
:func:`esol_lib.method.irn.pseudo_mask` (radius 5, β 10, exp_times 8 → 256 walk steps) on a few random
images with two classes, and reports images/s, the peak memory the case added, and the size of the
sparse transition matrix against the ``N²`` entries of IRN's dense one.

Every case runs in a fresh subprocess, so its peak resident set (``ru_maxrss``) minus the resident
set before the timed work is that case's own peak (on GPU: ``torch.cuda.max_memory_allocated``).

    python benchmarks/bench_refine.py                 # all four cases
    python benchmarks/bench_refine.py --sizes 128     # a subset
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

BACKBONES = {"small": [1, 2, 2, 1], "resnet50": [2, 2, 2, 1]}


def _images(size: int, n: int) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Random normalised images and two smooth CAM blobs per image (classes 1 and 2)."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, cams = [], []
    for _ in range(n):
        images.append(torch.from_numpy(g.standard_normal((3, size, size)).astype(np.float32)))
        blobs = [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02) for cy, cx in g.uniform(0.2, 0.8, (2, 2))]
        cams.append(np.stack(blobs).astype(np.float32))
    return images, cams


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_case(backbone: str, size: int, n: int, radius: int, exp_times: int, device: str) -> dict:
    """One case, in this process: returns its timings and memory as a dict."""
    from esol_lib.method.affinity import affinity_pairs
    from esol_lib.method.irn import pseudo_mask, transition_matrix
    from esol_lib.models import build_backbone
    from esol_lib.models.boundary import BoundaryNet, boundary_map

    torch.manual_seed(0)
    dev = torch.device(device)
    net = BoundaryNet(build_backbone(backbone, BACKBONES[backbone])).to(dev).eval()
    images, cams = _images(size, n)
    with torch.no_grad():  # warm-up on a small input (allocator, kernels)
        pseudo_mask(
            cams[0][:, :32, :32], [1, 2], boundary_map(net, images[0][:, :32, :32].to(dev)), radius=radius, exp_times=1
        )
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mib()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    for image, cam in zip(images, cams):
        edge = boundary_map(net, image.to(dev))
        mask = pseudo_mask(cam, [1, 2], edge, radius=radius, beta=10.0, exp_times=exp_times, bg_thres=0.25)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    h, w = edge.shape
    nnz = transition_matrix(edge, radius, 10.0)._nnz()
    out = {
        "backbone": backbone,
        "size": size,
        "images": n,
        "device": str(dev),
        "seconds": seconds,
        "img_per_s": n / seconds,
        "rss_before_mib": rss0,
        "peak_rss_delta_mib": max(peak, rss0) - max(peak0, rss0),
        "walk_h": h,
        "walk_w": w,
        "N": h * w,
        "nnz": nnz,
        "pairs": len(affinity_pairs(radius)),
        "mask_classes": sorted(int(v) for v in np.unique(mask)),
    }
    if dev.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _subprocess(args: argparse.Namespace, backbone: str, size: int, n: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--case",
        backbone,
        str(size),
        str(n),
        "--radius",
        str(args.radius),
        "--exp-times",
        str(args.exp_times),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    head = (
        f"{'backbone':<9} {'size':>5} {'imgs':>4} {'img/s':>7} {'s/img':>7} {'walk grid':>10} {'N':>7} "
        f"{'nnz':>10} {'N^2':>14} {'dense MiB':>10} {'sparse MiB':>10} {'peak+ MiB':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        dense = r["N"] ** 2 * 4 / 2**20
        sparse = (r["nnz"] * 8 + (r["N"] + 1) * 4) / 2**20  # float32 values + int32 columns + row pointers
        peak = r.get("cuda_peak_mib", r["peak_rss_delta_mib"])
        lines.append(
            f"{r['backbone']:<9} {r['size']:>5} {r['images']:>4} {r['img_per_s']:>7.2f} "
            f"{1 / r['img_per_s']:>7.2f} {str(r['walk_h']) + 'x' + str(r['walk_w']):>10} {r['N']:>7} "
            f"{r['nnz']:>10,} {r['N'] ** 2:>14,} {dense:>10,.0f} {sparse:>10.1f} {peak:>9.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 512])
    p.add_argument("--images", type=int, default=0, help="images per case (default: 4 at <=128 px, 2 above)")
    p.add_argument("--radius", type=int, default=5)
    p.add_argument("--exp-times", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--case", nargs=3, metavar=("BACKBONE", "SIZE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        backbone, size, n = args.case[0], int(args.case[1]), int(args.case[2])
        print(json.dumps(run_case(backbone, size, n, args.radius, args.exp_times, args.device)))
        return
    print(
        f"IRN pseudo masks: radius {args.radius}, beta 10, exp_times {args.exp_times} "
        f"({2**args.exp_times} walk steps), device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; random weights, 2 classes per image"
    )
    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            n = args.images or (4 if size <= 128 else 2)
            rows.append(_subprocess(args, backbone, size, n))
            print(f"  done {backbone} {size}px: {rows[-1]['seconds']:.1f} s for {n} images", flush=True)
    print()
    print(_table(rows))
    print(
        "\nN = walk grid pixels; nnz = stored entries of the sparse transition matrix (<= N*(2*pairs+1), "
        f"pairs = {rows[0]['pairs']}); N^2 / dense MiB = IRN's dense float32 matrix, never built here; "
        "peak+ = peak memory added by the case (RSS on CPU, CUDA allocator on GPU)."
    )


if __name__ == "__main__":
    main()
