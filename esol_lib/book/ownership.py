"""Which files of a build folder ``esol book`` may delete: only those its manifest lists.

:func:`claim_build_folder` marks a folder as the book's (``OUT/.esol-book``, the manifest); a build
records what it writes (:func:`own`) and clears only that (:func:`clear_owned`), so a folder the user
named by mistake loses nothing of theirs.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from esol_lib.runtime.atomic import atomic_write_text
from esol_lib.runtime.errors import StageError

#: The file that marks a build folder as made by ``esol book``: the manifest of what builds wrote there
#: (:func:`claim_build_folder`); only files it lists are ever deleted.
OWNER_FILE = ".esol-book"


def claim_build_folder(out: Path) -> None:
    """Make sure ``esol book`` may write into ``out``, then mark it as a build folder.

    ``out`` must be new, empty, or marked by :data:`OWNER_FILE` (a build made it). The marker is the
    build's manifest: the files under ``src/`` and ``executed/`` a build wrote, the only ones a later
    build deletes (:func:`clear_owned`); a file a user put there is kept. No symbolic link may sit at
    or under ``out/src``, ``out/executed`` or ``out/_build``: a build never follows or removes one,
    so it stops here, before any chapter runs.

    Raises:
        StageError: ``out`` is a file, holds anything while unmarked (``--out`` pointed at a project
            folder), or holds a symbolic link where the build writes.
    """
    out = Path(out)
    if out.is_symlink() and not out.is_dir() or out.exists() and not out.is_dir():
        raise StageError(f"book: --out {out} is a file; give a folder for the build")
    if out.is_dir() and not (out / OWNER_FILE).is_file():
        foreign = sorted(p.name for p in out.iterdir())
        if foreign:
            raise StageError(
                f"book: --out {out} is not empty and was not made by `esol book` (it holds "
                f"{', '.join(foreign[:5])}); the build writes src/ and executed/ there, so give "
                f"a new or empty folder"
            )
    for top in _WRITTEN_TOPS:
        link = _first_link(out, top)
        if link is not None:
            raise StageError(
                f"book: {link} is a symbolic link (to {os.readlink(link)}); the build writes under "
                f"{out / top} and never follows or removes links: remove the link (its target is "
                f"not touched), or give another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    if not (out / OWNER_FILE).is_file():
        _write_manifest(out, set())


#: What a build writes under ``--out`` (besides ``jupyter-book.log`` and ``check_published.txt``).
_WRITTEN_TOPS = ("src", "executed", "_build")


def _first_link(out: Path, top: str) -> Path | None:
    """The first symbolic link at or below ``out/top`` (links are not followed); None if none."""
    path = out / top
    if path.is_symlink():
        return path
    if not path.is_dir():
        return None
    for dirpath, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            if (Path(dirpath) / name).is_symlink():
                return Path(dirpath) / name
    return None


def owned_files(out: Path) -> set[str] | None:
    """The files (paths relative to ``out``) that builds wrote into ``out``, from its manifest; None
    for a marker written before manifests (it promised the build all of ``src/`` and ``executed/``)."""
    try:
        record = json.loads((Path(out) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    owned = record.get("owned") if isinstance(record, dict) else None
    return set(owned) if isinstance(owned, list) else None


def _write_manifest(out: Path, owned: set[str]) -> None:
    record = {"made_by": "esol book", "note": "a build deletes only the files listed here", "owned": sorted(owned)}
    atomic_write_text(Path(out) / OWNER_FILE, json.dumps(record, indent=1) + "\n")


def own(out: Path, paths: Iterable[str]) -> None:
    """Add ``paths`` (relative to ``out``) to the manifest before the build writes them: a build
    killed in between leaves nothing it wrote unlisted."""
    owned = recorded = owned_files(out)
    if owned is None:  # an old marker: all of src/ and executed/ is the build's; start listing
        owned = {
            p.relative_to(out).as_posix()
            for top in ("src", "executed")
            if (out / top).is_dir()
            for p in (out / top).rglob("*")
            if p.is_file() and not p.is_symlink()
        }
    new = owned | set(paths)
    if new != recorded:
        _write_manifest(out, new)


def clear_owned(out: Path, top: str) -> list[str]:
    """Delete the files under ``out/top`` that the manifest lists (all of them under an old marker),
    then the folders left empty; return what was deleted. A user's file is kept, and a symbolic link
    is never followed or removed (:func:`claim_build_folder` refuses them first)."""
    out = Path(out)
    folder = out / top
    if folder.is_symlink() or not folder.is_dir():
        return []
    owned = owned_files(out)
    removed = []
    for dirpath, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(dirpath) / name
            rel = path.relative_to(out).as_posix()
            if not path.is_symlink() and (owned is None or rel in owned):
                path.unlink()
                removed.append(rel)
        for name in dirs:
            sub = Path(dirpath) / name
            if not sub.is_symlink():
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only when empty
    with contextlib.suppress(OSError):
        folder.rmdir()
    if owned is not None:
        _write_manifest(out, owned - set(removed))
    else:
        own(out, [])
    return removed
