"""The `cpu` baseline recipe study (``book/results/cam_recipes.json``), as chapter 01 shows it.

``benchmarks/cam_recipes.py`` trains the baseline classifier with each candidate ``train_cam`` recipe
on seven emoji benchmarks and applies a rule fixed before the runs (the file's ``rule``): the
recipe that never collapses and scores the best mean val seeds mIoU, ties to the one closest to IRN.
:func:`recipe_table` is the table of every candidate, :func:`recipe_verdict` the sentences that say
what the rule adopted and whether the profile in hand trains with it; both read the file only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from esol_lib.book.tables import markdown_table

__all__ = ["load_recipe_study", "recipe_table", "recipe_verdict", "recipe_of", "spread_sentences"]

#: the train_cam settings a recipe fixes (``--set`` keys of ``benchmarks/cam_recipes.py``)
RECIPE_KEYS = ("lr", "momentum", "new_layer_lr_mult", "warmup_steps")


def load_recipe_study(path: str | Path) -> dict[str, Any]:
    """The study's results file (``benchmarks/cam_recipes.py --collect`` writes it)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _cell(run: dict | None) -> str:
    if not run:
        return "not run"
    if run.get("stopped"):
        return "stopped (dead)"
    val = run.get("val")
    if not val:
        return "not scored"
    return f"{val['miou']:.1f}" + (" (collapsed)" if run.get("collapsed") else "")


def recipe_table(study: dict[str, Any]) -> str:
    """One row per candidate: its val seeds mIoU on each benchmark, the mean ± spread, the worst, and
    the benchmarks it collapsed on; the adopted recipe is marked."""
    benches = list(study["benchmarks"])
    adopted = study["decision"].get("adopted")
    rows = []
    for recipe in study["recipes"]:
        s = study["decision"]["summary"].get(recipe, {})
        mean = s.get("val_miou_mean")
        summary = "–" if mean is None else f"{mean:.1f} ± {s['val_miou_std']:.1f}"
        name = f"**{recipe}** (adopted)" if recipe == adopted else recipe
        runs = study["runs"].get(recipe, {})
        rows.append(
            [
                name,
                *(_cell(runs.get(b)) for b in benches),
                summary,
                "–" if s.get("val_miou_min") is None else f"{s['val_miou_min']:.1f}",
                ", ".join(s.get("collapsed_on") or []) or "none",
            ]
        )
    return markdown_table(["recipe", *benches, "mean ± std", "worst", "collapsed on"], rows)


def recipe_of(study: dict[str, Any], name: str) -> dict[str, float]:
    """The ``train_cam`` values a recipe of the study sets (from its ``--set`` list)."""
    values = {}
    for item in study["recipes"][name]["set"]:
        key, value = item.split("=", 1)
        values[key.removeprefix("train_cam.")] = float(value)
    return values


def recipe_verdict(study: dict[str, Any], train_cam: Any) -> str:
    """What the rule adopted and why, and whether ``train_cam`` (a config section) trains with it."""
    decision = study["decision"]
    adopted = decision.get("adopted")
    if adopted is None:
        return f"The rule adopted no recipe: {decision['why']}."
    wanted = recipe_of(study, adopted)
    have = {k: float(getattr(train_cam, k)) for k in wanted}
    same = all(abs(have[k] - wanted[k]) <= 1e-12 * max(1.0, abs(wanted[k])) for k in wanted)
    machine = study.get("machine", {})
    where = f"{machine.get('cpu', 'an unnamed CPU')}, {machine.get('torch_threads', '?')} thread(s) a run"
    text = (
        f"The rule ({study['rule']}) adopted **{adopted}** ({study['recipes'][adopted]['about']}): "
        f"{decision['why']}. Measured at commit {study.get('commit') or '?'} on {where}. "
    )
    if same:
        return text + "This profile's `train_cam` trains with it."
    diff = ", ".join(f"{k} {have[k]:g} (the study's {wanted[k]:g})" for k in wanted if have[k] != wanted[k])
    return text + f"This profile's `train_cam` differs from it: {diff}."


