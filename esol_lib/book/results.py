"""The paper's claims over several generator seeds, as a table read from a results file.

``benchmarks/emoji_seeds.py`` runs the whole pipeline of a profile on several generator seeds and
writes one JSON file (per seed: every stage's best-threshold metrics, in percent). Chapter 08 turns
that file into the table below with :func:`claims_table`; nothing in the table is typed in.

Each claim compares two stages on each seed (the gain of ESOL's final seeds over the baseline, the
gain of expansion's recall over the baseline's, ...), then reports the mean and spread of the
per-seed gains and on how many seeds the claim held, beside the paper's number.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from esol_lib.book import paper
from esol_lib.book.ablation import PAPER_ESOL_SEED, TABLE5
from esol_lib.runtime.stages import METHOD_STAGES

__all__ = [
    "Claim",
    "CLAIMS",
    "load_seed_results",
    "seed_report",
    "claim_gains",
    "claims_table",
    "stage_table",
    "offsets_table",
    "table5_table",
    "measured_under_sentence",
]


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims: ``group[better][key]`` above ``group[worse][key]``, by ``paper`` points."""

    label: str
    group: str  # seeds_train | seeds_val | crf_train | masks_train | seg_val | sweep_mean_train
    key: str  # miou | precision | recall | f1 | ap
    better: str
    worse: str
    paper: float | None  # the paper's gain in points (VOC), None where it reports none


# The paper's gains on PASCAL VOC 2012: Table 1 ("IRN" and "ESOL (Ours)" rows; against the authors'
# own baseline seed of 48.4, §4.1, the seed gain is +5.2), Table 3 (val) and Table 6 (train).
_VOC, _T6 = paper.TABLE1["voc12"], paper.TABLE6
_T5_GAIN = paper.TABLE5_ESOL_SEED - paper.TABLE5_BASELINE_SEED


def _gain(column: str) -> float:
    return _VOC["shrinkage"][column] - _VOC["baseline"][column]


CLAIMS: tuple[Claim, ...] = (
    Claim("ESOL seeds − baseline seeds, mIoU (train)", "seeds_train", "miou", "shrinkage", "baseline", _T5_GAIN),
    Claim(
        "ESOL seeds − baseline seeds, F1 (train)",
        "seeds_train",
        "f1",
        "shrinkage",
        "baseline",
        _T6["shrinkage"][2] - _T6["baseline"][2],
    ),
    Claim("ESOL seeds − baseline seeds, localization AP (train)", "seeds_train", "ap", "shrinkage", "baseline", None),
    Claim("ESOL seeds − baseline seeds, mIoU (val)", "seeds_val", "miou", "shrinkage", "baseline", None),
    Claim(
        "expansion − baseline, recall (train)",
        "seeds_train",
        "recall",
        "expansion",
        "baseline",
        _T6["expansion"][1] - _T6["baseline"][1],
    ),
    Claim(
        "shrinkage − expansion, precision (train)",
        "seeds_train",
        "precision",
        "shrinkage",
        "expansion",
        _T6["shrinkage"][0] - _T6["expansion"][0],
    ),
    Claim(
        "expansion − baseline, recall averaged over the threshold sweep (train)",
        "sweep_mean_train",
        "recall",
        "expansion",
        "baseline",
        None,
    ),
    Claim(
        "shrinkage − expansion, precision averaged over the threshold sweep (train)",
        "sweep_mean_train",
        "precision",
        "shrinkage",
        "expansion",
        None,
    ),
    Claim("ESOL − baseline, seeds + CRF, mIoU (train)", "crf_train", "miou", "shrinkage", "baseline", _gain("CRF")),
    Claim(
        "ESOL − baseline, IRN pseudo masks, mIoU (train)", "masks_train", "miou", "shrinkage", "baseline", _gain("Mask")
    ),
    Claim("ESOL − baseline, DeepLab-v2, mIoU (val)", "seg_val", "miou", "shrinkage", "baseline", _gain("val")),
    Claim(
        "baseline: IRN pseudo masks − seeds, mIoU (train)",
        "masks_train",
        "miou",
        "baseline",
        "baseline",
        _VOC["baseline"]["Mask"] - _VOC["baseline"]["Seed"],
    ),
    Claim(
        "ESOL: IRN pseudo masks − seeds, mIoU (train)",
        "masks_train",
        "miou",
        "shrinkage",
        "shrinkage",
        _VOC["shrinkage"]["Mask"] - _VOC["shrinkage"]["Seed"],
    ),
)


