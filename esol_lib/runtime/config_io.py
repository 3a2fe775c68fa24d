"""Reading and writing run configs: YAML presets and their ``base:`` chains, ``--set key=value``
overrides, and strict typed building.

Loading is strict: an unknown key or a value of the wrong type raises
:class:`~esol_lib.runtime.errors.ConfigError` naming the dotted key, and a value out of range is
refused by :func:`~esol_lib.runtime.config.check_ranges`, before anything is trained or written.
What a config holds is :mod:`esol_lib.runtime.config`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from esol_lib.runtime.atomic import atomic_write_text
from esol_lib.runtime.config import Config, check_ranges
from esol_lib.runtime.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ("smoke", "toy", "cpu", "voc12", "coco14")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")  # pragma: no cover


_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from defaults patched by ``values`` (strict)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'; valid keys under "
                f"'{prefix.rstrip('.') or 'the top level'}' are: {', '.join(sorted(names))}"
            )
    obj = cls()
    for key, value in values.items():
        setattr(obj, key, _coerce(value, hints[key], prefix + key))
    return obj


def config_from_dict(values: dict) -> Config:
    """Build a :class:`Config` from a nested dict; unknown keys, wrong types and values out of
    range (:func:`check_ranges`) raise ConfigError, before anything is trained or written."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping, got {type(values).__name__}")
    cfg = _build(Config, values)
    check_ranges(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (YAML-ready)."""
    return dataclasses.asdict(cfg)


#: Keys that change no result (where and how fast it runs).
NEUTRAL_KEYS = ("device", "profile", "feature_cache_mb", "data.num_workers")
#: Keys a multi-seed study sets per run: where the data are and which generator seed made them.
PER_RUN_KEYS = ("data.root", "data.emoji.seed", "data.synth.seed")


def settings_digest(cfg: Config, *, exclude_sections: tuple[str, ...] = ()) -> str:
    """A digest of every setting that shapes a result: the resolved config without :data:`NEUTRAL_KEYS`,
    :data:`PER_RUN_KEYS` and the sections in ``exclude_sections`` (those a result does not read).

    A results file records it beside its numbers (``benchmarks/``); the suite compares it with the digest
    of the profile as it resolves today, so a changed default cannot leave a page on old numbers.
    """
    from esol_lib.runtime.freshness import signature_of  # the one place that hashes (test_layout)

    values = config_to_dict(cfg)
    for section in exclude_sections:
        values.pop(section, None)
    for key in (*NEUTRAL_KEYS, *PER_RUN_KEYS):
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return signature_of(values)[:16]


def read_yaml_mapping(path: Path, *, empty_ok: bool = True, fix: str = "fix it") -> dict:
    """The mapping in YAML file ``path``; every way it can be unreadable is one ConfigError naming
    the file and ``fix`` (an empty file is ``{}`` only with ``empty_ok``)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start}); {fix}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML ({str(err).splitlines()[0]}...); {fix}") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror or err}); {fix}") from None
    if data is None and not empty_ok:
        raise ConfigError(f"config file {path} is empty; {fix}")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a {type(data).__name__}, not a mapping of keys; {fix}")
    return data or {}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. expansion.alpha=0.01")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': cannot parse value {raw!r}: {err}") from err
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """A copy of a nested dict patched with ``key.sub=value`` strings (values parsed as YAML).

    ``values`` itself is never modified (nested sections included)."""
    import copy

    out = copy.deepcopy(values)
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    return out


def _resolve_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config, merged over its ``base:`` preset (recursively)."""
    if path in seen:
        raise ConfigError(f"config file {path}: 'base' presets form a cycle")
    values = read_yaml_mapping(path)
    base = values.pop("base", None)
    if base is None:
        return values
    if base not in PRESETS:
        raise ConfigError(f"config file {path}: base '{base}' is not a preset ({', '.join(PRESETS)})")
    return _merge(_resolve_bases(PRESET_DIR / f"{base}.yaml", seen + (path,)), values)


def load_config(name_or_path: str | Path = "cpu", overrides: list[str] | None = None) -> Config:
    """Load a preset name (``smoke``, ``cpu``, ``voc12``, ``coco14``) or a YAML path, then overrides.

    A YAML file may start from a preset with ``base: <preset>``.
    """
    text = str(name_or_path)
    path = Path(text)
    if text in PRESETS:
        path = PRESET_DIR / f"{text}.yaml"
    elif not path.is_file():
        raise ConfigError(f"config '{text}' is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file")
    values = _resolve_bases(path)
    values = apply_overrides(values, overrides or [])
    return config_from_dict(values)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
