"""The two steps run for every stage, chapters 01-04: its multi-scale CAMs (Eq. (2)) and their sweep.

``make_cam``   → ``cams/<stage>/<id>.npz``           (needs ``checkpoints/<stage>.pt``)
``eval_cam``   → ``metrics/<stage>[_crf]_<split>.json`` (needs the CAMs)

``stage`` is an entry of the stage table (:mod:`esol_lib.runtime.stages`): the paper's ``baseline``,
``expansion`` and ``shrinkage``, or a positive control (``recam``, ``advcam``, ``lpcam``); what makes its CAMs
is :data:`esol_lib.steps.producers.PRODUCERS`. A producer may make the CAMs of a split's first N ids only
(``advcam.max_images: N``: AdvCAM costs about 100 CAM passes an image), filed under the split name
``<split>-first<N>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from esol_lib.data.voc import VOCSegmentation
from esol_lib.method.cam import cam_batch_size, compute_cams, evaluate_cams, seed_part_recall
from esol_lib.method.crf import crf_from_labelings
from esol_lib.method.metrics import read_metrics, write_metrics
from esol_lib.runtime.atomic import read_json
from esol_lib.runtime.config import Config
from esol_lib.runtime.config_io import config_to_dict
from esol_lib.runtime.distributed import main_process_only
from esol_lib.runtime.freshness import (
    cam_dir_signature,
    current_metrics,
    data_fingerprint,
    data_record,
    folder_signature,
    signature_of,
)
from esol_lib.runtime.rundir import RunDir, holds_run_lock
from esol_lib.runtime.stages import stage_spec
from esol_lib.steps._shared import require_cams, resolve_device, split_dataset
from esol_lib.steps.producers import PRODUCERS, cam_maker, cam_settings

__all__ = [
    "make_cam",
    "eval_cam",
    "stage_cam_fn",
    "stage_split",
    "cam_split_name",
    "part_localization",
    "cam_metrics_inputs",
    "current_cam_metrics",
]

# --------------------------------------------------------------------------------- CAMs


def stage_cam_fn(
    run: RunDir, cfg: Config, stage: str, num_classes: int, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The raw class-map function of a stage's model: ``(B, 3, H, W)`` → ``(B, K, h, w)``.

    For a stage whose CAMs are made another way (AdvCAM, LPCAM) this is its
    :class:`~esol_lib.method.cam.CamProducer` (``(images, labels)`` → CAMs); see :func:`cam_maker`.
    """
    return cam_maker(run, cfg, stage, num_classes, device)


def _subset(cfg: Config, stage: str) -> str:
    """The suffix of a stage's limited splits (``-first<N>``), or "" when the stage makes every image's CAMs
    (:attr:`esol_lib.steps.producers.Producer.max_images`)."""
    n = PRODUCERS[stage_spec(stage).name].max_images(cfg)
    return "" if n is None else f"-first{n}"


def cam_split_name(cfg: Config, stage: str, split: str) -> str:
    """The split name ``stage``'s CAMs and scores of ``split`` are filed under: ``split``, or for AdvCAM with
    ``advcam.max_images: N`` ``<split>-first<N>`` (given that name already, it is returned as it is)."""
    suffix = _subset(cfg, stage)
    return split if not suffix or split.endswith(suffix) else split + suffix


def stage_split(cfg: Config, stage: str, split: str) -> VOCSegmentation:
    """The dataset whose CAMs ``stage`` makes on ``split``: the whole split, or for AdvCAM with
    ``advcam.max_images: N`` its first N ids, named ``<split>-first<N>`` (:func:`cam_split_name`)."""
    suffix = _subset(cfg, stage)
    if not suffix:
        return split_dataset(cfg, split)
    base = split[: -len(suffix)] if split.endswith(suffix) else split
    return split_dataset(cfg, base).first(PRODUCERS[stage].max_images(cfg))