def load_seed_results(path: str | Path) -> dict:
    """The JSON file ``benchmarks/emoji_seeds.py`` writes (``seeds``: per-seed metrics by group and stage)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _value(seed: dict, group: str, stage: str, key: str) -> float | None:
    entry = seed.get(group, {}).get(stage)
    return None if not entry else entry.get(key)


def claim_gains(results: dict, claim: Claim) -> list[float]:
    """The claim's gain on every seed that has both numbers (points).

    A claim whose ``better`` and ``worse`` stage are the same (masks − seeds) compares the
    ``group`` of that stage with its seeds on train.
    """
    gains = []
    for seed in results["seeds"].values():
        a = _value(seed, claim.group, claim.better, claim.key)
        if claim.better == claim.worse:
            b = _value(seed, "seeds_train", claim.worse, claim.key)
        else:
            b = _value(seed, claim.group, claim.worse, claim.key)
        if a is not None and b is not None:
            gains.append(a - b)
    return gains


def _mean_std(values: list[float], *, signed: bool = True, empty: str = "not run") -> str:
    """``mean ± std`` of ``values`` (one value alone; ``empty`` for none); gains are ``signed``."""
    sign = "+" if signed else ""
    if not values:
        return empty
    if len(values) == 1:
        return f"{values[0]:{sign}.1f}"
    return f"{statistics.fmean(values):{sign}.1f} ± {statistics.pstdev(values):.1f}"


def claims_table(results: dict, claims: tuple[Claim, ...] = CLAIMS) -> str:
    """A Markdown table: each claim, the paper's gain, this benchmark's mean ± spread and how often it held."""
    rows = ["| claim | paper (VOC) | this benchmark: mean ± std over seeds | held on |", "|---|---|---|---|"]
    for claim in claims:
        gains = claim_gains(results, claim)
        paper = "–" if claim.paper is None else f"{claim.paper:+.1f}"
        held = f"{sum(g > 0 for g in gains)} of {len(gains)}" if gains else "–"
        rows.append(f"| {claim.label} | {paper} | {_mean_std(gains)} | {held} |")
    return "\n".join(rows)


#: The README's headline rows: (label, group of the seed results, the paper's Table 1 / 3 column).
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("CAM seeds, mIoU (train)", "seeds_train", "Seed"),
    ("seeds + DenseCRF, mIoU (train)", "crf_train", "CRF"),
    ("IRN pseudo masks, mIoU (train)", "masks_train", "Mask"),
    ("DeepLab-v2, mIoU (val)", "seg_val", "val"),
)


def headline_table(results: dict) -> str:
    """The README's results table (Markdown): baseline → ESOL, the paper on VOC beside this benchmark.

    The paper's columns are Table 1 (train) and Table 3 (val); this benchmark's are the mean ± std of
    ``results`` (:func:`load_seed_results`) over its generator seeds. A test keeps the README's copy equal
    to this table of the committed ``book/results/emoji_seeds.json``.
    """
    voc = paper.TABLE1["voc12"]
    seeds = list(results["seeds"].values())
    n = len(seeds)
    rows = [
        f"| | paper, PASCAL VOC: baseline → ESOL | {results.get('benchmark', 'this')} benchmark, {n} generator seeds: "
        "baseline → ESOL |",
        "|---|---|---|",
    ]
    for label, group, column in HEADLINE:
        ours = []
        for st in ("baseline", "shrinkage"):
            ours.append(
                _mean_std(
                    [v for s in seeds if (v := _value(s, group, st, "miou")) is not None], signed=False, empty="not run"
                )
            )
        rows.append(
            f"| {label} | {voc['baseline'][column]:.1f} → {voc['shrinkage'][column]:.1f} | {ours[0]} → {ours[1]} |"
        )
    return "\n".join(rows)


def stage_table(
    results: dict, group: str = "seeds_train", keys: tuple[str, ...] = ("miou", "precision", "recall", "f1", "ap")
) -> str:
    """Per-stage mean ± std over the seeds of ``group``'s metrics (Markdown)."""
    seeds = list(results["seeds"].values())
    stages = [st for st in METHOD_STAGES if any(s.get(group, {}).get(st) for s in seeds)]
    rows = ["| stage | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for st in stages:
        cells = []
        for key in keys:
            vals = [v for s in seeds if (v := _value(s, group, st, key)) is not None]
            cells.append(_mean_std(vals, signed=False, empty="–"))
        rows.append(f"| {st} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


#: The stage tables of :func:`seed_report`: (group of the seed results, title).
REPORT_GROUPS: tuple[tuple[str, str], ...] = (
    ("seeds_train", "seeds (train)"),
    ("seeds_val", "seeds (val)"),
    ("crf_train", "seeds + CRF (train)"),
    ("masks_train", "IRN pseudo masks (train)"),
    ("seg_val", "DeepLab-v2 (val)"),
)


def seed_report(results: dict, groups: tuple[tuple[str, str], ...] = REPORT_GROUPS) -> str:
    """Chapter 08's report of one benchmark's seed results (Markdown): :func:`claims_table`, then a
    :func:`stage_table` per group that holds any numbers, each under its title."""
    seeds = list(results["seeds"].values())
    parts = [claims_table(results)]
    for group, title in groups:
        if any(s.get(group) for s in seeds):
            parts.append(f"**{title}**, mean ± std over the seeds (%)\n\n" + stage_table(results, group))
    return "\n\n".join(parts)


def offsets_table(results: dict) -> str:
    """Mean |offset| (feature cells) of each ESOL sampler at the end of training, per seed (Markdown)."""
    seeds = results["seeds"]
    rows = ["| seed | expansion sampler | shrinkage sampler |", "|---|---|---|"]
    for name, seed in seeds.items():
        off = seed.get("offsets", {})
        cells = ["–" if off.get(st) is None else f"{off[st]:.2f}" for st in ("expansion", "shrinkage")]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def table5_table(results: dict) -> str:
    """Table 5 over the seeds (Markdown): each variant's val mIoU and its drop from full ESOL trained as long.

    Reads ``table5_val`` of every seed (``benchmarks/emoji_seeds.py --table5``): the variants of
    :data:`esol_lib.book.ablation.TABLE5` and their ``reference`` (the main config at ``ablation.max_steps``).
    The paper's drop is its row minus its full ESOL (53.6, VOC train). "Held on" counts the seeds where
    removing the component lowered the mIoU, as the paper's table says it does.
    """
    seeds = [s.get("table5_val") or {} for s in results["seeds"].values()]
    seeds = [s for s in seeds if "reference" in s]
    if not seeds:
        return "Table 5 was not run on the seeds (`benchmarks/emoji_seeds.py --table5`)."
    meta = seeds[0].get("_meta", {})
    ref = [s["reference"]["miou"] for s in seeds]
    rows = [
        f"Scored on {meta.get('split', '?')}, every variant and the reference trained for "
        f"{meta.get('max_steps', '?')} steps per ESOL stage; {len(seeds)} seed(s).",
        "",
        "| variant | paper mIoU (VOC) | paper: variant − ESOL | mIoU, mean ± std | variant − ESOL, mean ± std "
        "| held on |",
        "|---|---|---|---|---|---|",
        f"| Expansion + Shrinkage (reference) | {PAPER_ESOL_SEED:.1f} | – | {_mean_std(ref, signed=False, empty='–')} "
        "| – | – |",
    ]
    for v in TABLE5:
        pairs = [(s[v.name]["miou"], s["reference"]["miou"]) for s in seeds if v.name in s]
        drops = [a - b for a, b in pairs]
        paper = "–" if v.paper is None else f"{v.paper:.1f}"
        paper_drop = "–" if v.paper is None else f"{v.paper - PAPER_ESOL_SEED:+.1f}"
        held = f"{sum(d < 0 for d in drops)} of {len(drops)}" if drops else "–"
        miou = _mean_std([a for a, _ in pairs], signed=False, empty="–")
        rows.append(f"| {v.label} | {paper} | {paper_drop} | {miou} | {_mean_std(drops)} | {held} |")
    return "\n".join(rows)


def measured_under_sentence(results: dict, profile: str = "cpu", exclude_sections: tuple[str, ...] = ()) -> str:
    """Whether a results file was measured under ``profile`` as it resolves today, from the settings digest
    it records (``measured_under``): the sentence a chapter prints above its numbers."""
    from esol_lib.runtime.config_io import load_config, settings_digest

    recorded = (results.get("measured_under") or {}).get("settings_digest")
    today = settings_digest(load_config(profile), exclude_sections=exclude_sections)
    commit = (results.get("measured_under") or {}).get("commit", "unknown")
    if recorded is None:
        return (
            f"This file records no settings digest: its runs predate the record, so whether they used the "
            f"`{profile}` profile's settings of today cannot be told from it."
        )
    if recorded == today:
        return (
            f"Measured under the `{profile}` profile's settings as they resolve today (settings digest {today}, "
            f"collected at commit {commit})."
        )
    return (
        f"Measured under other settings than the `{profile}` profile's today (digest {recorded}, today {today}): "
        "a default changed since; the numbers are of the earlier settings."
    )
