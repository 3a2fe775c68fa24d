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

:func:`stage_verdicts` then states, from the numbers, whether expansion raised recall and
shrinkage raised precision, per reading and for the selected combination.
"""

from __future__ import annotations

import math
import statistics
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
    "stage_effects",
    "stage_verdicts",
    "mean_std",
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
    from esol_lib.runtime.config import apply_overrides, config_to_dict, load_config

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


def stage_effects(stages: Mapping[str, Mapping | None]) -> dict[str, float | None]:
    """What each stage did, in points (percent), from one run's seed metrics by stage.

    ``stages`` maps ``baseline``, ``expansion`` and ``shrinkage`` to eval-cam's dicts (fractions;
    ``sweep`` holds every threshold). Returns the expansion's change in recall at the best
    threshold (``expansion_recall``) and averaged over the sweep (``expansion_recall_sweep``), the
    shrinkage's change in precision over expansion (``shrinkage_precision``, and ``_sweep``), and
    ESOL − baseline in mIoU, F1 and AP (``esol_miou`` …); None where a stage is missing.
    """

    def at(stage: str, key: str) -> float | None:
        m = stages.get(stage)
        return None if not m or m.get("diverged") or m.get(key) is None else 100 * float(m[key])

    def sweep(stage: str, key: str) -> float | None:
        m = stages.get(stage)
        if not m or m.get("diverged") or not m.get("sweep"):
            return None
        return 100 * statistics.fmean(p[key] for p in m["sweep"])

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 2)

    out = {
        "expansion_recall": diff(at("expansion", "recall"), at("baseline", "recall")),
        "expansion_recall_sweep": diff(sweep("expansion", "recall"), sweep("baseline", "recall")),
        "shrinkage_precision": diff(at("shrinkage", "precision"), at("expansion", "precision")),
        "shrinkage_precision_sweep": diff(sweep("shrinkage", "precision"), sweep("expansion", "precision")),
    }
    for key in ("miou", "f1", "ap"):
        out[f"esol_{key}"] = diff(at("shrinkage", key), at("baseline", key))
    return out


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int] | None:
    """``(mean, population std, n)`` of the values that are not None; None when there are none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.pstdev(vals), len(vals)


def _pm(values: Sequence[float | None]) -> str:
    ms = mean_std(values)
    if ms is None:
        return "not measured"
    mean, std, n = ms
    return f"{mean:+.1f} ± {std:.1f} points ({n} seed{'s' if n != 1 else ''})"


def stage_verdicts(
    effects: Mapping[str, Sequence[Mapping[str, float | None]]], selected: str | None = None
) -> list[str]:
    """Sentences that say, from the measured effects, what each stage did under each reading.

    Args:
        effects: ``{reading name: [stage_effects of each seed]}``.
        selected: the name of the selected combination in ``effects``, stated last.

    The paper's direction is reproduced by a reading when, on average over its seeds, expansion
    raised recall at the best threshold *and* across the sweep, or shrinkage raised precision over
    expansion at the best threshold.
    """

    def mean(name: str, key: str) -> float | None:
        ms = mean_std([e.get(key) for e in effects[name]])
        return None if ms is None else ms[0]

    names = [n for n in effects if n != selected]
    recall_up = [
        n for n in names if (mean(n, "expansion_recall") or 0) > 0 and (mean(n, "expansion_recall_sweep") or 0) > 0
    ]
    precision_up = [n for n in names if (mean(n, "shrinkage_precision") or 0) > 0]
    esol_up = [n for n in names if (mean(n, "esol_miou") or 0) > 0]
    total = len(names)

    from esol_lib.book import paper

    (p_base, r_base, _), (p_exp, r_exp, _), (p_shr, _, _) = (
        paper.TABLE6[s] for s in ("baseline", "expansion", "shrinkage")
    )
    claimed = {"expansion_recall": r_exp - r_base, "shrinkage_precision": p_shr - p_exp}

    def listed(found: list[str], key: str) -> str:
        values = ", ".join(f"`{n}` {mean(n, key):+.1f}" for n in found)
        paper_says = f"; the paper: {claimed[key]:+.1f} on VOC" if key in claimed else ""
        return f" ({values} points on average{paper_says})." if found else f": under none of them{paper_says}."

    lines = [
        f"Expansion raised recall at the best threshold and across the sweep under {len(recall_up)} of {total} "
        f"readings" + listed(recall_up, "expansion_recall"),
        f"Shrinkage raised precision over expansion under {len(precision_up)} of {total} readings"
        + listed(precision_up, "shrinkage_precision"),
        f"ESOL's seeds scored above the baseline's (mIoU) under {len(esol_up)} of {total} readings"
        + listed(esol_up, "esol_miou"),
    ]
    if selected is not None and selected in effects:
        e = effects[selected]
        lines.append(
            f"The selected combination ({selected}): expansion changed recall by "
            f"{_pm([x.get('expansion_recall') for x in e])}, shrinkage changed precision by "
            f"{_pm([x.get('shrinkage_precision') for x in e])}, and ESOL − baseline is "
            f"{_pm([x.get('esol_miou') for x in e])} mIoU, {_pm([x.get('esol_f1') for x in e])} F1 and "
            f"{_pm([x.get('esol_ap') for x in e])} AP."
        )
    return lines


