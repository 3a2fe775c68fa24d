"""Each reading of the paper measured: which one, if any, makes ESOL's stages do what the paper says.

    python benchmarks/readings.py [--profile cpu] [--seeds 0 1 2] [--out runs/readings]
                                  [--only NAME ...] [--skip NAME ...] [--select-only] [--toy-seeds 0 1 2]
                                  [--json book/results/readings.json]

For each generator seed S of the emoji benchmark, the as-built pipeline runs in ``OUT/seedS``
(baseline, expansion, shrinkage; seeds scored on train and val; no IRN, no DeepLab), and every
reading of :data:`esol_lib.book.readings.READINGS` is a fork of it in ``OUT/seedS/readings/<name>``
that shares its baseline and changes one factor (:mod:`esol_lib.book.ablation`). Each is scored on val,
with the diagnostics of :mod:`esol_lib.method.diagnostics` (the gradient that reaches the offsets on
object, background and clipped cells, before and after each stage; the clipped fraction; the
confidence in the classes present) and the offsets over steps from its log.

Then the protocol of :mod:`esol_lib.book.readings`: the levels are chosen on seed 0's val split only,
and the chosen combination (``selected``) is run untouched on every seed (train and val) and, with
``--toy-seeds``, on the toy benchmark. Everything lands in one JSON file that chapter 09 renders;
the file is rewritten after every reading, so an interrupted study keeps what it measured, and a
re-run skips what is done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("baseline", "expansion", "shrinkage")
KEYS = ("miou", "precision", "recall", "f1", "ap")
#: profile → the config key of its generator seed
SEED_KEY = {"cpu": "data.emoji.seed", "toy": "data.synth.seed", "smoke": "data.synth.seed"}
DIAG_IMAGES = 16  # training crops the diagnostics are measured on (with their masks)
BUSY_WAIT = 3 * 3600.0  # seconds a study waits for another process's step on the same seed's run


def pick(metrics: dict | None) -> dict | None:
    """Best-threshold numbers, the threshold and the sweep, as fractions (as eval-cam wrote them)."""
    if metrics is None:
        return None
    if metrics.get("diverged"):
        return {"diverged": metrics["diverged"]}
    out = {k: round(metrics[k], 5) for k in KEYS if metrics.get(k) is not None}
    out["threshold"] = metrics.get("threshold")
    out["sweep"] = [
        {k: round(p[k], 4) for k in ("threshold", "miou", "precision", "recall") if k in p}
        for p in metrics.get("sweep", [])
    ]
    return out


def main_run(profile: str, seed: int, out: Path, sets: list[str]):
    """The as-built run of one seed: baseline and both ESOL stages, seeds scored on train and val.

    The as-built levels are pinned (:data:`esol_lib.book.readings.AS_BUILT`): the profiles' defaults
    have since moved to the levels the protocol permitted."""
    from esol_lib.book.readings import AS_BUILT
    from esol_lib.pipeline import pipeline_steps
    from esol_lib.runtime.config_io import load_config
    from esol_lib.runtime.lock import RunBusyError
    from esol_lib.steps import start_run

    cfg = load_config(
        profile,
        [f"profile={profile}-seed{seed}", f"{SEED_KEY[profile]}={seed}", "ablation.max_steps=null", *AS_BUILT, *sets],
    )
    waited = 0.0
    while True:  # two studies started on one seed share its run: the second waits for the first's steps
        try:
            run = start_run(out / f"seed{seed}", cfg)  # generates data/<generator>-<profile>-seed<S> when missing
            for step in pipeline_steps(run, progress=False, crf=False, refine=False):
                if not step.done():
                    step.action()
            return run
        except RunBusyError as exc:
            if waited >= BUSY_WAIT:
                raise
            if not waited:
                print(f"seed {seed}: {exc}; waiting up to {BUSY_WAIT / 60:.0f} min for it", flush=True)
            time.sleep(10.0)
            waited += 10.0


#: The baseline under the optimiser IRN's code meant (momentum 0.9) at the lr the cpu profile used with it.
MEANT_OPTIMISER = ("train_cam.momentum=0.9", "train_cam.lr=0.01")


def baseline_only(profile: str, seed: int, out: Path, sets: list[str], overrides) -> dict:
    """Train and score (val and train) only the baseline of one seed under other train_cam settings."""
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import start_run, train_cam

    cfg = load_config(profile, [f"profile={profile}-seed{seed}", f"{SEED_KEY[profile]}={seed}", *sets, *overrides])
    run = start_run(out, cfg)
    train_cam(run, progress=False)
    return {"overrides": list(overrides), "scores": score(run, ("baseline",), ("val", "train"))}


def score(run, stages=STAGES, splits=("val",)) -> dict:
    from esol_lib import ablation as ab

    return {split: {st: pick(ab.score_stage(run, st, split)) for st in stages} for split in splits}


def diagnostics(run) -> dict:
    """The offsets' gradient per kind of cell, before and after each stage, on fixed training crops."""
    import torch

    from esol_lib.data.transforms import AugmentedDataset, TrainTransform
    from esol_lib.method.diagnostics import offset_gradients
    from esol_lib.models.esol import UNTRAINED_IN_EXPANSION
    from esol_lib.runtime.checkpoint import load_stage_checkpoint
    from esol_lib.steps._esol_shared import build_esol_model
    from esol_lib.steps._shared import split_dataset
    from esol_lib.steps.expansion import expansion_objective
    from esol_lib.steps.shrinkage import shrinkage_objective

    cfg = run.load_config()
    tc = cfg.train_cam
    base = split_dataset(cfg, cfg.data.train_split)
    transform = TrainTransform(tuple(tc.resize_long), tc.crop_size, cfg.data.mean, cfg.data.std, tc.flip)
    data = AugmentedDataset(base, transform, seed=10_000 + cfg.seed)  # not a seed any training drew
    items = [data[i] for i in range(min(DIAG_IMAGES, len(data)))]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "label", "mask")}
    objective = {"expansion": expansion_objective(cfg), "shrinkage": shrinkage_objective(cfg)}
    out: dict = {}
    for stage in ("expansion", "shrinkage"):
        for when, ckpt in (("start", "expansion" if stage == "shrinkage" else None), ("end", stage)):
            model = build_esol_model(cfg, base.num_classes, run)
            if ckpt is not None:
                load_stage_checkpoint(run, ckpt, model, hint="", optional=UNTRAINED_IN_EXPANSION)
            model.stage_parameters(stage)
            try:
                out[f"{stage}_{when}"] = offset_gradients(model, stage, objective[stage], batch)
            except ValueError as err:  # a reading without that stage's offsets
                out[f"{stage}_{when}"] = {"skipped": str(err)}
    return out


