"""Typed run configuration: what a config is (a tree of dataclasses) and which values it accepts.

:mod:`esol_lib.runtime.config_io` reads one from a preset (``smoke``, ``toy``, ``cpu``, ``voc12``,
``coco14``; YAML files in ``esol_lib/configs/``) or a YAML path, patched with dotted ``--set``
overrides, and refuses, before anything runs, an unknown key, a value of the wrong type and (by
:func:`check_ranges`, here beside the fields) a value out of range.

The dataclass defaults are the paper's PASCAL VOC 2012 settings (§4.1) and
IRN's public settings for the baseline; the presets state every field they change.
Where the paper is ambiguous (see ``DESIGN.md``), the choice is a field here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from esol_lib.runtime.errors import ConfigError


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
    objects: list[int] = field(default_factory=lambda: [1, 3])  # [min, max] objects per image


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
    warmup_steps: int = 0  # linear warm-up of the lr over the first steps (PolyLR); 0: none, as IRN
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
class RecamConfig(OptimiserConfig):
    """ReCAM (positive control, chapter 10): the baseline fine-tuned with a softmax CE on CAM-weighted class
    features (:mod:`esol_lib.method.recam`). Defaults are ``run_sample.py``'s (VOC): 4 epochs, lr 5e-4 on the
    new predictor and ``backbone_lr_mult`` (0.1) of it on the rest, loss weight 1, batch 16; IRN's
    effective optimiser (momentum 1e-4, weight decay 1e-4), as ``PolyOptimizer`` gives it."""

    lr: float = 5e-4
    epochs: int = 4  # used when max_steps is null
    batch_size: int = 16
    loss_weight: float = 1.0  # recam_loss_weight (COCO: 0.1)
    backbone_lr_mult: float = 0.1  # the backbone and the original classifier at 0.1 x lr


@dataclass
class AdvcamConfig:
    """AdvCAM (positive control, chapter 10): anti-adversarial climbing of the image
    (:mod:`esol_lib.method.advcam`). Defaults are the public code's (``obtain_CAM_masking.py``); the scales are
    ``cam.scales`` (IRN's, as AdvCAM's)."""

    steps: int = 27  # adv_iter
    step_size: float = 0.08  # AD_stepsize
    lam: float = 7.0  # AD_coeff
    mask_threshold: float = 0.5  # score_th
    half_steps_at_half_scale: bool = True  # the code's 0.5-scale quirk (method/advcam.py)
    reg_reduction: str = "sum"  # sum: the code's (lambda depends on the map's size); area: per reference cells
    attribution: str = "gradcam"  # gradcam: the code's; cam: ReLU(w_c^T F)
    max_images: int | None = None  # None: every image of a split; N: its first N ids only (cost: ~100x a CAM)


@dataclass
class LpcamConfig:
    """LPCAM (positive control, chapter 10): local prototypes of each class's foreground and context
    (:mod:`esol_lib.method.lpcam`), clustered from the baseline's features on ``data.cam_split``. Defaults are
    ``step/make_lpcam.py``'s (VOC)."""

    num_clusters: int = 12  # num_cluster
    cam_threshold: float = 0.1  # select_thres
    fg_min: float = 0.9  # class_thres
    ctx_range: list[float] = field(default_factory=lambda: [0.05, 0.9])  # context_thres_low, context_thres
    kmeans_iters: int = 100  # a cap (the public code has none)
    max_per_class: int | None = 10000  # feature rows kept per class and set (the public code keeps all)
    fallback_best: bool = False  # a class with no centre over fg_min keeps its best one (the COCO code's)


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
    recam: RecamConfig = field(default_factory=RecamConfig)
    advcam: AdvcamConfig = field(default_factory=AdvcamConfig)
    lpcam: LpcamConfig = field(default_factory=LpcamConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)


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
    "steps",
    "num_clusters",
    "kmeans_iters",
    "max_images",
    "max_per_class",
)
_NON_NEGATIVE_INT = ("num_workers", "frozen_stages", "seed", "warmup_steps")
_POSITIVE_FLOAT = (
    "lr",
    "alpha",
    "new_layer_lr_mult",
    "step_size",
    "backbone_lr_mult",
    "bilateral_sxy",
    "bilateral_srgb",
    "gauss_sxy",
)
_NON_NEGATIVE_FLOAT = (
    "weight_decay",
    "gamma",
    "mu",
    "feature_cache_mb",
    "max_offset",
    "gauss_compat",
    "bilateral_compat",
    "loss_weight",
    "lam",
)
_UNIT_OPEN = ("gt_prob",)  # in (0, 1]
_FRACTION = ("momentum",)  # in [0, 1)
_PROBABILITY = (
    "conf_fg_thres",
    "conf_bg_thres",
    "sem_seg_bg_thres",
    "part_fraction",
    "mask_threshold",
    "cam_threshold",
    "fg_min",
)  # in [0, 1]
_CHOICES = {
    "data.generator": ("synth", "emoji"),
    "model.backbone": ("resnet50", "resnet101", "small"),
    "seg.backbone": ("resnet50", "resnet101", "small"),
    "irn.backbone": ("pretrained", "random", "classifier"),
    "shrinkage.area_map": ("cam", "cam-detached", "sigmoid"),
    "shrinkage.placement": ("second", "first"),
    "shrinkage.area_classes": ("present", "all"),
    "advcam.reg_reduction": ("sum", "area"),
    "advcam.attribution": ("gradcam", "cam"),
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
    low, high = (list(cfg.lpcam.ctx_range) + [None, None])[:2]
    if len(cfg.lpcam.ctx_range) != 2 or not 0 <= low < high <= 1:
        raise bad("lpcam.ctx_range", cfg.lpcam.ctx_range, "[low, high] with 0 <= low < high <= 1")
    objects = cfg.data.emoji.objects
    if len(objects) != 2 or not 1 <= objects[0] <= objects[1] <= 6:
        raise bad("data.emoji.objects", objects, "[min, max] with 1 <= min <= max <= 6")
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