# ----------------------------------------------------------------------------- the book's view of readings.json


def _stages(result: Mapping, seed: str, name: str, split: str) -> dict | None:
    """A reading's stage metrics on one seed and split, with the seed's shared baseline; None if not run."""
    runs = result.get("seeds", {}).get(seed, {})
    return _stages_of(runs, name, split)


def _stages_of(runs: Mapping, name: str, split: str) -> dict | None:
    """A reading's stages over the baseline it forked from: the seed's as-built baseline, or its own
    ``reference`` when the as-built run had to be retrained and did not reproduce the recorded one."""
    ref, rec = runs.get(REFERENCE), runs.get(name)
    if not ref or not rec:
        return None
    base = (rec.get("reference", {}).get("scores", {}).get(split) or ref.get("scores", {}).get(split, {})).get(
        "baseline"
    )
    if rec.get("diverged"):  # a shrinkage-only reading keeps its (shared) expansion's scores
        expansion = rec.get("scores", {}).get(split, {}).get("expansion") or {"diverged": rec["diverged"]}
        return {"baseline": base, "expansion": expansion, "shrinkage": {"diverged": rec["diverged"]}}
    scores = rec.get("scores", {}).get(split)
    if not scores:
        return None
    return {"baseline": base, **{st: scores.get(st) for st in ("expansion", "shrinkage")}}


def reading_names(result: Mapping) -> list[str]:
    """The as-built run and the readings, in the study's order."""
    return [REFERENCE, *(r["name"] for r in result.get("readings", []))]


def effects_by_reading(result: Mapping, split: str = "val") -> dict[str, list[dict]]:
    """``{reading: [stage_effects of each seed it ran on]}`` (:func:`stage_effects`)."""
    out: dict[str, list[dict]] = {}
    for name in reading_names(result):
        for seed in sorted(result.get("seeds", {})):
            stages = _stages(result, seed, name, split)
            if stages is not None:
                out.setdefault(name, []).append(stage_effects(stages))
    return out


def _pct(m: Mapping | None, key: str) -> str:
    if not m:
        return "–"
    if m.get("diverged"):
        return "diverged"
    v = m.get(key)
    return "–" if v is None else f"{100 * v:.1f}"


def _sweep_mean(m: Mapping | None, key: str) -> str:
    if not m or m.get("diverged") or not m.get("sweep"):
        return "–"
    return f"{100 * statistics.fmean(p[key] for p in m['sweep']):.1f}"


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1f}"


def readings_list(result: Mapping) -> str:
    """The factors and their readings as a Markdown list: each level, its overrides, its support in
    the paper's text and the words (or silence) behind it."""
    lines = []
    for factor, info in result.get("factors", {}).items():
        lines.append(f"- **{factor}**: {info['label']} (as built; {info['support']}: {info['why']})")
        for r in result.get("readings", []):
            if r["factor"] == factor:
                overrides = ", ".join(f"`{o}`" for o in r["overrides"])
                lines.append(f"  - `{r['name']}`: {r['label']}, {overrides} ({r['support']}: {r['why']})")
    return "\n".join(lines)


