"""The paper's claims on a generated benchmark, over several generator seeds.

    python benchmarks/emoji_seeds.py [--profile cpu] [--seeds 0 1 2] [--out runs/emoji-seeds]
                                     [--run-for-seed 0=runs/book-cpu] [--table5] [--json FILE]

``--profile cpu`` (the default) runs the emoji benchmark, the book's; ``--profile toy`` the earlier
toy benchmark (``esol data synth``), whose results chapter 08 shows beside it. For each generator
seed S, the full ``esol pipeline`` of the profile runs on its own benchmark
(``data/<generator>-<profile>-seedS``, generated first) in ``OUT/seedS``: baseline, expansion and
shrinkage seeds on train (± DenseCRF), IRN pseudo masks from the baseline and the shrinkage seeds,
DeepLab-v2 trained on each and scored on val. Then every stage's seeds are also scored on val.
``--table5`` adds chapter 07's Table 5 variants on each seed (forked runs under ``OUT/seedS/ablations``,
trained for ``ablation.max_steps`` beside a reference fork of the same length, scored on val).
``--run-for-seed S=RUN`` reads seed S from a run folder made elsewhere (the book's) instead.

The metrics of every run are gathered, per stage and with mean and spread over the seeds, into
one JSON file that chapter 08 renders beside the paper's numbers. Nothing here is typed in:
re-running the script re-reads the run folders (finished stages are skipped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("baseline", "expansion", "shrinkage")
KEYS = ("miou", "precision", "recall", "f1", "ap")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pick(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    return {k: round(100 * metrics[k], 2) for k in KEYS if metrics.get(k) is not None} | {
        "threshold": metrics.get("threshold")
    }


#: profile → (the benchmark's name in the results, the config key of its generator seed)
BENCHMARKS = {"cpu": ("emoji", "data.emoji.seed"), "toy": ("toy", "data.synth.seed")}


def run_seed(profile: str, seed: int, run_dir: Path, sets: list[str], segment: bool = True) -> float:
    """Run the whole pipeline of ``profile`` on generator seed ``seed``; return seconds spent."""
    from esol_lib import ablation as ab
    from esol_lib.pipeline import run_pipeline
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import start_run

    seed_key = BENCHMARKS[profile][1]
    cfg = load_config(profile, [f"profile={profile}-seed{seed}", f"{seed_key}={seed}", *sets])
    start = time.perf_counter()
    run = start_run(run_dir, cfg)  # generates data/emoji-cpu-seed<S> (resolve_data_root) when missing
    run_pipeline(run, progress=False, segment=segment)
    for stage in STAGES:  # the seeds on val too, for robustness across splits
        ab.score_stage(run, stage, cfg.data.val_split)
    return time.perf_counter() - start


def collect(run_dir: Path) -> dict:
    """Every stage's metrics of one finished run folder (percent, best-threshold)."""
    from esol_lib.runtime.config_io import settings_digest
    from esol_lib.runtime.machine import run_machine
    from esol_lib.runtime.rundir import RunDir
    from esol_lib.runtime.stages import CONTROL_STAGES

    run = RunDir(run_dir)
    cfg = run.load_config()
    m = lambda name: _pick(_read(run.metrics(name)))  # noqa: E731
    train, val = cfg.data.cam_split, cfg.data.val_split
    tc = cfg.train_cam
    out: dict = {
        "train_cam": {"lr": tc.lr, "momentum": tc.momentum, "weight_decay": tc.weight_decay},
        # the ESOL stages' levels of the factors chapter 09's readings study changed
        "esol_levels": {
            "expansion.momentum": cfg.expansion.momentum,
            "shrinkage.momentum": cfg.shrinkage.momentum,
            "shrinkage.area_map": cfg.shrinkage.area_map,
        },
        # what the numbers were measured under: every setting but the controls' sections (chapter 10
        # reads those), and the machine the baseline trained on (tests/test_results.py compares the digest)
        "settings_digest": settings_digest(cfg, exclude_sections=CONTROL_STAGES),
        "machine": run_machine(run.log_records()),
        "seeds_train": {},
        "seeds_val": {},
        "crf_train": {},
        "masks_train": {},
        "seg_val": {},
        "sweep_mean_train": {},
    }
    for st in STAGES:
        out["seeds_train"][st] = m(f"{st}_{train}")
        seeds = _read(run.metrics(f"{st}_{train}"))
        if seeds and seeds.get("sweep"):  # every threshold of the sweep counts, not only the best one
            out["sweep_mean_train"][st] = {
                k: round(100 * statistics.fmean(p[k] for p in seeds["sweep"]), 2)
                for k in ("precision", "recall", "miou")
            }
        out["crf_train"][st] = m(f"{st}_crf_{train}")
        out["seeds_val"][st] = m(f"{st}_{val}")
    for st in ("baseline", "shrinkage"):
        out["masks_train"][st] = m(f"mask-{st}_{train}")
        out["seg_val"][st] = m(f"seg-{st}_{val}")
    out["table5_val"] = _table5(run)
    out["offsets"] = {}
    log = run.root / "log.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "offset" in rec and rec.get("stage") in ("expansion", "shrinkage"):
                out["offsets"][rec["stage"]] = rec["offset"]  # mean |offset| in feature cells, last logged
    return out


