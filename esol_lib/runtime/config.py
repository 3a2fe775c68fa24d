"""Typed run configuration: dataclasses, YAML presets and ``--set key=value`` overrides.

A config is a tree of dataclasses. It is built from a preset (``smoke``, ``cpu``,
``voc12``, ``coco14``; YAML files in ``esol_lib/configs/``) or a YAML path, then
patched with dotted overrides. Loading is strict: an unknown key or a value of
the wrong type raises :class:`~esol_lib.runtime.errors.ConfigError` naming the dotted key.

The dataclass defaults are the paper's PASCAL VOC 2012 settings (§4.1) and
IRN's public settings for the baseline; the presets state every field they change.
Where the paper is ambiguous (see ``DESIGN.md``), the choice is a field here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from esol_lib.runtime.atomic import atomic_write_text
from esol_lib.runtime.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ("smoke", "toy", "cpu", "voc12", "coco14")


@dataclass
class SynthConfig:
    """Spec of the generated benchmark (``esol data synth``); used when ``data.root`` is empty."""

    train: int = 1000
    val: int = 200
    size: int = 64
    seed: int = 0
    num_classes: int = 4
    object_scale: list[float] = field(default_factory=lambda: [0.4, 0.65])
    part_fraction: float = 0.25


@dataclass
class EmojiConfig:
    """Spec of the emoji benchmark (``esol data emoji``); used when ``data.generator`` is ``emoji``."""

    train: int = 1000
    val: int = 200
    size: int = 128
    seed: int = 0
    object_scale: list[float] = field(default_factory=lambda: [0.4, 0.9])
    clutter: list[int] = field(default_factory=lambda: [2, 6])


@dataclass
class DataConfig:
    """Where the dataset lives and which splits each stage reads (VOC layout, DESIGN.md)."""

    root: str = ""  # empty: the generated benchmark (data.generator), written to data/<generator>-<profile>
    generator: str = "synth"  # which benchmark an empty root generates: synth (toy) | emoji (OpenMoji, VOC classes)
    train_split: str = "train_aug"  # classifier / ESOL / IRN training
    cam_split: str = "train"  # seeds and pseudo masks are scored here (VOC's 1,464 train)
    val_split: str = "val"  # segmentation is scored here
    num_workers: int = 2
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    synth: SynthConfig = field(default_factory=SynthConfig)
    emoji: EmojiConfig = field(default_factory=EmojiConfig)


@dataclass
class ModelConfig:
    """CAM classifier (§3.1, §4.1): backbone, output stride and the two extra convolutions."""

    backbone: str = "resnet50"  # resnet50 | resnet101 | small
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 1])
    pretrained: str | None = "imagenet"  # None, 'imagenet' (torchvision's local cache) or a .pth path
    frozen_stages: int = 1  # IRN: stem + layer1 frozen
    freeze_bn: bool = True
    extra_kernel: int = 3  # the paper's "3x3 or 1x1" extra convolutions
    extra_channels: int | None = None  # None: the backbone's output channels


@dataclass
class OptimiserConfig:
    """What every trained stage sets for its SGD and poly schedule (``lr · (1 - t/T)^0.9``).

    The one optimiser section type: ``train_cam``, ``expansion``, ``shrinkage``, ``irn`` and ``seg``
    extend it and restate only the defaults they change, and :func:`~esol_lib.runtime.schedule.stage_sgd`
    builds every stage's optimiser from it. The defaults are IRN's *effective* optimiser, which the
    paper follows ("we implement CAM following Ahn et al."): IRN's PolyOptimizer calls
    ``SGD(params, lr, weight_decay)``, so the 1e-4 meant as weight decay lands in SGD's positional
    momentum slot, while each of IRN's param groups sets ``weight_decay: 1e-4`` itself. IRN therefore
    trained with momentum 1e-4 and weight decay 1e-4; the momentum 0.9 its code meant is a setting
    (``<stage>.momentum=0.9``), not IRN.
    """

    lr: float = 0.1
    momentum: float = 1e-4
    weight_decay: float = 1e-4
    max_steps: int | None = None  # T of the poly schedule; None: epochs × batches per epoch where a stage has epochs
    batch_size: int = 16


@dataclass
class TrainCamConfig(OptimiserConfig):
    """Baseline classifier training (IRN's train_cam); SGD as :class:`OptimiserConfig`."""

    epochs: int = 5  # used when max_steps is null
    new_layer_lr_mult: float = 10.0
    resize_long: list[int] = field(default_factory=lambda: [320, 640])
    crop_size: int = 512
    flip: bool = True
    checkpoint_every: int = 200


@dataclass
class CamConfig:
    """CAM inference (Eq. 2) and seed evaluation."""

    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    flip: bool = True
    thresholds: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 20)])


