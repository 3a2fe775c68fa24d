"""Whether an output is current, decided by content, never by time stamps: the one freshness contract.

Every signature a run folder records is made here: of settings (:func:`signature_of`), of files
(:func:`file_digest`), of a split's data (:func:`data_fingerprint`, kept in
``cams/<stage>/_data_<split>.json``: :func:`data_record`), of a CAM folder's model
(:func:`cam_dir_signature`) and of refine's folders (:func:`recorded_signature`). A folder of per-image
files records its signature in ``_meta.json`` (:data:`META_FILE`, :func:`folder_signature`) and its
finished files in ``_sizes.json`` (:func:`record_sizes`, :func:`drop_damaged`, :func:`read_verified`);
a folder made from other inputs is emptied before it is written (:func:`reset_stale_folder`,
:func:`write_folder_signature`) and is done when :func:`folder_complete`; a metrics file is current
when its ``inputs`` equal what it would score now (:func:`current_metrics`).

BLAKE2b makes every new signature. :func:`cam_dir_signature` and :func:`recorded_signature` keep
SHA-1 because their values are already written in run folders: another hash would judge every
existing run's CAMs, IR labels and pseudo masks stale and recompute them. The run folder's layout
is described in :mod:`esol_lib.runtime.rundir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esol_lib.runtime.atomic import atomic_write_text, read_json
from esol_lib.runtime.errors import StageError

SIZES_FILE = "_sizes.json"
#: A folder of per-image files records here the signature of what it was made from (``{"signature": ...}``).
META_FILE = "_meta.json"


def signature_of(parts: dict) -> str:
    """A content signature of ``parts`` (JSON-serialisable settings and other signatures)."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()


def current_metrics(path: str | Path, inputs: str) -> dict | None:
    """The metrics in ``path`` if they read back and were computed from ``inputs``; else None (recompute)."""
    metrics = read_json(path)
    return metrics if metrics is not None and metrics.get("inputs") == inputs else None


