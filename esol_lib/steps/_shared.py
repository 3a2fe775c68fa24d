"""What every pipeline step shares: opening a run folder, the device, a split's dataset, the trained baseline.

A step reads its inputs from the run folder and fails with the command to run first when one is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from esol_lib.data import VOCSegmentation, resolve_data_root
from esol_lib.data.training_sets import LabelledOnly
from esol_lib.data.transforms import AugmentedDataset, TrainTransform
from esol_lib.data.voc import SPLIT_DIR, available_splits
from esol_lib.models import build_classifier
from esol_lib.runtime.atomic import read_json
from esol_lib.runtime.checkpoint import INPUTS_KEY, load_checkpoint, load_stage_checkpoint
from esol_lib.runtime.config import Config
from esol_lib.runtime.config_io import apply_overrides, config_from_dict, config_to_dict, load_config
from esol_lib.runtime.distributed import init_distributed, make_loader
from esol_lib.runtime.errors import ConfigError, EsolError, StageError
from esol_lib.runtime.freshness import data_fingerprint, data_record, file_digest
from esol_lib.runtime.rundir import RunDir, create_run
from esol_lib.runtime.stages import STAGE_TABLE
from esol_lib.steps.pretrain import ensure_openmoji_weights

__all__ = [
    "STAGE_COMMAND",
    "load_baseline",
    "notebook_run",
    "open_run",
    "require_cams",
    "resolve_device",
    "split_dataset",
    "stage_inputs",
    "start_run",
    "training_loader",
]

#: What produces each stage's checkpoint, for error messages (from the stage table; a training-free
#: control's CAMs are made by ``esol make-cam`` itself).
STAGE_COMMAND = {s.name: s.command or f"esol make-cam --stage {s.name}" for s in STAGE_TABLE}


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
    return create_run(run, cfg, unchanged=_moved_data(RunDir(Path(run)), cfg))


def recorded_data(run: RunDir) -> dict[str, str]:
    """The data fingerprints a run folder recorded, by split: of its CAM folders' splits
    (``cams/*/_data_<split>.json``) and of the training split in the baseline's checkpoint."""
    found: dict[str, str] = {}
    for record in sorted(run.root.glob("cams/*/_data_*.json")):
        fingerprint = (read_json(record) or {}).get("data")
        if fingerprint:
            found.setdefault(record.stem[len("_data_") :], fingerprint)
    ckpt = run.checkpoint("baseline")
    if ckpt.is_file():
        with contextlib.suppress(StageError):
            inputs = load_checkpoint(ckpt).get(INPUTS_KEY) or {}
            cfg = run.load_config()
            if inputs.get("data"):
                found.setdefault(cfg.data.train_split, inputs["data"])
    return found


def _moved_data(run: RunDir, cfg: Config) -> tuple[str, ...]:
    """``("data.root",)`` when ``cfg`` differs from the run's config only by being pointed at a new
    data root that holds the same data (every fingerprint the run recorded matches), else ``()``.

    A moved dataset (``mv data/voc /mnt/voc``) is then accepted by ``--data-root`` on the existing
    run, with one line saying nothing needs redoing; other data there is still refused
    (:func:`esol_lib.runtime.rundir.supersede`), since the baseline was trained on the old."""
    import logging

    if not run.config_path.is_file():
        return ()
    try:
        old = run.load_config()
    except (ConfigError, StageError):
        return ()
    if old.data.root == cfg.data.root or not old.data.root:
        return ()
    records = recorded_data(run)
    if not records:
        return ()
    for split, fingerprint in records.items():
        try:
            now = data_fingerprint(VOCSegmentation(cfg.data.root, split))
        except (OSError, EsolError):
            return ()
        if now != fingerprint:
            return ()
    logging.getLogger(__name__).warning(
        "data.root moved from %s to %s: the data there is the same (split(s) %s match what this run "
        "recorded); nothing needs redoing",
        old.data.root,
        cfg.data.root,
        ", ".join(sorted(records)),
    )
    return ("data.root",)


def _check_splits(cfg: Config, root: Path) -> None:
    """Every split the pipeline will read exists, checked before the run folder is written (a missing
    ``val`` used to surface at ``eval-seg``, after every training stage)."""
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
    (:func:`esol_lib.runtime.rundir.supersede`).
    """
    rd = RunDir(Path(run))
    cfg = rd.load_config()
    if overrides:
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), list(overrides)))
        if cfg.data.root:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(Path(cfg.data.root).resolve())))
        create_run(rd.root, cfg, unchanged=_moved_data(rd, cfg))
    return rd, cfg


def resolve_device(cfg: Config) -> torch.device:
    """``device: auto`` → CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", init_distributed().local_rank)


def training_loader(
    items: torch.utils.data.Dataset, transform, *, batch_size: int, seed: int, num_workers: int, too_few: str
) -> torch.utils.data.DataLoader:
    """The loader a training step cycles through: ``items`` augmented by ``transform`` (seeded by
    ``seed``), shuffled, in full batches of ``batch_size`` (the last partial batch dropped), in the
    order exact resume needs (:func:`esol_lib.runtime.distributed.make_loader`). A split with fewer
    items than one batch raises :class:`StageError` with ``too_few`` (which setting to lower)."""
    data = AugmentedDataset(items, transform, seed=seed)
    loader = make_loader(data, batch_size, shuffle=True, seed=seed, num_workers=num_workers, drop_last=True)
    if len(loader) == 0:
        raise StageError(too_few)
    return loader


def cam_training_loader(
    cfg: Config, split: str, batch_size: int, seed: int, setting: str
) -> tuple[VOCSegmentation, torch.utils.data.DataLoader]:
    """The split and a :func:`training_loader` of its labelled images, augmented as ``train_cam`` says
    (resize, crop, flip): what the baseline and the two ESOL stages train on. ``setting`` names what to
    lower when the split holds fewer images than one batch."""
    base = split_dataset(cfg, split)
    tc = cfg.train_cam
    transform = TrainTransform(
        resize_long=tuple(tc.resize_long), crop_size=tc.crop_size, mean=cfg.data.mean, std=cfg.data.std, flip=tc.flip
    )
    loader = training_loader(
        LabelledOnly(base),
        transform,
        batch_size=batch_size,
        seed=seed,
        num_workers=cfg.data.num_workers,
        too_few=f"split {split!r} has {len(base)} images, fewer than one batch of {batch_size}; lower {setting}",
    )
    return base, loader


def split_dataset(cfg: Config, split: str, **kwargs) -> VOCSegmentation:
    """The dataset of ``split`` under the run's data root."""
    return VOCSegmentation(cfg.data.root, split, **kwargs)


#: The checkpoint each CAM stage starts from (from the stage table).
UPSTREAM = {s.name: s.upstream for s in STAGE_TABLE}


def stage_inputs(run: RunDir, cfg: Config, stage: str) -> dict[str, str]:
    """What ``checkpoints/<stage>.pt`` of a CAM stage is trained from: the training split's data
    fingerprint (ids, image and mask bytes) and the digest of the checkpoint it starts from.

    Recorded in the checkpoint by :func:`~esol_lib.runtime.engine.train_loop`; a dataset whose contents were
    replaced in place, or a retrained earlier stage, makes the stage train again instead of being
    reported as done, and a model loaded for CAMs is refused until then (its settings are the
    config's, which :func:`esol_lib.runtime.rundir.supersede` already covers).
    """
    if not cfg.data.root:  # a config as loaded, not the run's (whose root start_run resolved)
        cfg = run.load_config()
    inputs = {"data": data_fingerprint(split_dataset(cfg, cfg.data.train_split))}
    upstream = UPSTREAM[stage]
    if upstream is not None:
        ckpt = run.checkpoint(upstream)
        inputs[upstream] = file_digest(ckpt) if ckpt.is_file() else ""
    return inputs


def load_baseline(run: RunDir, cfg: Config, num_classes: int, device: torch.device):
    """The trained baseline classifier, in eval mode (refused when trained from other data than the run holds)."""
    model = build_classifier(cfg.model, num_classes)
    load_stage_checkpoint(
        run,
        "baseline",
        model,
        hint=f"run `esol train-cam --run {run.root}`",
        inputs=stage_inputs(run, cfg, "baseline"),
    )
    return model.to(device).eval()


def require_cams(run: RunDir, stage: str, ds: VOCSegmentation, split: str) -> None:
    """Every image of ``split`` has a CAM file of ``stage``, made from the data the split holds now;
    else a :class:`StageError` that names the ``esol make-cam`` command to run."""
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
