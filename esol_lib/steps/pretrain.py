"""``esol pretrain``: the proxy-ImageNet stage — a backbone pretrained on OpenMoji glyphs of non-VOC classes.

Every method in the paper starts from ImageNet features: a backbone that has learned to tell
apart a thousand classes, most of which are not VOC classes. On the emoji benchmark that role is
played by this stage. The backbone learns to name single OpenMoji glyphs of the classes in
:func:`~esol_lib.data.openmoji.other_glyphs` (about a thousand, none showing a VOC object or a
person), each rendered over a random texture with random scale, shift, flip, rotation and colour
jitter (:func:`~esol_lib.data.emoji.render_glyph_on_texture`). A global-average-pooled linear
layer is the classifier head; it is dropped, and only the backbone is saved, as a state dict
that ``model.pretrained`` reads exactly as it reads a ResNet's ImageNet file.

The network is pretrained at the strides the CAM classifier runs at (output stride 8). Its
glyphs are 35–64 px long; the scenes' objects are 51–115 px, which ``train_cam``'s 0.75–1.5×
rescaling brings within reach of that range — about the ImageNet-to-VOC scale gap.

The recipe (:class:`PretrainRecipe`) fixes the result: the weights file is named after a hash of
it and reused when it exists. The weights of the default recipe ship with the package
(:data:`SHIPPED_WEIGHTS`, ``model.pretrained: openmoji``) so the book does not pay for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from esol_lib.data.emoji import render_glyph_on_texture
from esol_lib.data.openmoji import other_glyphs
from esol_lib.models.backbone import OPENMOJI_WEIGHTS, build_backbone
from esol_lib.models.glyph import GlyphClassifier
from esol_lib.runtime.atomic import atomic_save, atomic_write_text
from esol_lib.runtime.errors import ConfigError

__all__ = [
    "PretrainRecipe",
    "pretrain_backbone",
    "recipe_fingerprint",
    "SHIPPED_WEIGHTS",
    "GlyphClassifier",
    "render_glyph_set",
    "ensure_openmoji_weights",
]

SHIPPED_WEIGHTS = OPENMOJI_WEIGHTS


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pretrained backbone.

    Attributes:
        backbone, strides: the architecture and strides (those of the ``cpu`` CAM classifier).
        size: render side in pixels.
        scale: glyph long side as a fraction of ``size``.
        renders_per_class: training renders drawn per class (flip and shift add more at train time).
        heldout_per_class: held-out renders per class, for top-1/top-5 accuracy.
        steps, batch_size, lr, weight_decay, warmup: AdamW with linear warm-up and cosine decay.
        label_smoothing: cross-entropy label smoothing.
        seed: seeds renders, initialisation and batches.
    """

    backbone: str = "small"
    strides: tuple[int, int, int, int] = (2, 2, 2, 1)
    size: int = 64
    scale: tuple[float, float] = (0.55, 1.0)
    renders_per_class: int = 28
    heldout_per_class: int = 2
    steps: int = 2600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 200
    label_smoothing: float = 0.1
    seed: int = 0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["strides"] = list(self.strides)
        d["scale"] = list(self.scale)
        return d