@dataclass
class ExpansionConfig(OptimiserConfig):
    """Expansion stage (§3.2, Eq. 4–5, Eq. 7); SGD on the ES offsets as :class:`OptimiserConfig`."""

    offsets: bool = True  # DT_e: deformable offsets in the expansion sampler
    deformable: bool = True  # False: loss maximisation on a plain conv (Appendix A.1.1)
    alpha: float = 0.001  # §4.1 says 0.001; §4.3.1 / A.1.2 say 0.01 (DESIGN.md)
    lr: float = 0.01
    # momentum 1e-4 is reading ``opt-irn`` (esol_lib.book.readings): the protocol chose IRN's effective
    # optimiser on generator seed 0's val split and permitted it; 0.9 was the as-built level.
    max_steps: int = 6610
    clip: bool = True  # FL: feature clipping (Eq. 7); false switches it off everywhere (Table 5)
    beta: float = 0.15
    # Where Eq. (7) acts, and how (the paper is silent; readings of benchmarks/readings.py):
    clip_in_training: bool = True  # clip while expansion trains (false: clip only once ES is trained)
    clip_in_cams: bool = True  # clip when the expansion and shrinkage models compute CAMs (Fig. 2)
    # let the gradient pass through the ceiling β·max (false: a statistic). The protocol chose
    # ``clip-gradient`` but did not permit it: the text is silent, the detached ceiling is implied.
    clip_gradient: bool = False
    train_regular: bool = False  # Appendix A.1.3: regular weights trainable
    max_offset: float = 8.0  # divergence guard: mean |offset| in feature cells


@dataclass
class ShrinkageConfig(OptimiserConfig):
    """Shrinkage stage (§3.3, Eq. 6); SGD on the SS offsets as :class:`OptimiserConfig` (``opt-irn``)."""

    offsets: bool = True  # DT_s
    # which extra conv SS deforms: 'second' (stacked after ES and the clipping, Fig. 2) or 'first'
    # (the conv ES replaced: SS's offsets add to ES's, and the second conv stays the baseline's)
    placement: str = "second"
    area_loss: bool = True
    # what P_k is: the max-normalised CAM of Eq. (2) ('cam'), the same with the max held constant
    # ('cam-detached'), or each pixel's class probability ('sigmoid'). The protocol chose
    # ``pk-sigmoid`` but did not permit it: the paper calls P_k "the localization map", Eq. (2)'s.
    area_map: str = "cam"
    area_classes: str = "present"  # the image's GT classes ('present') or all C classes ('all', Eq. 6 as written)
    gamma: float = 1.0
    mu: float = 1.0
    max_steps: int = 6610
    train_regular: bool = False
    max_offset: float = 8.0


@dataclass
class CRFConfig:
    """DenseCRF parameters: IRN's IR-label CRF and DeepLab's test-time CRF (``seg_*``, DeepLab-v2's
    published values). The one list of the CRF defaults: :mod:`esol_lib.method.crf` reads its keyword
    defaults from here."""

    iterations: int = 10
    gt_prob: float = 0.7
    gauss_sxy: float = 3.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    seg_pos_w: float = 3.0
    seg_pos_xy_std: float = 1.0
    seg_bi_w: float = 4.0
    seg_bi_xy_std: float = 67.0
    seg_bi_rgb_std: float = 3.0


@dataclass
class IRNConfig(OptimiserConfig):
    """Inter-pixel relation network (IRN, CVPR 2019) refinement; SGD as :class:`OptimiserConfig` (IRN's own)."""

    conf_fg_thres: float = 0.30
    conf_bg_thres: float = 0.05
    backbone: str = "pretrained"  # the boundary branch's frozen backbone: pretrained | random | classifier
    radius: int = 5
    batch_size: int = 32
    epochs: int = 3  # used when max_steps is null
    crop_size: int = 512
    beta: float = 10.0
    exp_times: int = 8
    sem_seg_bg_thres: float = 0.25