def readings_table(result: Mapping, seed: str = "0", split: str = "val") -> str:
    """One seed's readings side by side: each stage's seeds (mIoU, precision, recall, F1, AP at the best
    threshold; precision and recall averaged over the sweep) and the effect the paper claims for it
    (``Δ``): expansion's change in recall over the baseline (``R``), shrinkage's in precision over
    expansion (``P``), at the best threshold / averaged over the sweep, in points."""
    head = "| reading | stage | mIoU | P | R | F1 | AP | sweep P/R | Δ best/sweep |"
    lines = [head, "|" + "---|" * 9]
    ref = _stages(result, seed, REFERENCE, split)
    if ref is None:
        return "no as-built run on this seed"
    b = ref["baseline"]
    lines.append(
        f"| baseline (no ESOL) | baseline | {_pct(b, 'miou')} | {_pct(b, 'precision')} | {_pct(b, 'recall')} | "
        f"{_pct(b, 'f1')} | {_pct(b, 'ap')} | {_sweep_mean(b, 'precision')} / {_sweep_mean(b, 'recall')} | – |"
    )
    for name in reading_names(result):
        stages = _stages(result, seed, name, split)
        if stages is None:
            lines.append(f"| `{name}` | not run | | | | | | | |")
            continue
        e = stage_effects(stages)
        for st in ("expansion", "shrinkage"):
            m = stages[st]
            if st == "expansion":
                effect = f"R {_signed(e['expansion_recall'])} / {_signed(e['expansion_recall_sweep'])}"
            else:
                effect = f"P {_signed(e['shrinkage_precision'])} / {_signed(e['shrinkage_precision_sweep'])}"
            lines.append(
                f"| {f'`{name}`' if st == 'expansion' else ''} | {st} | {_pct(m, 'miou')} | {_pct(m, 'precision')} | "
                f"{_pct(m, 'recall')} | {_pct(m, 'f1')} | {_pct(m, 'ap')} | "
                f"{_sweep_mean(m, 'precision')} / {_sweep_mean(m, 'recall')} | {effect} |"
            )
    return "\n".join(lines)


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}"


