"""``esol refine``: IRN on one stage's CAMs → pseudo masks (§3.4), as four resumable steps on disk.

``make_ir_labels``    ``cams/<stage>/``                    → ``ir_labels/<stage>/<id>.png``
``train_irn``         ``ir_labels/<stage>/`` + baseline.pt → ``checkpoints/irn-<stage>.pt``
``make_pseudo_masks`` ``cams/<stage>/`` + irn checkpoint   → ``pseudo_masks/<stage>/<id>.png``
``eval_pseudo_masks`` ``pseudo_masks/<stage>/`` + GT       → ``metrics/mask-<stage>_<split>.json``

:func:`refine` runs them in order and skips every step whose outputs are complete. Each output
folder keeps a ``_meta.json`` with a signature of what produced it (the CAM folder's signature, the
settings, the IRN checkpoint); a folder made from other inputs is emptied and made again, as
:func:`esol_lib.method.cam.compute_cams` does for CAMs. The IRN checkpoint records the signature of the IR
labels it was trained on and its ``irn.backbone``, and is retrained when either changes.

Choices that differ from IRN's public setup (all documented where they are made):

- **Backbone** (``irn.backbone``, :func:`irn_backbone`). IRN's boundary branch sits on a frozen
  ImageNet ResNet-50 of its own, not on the CAM network: ``pretrained`` (the ``voc12``/``coco14``
  default) does that with the weights of ``model.pretrained``. Profiles without ImageNet weights
  choose between a frozen, seeded random initialisation of ``model.backbone`` (``random``, the
  ``cpu`` and ``smoke`` default: class-agnostic features, as ImageNet's are for VOC's classes) and
  the run's baseline classifier's backbone (``classifier``, ``checkpoints/baseline.pt``), whose
  features are tuned to the very parts its CAMs fire on.
- **Training images.** IRN trains on the IR labels of ``train_aug``; here on those of the split the
  CAMs were made for (``data.cam_split``), the images whose pseudo masks are scored.
- **Radius.** IRN trains with pairs within radius 10 and walks with radius 5 (feature cells);
  training here uses ``2 * irn.radius`` (:data:`TRAIN_RADIUS_FACTOR`) and inference ``irn.radius``.
- **Optimizer.** SGD, poly schedule, ``irn.lr``, ``irn.weight_decay`` 1e-4 (IRN's param groups
  set it). IRN's PolyOptimizer passes its weight decay positionally into SGD's momentum slot, so
  ``irn.momentum`` defaults to 1e-4: the optimiser IRN actually trained with.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from esol_lib.data import VOCSegmentation, load_image, load_mask, save_label_png
from esol_lib.data.transforms import (
    IRNTrainTransform,
    to_tensor,
)
from esol_lib.method.affinity import affinity_loss
from esol_lib.method.cam import load_cam
from esol_lib.method.crf import label_crf_settings
from esol_lib.method.irn import ir_labels, pseudo_mask
from esol_lib.method.metrics import confusion_matrix, summarize, write_metrics
from esol_lib.models import build_backbone
from esol_lib.models.backbone import Backbone
from esol_lib.models.boundary import BoundaryNet, boundary_map
from esol_lib.runtime.atomic import read_json
from esol_lib.runtime.checkpoint import load_checkpoint, load_stage_checkpoint, partial_checkpoint_path
from esol_lib.runtime.config import Config
from esol_lib.runtime.distributed import (
    barrier,
    get_dist_info,
    init_distributed,
    is_main_process,
    wrap_ddp,
)
from esol_lib.runtime.engine import seed_everything, train_loop
from esol_lib.runtime.errors import ConfigError, StageError
from esol_lib.runtime.freshness import (
    META_FILE,
    current_metrics,
    damaged,
    drop_damaged,
    file_digest,
    folder_complete,
    read_verified,
    record_sizes,
    recorded_signature,
    reset_stale_folder,
    signature_of,
    write_folder_signature,
)
from esol_lib.runtime.parallel import map_ordered
from esol_lib.runtime.rundir import RunDir, holds_run_lock
from esol_lib.runtime.schedule import PolyLR, stage_sgd, stage_steps
from esol_lib.runtime.stages import stage_spec
from esol_lib.steps._shared import load_baseline, require_cams, resolve_device, split_dataset, training_loader
from esol_lib.steps.producers import PRODUCERS

__all__ = [
    "eval_pseudo_masks",
    "ir_label_dir",
    "irn_backbone",
    "irn_stage_name",
    "load_irn",
    "make_ir_labels",
    "make_pseudo_masks",
    "refine",
    "train_irn",
]

IRN_BACKBONES = ("pretrained", "random", "classifier")  # irn.backbone
TRAIN_RADIUS_FACTOR = 2  # IRN: radius 10 for training, 5 for the random walk
CHECKPOINT_EVERY = 200


# ----------------------------------------------------------------------------- paths and signatures


def ir_label_dir(run: RunDir, stage: str) -> Path:
    """``RUN/ir_labels/<stage>/``: IRN's inter-pixel relation labels of that stage's CAMs."""
    return run.root / "ir_labels" / stage


def irn_stage_name(stage: str) -> str:
    """The engine's stage name (and checkpoint stem) of the IRN trained on ``stage``'s CAMs."""
    return f"irn-{stage}"


def _cam_signature(run: RunDir, stage: str) -> str:
    """The CAM folder's model signature and the data records of its splits: new data redoes the labels."""
    folder = run.cams(stage)
    data = sorted((p.name, (read_json(p) or {}).get("data")) for p in folder.glob("_data_*.json"))
    return (read_json(folder / META_FILE) or {}).get("signature", "") + (recorded_signature(data) if data else "")


