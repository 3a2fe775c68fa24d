"""What a run of a profile will cost, before it starts (``esol pipeline --dry-run``).

For each training step: its optimizer steps, the batch per process and in all (under ``torchrun``
every process takes ``batch_size`` images: N processes train at N times the profile's batch), the
crop, and the peak memory of one training step measured at the real shapes. On a CPU the estimate
is the bytes that one image's forward pass keeps for backward (counted through
``torch.autograd.graph.saved_tensors_hooks``) times the batch, plus the parameters, their gradients
and SGD's momentum buffers; on a GPU it is ``torch.cuda.max_memory_allocated`` of one real step at the
full batch. Nothing is trained and no weights are read (the networks are built randomly initialised).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from esol_lib.data.voc import SPLIT_DIR, read_classes, read_split
from esol_lib.runtime.config import Config
from esol_lib.runtime.errors import DatasetError

__all__ = ["PlannedStep", "plan_pipeline", "plan_table"]

#: Classes when the data root is not there yet (the profile's dataset).
DEFAULT_CLASSES = {"coco14": 80}


@dataclass
class PlannedStep:
    """One training step of the pipeline, as :func:`plan_pipeline` measured it."""

    name: str
    steps: int | None  # None: epochs × images / batch with the images unknown
    epochs: int | None
    batch: int  # per process
    world_size: int
    crop: int
    parameters: int
    trainable: int
    peak_bytes: int
    measured_on: str  # "cpu estimate" or "cuda"

    @property
    def global_batch(self) -> int:
        return self.batch * self.world_size


def _images(cfg: Config, split: str) -> int | None:
    try:
        return len(read_split(cfg.data.root, split))
    except (DatasetError, OSError):
        return None


def _num_classes(cfg: Config) -> int:
    try:
        return len(read_classes(cfg.data.root))
    except (DatasetError, OSError):
        return DEFAULT_CLASSES.get(cfg.profile, 20)


def _steps(max_steps: int | None, epochs: int | None, images: int | None, global_batch: int) -> int | None:
    if max_steps:
        return max_steps
    if epochs and images:
        return epochs * (images // global_batch)
    return None


def _saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages one forward pass saves for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def _measure(
    model: torch.nn.Module, trainable: list[torch.nn.Parameter], loss: Callable, crop: int, batch: int, momentum: bool
) -> tuple[int, str]:
    """Peak bytes of one training step: measured on CUDA when there is one, else estimated."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    params += sum(b.numel() * b.element_size() for b in model.buffers())
    state = sum(p.numel() * p.element_size() for p in trainable) * (2 if momentum else 1)  # grads (+ momentum)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        model.to(device)
        torch.cuda.reset_peak_memory_stats(device)
        x = torch.randn(batch, 3, crop, crop, device=device)
        out = loss(model, x)
        out.backward()
        peak = torch.cuda.max_memory_allocated(device)
        model.to("cpu")
        return int(peak + sum(p.numel() * p.element_size() for p in trainable) * momentum), "cuda"
    x = torch.randn(1, 3, crop, crop)
    activations = _saved_bytes(lambda: loss(model, x))
    return int(params + state + activations * batch), "cpu estimate"


def plan_pipeline(cfg: Config, world_size: int | None = None) -> list[PlannedStep]:
    """The training steps of ``cfg``'s pipeline with their lengths, batches and measured memory."""
    from esol_lib.models import build_backbone, build_classifier
    from esol_lib.models.boundary import BoundaryNet
    from esol_lib.models.deeplab import build_deeplab
    from esol_lib.models.esol import ESOLModel

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    k = _num_classes(cfg)
    train_images = _images(cfg, cfg.data.train_split)
    cam_images = _images(cfg, cfg.data.cam_split)
    random_model = dataclasses.replace(cfg.model, pretrained=None)
    out: list[PlannedStep] = []

    def add(name, model, trainable, loss, crop, batch, max_steps, epochs, images, momentum) -> None:
        with torch.random.fork_rng(devices=[]):
            peak, where = _measure(model, trainable, loss, crop, batch, momentum > 0)
        out.append(
            PlannedStep(
                name,
                _steps(max_steps, epochs, images, batch * world),
                None if max_steps else epochs,
                batch,
                world,
                crop,
                sum(p.numel() for p in model.parameters()),
                sum(p.numel() for p in trainable),
                peak,
                where,
            )
        )

    tc = cfg.train_cam
    classifier = build_classifier(random_model, k).train()
    labels = torch.ones(1, k)

    def classify(m, x):
        return F.binary_cross_entropy_with_logits(m(x), labels.expand(x.shape[0], -1).to(x.device))

    trainable = [p for p in classifier.parameters() if p.requires_grad]
    add("train-cam", classifier, trainable, classify, tc.crop_size, tc.batch_size, tc.max_steps, tc.epochs,
        train_images, tc.momentum)  # fmt: skip
    for stage, sc in (("expand", cfg.expansion), ("shrink", cfg.shrinkage)):
        esol = ESOLModel(build_classifier(random_model, k), cfg.expansion, cfg.shrinkage).train()
        params = esol.stage_parameters("expansion" if stage == "expand" else "shrinkage")

        def esol_loss(m, x):
            return m(x).sum()

        add(stage, esol, params, esol_loss, tc.crop_size, sc.batch_size, sc.max_steps, None, train_images, sc.momentum)
    ic = cfg.irn
    boundary = BoundaryNet(build_backbone(cfg.model.backbone, cfg.model.strides, pretrained=None)).train()

    def edge_loss(m, x):
        return m(x).sum()

    add("train-irn", boundary, list(boundary.trainable_parameters()), edge_loss, ic.crop_size, ic.batch_size,
        ic.max_steps, ic.epochs, cam_images, 1e-4)  # fmt: skip
    sg = cfg.seg
    deeplab = build_deeplab(sg, k + 1, pretrained=None).train()

    def seg_loss(m, x):
        return m(x).sum()

    add("train-seg", deeplab, [p for p in deeplab.parameters() if p.requires_grad], seg_loss, sg.crop_size,
        sg.batch_size, sg.max_steps, None, train_images, sg.momentum)  # fmt: skip
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def plan_table(steps: list[PlannedStep], cfg: Config) -> str:
    """The plan as a plain-text table (what ``esol pipeline --dry-run`` prints)."""
    world = steps[0].world_size if steps else 1
    lines = [
        f"profile {cfg.profile}: {world} process(es); data {cfg.data.root or '(not set)'}"
        + ("" if Path(cfg.data.root or "/nonexistent", SPLIT_DIR).is_dir() else " (not found: lengths from max_steps)"),
        f"{'step':<10} {'iterations':>11} {'batch/proc':>10} {'global':>7} {'crop':>5} "
        f"{'params':>8} {'trained':>8} {'peak memory':>12}  measured",
    ]
    for s in steps:
        iters = str(s.steps) if s.steps is not None else f"{s.epochs} epochs"
        lines.append(
            f"{s.name:<10} {iters:>11} {s.batch:>10} {s.global_batch:>7} {s.crop:>5} "
            f"{s.parameters / 1e6:>7.1f}M {s.trainable / 1e6:>7.1f}M {_gib(s.peak_bytes):>12}  {s.measured_on}"
        )
    lines.append(
        "make-cam, refine and eval-* run without gradients; a card that fits the largest step above fits them. "
        "The cpu estimate leaves out the allocator's and cuDNN's workspace: keep a margin."
    )
    return "\n".join(lines)
