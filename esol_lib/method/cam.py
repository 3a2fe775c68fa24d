"""Class activation maps (Eq. (2)): multi-scale, flipped, normalised; stored per image; evaluated as seeds.

For an image ``I`` and class ``k`` the paper's localization map is

    M_k = ReLU( sum_s  up( w_k^T F(I_s) ) )  /  max_{x,y} (...)          Eq. (2)

with ``F`` the feature map before global average pooling, ``w_k`` the classifier weights, ``I_s``
the image rescaled by scale ``s`` (and its horizontal flip, IRN's protocol) and ``up`` bilinear
upsampling to the image size. The ReLU is applied to each scale's map before summing (as IRN
does), which equals the formula above when every term is non-negative and avoids one scale's
negative evidence cancelling another's positive one.

Every stage goes through the same code. The method's stages (baseline, expansion, shrinkage) and
ReCAM/LPCAM supply a ``cam_fn`` mapping a normalised image batch ``(B, 3, H, W)`` to raw class maps
``(B, K, h, w)``, which Eq. (2) turns into CAMs (:class:`MultiScaleCams`). A method that makes its CAMs
another way (AdvCAM climbs the image, so it needs gradients) supplies a :class:`CamProducer` instead, which
decides its own gradient mode, in the manner of pytorch-grad-cam's ``BaseCAM``.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from esol_lib.data.synth import load_part_mask, part_recall
from esol_lib.data.transforms import to_tensor
from esol_lib.method.metrics import ThresholdSweep, confusion_matrix
from esol_lib.runtime.atomic import atomic_path, atomic_write_text, read_json
from esol_lib.runtime.errors import DivergenceError, StageError
from esol_lib.runtime.freshness import (
    META_FILE,
    damaged,
    data_record,
    drop_damaged,
    read_verified,
    record_sizes,
    reset_stale_folder,
    write_folder_signature,
)
from esol_lib.runtime.parallel import map_ordered

__all__ = [
    "CamFn",
    "CamProducer",
    "MultiScaleCams",
    "multiscale_cam",
    "rescale",
    "compute_cams",
    "cam_batch_size",
    "load_cam",
    "cams_to_label",
    "evaluate_cams",
    "require_live_cams",
    "seed_part_recall",
]

CamFn = Callable[[torch.Tensor], torch.Tensor]


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``images`` (B, C, H, W) resized by ``scale`` bilinearly, as IRN's CAM scales are made (1.0: as they are)."""
    if scale == 1.0:
        return images
    return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)