def _ir_signature(run: RunDir, cfg: Config, stage: str) -> str:
    return recorded_signature(
        {
            "cams": _cam_signature(run, stage),
            "conf_fg": cfg.irn.conf_fg_thres,
            "conf_bg": cfg.irn.conf_bg_thres,
            "crf": label_crf_settings(cfg.crf),
        }
    )


def _mask_signature(run: RunDir, cfg: Config, stage: str) -> str:
    ckpt = run.checkpoint(irn_stage_name(stage))
    return recorded_signature(
        {
            "cams": _cam_signature(run, stage),
            "irn": file_digest(ckpt) if ckpt.is_file() else "",
            "radius": cfg.irn.radius,
            "beta": cfg.irn.beta,
            "exp_times": cfg.irn.exp_times,
            "bg": cfg.irn.sem_seg_bg_thres,
        }
    )


def _mask_metrics_inputs(run: RunDir, cfg: Config, stage: str, ds) -> str:
    """What the mask metrics score: the pseudo masks' signature and the split's ids (the masks'
    signature covers the CAMs, whose own signature covers the split's data)."""
    return signature_of({"masks": _mask_signature(run, cfg, stage), "ids": list(ds.ids)})


def _prepare(out_dir: Path, signature: str) -> None:
    """Empty ``out_dir`` if it was made from other inputs; record ``signature`` (rank 0 only)."""
    if is_main_process():
        reset_stale_folder(out_dir, signature)
        write_folder_signature(out_dir, signature)
    barrier()


def _complete(out_dir: Path, ids: Sequence[str], signature: str) -> bool:
    """Every ``<id>.png`` is there, undamaged, made from the current inputs
    (:func:`esol_lib.runtime.freshness.folder_complete`)."""
    return folder_complete(out_dir, [f"{i}.png" for i in ids], signature, record=is_main_process())


def _record_pngs(out_dir: Path, ids: Sequence[str]) -> None:
    if is_main_process():
        record_sizes(out_dir, [f"{i}.png" for i in ids])


def _shard(items: list[str]) -> list[str]:
    """This process's share of ``items`` under torchrun (all of them otherwise)."""
    info = get_dist_info()
    return items[info.rank :: info.world_size]


