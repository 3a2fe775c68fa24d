"""What makes each stage's CAMs: one :class:`Producer` per entry of the stage table (:mod:`esol_lib.runtime.stages`).

``make-cam --stage NAME`` asks :data:`PRODUCERS` for NAME's CAM maker: a raw class-map function, which Eq. (2)
turns into CAMs (the method's stages, ReCAM, LPCAM), or a :class:`~esol_lib.method.cam.CamProducer` that makes
them itself and decides its own gradient mode (AdvCAM). ``reads`` names the checkpoint whose bytes go into the
CAM folder's signature, so the CAMs are redone when it changes: a training-free control reads the baseline's
(or, for LPCAM, its prototypes, which record the baseline's digest).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from esol_lib.method.advcam import AdvCamProducer
from esol_lib.method.cam import CamFn, CamProducer, MultiScaleCams
from esol_lib.method.lpcam import lpcam_cam_fn
from esol_lib.method.recam import recam_cam_fn
from esol_lib.runtime.config import Config
from esol_lib.runtime.feature_cache import cached_backbone
from esol_lib.runtime.rundir import RunDir
from esol_lib.runtime.stages import STAGES, stage_spec
from esol_lib.steps._esol_shared import load_stage_model
from esol_lib.steps._shared import load_baseline
from esol_lib.steps.control_models import load_recam, make_prototypes

__all__ = ["Producer", "PRODUCERS", "cam_maker", "cam_settings"]

Builder = Callable[[RunDir, Config, int, torch.device, bool], "CamFn | CamProducer"]


def _all_images(cfg: Config) -> int | None:
    return None


@dataclass(frozen=True)
class Producer:
    """How a stage's CAMs are made: ``build(run, cfg, num_classes, device, progress)``; the checkpoint it ``reads``;
    ``needs_cams``: a stage whose CAMs of ``data.cam_split`` it reads (``make-cam`` makes them first);
    ``max_images(cfg)``: how many ids of a split it makes CAMs of (None: all; a costly method's setting)."""

    build: Builder
    reads: str
    needs_cams: str | None = None
    max_images: Callable[[Config], int | None] = _all_images


def _channels_last(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """oneDNN's CPU convolutions are faster in NHWC (equal up to rounding)."""
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def _baseline(run: RunDir, cfg: Config, num_classes: int, device: torch.device, progress: bool) -> CamFn:
    model = _channels_last(load_baseline(run, cfg, num_classes, device), device)
    features = cached_backbone(model.backbone, cfg.feature_cache_mb, run.feature_cache())
    if features is not None:  # the baseline's CAM pass fills the cache the ESOL stages' CAMs read
        return lambda x: model.cam_from_head(model.head(features(x)))
    return model.cam


def _esol(stage: str) -> Builder:
    def build(run: RunDir, cfg: Config, num_classes: int, device: torch.device, progress: bool) -> CamFn:
        return _channels_last(load_stage_model(run, cfg, stage, num_classes, device), device).cam

    return build


def _recam(run: RunDir, cfg: Config, num_classes: int, device: torch.device, progress: bool) -> CamFn:
    model = load_recam(run, cfg, num_classes, device)
    return recam_cam_fn(_channels_last(model.cam, device), model.predictor)


def _advcam(run: RunDir, cfg: Config, num_classes: int, device: torch.device, progress: bool) -> CamProducer:
    a = cfg.advcam
    return AdvCamProducer(
        load_baseline(run, cfg, num_classes, device),
        cfg.cam.scales,
        steps=a.steps,
        step_size=a.step_size,
        lam=a.lam,
        mask_threshold=a.mask_threshold,
        half_steps_at_half_scale=a.half_steps_at_half_scale,
        reg_reduction=a.reg_reduction,
        attribution=a.attribution,
    )


def _lpcam(run: RunDir, cfg: Config, num_classes: int, device: torch.device, progress: bool) -> CamProducer:
    head = make_prototypes(run, progress=progress)
    model = _channels_last(load_baseline(run, cfg, num_classes, device), device)
    # The public code adds the features of the image and of its flip before the cosines: the flip is the
    # cam_fn's, so Eq. (2)'s own flip is off (it would add the symmetric map to itself, at twice the cost).
    cam_fn = lpcam_cam_fn(model, weight=head.weight.to(device), flip_features=cfg.cam.flip)
    return MultiScaleCams(cam_fn, cfg.cam.scales, flip=False)


#: stage name → how its CAMs are made; the keys are exactly the stage table's (a test checks it).
PRODUCERS: dict[str, Producer] = {
    "baseline": Producer(_baseline, "baseline"),
    "expansion": Producer(_esol("expansion"), "expansion"),
    "shrinkage": Producer(_esol("shrinkage"), "shrinkage"),
    "recam": Producer(_recam, "recam"),
    "advcam": Producer(_advcam, "baseline", max_images=lambda cfg: cfg.advcam.max_images),
    "lpcam": Producer(_lpcam, "lpcam", needs_cams="baseline"),  # its pixels are split by the baseline's CAMs
}
assert tuple(PRODUCERS) == STAGES, "PRODUCERS must follow esol_lib.runtime.stages.STAGE_TABLE"


def cam_maker(
    run: RunDir, cfg: Config, stage: str, num_classes: int, device: torch.device, *, progress: bool = False
) -> CamFn | CamProducer:
    """``stage``'s CAM maker on this run (an unknown stage: one line naming the choices)."""
    stage_spec(stage)
    return PRODUCERS[stage].build(run, cfg, num_classes, device, progress)


def cam_settings(cfg: Config, stage: str) -> str:
    """The config that shapes a stage's CAMs besides the checkpoint it reads: the classifier's architecture;
    for the ESOL stages the samplers' switches and the clipping (on at inference, Eq. 7), since a run forked
    with another β shares the expansion checkpoint but must not share its CAMs; for AdvCAM its settings
    (it has no checkpoint of its own). ReCAM's and LPCAM's settings are in their checkpoints' inputs."""
    settings: dict = {"model": dataclasses.asdict(cfg.model)}
    if stage in ("expansion", "shrinkage"):
        e = cfg.expansion
        sc = cfg.shrinkage
        settings["esol"] = [e.clip, e.beta, e.clip_in_cams, e.offsets, e.deformable, sc.offsets, sc.placement]
    elif stage == "advcam":
        settings["advcam"] = {k: v for k, v in dataclasses.asdict(cfg.advcam).items() if k != "max_images"}
    return json.dumps(settings, sort_keys=True)
