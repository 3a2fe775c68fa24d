"""The VOC-layout reader: items, image-level labels and their cache, and errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from esol_lib.data import voc
from esol_lib.data.palette import save_label_png
from esol_lib.data.voc import (
    VOC_CLASSES,
    VOCSegmentation,
    load_image,
    load_mask,
    read_classes,
    read_split,
)
from esol_lib.runtime.errors import DatasetError

H, W = 6, 8
CLASSES = ["cat", "dog", "car"]
# id -> mask: each mask shows some classes, plus void pixels that never count as a class
MASKS = {
    "2007_000032": {1: (0, 2), 3: (2, 4), 255: (4, 5)},
    "000123": {2: (0, 3)},
    "2008_000001": {},
}


def _mask(spec: dict) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    for value, (r0, r1) in spec.items():
        mask[r0:r1] = value
    return mask


def _write_jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95)


def _write_split(root: Path, split: str, ids) -> None:
    folder = root / "ImageSets" / "Segmentation"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tiny VOC tree: 3 classes, a train split of 3 images and a val split of 1."""
    r = tmp_path / "voc"
    for k, (image_id, spec) in enumerate(MASKS.items()):
        _write_jpeg(r / "JPEGImages" / f"{image_id}.jpg", seed=k)
        save_label_png(r / "SegmentationClass" / f"{image_id}.png", _mask(spec))
    (r / "classes.txt").write_text("\n".join(CLASSES) + "\n\n")
    _write_split(r, "train", MASKS)
    (r / "ImageSets" / "Segmentation" / "val.txt").write_text("  000123  \n\n")
    return r


# -- reading ----------------------------------------------------------------------------------


def test_items_hold_image_mask_and_label(root: Path):
    ds = VOCSegmentation(root, "train")
    assert len(ds) == 3 and ds.num_classes == 3 and ds.classes == CLASSES
    item = ds[0]
    assert item["id"] == "2007_000032"
    assert item["image"].dtype == np.uint8 and item["image"].shape == (H, W, 3)
    assert item["mask"].dtype == np.uint8 and np.array_equal(item["mask"], _mask(MASKS["2007_000032"]))
    assert isinstance(item["label"], torch.Tensor) and item["label"].dtype == torch.float32
    assert item["label"].tolist() == [1.0, 0.0, 1.0]
    assert ds.image_path("000123") == root / "JPEGImages" / "000123.jpg"
    assert ds.mask_path("000123") == root / "SegmentationClass" / "000123.png"


def test_ids_stay_strings_with_leading_zeros(root: Path):
    assert read_split(root, "train") == ["2007_000032", "000123", "2008_000001"]
    assert read_split(root, "val") == ["000123"]
    ds = VOCSegmentation(root, "val")
    assert ds.ids == ["000123"] and ds[0]["id"] == "000123"


def test_transform_gets_and_returns_the_sample(root: Path):
    def flip(sample: dict) -> dict:
        return {**sample, "image": sample["image"][:, ::-1], "flipped": True}

    item = VOCSegmentation(root, "train", transform=flip)[0]
    assert item["flipped"] and item["label"].tolist() == [1.0, 0.0, 1.0]


def test_voc_classes_without_classes_txt(tmp_path: Path, root: Path):
    (root / "classes.txt").unlink()
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert read_classes(root) == list(VOC_CLASSES)
    assert VOCSegmentation(root, "train").num_classes == 20


def test_segmentation_class_aug_preferred(root: Path):
    for image_id in MASKS:
        save_label_png(root / "SegmentationClassAug" / f"{image_id}.png", np.full((H, W), 2, np.uint8))
    ds = VOCSegmentation(root, "train")
    assert ds.mask_path("000123").parent.name == "SegmentationClassAug"
    assert ds[0]["label"].tolist() == [0.0, 1.0, 0.0]
    explicit = VOCSegmentation(root, "train", mask_dir="SegmentationClass")
    assert explicit[0]["label"].tolist() == [1.0, 0.0, 1.0]


def test_unlabelled_split(root: Path):
    (root / "SegmentationClass" / "000123.png").unlink()
    with pytest.raises(DatasetError, match=r"no mask in .*SegmentationClass: '000123'"):
        VOCSegmentation(root, "train")
    ds = VOCSegmentation(root, "train", require_masks=False)
    item = ds[1]
    assert item["id"] == "000123" and "mask" not in item and "label" not in item
    assert "mask" in ds[0]


def test_grayscale_masks_are_read(tmp_path: Path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 1], [3, 255]], np.uint8), mode="L").save(path)
    assert load_mask(path, 3).tolist() == [[0, 1], [3, 255]]


