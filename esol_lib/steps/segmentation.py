"""The last two stages: DeepLab-v2 trained on a stage's pseudo masks, and scored on real masks.

``train_seg`` → ``checkpoints/seg-<stage>.pt``   (needs ``pseudo_masks/<stage>/``, from ``esol refine``)
``eval_seg``  → ``metrics/seg-<stage>_<split>.json`` and ``seg_predictions/<stage>/<id>.png``
               (needs ``checkpoints/seg-<stage>.pt``)

This is the paper's final step (§4.1, Table 3): "we train DeepLab-v2 with ResNet-101 on the
pseudo masks" and report mIoU on VOC val / COCO val. Settings are DeepLab-v2's (Chen et al.,
TPAMI 2017) as used by IRN: random rescale in ``[0.5, 1.5]``, flip, 321×321 crops (masks padded
with void), SGD with poly learning rate, backbone/ASPP-weight/ASPP-bias lr 1×/10×/20×, batch 10,
multi-scale + flip test with the dense CRF. A backbone trained from scratch (the CPU profiles) gets
no ASPP multipliers (:func:`esol_lib.method.seg_recipe.aspp_lr_mult`).

Which images are trained on: the pseudo masks are written by ``refine`` for the images it was
asked to label. For VOC that is ``train_aug`` (``data.train_split``, 10,582 images, as IRN and the
paper do); when every id of ``data.train_split`` has a pseudo mask that split is used, otherwise
``data.cam_split`` (whose pseudo masks ``refine`` scores against the ground truth), which must then
be complete.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from esol_lib.data import VOCSegmentation, read_classes, read_split, save_label_png
from esol_lib.data.training_sets import PseudoMaskDataset
from esol_lib.data.transforms import (
    SegTrainTransform,
)
from esol_lib.method.metrics import confusion_matrix, summarize, write_metrics
from esol_lib.method.seg_recipe import aspp_lr_mult, crf_postprocess, param_groups, predict, seg_loss
from esol_lib.models.deeplab import build_deeplab
from esol_lib.runtime.checkpoint import load_stage_checkpoint
from esol_lib.runtime.config import Config
from esol_lib.runtime.config_io import config_to_dict
from esol_lib.runtime.distributed import init_distributed, main_process_only, wrap_ddp
from esol_lib.runtime.engine import seed_everything, train_loop
from esol_lib.runtime.errors import ConfigError, DatasetError, StageError
from esol_lib.runtime.freshness import (
    META_FILE,
    current_metrics,
    data_fingerprint,
    file_digest,
    folder_complete,
    folder_signature,
    record_sizes,
    signature_of,
)
from esol_lib.runtime.rundir import RunDir, holds_run_lock
from esol_lib.runtime.schedule import PolyLR, stage_sgd
from esol_lib.runtime.stages import stage_spec
from esol_lib.runtime.train_log import JsonlLogger
from esol_lib.steps._shared import resolve_device, training_loader

__all__ = [
    "current_seg_metrics",
    "eval_seg",
    "prediction_dir",
    "seg_stage_name",
    "train_seg",
    "training_split",
]

SEG_CHECKPOINT_EVERY = 500  # no seg.checkpoint_every field yet; partial checkpoints this often


def seg_stage_name(stage: str) -> str:
    """The engine's stage name (checkpoint ``seg-<stage>.pt``, metrics ``seg-<stage>_<split>.json``)."""
    return f"seg-{stage}"


def prediction_dir(run: RunDir, stage: str) -> Path:
    """``RUN/seg_predictions/<stage>/``: the palette PNGs written by :func:`eval_seg`."""
    return run.root / "seg_predictions" / stage


def _check_stage(stage: str) -> None:
    stage_spec(stage)


def _refine_hint(run: RunDir, stage: str) -> str:
    return f"run `esol refine --run {run.root} --stage {stage}` first"


# --------------------------------------------------------------------------------------- data


def _mask_names(mask_dir: Path) -> set[str]:
    return {p.name for p in mask_dir.iterdir()} if mask_dir.is_dir() else set()


