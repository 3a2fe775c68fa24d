"""Is IRN limited by its boundary labels or by its machinery? (issue #5 diagnostic)

    python benchmarks/irn_oracle.py --run runs/book-cpu [--stage baseline] [--images 200]

Trains IRN's boundary branch (:class:`esol_lib.irn.BoundaryNet`, same backbone, loss, crops and
step count as ``esol refine``) on the *ground-truth* masks of the CAM split instead of the IR labels
made from CAMs, then makes pseudo masks from the stage's CAMs with that boundary map and scores them.
This is an oracle — it reads masks no WSSS method may use — and only answers one question: if the
boundary map were right, would the random walk turn these CAMs into better masks than the seeds?
Compare its mIoU with ``metrics/mask-<stage>_<split>.json`` (IR-label boundaries) and
``metrics/<stage>_<split>.json`` (the seeds). Needs a run whose ``esol refine`` finished.

Measured on ``runs/book-cpu`` (baseline CAMs, first 200 train images): 43.0 mIoU with this script
(IRN's poly schedule), against 37.3 for the IR-label masks and 52.8 for the seeds; a one-off probe
with a constant learning rate reached 62.7, so the boundary branch is under-trained at this step
count as well as misled by the IR labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def main() -> None:
    from esol_lib.cam import load_cam
    from esol_lib.data.transforms import AugmentedDataset, to_tensor
    from esol_lib.engine import PolyLR, make_sgd, seed_everything
    from esol_lib.irn import BoundaryNet, affinity_loss, boundary_map, pseudo_mask
    from esol_lib.metrics import confusion_matrix, read_metrics, summarize
    from esol_lib.refine import (MOMENTUM, TRAIN_RADIUS_FACTOR, WEIGHT_DECAY, IRNTrainTransform, _labels_at,
                                 _setup)
    from esol_lib.run import RunDir
    from esol_lib.stages import load_baseline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder whose `esol refine` finished")
    parser.add_argument("--stage", default="baseline")
    parser.add_argument("--images", type=int, default=200, help="images of the CAM split to score")
    args = parser.parse_args()
    run = RunDir(Path(args.run))
    cfg, split, ds = _setup(run, args.stage, None)
    ic = cfg.irn
    seed_everything(cfg.seed)

    class _GroundTruth(torch.utils.data.Dataset):  # the IR-label dataset's layout, filled with real masks
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int) -> dict:
            s = ds[i]
            return {"id": s["id"], "image": s["image"], "mask": s["mask"]}

    data = AugmentedDataset(_GroundTruth(), IRNTrainTransform(ic.crop_size, cfg.data.mean, cfg.data.std),
                            seed=cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=ic.batch_size, shuffle=True, drop_last=True)
    steps = ic.max_steps or ic.epochs * len(loader)
    model = BoundaryNet(load_baseline(run, cfg, ds.num_classes, "cpu").backbone)
    opt = make_sgd(model.trainable_parameters(), ic.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sched = PolyLR(opt, steps)  # esol refine's optimizer and schedule
    model.train()
    done, bar = 0, tqdm(total=steps, desc="oracle boundary branch", unit="step")
    while done < steps:
        for batch in loader:
            edge = model(batch["image"])
            loss, _ = affinity_loss(edge, _labels_at(batch["ir_label"], tuple(edge.shape[-2:])),
                                    TRAIN_RADIUS_FACTOR * ic.radius)
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
    model.eval()
    n = ds.num_classes + 1
    conf = np.zeros((n, n), np.int64)
    for k in tqdm(range(min(args.images, len(ds))), desc="oracle pseudo masks", unit="img"):
        s = ds[k]
        edge = boundary_map(model, to_tensor(s["image"], cfg.data.mean, cfg.data.std))
        cams, keys = load_cam(run.cams(args.stage), s["id"])
        mask = pseudo_mask(cams, keys, edge, radius=ic.radius, beta=ic.beta, exp_times=ic.exp_times,
                           bg_thres=ic.sem_seg_bg_thres)
        conf += confusion_matrix(s["mask"], mask, n)
    oracle = summarize(conf, ["background", *ds.classes])
    row = {"stage": args.stage, "split": split, "images": int(min(args.images, len(ds))), "steps": steps}
    row["oracle_boundary_mask"] = {k: round(100 * oracle[k], 1) for k in ("miou", "precision", "recall")}
    for name, key in (("seed", f"{args.stage}_{split}"), ("ir_label_mask", f"mask-{args.stage}_{split}")):
        path = run.metrics(key)
        if path.is_file():
            m = read_metrics(path)
            row[name + " (all images)"] = {k: round(100 * m[k], 1) for k in ("miou", "precision", "recall")}
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