# -- errors -----------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"nowhere does not exist.*--data-root"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="nowhere does not exist"):
        read_split(tmp_path / "nowhere", "train")


def test_missing_jpeg_images(root: Path):
    for p in (root / "JPEGImages").iterdir():
        p.unlink()
    (root / "JPEGImages").rmdir()
    with pytest.raises(DatasetError, match=r"JPEGImages is missing"):
        VOCSegmentation(root, "train")


def test_missing_split_lists_the_available_ones(root: Path):
    with pytest.raises(DatasetError, match=r"test\.txt is missing; available splits: train, val"):
        VOCSegmentation(root, "test")


def test_missing_imagesets(root: Path):
    for p in (root / "ImageSets" / "Segmentation").iterdir():
        p.unlink()
    (root / "ImageSets" / "Segmentation").rmdir()
    with pytest.raises(DatasetError, match=r"ImageSets.Segmentation is missing"):
        read_split(root, "train")


def test_id_without_image(root: Path):
    _write_split(root, "train", [*MASKS, "2009_999999"])
    with pytest.raises(
        DatasetError,
        match=r"1 id\(s\) of split 'train' have no image in .*JPEGImages: "
        r"'2009_999999'",
    ):
        VOCSegmentation(root, "train")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(root: Path, damage: str):
    path = root / "JPEGImages" / "000123.jpg"
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    ds = VOCSegmentation(root, "train")
    with pytest.raises(DatasetError, match=r"000123\.jpg is corrupt or truncated.*re-copy it or remove"):
        ds[1]
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_image(path)


def test_missing_image_file(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"gone\.jpg is missing; re-copy it or remove"):
        load_image(tmp_path / "gone.jpg")


def test_mask_label_outside_the_class_set(root: Path):
    save_label_png(root / "SegmentationClass" / "000123.png", np.full((H, W), 7, np.uint8))
    ds = VOCSegmentation(root, "train")
    with pytest.raises(
        DatasetError,
        match=r"000123\.png holds values \[7\] outside 0\.\.3 .*"
        r"3 foreground classes; check classes\.txt",
    ):
        ds[1]
    with pytest.raises(DatasetError, match=r"values \[7\]"):
        ds.labels()


def test_rgb_mask_is_refused(root: Path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:2] = (128, 0, 0)  # the VOC colour of class 1
    Image.fromarray(rgb, mode="RGB").save(root / "SegmentationClass" / "000123.png")
    with pytest.raises(DatasetError, match=r"000123\.png is an RGB colour image.*convert it to palette indices"):
        VOCSegmentation(root, "train")[1]


def test_mask_size_must_match_image(root: Path):
    save_label_png(root / "SegmentationClass" / "000123.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match=r"000123\.png is 8x7 but image .*000123\.jpg is 8x6"):
        VOCSegmentation(root, "train")[1]
    # train-cam reads only the image-level labels: the mismatch is caught there, before training
    with pytest.raises(DatasetError, match=r"000123\.png is 8x7 but image .*000123\.jpg is 8x6.*re-export"):
        VOCSegmentation(root, "train").labels()


@pytest.mark.parametrize("bad", ["../secret", "/etc/passwd", "a\\b", "sub/2007_000032"])
def test_id_leaving_the_root(root: Path, bad: str):
    _write_split(root, "train", ["000123", bad])
    with pytest.raises(DatasetError, match=r"train\.txt, line 2: id .* would leave the dataset root"):
        read_split(root, "train")


def test_classes_txt_with_background(root: Path):
    (root / "classes.txt").write_text("background\ncat\ndog\ncar\n")
    with pytest.raises(DatasetError, match=r"classes\.txt lists 'background'.*remove that line"):
        VOCSegmentation(root, "train")


def test_classes_txt_with_duplicates(root: Path):
    (root / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DatasetError, match=r"more than once: 'cat'"):
        read_classes(root)


# -- image-level labels and their cache ---------------------------------------------------------

EXPECTED = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], np.float32)


@pytest.fixture
def count_mask_reads(monkeypatch):
    """Count calls of the reader's ``load_mask`` (``calls[0]``)."""
    calls = [0]
    real = voc.load_mask

    def counting(path, num_classes):
        calls[0] += 1
        return real(path, num_classes)

    monkeypatch.setattr(voc, "load_mask", counting)
    return calls


