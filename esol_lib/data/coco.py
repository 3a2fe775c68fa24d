"""Convert MS COCO (2014) instance annotations into the VOC layout the reader expects (pycocotools)."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from esol_lib.data.drawing import write_lines
from esol_lib.data.palette import VOID, save_label_png
from esol_lib.data.voc import IMAGE_DIR, SPLIT_DIR, MissingDependencyError, unsafe_name
from esol_lib.runtime.atomic import link_or_copy
from esol_lib.runtime.errors import DatasetError

__all__ = ["convert_coco", "coco_semantic_mask", "split_list_name"]

MASK_DIR = "SegmentationClass"


def _coco_api():
    """``pycocotools.coco.COCO``, imported only when a conversion is asked for."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise MissingDependencyError(
            "converting COCO needs pycocotools: pip install 'esol-lib[coco]' (or pip install pycocotools)"
        ) from exc
    return COCO


def split_list_name(split: str) -> str:
    """The VOC split list a COCO split goes to: ``train2014`` → ``train``, ``val2014`` → ``val``."""
    return re.sub(r"\d+$", "", split) or split


def _load_annotations(coco_root: Path, split: str):
    path = coco_root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        folder = path.parent
        have = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
        raise DatasetError(
            f"COCO annotation file {path} is missing (found: {', '.join(have) or 'nothing'}"
            f"); --coco-root must hold annotations/instances_{split}.json and {split}/"
        )
    coco_cls = _coco_api()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return coco_cls(str(path))


def coco_semantic_mask(coco, image_info: dict, class_index: dict[int, int]) -> np.ndarray:
    """One image's ``(H, W)`` uint8 class map: 0 background, 1..K classes, 255 crowd regions.

    Crowd regions are marked void first; the non-crowd instances are then drawn largest first, so
    where instances overlap the smaller one (drawn last) wins, and an instance wins over a crowd region.
    """
    h, w = int(image_info["height"]), int(image_info["width"])
    label = np.zeros((h, w), np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_info["id"]], iscrowd=None))
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    things = sorted((a for a in anns if not a.get("iscrowd", 0)), key=lambda a: -float(a.get("area", 0)))
    for ann in crowd:
        label[coco.annToMask(ann) > 0] = VOID
    for ann in things:
        label[coco.annToMask(ann) > 0] = class_index[ann["category_id"]]
    return label


def _place_image(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy when linking is impossible, e.g. across file systems)."""
    if dst.exists():
        return
    if not src.is_file():
        raise DatasetError(f"COCO image {src} is missing; re-copy the split's image folder")
    link_or_copy(src, dst)


def _categories(coco) -> list[dict]:
    return sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])


def convert_coco(
    coco_root: str | Path,
    out: str | Path,
    splits: Sequence[str] = ("train2014", "val2014"),
    limit: int | None = None,
    *,
    keep_empty: bool = True,
    overwrite: bool = False,
) -> None:
    """Write COCO ``splits`` into ``out`` in VOC layout.

    For each split: ``JPEGImages/<id>.jpg`` (a hard link, or a copy, of ``coco_root/<split>/<file_name>``;
    ``<id>`` is the file name's stem, e.g. ``COCO_train2014_000000000009``),
    ``SegmentationClass/<id>.png`` palette masks (class index 1..80 in the order of the sorted
    category ids, 255 on crowd regions, smaller instances over larger ones) and
    ``ImageSets/Segmentation/train.txt`` / ``val.txt``; ``classes.txt`` gets the category names.

    Images without any annotation are **kept** by default (an all-background mask and an all-zero
    image-level label), so the lists hold every image of the split. The lists common in WSSS
    (82,081 train / 40,137 val images) leave them out: pass ``keep_empty=False`` for those.
    ``limit`` converts only the first N images (by image id) of each split. Existing files are kept
    unless ``overwrite``, so an interrupted conversion resumes.
    """
    coco_root, out = Path(coco_root), Path(out)
    if not coco_root.is_dir():
        raise DatasetError(
            f"COCO root {coco_root} does not exist; it must hold annotations/ and the "
            "image folders (train2014/, val2014/)"
        )
    classes: list[str] | None = None
    for split in splits:
        coco = _load_annotations(coco_root, split)
        cats = _categories(coco)
        names = [c["name"] for c in cats]
        if not 0 < len(names) < VOID:
            raise DatasetError(f"{split} has {len(names)} categories; a palette mask holds 1 to {VOID - 1}")
        if classes is None:
            classes = names
            write_lines(out / "classes.txt", classes)
        elif names != classes:
            raise DatasetError(
                f"the categories of {split} differ from those of {splits[0]}; convert splits with the same category set"
            )
        class_index = {c["id"]: k for k, c in enumerate(cats, start=1)}
        ids = _convert_split(coco, coco_root / split, out, class_index, limit, keep_empty, overwrite, split)
        write_lines(out / SPLIT_DIR / f"{split_list_name(split)}.txt", ids)


def _convert_split(
    coco,
    image_root: Path,
    out: Path,
    class_index: dict[int, int],
    limit: int | None,
    keep_empty: bool,
    overwrite: bool,
    split: str,
) -> list[str]:
    """Link the images and draw the masks of one split; return its ids in image-id order."""
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    infos = coco.loadImgs(sorted(coco.getImgIds()))
    if not keep_empty:
        infos = [i for i in infos if coco.getAnnIds(imgIds=[i["id"]], iscrowd=None)]
    if limit is not None:
        infos = infos[:limit]
    ids = []
    for info in tqdm(infos, desc=f"convert {split}", unit="image"):
        image_id = Path(info["file_name"]).stem
        if unsafe_name(image_id):
            raise DatasetError(f"COCO file name {info['file_name']!r} is not a plain file name")
        _place_image(image_root / info["file_name"], out / IMAGE_DIR / f"{image_id}.jpg")
        mask_path = out / MASK_DIR / f"{image_id}.png"
        if overwrite or not mask_path.exists():
            save_label_png(mask_path, coco_semantic_mask(coco, info, class_index))
        ids.append(image_id)
    return ids
