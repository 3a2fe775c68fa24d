"""IRN's pixel pairs and their affinities (Ahn, Cho & Kwak, CVPR 2019): what the boundary branch learns from.

Written after IRN's ``misc/indexing.py`` and ``net/resnet50_irn.py``; :mod:`esol_lib.method.irn`
uses these for the random walk.

- **Pairs within a radius** (:func:`affinity_pairs`, :func:`path_points`): IRN's half-plane of
  offsets ``(dy, dx)``, each with the grid points of the segment from the source to the target;
  :func:`neighbourhood` is the walk's full set, both ways and ``(0, 0)``.
- **Pair labels** (:func:`affinity_labels`): same class → positive (background-background or
  foreground-foreground), different classes → negative, a 255 at either end → ignored.
- **Affinities** (:func:`path_affinities`): the affinity of a pair is ``1 − max boundary along its
  segment`` on the class boundary map of :class:`~esol_lib.models.boundary.BoundaryNet`, trained
  with IRN's class-balanced loss (:func:`affinity_loss`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from esol_lib.method.metrics import IGNORE

__all__ = [
    "affinity_labels",
    "affinity_loss",
    "affinity_pairs",
    "neighbourhood",
    "path_affinities",
    "path_points",
    "shifted",
]


@cache
def affinity_pairs(radius: int) -> tuple[tuple[int, int], ...]:
    """IRN's search directions: offsets ``(dy, dx)`` of the pixel pairs within ``radius``, one per pair.

    Half a disc (``PathIndex.get_all_dir_paths``): ``(0, 1) … (0, r-1)`` and every ``(dy, dx)`` with
    ``1 <= dy < r``, ``|dx| < r`` and ``dy² + dx² < r²``. The reverse pairs are implied (affinities
    are symmetric). ``radius=5`` gives 34 offsets, IRN's training ``radius=10`` gives 152.
    """
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 2:
        raise ValueError(f"irn.radius must be an integer >= 2 (pairs within it), got {radius!r}")
    dirs = [(0, x) for x in range(1, radius)]
    dirs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius**2]
    return tuple(dirs)


@cache
def path_points(offset: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The grid points whose boundary scores decide the affinity of the pair ``(0, 0)``–``offset``.

    IRN's rule: every point ``(y, x)`` in the segment's bounding box whose distance to the line
    through both ends is below one pixel, target first; both ends included.
    """
    dy, dx = offset
    length_sq = dy * dy + dx * dx
    if length_sq == 0:
        raise ValueError("a pair offset must not be (0, 0)")
    ys = range(min(0, dy), max(0, dy) + 1)
    xs = range(min(0, dx), max(0, dx) + 1)
    points = [(y, x) for y in ys for x in xs if (dy * x - dx * y) ** 2 / length_sq < 1]
    points.sort(key=lambda p: -abs(p[0]) - abs(p[1]))
    return tuple(points)


def neighbourhood(radius: int) -> list[tuple[int, int]]:
    """All offsets of the random walk's neighbourhood: the pairs both ways and ``(0, 0)``, sorted.

    Sorted lexicographically, which is also the column order of every row of the row-major
    transition matrix (a valid target ``(y + dy, x + dx)`` has index ``(y + dy)·w + x + dx``).
    """
    pairs = affinity_pairs(radius)
    return sorted(set(pairs) | {(-dy, -dx) for dy, dx in pairs} | {(0, 0)})


def shifted(t: Tensor, dy: int, dx: int, fill: float | int) -> Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]``; ``fill`` where that lies outside ``t``."""
    h, w = t.shape[-2:]
    out = torch.full_like(t, fill)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h - max(dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w - max(dx, 0))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[..., yd, xd] = t[..., ys, xs]
    return out


def affinity_labels(label: np.ndarray | Tensor, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pair labels of an IR label map ``(h, w)`` or ``(B, h, w)`` at the boundary map's resolution.

    Returns boolean ``(…, P, h, w)`` masks ``bg_pos, fg_pos, neg`` for the pairs
    ``(y, x)``–``(y + dy, x + dx)`` of :func:`affinity_pairs` (IRN's ``GetAffinityLabelFromIndices``):
    both labels equal and 0 → ``bg_pos``; equal and foreground → ``fg_pos``; different → ``neg``;
    a 255 at either end, or a target outside the map → none of them.
    """
    lab = torch.as_tensor(np.asarray(label) if not isinstance(label, Tensor) else label).long()
    if lab.ndim not in (2, 3):
        raise ValueError(f"affinity_labels: label must be (h, w) or (B, h, w), got {tuple(lab.shape)}")
    bg, fg, neg = [], [], []
    src_ok = lab != IGNORE
    for dy, dx in affinity_pairs(radius):
        dst = shifted(lab, dy, dx, IGNORE)
        valid = src_ok & (dst != IGNORE)
        same = lab == dst
        bg.append(valid & same & (lab == 0))
        fg.append(valid & same & (lab > 0))
        neg.append(valid & ~same)
    dim = lab.ndim - 2
    return torch.stack(bg, dim), torch.stack(fg, dim), torch.stack(neg, dim)


