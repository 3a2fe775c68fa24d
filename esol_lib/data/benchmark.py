"""Which benchmark a run reads: the dataset root, and the generators' specs from a config's ``data`` section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from esol_lib.data.emoji import EmojiSpec, generate_emoji_benchmark
from esol_lib.data.synth import SynthSpec, generate_benchmark
from esol_lib.runtime.errors import ConfigError

__all__ = ["GENERATORS", "emoji_spec_from_config", "resolve_data_root", "synth_spec_from_config"]


def synth_spec_from_config(synth_cfg=None) -> SynthSpec:
    """The :class:`SynthSpec` described by a config's ``data.synth`` section (defaults when None)."""
    if synth_cfg is None:
        return SynthSpec()
    values = dataclasses.asdict(synth_cfg)
    values["object_scale"] = tuple(values["object_scale"])
    return SynthSpec(**values)


def emoji_spec_from_config(emoji_cfg=None) -> EmojiSpec:
    """The :class:`EmojiSpec` described by a config's ``data.emoji`` section (defaults when None)."""
    if emoji_cfg is None:
        return EmojiSpec()
    values = dataclasses.asdict(emoji_cfg)
    values["object_scale"] = tuple(values["object_scale"])
    values["clutter"] = tuple(values["clutter"])
    values["min_objects"], values["max_objects"] = values.pop("objects")
    return EmojiSpec(**values)


GENERATORS = ("synth", "emoji")


def resolve_data_root(
    cfg, data_root: str | Path | None = None, *, generate: bool = True, synth_dir: str | Path = "data"
) -> Path:
    """The dataset root a run uses: ``--data-root``, else ``data.root``, else the generated benchmark.

    With neither set, the benchmark of ``data.generator`` (``synth``: the toy one described by
    ``data.synth``; ``emoji``: the OpenMoji one described by ``data.emoji``) lives in
    ``<synth_dir>/<generator>-<profile>`` and is generated there when missing (deterministic, so
    regenerating gives the same files).
    """
    if data_root:
        return Path(data_root)
    if cfg.data.root:
        return Path(cfg.data.root)
    generator = cfg.data.generator
    if generator not in GENERATORS:
        raise ConfigError(f"data.generator: unknown benchmark {generator!r}; choose one of {', '.join(GENERATORS)}")
    root = Path(synth_dir) / f"{generator}-{cfg.profile}"
    if generate:
        if generator == "emoji":
            generate_emoji_benchmark(root, emoji_spec_from_config(cfg.data.emoji))
        else:
            generate_benchmark(root, synth_spec_from_config(cfg.data.synth))
    return root