SAMPLING_CELLS = 4  # a 4x4 grid of output cells whose kernels are drawn


def sampling(run, image: dict) -> dict:
    """Where ES's and SS's kernels sample on one image after training, at a grid of output cells."""
    import torch

    from esol_lib.data.transforms import to_tensor
    from esol_lib.models.samplers import sampling_points
    from esol_lib.steps._esol_shared import load_stage_model

    cfg = run.load_config()
    x = to_tensor(image["image"], cfg.data.mean, cfg.data.std).unsqueeze(0)
    out: dict = {}
    for stage in ("expansion", "shrinkage"):
        model = load_stage_model(run, cfg, stage, len(image["label"]), torch.device("cpu"))
        sampler = model.es if stage == "expansion" else model.ss
        if sampler.offset_conv is None:
            continue
        with torch.no_grad():
            feat = model.features(x)
            inp = feat if stage == "expansion" or model.ss_on_first else model.expanded(feat)
        h, w = inp.shape[-2:]
        out["stride"] = x.shape[-1] / w
        cells = [
            (int((i + 0.5) * h / SAMPLING_CELLS), int((j + 0.5) * w / SAMPLING_CELLS))
            for i in range(SAMPLING_CELLS)
            for j in range(SAMPLING_CELLS)
        ]
        points = []
        for y, xx in cells:
            regular, deformed = sampling_points(sampler, inp, y, xx)
            if stage == "shrinkage" and model.ss_on_first:  # SS's offsets add to ES's there
                _, with_es = sampling_points(model.es, inp, y, xx)
                deformed = deformed + (with_es - regular)
            points.append([regular.tolist(), [[round(v, 3) for v in p] for p in deformed.tolist()]])
        out[stage] = points
    return out


