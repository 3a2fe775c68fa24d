"""Transforms on sample dicts (``{'image': HxWx3 uint8, 'mask': HxW uint8, ...}``) for training.

IRN's classifier augmentation (:class:`TrainTransform`): random rescale of the long side, horizontal
flip, colour normalisation, random crop (padding with 0 for the image and 255 = void for masks); IRN's
affinity augmentation (:class:`IRNTrainTransform`) and DeepLab-v2's (:class:`SegTrainTransform`).
All randomness comes from the ``numpy.random.Generator`` passed in, so a loader seeded per epoch
gives the same batches again after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from esol_lib.data.palette import VOID


def resize_sample(sample: dict, scale: float) -> dict:
    """Rescale the image (bilinear) and the masks (nearest) by ``scale``."""
    out = dict(sample)
    h, w = sample["image"].shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out["image"] = np.asarray(Image.fromarray(sample["image"]).resize(size, Image.BILINEAR))
    for key in ("mask", "part"):
        if key in sample:
            out[key] = np.asarray(Image.fromarray(sample[key]).resize(size, Image.NEAREST))
    return out


def hflip_sample(sample: dict) -> dict:
    out = dict(sample)
    for key in ("image", "mask", "part"):
        if key in sample:
            out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    return out


def crop_sample(sample: dict, size: int, rng: np.random.Generator) -> dict:
    """Random ``size``×``size`` crop; smaller inputs are padded (image 0, masks 255 = void)."""
    out = dict(sample)
    h, w = sample["image"].shape[:2]
    ch, cw = max(h, size), max(w, size)
    top = int(rng.integers(0, ch - size + 1))
    left = int(rng.integers(0, cw - size + 1))
    # Place the image at a random offset inside the padded canvas, as IRN's random_crop does.
    oy = int(rng.integers(0, ch - h + 1))
    ox = int(rng.integers(0, cw - w + 1))
    for key, fill in (("image", 0), ("mask", VOID), ("part", 0)):
        if key not in sample:
            continue
        arr = sample[key]
        canvas = np.full((ch, cw) + arr.shape[2:], fill, dtype=arr.dtype)
        canvas[oy : oy + h, ox : ox + w] = arr
        out[key] = canvas[top : top + size, left : left + size]
    return out


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``HxWx3`` uint8 → normalised ``(3, H, W)`` float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


@dataclass
class TrainTransform:
    """Random resize of the long side to ``resize_long``, flip, crop, normalise (IRN's train_cam)."""

    resize_long: tuple[int, int]
    crop_size: int
    mean: Sequence[float]
    std: Sequence[float]
    flip: bool = True

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        lo, hi = self.resize_long
        target = int(rng.integers(lo, hi + 1))
        sample = resize_sample(sample, target / max(sample["image"].shape[:2]))
        if self.flip and rng.random() < 0.5:
            sample = hflip_sample(sample)
        sample = crop_sample(sample, self.crop_size, rng)
        out = {k: v for k, v in sample.items() if k not in ("image", "mask", "part")}
        out["image"] = to_tensor(sample["image"], self.mean, self.std)
        if "mask" in sample:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"])).long()
        return out


class AugmentedDataset(torch.utils.data.Dataset):
    """``base[i]`` passed through ``transform(sample, rng)`` with ``rng`` drawn from ``(seed, epoch, i)``.

    The augmentation of every item depends only on the seed, the epoch and the index — not on the
    worker process or on how many batches came before — so a resumed run sees the same crops and
    flips as an uninterrupted one. The training engine calls :meth:`set_epoch` at each epoch.
    """

    def __init__(self, base: torch.utils.data.Dataset, transform: TrainTransform, seed: int = 0) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.transform(self.base[index], rng)


IRN_SCALE_RANGE = (0.5, 1.5)  # IRN's random rescale of the training images


class IRNTrainTransform:
    """IRN's affinity-dataset augmentation: random rescale, flip, normalise, random crop.

    The image is normalised *before* the crop, so padding is 0 in normalised space (the mean
    colour, IRN's ``random_crop``); the IR label is padded with 255 (ignored).
    """

    def __init__(
        self,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale_range: tuple[float, float] = IRN_SCALE_RANGE,
        flip: bool = True,
    ) -> None:
        self.crop_size = crop_size
        self.mean, self.std = mean, std
        self.scale_range = scale_range
        self.flip = flip

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        lo, hi = self.scale_range
        sample = resize_sample(sample, float(rng.uniform(lo, hi)))
        if self.flip and rng.random() < 0.5:
            sample = hflip_sample(sample)
        image = to_tensor(np.array(sample["image"]), self.mean, self.std).permute(1, 2, 0).numpy()
        out = crop_sample({"image": image, "mask": sample["mask"]}, self.crop_size, rng)
        return {
            "id": sample["id"],
            "image": torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).contiguous(),
            "ir_label": torch.from_numpy(out["mask"].astype(np.int64)),
        }


@dataclass
class SegTrainTransform:
    """DeepLab-v2's augmentation: random rescale by ``s ~ U(scale_range)``, flip, ``crop_size`` crop, normalise.

    The crop pads the image with 0 and the mask with 255 (void, ignored by the loss).
    """

    scale_range: Sequence[float]
    crop_size: int
    mean: Sequence[float]
    std: Sequence[float]
    flip: bool = True

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        lo, hi = float(self.scale_range[0]), float(self.scale_range[1])
        sample = resize_sample(sample, float(rng.uniform(lo, hi)) if hi > lo else lo)
        if self.flip and rng.random() < 0.5:
            sample = hflip_sample(sample)
        sample = crop_sample(sample, self.crop_size, rng)
        return {
            "id": sample["id"],
            "image": to_tensor(sample["image"], self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(sample["mask"])).long(),
        }
