"""What a run's stages did, in numbers and in sentences computed from its seed metrics.

:func:`stage_effects` is the one measure of each stage's effect (expansion's change in recall,
shrinkage's change in precision over expansion, ESOL − baseline), :func:`stage_verdicts` says what
they did under each reading of the study (:mod:`esol_lib.book.readings`), and :func:`run_sentences`
writes the closing lines of the chapters from the run the reader is looking at, beside the paper's
numbers, so that no chapter states what should have happened.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from esol_lib.runtime.stages import METHOD_STAGES

__all__ = ["stage_effects", "mean_std", "plus_minus", "signed", "stage_verdicts", "run_sentences"]


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


def plus_minus(values: Sequence[float | None]) -> str:
    ms = mean_std(values)
    if ms is None:
        return "not measured"
    mean, std, n = ms
    return f"{mean:+.1f} ± {std:.1f} points ({n} seed{'s' if n != 1 else ''})"


def signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1f}"


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

    (p_base, r_base, _), (p_exp, r_exp, _), (p_shr, _, _) = (paper.TABLE6[s] for s in METHOD_STAGES)
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
            f"{plus_minus([x.get('expansion_recall') for x in e])}, shrinkage changed precision by "
            f"{plus_minus([x.get('shrinkage_precision') for x in e])}, and ESOL − baseline is "
            f"{plus_minus([x.get('esol_miou') for x in e])} mIoU, {plus_minus([x.get('esol_f1') for x in e])} F1 and "
            f"{plus_minus([x.get('esol_ap') for x in e])} AP."
        )
    return lines


def run_sentences(stages: Mapping[str, Mapping | None]) -> list[str]:
    """What one run's stages did, in words, from its seed metrics by stage (fractions, with sweeps):
    the closing lines of chapters 02, 04 and 08."""
    from esol_lib.book import paper

    (p_base, r_base, _), (p_exp, r_exp, _), (p_shr, _, _) = (paper.TABLE6[s] for s in METHOD_STAGES)
    e = stage_effects(stages)
    out = []
    if e["expansion_recall"] is not None:
        held = (e["expansion_recall"] or 0) > 0 and (e["expansion_recall_sweep"] or 0) > 0
        out.append(
            f"In this run, expansion changed the seeds' recall by {signed(e['expansion_recall'])} points at the "
            f"best threshold and by {signed(e['expansion_recall_sweep'])} averaged over the threshold sweep "
            f"(the paper: {r_exp - r_base:+.1f} on VOC, Table 6): it {'did' if held else 'did not do'} what the "
            f"paper says of it (recall up at the best threshold and across the sweep)."
        )
    if e["shrinkage_precision"] is not None:
        held = (e["shrinkage_precision"] or 0) > 0
        out.append(
            f"Shrinkage changed precision over expansion by {signed(e['shrinkage_precision'])} points at the best "
            f"threshold and by {signed(e['shrinkage_precision_sweep'])} averaged over the sweep (the paper: "
            f"{p_shr - p_exp:+.1f}, Table 6): it {'did' if held else 'did not do'} what the paper says of it "
            f"(precision up over expansion)."
        )
    if e["esol_miou"] is not None:
        out.append(
            f"ESOL − baseline: {e['esol_miou']:+.1f} mIoU, {signed(e['esol_f1'])} F1, {signed(e['esol_ap'])} AP "
            f"(the paper: {paper.TABLE5_ESOL_SEED - paper.TABLE5_BASELINE_SEED:+.1f} mIoU on VOC train, §4.1)."
        )
    return out
