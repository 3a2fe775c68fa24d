"""The run folder (DESIGN.md): one directory that every stage reads and writes.

```
RUN/config.yaml                 the resolved config, written first
RUN/checkpoints/<stage>.pt      atomic; resumable
RUN/cams/<stage>/<id>.npz       high-res CAMs of the GT classes
RUN/metrics/<stage>_<split>.json
RUN/pseudo_masks/<stage>/<id>.png
RUN/log.jsonl
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from esol_lib.config import Config, config_from_dict, config_to_dict, save_config
from esol_lib.errors import ConfigError, StageError

STAGES = ("baseline", "expansion", "shrinkage")


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder; creating the object touches nothing on disk."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "log.jsonl"

    def checkpoint(self, stage: str) -> Path:
        return self.root / "checkpoints" / f"{stage}.pt"

    def cams(self, stage: str) -> Path:
        return self.root / "cams" / stage

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    def pseudo_masks(self, stage: str) -> Path:
        return self.root / "pseudo_masks" / stage

    def feature_cache(self) -> Path:
        """``cache/features/``: backbone features memoised by content (:mod:`esol_lib.feature_cache`);
        a forked run's ``cache`` links to its source's. Safe to delete."""
        return self.root / "cache" / "features"

    def load_config(self) -> Config:
        """The run's resolved config; a missing one names the command that writes it."""
        if not self.config_path.is_file():
            raise StageError(
                f"{self.config_path} not found: start the run with "
                f"`esol train-cam --config cpu --run {self.root}` (or `esol pipeline`) first"
            )
        return config_from_dict(yaml.safe_load(self.config_path.read_text()) or {})


def create_run(root: str | Path, cfg: Config) -> RunDir:
    """Open run folder ``root`` for ``cfg``; write ``config.yaml`` first.

    Re-opening a run with the same config resumes it. A different config is refused (it would mix
    results of two settings in one folder), naming the keys that differ.
    """
    run = RunDir(Path(root))
    if run.config_path.is_file():
        old = config_to_dict(run.load_config())
        new = config_to_dict(cfg)
        diff = _diff(old, new)
        if diff:
            raise ConfigError(
                f"run folder {run.root} was started with another config (differs in: {', '.join(diff)}); "
                "use a new --run folder, or delete this one to start over"
            )
        return run
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config_path)
    return run


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def fork_run(src: str | Path, dst: str | Path, overrides: Sequence[str] = (),
             share: Sequence[str] = ("baseline",)) -> RunDir:
    """A new run folder ``dst`` whose config is ``src``'s with ``overrides`` (``key=value``) applied,
    reusing ``src``'s finished stages listed in ``share`` (their checkpoints and CAM folders are
    hard-linked, or copied where links are impossible) — how ablations share one trained baseline.

    Re-forking with the same overrides reopens ``dst``; other overrides are refused as in
    :func:`create_run`.
    """
    from esol_lib.config import apply_overrides

    source = RunDir(Path(src))
    cfg = config_from_dict(apply_overrides(config_to_dict(source.load_config()), list(overrides)))
    run = create_run(dst, cfg)
    _share_cache(source, run)
    for stage in share:
        ckpt = source.checkpoint(stage)
        if not ckpt.is_file():
            raise StageError(f"cannot share stage {stage!r}: {ckpt} is missing; finish it in {source.root} first")
        _link_or_copy(ckpt, run.checkpoint(stage))
        cams = source.cams(stage)
        if cams.is_dir():
            for f in cams.iterdir():
                _link_or_copy(f, run.cams(stage) / f.name)
    return run


def _share_cache(source: RunDir, run: RunDir) -> None:
    """Point ``run/cache`` at ``source/cache``: its entries are keyed by content, so sharing is always safe."""
    link, target = run.root / "cache", (source.root / "cache").resolve()
    if link.exists() or link.is_symlink():
        return
    target.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(target, target_is_directory=True)
    except OSError:  # no symlinks here: the fork keeps its own cache
        pass


def _link_or_copy(src: Path, dst: Path) -> None:
    import os
    import shutil

    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
