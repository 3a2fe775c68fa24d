"""Ablations and sensitivity sweeps (§4.3, Table 5, Fig. 6, Appendix A.1.1 and A.1.3).

Every ablation is a *config change*, never a code copy: a :class:`Variant` is a set of
``key=value`` overrides applied to a finished main run. :func:`run_variant` forks the main run into
``<root>/<name>`` (:func:`esol_lib.runtime.rundir.fork_run`), sharing the trained baseline — and the trained
expansion model when only shrinkage settings change — then trains what the change touches and
scores the variant's seeds through the same ``make-cam`` / ``eval-cam`` as the main run. Each
variant is thus a normal run folder: re-running skips what is done, and a variant can be inspected
with the command line like any run.

A variant whose loss maximisation runs away (:class:`~esol_lib.runtime.errors.DivergenceError`) is a
result, not a crash: it is recorded as diverged and the sweep goes on.

Usage (chapter 07)::

    results = run_variants(run, TABLE5, run.root / "ablations")
    charts.sensitivity_plot(alpha_sweep_results, ...)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from esol_lib.book import paper
from esol_lib.runtime.atomic import atomic_write_text
from esol_lib.runtime.config_io import apply_overrides, config_to_dict
from esol_lib.runtime.errors import ConfigError, DivergenceError, StageError
from esol_lib.runtime.rundir import RunDir, fork_run
from esol_lib.runtime.stages import METHOD_STAGES
from esol_lib.steps import STAGE_COMMAND, current_cam_metrics, eval_cam, expand, make_cam, shrink

__all__ = [
    "Variant",
    "TABLE5",
    "LOSS_COMBINATIONS",
    "AREA_READINGS",
    "APPENDIX",
    "sweep",
    "score_stage",
    "run_variant",
    "reference_run",
    "run_variants",
    "paper_numbers",
    "ClaimCheck",
    "check_claims",
    "PAPER_BASELINE_SEED",
    "PAPER_ESOL_SEED",
]


@dataclass(frozen=True)
class Variant:
    """One ablation: a name (its run folder), a label for tables, and config overrides.

    Args:
        name: folder name under the ablation root; letters, digits, ``-``, ``_`` and ``.``.
        label: what the book's tables print.
        overrides: ``key=value`` strings, as ``--set`` takes them (``expansion.clip=false``).
        stage: the last stage trained and scored: ``expansion`` (α sweep, A.1.1, A.1.3) or
            ``shrinkage`` (Table 5, β, loss combinations, γ/μ).
        paper: the paper's number for this row (CAM seed mIoU, %), when it reports one.
    """

    name: str
    label: str
    overrides: tuple[str, ...] = ()
    stage: str = "shrinkage"
    paper: float | None = None

    def __post_init__(self) -> None:
        if self.stage not in ("expansion", "shrinkage"):
            raise ConfigError(f"ablation {self.name!r}: stage must be 'expansion' or 'shrinkage', got {self.stage!r}")
        if not self.name or any(not (c.isalnum() or c in "-_.") for c in self.name):
            raise ConfigError(f"ablation name {self.name!r}: use letters, digits, '-', '_' and '.' only")
        for item in self.overrides:
            if "=" not in item:
                raise ConfigError(f"ablation {self.name!r}: override {item!r} must look like key=value")

    @property
    def shrinkage_only(self) -> bool:
        """True when every override is a ``shrinkage.*`` key: the main run's expansion is reused."""
        return bool(self.overrides) and all(o.split("=", 1)[0].strip().startswith("shrinkage.") for o in self.overrides)


#: Table 5: each component of ESOL switched off in turn (CAM seed mIoU on VOC train in ``paper``).
#: The table's first and last rows (baseline 48.4, full ESOL 53.6) are the main run's own stages.
#: "w/o DT_s" keeps the shrinkage stage but without the deformable transformation: its second conv's
#: regular weights learn Eq. (6) instead of offsets (``shrinkage.train_regular``). Frozen weights would
#: leave the stage nothing to train, and the paper's two rows without DT_s (50.9 with the area loss,
#: 50.1 without) differ, so something trained in both.
TABLE5: tuple[Variant, ...] = (
    Variant(
        "no-dte-fl",
        "Expansion w/o (DT_e + FL) + Shrinkage",
        ("expansion.offsets=false", "expansion.clip=false"),
        paper=paper.TABLE5["no-dte-fl"],
    ),
    Variant("no-dte", "Expansion w/o DT_e + Shrinkage", ("expansion.offsets=false",), paper=paper.TABLE5["no-dte"]),
    Variant("no-fl", "Expansion w/o FL + Shrinkage", ("expansion.clip=false",), paper=paper.TABLE5["no-fl"]),
    Variant(
        "no-dts-area",
        "Expansion + Shrinkage w/o (DT_s + L_area)",
        ("shrinkage.offsets=false", "shrinkage.train_regular=true", "shrinkage.area_loss=false"),
        paper=paper.TABLE5["no-dts-area"],
    ),
    Variant(
        "no-dts",
        "Expansion + Shrinkage w/o DT_s",
        ("shrinkage.offsets=false", "shrinkage.train_regular=true"),
        paper=paper.TABLE5["no-dts"],
    ),
    Variant(
        "no-area", "Expansion + Shrinkage w/o L_area", ("shrinkage.area_loss=false",), paper=paper.TABLE5["no-area"]
    ),
)

