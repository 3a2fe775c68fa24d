"""Do ESOL's claims hold beyond one generated dataset? (seeds, classes, object sizes)

    python benchmarks/robustness.py [--config toy] [--out runs/robustness] [--set key=value ...]

Runs the chain baseline -> expansion -> shrinkage of a profile on several generated benchmarks —
three generator seeds, then more classes, then smaller objects — and scores every stage's seeds on
each benchmark's val split with the full threshold sweep. Per benchmark it reports the three
claims of the paper, measured as follows:

- expansion raises recall over the baseline (mean and minimum gain across the sweep);
- shrinkage raises precision over expansion (mean and minimum gain across the sweep);
- the final seeds beat the baseline in best-threshold mIoU and F1;

then the mean and spread over the seeds. Extra ``--shrink-lr`` values add shrinkage-only forks of
each benchmark's run (the expansion model is shared), to compare a setting on every dataset at once.
Every run is a normal run folder under ``--out``: re-running the script skips what is done.
Results go to ``OUT/summary.json`` and ``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

BENCHMARKS = {  # name: overrides of data.synth (the profile name keeps each dataset in its own folder)
    "seed0": ["data.synth.seed=0"],
    "seed1": ["data.synth.seed=1"],
    "seed2": ["data.synth.seed=2"],
    "classes6": ["data.synth.seed=0", "data.synth.num_classes=6"],
    "small-objects": ["data.synth.seed=0", "data.synth.object_scale=[0.25,0.45]"],
}


def _gains(a: dict, b: dict, key: str) -> tuple[float, float]:
    """Mean and minimum of ``a - b`` in ``key`` over the common thresholds of two sweeps (points)."""
    d = [100 * (x[key] - y[key]) for x, y in zip(a["sweep"], b["sweep"])]
    return sum(d) / len(d), min(d)


def run_benchmark(name: str, overrides: list[str], args) -> dict:
    from esol_lib import ablation as ab
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import expand, shrink, start_run, train_cam

    cfg = load_config(args.config, [f"profile={args.config}-{name}", *overrides, *args.set])
    run = start_run(Path(args.out) / name, cfg)
    times = {}
    for stage, fn in (("baseline", train_cam), ("expansion", expand), ("shrinkage", shrink)):
        t = time.perf_counter()
        fn(run, progress=False)
        times[stage] = round(time.perf_counter() - t, 1)
    m = {st: ab.score_stage(run, st, cfg.data.val_split) for st in ("baseline", "expansion", "shrinkage")}
    out = {
        "times_s": times,
        "stages": {
            st: {k: round(100 * v[k], 2) for k in ("miou", "precision", "recall", "f1", "ap") if v.get(k) is not None}
            for st, v in m.items()
        },
    }
    out["claims"] = _claims(m["baseline"], m["expansion"], m["shrinkage"])
    for lr in args.shrink_lr:
        v = ab.run_variant(
            run,
            ab.Variant(f"shrink-lr{lr}", f"shrinkage lr {lr}", (f"shrinkage.lr={lr}",)),
            run.root / "forks",
            split=cfg.data.val_split,
        )
        out[f"shrinkage.lr={lr}"] = (
            {"diverged": v["diverged"]} if "diverged" in v else _claims(m["baseline"], m["expansion"], v)
        )
    return out


def _claims(base: dict, exp: dict, shr: dict) -> dict:
    rec_mean, rec_min = _gains(exp, base, "recall")
    prec_mean, prec_min = _gains(shr, exp, "precision")
    return {
        "expansion_recall_gain_mean": round(rec_mean, 2),
        "expansion_recall_gain_min": round(rec_min, 2),
        "shrinkage_precision_gain_mean": round(prec_mean, 2),
        "shrinkage_precision_gain_min": round(prec_min, 2),
        "final_miou_gain": round(100 * (shr["miou"] - base["miou"]), 2),
        "final_f1_gain": round(100 * (shr["f1"] - base["f1"]), 2),
        # threshold-free: does the final map rank pixels better, or only sit at another threshold?
        "final_ap_gain": (
            round(100 * (shr["ap"] - base["ap"]), 2)
            if shr.get("ap") is not None and base.get("ap") is not None
            else None
        ),
    }


def _table(results: dict, key: str = "claims") -> str:
    cols = [
        "expansion_recall_gain_mean",
        "expansion_recall_gain_min",
        "shrinkage_precision_gain_mean",
        "shrinkage_precision_gain_min",
        "final_miou_gain",
        "final_f1_gain",
        "final_ap_gain",
    ]
    lines = ["| benchmark | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        c = r.get(key)
        cells = (
            ["not run"] * len(cols)
            if c is None
            else ["diverged"] * len(cols)
            if "diverged" in c
            else [f"{c[k]:+.1f}" if c.get(k) is not None else "–" for k in cols]
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = [r[key] for n, r in results.items() if n.startswith("seed") and key in r and "diverged" not in r[key]]
    if len(seeds) > 1:

        def spread(k: str) -> str:
            v = [sd[k] for sd in seeds if sd.get(k) is not None]
            return f"{statistics.mean(v):+.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else "–"

        cells = [spread(k) for k in cols]
        lines.append("| seeds: mean ± sd | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="toy", help="a profile on the toy benchmark (its data.synth is varied)")
    parser.add_argument("--out", default="runs/robustness")
    parser.add_argument("--only", nargs="*", default=list(BENCHMARKS), help="benchmarks to run")
    parser.add_argument("--shrink-lr", nargs="*", type=float, default=[], help="extra shrinkage-only forks")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every benchmark (key=value)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "summary.json"  # `--only` adds to the benchmarks measured before, it does not drop them
    results = json.loads(previous.read_text()) if previous.is_file() else {}
    for name in args.only:
        t = time.perf_counter()
        results[name] = run_benchmark(name, BENCHMARKS[name], args)
        print(f"{name}: {json.dumps(results[name])}  [{time.perf_counter() - t:.0f} s]", flush=True)
        md = _write_summary(out, results, args.shrink_lr)  # after each benchmark: an interrupted run keeps them
    print(md)


def _stage_table(results: dict, key: str) -> str:
    """One row per benchmark: ``key`` of each stage's val seeds ('–' where a summary predates it)."""
    stages = ("baseline", "expansion", "shrinkage")
    rows = [
        f"| {n} | "
        + " | ".join(f"{r['stages'][st][key]:.1f}" if r["stages"][st].get(key) is not None else "–" for st in stages)
        + " |"
        for n, r in results.items()
    ]
    return "\n".join(["| benchmark | baseline | expansion | shrinkage |", "|---|---|---|---|", *rows])


def _write_summary(out: Path, results: dict, shrink_lrs) -> str:
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["## default settings", _table(results)]
    for lr in shrink_lrs:
        md += [f"## shrinkage.lr={lr}", _table(results, f"shrinkage.lr={lr}")]
    md += [
        "## seed mIoU of each stage (val, best threshold)",
        _stage_table(results, "miou"),
        "## localization AP of each stage (val, threshold-free; esol_lib.method.metrics.localization_ap)",
        _stage_table(results, "ap"),
    ]
    text = "\n\n".join(md) + "\n"
    (out / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
