"""VOC 2012's augmented training list ``train_aug`` (10,582 images) from VOC + SBD, as IRN and PSA build it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from esol_lib.data.drawing import write_lines
from esol_lib.data.palette import save_label_png
from esol_lib.data.voc import (
    IMAGE_DIR,
    SPLIT_DIR,
    MissingDependencyError,
    missing_files,
    read_split,
    split_listing,
    unsafe_name,
)
from esol_lib.runtime.errors import DatasetError

__all__ = ["make_train_aug", "read_sbd_list", "load_sbd_mask"]

AUG_DIR = "SegmentationClassAug"


def _sbd_dataset_dir(sbd_root: Path) -> Path:
    """``sbd_root`` itself, or its ``dataset/`` folder when given the ``benchmark_RELEASE`` root."""
    if not (sbd_root / "train.txt").is_file() and (sbd_root / "dataset" / "train.txt").is_file():
        return sbd_root / "dataset"
    return sbd_root


def read_sbd_list(sbd_root: Path, name: str) -> list[str]:
    """Ids in SBD's ``train.txt`` / ``val.txt``."""
    path = sbd_root / f"{name}.txt"
    if not path.is_file():
        raise DatasetError(
            f"SBD list {path} is missing; --sbd-root must be SBD's 'dataset' folder "
            "(benchmark_RELEASE/dataset, holding train.txt, val.txt and cls/)"
        )
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [i for i in ids if unsafe_name(i)]
    if bad:
        raise DatasetError(f"{path} lists ids that are not plain file stems: {split_listing(bad)}")
    return ids


def _loadmat():
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise MissingDependencyError("reading SBD's .mat masks needs scipy: pip install scipy") from exc
    return loadmat


def load_sbd_mask(path: Path) -> np.ndarray:
    """The class mask (``GTcls.Segmentation``) of one SBD ``cls/<id>.mat`` file, as uint8."""
    loadmat = _loadmat()
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        seg = mat["GTcls"].Segmentation
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise DatasetError(
            f"SBD mask {path} is unreadable or has no GTcls.Segmentation ({exc}); "
            "re-copy it from benchmark_RELEASE/dataset/cls/"
        ) from exc
    seg = np.asarray(seg)
    if seg.ndim != 2 or (seg.size and (seg.min() < 0 or seg.max() > 255)):
        raise DatasetError(f"SBD mask {path} is not a 2-D class-index map (shape {seg.shape})")
    return seg.astype(np.uint8)


def make_train_aug(
    voc_root: str | Path, sbd_root: str | Path, out_name: str = "train_aug", *, overwrite: bool = False
) -> list[str]:
    """Build ``(SBD train ∪ SBD val ∪ VOC train) − VOC val`` and its masks; return the sorted ids.

    Every PNG of VOC's ``SegmentationClass`` is copied into ``voc_root/SegmentationClassAug/`` (so
    VOC ids, ``val`` included, keep their own finer masks with void borders), and each remaining
    train_aug id gets SBD's ``cls/<id>.mat`` converted to a palette PNG there. The list is written
    to ``ImageSets/Segmentation/<out_name>.txt``; with the real data it has 10,582 ids. Existing
    PNGs are kept unless ``overwrite`` (the conversion is resumable). Needs scipy.
    """
    voc_root, sbd_root = Path(voc_root), _sbd_dataset_dir(Path(sbd_root))
    if not out_name or unsafe_name(out_name):
        raise DatasetError(f"out_name {out_name!r} is not a plain split name such as 'train_aug'")
    _loadmat()  # fail before doing any work when scipy is missing
    voc_train, voc_val = read_split(voc_root, "train"), read_split(voc_root, "val")
    sbd_ids = set(read_sbd_list(sbd_root, "train")) | set(read_sbd_list(sbd_root, "val"))
    ids = sorted((sbd_ids | set(voc_train)) - set(voc_val))
    missing = missing_files(voc_root / IMAGE_DIR, ids, ".jpg") if (voc_root / IMAGE_DIR).is_dir() else ids
    if missing:
        raise DatasetError(
            f"{len(missing)} train_aug id(s) have no image in {voc_root / IMAGE_DIR}: "
            f"{split_listing(missing)}; SBD's images are all part of VOC 2012's JPEGImages, "
            "so point --voc-root at VOCdevkit/VOC2012"
        )
    voc_masks, aug = voc_root / "SegmentationClass", voc_root / AUG_DIR
    aug.mkdir(parents=True, exist_ok=True)
    voc_pngs = sorted(voc_masks.glob("*.png")) if voc_masks.is_dir() else []
    for src in tqdm(voc_pngs, desc="copy VOC masks", unit="mask", leave=False):
        dst = aug / src.name
        if overwrite or not dst.exists():
            shutil.copyfile(src, dst)
    have_voc = {p.stem for p in voc_pngs}
    need_sbd = [i for i in ids if i not in have_voc]
    no_mask = [i for i in need_sbd if i not in sbd_ids]
    if no_mask:
        raise DatasetError(
            f"{len(no_mask)} VOC train id(s) have no mask in {voc_masks} and are not in "
            f"SBD: {split_listing(no_mask)}; re-copy VOC's SegmentationClass folder"
        )
    for image_id in tqdm(need_sbd, desc="convert SBD masks", unit="mask"):
        dst = aug / f"{image_id}.png"
        if overwrite or not dst.exists():
            src = sbd_root / "cls" / f"{image_id}.mat"
            if not src.is_file():
                raise DatasetError(f"SBD mask {src} is missing; re-copy SBD's cls/ folder")
            save_label_png(dst, load_sbd_mask(src))
    (voc_root / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    write_lines(voc_root / SPLIT_DIR / f"{out_name}.txt", ids)
    return ids