#: Table 5's first and last rows, which are the main run's baseline and shrinkage stages.
PAPER_BASELINE_SEED = paper.TABLE5_BASELINE_SEED
PAPER_ESOL_SEED = paper.TABLE5_ESOL_SEED

#: Fig. 6(c): which losses the shrinkage stage minimises (the main run is "L_cls + L_area").
#: "L_cls only" is Table 5's "w/o L_area" row: the same name, so the same run folder is reused.
LOSS_COMBINATIONS: tuple[Variant, ...] = (
    Variant("no-area", "L_cls only (no area loss)", ("shrinkage.area_loss=false",)),
    Variant("loss-area", "L_area only (γ = 0, μ = 1)", ("shrinkage.gamma=0.0",)),
)

#: What P_k of Eq. (6) is (the paper gives no formula; book, method page): the other readings next to
#: the default (Eq. (2)'s max-normalised CAM over the image's ground-truth classes).
AREA_READINGS: tuple[Variant, ...] = (
    Variant(
        "pk-sigmoid-all",
        "P_k = sigmoid of the class score, all C classes",
        ("shrinkage.area_map=sigmoid", "shrinkage.area_classes=all"),
    ),
    Variant("pk-cam-all", "P_k = max-normalised CAM, all C classes", ("shrinkage.area_classes=all",)),
)

#: Appendix A.1.1 (loss maximisation on a plain convolution, no offsets: paper 40.3 vs 48.4) and
#: A.1.3 (the deformable layer's regular weights trainable too). Both are scored after expansion.
APPENDIX: tuple[Variant, ...] = (
    Variant(
        "a11-no-deformable",
        "A.1.1: loss maximisation without a deformable layer",
        ("expansion.deformable=false",),
        stage="expansion",
        paper=paper.APPENDIX_A11,
    ),
    Variant(
        "a13-train-regular",
        "A.1.3: regular weights of the ES trainable",
        ("expansion.train_regular=true",),
        stage="expansion",
    ),
)


def sweep(
    key: str, values: Iterable[float], stage: str = "shrinkage", prefix: str | None = None, symbol: str | None = None
) -> tuple[Variant, ...]:
    """One variant per value of the config ``key`` (Fig. 6(a), (b), (d)).

    >>> [v.name for v in sweep("expansion.alpha", [0.001, 0.01], stage="expansion")]
    ['alpha-0.001', 'alpha-0.01']
    """
    short = prefix or key.rsplit(".", 1)[-1]
    sym = symbol or short
    return tuple(
        Variant(f"{short}-{v:g}", f"{sym} = {v:g}", (f"{key}={_yaml_number(v)}",), stage=stage) for v in values
    )


def _yaml_number(value: float) -> str:
    """A float as YAML reads it back as a float (``1e-05`` would be a string in YAML 1.1)."""
    import numpy as np

    return np.format_float_positional(float(value), trim="0")


def score_stage(run: RunDir, stage: str, split: str | None = None, *, progress: bool = False) -> dict:
    """Seed metrics of a finished ``stage`` of ``run`` on ``split`` (default: ``ablation.split``, else
    ``data.cam_split``): CAMs and threshold sweep, computed once, then read back from the metrics
    file while it scores the CAMs as they are (:func:`esol_lib.steps.current_cam_metrics`)."""
    cfg = run.load_config()
    split = split or cfg.ablation.split or cfg.data.cam_split
    make_cam(run, stage, split, progress=progress)  # a no-op while the CAMs fit the checkpoint and data
    return current_cam_metrics(run, stage, split) or eval_cam(run, stage, split, progress=progress)