@main_process_only
@holds_run_lock
def make_cam(run: RunDir, stage: str = "baseline", split: str | None = None, *, progress: bool = True) -> Path:
    """Multi-scale CAMs (Eq. (2)) of ``stage``'s model on ``split`` → ``cams/<stage>/<id>.npz``."""
    stage_spec(stage)
    cfg = run.load_config()
    split = split or cfg.data.cam_split
    if PRODUCERS[stage].needs_cams:  # LPCAM clusters the features its pixels' baseline CAMs split
        make_cam(run, PRODUCERS[stage].needs_cams, cfg.data.cam_split, progress=progress)
    device = resolve_device(cfg)
    ds = stage_split(cfg, stage, split)
    maker = cam_maker(run, cfg, stage, ds.num_classes, device, progress=progress)
    signature = cam_dir_signature(
        run.checkpoint(PRODUCERS[stage].reads), cfg.cam.scales, cfg.cam.flip, extra=cam_settings(cfg, stage)
    )
    data = data_fingerprint(ds)  # CAMs of other data are redone; their scores then no longer match (cam_metrics_inputs)
    return compute_cams(
        maker,
        ds,
        run.cams(stage),
        mean=cfg.data.mean,
        std=cfg.data.std,
        scales=cfg.cam.scales,
        flip=cfg.cam.flip,
        signature=signature,
        device=device,
        progress=progress,
        desc=f"CAMs {stage}/{ds.split}",
        data_signature=data,
        batch_size=cam_batch_size(device, feature_cache=cfg.feature_cache_mb > 0),
        diverged_fix=_diverged_fix(run, stage),
        refuse_all_zero=stage == "baseline",  # a dead classifier; an ESOL variant may zero a map (chapter 07)
    )


def _diverged_fix(run: RunDir, stage: str) -> str:
    """What to do when a stage's CAMs come out non-finite: retrain it (or the baseline it reads) at a lower lr."""
    spec = stage_spec(stage)
    trained = stage if spec.trained else "baseline"
    key = {"baseline": "train_cam"}.get(trained, trained)
    return (
        f"Train stage {trained!r} again with a lower {key}.lr in a new run folder: `esol pipeline --config "
        f"{run.config_path} --set {key}.lr=<smaller> --run <new folder>`"
    )


def cam_metrics_inputs(run: RunDir, stage: str, split: str, crf: bool = False, cfg: Config | None = None) -> str:
    """The signature of what ``eval_cam`` scores: the CAM folder's model signature, the split's data
    fingerprint, the thresholds and (with ``crf``) the CRF settings. Stored in the metrics file as
    ``inputs``; the file is current while they match (:func:`esol_lib.runtime.freshness.current_metrics`)."""
    cfg = cfg or run.load_config()
    folder = run.cams(stage)
    split = cam_split_name(cfg, stage, split)
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
    cfg = run.load_config()
    split = cam_split_name(cfg, stage, split)
    name = f"{stage}_crf_{split}" if crf else f"{stage}_{split}"
    return current_metrics(run.metrics(name), cam_metrics_inputs(run, stage, split, crf, cfg))


@main_process_only
@holds_run_lock
def eval_cam(
    run: RunDir, stage: str = "baseline", split: str | None = None, *, crf: bool = False, progress: bool = True
) -> dict:
    """Threshold sweep of ``stage``'s seeds on ``split`` → ``metrics/<stage>[_crf]_<split>.json``.

    With ``crf`` every seed is refined by DenseCRF (IRN's label CRF) before scoring, at the five
    thresholds around the best one without CRF (one CRF per image and threshold is the cost).
    """
    stage_spec(stage)
    cfg = run.load_config()
    ds = stage_split(cfg, stage, split or cfg.data.cam_split)
    split = ds.split
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
    metrics["inputs"] = cam_metrics_inputs(run, stage, split, crf, cfg)
    write_metrics(run.metrics(name), metrics)
    return metrics


def part_localization(run: RunDir, stage: str, split: str | None = None) -> dict:
    """Seed recall on discriminative parts vs the rest of each object, at the stage's best threshold."""
    cfg = run.load_config()
    ds = stage_split(cfg, stage, split or cfg.data.cam_split)
    metrics = read_metrics(run.metrics(f"{stage}_{ds.split}"))
    return seed_part_recall(run.cams(stage), ds, cfg.data.root, metrics["threshold"])