def multiscale_cam(
    cam_fn: CamFn, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = True, eps: float = 1e-5
) -> torch.Tensor:
    """Eq. (2) for a batch of equally sized images ``(B, 3, H, W)`` → ``(B, K, H, W)`` in ``[0, 1]``.

    Each scale's (and flip's) raw map goes through ReLU, is upsampled bilinearly to ``(H, W)`` and
    summed; every class map is then divided by its spatial maximum (+ ``eps``, so an all-zero map
    stays zero).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if not scales:
        raise ValueError("cam.scales must list at least one scale")
    b, _, h, w = images.shape
    total: torch.Tensor | None = None
    for s in scales:
        x = rescale(images, s)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        cam = F.relu(cam_fn(x))
        cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            cam = cam[:b] + cam[b:].flip(-1)
        total = cam if total is None else total + cam
    assert total is not None
    peak = total.flatten(2).max(-1).values[..., None, None]
    return total / (peak + eps)


@runtime_checkable
class CamProducer(Protocol):
    """What makes a batch's CAMs: ``(images (B, 3, H, W), labels (B, K)) → (B, K, H, W)`` in ``[0, 1]``.

    ``needs_grad``: :func:`compute_cams` runs it under ``torch.inference_mode`` when False, with autograd
    available when True (the producer then enables and detaches what it needs). Only the labelled classes'
    maps are stored; a producer may leave the others zero.
    """

    needs_grad: bool

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


@dataclass
class MultiScaleCams:
    """Eq. (2) of a raw class-map function: :func:`multiscale_cam` of ``cam_fn`` at ``scales`` (± flips)."""

    cam_fn: CamFn
    scales: Sequence[float]
    flip: bool = True
    needs_grad: bool = False

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return multiscale_cam(self.cam_fn, images, self.scales, self.flip)


def _cam_path(out_dir: Path, image_id: str) -> Path:
    return out_dir / f"{image_id}.npz"


def _save_cam(path: Path, cams: np.ndarray, keys: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:  # np.savez appends .npz to any other name
        np.savez(tmp, cams=cams.astype(np.float16), keys=keys.astype(np.int64))


def compute_cams(
    cam_fn: CamFn | CamProducer,
    dataset,
    out_dir: str | Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    scales: Sequence[float],
    flip: bool = True,
    batch_size: int | None = None,
    signature: str = "",
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "CAMs",
    data_signature: str | None = None,
    diverged_fix: str = "",
    refuse_all_zero: bool = True,
) -> Path:
    """Write ``out_dir/<id>.npz`` (``cams``: float16 ``(K_gt, H, W)``, ``keys``: 1-based class ids) per image.

    ``cam_fn`` is a raw class-map function (Eq. (2) at ``scales`` ± ``flip`` makes the CAMs,
    :class:`MultiScaleCams`) or a :class:`CamProducer`, which makes them itself (``scales`` and ``flip``
    are then only recorded in the folder's signature).

    Only the ground-truth classes of each image are stored (the paper's and IRN's protocol).
    Images already written under the same ``signature`` are skipped, so an interrupted run resumes;
    a folder with another signature (a retrained model, other scales) is emptied first.
    With ``data_signature`` (:func:`data_fingerprint` of ``dataset``, a split), CAMs of that split
    made from other data are recomputed (:func:`data_record`). Images of equal size are batched
    (``batch_size`` None: :func:`cam_batch_size` of ``device``), in batches cut from the whole split,
    so a resumed folder holds the bytes an uninterrupted run writes. A CAM that is not finite (a
    model that diverged while its loss stayed finite) stops it with :class:`DivergenceError` and
    ``diverged_fix``, before it is written.
    """
    batch_size = cam_batch_size(device) if batch_size is None else batch_size
    producer = cam_fn if isinstance(cam_fn, CamProducer) else MultiScaleCams(cam_fn, scales, flip)
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    reset_stale_folder(out_dir, signature)
    if data_signature is not None:  # this split's data changed (or was never recorded): its CAMs are stale
        record = data_record(out_dir, dataset.split)
        if (read_json(record) or {}).get("data") != data_signature:
            for image_id in dataset.ids:
                _cam_path(out_dir, image_id).unlink(missing_ok=True)
            atomic_write_text(record, json.dumps({"data": data_signature}) + "\n")
    drop_damaged(out_dir)
    todo = [i for i, image_id in enumerate(dataset.ids) if not _cam_path(out_dir, image_id).is_file()]
    have_meta = read_json(meta_path) is not None
    if not todo and have_meta:  # complete: leave the folder untouched (but for a size record a kill cut off)
        record_sizes(out_dir, [_cam_path(out_dir, image_id).name for image_id in dataset.ids])
        if refuse_all_zero:
            require_live_cams(out_dir, dataset.ids, diverged_fix)
        return out_dir
    if not have_meta:  # a new folder (or one just emptied for another signature)
        # Its time stamp is when these CAMs' model changed: metrics newer than it are current. Adding
        # another split's CAMs under the same signature leaves it alone, so they stay current.
        write_folder_signature(out_dir, signature, scales=list(scales), flip=flip)
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    missing = set(todo)
    try:
        with contextlib.nullcontext() if producer.needs_grad else torch.inference_mode():
            # Batches are cut from the whole split, not from what is missing: a batch's numbers depend
            # (in the last bits) on which images share it, so a resumed run must batch as a whole run did.
            for group in _size_batches(dataset, range(len(dataset.ids)), batch_size):
                if missing.isdisjoint(group):
                    continue
                samples = [dataset[i] for i in group]
                images = torch.stack([to_tensor(s["image"], mean, std) for s in samples]).to(device)
                labels = torch.stack([s["label"] for s in samples]).to(device)
                cams = producer(images, labels).detach().float().cpu().numpy()
                for i, s, cam in zip(group, samples, cams):
                    if i in missing:
                        keys = np.nonzero(s["label"].numpy() > 0.5)[0]
                        if not np.isfinite(cam[keys].astype(np.float16)).all():
                            raise DivergenceError(
                                f"the CAMs of image {s['id']} ({out_dir}) are not finite (NaN or inf): the model "
                                f"they come from diverged although its loss stayed finite; nothing was written for "
                                f"it. {diverged_fix or 'Retrain that stage with a lower learning rate'}"
                            )
                        _save_cam(_cam_path(out_dir, s["id"]), cam[keys], keys + 1)
                bar.update(len(missing.intersection(group)))
    finally:  # the error line starts on a line of its own
        bar.close()
    record_sizes(out_dir, [_cam_path(out_dir, image_id).name for image_id in dataset.ids])
    if refuse_all_zero:
        require_live_cams(out_dir, dataset.ids, diverged_fix)
    return out_dir


def _dead_cams_error(cam_dir: Path, images: int, fix: str) -> DivergenceError:
    return DivergenceError(
        f"every CAM in {cam_dir} is zero ({images} images with objects): the model they come from is dead (its "
        f"features are all zero, as a learning rate too high for it leaves them), so nothing can be scored. The "
        f"CAM files are kept. {fix or 'Retrain that stage with a lower learning rate'}"
    )


def require_live_cams(cam_dir: str | Path, ids: Sequence[str], fix: str = "") -> None:
    """Refuse a CAM folder in which every image's CAMs are zero: what a dead model writes.

    Reads the files in order and returns at the first non-zero CAM (the first file, for a live model);
    images without ground-truth classes store no CAM and do not count. Raises :class:`DivergenceError`
    with ``fix`` (what to retrain) when every CAM of every image with an object is zero.
    """
    cam_dir = Path(cam_dir)
    images = 0
    for image_id in ids:
        cams, keys = load_cam(cam_dir, image_id)
        if len(keys):
            images += 1
            if cams.max() > 0:
                return
    if images:
        raise _dead_cams_error(cam_dir, images, fix)


def cam_batch_size(device: torch.device | str, feature_cache: bool = False) -> int:
    """Images per forward pass of :func:`compute_cams`: 8, but 1 (2 with the flip) on a CPU without
    the feature cache.

    On a CPU a batch of 8 (16 with the flips) at scale 2.0 runs out of the processor's caches, so
    the same passes take longer than one image at a time (measured by ``benchmarks/compare.py``, on
    the book's Performance page). With the feature cache on (``feature_cache_mb``, the ``cpu``
    profile) the backbone's passes are memoised per batch, and one entry per image costs more in
    hashing, files and loads than it saves: there batches of 8 win. A GPU needs the batch.
    """
    return 1 if torch.device(device).type == "cpu" and not feature_cache else 8


def _size_batches(dataset, indices: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    """Consecutive runs of same-sized images, at most ``batch_size`` long (sizes read lazily)."""
    batch: list[int] = []
    size = None
    for i in indices:
        s = _image_size(dataset, i)
        if batch and (s != size or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(i)
        size = s
    if batch:
        yield batch


def _image_size(dataset, index: int) -> tuple[int, int]:
    from PIL import Image

    with Image.open(dataset.image_path(dataset.ids[index])) as img:
        return img.size


def load_cam(cam_dir: str | Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(cams (K_gt, H, W) float32, keys (K_gt,) 1-based class ids)`` of one image."""
    path = _cam_path(Path(cam_dir), image_id)
    cam_dir = Path(cam_dir)
    fix = f"run `esol make-cam --run {cam_dir.parent.parent} --stage {cam_dir.name}` for this split (it redoes it)"
    if not path.is_file():
        raise StageError(f"CAM file {path} is missing; {fix}")
    data = read_verified(path, fix)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return z["cams"].astype(np.float32), z["keys"]
    except Exception as e:  # not a CAM file: cut short, random bytes, another format
        raise damaged(path, fix, f"unreadable: {type(e).__name__}") from None


def cams_to_label(cams: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """Seed label map: the arg-max class where its score exceeds ``threshold``, else background (0)."""
    if len(keys) == 0:
        return np.zeros(cams.shape[1:], np.int64)
    best = cams.max(0)
    return np.where(best > threshold, np.asarray(keys)[cams.argmax(0)], 0).astype(np.int64)


def evaluate_cams(
    cam_dir: str | Path,
    dataset,
    thresholds: Sequence[float],
    *,
    crf: Callable[[np.ndarray, list[np.ndarray], int], list[np.ndarray]] | None = None,
    progress: bool = True,
    desc: str = "eval",
    workers: int | None = None,
    dead_fix: str = "",
    refuse_all_zero: bool = True,
    **meta,
) -> dict:
    """Threshold sweep of the seeds in ``cam_dir`` against ``dataset``'s masks → DESIGN.md metrics dict.

    With ``crf(image, labellings, n_labels) -> labellings`` (:func:`esol_lib.method.crf.crf_from_labelings`:
    one image's seeds at every threshold in one call, so its pairwise lattices are built once), each
    threshold's seed is refined by DenseCRF before scoring (only for the thresholds given, since a
    CRF per threshold and image is costly), on ``workers`` processes
    (:func:`esol_lib.runtime.parallel.map_ordered`; None: every core). ``crf`` must not use torch.
    A folder whose every CAM is zero (a dead model's) is refused with ``dead_fix``
    (:func:`require_live_cams`): its sweep would score background alone. ``refuse_all_zero=False``
    scores it (the steps do so for the ESOL stages, whose ablation variants may zero a map by design).
    """
    n = dataset.num_classes + 1
    names = ["background"] + list(dataset.classes)
    sweep = ThresholdSweep(thresholds, n)
    if crf is None:
        images, live = 0, False
        for i in tqdm(range(len(dataset)), desc=desc, unit="img", disable=not progress):
            cams, keys = load_cam(cam_dir, dataset.ids[i])
            images += bool(len(keys))
            live = live or bool(len(keys) and cams.max() > 0)
            sweep.add_scores(dataset[i]["mask"], cams, keys)
        if refuse_all_zero and images and not live:
            raise _dead_cams_error(Path(cam_dir), images, dead_fix)
        return sweep.result(names, **meta)
    if refuse_all_zero:
        require_live_cams(cam_dir, dataset.ids, dead_fix)

    def crf_confusions(i: int) -> list[np.ndarray]:
        sample = dataset[i]
        cams, keys = load_cam(cam_dir, dataset.ids[i])
        ids = np.concatenate([[0], keys])
        # CRF over the image's classes only: relabel to 0..len(keys) and back.
        local = [np.searchsorted(ids, cams_to_label(cams, keys, t)) for t in thresholds]
        return [
            confusion_matrix(sample["mask"], ids[refined], n) for refined in crf(sample["image"], local, len(keys) + 1)
        ]

    # one CRF per image and threshold, on one core each: spread the images over the cores
    for confs in tqdm(
        map_ordered(crf_confusions, range(len(dataset)), workers),
        total=len(dataset),
        desc=desc,
        unit="img",
        disable=not progress,
    ):
        for j, conf in enumerate(confs):
            sweep.confs[j] += conf
    return sweep.result(names, **meta)


def seed_part_recall(cam_dir: str | Path, dataset, part_root: str | Path, threshold: float) -> dict:
    """Recall of the seeds at ``threshold`` on discriminative parts vs the rest of each object.

    Uses the generated benchmark's ``SegmentationPart`` masks; measures partial localization.
    """
    part_sum = np.zeros(2, np.int64)
    rest_sum = np.zeros(2, np.int64)
    for i, image_id in enumerate(dataset.ids):
        cams, keys = load_cam(cam_dir, image_id)
        pred = cams_to_label(cams, keys, threshold)
        gt = dataset[i]["mask"]
        on_part, rest = part_recall(gt, load_part_mask(part_root, image_id), pred)
        part_sum += on_part
        rest_sum += rest
    return {
        "threshold": float(threshold),
        "part_recall": float(part_sum[0] / max(part_sum[1], 1)),
        "rest_recall": float(rest_sum[0] / max(rest_sum[1], 1)),
        "part_pixels": int(part_sum[1]),
        "rest_pixels": int(rest_sum[1]),
    }
