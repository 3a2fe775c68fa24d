"""CAM inference speed: images/s of Eq. (2) for a profile, and the cost of one multi-scale
CAM relative to the plain forward passes it needs.

    python benchmarks/bench_cam.py --config cpu [--images 64] [--batch 8]

Weights are random (speed does not depend on them); the images are the profile's input size.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from esol_lib.method.cam import multiscale_cam
from esol_lib.models import build_classifier
from esol_lib.runtime.config_io import load_config


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the profile's)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    emoji = cfg.data.generator == "emoji"
    classes = 20 if emoji else cfg.data.synth.num_classes  # the emoji benchmark has VOC's 20 classes
    model = build_classifier(dataclass_no_weights(cfg.model), classes).to(device).eval()
    generated = (cfg.data.emoji if emoji else cfg.data.synth).size
    size = args.size or (generated if not cfg.data.root else cfg.train_cam.crop_size)
    x = torch.randn(args.batch, 3, size, size, device=device)
    scales, flip = cfg.cam.scales, cfg.cam.flip
    batches = max(1, args.images // args.batch)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():

        def full():
            for _ in range(batches):
                multiscale_cam(model.cam, x, scales, flip)
            sync()

        def plain():  # the forward passes Eq. (2) needs, without resizing, ReLU, merging or normalising
            for _ in range(batches):
                for s in scales:
                    xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                    model.cam(torch.cat([xs, xs.flip(-1)]) if flip else xs)
            sync()

        def single():  # one plain forward at scale 1
            for _ in range(batches):
                model.cam(x)
            sync()

        t_full, t_plain, t_single = _time(full, 2), _time(plain, 2), _time(single, 2)
    n = batches * args.batch
    print(
        f"device {device}, threads {torch.get_num_threads()}, profile {args.config}, {size}px, batch {args.batch}, "
        f"scales {list(scales)}, flip {flip}"
    )
    print(f"multi-scale CAM (Eq. 2):        {n / t_full:8.1f} images/s")
    print(
        f"its forward passes alone:       {n / t_plain:8.1f} images/s  (overhead of merging: "
        f"{100 * (t_full / t_plain - 1):.0f} %)"
    )
    print(
        f"one single-scale forward:       {n / t_single:8.1f} images/s  (multi-scale CAM costs "
        f"{t_full / t_single:.1f}x one forward)"
    )


def dataclass_no_weights(model_cfg):
    import dataclasses

    return dataclasses.replace(model_cfg, pretrained=None)


if __name__ == "__main__":
    main()
