"""The book's view of the readings study's results (``book/results/readings.json``): tables and sentences.

``benchmarks/readings.py`` writes the file; chapter 09 shows it through these functions. Every
number a table or sentence gives is read from the file, and every effect is measured against the
baseline the reading forked from (:func:`stage_metrics_of`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

from esol_lib.book.readings import REFERENCE
from esol_lib.book.verdicts import plus_minus, signed, stage_effects, stage_verdicts

__all__ = [
    "stage_metrics",
    "stage_metrics_of",
    "reading_names",
    "effects_by_reading",
    "readings_list",
    "readings_table",
    "diagnostics_table",
    "selected_table",
    "verdict",
    "stopped_runs",
    "retrained_references",
    "baseline_optimiser_table",
    "mechanism_sentences",
]


def stage_metrics(result: Mapping, seed: str, name: str, split: str) -> dict | None:
    """A reading's stage metrics on one seed and split, with the seed's shared baseline; None if not run."""
    runs = result.get("seeds", {}).get(seed, {})
    return stage_metrics_of(runs, name, split)


def stage_metrics_of(runs: Mapping, name: str, split: str) -> dict | None:
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
            stages = stage_metrics(result, seed, name, split)
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
    ref = stage_metrics(result, seed, REFERENCE, split)
    if ref is None:
        return "no as-built run on this seed"
    b = ref["baseline"]
    lines.append(
        f"| baseline (no ESOL) | baseline | {_pct(b, 'miou')} | {_pct(b, 'precision')} | {_pct(b, 'recall')} | "
        f"{_pct(b, 'f1')} | {_pct(b, 'ap')} | {_sweep_mean(b, 'precision')} / {_sweep_mean(b, 'recall')} | – |"
    )
    for name in reading_names(result):
        stages = stage_metrics(result, seed, name, split)
        if stages is None:
            lines.append(f"| `{name}` | not run | | | | | | | |")
            continue
        e = stage_effects(stages)
        for st in ("expansion", "shrinkage"):
            m = stages[st]
            if st == "expansion":
                effect = f"R {signed(e['expansion_recall'])} / {signed(e['expansion_recall_sweep'])}"
            else:
                effect = f"P {signed(e['shrinkage_precision'])} / {signed(e['shrinkage_precision_sweep'])}"
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
                    stages = stage_metrics_of(seed_runs, REFERENCE, split)
                else:
                    stages = stage_metrics_of(seed_runs, name, split)
                if stages is not None:
                    effects.append(stage_effects(stages))
            if not effects:
                continue
            cells = [
                plus_minus([e.get(k) for e in effects]).replace(" points", "")
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
        stages = stage_metrics_of(seed_runs, name, split)
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
    one: its effects are taken against its own baseline (:func:`stage_metrics_of`), and the line says by how much
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
    ref_stages, noclip = stage_metrics(result, seed, REFERENCE, split), stage_metrics(result, seed, "cam-noclip", split)
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
        stages = stage_metrics(result, seed, name, split)
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
            f"{signed(effects[far][key])} points) and least under `{near}` ({_fmt(offsets[near])} cells; {what} "
            f"{signed(effects[near][key])})."
        )
    return out