def sampling_image(profile: str, seed: int, sets: list[str]) -> dict:
    """The first val image with a labelled object, its id and a PNG of it (base64), for the sampling figure."""
    import base64
    import io

    from PIL import Image

    from esol_lib.data import VOCSegmentation, resolve_data_root
    from esol_lib.runtime.config_io import load_config

    cfg = load_config(profile, [f"profile={profile}-seed{seed}", f"{SEED_KEY[profile]}={seed}", *sets])
    ds = VOCSegmentation(resolve_data_root(cfg), cfg.data.val_split)
    item = next(ds[i] for i in range(len(ds)) if int(ds[i]["label"].sum()) > 0)
    buf = io.BytesIO()
    Image.fromarray(item["image"]).save(buf, format="PNG")
    return item | {"png": base64.b64encode(buf.getvalue()).decode("ascii")}


def add_sampling(profile: str, seed: int, out: Path, sets: list[str], result: dict, save) -> None:
    """Recompute the diagnostics, and the sampling-points figure's data, of every trained run of one
    seed (cheap: 16 crops and one image per run; no training)."""
    from esol_lib.runtime.rundir import RunDir

    runs = result.get("seeds", {}).get(str(seed), {})
    if not runs:
        return
    image = sampling_image(profile, seed, sets)
    runs["_image"] = {"id": image["id"], "png": image["png"]}
    main = out / f"seed{seed}"
    for name, rec in runs.items():
        if name.startswith("_") or not isinstance(rec, dict):
            continue
        folder = main if name == "as-built" else main / "readings" / name
        if rec.get("diverged") and "scores" not in rec and (folder / "checkpoints" / "expansion.pt").is_file():
            rec["scores"] = score(RunDir(folder), ("expansion",), ("val",))
        if "scores" not in rec:
            continue
        if (folder / "checkpoints" / "shrinkage.pt").is_file():
            rec["diagnostics"] = diagnostics(RunDir(folder))
            rec["sampling"] = sampling(RunDir(folder), image)
    save()


def offsets_over_steps(run) -> dict:
    """``{stage: [[step, mean |offset|], ...]}`` from the run's log (the shared expansion's is the main run's)."""
    out: dict = {}
    for rec in run.log_records():
        if rec.get("stage") in ("expansion", "shrinkage") and "offset" in rec and "step" in rec:
            out.setdefault(rec["stage"], []).append([rec["step"], round(float(rec["offset"]), 5)])
    return out


def reading_record(main, variant, root: Path, splits=("val",), reference: dict | None = None) -> dict:
    """Train (if needed) and measure one reading's fork; ``reference``: the scores of a retrained as-built
    run that did not reproduce the recorded one (:func:`own_reference`), kept with the record."""
    from esol_lib import ablation as ab
    from esol_lib.runtime.rundir import RunDir

    t0 = time.perf_counter()
    result = ab.run_variant(main, variant, root, split="val")
    fork = RunDir(Path(result["run_dir"]))
    record: dict = {"overrides": list(variant.overrides)}
    if reference is not None:
        record["reference"] = reference
    if result.get("diverged"):
        record["diverged"] = result["diverged"]
        record["offsets"] = offsets_over_steps(fork)
        if fork.checkpoint("expansion").is_file():  # shrinkage ran away: the expansion it started from still scores
            record["scores"] = score(fork, ("expansion",), splits)
        return record
    record["scores"] = score(fork, ("expansion", "shrinkage"), splits)
    record["diagnostics"] = diagnostics(fork)
    own = offsets_over_steps(fork)
    record["offsets"] = {"expansion": own.get("expansion") or offsets_over_steps(main).get("expansion")} | {
        "shrinkage": own.get("shrinkage")
    }
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