def _path_keys(padded: Tensor, caller: str) -> Tensor:
    """One int64 key per padded pixel, ``float32 bits << 32 | flat position``: the max of keys is the
    arg-max of the scores (non-negative floats order like their bits), later pixel on ties."""
    values = padded.detach().float().contiguous()  # keys in float32; values gathered in the input's dtype
    if bool((values < 0).any()) or bool(torch.isnan(values).any()):
        raise ValueError(f"{caller}: boundary scores must lie in [0, 1] (no NaN)")
    position = torch.arange(values.numel(), dtype=torch.int64, device=values.device).view(values.shape)
    return (values.view(torch.int32).to(torch.int64) << 32) | position


def _path_argmax(key: Tensor, offset: tuple[int, int], margin: int, out: Tensor) -> Tensor:
    """``out`` ← the flat position of the max score on the path of ``offset`` from every pixel (in place)."""
    h, w = out.shape[-2:]
    (py, px), *rest = path_points(offset)
    out.copy_(key[..., py : py + h, margin + px : margin + px + w])
    for py, px in rest:
        torch.maximum(out, key[..., py : py + h, margin + px : margin + px + w], out=out)
    return out.bitwise_and_(0xFFFFFFFF)


def path_affinities(boundary: Tensor, radius: int) -> Tensor:
    """Affinity of every pair: ``1 − max boundary along its path`` → ``(…, P, h, w)``.

    ``boundary`` is ``(h, w)`` or ``(B, h, w)`` in ``[0, 1]``. As in IRN the map is padded with
    boundary 1, so a pair whose target lies outside the map gets affinity 0. The gradient reaches
    only the arg-max point of each path, as with ``torch.max`` (IRN's ``max`` over gathered path
    points).

    How: the arg-max is found without autograd on one int64 key per padded pixel
    (:func:`_path_keys`), by a running in-place ``maximum`` over the path's shifted views
    (:func:`_path_argmax`); then the boundary values are gathered once at those
    positions with autograd. This is faster than stacking every path's points and taking their
    max, because the backward pass is one scatter instead of one padded-size gradient per path
    point (thousands of them at IRN's training radius). Ties between equal values
    go to the later pixel in memory order (``torch.max`` takes the first point of the path); the
    affinities are the same, and only a gradient split between exactly equal unsaturated scores
    can differ. The gather is ``Tensor.gather``, whose CPU backward sums in a fixed order;
    indexing (``flat[index]``) accumulates its backward in parallel threads, which made two runs'
    IRN checkpoints differ in their last bits.
    """
    if boundary.ndim not in (2, 3):
        raise ValueError(f"path_affinities: boundary must be (h, w) or (B, h, w), got {tuple(boundary.shape)}")
    m = radius - 1
    padded = F.pad(boundary, (m, m, 0, m), value=1.0)
    flat = padded.reshape(-1)
    pairs = affinity_pairs(radius)
    with torch.no_grad():
        key = _path_keys(padded, "path_affinities")
        best = torch.empty((len(pairs), *boundary.shape), dtype=torch.int64, device=flat.device)
        for p, offset in enumerate(pairs):
            _path_argmax(key, offset, m, best[p])
        index = best.reshape(-1)
    aff = 1.0 - flat.gather(0, index).view(best.shape)  # gather: its CPU backward is deterministic, indexing's is not
    return aff.movedim(0, boundary.ndim - 2)