def _table5(run) -> dict:
    """Table 5's variants and their reference (full ESOL at ``ablation.max_steps``), each as scored by
    chapter 07 (``ablation.split``) in ``RUN/ablations/<name>``; empty when they were not run."""
    from esol_lib import ablation as ab

    cfg = run.load_config()
    split = cfg.ablation.split or cfg.data.cam_split
    root = run.root / "ablations"
    out = {}
    for name in ("reference", *(v.name for v in ab.TABLE5)):
        metrics = _pick(_read(root / name / "metrics" / f"shrinkage_{split}.json"))
        if metrics is not None:
            out[name] = metrics
    if out:
        out["_meta"] = {"split": split, "max_steps": cfg.ablation.max_steps}
    return out


def run_table5(run_dir: Path) -> float:
    """Chapter 07's Table 5 variants on one finished run folder (``ablation.*`` of its config); seconds spent."""
    from esol_lib import ablation as ab
    from esol_lib.runtime.rundir import RunDir

    start = time.perf_counter()
    run = RunDir(run_dir)
    root = run.root / "ablations"
    ab.run_variants(run, ab.TABLE5, root, progress=True)
    ref = ab.reference_run(run, root)  # the row the variants differ from: full ESOL at ablation.max_steps
    if ref != run:
        ab.score_stage(ref, "shrinkage")
    return time.perf_counter() - start


def summarise(per_seed: dict[str, dict]) -> dict:
    """Mean and population standard deviation over the seeds of every number of :func:`collect`."""
    first = next(iter(per_seed.values()))
    summary: dict = {}
    for group, stages in first.items():
        if group in ("offsets", "table5_val", "train_cam", "esol_levels", "settings_digest", "machine"):
            continue
        summary[group] = {}
        for st in stages:
            summary[group][st] = {}
            for key in KEYS:
                vals = [
                    r[group][st][key]
                    for r in per_seed.values()
                    if r[group].get(st) and r[group][st].get(key) is not None
                ]
                if vals:
                    summary[group][st][key] = {
                        "mean": round(statistics.fmean(vals), 2),
                        "std": round(statistics.pstdev(vals), 2),
                        "n": len(vals),
                    }
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(BENCHMARKS), default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None, help="default: runs/<benchmark>-seeds")
    p.add_argument(
        "--run-for-seed",
        action="append",
        default=[],
        metavar="S=RUN",
        help="read seed S from this finished run folder instead of running it",
    )
    p.add_argument("--json", type=Path, default=None, help="default: book/results/<benchmark>_seeds.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--collect-only", action="store_true", help="only gather the metrics of finished runs")
    p.add_argument("--no-segment", action="store_true", help="skip DeepLab (train-seg, eval-seg): the slowest stage")
    p.add_argument(
        "--table5",
        action="store_true",
        help="also train and score Table 5's variants on each seed, as chapter 07 does (ablation.*)",
    )
    args = p.parse_args()
    benchmark = BENCHMARKS[args.profile][0]
    args.out = args.out or ROOT / "runs" / f"{benchmark}-seeds"
    args.json = args.json or ROOT / "book" / "results" / f"{benchmark}_seeds.json"
    given = {int(k): Path(v) for k, v in (s.split("=", 1) for s in args.run_for_seed)}
    per_seed, seconds = {}, {}
    for seed in args.seeds:
        run_dir = given.get(seed, args.out / f"seed{seed}")
        if seed not in given and not args.collect_only:
            seconds[str(seed)] = round(run_seed(args.profile, seed, run_dir, args.set, not args.no_segment), 1)
            print(f"seed {seed}: {seconds[str(seed)]:.0f} s", flush=True)
        if args.table5 and not args.collect_only:
            seconds[f"{seed}-table5"] = round(run_table5(run_dir), 1)
            print(f"seed {seed} Table 5: {seconds[f'{seed}-table5']:.0f} s", flush=True)
        per_seed[str(seed)] = collect(run_dir)
    command = "python benchmarks/emoji_seeds.py " + " ".join(sys.argv[1:])
    previous = _read(args.json) or {}
    history = previous.get("history") or (
        [{"command": previous["command"], "seconds": previous.get("seconds", {})}] if previous.get("command") else []
    )
    history.append({"command": command, "seconds": seconds})  # what each invocation ran, and its time
    from esol_lib.runtime.machine import code_commit

    digests = sorted({r["settings_digest"] for r in per_seed.values()})
    result = {
        "profile": args.profile,
        "benchmark": benchmark,
        "measured_under": {
            "settings_digest": digests[0] if len(digests) == 1 else digests,
            "commit": code_commit(ROOT),
            "note": "settings_digest: esol_lib.runtime.config_io.settings_digest of each run's config, "
            "without the controls' sections; commit: the checkout that collected the file",
        },
        "seeds": per_seed,
        "summary": summarise(per_seed),
        "history": history,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