def training_split(cfg: Config, mask_dir: Path, *, hint: str = "run `esol refine` first") -> tuple[str, list[str]]:
    """``(split, ids)`` to train on: ``data.train_split`` if it is fully covered by pseudo masks, else
    ``data.cam_split``; a missing folder or an incomplete ``cam_split`` raises :class:`StageError`."""
    names = _mask_names(mask_dir)
    if not any(n.endswith(".png") for n in names):
        raise StageError(f"no pseudo masks in {mask_dir}; {hint}")
    for split in dict.fromkeys([cfg.data.train_split, cfg.data.cam_split]):
        try:
            ids = read_split(cfg.data.root, split)
        except DatasetError:
            continue
        missing = [i for i in ids if f"{i}.png" not in names]
        if ids and not missing:
            return split, ids
    ids = read_split(cfg.data.root, cfg.data.cam_split)
    missing = [i for i in ids if f"{i}.png" not in names]
    raise StageError(
        f"{len(missing)} of {len(ids)} pseudo masks of split {cfg.data.cam_split!r} are missing in "
        f"{mask_dir} (e.g. {missing[0] if missing else '?'}), and split {cfg.data.train_split!r} is "
        f"not complete either; {hint}"
    )


# --------------------------------------------------------------------------------------- train


@holds_run_lock
def train_seg(run: RunDir, stage: str = "shrinkage", *, progress: bool = True):
    """Train DeepLab-v2 on ``pseudo_masks/<stage>/`` → ``checkpoints/seg-<stage>.pt``; resumes if interrupted.

    SGD (``seg.lr``, ``seg.momentum``, ``seg.weight_decay``) with the poly schedule
    ``lr · (1 - t/T)^0.9`` for ``T = seg.max_steps`` steps of ``seg.batch_size`` crops. Returns the
    engine's :class:`~esol_lib.runtime.checkpoint.StageResult`.
    """
    _check_stage(stage)
    cfg = run.load_config()
    sc = cfg.seg
    if len(sc.scale_range) != 2 or sc.scale_range[0] <= 0 or sc.scale_range[1] < sc.scale_range[0]:
        raise ConfigError(f"seg.scale_range: expected [low, high] with 0 < low <= high, got {sc.scale_range!r}")
    mask_dir = run.pseudo_masks(stage)
    split, ids = training_split(cfg, mask_dir, hint=_refine_hint(run, stage))
    seed_everything(cfg.seed)
    info = init_distributed()
    device = resolve_device(cfg)
    num_classes = len(read_classes(cfg.data.root)) + 1
    base = PseudoMaskDataset(cfg.data.root, ids, mask_dir, num_classes - 1, fix=_refine_hint(run, stage))
    transform = SegTrainTransform(sc.scale_range, sc.crop_size, cfg.data.mean, cfg.data.std)
    loader = training_loader(
        base,
        transform,
        batch_size=sc.batch_size,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        too_few=f"split {split!r} has {len(base)} images with pseudo masks, fewer than one batch of "
        f"{sc.batch_size}; lower seg.batch_size",
    )
    JsonlLogger(run.log_path, enabled=info.is_main).log(
        stage=seg_stage_name(stage), event="data", split=split, images=len(ids), pseudo_masks=str(mask_dir)
    )
    model = build_deeplab(sc, num_classes).to(device)
    optimizer = stage_sgd(param_groups(model, sc.lr, aspp_lr_mult(sc)), sc)
    model = wrap_ddp(model, info)
    model.train()

    def loss_fn(m: torch.nn.Module, batch: dict) -> torch.Tensor:
        return seg_loss(m(batch["image"].to(device)), batch["mask"].to(device))

    return train_loop(
        seg_stage_name(stage),
        model,
        optimizer,
        loss_fn,
        loader,
        sc.max_steps,
        run,
        scheduler=PolyLR(optimizer, sc.max_steps),
        checkpoint_every=SEG_CHECKPOINT_EVERY,
        seed=cfg.seed,
        progress=progress,
        inputs=seg_inputs(cfg, mask_dir, split),
    )


def seg_inputs(cfg: Config, mask_dir: Path, split: str) -> dict[str, str]:
    """What ``checkpoints/seg-<stage>.pt`` is trained from: the pseudo masks' signature (their
    ``_meta.json``: the CAMs, IRN and their data) and the training split's images and masks. Recorded
    in the checkpoint: new data or new pseudo masks retrain DeepLab instead of reporting it done."""
    return {
        "pseudo_masks": str(folder_signature(mask_dir)),
        "data": data_fingerprint(VOCSegmentation(cfg.data.root, split)),
    }


# --------------------------------------------------------------------------------------- evaluate