def _val(run: dict | None) -> float | None:
    return (run or {}).get("val", {}).get("miou")


def spread_sentences(
    study: dict[str, Any], readings: dict[str, Any] | None = None, seeds: dict[str, Any] | None = None
) -> list[str]:
    """The spread due to the generator seed beside the spread due to the machine, from the study:

    - over the emoji generator seeds (``seed<S>`` benchmarks), the adopted recipe's val seeds mIoU;
    - the same benchmark and recipe trained with another thread count (``thread_runs``);
    - with ``readings`` (``book/results/readings.json``), its as-built baselines, trained earlier on
      other machines of this kind with IRN's recipe, beside this study's ``irn`` runs of those seeds;
    - with ``seeds`` (``book/results/emoji_seeds.json``), its baselines, trained with the adopted recipe for
      chapter 08 on the machine its runs record, beside this study's runs of the same generator seeds.
    """
    adopted = study["decision"].get("adopted")
    out = []
    if adopted:
        runs = study["runs"][adopted]
        vals = [_val(r) for b, r in runs.items() if b.startswith("seed") and _val(r) is not None]
        if len(vals) >= 2:
            mean = sum(vals) / len(vals)
            std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
            out.append(
                f"Over {len(vals)} generator seeds the adopted recipe's val seeds mIoU is {mean:.1f} ± {std:.1f} "
                f"(from {min(vals):.1f} to {max(vals):.1f}): the spread due to the data."
            )
    for threads, by_recipe in sorted(study.get("thread_runs", {}).items()):
        diffs = []
        for recipe, by_bench in by_recipe.items():
            for bench, rec in by_bench.items():
                one = _val(study["runs"].get(recipe, {}).get(bench))
                if one is not None and _val(rec) is not None:
                    diffs.append(f"{recipe} on {bench}: {one:.2f} with 1 thread, {_val(rec):.2f} with {threads}")
        if diffs:
            out.append(f"The same run with {threads} threads instead of 1 on one machine: " + "; ".join(diffs) + ".")
    if readings:
        pairs = []
        for seed, rec in sorted(readings.get("seeds", {}).items()):
            earlier = (rec.get("as-built") or {}).get("scores", {}).get("val", {}).get("baseline", {}).get("miou")
            now = _val(study["runs"].get("irn", {}).get(f"seed{seed}"))
            if earlier is not None and now is not None:
                pairs.append(f"seed {seed} {100 * earlier:.2f} then, {now:.2f} here")
        if pairs:
            out.append(
                "IRN's recipe, the readings study's as-built baseline, trained again for this study (val seeds "
                "mIoU): " + "; ".join(pairs) + ". The code and the pins were the same; what differs is the "
                "machine, and the thread count where the runs used another."
            )
    if seeds and adopted:
        pairs, diffs, machines = [], [], set()
        for seed, rec in sorted(seeds.get("seeds", {}).items()):
            now = ((rec.get("seeds_val") or {}).get("baseline") or {}).get("miou")
            then = _val(study["runs"].get(adopted, {}).get(f"seed{seed}"))
            if now is not None and then is not None:
                pairs.append(f"seed {seed} {then:.2f} here, {now:.2f} there")
                diffs.append(abs(now - then))
                if rec.get("machine"):
                    m = rec["machine"]
                    machines.add(f"{m.get('cpu')} ({', '.join(m.get('isa') or [])}; {m.get('torch_threads')} thread)")
        if pairs:
            here = study.get("machine") or {}
            out.append(
                f"The adopted recipe's baselines trained again for chapter 08's seeds (`emoji_seeds.json`), on "
                f"{', '.join(sorted(machines)) or 'a machine it does not record'} where this study ran on "
                f"{here.get('cpu')} ({', '.join(here.get('isa') or [])}; {here.get('torch_threads')} thread), and with "
                f"the feature cache batching their CAMs: val seeds mIoU {'; '.join(pairs)} — at most "
                f"{max(diffs):.2f} apart, the machine's share beside the data's above."
            )
    return out