def stage_setup(run: RunDir, stage: str, split: str | None) -> tuple[Config, str, VOCSegmentation]:
    """The run's config, the split and its dataset; missing CAMs name ``esol make-cam``."""
    stage_spec(stage)
    cfg = run.load_config()
    split = split or cfg.data.cam_split
    limit = PRODUCERS[stage].max_images(cfg)
    if limit is not None:
        raise StageError(
            f"{stage}.max_images is {limit}: the {stage} CAMs cover only the first {limit} images of a split, "
            f"and IRN needs every image's; refine it with `--set {stage}.max_images=null`"
        )
    ds = split_dataset(cfg, split)
    require_cams(run, stage, ds, split)
    return cfg, split, ds


def _read_label(path: Path, fix: str = "run `esol refine` for this stage (it remakes what is missing)") -> np.ndarray:
    """A label PNG this module wrote, checked against its recorded checksum; a damaged one is deleted
    and named with ``fix`` (:func:`esol_lib.runtime.freshness.read_verified`)."""
    data = read_verified(path, fix)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as e:
        raise damaged(path, fix, f"unreadable: {type(e).__name__}") from None


# ----------------------------------------------------------------------------- 1. IR labels


@holds_run_lock
def make_ir_labels(run: RunDir, stage: str = "shrinkage", split: str | None = None, *, progress: bool = True) -> Path:
    """IRN's inter-pixel relation labels of ``stage``'s CAMs → ``ir_labels/<stage>/<id>.png``.

    Confident foreground / background seeds at ``irn.conf_fg_thres`` / ``irn.conf_bg_thres``, each
    refined by DenseCRF with the run's ``crf`` settings (:func:`esol_lib.method.irn.ir_labels`); palette
    PNGs with class ids, 0 background, 255 ignored. Existing files are kept.
    """
    cfg, split, ds = stage_setup(run, stage, split)
    out_dir = ir_label_dir(run, stage)
    _prepare(out_dir, _ir_signature(run, cfg, stage))
    drop_damaged(out_dir)
    todo = _shard([i for i in ds.ids if not (out_dir / f"{i}.png").is_file()])
    cam_dir = run.cams(stage)

    def one(image_id: str) -> None:  # two CRFs on one core: the images are spread over the cores
        cams, keys = load_cam(cam_dir, image_id)
        label = ir_labels(
            load_image(ds.image_path(image_id)), cams, keys, cfg.irn.conf_fg_thres, cfg.irn.conf_bg_thres, cfg.crf
        )
        save_label_png(out_dir / f"{image_id}.png", label)

    for _ in tqdm(
        map_ordered(one, todo), total=len(todo), desc=f"IR labels {stage}/{split}", unit="img", disable=not progress
    ):
        pass
    barrier()
    _record_pngs(out_dir, ds.ids)
    return out_dir


# ----------------------------------------------------------------------------- 2. train IRN


class _IRLabelled(torch.utils.data.Dataset):
    """Images of a split with their IR labels as ``mask`` (the ground truth is never read)."""

    def __init__(self, ds: VOCSegmentation, label_dir: Path) -> None:
        self.ds, self.label_dir = ds, label_dir

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ds.ids[index]
        return {
            "id": image_id,
            "image": load_image(self.ds.image_path(image_id)),
            "mask": _read_label(self.label_dir / f"{image_id}.png"),
        }


