"""How far AdvCAM's climb gets on a run's baseline: the score, the regulariser and the map, step by step.

    python benchmarks/advcam_climb.py --run runs/emoji-seeds/seed1 [--images 4] [--lams 7 0] [--steps 27]
                                      [--json book/results/advcam_climb.json]

A diagnosis, not a setting: for the first ``--images`` training images (each image's first labelled class,
scale 1.0, the pair [image, flip] as AdvCAM climbs it) it runs the ``T - 1`` steps of
:func:`esol_lib.method.advcam.anti_adversarial_step` at each ``λ`` of ``--lams`` (the run's other ``advcam``
settings) and prints the score term before the first and the last step, the last regulariser, the share of
cells over 0.5 and over 0.15 of the max-normalised map before and after, and how far the image moved
(max |x_T - x_0| in normalised units). A climb that the regulariser stops shows a flat score, an image that
barely moved and the same map; the rule's verdict on AdvCAM (``benchmarks/controls.py``) is not changed by it.
With ``--json`` the rows are also written there (chapter 10 renders the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--lams", type=float, nargs="+", default=[7.0, 0.0])
    p.add_argument("--steps", type=int, default=None, help="default: the run's advcam.steps")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = p.parse_args()

    import torch

    from esol_lib.data.transforms import to_tensor
    from esol_lib.method.advcam import anti_adversarial_step, attribution_map
    from esol_lib.runtime.rundir import RunDir
    from esol_lib.steps._shared import load_baseline, split_dataset

    run = RunDir(args.run)
    cfg = run.load_config()
    a = cfg.advcam
    steps = args.steps or a.steps
    ds = split_dataset(cfg, cfg.data.cam_split).first(args.images)
    model = load_baseline(run, cfg, ds.num_classes, torch.device("cpu"))
    print(f"{run.root}: first {len(ds)} images of {cfg.data.cam_split}, {steps} iterations, scale 1.0")
    print("| λ | image | class | score first → last | regulariser, last | area > 0.5 | area > 0.15 | max |Δx| |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for lam in args.lams:
        for i in range(len(ds)):
            sample = ds[i]
            x = to_tensor(sample["image"], cfg.data.mean, cfg.data.std)[None]
            c = int(torch.nonzero(sample["label"] > 0.5)[0])
            start = torch.cat([x, x.flip(-1)])
            pair, init, scores, reg = start, None, [], 0.0
            a0 = attribution_map(model, start, c, attribution=a.attribution)
            for _ in range(steps - 1):
                out = anti_adversarial_step(
                    model,
                    pair,
                    c,
                    init,
                    step_size=a.step_size,
                    lam=lam,
                    mask_threshold=a.mask_threshold,
                    reg_reduction=a.reg_reduction,
                    attribution=a.attribution,
                )
                pair, init = out.image, out.init
                scores.append(float(out.score))
                reg = float(out.regulariser)
            at = attribution_map(model, pair, c, attribution=a.attribution)
            n0, nt = a0 / (a0.max() + 1e-5), at / (at.max() + 1e-5)
            share = lambda m, t: float((m > t).float().mean())  # noqa: E731
            rows.append(
                {
                    "lam": lam,
                    "image": sample["id"],
                    "class": ds.classes[c],
                    "score_first": round(scores[0], 3),
                    "score_last": round(scores[-1], 3),
                    "regulariser_last": round(reg, 4),
                    "area05": [round(share(n0, 0.5), 3), round(share(nt, 0.5), 3)],
                    "area015": [round(share(n0, 0.15), 3), round(share(nt, 0.15), 3)],
                    "moved": round(float((pair - start).abs().max()), 3),
                }
            )
            print(
                f"| {lam:g} | {sample['id']} | {ds.classes[c]} | {scores[0]:.2f} → {scores[-1]:.2f} | {reg:.3f} | "
                f"{share(n0, 0.5):.3f} → {share(nt, 0.5):.3f} | {share(n0, 0.15):.3f} → {share(nt, 0.15):.3f} | "
                f"{float((pair - start).abs().max()):.2f} |"
            )
    if args.json:
        from esol_lib.runtime.config_io import settings_digest
        from esol_lib.runtime.machine import machine_record

        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "python benchmarks/advcam_climb.py " + " ".join(sys.argv[1:]),
            "run_profile": cfg.profile,
            "settings_digest": settings_digest(cfg),
            "steps": steps,
            "advcam": {k: getattr(a, k) for k in ("step_size", "mask_threshold", "reg_reduction", "attribution")},
            "machine": machine_record(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
