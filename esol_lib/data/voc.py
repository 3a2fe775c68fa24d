"""The VOC-layout reader every dataset goes through (VOC 2012, converted COCO, the generated benchmark).

Layout (see ``docs/DESIGN.md``, "Datasets")::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png      palette (or grayscale) PNG: index = class, 255 = void
    ROOT/SegmentationClassAug/<id>.png   used instead when the folder exists
    ROOT/ImageSets/Segmentation/<split>.txt
    ROOT/classes.txt                     foreground class names (absent: the 20 VOC classes)

Ids are strings (``'2007_000032'``, ``'000123'``): leading zeros are kept. Image-level labels are
derived from the masks and cached in ``ROOT/.esol_cache/`` (``~/.cache/esol/`` when ROOT is read-only).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from esol_lib.data.palette import VOID
from esol_lib.runtime.atomic import atomic_path
from esol_lib.runtime.errors import DatasetError, MissingDependencyError

__all__ = [
    "VOC_CLASSES",
    "MissingDependencyError",
    "VOCSegmentation",
    "labels_from_mask",
    "load_image",
    "load_mask",
    "read_classes",
    "read_split",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

IMAGE_DIR = "JPEGImages"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
CACHE_DIR = ".esol_cache"
_SHOW = 8  # how many offending ids/values an error message lists


def split_listing(items: Sequence[str], limit: int = _SHOW) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def unsafe_name(name: str) -> bool:
    """True when ``name`` could point outside the folder it is joined to."""
    return "/" in name or "\\" in name or ".." in name or os.path.isabs(name) or name.startswith("~") or "\0" in name


# ---------------------------------------------------------------------------------------------
# classes and split lists


def read_classes(root: str | Path) -> list[str]:
    """Foreground class names from ``root/classes.txt`` (one per line), else the 20 VOC classes."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return list(VOC_CLASSES)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DatasetError(
            f"{path} lists no classes; write one foreground class name per line "
            "(or delete it to use the 20 VOC classes)"
        )
    if any(n.lower() == "background" for n in names):
        raise DatasetError(
            f"{path} lists 'background'; it must name only the foreground classes "
            "(index 0 = background is implicit), so remove that line"
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(
            f"{path} lists these classes more than once: {split_listing(dupes)}; "
            "each class must appear on exactly one line"
        )
    return names


def available_splits(root: str | Path) -> list[str]:
    """Names of the split lists in ``root/ImageSets/Segmentation`` (without ``.txt``)."""
    folder = Path(root) / SPLIT_DIR
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []


def read_split(root: str | Path, split: str) -> list[str]:
    """Image ids (strings, order kept) listed in ``root/ImageSets/Segmentation/<split>.txt``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"dataset root {root} does not exist; pass --data-root (or set data.root) "
            "to a folder in VOC layout (see data/README.md); a run's data that moved: --set data.root=<new place>"
        )
    folder = root / SPLIT_DIR
    if not folder.is_dir():
        raise DatasetError(
            f"{folder} is missing; a VOC-layout dataset lists its images in "
            f"ImageSets/Segmentation/<split>.txt under {root}"
        )
    if not split or unsafe_name(split):
        raise DatasetError(f"split name {split!r} is not a plain name; use e.g. 'train' or 'val'")
    path = folder / f"{split}.txt"
    if not path.is_file():
        have = available_splits(root)
        raise DatasetError(
            f"split file {path} is missing; available splits: "
            f"{', '.join(have) if have else '(none)'}. Pick one of them or write that list"
        )
    ids: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        item = line.strip()
        if not item:
            continue
        if unsafe_name(item):
            raise DatasetError(
                f"{path}, line {lineno}: id {item!r} would leave the dataset root; "
                "ids are plain file stems such as 2007_000032, fix that line"
            )
        if len(item.split()) > 1:
            raise DatasetError(
                f"{path}, line {lineno}: {item!r} holds more than one field; "
                "a segmentation split lists one image id per line"
            )
        ids.append(item)
    return ids


# ---------------------------------------------------------------------------------------------
# images and masks


def _open(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image file (so truncation is caught here, not in a worker later)."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} is missing; re-copy it or remove its id from the split list")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{what} {path} is corrupt or truncated ({exc}); re-copy it or remove its id from the split list"
        ) from exc
    return img


def _open_header(path: Path, what: str) -> Image.Image:
    """Open an image file reading only its header (its size); a bad file is a :class:`DatasetError`."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} is missing; re-copy it or remove its id from the split list")
    try:
        return Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{what} {path} is corrupt or truncated ({exc}); re-copy it or remove its id from the split list"
        ) from exc


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 RGB array; a bad file raises :class:`DatasetError`."""
    with _open(Path(path), "image") as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _mask_array(img: Image.Image, path: Path) -> np.ndarray:
    """Pixel values of a palette/grayscale label image (RGB only when it is gray in all channels)."""
    mode = img.mode
    if mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(img).astype(np.int64)
    if mode in ("RGB", "RGBA"):
        arr = np.asarray(img)
        if mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return arr[..., 0].astype(np.int64)
        raise DatasetError(
            f"mask {path} is an {mode} colour image; label masks must hold class indices "
            "(palette 'P' or grayscale PNG, 255 = void): convert it to palette indices, "
            "e.g. by mapping each VOC colour to its index"
        )
    raise DatasetError(
        f"mask {path} has image mode {mode!r}; save it as a palette ('P') or grayscale "
        "('L') PNG whose pixel values are class indices (255 = void)"
    )


def load_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Read a label mask as ``(H, W)`` uint8; values must lie in ``{0..num_classes} ∪ {255}``."""
    path = Path(path)
    with _open(path, "mask") as img:
        arr = _mask_array(img, path)
    if arr.size and (arr.max() > num_classes or arr.min() < 0):
        values = np.unique(arr)
        bad = [int(v) for v in values if (v < 0 or v > num_classes) and v != VOID]
        if bad:
            raise DatasetError(
                f"mask {path} holds values {bad[:_SHOW]} outside 0..{num_classes} (and {VOID} = void) "
                f"for a dataset of {num_classes} foreground classes; check classes.txt / the mask's "
                "palette indices"
            )
    return arr.astype(np.uint8)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot ``(num_classes,)`` float32 vector of the foreground classes present (0 and 255 excluded)."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    return (counts[1 : num_classes + 1] > 0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the dataset


