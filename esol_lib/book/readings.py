"""The readings of the paper: every point where its text is silent or self-contradictory, as a named setting.

ESOL's paper leaves much of the method to the reader (docs/DESIGN.md lists the points). A
:class:`Reading` is one answer to one such question (a *factor*), written as config overrides of
the as-built configuration. ``benchmarks/readings.py`` trains each reading as a fork of a seed's
run that shares its baseline (one factor changed at a time), scores it, and then applies the
protocol of :func:`select_readings`, fixed before any result was seen:

1. On generator seed 0's **val** split only, each factor takes the level whose shrinkage seeds
   score the best mIoU (the reference level wins ties); a reading that diverged cannot be chosen.
2. The chosen levels together are the *selected* combination; it is reported untouched on the
   other seeds (train and val) and on the toy benchmark.
3. A profile's default changes only to a chosen level that the paper's text supports at least as
   well as the current one (:attr:`Reading.support`), and only once the selected combination has
   been reported on every seed.

:func:`esol_lib.book.verdicts.stage_verdicts` then states, from the numbers, whether expansion
raised recall and shrinkage raised precision, per reading and for the selected combination;
:mod:`esol_lib.book.study` is the book's view of the study's results (``readings.json``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from esol_lib.book.ablation import Variant

__all__ = [
    "Reading",
    "READINGS",
    "REFERENCE",
    "FACTORS",
    "SUPPORT_RANK",
    "SELECTION_STAGE",
    "SELECTION_KEY",
    "AS_BUILT",
    "select_readings",
    "selected_overrides",
    "default_changes",
    "profile_adoption",
]

#: How well the paper's text supports a level: ``text`` (a sentence or equation says it),
#: ``implied`` (what the text or a figure most directly suggests), ``silent`` (nothing says it
#: either way). A default changes only to a level ranked at least as high as the current one.
SUPPORT_RANK = {"text": 2, "implied": 1, "silent": 0}

#: The name of the as-built configuration that every reading changes one factor of.
REFERENCE = "as-built"

#: The as-built configuration the study's readings change one factor of, pinned: since the
#: profiles adopted the changes the protocol permitted (docs/DESIGN.md), these are no longer
#: their defaults, and ``benchmarks/readings.py`` sets them so that a re-run measures the same
#: reference as readings.json. Each is the as-built level of a factor in :data:`FACTORS`.
AS_BUILT: tuple[str, ...] = ("expansion.momentum=0.9", "shrinkage.momentum=0.9")

#: The protocol's criterion: the best-threshold seed mIoU of this stage, on seed 0's val split.
SELECTION_STAGE = "shrinkage"
SELECTION_KEY = "miou"


@dataclass(frozen=True)
class Reading:
    """One answer to one open question of the paper.

    Args:
        name: folder name of its fork (``RUN/readings/<name>``).
        factor: the question it answers (readings of one factor are alternatives to each other).
        label: what the book's tables print.
        overrides: ``key=value`` changes from the as-built configuration.
        support: ``text``, ``implied`` or ``silent`` (:data:`SUPPORT_RANK`).
        why: the paper's words (or silence) behind the reading.
    """

    name: str
    factor: str
    label: str
    overrides: tuple[str, ...]
    support: str
    why: str

    def __post_init__(self) -> None:
        if self.support not in SUPPORT_RANK:
            raise ValueError(f"reading {self.name!r}: support must be one of {sorted(SUPPORT_RANK)}")

    @property
    def variant(self) -> Variant:
        """The fork that trains and scores this reading (:mod:`esol_lib.book.ablation`)."""
        return Variant(self.name, self.label, self.overrides, stage="shrinkage")


#: Each factor's as-built level: (label, support, why). The as-built run is every factor's reference.
FACTORS: dict[str, tuple[str, str, str]] = {
    "clip-training": (
        "ceiling detached, clip on while expansion trains",
        "implied",
        "Fig. 2 draws the clipping after ES in the expansion model; Eq. (7) defines a value, not its gradient",
    ),
    "clip-cams": ("clip on when CAMs are computed", "implied", "Fig. 2 keeps the clipping in the model that infers"),
    "optimiser": (
        "SGD momentum 0.9, weight decay 1e-4",
        "silent",
        "§4.1 gives learning rates only; momentum 0.9 is the usual SGD setting",
    ),
    "length": ("10 passes over the training split", "implied", "§4.1's 6,610 iterations are 10 epochs of train_aug"),
    "alpha": ("α = 0.01", "text", "§4.3.1 and A.1.2 choose 0.01 after the Fig. 6(a) sweep"),
    "pk-map": ("P_k = CAM / its max (gradient through the max)", "implied", "Eq. (2)'s localization map"),
    "pk-classes": ("P_k over the image's classes", "silent", "Eq. (6) is written over all C classes"),
    "placement": ("SS deforms the second conv, after ES", "implied", "Fig. 2 stacks SS after ES and the clipping"),
}

READINGS: tuple[Reading, ...] = (
    Reading(
        "clip-gradient",
        "clip-training",
        "gradient through the clip ceiling",
        ("expansion.clip_gradient=true",),
        "silent",
        "Eq. (7) does not say whether β·max is a constant",
    ),
    Reading(
        "clip-after",
        "clip-training",
        "clip only once expansion is trained",
        ("expansion.clip_in_training=false",),
        "silent",
        "§3.2 motivates the clipping by what expansion leaves, which could mean it acts after expansion",
    ),
    Reading(
        "cam-noclip",
        "clip-cams",
        "no clipping when CAMs are computed",
        ("expansion.clip_in_cams=false",),
        "silent",
        "§3.2 introduces the clipping for shrinkage's training only",
    ),
    Reading(
        "opt-irn",
        "optimiser",
        "IRN's effective SGD (momentum 1e-4)",
        ("expansion.momentum=0.0001", "shrinkage.momentum=0.0001"),
        "implied",
        "the paper implements CAM following IRN, whose optimiser ran with momentum 1e-4",
    ),
    Reading(
        "len-6610",
        "length",
        "the paper's 6,610 iterations per stage",
        ("expansion.max_steps=6610", "shrinkage.max_steps=6610"),
        "text",
        "§4.1 prints 6,610 iterations for VOC",
    ),
    Reading("alpha-0.001", "alpha", "α = 0.001", ("expansion.alpha=0.001",), "text", "§4.1 prints α = 0.001"),
    Reading(
        "pk-cam-detached",
        "pk-map",
        "P_k = CAM / its max, max held constant",
        ("shrinkage.area_map=cam-detached",),
        "implied",
        "Eq. (2)'s map, its normaliser read as a constant",
    ),
    Reading(
        "pk-sigmoid",
        "pk-map",
        "P_k = σ(class score)",
        ("shrinkage.area_map=sigmoid",),
        "silent",
        "the paper defines P_k only as 'the localization map' (§3.3), which Eq. (2) defines as the "
        "max-normalised CAM; a per-pixel class probability is nowhere in its text",
    ),
    Reading(
        "pk-all",
        "pk-classes",
        "P_k over all C classes",
        ("shrinkage.area_classes=all",),
        "text",
        "Eq. (6) averages S_c over c = 1..C",
    ),
    Reading(
        "ss-first",
        "placement",
        "SS deforms the same conv as ES",
        ("shrinkage.placement=first",),
        "silent",
        "§3.3 says SS is 'a deformable layer'; which conv it replaces is not stated",
    ),
)


def _score(result: Mapping | None, key: str = SELECTION_KEY) -> float | None:
    if not result or result.get("diverged") or result.get(key) is None:
        return None
    return float(result[key])


def select_readings(scores: Mapping[str, Mapping | None], readings: Sequence[Reading] = READINGS) -> dict[str, dict]:
    """Step 1 of the protocol: per factor, the level with the best selection score.

    Args:
        scores: ``{reading name or REFERENCE: stage metrics}``, the :data:`SELECTION_STAGE` metrics on
            seed 0's val split (a dict with :data:`SELECTION_KEY`, or ``{"diverged": ...}``, or None
            where it was not run).

    Returns:
        ``{factor: {"chosen": name, "score": value, "candidates": {name: value}}}``; ``chosen`` is
        :data:`REFERENCE` when no reading of the factor beats it (ties go to the reference).

    Raises:
        ValueError: when the reference itself has no score (nothing to compare with).
    """
    ref = _score(scores.get(REFERENCE))
    if ref is None:
        raise ValueError(f"the protocol needs the {REFERENCE!r} run's score; it is missing or diverged")
    out: dict[str, dict] = {}
    for factor in FACTORS:
        candidates = {REFERENCE: ref}
        for r in readings:
            if r.factor == factor:
                candidates[r.name] = _score(scores.get(r.name))
        chosen, best = REFERENCE, ref
        for name, value in candidates.items():
            if value is not None and value > best:
                chosen, best = name, value
        out[factor] = {"chosen": chosen, "score": best, "candidates": candidates}
    return out


def selected_overrides(selection: Mapping[str, Mapping], readings: Sequence[Reading] = READINGS) -> tuple[str, ...]:
    """Step 2: the overrides of every chosen reading together (empty when the reference won every factor)."""
    by_name = {r.name: r for r in readings}
    out: list[str] = []
    for factor in FACTORS:
        chosen = selection[factor]["chosen"]
        if chosen != REFERENCE:
            out += by_name[chosen].overrides
    return tuple(out)


def default_changes(selection: Mapping[str, Mapping], readings: Sequence[Reading] = READINGS) -> list[dict]:
    """Step 3: the chosen levels a profile's default may change to (support at least the current one's)."""
    by_name = {r.name: r for r in readings}
    changes = []
    for factor, pick in selection.items():
        if pick["chosen"] == REFERENCE:
            continue
        reading = by_name[pick["chosen"]]
        current = FACTORS[factor][1]
        allowed = SUPPORT_RANK[reading.support] >= SUPPORT_RANK[current]
        changes.append({"factor": factor, "reading": reading.name, "allowed": allowed, "support": reading.support})
    return changes


def profile_adoption(cfg, changes: Sequence[Mapping], readings: Sequence[Reading] = READINGS) -> list[dict]:
    """Whether a loaded profile carries each level the protocol chose (step 3, checked, not assumed).

    Args:
        cfg: a :class:`esol_lib.runtime.config.Config`, or a profile's name (``"cpu"``).
        changes: :func:`default_changes`' list (readings.json's ``default_changes``).

    Returns:
        one dict per change: its ``factor``, ``reading``, ``allowed`` and ``adopted`` (every
        override of the reading equals the profile's value), and ``values``: the profile's value of
        each key the reading sets.
    """
    from esol_lib.runtime.config_io import apply_overrides, config_to_dict, load_config

    if isinstance(cfg, str):
        cfg = load_config(cfg)
    by_name = {r.name: r for r in readings}
    values = config_to_dict(cfg)
    out = []
    for change in changes:
        reading = by_name[change["reading"]]
        keys = [o.split("=", 1)[0].strip() for o in reading.overrides]
        current = {k: _lookup(values, k) for k in keys}
        adopted = apply_overrides(values, list(reading.overrides)) == values
        out.append({**change, "adopted": adopted, "values": current})
    return out


def _lookup(values: Mapping, dotted: str):
    for part in dotted.split("."):
        values = values[part]
    return values
