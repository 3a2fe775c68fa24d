"""The two steps run for every stage, chapters 01-04: its multi-scale CAMs (Eq. (2)) and their sweep.

``make_cam``   → ``cams/<stage>/<id>.npz``           (needs ``checkpoints/<stage>.pt``)
``eval_cam``   → ``metrics/<stage>[_crf]_<split>.json`` (needs the CAMs)

``stage`` is ``baseline``, ``expansion`` or ``shrinkage``: the model whose CAMs these are.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from esol_lib.method.cam import cam_batch_size, compute_cams, evaluate_cams, seed_part_recall
from esol_lib.method.crf import crf_from_labelings
from esol_lib.method.metrics import read_metrics, write_metrics
from esol_lib.runtime.atomic import read_json
from esol_lib.runtime.config import Config
from esol_lib.runtime.config_io import config_to_dict
from esol_lib.runtime.distributed import main_process_only
from esol_lib.runtime.errors import StageError
from esol_lib.runtime.feature_cache import cached_backbone
from esol_lib.runtime.freshness import (
    cam_dir_signature,
    current_metrics,
    data_fingerprint,
    data_record,
    folder_signature,
    signature_of,
)
from esol_lib.runtime.rundir import STAGES, RunDir, holds_run_lock
from esol_lib.steps._esol_shared import load_stage_model
from esol_lib.steps._shared import load_baseline, require_cams, resolve_device, split_dataset

__all__ = ["make_cam", "eval_cam", "stage_cam_fn", "part_localization", "cam_metrics_inputs", "current_cam_metrics"]

# --------------------------------------------------------------------------------- CAMs


def stage_cam_fn(
    run: RunDir, cfg: Config, stage: str, num_classes: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The raw class-map function of a stage's model: ``(B, 3, H, W)`` → ``(B, K, h, w)``."""
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    if stage == "baseline":
        model = load_baseline(run, cfg, num_classes, device)
    else:
        model = load_stage_model(run, cfg, stage, num_classes, device)
    if device.type == "cpu":  # oneDNN's CPU convolutions are faster in NHWC (equal up to rounding)
        model = model.to(memory_format=torch.channels_last)
    if stage == "baseline":
        features = cached_backbone(model.backbone, cfg.feature_cache_mb, run.feature_cache())
        if features is not None:  # the baseline's CAM pass fills the cache the ESOL stages' CAMs read
            return lambda x: model.cam_from_head(model.head(features(x)))
    return model.cam


@main_process_only
@holds_run_lock
def make_cam(run: RunDir, stage: str = "baseline", split: str | None = None, *, progress: bool = True) -> Path:
    """Multi-scale CAMs (Eq. (2)) of ``stage``'s model on ``split`` → ``cams/<stage>/<id>.npz``."""
    cfg = run.load_config()
    split = split or cfg.data.cam_split
    device = resolve_device(cfg)
    ds = split_dataset(cfg, split)
    cam_fn = stage_cam_fn(run, cfg, stage, ds.num_classes, device)
    signature = cam_dir_signature(run.checkpoint(stage), cfg.cam.scales, cfg.cam.flip, extra=_cam_settings(cfg, stage))
    data = data_fingerprint(ds)  # CAMs of other data are redone; their scores then no longer match (cam_metrics_inputs)
    return compute_cams(
        cam_fn,
        ds,
        run.cams(stage),
        mean=cfg.data.mean,
        std=cfg.data.std,
        scales=cfg.cam.scales,
        flip=cfg.cam.flip,
        signature=signature,
        device=device,
        progress=progress,
        desc=f"CAMs {stage}/{split}",
        data_signature=data,
        batch_size=cam_batch_size(device, feature_cache=cfg.feature_cache_mb > 0),
        diverged_fix=_diverged_fix(run, stage),
        refuse_all_zero=stage == "baseline",  # a dead classifier; an ESOL variant may zero a map (chapter 07)
    )


def _diverged_fix(run: RunDir, stage: str) -> str:
    """What to do when a stage's CAMs come out non-finite: retrain it at a lower learning rate."""
    key = {"baseline": "train_cam"}.get(stage, stage)
    return (
        f"Train stage {stage!r} again with a lower {key}.lr in a new run folder: `esol pipeline --config "
        f"{run.config_path} --set {key}.lr=<smaller> --run <new folder>`"
    )