def missing_files(folder: Path, ids: Sequence[str], suffix: str) -> list[str]:
    """Ids whose ``folder/<id><suffix>`` does not exist (one directory listing, not one stat per id)."""
    with os.scandir(folder) as it:
        names = {entry.name for entry in it}
    return [i for i in ids if f"{i}{suffix}" not in names]


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _user_cache_dir(root: Path) -> Path:
    digest = hashlib.sha1(str(root.resolve()).encode("utf-8")).hexdigest()
    return Path.home() / ".cache" / "esol" / digest


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` atomically (:func:`esol_lib.runtime.atomic.atomic_path`): safe under torchrun."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


class VOCSegmentation(torch.utils.data.Dataset):
    """A split of a VOC-layout dataset; items are dicts ``id, image, mask, label``.

    ``image`` is ``(H, W, 3)`` uint8 RGB, ``mask`` ``(H, W)`` uint8 (0 = background, 255 = void),
    ``label`` the multi-hot float tensor of the foreground classes in the mask (computed before
    ``transform``). Without a mask for an id (only possible with ``require_masks=False``) the item
    has neither ``mask`` nor ``label``. ``transform(sample) -> sample`` is applied last.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transform: Callable[[dict], dict] | None = None,
        mask_dir: str | None = None,
        require_masks: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset root {self.root} does not exist; pass --data-root (or set data.root) to a folder "
                "in VOC layout (see data/README.md); a run's data that moved: --set data.root=<new place>"
            )
        self.image_dir = self.root / IMAGE_DIR
        if not self.image_dir.is_dir():
            raise DatasetError(
                f"{self.image_dir} is missing; a VOC-layout dataset keeps its images "
                f"as JPEGImages/<id>.jpg under {self.root}"
            )
        if mask_dir is None:
            mask_dir = "SegmentationClassAug" if (self.root / "SegmentationClassAug").is_dir() else "SegmentationClass"
        self.mask_dir_name = mask_dir
        self.mask_dir = self.root / mask_dir
        if require_masks and not self.mask_dir.is_dir():
            raise DatasetError(
                f"mask folder {self.mask_dir} is missing; put the label PNGs there, pass "
                "another mask_dir, or use require_masks=False for an unlabelled split"
            )
        self.classes = read_classes(self.root)
        self.num_classes = len(self.classes)
        self.ids = read_split(self.root, split)
        if not self.ids:
            raise DatasetError(f"{self.root / SPLIT_DIR / (split + '.txt')} lists no image ids; write one id per line")
        self._check_files(require_masks)
        self._labels: np.ndarray | None = None

    def _check_files(self, require_masks: bool) -> None:
        missing = missing_files(self.image_dir, self.ids, ".jpg")
        if missing:
            raise DatasetError(
                f"{len(missing)} id(s) of split {self.split!r} have no image in "
                f"{self.image_dir}: {split_listing(missing)}; copy <id>.jpg there or remove "
                "those ids from the split list"
            )
        if not self.mask_dir.is_dir():
            self._has_mask = set()
            return
        missing = missing_files(self.mask_dir, self.ids, ".png")
        if missing and require_masks:
            raise DatasetError(
                f"{len(missing)} id(s) of split {self.split!r} have no mask in "
                f"{self.mask_dir}: {split_listing(missing)}; add <id>.png there, pass another "
                "mask_dir (e.g. 'SegmentationClass'), or remove those ids from the split list"
            )
        absent = set(missing)
        self._has_mask = {i for i in self.ids if i not in absent}

    def __repr__(self) -> str:
        return (
            f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes}, mask_dir={self.mask_dir_name!r})"
        )

    def __len__(self) -> int:
        return len(self.ids)

    def first(self, n: int) -> VOCSegmentation:
        """A view of this split's first ``n`` ids (in the split file's order), named ``<split>-first<n>``.

        What a costly method scores when its whole split would take too long (``advcam.max_images``): a
        fixed, documented subset, the same for every method compared on it. ``n`` beyond the split keeps
        every id (the name still says ``first<n>``, so it does not depend on the split's length).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"first: n must be a positive integer, got {n!r}")
        view = copy.copy(self)
        view.ids = list(self.ids[:n])
        view.split = f"{self.split}-first{n}"
        view._labels = None if self._labels is None else self._labels[:n]
        return view

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}.png"

    def has_mask(self, image_id: str) -> bool:
        return image_id in self._has_mask

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        image = load_image(self.image_path(image_id))
        sample: dict = {"id": image_id, "image": image}
        if self.has_mask(image_id):
            mask = load_mask(self.mask_path(image_id), self.num_classes)
            self._check_size(image_id, mask, image.shape[:2])
            sample["mask"] = mask
            sample["label"] = torch.from_numpy(labels_from_mask(mask, self.num_classes))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def _check_size(self, image_id: str, mask: np.ndarray, image_hw: tuple[int, ...] | None = None) -> None:
        """A mask must cover its image pixel for pixel (checked while the labels are read, so before
        any training, and on every sample read). ``image_hw`` None: read from the image's header."""
        if image_hw is None:
            with _open_header(self.image_path(image_id), "image") as img:
                image_hw = (img.height, img.width)
        if tuple(mask.shape) != tuple(image_hw):
            raise DatasetError(
                f"mask {self.mask_path(image_id)} is {mask.shape[1]}x{mask.shape[0]} "
                f"but image {self.image_path(image_id)} is {image_hw[1]}x{image_hw[0]}; "
                "the two must have the same size: re-export the mask at the image's size"
            )

    # -- image-level labels, cached on disk ----------------------------------------------------

    def cache_path(self) -> Path:
        """Where :meth:`labels` keeps its cache (under ROOT, or ``~/.cache/esol/`` if ROOT is read-only)."""
        name = f"cls_labels_{self.split}_{self.mask_dir_name.replace('/', '_').replace(os.sep, '_')}.npz"
        local = self.root / CACHE_DIR / name
        if local.is_file() or _writable(self.root):
            return local
        return _user_cache_dir(self.root) / name

    def _signature(self) -> str:
        """Hash of the class count and every mask's (id, mtime, size): changes when any mask does."""
        h = hashlib.sha1(f"{self.num_classes}\n".encode())
        for image_id in self.ids:
            st = os.stat(self.mask_path(image_id))
            h.update(f"{image_id}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
        return h.hexdigest()

    def _read_cache(self, path: Path, signature: str) -> np.ndarray | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["signature"]) == signature and z["ids"].tolist() == self.ids:
                    return z["labels"].astype(np.float32)
        except (OSError, KeyError, ValueError):
            pass  # absent, stale format or corrupt: recompute
        return None

    def _write_cache(self, path: Path, labels: np.ndarray, signature: str) -> None:
        arrays = dict(ids=np.array(self.ids, dtype=str), labels=labels, signature=np.array(signature))
        try:
            _save_npz(path, **arrays)
        except OSError:
            fallback = _user_cache_dir(self.root) / path.name
            if fallback != path:
                _save_npz(fallback, **arrays)

    def labels(self) -> np.ndarray:
        """``(N, num_classes)`` float32 multi-hot image-level labels of the split, from the masks.

        Computed once (reading every mask) and cached on disk with the id list and a signature of
        the masks' mtimes and sizes; a changed split, mask or class count recomputes it.
        """
        if self._labels is not None:
            return self._labels
        missing = [i for i in self.ids if not self.has_mask(i)]
        if missing:
            raise DatasetError(
                f"image-level labels come from the masks, but {len(missing)} id(s) of "
                f"split {self.split!r} have none in {self.mask_dir}: {split_listing(missing)}"
            )
        signature = self._signature()
        path = self.cache_path()
        labels = None
        for candidate in (path, _user_cache_dir(self.root) / path.name):
            labels = self._read_cache(candidate, signature)
            if labels is not None:
                break
        if labels is None:
            labels = np.zeros((len(self.ids), self.num_classes), np.float32)
            for row, image_id in enumerate(
                tqdm(self.ids, desc=f"image labels ({self.split})", unit="mask", leave=False)
            ):
                mask = load_mask(self.mask_path(image_id), self.num_classes)
                self._check_size(image_id, mask)
                labels[row] = labels_from_mask(mask, self.num_classes)
            self._write_cache(path, labels, signature)
        self._labels = labels
        return labels