@dataclass
class SegConfig(OptimiserConfig):
    """DeepLab-v2 trained on the pseudo masks; SGD as :class:`OptimiserConfig`, at DeepLab-v2's settings."""

    backbone: str = "resnet101"
    pretrained: str | None = "imagenet"
    dilations: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    # (stem, layer2, layer3, layer4) strides; None: DEEPLAB_LAYOUT's for the backbone (output stride 8
    # for the ResNets). A pretrained backbone should run at the strides it was pretrained at.
    strides: list[int] | None = None
    lr: float = 2.5e-4
    # ASPP [weights, biases] learning rate as multiples of lr. None: DeepLab-v2's [10, 20] on a
    # pretrained backbone (only the head is new), [1, 1] on a backbone trained from scratch.
    aspp_lr_mult: list[float] | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 10
    crop_size: int = 321
    max_steps: int = 20000
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    test_scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])
    crf: bool = True


@dataclass
class AblationConfig:
    """Chapter 07's ablations and sensitivity sweeps (§4.3, Fig. 6): what is tried and where it is scored.

    Every value is one forked run (:mod:`esol_lib.book.ablation`); a value equal to the main run's own
    setting reuses the main run. The defaults are the ranges of the paper's Fig. 6.
    """

    split: str | None = None  # where variants are scored; None: data.cam_split
    # ESOL steps per stage of every ablation run; None: the main run's. When set, a 'reference' fork
    # (the main config at this length) stands in for the main run, so variants compare at one budget.
    max_steps: int | None = None
    alphas: list[float] = field(default_factory=lambda: [0.001, 0.005, 0.01, 0.05, 0.1])  # Fig. 6(a)
    betas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.3, 0.5])  # Fig. 6(b)
    gammas: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0, 2.0, 5.0])  # Fig. 6(d)
    mus: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.5, 1.0, 1.5])  # Fig. 6(d)