def _percent(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def diagnostics_table(result: Mapping, seed: str = "0") -> str:
    """Why the offsets move or not, per reading and stage (start → end of the stage): the gradient
    reaching them on object, background and clipped cells (mean norm of ∂L/∂Δp per cell), the share
    of object and background cells' channels at the clipping ceiling, the confidence σ(z) in the
    classes present, and the mean |offset| the stage ended with (feature cells)."""
    runs = result.get("seeds", {}).get(seed, {})
    head = "| reading | stage | ∂L/∂Δp object | background | clipped | clipped ch. obj / bg | σ(z) | offset |"
    lines = [head, "|" + "---|" * 8]
    for name in reading_names(result):
        diag = (runs.get(name) or {}).get("diagnostics")
        if not diag:
            continue
        for stage in ("expansion", "shrinkage"):
            a, b = diag.get(f"{stage}_start") or {}, diag.get(f"{stage}_end") or {}
            if "skipped" in a or "skipped" in b:
                lines.append(f"| `{name}` | {stage} | no offsets | | | | | |")
                continue

            def span(key: str, a: Mapping = a, b: Mapping = b) -> str:
                return f"{_fmt(a.get(key))} → {_fmt(b.get(key))}"

            clipped = f"{_percent(b.get('clipped_share_object'))} / {_percent(b.get('clipped_share_background'))}"
            lines.append(
                f"| `{name}` | {stage} | {span('grad_object')} | {span('grad_background')} | {span('grad_clipped')} | "
                f"{clipped} | {span('confidence')} | {_fmt(b.get('offset'))} |"
            )
    return "\n".join(lines)


def selected_table(result: Mapping, key: str = "selected") -> str:
    """The selected combination beside the as-built run on every seed (mean ± std over seeds, points):
    each stage's effect and ESOL − baseline, on val and train."""
    per_seed = result.get(key, {})
    rows = []
    for split in ("val", "train"):
        for name in (REFERENCE, "selected"):
            effects = []
            for seed, runs in sorted(per_seed.items()):
                seed_runs = dict(result.get("seeds", {}).get(seed, {})) | dict(runs)
                if name == "selected" and runs.get("selected", {}).get("same_as") == REFERENCE:
                    stages = _stages_of(seed_runs, REFERENCE, split)
                else:
                    stages = _stages_of(seed_runs, name, split)
                if stages is not None:
                    effects.append(stage_effects(stages))
            if not effects:
                continue
            cells = [
                _pm([e.get(k) for e in effects]).replace(" points", "")
                for k in ("expansion_recall", "shrinkage_precision", "esol_miou", "esol_f1", "esol_ap")
            ]
            rows.append(f"| {name} | {split} | " + " | ".join(cells) + " |")
    if not rows:
        return "the selected combination has not been run"
    head = "| run | split | expansion: Δ recall | shrinkage: Δ precision | ESOL − baseline: mIoU | F1 | AP |"
    return "\n".join([head, "|" + "---|" * 7, *rows])


def verdict(result: Mapping, split: str = "val") -> list[str]:
    """The study's closing sentences, computed from ``readings.json`` (:func:`stage_verdicts`)."""
    effects = effects_by_reading(result, split)
    selected_effects = []
    for seed, runs in sorted(result.get("selected", {}).items()):
        seed_runs = dict(result.get("seeds", {}).get(seed, {})) | dict(runs)
        name = REFERENCE if runs.get("selected", {}).get("same_as") == REFERENCE else "selected"
        stages = _stages_of(seed_runs, name, split)
        if stages is not None:
            selected_effects.append(stage_effects(stages))
    if selected_effects:
        effects["selected"] = selected_effects
    return stage_verdicts(effects, "selected" if selected_effects else None)


def stopped_runs(result: Mapping) -> list[str]:
    """One line per run the divergence guard stopped, on any seed or benchmark: a reading stays in the study
    whatever it does, and one that ran away is scored up to its last finished stage, so the line names it."""
    out = []
    for key, what in (("seeds", "seed"), ("selected", "seed"), ("toy", "toy seed")):
        for seed, runs in sorted(result.get(key, {}).items()):
            for name, rec in runs.items():
                if isinstance(rec, Mapping) and rec.get("diverged"):
                    scored = ", ".join(rec.get("scores", {}).get("val", {})) or "no stage"
                    why = rec["diverged"].split("; ")[0]  # the guard's advice on what to lower is for its CLI user
                    out.append(f"`{name}` on {what} {seed} was stopped ({why}); scored: {scored}.")
    return out


def retrained_references(result: Mapping, split: str = "val") -> list[str]:
    """One line per reading measured on a retrained as-built run whose baseline differs from the recorded
    one: its effects are taken against its own baseline (:func:`_stages_of`), and the line says by how much
    the two baselines differ, so that no reader compares the row with the as-built one unknowingly."""
    out = []
    for seed, runs in sorted(result.get("seeds", {}).items()):
        recorded = runs.get(REFERENCE, {}).get("scores", {}).get(split, {}).get("baseline") or {}
        for name, rec in runs.items():
            own = rec.get("reference", {}).get("scores", {}).get(split, {}) if isinstance(rec, Mapping) else {}
            if not own.get("baseline") or not recorded:
                continue
            out.append(
                f"`{name}` on seed {seed} forked from an as-built run trained again (the recorded one was lost): "
                f"its baseline scored {100 * own['baseline']['miou']:.1f} mIoU against the recorded "
                f"{100 * recorded['miou']:.1f}; its effects are measured from its own baseline, and that run's "
                f"expansion and shrinkage scored "
                + ", ".join(
                    f"{100 * (own.get(st) or {}).get('miou', float('nan')):.1f}" for st in ("expansion", "shrinkage")
                )
                + "."
            )
    return out


def run_sentences(stages: Mapping[str, Mapping | None]) -> list[str]:
    """What one run's stages did, in words, from its seed metrics by stage (fractions, with sweeps):
    the closing lines of chapters 02, 04 and 08."""
    from esol_lib.book import paper

    (p_base, r_base, _), (p_exp, r_exp, _), (p_shr, _, _) = (
        paper.TABLE6[s] for s in ("baseline", "expansion", "shrinkage")
    )
    e = stage_effects(stages)
    out = []
    if e["expansion_recall"] is not None:
        held = (e["expansion_recall"] or 0) > 0 and (e["expansion_recall_sweep"] or 0) > 0
        out.append(
            f"In this run, expansion changed the seeds' recall by {_signed(e['expansion_recall'])} points at the "
            f"best threshold and by {_signed(e['expansion_recall_sweep'])} averaged over the threshold sweep "
            f"(the paper: {r_exp - r_base:+.1f} on VOC, Table 6): it {'did' if held else 'did not do'} what the "
            f"paper says of it (recall up at the best threshold and across the sweep)."
        )
    if e["shrinkage_precision"] is not None:
        held = (e["shrinkage_precision"] or 0) > 0
        out.append(
            f"Shrinkage changed precision over expansion by {_signed(e['shrinkage_precision'])} points at the best "
            f"threshold and by {_signed(e['shrinkage_precision_sweep'])} averaged over the sweep (the paper: "
            f"{p_shr - p_exp:+.1f}, Table 6): it {'did' if held else 'did not do'} what the paper says of it "
            f"(precision up over expansion)."
        )
    if e["esol_miou"] is not None:
        out.append(
            f"ESOL − baseline: {e['esol_miou']:+.1f} mIoU, {_signed(e['esol_f1'])} F1, {_signed(e['esol_ap'])} AP "
            f"(the paper: {paper.TABLE5_ESOL_SEED - paper.TABLE5_BASELINE_SEED:+.1f} mIoU on VOC train, §4.1)."
        )
    return out


def baseline_optimiser_table(result: Mapping) -> str:
    """The baseline's seeds under IRN's effective optimiser (the as-built run) and under the momentum 0.9
    its code meant (``baseline-momentum-0.9``), per seed and split: mIoU, precision, recall, AP."""
    rows = []
    for seed, runs in sorted(result.get("seeds", {}).items()):
        for name, label in ((REFERENCE, "IRN's effective (momentum 1e-4)"), ("baseline-momentum-0.9", "momentum 0.9")):
            rec = runs.get(name) or {}
            settings = ", ".join(f"`{o}`" for o in rec.get("overrides", [])) or "the profile's"
            for split in ("val", "train"):
                m = rec.get("scores", {}).get(split, {}).get("baseline")
                if m:
                    cells = [_pct(m, k) for k in ("miou", "precision", "recall", "ap")]
                    rows.append(f"| {seed} | {label} ({settings}) | {split} | " + " | ".join(cells) + " |")
    if not rows:
        return "not measured"
    return "\n".join(["| seed | train_cam optimiser | split | mIoU | P | R | AP |", "|" + "---|" * 7, *rows])


def mechanism_sentences(result: Mapping, seed: str = "0", split: str = "val") -> list[str]:
    """What the diagnostics of one seed say, in words: how far each stage's offsets moved, how much
    gradient reached them and where from, under the as-built run and at the extremes of the readings."""
    runs = result.get("seeds", {}).get(seed, {})
    moved: dict[str, dict[str, float]] = {}
    for name in reading_names(result):
        diag = (runs.get(name) or {}).get("diagnostics") or {}
        for stage in ("expansion", "shrinkage"):
            d = diag.get(f"{stage}_end") or {}
            if "offset" in d:
                moved.setdefault(stage, {})[name] = d["offset"]
    out = []
    ref = (runs.get(REFERENCE) or {}).get("diagnostics") or {}
    start = ref.get("expansion_start") or {}
    if "grad_object" in start and "expansion" in moved:
        out.append(
            f"As built (seed {seed}), expansion's offsets ended {_fmt(moved['expansion'].get(REFERENCE))} cells from "
            f"the regular grid on average. At its start the loss it maximises sent {_fmt(start['grad_object'])} "
            f"(per cell, norm of ∂L/∂Δp) to the offsets of object cells, {_fmt(start['grad_background'])} to "
            f"background cells"
            + (
                f" and {_fmt(start['grad_clipped'])} to clipped cells ({_percent(start['cells_clipped'])} of all)"
                if start.get("cells_clipped")
                else " (no cell had a quarter of its channels clipped)"
            )
            + f"; the clipping held {_percent(start.get('clipped_share_object'))} of an object cell's channels on "
            f"average and {_percent(start.get('clipped_share_background'))} of a background cell's, and the "
            f"classifier's confidence in the classes present was {_fmt(start['confidence'])}."
        )
    ref_stages, noclip = _stages(result, seed, REFERENCE, split), _stages(result, seed, "cam-noclip", split)
    if (
        ref_stages
        and noclip
        and all(
            m and not m.get("diverged") for m in (ref_stages["baseline"], ref_stages["expansion"], noclip["expansion"])
        )
    ):
        base, built, bare = (
            100 * m["miou"] for m in (ref_stages["baseline"], ref_stages["expansion"], noclip["expansion"])
        )
        share = (built - bare) / (built - base) if abs(built - base) >= 0.5 else None
        out.append(
            f"Expansion's seeds scored {built:.1f} mIoU as built and {bare:.1f} with the same offsets but no clipping "
            f"in the CAMs (`cam-noclip`), against the baseline's {base:.1f}"
            + (
                f": {100 * share:.0f} % of expansion's change in mIoU comes from the clipping, not from the offsets."
                if share is not None
                else "."
            )
        )
    effects = {}
    for name in moved.get("expansion", {}):
        stages = _stages(result, seed, name, split)
        if stages is not None:
            effects[name] = stage_effects(stages)
    for stage, key, what in (
        ("expansion", "expansion_recall", "recall"),
        ("shrinkage", "shrinkage_precision", "precision over expansion"),
    ):
        offsets = {n: v for n, v in moved.get(stage, {}).items() if n in effects}
        if len(offsets) < 2:
            continue
        far, near = max(offsets, key=offsets.get), min(offsets, key=offsets.get)
        out.append(
            f"{stage.capitalize()}'s offsets moved farthest under `{far}` ({_fmt(offsets[far])} cells; {what} "
            f"{_signed(effects[far][key])} points) and least under `{near}` ({_fmt(offsets[near])} cells; {what} "
            f"{_signed(effects[near][key])})."
        )
    return out