def recipe_fingerprint(recipe: PretrainRecipe) -> str:
    """A 12-hex-digit hash of the recipe and the glyph classes (same recipe and classes → same file)."""
    payload = json.dumps({"recipe": recipe.to_json(), "classes": list(other_glyphs())}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def render_glyph_set(
    classes: tuple[int, ...],
    per_class: int,
    size: int,
    scale: tuple[float, float],
    seed: int,
    stream: int,
    *,
    desc: str = "renders",
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` renders of every class: uint8 images (N, size, size, 3) and class indices (N,).

    Render ``j`` of class ``c`` is drawn from ``default_rng([seed, stream, c, j])``, so training
    (stream 0) and held-out (stream 1) renders never coincide and any render can be redrawn alone.
    """
    n = len(classes) * per_class
    images = np.empty((n, size, size, 3), np.uint8)
    targets = np.empty(n, np.int64)
    for idx in tqdm(range(n), desc=desc, unit="img", mininterval=2.0):
        c, j = divmod(idx, per_class)
        rng = np.random.default_rng([seed, stream, c, j])
        images[idx] = render_glyph_on_texture(rng, classes[c], size, scale)
        targets[idx] = c
    return images, targets


_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - _MEAN) / _STD


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random horizontal flip per image, and one shift of up to 1/8 of the side (reflect padding) per batch."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = x.shape[-1] // 8
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


@torch.no_grad()
def _accuracy(model: nn.Module, images: np.ndarray, targets: np.ndarray, batch: int = 256) -> tuple[float, float]:
    model.eval()
    top1 = top5 = 0
    for i in range(0, len(images), batch):
        logits = model(_to_input(images[i : i + batch]))
        t = torch.from_numpy(targets[i : i + batch])
        best = logits.topk(5, dim=1).indices
        top1 += int((best[:, 0] == t).sum())
        top5 += int((best == t[:, None]).any(dim=1).sum())
    model.train()
    return top1 / len(images), top5 / len(images)


def _lr_factor(step: int, recipe: PretrainRecipe) -> float:
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def pretrain_backbone(out: str | Path, recipe: PretrainRecipe | None = None, *, progress: bool = True) -> dict:
    """Train the proxy-ImageNet backbone of ``recipe`` and save it to ``out`` (a ``.pth`` state dict).

    Also writes ``out`` with the suffix ``.json``: the recipe, its fingerprint, the glyph classes'
    count, held-out top-1/top-5 accuracy and the wall time. Returns that card. An ``out`` whose card
    has the same fingerprint is kept and its card returned without training.
    """
    recipe = recipe or PretrainRecipe()
    if recipe.steps < 1 or recipe.batch_size < 1 or recipe.lr <= 0:
        raise ConfigError(f"pretrain: steps, batch size and lr must be positive (got {recipe})")
    out = Path(out)
    card_path = out.with_suffix(".json")
    fingerprint = recipe_fingerprint(recipe)
    if out.is_file() and card_path.is_file():
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            card = {}
        if card.get("fingerprint") == fingerprint:
            return card
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    classes = other_glyphs()
    start = time.time()
    train_x, train_y = render_glyph_set(
        classes, recipe.renders_per_class, recipe.size, recipe.scale, recipe.seed, 0, desc="pretrain renders"
    )
    held_x, held_y = render_glyph_set(
        classes, recipe.heldout_per_class, recipe.size, recipe.scale, recipe.seed, 1, desc="held-out renders"
    )
    backbone = build_backbone(recipe.backbone, list(recipe.strides))
    model = GlyphClassifier(backbone, len(classes))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
    )
    gen = torch.Generator().manual_seed(recipe.seed)
    order = torch.randperm(len(train_x), generator=gen)
    cursor = 0
    model.train()
    bar = tqdm(range(recipe.steps), desc="pretrain", unit="step", disable=not progress, mininterval=2.0)
    for step in bar:
        if cursor + recipe.batch_size > len(order):
            order, cursor = torch.randperm(len(train_x), generator=gen), 0
        idx = order[cursor : cursor + recipe.batch_size].numpy()
        cursor += recipe.batch_size
        x = _augment(_to_input(train_x[idx]), gen)
        loss = F.cross_entropy(model(x), torch.from_numpy(train_y[idx]), label_smoothing=recipe.label_smoothing)
        if not torch.isfinite(loss):
            raise ConfigError(f"pretrain: the loss became {loss.item()} at step {step}; lower the learning rate")
        for group in opt.param_groups:
            group["lr"] = recipe.lr * _lr_factor(step, recipe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    top1, top5 = _accuracy(model, held_x, held_y)
    card = {
        "fingerprint": fingerprint,
        "recipe": recipe.to_json(),
        "classes": len(classes),
        "train_renders": int(len(train_x)),
        "heldout_renders": int(len(held_x)),
        "heldout_top1": top1,
        "heldout_top5": top5,
        "epochs": recipe.steps * recipe.batch_size / len(train_x),
        "seconds": round(time.time() - start, 1),
        "threads": torch.get_num_threads(),
    }
    atomic_save(backbone.state_dict(), out)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    return card


def ensure_openmoji_weights(cfg, *, progress: bool = True) -> None:
    """Train the shipped backbone when a config asks for ``openmoji`` weights and the file is missing.

    The weights ship with the package; a checkout without them (deleted, or stripped by a packager)
    pays the pretraining once (about ten minutes on 2 cores) instead of failing.
    """
    wanted = cfg.model.pretrained == "openmoji" or cfg.seg.pretrained == "openmoji"
    if wanted and not SHIPPED_WEIGHTS.is_file():
        print(f"the proxy-ImageNet backbone {SHIPPED_WEIGHTS} is missing: training it once (esol pretrain)", flush=True)
        pretrain_backbone(SHIPPED_WEIGHTS, progress=progress)