def labels_at(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """IR labels ``(B, H, W)`` at the boundary map's ``size`` (nearest, IRN's ``pil_rescale(·, 0.25, 0)``)."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def _irn_inputs(run: RunDir, cfg: Config, stage: str) -> dict[str, str]:
    """What an IRN checkpoint is trained from: the IR labels' signature and ``irn.backbone``."""
    return {"ir_signature": _ir_signature(run, cfg, stage), "backbone": cfg.irn.backbone}


def _trained_from(ckpt: dict, inputs: dict[str, str]) -> bool:
    """Whether a loaded IRN checkpoint's recorded inputs equal ``inputs`` (:func:`_irn_inputs`)."""
    extra = ckpt.get("extra") or {}
    return all(extra.get(key) == value for key, value in inputs.items())


def _drop_stale_checkpoints(run: RunDir, name: str, inputs: dict[str, str]) -> None:
    """Delete ``irn-<stage>`` checkpoints trained from other inputs (they would be skipped otherwise)."""
    if is_main_process():
        for path in (run.checkpoint(name), partial_checkpoint_path(run, name)):
            if path.is_file() and not _trained_from(load_checkpoint(path), inputs):
                path.unlink()
    barrier()


def _irn_done(run: RunDir, stage: str, inputs: dict[str, str]) -> bool:
    path = run.checkpoint(irn_stage_name(stage))
    if not path.is_file():
        return False
    ckpt = load_checkpoint(path)
    return bool(ckpt.get("done")) and _trained_from(ckpt, inputs)


def _check_irn_backbone(cfg: Config) -> None:
    """Raise ConfigError for an unknown ``irn.backbone`` or ``pretrained`` without ``model.pretrained``."""
    choice = cfg.irn.backbone
    if choice not in IRN_BACKBONES:
        raise ConfigError(f"irn.backbone: unknown choice {choice!r}; use one of {', '.join(IRN_BACKBONES)}")
    if choice == "pretrained" and not cfg.model.pretrained:
        raise ConfigError(
            "irn.backbone='pretrained' needs ImageNet weights in model.pretrained (IRN's setup), "
            "and model.pretrained is null; set it, or set irn.backbone to 'random' (a frozen "
            "random initialisation) or 'classifier' (the baseline classifier's backbone)"
        )


def irn_backbone(run: RunDir, cfg: Config, num_classes: int, device: torch.device | str = "cpu") -> Backbone:
    """The frozen backbone under IRN's boundary branch, as ``irn.backbone`` says (see the module docstring).

    ``pretrained``: ``model.backbone`` with the weights of ``model.pretrained`` (IRN's ImageNet
    ResNet-50); ``random``: ``model.backbone`` initialised from ``cfg.seed`` (the global random state
    is left as it was); ``classifier``: the backbone of ``checkpoints/baseline.pt``.

    Raises:
        ConfigError: an unknown ``irn.backbone``, or ``pretrained`` without ``model.pretrained``.
    """
    _check_irn_backbone(cfg)
    if cfg.irn.backbone == "classifier":
        return load_baseline(run, cfg, num_classes, device).backbone
    weights = cfg.model.pretrained if cfg.irn.backbone == "pretrained" else None
    with torch.random.fork_rng(devices=[]):  # 'random' is seeded; loaded weights overwrite the init anyway
        torch.manual_seed(cfg.seed)
        return build_backbone(cfg.model.backbone, cfg.model.strides, pretrained=weights).to(device)


@holds_run_lock
def train_irn(run: RunDir, stage: str = "shrinkage", *, progress: bool = True):
    """Train IRN's boundary branch on ``stage``'s IR labels → ``checkpoints/irn-<stage>.pt``.

    The backbone is :func:`irn_backbone`'s, frozen (``irn.backbone``, see the module docstring); the
    head is trained with IRN's affinity loss on random ``irn.crop_size`` crops of the CAM split
    (rescale 0.5–1.5, flip) for ``irn.max_steps`` steps (else ``irn.epochs`` epochs), SGD at
    ``irn.lr`` with the poly schedule. Resumable; skipped when done. Returns the engine's
    :class:`~esol_lib.runtime.checkpoint.StageResult`.
    """
    cfg, split, ds = stage_setup(run, stage, None)
    ic = cfg.irn
    label_dir = ir_label_dir(run, stage)
    inputs = _irn_inputs(run, cfg, stage)
    if not _complete(label_dir, ds.ids, inputs["ir_signature"]):
        raise StageError(
            f"the IR labels of stage {stage!r} in {label_dir} are missing or were made from other "
            f"CAMs; run `esol refine --run {run.root} --stage {stage}` (it makes them first)"
        )
    name = irn_stage_name(stage)
    _drop_stale_checkpoints(run, name, inputs)
    seed_everything(cfg.seed)
    info = init_distributed()
    device = resolve_device(cfg)
    transform = IRNTrainTransform(ic.crop_size, cfg.data.mean, cfg.data.std)
    loader = training_loader(
        _IRLabelled(ds, label_dir),
        transform,
        batch_size=ic.batch_size,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        too_few=f"split {split!r} has {len(ds)} images, fewer than one batch of {ic.batch_size}; lower irn.batch_size",
    )
    max_steps = stage_steps(ic, len(loader))
    model = BoundaryNet(irn_backbone(run, cfg, ds.num_classes, device)).to(device)
    optimizer = stage_sgd(model.trainable_parameters(), ic)
    model.train()
    model = wrap_ddp(model, info)
    radius = TRAIN_RADIUS_FACTOR * ic.radius

    def loss_fn(m: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        edge = m(batch["image"].to(device))
        label = labels_at(batch["ir_label"].to(device), (edge.shape[-2], edge.shape[-1]))
        return affinity_loss(edge, label, radius)

    return train_loop(
        name,
        model,
        optimizer,
        loss_fn,
        loader,
        max_steps,
        run,
        scheduler=PolyLR(optimizer, max_steps),
        checkpoint_every=CHECKPOINT_EVERY,
        seed=cfg.seed,
        extra_state=lambda: {**inputs, "radius": radius},
        progress=progress,
    )


def load_irn(run: RunDir, cfg: Config, stage: str, device: torch.device | str = "cpu") -> BoundaryNet:
    """The trained boundary network of ``stage`` (backbone included in its checkpoint), in eval mode."""
    model = BoundaryNet(build_backbone(cfg.model.backbone, cfg.model.strides, pretrained=None))
    load_stage_checkpoint(
        run, irn_stage_name(stage), model, hint=f"run `esol refine --run {run.root} --stage {stage}` first"
    )
    return model.to(device).eval()


# ----------------------------------------------------------------------------- 3. pseudo masks


@holds_run_lock
def make_pseudo_masks(
    run: RunDir, stage: str = "shrinkage", split: str | None = None, *, progress: bool = True
) -> Path:
    """IRN pseudo masks of ``stage``'s CAMs → ``pseudo_masks/<stage>/<id>.png`` (VOC palette, class ids).

    Per image: the boundary map (flip-averaged), the random walk of the CAMs at its resolution
    (``irn.radius``, ``irn.beta``, ``irn.exp_times``), upsampling and the ``irn.sem_seg_bg_thres``
    background (:func:`esol_lib.method.irn.pseudo_mask`). Existing files are kept.
    """
    cfg, split, ds = stage_setup(run, stage, split)
    ic = cfg.irn
    device = resolve_device(cfg)
    model = load_irn(run, cfg, stage, device)
    out_dir = run.pseudo_masks(stage)
    _prepare(out_dir, _mask_signature(run, cfg, stage))
    drop_damaged(out_dir)
    todo = _shard([i for i in ds.ids if not (out_dir / f"{i}.png").is_file()])
    for image_id in tqdm(todo, desc=f"pseudo masks {stage}/{split}", unit="img", disable=not progress):
        image = to_tensor(load_image(ds.image_path(image_id)), cfg.data.mean, cfg.data.std).to(device)
        edge = boundary_map(model, image)
        cams, keys = load_cam(run.cams(stage), image_id)
        mask = pseudo_mask(
            cams, keys, edge, radius=ic.radius, beta=ic.beta, exp_times=ic.exp_times, bg_thres=ic.sem_seg_bg_thres
        )
        save_label_png(out_dir / f"{image_id}.png", mask)
    barrier()
    _record_pngs(out_dir, ds.ids)
    return out_dir


# ----------------------------------------------------------------------------- 4. evaluation


@holds_run_lock
def eval_pseudo_masks(run: RunDir, stage: str = "shrinkage", split: str | None = None) -> dict:
    """Score ``stage``'s pseudo masks on ``split`` → ``metrics/mask-<stage>_<split>.json``.

    One confusion matrix over the split, 255 ignored; mIoU over background + classes, foreground
    precision / recall / F1 (DESIGN.md). ``threshold`` is the background score of the masks
    (``irn.sem_seg_bg_thres``).
    """
    cfg = run.load_config()
    split = split or cfg.data.cam_split
    ds = split_dataset(cfg, split)
    mask_dir = run.pseudo_masks(stage)
    missing = [i for i in ds.ids if not (mask_dir / f"{i}.png").is_file()]
    if missing:
        raise StageError(
            f"{len(missing)} pseudo mask(s) of stage {stage!r} on split {split!r} are missing in "
            f"{mask_dir} (e.g. {missing[0]}); run `esol refine --run {run.root} --stage {stage}` first"
        )
    n = ds.num_classes + 1
    conf = np.zeros((n, n), np.int64)
    for image_id in ds.ids:
        gt = load_mask(ds.mask_path(image_id), ds.num_classes)
        pred = _read_label(mask_dir / f"{image_id}.png")
        if pred.shape != gt.shape:
            raise StageError(
                f"pseudo mask {mask_dir / (image_id + '.png')} is {pred.shape} but the ground truth "
                f"is {gt.shape}; delete {mask_dir} and run `esol refine --run {run.root} --stage {stage}`"
            )
        conf += confusion_matrix(gt, pred, n)
    ic = cfg.irn
    metrics = {"stage": stage, "split": split, "threshold": float(ic.sem_seg_bg_thres)}
    metrics.update(summarize(conf, ["background"] + list(ds.classes)))
    metrics["irn"] = {
        "radius": ic.radius,
        "beta": ic.beta,
        "exp_times": ic.exp_times,
        "sem_seg_bg_thres": ic.sem_seg_bg_thres,
        "conf_fg_thres": ic.conf_fg_thres,
        "conf_bg_thres": ic.conf_bg_thres,
    }
    metrics["inputs"] = _mask_metrics_inputs(run, cfg, stage, ds)
    if is_main_process():
        write_metrics(run.metrics(f"mask-{stage}_{split}"), metrics)
    return metrics


# ----------------------------------------------------------------------------- all four


@holds_run_lock
def refine(run: RunDir, stage: str = "shrinkage", *, progress: bool = True) -> dict:
    """IR labels → IRN → pseudo masks → their metrics, for ``stage``'s CAMs on ``data.cam_split``.

    Every step whose outputs are complete is skipped (all IR labels / pseudo masks present and made
    from the current inputs; a done IRN checkpoint trained on the current IR labels and
    ``irn.backbone``; a metrics file newer than the masks). Returns the mask metrics. A bad
    ``irn.backbone`` is reported before any work starts.
    """
    cfg, split, ds = stage_setup(run, stage, None)
    _check_irn_backbone(cfg)
    if not _complete(ir_label_dir(run, stage), ds.ids, _ir_signature(run, cfg, stage)):
        make_ir_labels(run, stage, split, progress=progress)
    if not _irn_done(run, stage, _irn_inputs(run, cfg, stage)):
        train_irn(run, stage, progress=progress)
    mask_dir = run.pseudo_masks(stage)
    if not _complete(mask_dir, ds.ids, _mask_signature(run, cfg, stage)):
        make_pseudo_masks(run, stage, split, progress=progress)
    current = current_metrics(run.metrics(f"mask-{stage}_{split}"), _mask_metrics_inputs(run, cfg, stage, ds))
    return current if current is not None else eval_pseudo_masks(run, stage, split)