def affinity_loss(boundary: Tensor, label: Tensor, radius: int, eps: float = 1e-5) -> tuple[Tensor, dict[str, float]]:
    """IRN's class-balanced affinity loss (``train_irn.py``) of boundary maps ``(B, h, w)`` in ``[0, 1]``.

    With ``a`` the pair affinities (:func:`path_affinities`) and the pair labels of ``label``
    (``(B, h, w)``, :func:`affinity_labels`)::

        L_bg  = mean over bg_pos pairs of −log(a)         L_fg = mean over fg_pos pairs of −log(a)
        L_neg = mean over neg pairs of −log(1 − a)
        L     = ((L_bg + L_fg) / 2 + L_neg) / 2

    Computed pair by pair in one fused pass (:class:`_AffinityLoss`), with the same arg-max rule
    and gradient as :func:`path_affinities` and :func:`affinity_labels` (a test holds them equal).
    Stacking every pair's affinities and labels at IRN's training radius makes ``(B, 152, h, w)``
    tensors that stream through memory a dozen times, forward and backward; one pair's
    ``(B, h, w)`` slice stays in the processor's cache, which makes the loss more than twice as fast on a
    CPU. Returns the loss and the three terms (floats, for the log).
    """
    if boundary.shape != label.shape or boundary.ndim != 3:
        raise ValueError(
            f"affinity_loss: boundary {tuple(boundary.shape)} and label {tuple(label.shape)} must both be (B, h, w)"
        )
    loss, parts = _AffinityLoss.apply(boundary, label, radius, eps)
    bg, fg, ng = parts.tolist()
    return loss, {"bg_pos": bg, "fg_pos": fg, "neg": ng}


class _AffinityLoss(torch.autograd.Function):
    """:func:`affinity_loss` forward and backward, one pair ``(dy, dx)`` at a time.

    Per pair, without autograd: the arg-max position of every path (:func:`path_affinities`' int64
    keys), the affinity there, the pair labels (:func:`affinity_labels`' rules), each term's
    sum of logs and count, and each term's gradient sum ``Σ 1/(a + eps)`` (or ``1/(1 + eps − a)``)
    scattered onto the arg-max positions. The backward pass scales the three scattered sums by the
    terms' weights and counts. The sums of logs run in float64, the gradient sums in float32: closer
    to the float64 definition than the stacked formulation in float32 (a test holds it to 1e-5).
    """

    @staticmethod
    def forward(ctx, boundary: Tensor, label: Tensor, radius: int, eps: float) -> tuple[Tensor, Tensor]:
        m = radius - 1
        h, w = boundary.shape[-2:]
        padded = F.pad(boundary.detach().float(), (m, m, 0, m), value=1.0).contiguous()
        key = _path_keys(padded, "affinity_loss")
        flat = padded.view(-1)
        src = label.long()
        dst_all = F.pad(src, (m, m, 0, m), value=IGNORE)  # a target outside the map is ignored
        src_ok = src != IGNORE
        src_term = torch.where(src == 0, 1, torch.where(src_ok, 2, 0))  # bg_pos 1, fg_pos 2 when the ends agree
        size = flat.numel()
        sums = torch.zeros(4, dtype=torch.float64)
        counts = torch.zeros(4, dtype=torch.int64)
        scattered = torch.zeros(4 * size, dtype=torch.float32, device=flat.device)  # one row per term, row 0 unused
        best = torch.empty(boundary.shape, dtype=torch.int64, device=flat.device)
        for dy, dx in affinity_pairs(radius):
            _path_argmax(key, (dy, dx), m, best)
            aff = 1.0 - flat.gather(0, best.view(-1))
            dst = dst_all[..., dy : dy + h, m + dx : m + dx + w].reshape(-1)
            term = torch.where(src.view(-1) == dst, src_term.view(-1), 3 * (src_ok.view(-1) & (dst != IGNORE)))
            x = torch.where(term == 3, 1.0 + eps - aff, aff + eps)
            sums += torch.bincount(term, weights=torch.log(x).double(), minlength=4)
            counts += torch.bincount(term, minlength=4)
            scattered.scatter_add_(0, term * size + best.view(-1), x.reciprocal())
        sums, counts, scattered = sums[1:], counts[1:], scattered.view(4, size)[1:]
        parts = -sums / (counts + eps)
        loss = ((parts[0] + parts[1]) / 2 + parts[2]) / 2
        ctx.save_for_backward(scattered, counts)
        ctx.geometry = (padded.shape, h, w, m, eps, boundary.dtype)
        ctx.mark_non_differentiable(parts)
        return loss.to(boundary.dtype), parts.to(boundary.dtype)

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_parts: Tensor) -> tuple[Tensor | None, None, None, None]:
        scattered, counts = ctx.saved_tensors
        shape, h, w, m, eps, dtype = ctx.geometry
        # d a / d boundary = −1 at the arg-max point; d L / d a: −1/(4 n_bg (a+eps)), −1/(4 n_fg (a+eps)),
        # +1/(2 n_neg (1+eps−a))
        weights = torch.tensor([0.25, 0.25, -0.5], dtype=torch.float64) / (counts + eps)
        grad = (weights[:, None] * scattered).sum(0).view(shape)[..., :h, m : m + w]
        return (grad * grad_loss.double()).to(dtype), None, None, None
