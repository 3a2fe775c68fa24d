"""The positive controls' steps (chapter 10): ReCAM's fine-tuning and LPCAM's prototypes, each on the run's baseline.

``train_recam``     → ``checkpoints/recam.pt``   (the baseline and ReCAM's predictor W', fine-tuned)  esol train-recam
``make_prototypes`` → ``checkpoints/lpcam.pt``   (LPCAM's prototype weights; ``make-cam --stage lpcam`` runs it)

AdvCAM trains nothing and needs nothing but the baseline (:class:`esol_lib.method.advcam.AdvCamProducer`).
Each checkpoint records the baseline checkpoint's digest among its inputs, so a retrained baseline makes
them (and every CAM made from them) stale. What makes each stage's CAMs is :mod:`esol_lib.steps.producers`.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from esol_lib.data.transforms import to_tensor
from esol_lib.method.cam import load_cam
from esol_lib.method.lpcam import PrototypeBank, lpcam_weight
from esol_lib.method.recam import recam_loss_of, recam_param_groups
from esol_lib.models import build_classifier
from esol_lib.models.class_predictor import ClassPredictor, PrototypeHead, ReCAMModel
from esol_lib.runtime.checkpoint import (
    INPUTS_KEY,
    load_checkpoint,
    load_stage_checkpoint,
    partial_checkpoint_path,
    save_final,
)
from esol_lib.runtime.config import Config
from esol_lib.runtime.distributed import get_dist_info, init_distributed, wrap_ddp
from esol_lib.runtime.engine import seed_everything, train_loop
from esol_lib.runtime.errors import StageError
from esol_lib.runtime.freshness import data_fingerprint
from esol_lib.runtime.rundir import RunDir, holds_run_lock
from esol_lib.runtime.schedule import PolyLR, stage_sgd, stage_steps
from esol_lib.runtime.train_log import DeadOutputGuard, JsonlLogger
from esol_lib.steps._shared import (
    cam_training_loader,
    load_baseline,
    require_cams,
    resolve_device,
    split_dataset,
    stage_inputs,
)

__all__ = ["train_recam", "load_recam", "make_prototypes", "load_prototypes", "prototype_inputs"]


# ------------------------------------------------------------------------------------------ ReCAM


@holds_run_lock
def train_recam(run: RunDir, *, progress: bool = True):
    """Fine-tune the baseline with ReCAM's loss (:func:`~esol_lib.method.recam.recam_objective`) → ``recam.pt``.

    The baseline's weights start it and a new predictor W' (PyTorch's default initialisation, seeded by
    ``seed``) joins it; ``recam.epochs`` passes over ``data.train_split`` augmented as the baseline was
    (``train_cam``'s resize, crop, flip), drawn with seed + 2; SGD at ``recam.lr`` on W' and
    ``recam.lr * recam.backbone_lr_mult`` on the rest, poly schedule, no warm-up (``train_recam.py``).
    Resumes if interrupted.
    """
    cfg = run.load_config()
    rc = cfg.recam
    seed_everything(cfg.seed)
    info = init_distributed()
    device = resolve_device(cfg)
    base, loader = cam_training_loader(cfg, cfg.data.train_split, rc.batch_size, cfg.seed + 2, "recam.batch_size")
    max_steps = stage_steps(rc, len(loader))
    cam = load_baseline(run, cfg, base.num_classes, device).train()
    predictor = ClassPredictor(base.num_classes, int(cam.classifier.weight.shape[1])).to(device)
    model = ReCAMModel(cam, predictor)
    optimizer = stage_sgd(recam_param_groups(cam, predictor, rc.lr, rc.backbone_lr_mult), rc)
    wrapped = wrap_ddp(model, info)
    wrapped.train()
    dead = DeadOutputGuard()

    def loss_fn(m: torch.nn.Module, batch: dict):
        f, logits = m(batch["image"].to(device))
        dead.check(logits)
        return recam_loss_of(f, logits, cam.classifier.weight, predictor, batch["label"].to(device), rc.loss_weight)

    return train_loop(
        "recam",
        wrapped,
        optimizer,
        loss_fn,
        loader,
        max_steps,
        run,
        scheduler=PolyLR(optimizer, max_steps),
        checkpoint_every=cfg.train_cam.checkpoint_every,
        seed=cfg.seed,
        progress=progress,
        inputs=stage_inputs(run, cfg, "recam"),
        guards=(dead,),
    )


def load_recam(run: RunDir, cfg: Config, num_classes: int, device: torch.device) -> ReCAMModel:
    """The fine-tuned classifier and its predictor, in eval mode (refused when made from another baseline or data)."""
    cam = build_classifier(dataclasses.replace(cfg.model, pretrained=None), num_classes)
    model = ReCAMModel(cam, ClassPredictor(num_classes, int(cam.classifier.weight.shape[1])))
    load_stage_checkpoint(
        run,
        "recam",
        model,
        hint=f"run `esol train-recam --run {run.root}` first",
        inputs=stage_inputs(run, cfg, "recam"),
    )
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ LPCAM


def prototype_inputs(run: RunDir, cfg: Config) -> dict[str, str]:
    """What ``checkpoints/lpcam.pt`` is made from: the baseline (its digest), the clustered split's data
    (``data.cam_split``, as the public code clusters VOC's train) and the ``lpcam`` settings."""
    inputs = stage_inputs(run, cfg, "lpcam")
    inputs["data"] = data_fingerprint(split_dataset(cfg, cfg.data.cam_split))
    inputs["lpcam"] = json.dumps(dataclasses.asdict(cfg.lpcam), sort_keys=True)
    return inputs


@holds_run_lock
def make_prototypes(run: RunDir, *, progress: bool = True) -> PrototypeHead:
    """LPCAM's steps 1-2 on the baseline → ``checkpoints/lpcam.pt``; returns the prototype weights.

    Features: the baseline's final feature map of every image of ``data.cam_split`` at scale 1, no flip
    (``save_feature``); each labelled class's pixels split by its baseline CAM (``cams/baseline/``) at
    ``lpcam.cam_threshold``; cosine k-means into ``lpcam.num_clusters`` per class and
    set, seeded by ``seed``; centres kept by the classifier's softmax (``lpcam.fg_min``, ``lpcam.ctx_range``).
    The baseline's CAMs of that split must exist (``make-cam --stage lpcam`` makes them first, see
    :attr:`esol_lib.steps.producers.Producer.needs_cams`).
    A current checkpoint is loaded instead.
    """
    cfg = run.load_config()
    inputs = prototype_inputs(run, cfg)
    done = _current_prototypes(run, cfg, inputs)
    if done is not None:
        return done
    lc = cfg.lpcam
    device = resolve_device(cfg)
    split = cfg.data.cam_split
    ds = split_dataset(cfg, split)
    require_cams(run, "baseline", ds, split)  # the baseline's CAMs split the pixels (make-cam makes them first)
    model = load_baseline(run, cfg, ds.num_classes, device)
    bank = PrototypeBank(ds.num_classes, threshold=lc.cam_threshold, max_per_class=lc.max_per_class, seed=cfg.seed)
    with torch.inference_mode():
        for i in tqdm(range(len(ds)), desc=f"LPCAM features/{split}", unit="img", disable=not progress):
            sample = ds[i]
            if not bool((sample["label"] > 0.5).any()):
                continue
            x = to_tensor(sample["image"], cfg.data.mean, cfg.data.std)[None].to(device)
            f = model.head(model.features(x)).float().cpu()
            cams, keys = load_cam(run.cams("baseline"), sample["id"])
            full = np.zeros((ds.num_classes, *cams.shape[1:]), dtype=np.float32)
            full[keys - 1] = cams
            bank.accumulate(f, torch.from_numpy(full)[None], sample["label"][None].float())
    weight = model.classifier.weight.detach().float().cpu()
    protos = bank.fit(
        weight,
        lc.num_clusters,
        iters=lc.kmeans_iters,
        seed=cfg.seed,
        fg_min=lc.fg_min,
        ctx_range=(float(lc.ctx_range[0]), float(lc.ctx_range[1])),
        fallback_best=lc.fallback_best,
    )
    channels = int(weight.shape[1])
    head = PrototypeHead(ds.num_classes, channels)
    head.weight.copy_(lpcam_weight(protos, ds.num_classes, channels))
    for c, p in protos.items():
        head.counts[c, 0], head.counts[c, 1] = len(p[0]), len(p[1])
    info = get_dist_info()
    path = run.checkpoint("lpcam")
    save_final(path, partial_checkpoint_path(run, "lpcam"), "lpcam", 0, head, None, math.nan, info.is_main, inputs)
    no_fg = [ds.classes[c] for c in range(ds.num_classes) if int(head.counts[c, 0]) == 0]
    JsonlLogger(run.log_path, enabled=info.is_main).log(
        stage="lpcam",
        step=0,
        event="prototypes",
        foreground=int(head.counts[:, 0].sum()),
        context=int(head.counts[:, 1].sum()),
        classes_without_foreground=no_fg,
        checkpoint=str(path),
    )
    return head


def _current_prototypes(run: RunDir, cfg: Config, inputs: dict[str, str]) -> PrototypeHead | None:
    path = run.checkpoint("lpcam")
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except StageError:
        return None
    if ckpt.get(INPUTS_KEY) != inputs or "model" not in ckpt:  # strict: prototypes are cheap to redo
        return None
    weight = ckpt["model"]["weight"]
    head = PrototypeHead(int(weight.shape[0]), int(weight.shape[1]))
    head.load_state_dict(ckpt["model"])
    return head


def load_prototypes(run: RunDir, cfg: Config) -> PrototypeHead:
    """The run's current LPCAM prototypes; a missing or stale ``checkpoints/lpcam.pt`` names the command."""
    head = _current_prototypes(run, cfg, prototype_inputs(run, cfg))
    if head is None:
        raise StageError(
            f"{run.checkpoint('lpcam')} is missing or was made from another baseline, data or lpcam settings; "
            f"run `esol make-cam --run {run.root} --stage lpcam` (it makes the prototypes first)"
        )
    return head