def _cam_settings(cfg: Config, stage: str) -> str:
    """The config that shapes a stage's CAMs besides its checkpoint: the classifier's architecture and,
    for the ESOL stages, the samplers' switches and the clipping (on at inference, Eq. 7). A run forked
    with another β shares the expansion checkpoint but must not share its CAMs."""
    settings: dict = {"model": dataclasses.asdict(cfg.model)}
    if stage != "baseline":
        e = cfg.expansion
        sc = cfg.shrinkage
        settings["esol"] = [e.clip, e.beta, e.clip_in_cams, e.offsets, e.deformable, sc.offsets, sc.placement]
    return json.dumps(settings, sort_keys=True)


def cam_metrics_inputs(run: RunDir, stage: str, split: str, crf: bool = False) -> str:
    """The signature of what ``eval_cam`` scores: the CAM folder's model signature, the split's data
    fingerprint, the thresholds and (with ``crf``) the CRF settings. Stored in the metrics file as
    ``inputs``; the file is current while they match (:func:`esol_lib.runtime.freshness.current_metrics`)."""
    cfg = run.load_config()
    folder = run.cams(stage)
    return signature_of(
        {
            "cams": folder_signature(folder),
            "data": (read_json(data_record(folder, split)) or {}).get("data"),
            "thresholds": [float(t) for t in cfg.cam.thresholds],
            "crf": config_to_dict(cfg)["crf"] if crf else None,
            "parts": (Path(cfg.data.root) / "SegmentationPart").is_dir(),
        }
    )


def current_cam_metrics(run: RunDir, stage: str, split: str, crf: bool = False) -> dict | None:
    """``metrics/<stage>[_crf]_<split>.json`` if it scores ``stage``'s CAMs as they are now, else None."""
    name = f"{stage}_crf_{split}" if crf else f"{stage}_{split}"
    return current_metrics(run.metrics(name), cam_metrics_inputs(run, stage, split, crf))


@main_process_only
@holds_run_lock
def eval_cam(
    run: RunDir, stage: str = "baseline", split: str | None = None, *, crf: bool = False, progress: bool = True
) -> dict:
    """Threshold sweep of ``stage``'s seeds on ``split`` → ``metrics/<stage>[_crf]_<split>.json``.

    With ``crf`` every seed is refined by DenseCRF (IRN's label CRF) before scoring, at the five
    thresholds around the best one without CRF (one CRF per image and threshold is the cost).
    """
    cfg = run.load_config()
    split = split or cfg.data.cam_split
    ds = split_dataset(cfg, split)
    require_cams(run, stage, ds, split)
    thresholds = list(cfg.cam.thresholds)
    crf_fn = None
    name = f"{stage}_{split}"
    if crf:
        plain = current_cam_metrics(run, stage, split) or eval_cam(run, stage, split, progress=progress)
        i = min(range(len(thresholds)), key=lambda j: abs(thresholds[j] - plain["threshold"]))
        thresholds = thresholds[max(0, i - 2) : i + 3]

        def crf_fn(image, labellings, n):
            return crf_from_labelings(image, labellings, n, cfg.crf)

        name = f"{stage}_crf_{split}"
    metrics = evaluate_cams(
        run.cams(stage),
        ds,
        thresholds,
        crf=crf_fn,
        progress=progress,
        desc=f"eval {name}",
        dead_fix=_diverged_fix(run, stage),
        refuse_all_zero=stage == "baseline",
        stage=stage,
        split=split,
        with_crf=crf,
    )
    if (Path(cfg.data.root) / "SegmentationPart").is_dir():
        metrics["part_localization"] = seed_part_recall(run.cams(stage), ds, cfg.data.root, metrics["threshold"])
    metrics["inputs"] = cam_metrics_inputs(run, stage, split, crf)
    write_metrics(run.metrics(name), metrics)
    return metrics


def part_localization(run: RunDir, stage: str, split: str | None = None) -> dict:
    """Seed recall on discriminative parts vs the rest of each object, at the stage's best threshold."""
    cfg = run.load_config()
    split = split or cfg.data.cam_split
    metrics = read_metrics(run.metrics(f"{stage}_{split}"))
    ds = split_dataset(cfg, split)
    return seed_part_recall(run.cams(stage), ds, cfg.data.root, metrics["threshold"])
