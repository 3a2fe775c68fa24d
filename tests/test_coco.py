"""COCO → VOC layout: exact masks from a hand-written annotation file, read back by the VOC reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esol_lib.data.coco import convert_coco
from esol_lib.data.voc import MissingDependencyError, VOCSegmentation, load_mask, read_split
from esol_lib.runtime.errors import DatasetError

# pycocotools' own decode() warns under NumPy 2; nothing to do with the conversion
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 8, 10
# category ids out of order on purpose: index = rank of the sorted id (1 person -> 1, 18 dog -> 2)
CATEGORIES = [
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
]


def _image(image_id: int, split: str) -> dict:
    return {"id": image_id, "file_name": f"COCO_{split}_{image_id:012d}.jpg", "height": H, "width": W}


def _poly(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


TRAIN = {
    "images": [_image(9, "train2014"), _image(30, "train2014")],  # image 30 has no annotation
    "categories": CATEGORIES,
    "annotations": [
        # the small person is listed first, yet drawn over the large dog (smaller wins)
        {
            "id": 1,
            "image_id": 9,
            "category_id": 1,
            "segmentation": _poly(2, 1, 4, 3),
            "area": 4.0,
            "bbox": [2, 1, 2, 2],
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 9,
            "category_id": 18,
            "segmentation": _poly(0, 0, 6, 6),
            "area": 36.0,
            "bbox": [0, 0, 6, 6],
            "iscrowd": 0,
        },
        # a crowd of people on columns 5..9 as uncompressed (column-major) RLE
        {
            "id": 3,
            "image_id": 9,
            "category_id": 1,
            "segmentation": {"counts": [5 * H, 5 * H], "size": [H, W]},
            "area": 40.0,
            "bbox": [5, 0, 5, 8],
            "iscrowd": 1,
        },
    ],
}
VAL = {
    "images": [_image(42, "val2014")],
    "categories": CATEGORIES,
    "annotations": [
        {
            "id": 4,
            "image_id": 42,
            "category_id": 18,
            "segmentation": _poly(1, 1, 9, 7),
            "area": 48.0,
            "bbox": [1, 1, 8, 6],
            "iscrowd": 0,
        }
    ],
}


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    pytest.importorskip("pycocotools.coco")
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split, data in (("train2014", TRAIN), ("val2014", VAL)):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        for k, info in enumerate(data["images"]):
            (root / split).mkdir(exist_ok=True)
            arr = np.full((H, W, 3), 40 * k, np.uint8)
            Image.fromarray(arr).save(root / split / info["file_name"])
    return root


def _expected_train_mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[:, 5:] = 255  # crowd region: void ...
    mask[0:6, 0:6] = 2  # ... except where a (non-crowd) dog covers it
    mask[1:3, 2:4] = 1  # the smaller person over the dog
    return mask


def test_convert_coco_writes_voc_layout(coco_root: Path, tmp_path: Path):
    out = tmp_path / "COCO2014"
    convert_coco(coco_root, out)
    assert (out / "classes.txt").read_text().split("\n")[:2] == ["person", "dog"]
    assert read_split(out, "train") == ["COCO_train2014_000000000009", "COCO_train2014_000000000030"]
    assert read_split(out, "val") == ["COCO_val2014_000000000042"]
    mask_png = out / "SegmentationClass" / "COCO_train2014_000000000009.png"
    assert Image.open(mask_png).mode == "P"
    assert np.array_equal(load_mask(mask_png, 2), _expected_train_mask())
    empty = load_mask(out / "SegmentationClass" / "COCO_train2014_000000000030.png", 2)
    assert empty.shape == (H, W) and not empty.any()
    val = load_mask(out / "SegmentationClass" / "COCO_val2014_000000000042.png", 2)
    assert val.sum() == 2 * 8 * 6 and np.all(val[1:7, 1:9] == 2)

    ds = VOCSegmentation(out, "train")
    assert ds.classes == ["person", "dog"]
    assert ds.labels().tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert ds[0]["image"].shape == (H, W, 3)


def test_convert_coco_limit_and_keep_empty(coco_root: Path, tmp_path: Path):
    convert_coco(coco_root, tmp_path / "a", splits=("train2014",), limit=1)
    assert read_split(tmp_path / "a", "train") == ["COCO_train2014_000000000009"]
    convert_coco(coco_root, tmp_path / "b", splits=("train2014",), keep_empty=False)
    assert read_split(tmp_path / "b", "train") == ["COCO_train2014_000000000009"]


def test_missing_annotation_file(coco_root: Path, tmp_path: Path):
    (coco_root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DatasetError, match=r"instances_val2014\.json is missing"):
        convert_coco(coco_root, tmp_path / "out")


def test_missing_image_file(coco_root: Path, tmp_path: Path):
    (coco_root / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(DatasetError, match=r"COCO_val2014_000000000042\.jpg is missing"):
        convert_coco(coco_root, tmp_path / "out")


def test_pycocotools_missing(coco_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'esol-lib\[coco\]'"):
        convert_coco(coco_root, tmp_path / "out")