def file_digest(path: str | Path) -> str:
    """The content hash (BLAKE2b) of one file: a copy, a touch or a restore from backup keeps it.

    Remembered for this process by (path, inode, size, mtime): a pipeline asks for the same
    checkpoint's digest at several steps, and a voc12 checkpoint is large. A file rewritten in
    place gets a new mtime (or inode, through an atomic rename) and is hashed again."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}


def _bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _recorded(entry) -> tuple[int | None, str | None]:
    """``(size, digest)`` of one ``_sizes.json`` entry: ``[size, digest]``, or a bare size (older runs)."""
    if isinstance(entry, list) and len(entry) == 2:
        return entry[0], entry[1]
    return (entry, None) if isinstance(entry, int) else (None, None)


def record_sizes(folder: str | Path, names: Sequence[str]) -> None:
    """Add the byte size and content digest of ``folder``'s finished files ``names`` to its
    ``_sizes.json`` (called again on a complete folder, it fills in what a kill between the last
    file and the record left out). Files already recorded at their size are not hashed again."""
    folder = Path(folder)
    old = read_json(folder / SIZES_FILE) or {}
    sizes = dict(old)
    for name in names:
        with contextlib.suppress(OSError):
            size = (folder / name).stat().st_size
            if _recorded(sizes.get(name))[0] != size or _recorded(sizes.get(name))[1] is None:
                sizes[name] = [size, file_digest(folder / name)]
    if sizes != old or not (folder / SIZES_FILE).is_file():  # written only when it changes
        atomic_write_text(folder / SIZES_FILE, json.dumps(sizes, sort_keys=True) + "\n")


def drop_damaged(folder: str | Path) -> list[str]:
    """Delete the files of ``folder`` whose size or content differs from what :func:`record_sizes`
    recorded (cut short by a full disk, overwritten by a copy or an editor); return their names.
    Every file it covers is derived, so the stage that writes it redoes exactly those."""
    import logging

    folder = Path(folder)
    sizes = read_json(folder / SIZES_FILE)
    if not sizes:
        return []
    damaged = []
    for name, entry in sizes.items():
        path = folder / name
        size, digest = _recorded(entry)
        try:
            if path.stat().st_size != size or digest is not None and file_digest(path) != digest:
                path.unlink()
                damaged.append(name)
        except FileNotFoundError:
            continue
    if damaged:
        logging.getLogger(__name__).warning(
            "%s: %d damaged file(s) deleted to be redone (e.g. %s)", folder, len(damaged), damaged[0]
        )
        atomic_write_text(
            folder / SIZES_FILE, json.dumps({k: v for k, v in sizes.items() if k not in damaged}, sort_keys=True) + "\n"
        )
    return damaged


class DamagedFileError(StageError):
    """A derived file does not match the checksum recorded when it was written (it was deleted)."""


def read_verified(path: str | Path, fix: str) -> bytes:
    """The bytes of derived file ``path``, checked against the digest its folder's ``_sizes.json``
    recorded. A file that differs is deleted (it is derived: the step that makes it redoes it) and
    :class:`DamagedFileError` names it and ``fix``, the command that remakes it. A file not (yet)
    recorded is returned as it is."""
    path = Path(path)
    data = path.read_bytes()
    size, digest = _recorded(_sizes_record(path.parent).get(path.name))
    if digest is not None and (len(data) != size or _bytes_digest(data) != digest):
        raise damaged(path, fix, "it differs from what was written: its checksum in _sizes.json does not match")
    return data


def _sizes_record(folder: Path) -> dict:
    """``folder/_sizes.json``, parsed once per version of the file: readers verify one file at a time,
    and a VOC folder's record lists thousands."""
    try:
        st = (folder / SIZES_FILE).stat()
    except OSError:
        return {}
    key = (str(folder.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if _SIZES_CACHE.get("key") != key:
        _SIZES_CACHE.update(key=key, record=read_json(folder / SIZES_FILE) or {})
    return _SIZES_CACHE["record"]


_SIZES_CACHE: dict = {}


def damaged(path: Path, fix: str, why: str) -> DamagedFileError:
    """Delete derived file ``path`` (and its record) and return the error that says so and names ``fix``."""
    with contextlib.suppress(OSError):
        path.unlink()
    sizes = read_json(path.parent / SIZES_FILE)
    if sizes and path.name in sizes:
        del sizes[path.name]
        with contextlib.suppress(OSError):
            atomic_write_text(path.parent / SIZES_FILE, json.dumps(sizes, sort_keys=True) + "\n")
    return DamagedFileError(f"{path} is damaged ({why}); it was deleted: {fix}")


def recorded_signature(obj: Any) -> str:
    """The SHA-1 signature of ``obj`` (sorted JSON) that refine records in ``ir_labels/`` and
    ``pseudo_masks/`` ``_meta.json``. It is not :func:`signature_of` because the values are already
    written in run folders: another hash would make every existing run's labels and masks stale."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def folder_signature(folder: Path) -> str | None:
    """The signature ``folder/_meta.json`` records; None when there is none."""
    return (read_json(folder / META_FILE) or {}).get("signature")


def reset_stale_folder(folder: Path, signature: str) -> None:
    """Create ``folder``; first empty it when its ``_meta.json`` records another signature (or none):
    files made from other inputs are never mixed with new ones."""
    folder = Path(folder)
    if folder.is_dir() and folder_signature(folder) != signature:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def write_folder_signature(folder: Path, signature: str, **extra: Any) -> None:
    """Record in ``folder/_meta.json`` the signature of what the folder's files are made from (and ``extra``)."""
    atomic_write_text(Path(folder) / META_FILE, json.dumps({"signature": signature, **extra}) + "\n")


def folder_complete(folder: Path, names: Sequence[str], signature: str | None = None, *, record: bool = True) -> bool:
    """Whether ``folder`` holds every file of ``names``, undamaged, made from ``signature`` (when given).

    Damaged files are deleted on the way (:func:`drop_damaged`), so the step that made them makes them
    again. A complete folder has its files' sizes recorded (with ``record``): a no-op unless a kill
    came between the last file and its record.
    """
    folder = Path(folder)
    complete = (
        (signature is None or folder_signature(folder) == signature)
        and not drop_damaged(folder)
        and all((folder / name).is_file() for name in names)
    )
    if complete and record:
        record_sizes(folder, names)
    return complete


def cam_dir_signature(checkpoint: Path | None, scales: Sequence[float], flip: bool, extra: str = "") -> str:
    """A fingerprint of the model side of a CAM folder: the checkpoint's bytes, scales, flip, ``extra``."""
    h = hashlib.sha1(json.dumps({"scales": list(scales), "flip": flip, "extra": extra}).encode())
    if checkpoint is not None and Path(checkpoint).is_file():
        h.update(file_digest(checkpoint).encode())
    return h.hexdigest()


def data_fingerprint(dataset) -> str:
    """A fingerprint of the data side of a split's CAMs and scores: the class list, the id list and
    the bytes of every image and mask of the split (content, not time stamps).

    Another dataset generated with the same ids (``esol data emoji --seed 1``), an edited mask or a
    re-encoded image all change it; the split's CAMs are then recomputed and its scores redone.
    """
    head = json.dumps([list(getattr(dataset, "classes", [])), list(dataset.ids)])
    has_mask = getattr(dataset, "has_mask", lambda image_id: True)
    files = []
    for image_id in dataset.ids:
        files.append(Path(dataset.image_path(image_id)))
        if has_mask(image_id):
            files.append(Path(dataset.mask_path(image_id)))
    h = hashlib.blake2b(head.encode(), digest_size=20)
    for path in files:
        h.update(file_digest(path).encode())
    return h.hexdigest()


def data_record(out_dir: Path, split: str) -> Path:
    """``cams/<stage>/_data_<split>.json``: the :func:`data_fingerprint` of the split whose CAMs the
    folder holds. Kept apart from ``_meta.json``, whose time stamp says when the model changed."""
    return Path(out_dir) / f"_data_{split}.json"
