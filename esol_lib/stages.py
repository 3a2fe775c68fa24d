"""Pipeline stages, IRN-style: each is a function of a run folder with explicit inputs and outputs on disk.

``train_cam``  → ``checkpoints/baseline.pt``
``make_cam``   → ``cams/<stage>/<id>.npz``           (needs ``checkpoints/<stage>.pt``)
``eval_cam``   → ``metrics/<stage>[_crf]_<split>.json`` (needs the CAMs)

Any stage can be re-run alone; a stage whose inputs are missing names the command to run first.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from esol_lib.atomic import read_json
from esol_lib.cam import (
    cam_batch_size,
    cam_dir_signature,
    compute_cams,
    data_fingerprint,
    data_record,
    evaluate_cams,
    seed_part_recall,
)
from esol_lib.config import Config
from esol_lib.data import VOCSegmentation, load_image, resolve_data_root
from esol_lib.data.transforms import AugmentedDataset, TrainTransform
from esol_lib.errors import StageError
from esol_lib.metrics import read_metrics, write_metrics
from esol_lib.pretrain import ensure_openmoji_weights
from esol_lib.run import STAGES, RunDir, create_run, current_metrics, holds_run_lock, signature_of

__all__ = [
    "notebook_run",
    "open_run",
    "start_run",
    "resolve_device",
    "train_cam",
    "make_cam",
    "eval_cam",
    "stage_cam_fn",
    "part_localization",
    "cam_metrics_inputs",
    "current_cam_metrics",
]

# What produces each stage's checkpoint, for error messages.
STAGE_COMMAND = {"baseline": "esol train-cam", "expansion": "esol expand", "shrinkage": "esol shrink"}


def start_run(run: str | Path, cfg: Config, data_root: str | Path | None = None) -> RunDir:
    """Create (or re-open) a run folder for ``cfg`` with its dataset root resolved to an absolute path.

    The root is stored in the run's ``config.yaml`` so later stages (``--run RUN`` only) find it,
    from any working directory (a notebook runs in ``notebooks/``). A config that reads the shipped
    ``openmoji`` backbone whose file is missing trains it first (:func:`ensure_openmoji_weights`).
    """
    root = resolve_data_root(cfg, data_root).resolve()
    _check_splits(cfg, root)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)))
    ensure_openmoji_weights(cfg)
    return create_run(run, cfg)


def _check_splits(cfg: Config, root: Path) -> None:
    """Every split the pipeline will read exists, checked before the run folder is written (a missing
    ``val`` used to surface at ``eval-seg``, after every training stage)."""
    from esol_lib.data.voc import SPLIT_DIR, available_splits

    if not root.is_dir():
        return  # VOCSegmentation names the missing root, with the fix
    have = available_splits(root)
    d = cfg.data
    for key, split in (
        ("data.train_split", d.train_split),
        ("data.cam_split", d.cam_split),
        ("data.val_split", d.val_split),
    ):
        if split not in have:
            raise StageError(
                f"{key} is {split!r}, but {root / SPLIT_DIR} has no {split}.txt (it has: "
                f"{', '.join(have) or 'no split lists'}); write that list or pass --set {key}=<split>"
            )


def notebook_run(
    profile: str, run_dir: str = "", data_root: str = "", overrides: Sequence[str] = ()
) -> tuple[RunDir, Config]:
    """The shared run folder a notebook works in, from its papermill parameters.

    Paths default to the repository's ``runs/book-<profile>`` and ``data/<generator>-<profile>`` whether
    the notebook runs from ``notebooks/`` (JupyterLab, papermill) or from the repository root.
    """
    from esol_lib.config import load_config

    here = Path.cwd()
    root = here.parent if here.name == "notebooks" else here
    cfg = load_config(profile, list(overrides))
    if not data_root and not cfg.data.root:
        data_root = str(resolve_data_root(cfg, None, synth_dir=root / "data"))
    run = start_run(Path(run_dir) if run_dir else root / "runs" / f"book-{profile}", cfg, data_root or None)
    return run, run.load_config()


def open_run(run: str | Path, overrides: Sequence[str] = ()) -> tuple[RunDir, Config]:
    """An existing run folder and its config (a missing config names the command that starts a run).

    ``overrides`` (``key=value``) change the run's config first: what depended on the old values is
    moved aside to be redone, and a key that shapes the baseline is refused
    (:func:`esol_lib.run.supersede`).
    """
    rd = RunDir(Path(run))
    cfg = rd.load_config()
    if overrides:
        from esol_lib.config import apply_overrides, config_from_dict, config_to_dict

        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), list(overrides)))
        create_run(rd.root, cfg)
    return rd, cfg


def resolve_device(cfg: Config) -> torch.device:
    """``device: auto`` → CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    from esol_lib.distributed import init_distributed

    return torch.device("cuda", init_distributed().local_rank)


