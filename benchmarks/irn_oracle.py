"""Is IRN limited by its boundary labels or by its machinery? (a diagnostic)

    python benchmarks/irn_oracle.py --run runs/book-cpu [--stage baseline] [--images 200]
                                    [--boundary trained|drawn] [--bg-thres 0.1 0.25 0.4]

Two oracles — they read masks no WSSS method may use — that each answer one question:

- ``--boundary trained`` (default): train IRN's boundary branch (:class:`esol_lib.models.boundary.BoundaryNet`,
  same backbone, loss, crops and step count as ``esol refine``) on the *ground-truth* masks of the
  CAM split instead of the IR labels made from CAMs. If the boundary branch learned from right
  labels, would the random walk turn these CAMs into better masks than the seeds?
- ``--boundary drawn``: no network at all. The boundary map is drawn from the ground truth (1 on
  every pixel within one pixel of a class edge or of the ignored outline, 0 elsewhere). This checks
  the rest of the machinery — random walk, upsampling, background score — on a perfect boundary.

Then the pseudo masks of the stage's CAMs are scored at each ``--bg-thres`` (default: the run's
``irn.sem_seg_bg_thres``). Compare with ``metrics/mask-<stage>_<split>.json`` (IR-label boundaries)
and ``metrics/<stage>_<split>.json`` (the seeds). Needs a run whose ``esol refine`` finished.

It prints one JSON row of mIoU, precision and recall per background score. On the toy benchmark
its answer was: IRN's inputs (IR labels that cover little of each object, features trained from
scratch), not its walk (a drawn boundary lifted the CAMs far above their seeds). That is why the
``cpu`` profile moved to the emoji benchmark with a pretrained backbone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def drawn_boundary(mask: np.ndarray) -> torch.Tensor:
    """A perfect boundary map ``(H, W)`` from a true mask: 1 within one pixel of a class edge or of 255."""
    lab = torch.as_tensor(mask.astype(np.int64))[None, None].float()
    edge = (lab == 255).float()
    for dy, dx in ((0, 1), (1, 0)):  # a pixel whose right / lower neighbour has another label
        diff = (lab[..., dy:, dx:] != lab[..., : lab.shape[-2] - dy, : lab.shape[-1] - dx]).float()
        edge[..., dy:, dx:] = torch.maximum(edge[..., dy:, dx:], diff)
    return F.max_pool2d(edge, 3, 1, 1)[0, 0]


def train_on_ground_truth(run, cfg, ds):
    """IRN's boundary branch trained as ``esol refine`` trains it, on the true masks instead of IR labels."""
    from esol_lib.data.transforms import AugmentedDataset, IRNTrainTransform
    from esol_lib.method.affinity import affinity_loss
    from esol_lib.models.boundary import BoundaryNet
    from esol_lib.runtime.schedule import PolyLR, stage_sgd, stage_steps
    from esol_lib.steps.refinement import TRAIN_RADIUS_FACTOR, irn_backbone, labels_at

    ic = cfg.irn

    class _GroundTruth(torch.utils.data.Dataset):  # the IR-label dataset's layout, filled with real masks
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int) -> dict:
            s = ds[i]
            return {"id": s["id"], "image": s["image"], "mask": s["mask"]}

    data = AugmentedDataset(_GroundTruth(), IRNTrainTransform(ic.crop_size, cfg.data.mean, cfg.data.std), seed=cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=ic.batch_size, shuffle=True, drop_last=True)
    steps = stage_steps(ic, len(loader))
    model = BoundaryNet(irn_backbone(run, cfg, ds.num_classes, "cpu"))
    opt = stage_sgd(model.trainable_parameters(), ic)
    sched = PolyLR(opt, steps)  # esol refine's optimizer and schedule
    model.train()
    done, bar = 0, tqdm(total=steps, desc="oracle boundary branch", unit="step")
    while done < steps:
        for batch in loader:
            edge = model(batch["image"])
            loss, _ = affinity_loss(
                edge, labels_at(batch["ir_label"], tuple(edge.shape[-2:])), TRAIN_RADIUS_FACTOR * ic.radius
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if done == steps:
                break
    bar.close()
    return model.eval(), steps


def main() -> None:
    from esol_lib.data.transforms import to_tensor
    from esol_lib.method.cam import load_cam
    from esol_lib.method.irn import mask_from_scores, walked_scores
    from esol_lib.method.metrics import confusion_matrix, read_metrics, summarize
    from esol_lib.models.boundary import boundary_map
    from esol_lib.runtime.engine import seed_everything
    from esol_lib.runtime.rundir import RunDir
    from esol_lib.steps.refinement import stage_setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder whose `esol refine` finished")
    parser.add_argument("--stage", default="baseline")
    parser.add_argument("--images", type=int, default=200, help="images of the CAM split to score")
    parser.add_argument(
        "--boundary",
        choices=("trained", "drawn"),
        default="trained",
        help="trained: boundary branch trained on the true masks; drawn: the true edges",
    )
    parser.add_argument(
        "--bg-thres",
        type=float,
        nargs="+",
        default=None,
        help="background scores of the pseudo masks (default: the run's irn.sem_seg_bg_thres)",
    )
    args = parser.parse_args()
    run = RunDir(Path(args.run))
    cfg, split, ds = stage_setup(run, args.stage, None)
    ic = cfg.irn
    seed_everything(cfg.seed)
    row = {"stage": args.stage, "split": split, "boundary": args.boundary, "images": int(min(args.images, len(ds)))}
    model = None
    if args.boundary == "trained":
        model, row["steps"] = train_on_ground_truth(run, cfg, ds)
    thresholds = args.bg_thres or [ic.sem_seg_bg_thres]
    n = ds.num_classes + 1
    conf = {t: np.zeros((n, n), np.int64) for t in thresholds}
    for k in tqdm(range(row["images"]), desc=f"pseudo masks, {args.boundary} boundary", unit="img"):
        s = ds[k]
        edge = (
            drawn_boundary(s["mask"])
            if model is None
            else boundary_map(model, to_tensor(s["image"], cfg.data.mean, cfg.data.std))
        )
        cams, keys = load_cam(run.cams(args.stage), s["id"])
        scores = walked_scores(cams, edge, radius=ic.radius, beta=ic.beta, exp_times=ic.exp_times)  # one walk
        for t in thresholds:
            conf[t] += confusion_matrix(s["mask"], mask_from_scores(scores, keys, t), n)
    for t in thresholds:
        oracle = summarize(conf[t], ["background", *ds.classes])
        row[f"oracle_mask@{t:g}"] = {k: round(100 * oracle[k], 1) for k in ("miou", "precision", "recall")}
    for name, key in (("seed", f"{args.stage}_{split}"), ("ir_label_mask", f"mask-{args.stage}_{split}")):
        path = run.metrics(key)
        if path.is_file():
            m = read_metrics(path)
            row[name + " (all images)"] = {k: round(100 * m[k], 1) for k in ("miou", "precision", "recall")}
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