def test_labels_from_masks_exclude_background_and_void(root: Path):
    labels = VOCSegmentation(root, "train").labels()
    assert labels.dtype == np.float32 and labels.shape == (3, 3)
    assert np.array_equal(labels, EXPECTED)


def test_labels_are_cached_on_disk(root: Path, monkeypatch):
    first = VOCSegmentation(root, "train").labels()
    cache = root / ".esol_cache" / "cls_labels_train_SegmentationClass.npz"
    assert cache.is_file()
    with np.load(cache) as z:
        assert z["ids"].tolist() == ["2007_000032", "000123", "2008_000001"]

    def fail(*_args, **_kwargs):
        raise AssertionError("a mask was read although the cache is valid")

    monkeypatch.setattr(voc, "load_mask", fail)
    assert np.array_equal(VOCSegmentation(root, "train").labels(), first)


def test_cache_invalidated_by_a_new_split_list(root: Path, count_mask_reads):
    VOCSegmentation(root, "train").labels()
    assert count_mask_reads[0] == 3
    _write_split(root, "train", ["000123", "2008_000001"])
    labels = VOCSegmentation(root, "train").labels()
    assert count_mask_reads[0] == 5
    assert np.array_equal(labels, EXPECTED[1:])


def test_cache_invalidated_by_a_changed_mask(root: Path, count_mask_reads):
    VOCSegmentation(root, "train").labels()
    path = root / "SegmentationClass" / "2008_000001.png"
    save_label_png(path, np.full((H, W), 3, np.uint8))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    labels = VOCSegmentation(root, "train").labels()
    assert count_mask_reads[0] == 6
    assert labels[2].tolist() == [0.0, 0.0, 1.0]


def test_cache_falls_back_to_home_when_root_is_read_only(root: Path, tmp_path: Path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(voc, "_writable", lambda _folder: False)
    ds = VOCSegmentation(root, "train")
    assert np.array_equal(ds.labels(), EXPECTED)
    assert not (root / ".esol_cache").exists()
    cached = list((home / ".cache" / "esol").glob("*/cls_labels_train_SegmentationClass.npz"))
    assert len(cached) == 1


# -- train_aug from VOC + SBD -------------------------------------------------------------------


def test_make_train_aug(tmp_path: Path):
    scipy_io = pytest.importorskip("scipy.io", reason="scipy writes the fake SBD .mat files")
    from esol_lib.data.sbd import make_train_aug

    voc_root, sbd_root = tmp_path / "VOC2012", tmp_path / "SBD"
    all_ids = ["2007_000001", "2007_000002", "2008_000003", "2008_000004", "2009_000005"]
    for k, image_id in enumerate(all_ids):
        _write_jpeg(voc_root / "JPEGImages" / f"{image_id}.jpg", seed=k)
    # VOC: train 0001, 0002; val 0003 (also in SBD train, so it must be left out)
    for image_id in ("2007_000001", "2007_000002", "2008_000003"):
        mask = np.full((H, W), 1, np.uint8)
        mask[0] = 255
        save_label_png(voc_root / "SegmentationClass" / f"{image_id}.png", mask)
    _write_split(voc_root, "train", ["2007_000001", "2007_000002"])
    _write_split(voc_root, "val", ["2008_000003"])
    (sbd_root / "cls").mkdir(parents=True)
    (sbd_root / "train.txt").write_text("2008_000003\n2008_000004\n2007_000002\n")
    (sbd_root / "val.txt").write_text("2009_000005\n")
    for image_id in ("2008_000003", "2008_000004", "2007_000002", "2009_000005"):
        seg = np.full((H, W), 15, np.uint8)
        scipy_io.savemat(
            sbd_root / "cls" / f"{image_id}.mat", {"GTcls": {"Segmentation": seg, "CategoriesPresent": np.array([15])}}
        )

    ids = make_train_aug(voc_root, sbd_root)
    assert ids == ["2007_000001", "2007_000002", "2008_000004", "2009_000005"]
    assert read_split(voc_root, "train_aug") == ids
    aug = voc_root / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted([*ids, "2008_000003"])
    assert Image.open(aug / "2008_000004.png").mode == "P"
    # VOC's own mask wins for a VOC id; SBD's is converted for the others
    assert np.unique(load_mask(aug / "2007_000002.png", 20)).tolist() == [1, 255]
    assert np.unique(load_mask(aug / "2009_000005.png", 20)).tolist() == [15]
    ds = VOCSegmentation(voc_root, "train_aug")
    assert ds.mask_dir_name == "SegmentationClassAug"
    assert ds.labels()[:, 14].tolist() == [0.0, 0.0, 1.0, 1.0]
