"""The one table of CAM stages: every list of stage names in the package is derived from :data:`STAGE_TABLE`.

A *stage* is a way of making a run folder's CAMs (``cams/<stage>/``), which every later step (``eval-cam``,
``refine``, ``train-seg``, ``eval-seg``) then treats alike. The method's three (the baseline classifier,
ESOL's expansion and shrinkage) are trained; the positive controls of chapter 10 are known CAM improvements
built on the same baseline, so the book can show whether the benchmark sees a better CAM at all:

- ``recam``  (ReCAM, Chen et al. CVPR 2022): fine-tunes the baseline with a softmax CE on CAM-weighted
  class features (``esol train-recam``), then CAMs with the product of the two weights;
- ``advcam`` (AdvCAM, Lee et al. CVPR 2021): training-free, climbs the image anti-adversarially; its CAMs
  need gradients, so its producer decides its own gradient mode (``steps/producers.py``);
- ``lpcam``  (LPCAM, Chen & Sun CVPR 2023): training-free, clusters the baseline's features into local
  prototypes (made by ``make-cam`` itself, ``checkpoints/lpcam.pt``).

The table is data only and lives at the runtime floor because the run folder's invalidation rules
(:func:`esol_lib.runtime.rundir.supersede`) read it; what *produces* each stage's CAMs (a model, a
training-free producer) is :data:`esol_lib.steps.producers.PRODUCERS`, keyed by the same names, and a test
checks the two agree. A new stage is one entry here, its producer there, its config section, its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Stage",
    "STAGE_TABLE",
    "STAGES",
    "METHOD_STAGES",
    "CONTROL_STAGES",
    "REFINED_STAGES",
    "stage_spec",
    "stage_sections",
    "unknown_stage",
]


@dataclass(frozen=True)
class Stage:
    """One way of making CAMs.

    Attributes:
        name: the stage's key: ``--stage NAME``, ``checkpoints/NAME.pt``, ``cams/NAME/``, ``metrics/NAME_<split>.json``.
        label: how the book names it (legends, tables).
        short: a short label (narrow table columns).
        color: its colour in every chart.
        sections: config sections its checkpoint and CAMs depend on besides the baseline's: changing one
            supersedes this stage's outputs and everything made from them.
        upstream: the stage whose checkpoint this one starts from (None: the baseline itself).
        command: the command that makes its checkpoint; None when ``make-cam`` makes everything it needs.
        trained: whether ``checkpoints/NAME.pt`` holds trained weights (False: a training-free method whose
            CAMs are computed from the baseline; its CAM folder's signature covers the baseline checkpoint).
        role: ``"method"`` (the paper's three) or ``"control"`` (a positive control, chapter 10).
    """

    name: str
    label: str
    short: str
    color: str
    sections: frozenset[str]
    upstream: str | None
    command: str | None
    trained: bool
    role: str


STAGE_TABLE: tuple[Stage, ...] = (
    Stage("baseline", "baseline CAM", "baseline", "#4c72b0", frozenset(), None, "esol train-cam", True, "method"),
    Stage(
        "expansion",
        "expansion",
        "expansion",
        "#dd8452",
        frozenset({"expansion"}),
        "baseline",
        "esol expand",
        True,
        "method",
    ),
    Stage(
        "shrinkage",
        "ESOL (shrinkage)",
        "ESOL",
        "#55a868",
        frozenset({"expansion", "shrinkage"}),
        "expansion",
        "esol shrink",
        True,
        "method",
    ),
    Stage("recam", "ReCAM", "ReCAM", "#8172b3", frozenset({"recam"}), "baseline", "esol train-recam", True, "control"),
    Stage("advcam", "AdvCAM", "AdvCAM", "#c44e52", frozenset({"advcam"}), "baseline", None, False, "control"),
    Stage("lpcam", "LPCAM", "LPCAM", "#937860", frozenset({"lpcam"}), "baseline", None, False, "control"),
)

#: Every stage's name, in the table's order.
STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE)
#: The paper's stages: baseline, expansion, shrinkage.
METHOD_STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.role == "method")
#: The positive controls (chapter 10).
CONTROL_STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.role == "control")
#: The stages ``esol pipeline`` refines into pseudo masks and trains DeepLab on: plain CAM vs ESOL (Tables 1, 3).
REFINED_STAGES: tuple[str, ...] = (METHOD_STAGES[0], METHOD_STAGES[-1])

_BY_NAME = {s.name: s for s in STAGE_TABLE}


def unknown_stage(stage: object) -> str:
    """The one line for a stage name that is not in the table."""
    return f"unknown stage {stage!r}; use one of {', '.join(STAGES)}"


def stage_spec(stage: str) -> Stage:
    """The table's entry for ``stage``; a :class:`~esol_lib.runtime.errors.StageError` naming the choices otherwise."""
    from esol_lib.runtime.errors import StageError

    try:
        return _BY_NAME[stage]
    except (KeyError, TypeError):
        raise StageError(unknown_stage(stage)) from None


def stage_sections(stage: str) -> set[str]:
    """The config sections ``stage``'s outputs depend on besides the baseline's (empty for an unknown name)."""
    spec = _BY_NAME.get(stage)
    return set(spec.sections) if spec is not None else set()