@dataclass
class Config:
    """The whole run configuration, written to ``RUN/config.yaml`` first by every stage."""

    profile: str = "voc12"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # MiB of memory for the frozen backbone's features in the ESOL stages (esol_lib.runtime.feature_cache); 0: off
    feature_cache_mb: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    expansion: ExpansionConfig = field(default_factory=ExpansionConfig)
    shrinkage: ShrinkageConfig = field(default_factory=ShrinkageConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    irn: IRNConfig = field(default_factory=IRNConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- ranges

#: The largest ``irn.radius`` accepted: IRN's is 5 (10 when training the boundary branch).
MAX_IRN_RADIUS = 20

_POSITIVE_INT = (
    "batch_size",
    "crop_size",
    "epochs",
    "max_steps",
    "checkpoint_every",
    "radius",
    "exp_times",
    "iterations",
    "train",
    "val",
    "size",
    "num_classes",
    "extra_kernel",
    "extra_channels",
)
_NON_NEGATIVE_INT = ("num_workers", "frozen_stages", "seed")
_POSITIVE_FLOAT = ("lr", "alpha", "new_layer_lr_mult", "bilateral_sxy", "bilateral_srgb", "gauss_sxy")
_NON_NEGATIVE_FLOAT = (
    "weight_decay",
    "gamma",
    "mu",
    "feature_cache_mb",
    "max_offset",
    "gauss_compat",
    "bilateral_compat",
)
_UNIT_OPEN = ("gt_prob",)  # in (0, 1]
_FRACTION = ("momentum",)  # in [0, 1)
_PROBABILITY = ("conf_fg_thres", "conf_bg_thres", "sem_seg_bg_thres", "part_fraction")  # in [0, 1]
_CHOICES = {
    "data.generator": ("synth", "emoji"),
    "model.backbone": ("resnet50", "resnet101", "small"),
    "seg.backbone": ("resnet50", "resnet101", "small"),
    "irn.backbone": ("pretrained", "random", "classifier"),
    "shrinkage.area_map": ("cam", "cam-detached", "sigmoid"),
    "shrinkage.placement": ("second", "first"),
    "shrinkage.area_classes": ("present", "all"),
}


def _leaves(obj: Any, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{key}.")
        else:
            yield key, f.name, value


def check_ranges(cfg: Config) -> None:
    """Refuse a value that would fail minutes into a stage, or silently do nothing.

    Sizes, steps and counts are positive (``max_steps: 0`` does not mean "unset": write ``null``);
    learning rates and the loss-maximisation weight α are positive (α = 0 would make expansion a
    no-op stage); the clipping ceiling β of Eq. (7) lies in (0, 1] (the maps it clips are
    max-normalised); probabilities and thresholds in [0, 1], IRN's background one below its
    foreground one; ``irn.radius`` at most :data:`MAX_IRN_RADIUS`; ``data.mean`` and ``data.std``
    three numbers each, the std positive; lists of scales are non-empty and positive; names come
    from their documented choices.

    Raises:
        ConfigError: naming the first offending key, its value and the allowed range.
    """

    def bad(key: str, value: Any, want: str) -> ConfigError:
        return ConfigError(f"config key '{key}': {value!r} is out of range; expected {want}")

    for key, name, value in _leaves(cfg):
        if value is None:
            continue
        if key == "expansion.beta":
            if not 0 < value <= 1:
                raise bad(key, value, "a clipping ceiling in (0, 1] (Eq. 7 clips max-normalised maps)")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(key, value, "a finite number")
        if name in _POSITIVE_INT and isinstance(value, int) and value <= 0:
            hint = " (write null for 'unset')" if name == "max_steps" else ""
            raise bad(key, value, f"a positive integer{hint}")
        if name in _NON_NEGATIVE_INT and value < 0:
            raise bad(key, value, "an integer >= 0")
        if name in _POSITIVE_FLOAT and isinstance(value, (int, float)) and value <= 0:
            raise bad(key, value, "a number > 0" + (" (alpha = 0 makes expansion a no-op)" if name == "alpha" else ""))
        if name in _NON_NEGATIVE_FLOAT and isinstance(value, (int, float)) and value < 0:
            raise bad(key, value, "a number >= 0")
        if name in _UNIT_OPEN and not 0 < value <= 1:
            raise bad(key, value, "a number in (0, 1]")
        if name in _FRACTION and not 0 <= value < 1:
            raise bad(key, value, "a number in [0, 1)")
        if name in _PROBABILITY and not 0 <= value <= 1:
            raise bad(key, value, "a number in [0, 1]")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise bad(key, value, "one of " + ", ".join(_CHOICES[key]))
    for key, values in (
        ("cam.scales", cfg.cam.scales),
        ("seg.test_scales", cfg.seg.test_scales),
        ("cam.thresholds", cfg.cam.thresholds),
    ):
        if not values:
            raise bad(key, values, "a non-empty list")
        if any(not (v > 0 and math.isfinite(v)) for v in values):
            raise bad(key, values, "positive numbers")
    if any(v >= 1 for v in cfg.cam.thresholds):
        raise bad("cam.thresholds", cfg.cam.thresholds, "thresholds in (0, 1) (CAMs are max-normalised)")
    for key, pair in (("train_cam.resize_long", cfg.train_cam.resize_long), ("seg.scale_range", cfg.seg.scale_range)):
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise bad(key, pair, "[low, high] with 0 < low <= high")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise bad("device", cfg.device, "auto, cpu or cuda (torchrun picks each rank's GPU)")
    for key, values in (("data.mean", cfg.data.mean), ("data.std", cfg.data.std)):
        if len(values) != 3 or any(not math.isfinite(v) for v in values):
            raise bad(key, values, "three finite numbers, one per RGB channel")
    if any(v <= 0 for v in cfg.data.std):
        raise bad("data.std", cfg.data.std, "three numbers > 0 (images are divided by them)")
    if cfg.irn.radius > MAX_IRN_RADIUS:
        raise bad(
            "irn.radius",
            cfg.irn.radius,
            f"an integer in [1, {MAX_IRN_RADIUS}] (IRN uses 5; the pixel pairs grow as radius², and 100 turned "
            "one IRN step on 32 px images into ten minutes)",
        )
    if not cfg.irn.conf_bg_thres < cfg.irn.conf_fg_thres:
        raise bad(
            "irn.conf_bg_thres",
            cfg.irn.conf_bg_thres,
            f"a number below irn.conf_fg_thres ({cfg.irn.conf_fg_thres}): IRN's confident background is "
            "where every CAM is under it, confident foreground where one is over the other",
        )


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (YAML-ready)."""
    return dataclasses.asdict(cfg)


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