def _dataset(cfg: Config, split: str, **kwargs) -> VOCSegmentation:
    return VOCSegmentation(cfg.data.root, split, **kwargs)


# --------------------------------------------------------------------------------- baseline


@holds_run_lock
def train_cam(run: RunDir, *, progress: bool = True):
    """Train the baseline classifier (§3.1, Eq. (1)) → ``checkpoints/baseline.pt``. Resumes if interrupted."""
    from esol_lib.distributed import init_distributed, make_loader, wrap_ddp
    from esol_lib.engine import DeadOutputGuard, PolyLR, make_sgd, seed_everything, train_loop
    from esol_lib.models import build_classifier, multilabel_loss

    cfg = run.load_config()
    tc = cfg.train_cam
    seed_everything(cfg.seed)
    info = init_distributed()
    device = resolve_device(cfg)
    base = _dataset(cfg, cfg.data.train_split)
    transform = TrainTransform(
        resize_long=tuple(tc.resize_long), crop_size=tc.crop_size, mean=cfg.data.mean, std=cfg.data.std, flip=tc.flip
    )
    data = AugmentedDataset(_LabelledOnly(base), transform, seed=cfg.seed)
    loader = make_loader(
        data, tc.batch_size, shuffle=True, seed=cfg.seed, num_workers=cfg.data.num_workers, drop_last=True
    )
    if len(loader) == 0:
        raise StageError(
            f"split {cfg.data.train_split!r} has {len(base)} images, fewer than one batch of "
            f"{tc.batch_size}; lower train_cam.batch_size"
        )
    max_steps = tc.max_steps or tc.epochs * len(loader)
    model = build_classifier(cfg.model, base.num_classes).to(device)
    optimizer = make_sgd(
        model.param_groups(tc.lr, tc.new_layer_lr_mult), tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
    )
    model = wrap_ddp(model, info)
    model.train()

    dead = DeadOutputGuard("baseline", "train_cam.lr")

    def loss_fn(m: torch.nn.Module, batch: dict) -> torch.Tensor:
        logits = m(batch["image"].to(device))
        dead.check(logits)
        return multilabel_loss(logits, batch["label"].to(device))

    return train_loop(
        "baseline",
        model,
        optimizer,
        loss_fn,
        loader,
        max_steps,
        run,
        scheduler=PolyLR(optimizer, max_steps),
        checkpoint_every=tc.checkpoint_every,
        seed=cfg.seed,
        progress=progress,
    )


class _LabelledOnly(torch.utils.data.Dataset):
    """Training items: the image and its image-level label (the mask is never shown to the classifier)."""

    def __init__(self, base: VOCSegmentation) -> None:
        self.base = base
        self.labels = base.labels()  # from the masks, read once and cached on disk: no mask decode per step

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        image_id = self.base.ids[index]
        return {
            "id": image_id,
            "image": load_image(self.base.image_path(image_id)),
            "label": torch.from_numpy(self.labels[index].copy()),
        }


def load_baseline(run: RunDir, cfg: Config, num_classes: int, device: torch.device):
    """The trained baseline classifier, in eval mode."""
    from esol_lib.engine import load_stage_checkpoint
    from esol_lib.models import build_classifier

    model = build_classifier(cfg.model, num_classes)
    load_stage_checkpoint(run, "baseline", model, hint=f"run `esol train-cam --run {run.root}` first")
    return model.to(device).eval()


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
        from esol_lib.esol import load_stage_model  # the ESOL stages (expansion, shrinkage)

        model = load_stage_model(run, cfg, stage, num_classes, device)
    if device.type == "cpu":  # oneDNN's CPU convolutions are faster in NHWC: CAMs 15-25 % faster (equal up to rounding)
        model = model.to(memory_format=torch.channels_last)
    if stage == "baseline":
        from esol_lib.feature_cache import cached_backbone

        features = cached_backbone(model.backbone, cfg.feature_cache_mb, run.feature_cache())
        if features is not None:  # the baseline's CAM pass fills the cache the ESOL stages' CAMs read
            return lambda x: model.cam_from_head(model.head(features(x)))
    return model.cam