def load_seg_model(run: RunDir, cfg: Config, stage: str, num_classes: int, device: torch.device):
    """The trained DeepLab-v2 of ``stage`` (``checkpoints/seg-<stage>.pt``), in eval mode; refused when
    trained from other pseudo masks or data than the run holds (checked while its pseudo masks exist)."""
    model = build_deeplab(cfg.seg, num_classes, pretrained=None, freeze_bn=False)
    mask_dir = run.pseudo_masks(stage)
    inputs = None
    if (mask_dir / META_FILE).is_file():
        with contextlib.suppress(StageError):  # masks half gone: the model is still scored as it is
            inputs = seg_inputs(cfg, mask_dir, training_split(cfg, mask_dir)[0])
    load_stage_checkpoint(
        run,
        seg_stage_name(stage),
        model,
        hint=f"run `esol train-seg --run {run.root} --stage {stage}` first",
        inputs=inputs,
    )
    return model.to(device).eval()


def seg_metrics_inputs(run: RunDir, stage: str, split: str) -> str:
    """The signature of what :func:`eval_seg` scores: the DeepLab checkpoint's bytes, the split's data
    and the test-time settings (stored as the metrics file's ``inputs``)."""
    cfg = run.load_config()
    ckpt = run.checkpoint(seg_stage_name(stage))
    return signature_of(
        {
            "checkpoint": file_digest(ckpt) if ckpt.is_file() else None,
            "data": data_fingerprint(VOCSegmentation(cfg.data.root, split)),
            "test_scales": [float(x) for x in cfg.seg.test_scales],
            "crf": config_to_dict(cfg)["crf"] if cfg.seg.crf else None,
        }
    )


def current_seg_metrics(run: RunDir, stage: str, split: str) -> dict | None:
    """``metrics/seg-<stage>_<split>.json`` if it scores the current model on the current data and the
    predictions it wrote are all there, undamaged; else None."""
    metrics = current_metrics(run.metrics(f"{seg_stage_name(stage)}_{split}"), seg_metrics_inputs(run, stage, split))
    if metrics is None:
        return None
    if metrics.get("predictions"):
        out_dir = prediction_dir(run, stage)
        ids = read_split(run.load_config().data.root, split)
        if not folder_complete(out_dir, [f"{i}.png" for i in ids], record=False):
            return None
    return metrics


@main_process_only
@holds_run_lock
def eval_seg(
    run: RunDir,
    stage: str = "shrinkage",
    split: str | None = None,
    *,
    progress: bool = True,
    save_predictions: bool = True,
) -> dict:
    """Score DeepLab-v2 of ``stage`` on ``split`` (default ``data.val_split``) → ``metrics/seg-<stage>_<split>.json``.

    Every image is predicted with ``seg.test_scales`` + flip (:func:`esol_lib.method.seg_recipe.predict`),
    refined by the dense CRF when ``seg.crf``, and accumulated into one confusion matrix over
    background + classes with void ignored (mIoU as in IRN and the paper). With ``save_predictions``
    the label maps are written as palette PNGs to ``seg_predictions/<stage>/<id>.png``.
    """
    _check_stage(stage)
    cfg = run.load_config()
    sc = cfg.seg
    split = split or cfg.data.val_split
    ds = VOCSegmentation(cfg.data.root, split)
    device = resolve_device(cfg)
    n = ds.num_classes + 1
    model = load_seg_model(run, cfg, stage, n, device)
    out_dir = prediction_dir(run, stage)
    conf = np.zeros((n, n), dtype=np.int64)
    for i in tqdm(range(len(ds)), desc=f"eval seg-{stage}/{split}", unit="img", disable=not progress):
        sample = ds[i]
        probs = predict(model, sample["image"], cfg.data.mean, cfg.data.std, sc.test_scales, flip=True)
        labels = crf_postprocess(sample["image"], probs, cfg.crf) if sc.crf else probs.argmax(0)
        conf += confusion_matrix(sample["mask"], labels, n)
        if save_predictions:
            save_label_png(out_dir / f"{sample['id']}.png", labels)
    metrics = {"stage": stage, "split": split}
    metrics.update(summarize(conf, ["background"] + list(ds.classes)))
    metrics.update({"crf": bool(sc.crf), "test_scales": [float(s) for s in sc.test_scales], "num_images": len(ds)})
    if save_predictions:
        record_sizes(out_dir, [f"{i}.png" for i in ds.ids])
    metrics["predictions"] = bool(save_predictions)
    metrics["inputs"] = seg_metrics_inputs(run, stage, split)
    write_metrics(run.metrics(f"{seg_stage_name(stage)}_{split}"), metrics)
    return metrics