def own_reference(main, recorded: dict | None) -> dict | None:
    """The as-built scores of ``main`` when its baseline is not the one recorded for its seed, else None.

    A seed's readings are forks of one trained baseline. When the as-built run is trained again (a lost
    run folder, another machine) and its baseline's seeds score otherwise than the recorded ones (float
    reductions differ across CPUs and thread counts), a reading forked from it is compared with its own
    baseline, not the recorded one: the record keeps this run's scores
    (:func:`esol_lib.book.study.stage_metrics_of`)."""
    now = score(main, STAGES, ("val",))
    kept = (recorded or {}).get("val", {}).get("baseline") or {}
    if not kept or now["val"]["baseline"] == kept:
        return None
    return {"scores": now, "why": "the recorded run folder was gone and the as-built run was trained again"}


def run_seed(profile: str, seed: int, out: Path, sets: list[str], names, result: dict, save) -> None:
    """The as-built run and every reading in ``names`` on one seed, saved after each."""
    from esol_lib.book.readings import READINGS, REFERENCE

    t0 = time.perf_counter()
    main = main_run(profile, seed, out, sets)
    runs = result.setdefault("seeds", {}).setdefault(str(seed), {})
    if REFERENCE not in runs or "scores" not in runs[REFERENCE]:
        runs[REFERENCE] = {
            "scores": score(main, STAGES, ("val", "train")),
            "diagnostics": diagnostics(main),
            "offsets": offsets_over_steps(main),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        save()
    print(f"seed {seed}: {REFERENCE} done", flush=True)
    if "baseline-momentum-0.9" not in runs:  # the baseline both ways: IRN's effective optimiser and the meant one
        runs["baseline-momentum-0.9"] = baseline_only(
            profile, seed, out / f"seed{seed}-momentum0.9", sets, MEANT_OPTIMISER
        )
        save()
    todo = [r for r in READINGS if r.name in names and r.name not in runs]
    reference = own_reference(main, runs[REFERENCE].get("scores")) if todo else None
    for reading in todo:
        runs[reading.name] = reading_record(main, reading.variant, main.root / "readings", reference=reference)
        save()
        print(f"seed {seed}: {reading.name} done ({runs[reading.name].get('seconds', '-')} s)", flush=True)


def run_selected(profile: str, seed: int, out: Path, sets: list[str], overrides, result: dict, key: str, save):
    """The selected combination on one seed, scored on val and train."""
    from esol_lib.book.ablation import Variant

    main = main_run(profile, seed, out, sets)
    runs = result.setdefault(key, {}).setdefault(str(seed), {})
    if profile != "cpu" and "as-built" not in runs:
        runs["as-built"] = {"scores": score(main, STAGES, ("val", "train")), "offsets": offsets_over_steps(main)}
        save()
    if "selected" not in runs:
        if overrides:
            variant = Variant("selected", "selected combination", tuple(overrides))
            runs["selected"] = reading_record(main, variant, main.root / "readings", ("val", "train"))
        else:
            runs["selected"] = {"same_as": "as-built", "overrides": []}
        save()
    print(f"{key} seed {seed}: selected done", flush=True)


def main() -> int:
    from esol_lib import readings as rd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--profile", choices=["cpu", "smoke"], default="cpu", help="smoke: the test suite's seconds-long run"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--toy-seeds", type=int, nargs="*", default=[])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "readings")
    p.add_argument("--json", type=Path, default=ROOT / "book" / "results" / "readings.json")
    p.add_argument("--only", nargs="*", default=None, help="readings to run (default: all)")
    p.add_argument("--skip", nargs="*", default=[], help="readings to leave out this time")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--select-only", action="store_true", help="apply the protocol to what is measured; train nothing")
    p.add_argument(
        "--sampling",
        action="store_true",
        help="recompute the diagnostics and the sampling-points figure's data of trained runs; train nothing",
    )
    args = p.parse_args()
    names = {r.name for r in rd.READINGS} if args.only is None else set(args.only)
    names -= set(args.skip)
    unknown = names - {r.name for r in rd.READINGS}
    if unknown:
        p.error(f"unknown reading(s) {', '.join(sorted(unknown))}; known: {', '.join(r.name for r in rd.READINGS)}")
    result = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {}
    result.update(
        profile=args.profile,
        protocol={
            "select_on": "generator seed 0, val split",
            "criterion": f"{rd.SELECTION_STAGE} seed {rd.SELECTION_KEY} at the best threshold; "
            f"ties keep {rd.REFERENCE}",
            "report_on": "every seed, train and val; the toy benchmark",
        },
        factors={k: {"label": v[0], "support": v[1], "why": v[2]} for k, v in rd.FACTORS.items()},
        readings=[
            {
                "name": r.name,
                "factor": r.factor,
                "label": r.label,
                "overrides": list(r.overrides),
                "support": r.support,
                "why": r.why,
            }
            for r in rd.READINGS
        ],
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)

    mine = {
        "seeds": set(map(str, args.seeds)),
        "selected": set(map(str, args.seeds)),
        "toy": set(map(str, args.toy_seeds)),
    }

    def save() -> None:
        """Merge this process's seeds into the file: several processes may each run other seeds."""
        from filelock import FileLock

        with FileLock(str(args.json) + ".lock"):
            disk = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {}
            for key, seeds in mine.items():  # per seed and run: processes may share a seed, not a run
                memory = result.setdefault(key, {})  # keeps its dicts: callers hold them
                for s, theirs in disk.get(key, {}).items():
                    if s in seeds and s in memory:
                        for name, record in theirs.items():
                            memory[s].setdefault(name, record)  # ours win; theirs are added
                    else:
                        memory[s] = theirs
                disk[key] = memory
            history = disk.get("history", [])
            history += [h for h in result.get("history", []) if h not in history]
            for key, value in result.items():
                if key not in mine:
                    disk[key] = value
            disk["history"] = result["history"] = history
            tmp = args.json.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(disk, indent=1) + "\n", encoding="utf-8")
            tmp.replace(args.json)

    command = "python benchmarks/readings.py " + " ".join(sys.argv[1:])
    result.setdefault("history", []).append({"command": command, "started": time.strftime("%Y-%m-%d %H:%M")})
    if not args.select_only and not args.sampling:
        for seed in args.seeds:
            run_seed(args.profile, seed, args.out, args.set, names, result, save)
    if args.sampling:
        for seed in args.seeds:
            add_sampling(args.profile, seed, args.out, args.set, result, save)
    save()  # reads what other processes measured (seed 0 may be theirs)
    seed0 = result.get("seeds", {}).get("0", {})
    if rd.REFERENCE in seed0:
        val = {
            name: (rec.get("scores", {}).get("val", {}).get(rd.SELECTION_STAGE) or {"diverged": rec.get("diverged")})
            for name, rec in seed0.items()
        }
        missing = [r.name for r in rd.READINGS if r.name not in seed0]
        selection = rd.select_readings(val)
        result["selection"] = {"factors": selection, "missing": missing}
        result["selected_overrides"] = list(rd.selected_overrides(selection))
        result["default_changes"] = rd.default_changes(selection)
        save()
        if not args.select_only and not args.sampling and not missing:
            for seed in args.seeds:
                run_selected(
                    args.profile, seed, args.out, args.set, result["selected_overrides"], result, "selected", save
                )
            for seed in args.toy_seeds:
                run_selected(
                    "toy",
                    seed,
                    args.out.parent / "readings-toy",
                    args.set,
                    result["selected_overrides"],
                    result,
                    "toy",
                    save,
                )
    save()
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