@holds_run_lock
def make_cam(run: RunDir, stage: str = "baseline", split: str | None = None, *, progress: bool = True) -> Path:
    """Multi-scale CAMs (Eq. (2)) of ``stage``'s model on ``split`` → ``cams/<stage>/<id>.npz``."""
    cfg = run.load_config()
    split = split or cfg.data.cam_split
    device = resolve_device(cfg)
    ds = _dataset(cfg, split)
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
    )


def _cam_settings(cfg: Config, stage: str) -> str:
    """The config that shapes a stage's CAMs besides its checkpoint: the classifier's architecture and,
    for the ESOL stages, the samplers' switches and the clipping (on at inference, Eq. 7). A run forked
    with another β shares the expansion checkpoint but must not share its CAMs."""
    settings: dict = {"model": dataclasses.asdict(cfg.model)}
    if stage != "baseline":
        e = cfg.expansion
        settings["esol"] = [e.clip, e.beta, e.offsets, e.deformable, e.sampler_layer, cfg.shrinkage.offsets]
    return json.dumps(settings, sort_keys=True)


def _require_cams(run: RunDir, stage: str, ds: VOCSegmentation, split: str) -> None:
    cam_dir = run.cams(stage)
    missing = [i for i in ds.ids if not (cam_dir / f"{i}.npz").is_file()]
    if missing:
        raise StageError(
            f"{len(missing)} CAM file(s) of stage {stage!r} on split {split!r} are missing in "
            f"{cam_dir} (e.g. {missing[0]}); run `esol make-cam --run {run.root} --stage {stage} "
            f"--split {split}` first"
        )
    if (read_json(data_record(cam_dir, split)) or {}).get("data") != data_fingerprint(ds):
        raise StageError(
            f"the CAMs in {cam_dir} were made from other data than split {split!r} of {ds.root} "
            f"holds now (its ids, images or masks changed); run `esol make-cam --run {run.root} "
            f"--stage {stage} --split {split}` to redo them"
        )


def cam_metrics_inputs(run: RunDir, stage: str, split: str, crf: bool = False) -> str:
    """The signature of what ``eval_cam`` scores: the CAM folder's model signature, the split's data
    fingerprint, the thresholds and (with ``crf``) the CRF settings. Stored in the metrics file as
    ``inputs``; the file is current while they match (:func:`esol_lib.run.current_metrics`)."""
    from esol_lib.config import config_to_dict

    cfg = run.load_config()
    folder = run.cams(stage)
    return signature_of(
        {
            "cams": (read_json(folder / "_meta.json") or {}).get("signature"),
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
    ds = _dataset(cfg, split)
    _require_cams(run, stage, ds, split)
    thresholds = list(cfg.cam.thresholds)
    crf_fn = None
    name = f"{stage}_{split}"
    if crf:
        from esol_lib.crf import crf_from_labelings

        plain = current_cam_metrics(run, stage, split) or eval_cam(run, stage, split, progress=progress)
        i = min(range(len(thresholds)), key=lambda j: abs(thresholds[j] - plain["threshold"]))
        thresholds = thresholds[max(0, i - 2) : i + 3]
        c = cfg.crf

        def crf_fn(image, labellings, n):
            return crf_from_labelings(
                image,
                labellings,
                n,
                gt_prob=c.gt_prob,
                iterations=c.iterations,
                gauss_sxy=c.gauss_sxy,
                gauss_compat=c.gauss_compat,
                bilateral_sxy=c.bilateral_sxy,
                bilateral_srgb=c.bilateral_srgb,
                bilateral_compat=c.bilateral_compat,
            )

        name = f"{stage}_crf_{split}"
    metrics = evaluate_cams(
        run.cams(stage),
        ds,
        thresholds,
        crf=crf_fn,
        progress=progress,
        desc=f"eval {name}",
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
    ds = _dataset(cfg, split)
    return seed_part_recall(run.cams(stage), ds, cfg.data.root, metrics["threshold"])
