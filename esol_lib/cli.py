"""The ``esol`` command line (also ``python -m esol_lib``); subcommands as fixed in docs/DESIGN.md.

Every stage reads and writes one run folder. Errors raised on purpose (:class:`EsolError`) are
printed as one message without a traceback and exit with status 2.

Each command imports its stage inside its function, the one place in the package that does so on
purpose: ``esol --help``, ``esol config`` and a mistyped flag answer without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from esol_lib.runtime.errors import ConfigError, EsolError
from esol_lib.runtime.stages import STAGES

# Subcommands that later work builds; until then they say where they belong instead of faking output.
PENDING: dict[str, str] = {}

STAGE_CHOICES = STAGES  # the stage table's names (esol_lib.runtime.stages), imported without torch


def _add_run_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting of this run (e.g. expansion.alpha=0.02): what depended on the old "
        "value moves to RUN/superseded/ and is redone; keys of the baseline are refused",
    )


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="cpu", help="preset (smoke, cpu, voc12, coco14) or a YAML path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set expansion.alpha=0.01 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esol",
        description="ESOL (NeurIPS 2022) for weakly-supervised semantic segmentation. "
        "Every stage reads and writes one run folder (--run).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate the benchmark or convert a dataset to VOC layout")
    dsub = data.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="write the generated benchmark in VOC layout")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--train", type=int, default=None, help="training images (default 1000)")
    synth.add_argument("--val", type=int, default=None, help="validation images (default 200)")
    synth.add_argument("--size", type=int, default=None, help="image side in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=None)
    synth.add_argument("--num-classes", type=int, default=None)
    synth.add_argument(
        "--profile", default=None, help="take every unspecified field from this preset's data.synth (e.g. smoke)"
    )
    emoji = dsub.add_parser("emoji", help="write the emoji benchmark (OpenMoji art, 20 VOC classes) in VOC layout")
    emoji.add_argument("--out", required=True, type=Path)
    emoji.add_argument("--train", type=int, default=None, help="training images (default 1000)")
    emoji.add_argument("--val", type=int, default=None, help="validation images (default 200)")
    emoji.add_argument("--size", type=int, default=None, help="image side in pixels (default 128)")
    emoji.add_argument("--seed", type=int, default=None)
    emoji.add_argument(
        "--profile", default=None, help="take every unspecified field from this preset's data.emoji (e.g. cpu)"
    )
    coco = dsub.add_parser("coco", help="convert MS COCO 2014 annotations into VOC layout (pycocotools)")
    coco.add_argument("--coco-root", required=True, type=Path)
    coco.add_argument("--out", required=True, type=Path)
    coco.add_argument("--limit", type=int, default=None, help="convert only the first N images per split")
    aug = dsub.add_parser("train-aug", help="build VOC's 10,582-image train_aug list from VOC + SBD")
    aug.add_argument("--voc-root", required=True, type=Path)
    aug.add_argument("--sbd-root", required=True, type=Path)

    pre = sub.add_parser("pretrain", help="pretrain the proxy-ImageNet backbone on non-VOC OpenMoji glyphs")
    pre.add_argument("--out", required=True, type=Path, help="the backbone state dict to write (.pth)")
    pre.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe's)")
    pre.add_argument("--seed", type=int, default=None)

    show = sub.add_parser("config", help="print the resolved config as YAML")
    _add_config_args(show)

    p = sub.add_parser("train-cam", help="train the baseline classifier (+2 extra convs)")
    _add_config_args(p)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--run", required=True, type=Path)
    for name, what in (
        ("expand", "Expansion stage: offsets learned by loss maximisation, then clipping"),
        ("shrink", "Shrinkage stage: offsets learned with the area loss"),
        ("train-recam", "ReCAM (positive control): the baseline fine-tuned with ReCAM's softmax loss"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--run", required=True, type=Path)
        _add_run_set(p)
    for name, what in (
        ("make-cam", "multi-scale CAMs (Eq. 2) of a stage's model"),
        ("eval-cam", "threshold sweep of a stage's CAM seeds -> metrics JSON"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--run", required=True, type=Path)
        p.add_argument("--stage", choices=STAGE_CHOICES, default="baseline")
        p.add_argument("--split", default=None, help="split to use (default: the config's data.cam_split)")
        _add_run_set(p)
        if name == "eval-cam":
            p.add_argument("--crf", action="store_true", help="DenseCRF on the seeds")
    for name, what in (
        ("refine", "DenseCRF + IRN: a stage's CAMs -> pseudo masks"),
        ("train-seg", "DeepLab-v2 trained on a stage's pseudo masks"),
        ("eval-seg", "DeepLab-v2 evaluated on the val split"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--run", required=True, type=Path)
        p.add_argument("--stage", choices=STAGE_CHOICES, default="shrinkage")
        _add_run_set(p)
        if name == "eval-seg":
            p.add_argument("--split", default="val")
    p = sub.add_parser("pipeline", help="every stage in order, resumable")
    _add_config_args(p)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--run", type=Path, default=None, help="the run folder (required unless --dry-run)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print each training step's iterations, batch (per process and global) and peak memory; run nothing",
    )
    p.add_argument(
        "--processes", type=int, default=None, help="with --dry-run: plan for N torchrun processes (default 1)"
    )
    p = sub.add_parser("book", help="execute every notebook with papermill, then build the Jupyter Book")
    p.add_argument("--profile", default="cpu", help="config preset the notebooks run (smoke, cpu, voc12, coco14)")
    p.add_argument("--out", type=Path, default=Path("_build"), help="build folder (HTML in OUT/_build/html)")
    p.add_argument("--run", type=Path, default=None, help="shared run folder (default runs/book-<profile>)")
    p.add_argument("--data-root", default=None, help="dataset in VOC layout (default: the generated benchmark)")
    p.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="CHAPTER",
        help="execute only these chapters, e.g. --only 01 (repeatable)",
    )
    return parser


# ----------------------------------------------------------------------------- commands


def cmd_data_synth(args: argparse.Namespace) -> int:
    from esol_lib.data import generate_benchmark, synth_spec_from_config
    from esol_lib.runtime.config_io import load_config

    base = load_config(args.profile).data.synth if args.profile else None
    spec = synth_spec_from_config(base)
    fields = {
        "train": args.train,
        "val": args.val,
        "size": args.size,
        "seed": args.seed,
        "num_classes": args.num_classes,
    }
    spec = dataclasses.replace(spec, **{k: v for k, v in fields.items() if v is not None})
    out = generate_benchmark(args.out, spec)
    print(f"benchmark written to {out}")
    return 0


def cmd_data_emoji(args: argparse.Namespace) -> int:
    from esol_lib.data import emoji_spec_from_config, generate_emoji_benchmark
    from esol_lib.runtime.config_io import load_config

    base = load_config(args.profile).data.emoji if args.profile else None
    spec = emoji_spec_from_config(base)
    fields = {"train": args.train, "val": args.val, "size": args.size, "seed": args.seed}
    spec = dataclasses.replace(spec, **{k: v for k, v in fields.items() if v is not None})
    out = generate_emoji_benchmark(args.out, spec)
    print(f"emoji benchmark written to {out}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from esol_lib.steps.pretrain import PretrainRecipe, pretrain_backbone

    fields = {"steps": args.steps, "seed": args.seed}
    recipe = dataclasses.replace(PretrainRecipe(), **{k: v for k, v in fields.items() if v is not None})
    card = pretrain_backbone(args.out, recipe)
    print(
        f"backbone written to {args.out}: held-out top-1 {100 * card['heldout_top1']:.1f} %, "
        f"top-5 {100 * card['heldout_top5']:.1f} % over {card['classes']} glyph classes "
        f"({card['seconds']:.0f} s)"
    )
    return 0


def cmd_data_coco(args: argparse.Namespace) -> int:
    from esol_lib.data.coco import convert_coco

    convert_coco(args.coco_root, args.out, limit=args.limit)
    print(f"COCO 2014 converted to VOC layout in {args.out}")
    return 0


def cmd_data_train_aug(args: argparse.Namespace) -> int:
    from esol_lib.data.sbd import make_train_aug

    ids = make_train_aug(args.voc_root, args.sbd_root)
    print(f"train_aug: {len(ids)} images listed in {args.voc_root}/ImageSets/Segmentation/train_aug.txt")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from esol_lib.runtime.config_io import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_train_cam(args: argparse.Namespace) -> int:
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import start_run, train_cam

    run = start_run(args.run, load_config(args.config, args.overrides), args.data_root)
    result = train_cam(run)
    print(f"baseline classifier: {run.checkpoint('baseline')} ({result.steps} steps)")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    from esol_lib.steps import expand, open_run

    run, _ = open_run(args.run, args.overrides)
    result = expand(run)
    print(f"expansion model: {run.checkpoint('expansion')} ({result.steps} steps)")
    return 0


def cmd_shrink(args: argparse.Namespace) -> int:
    from esol_lib.steps import open_run, shrink

    run, _ = open_run(args.run, args.overrides)
    result = shrink(run)
    print(f"shrinkage model: {run.checkpoint('shrinkage')} ({result.steps} steps)")
    return 0


def cmd_train_recam(args: argparse.Namespace) -> int:
    from esol_lib.steps import open_run, train_recam

    run, _ = open_run(args.run, args.overrides)
    result = train_recam(run)
    print(f"ReCAM model: {run.checkpoint('recam')} ({result.steps} steps)")
    return 0


def cmd_make_cam(args: argparse.Namespace) -> int:
    from esol_lib.steps import make_cam, open_run

    run, cfg = open_run(args.run, args.overrides)
    split = args.split or cfg.data.cam_split
    out = make_cam(run, args.stage, split)
    print(f"CAMs of stage {args.stage} on split {split}: {out}")
    return 0


def cmd_eval_cam(args: argparse.Namespace) -> int:
    from esol_lib.steps import eval_cam, open_run

    run, cfg = open_run(args.run, args.overrides)
    split = args.split or cfg.data.cam_split
    m = eval_cam(run, args.stage, split, crf=args.crf)
    name = f"{args.stage}{'_crf' if args.crf else ''}_{m.get('split') or split}"
    print(
        f"{name}: mIoU {100 * m['miou']:.1f} at threshold {m['threshold']:.2f} "
        f"(precision {100 * m['precision']:.1f}, recall {100 * m['recall']:.1f}, F1 {100 * m['f1']:.1f}) "
        f"-> {run.metrics(name)}"
    )
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from esol_lib.book.build import make_book

    index = make_book(args.profile, out=args.out, run_dir=args.run, data_root=args.data_root, only=args.only)
    print(f"book built: {index}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    from esol_lib.steps import open_run
    from esol_lib.steps.refinement import refine

    m = refine(open_run(args.run, args.overrides)[0], args.stage)
    print(
        f"pseudo masks of {args.stage} on {m['split']}: mIoU {100 * m['miou']:.1f}  precision "
        f"{100 * m['precision']:.1f}  recall {100 * m['recall']:.1f}"
    )
    return 0


def cmd_train_seg(args: argparse.Namespace) -> int:
    from esol_lib.steps import open_run
    from esol_lib.steps.segmentation import train_seg

    result = train_seg(open_run(args.run, args.overrides)[0], args.stage)
    print(f"DeepLab-v2 on {args.stage} pseudo masks: {result}")
    return 0


def cmd_eval_seg(args: argparse.Namespace) -> int:
    from esol_lib.steps import open_run
    from esol_lib.steps.segmentation import eval_seg

    m = eval_seg(open_run(args.run, args.overrides)[0], args.stage, args.split)
    print(f"DeepLab-v2 ({args.stage} pseudo masks) on {m['split']}: mIoU {100 * m['miou']:.1f}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from esol_lib.pipeline import run_pipeline
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import start_run

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        from esol_lib.plan import plan_pipeline, plan_table

        if args.data_root:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(args.data_root)))
        print(plan_table(plan_pipeline(cfg, world_size=args.processes), cfg))
        return 0
    if args.run is None:
        raise ConfigError("esol pipeline needs --run FOLDER (the run folder every step writes), or --dry-run")
    run = start_run(args.run, cfg, args.data_root)
    print(f"run: {run.root}")
    run_pipeline(run)
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    print(f"esol {args.command}: not built yet; it belongs to {PENDING[args.command]}.", file=sys.stderr)
    return 3


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "config": cmd_config,
    "pretrain": cmd_pretrain,
    "pipeline": cmd_pipeline,
    "train-cam": cmd_train_cam,
    "expand": cmd_expand,
    "shrink": cmd_shrink,
    "train-recam": cmd_train_recam,
    "make-cam": cmd_make_cam,
    "eval-cam": cmd_eval_cam,
    "book": cmd_book,
    "refine": cmd_refine,
    "train-seg": cmd_train_seg,
    "eval-seg": cmd_eval_seg,
}
DATA_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "synth": cmd_data_synth,
    "emoji": cmd_data_emoji,
    "coco": cmd_data_coco,
    "train-aug": cmd_data_train_aug,
}


def os_error_message(err: OSError) -> str | None:
    """One line for the file-system faults a user can fix (a full disk, a read-only folder); None
    for the others, which keep their traceback."""
    where = f" {err.filename}" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device writing{where}: free some space (or use a --run / --out "
            "folder on a larger disk) and run the same command again; finished files are kept"
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"cannot write{where} ({err.strerror}): make it writable, or copy the folder and pass "
            "the copy; finished files are kept"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "data":
        handler = DATA_COMMANDS[args.data_command]
    else:
        handler = COMMANDS.get(args.command, cmd_pending)
    try:
        from esol_lib.runtime import lock as run_folder

        run_folder.COMMAND = " ".join(["esol", *(argv if argv is not None else sys.argv[1:])])
        writes = args.command != "book" and not getattr(args, "dry_run", False)  # the book's kernels lock it
        if getattr(args, "run", None) is not None and writes:
            # held from before the run's config is written to the end: a second command cannot slip in between
            with run_folder.run_lock(args.run, create=args.command in ("train-cam", "pipeline")):
                return handler(args)
        return handler(args)
    except EsolError as err:
        print(f"esol {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        message = os_error_message(err)
        if message is None:
            raise
        print(f"esol {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"esol {args.command}: interrupted; finished work is kept, run the same command to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