def run_variant(
    main: RunDir, variant: Variant, root: str | Path, *, split: str | None = None, progress: bool = False
) -> dict:
    """Train and score one ablation; returns its seed metrics (``eval-cam``'s dict, plus ``variant`` and
    ``run_dir``, the run folder that holds its checkpoints and CAMs).

    The variant's run folder is ``root/<name>``, forked from ``main`` with the variant's overrides
    (the baseline is shared, and the expansion model too when only ``shrinkage.*`` keys change).
    A variant whose config equals the main run's is the main run: nothing is trained again. A
    finished variant is read back from its metrics file. It is scored on ``split`` (default: the
    main run's ``ablation.split``, else ``data.cam_split``).

    A variant whose training diverges returns ``{"variant": name, "diverged": message}``; the
    message is kept in ``root/<name>/diverged.txt`` so that a re-run does not train it again.
    """
    main = reference_run(main, root, progress=progress)
    main_cfg = main.load_config()
    split = split or main_cfg.ablation.split or main_cfg.data.cam_split
    values = config_to_dict(main_cfg)
    if apply_overrides(values, list(variant.overrides)) == values:  # the main run's own setting
        for stage in ("expansion", "shrinkage")[: 1 + (variant.stage == "shrinkage")]:
            _require_stage(main, stage)
        return {
            **score_stage(main, variant.stage, split, progress=progress),
            "variant": variant.name,
            "run_dir": str(main.root),
            "same_as_main": True,
        }
    share = ("baseline", "expansion") if variant.shrinkage_only else ("baseline",)
    run = fork_run(main.root, Path(root) / variant.name, variant.overrides, share=share)
    marker = run.root / "diverged.txt"
    if marker.is_file():
        return {"variant": variant.name, "run_dir": str(run.root), "diverged": marker.read_text()}
    try:
        if not run.checkpoint("expansion").is_file():
            expand(run, progress=progress)
        if variant.stage == "shrinkage" and not run.checkpoint("shrinkage").is_file():
            shrink(run, progress=progress)
    except DivergenceError as err:
        atomic_write_text(marker, str(err))
        return {"variant": variant.name, "run_dir": str(run.root), "diverged": str(err)}
    return {
        **score_stage(run, variant.stage, split, progress=progress),
        "variant": variant.name,
        "run_dir": str(run.root),
    }


def reference_run(main: RunDir, root: str | Path, *, progress: bool = False) -> RunDir:
    """The run every ablation is compared with: ``main`` itself, or with ``ablation.max_steps`` set,
    ``root/reference``: ``main``'s config with both ESOL stages trained for that many steps (sharing
    ``main``'s baseline). Variants then fork from the reference, so each one differs from it in its
    own overrides only, at the same training length.
    """
    steps = main.load_config().ablation.max_steps
    if steps is None:
        return main
    if isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"ablation.max_steps: expected a positive number of steps or null, got {steps!r}")
    ref = fork_run(
        main.root, Path(root) / "reference", (f"expansion.max_steps={steps}", f"shrinkage.max_steps={steps}")
    )
    if not ref.checkpoint("expansion").is_file():
        expand(ref, progress=progress)
    if not ref.checkpoint("shrinkage").is_file():
        shrink(ref, progress=progress)
    return ref


def _require_stage(run: RunDir, stage: str) -> None:
    if not run.checkpoint(stage).is_file():
        raise StageError(
            f"the main run {run.root} has not finished stage {stage!r}; run "
            f"`{STAGE_COMMAND[stage]} --run {run.root}` first"
        )


def run_variants(
    main: RunDir, variants: Sequence[Variant], root: str | Path, *, split: str | None = None, progress: bool = True
) -> dict[str, dict]:
    """:func:`run_variant` for each variant in order, with a progress bar: ``{name: metrics}``."""
    from tqdm.auto import tqdm

    out: dict[str, dict] = {}
    bar = tqdm(variants, desc="ablations", unit="run", disable=not progress)
    for v in bar:
        bar.set_postfix_str(v.name)
        out[v.name] = run_variant(main, v, root, split=split, progress=False)
    return out


@dataclass(frozen=True)
class ClaimCheck:
    """One of the paper's ablation claims, checked on a run: held or not, with the numbers behind it."""

    claim: str
    held: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'held' if self.held else 'did not hold'}] {self.claim}: {self.detail}"


def _seed_miou(metrics: dict) -> float | None:
    """Seed mIoU in percent; None for a variant whose training diverged."""
    return None if "diverged" in metrics else 100 * metrics["miou"]


def check_claims(main: dict[str, dict], table5: dict[str, dict], appendix: dict[str, dict]) -> list[ClaimCheck]:
    """Chapter 07's closing check of §4.3's claims on the scored variants.

    ``main`` holds the reference run's seed metrics by stage (``baseline``, ``expansion``,
    ``shrinkage``), ``table5`` and ``appendix`` the variants' metrics by variant name (as
    :func:`run_variants` returns them). Claims: every Table 5 row scores below full ESOL, and loss
    maximisation on a plain convolution (A.1.1) does not expand beyond ESOL's expansion. A diverged
    variant counts as below (it produced no better seeds).
    """
    base, expansion, full = (_seed_miou(main[st]) for st in METHOD_STAGES)
    checks = []
    for v in TABLE5:
        m = _seed_miou(table5[v.name])
        detail = "diverged" if m is None else f"{m:.2f} vs {full:.2f}"
        checks.append(ClaimCheck(f"'{v.label}' scores below full ESOL", m is None or m < full, detail))
    a11 = _seed_miou(appendix["a11-no-deformable"])
    detail = "diverged" if a11 is None else f"{a11:.2f} vs ESOL's expansion {expansion:.2f} and baseline {base:.2f}"
    checks.append(
        ClaimCheck("loss maximisation without offsets does not expand (A.1.1)", a11 is None or a11 <= expansion, detail)
    )
    return checks


def paper_numbers(variants: Iterable[Variant]) -> dict[str, float]:
    """``{label: paper}`` of the variants that the paper reports a number for."""
    return {v.label: v.paper for v in variants if v.paper is not None}
