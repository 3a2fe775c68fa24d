"""IRN's semantic half (Ahn, Cho & Kwak, CVPR 2019): the refinement that turns CAMs into pseudo masks (§3.4).

ESOL produces its final localization maps with the Shrinkage model and "obtain[s] our final pseudo
ground-truths using IRN [1] … to refine the coarse map M" (§3.4). This module is that refinement,
written after IRN's public code (``step/cam_to_ir_label.py``, ``net/resnet50_irn.py``,
``step/train_irn.py``, ``misc/indexing.py``, ``step/make_sem_seg_labels.py``); the instance half
(displacement field) is out of scope.

1. **Inter-pixel relation labels** (:func:`ir_labels`): confident foreground from the CAMs with a
   high background score, confident background with a low one, both refined by DenseCRF; pixels
   where the two disagree are ignored (255).
2. **Pairs within a radius** (:func:`affinity_pairs`, :func:`path_points`): IRN's half-plane of
   offsets ``(dy, dx)``, each with the grid points of the segment from the source to the target.
   :func:`affinity_labels` labels every pair: same class → positive (background-background or
   foreground-foreground), different classes → negative, a 255 at either end → ignored.
3. **Class boundary map** (:class:`~esol_lib.models.boundary.BoundaryNet`): 1×1 conv + GroupNorm +
   ReLU on every level of a frozen backbone, upsampled to the first level's stride, concatenated,
   a 1×1 conv and a sigmoid.
   The affinity of a pair is ``1 − max boundary along its segment`` (:func:`path_affinities`),
   trained with IRN's class-balanced loss (:func:`affinity_loss`).
4. **Random walk** (:func:`transition_matrix`, :func:`random_walk`): affinities to the power β,
   symmetric, self-loops 1, normalised into a transition matrix that is applied ``2**exp_times``
   times to the CAMs (multiplied by ``1 − boundary`` first). IRN squares a *dense* ``N×N`` matrix;
   here the matrix stays sparse (CSR, ``N·(2P+1)`` entries at most for ``P`` pair offsets) and is
   applied to the score vectors ``2**exp_times`` times, which is the same product
   (``x·T^(2^t) = ((x·T)·T)…``) in ``O(N·P)`` memory.
5. **Pseudo masks** (:func:`pseudo_mask`): random walk at the boundary map's resolution, bilinear
   upsampling to the image, division by the global maximum, a constant background score
   ``sem_seg_bg_thres`` and an arg-max — exactly ``make_sem_seg_labels.py``. Note that IRN walks
   the *foreground* CAMs only (no background channel before the walk); the background enters after
   the walk as the constant ``sem_seg_bg_thres`` channel.

Label maps hold class ids (``keys``, 1-based), 0 for background and 255 for ignored pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from esol_lib.method.crf import crf_from_labelings

__all__ = [
    "IGNORE",
    "affinity_labels",
    "affinity_loss",
    "affinity_pairs",
    "ir_labels",
    "mask_from_scores",
    "neighbourhood",
    "path_affinities",
    "path_points",
    "pseudo_mask",
    "random_walk",
    "stride_ratio",
    "transition_matrix",
    "walked_scores",
]

IGNORE = 255

# ----------------------------------------------------------------------------- 1. IR labels


def ir_labels(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    conf_fg: float,
    conf_bg: float,
    crf_kwargs: Mapping[str, float] | None = None,
) -> np.ndarray:
    """IRN's inter-pixel relation label (``cam_to_ir_label.py``) of one image → ``(H, W)`` int64.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (the CRF's bilateral term).
        cams: ``(K, H, W)`` CAMs in ``[0, 1]`` of the image's classes.
        keys: their 1-based class ids.
        conf_fg: background score padded in front of the CAMs for *confident foreground*
            (IRN ``conf_fg_thres``, 0.30): a pixel is foreground only where a CAM beats it.
        conf_bg: the same for *confident background* (``conf_bg_thres``, 0.05).
        crf_kwargs: keyword arguments of :func:`esol_lib.method.crf.crf_from_labels` (the run's ``crf``).

    Each seed (arg-max over ``[conf, cams]``) is refined by DenseCRF; then, exactly as IRN::

        conf = fg_conf.copy(); conf[fg_conf == 0] = 255; conf[bg_conf + fg_conf == 0] = 0

    i.e. the class where the high-threshold seed says foreground, 0 where the low-threshold seed
    says background too, 255 (ignored) in between.
    """
    cams = np.asarray(cams, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cams.ndim != 3 or len(keys) != cams.shape[0]:
        raise ValueError(f"ir_labels: cams must be (K, H, W) with K = len(keys); got {cams.shape} and {len(keys)} keys")
    if np.asarray(image).shape[:2] != cams.shape[1:]:
        raise ValueError(f"ir_labels: image {np.asarray(image).shape[:2]} and CAMs {cams.shape[1:]} differ in size")
    if len(keys) == 0:  # no foreground class: everything is confident background
        return np.zeros(cams.shape[1:], np.int64)
    padded_keys = np.concatenate([[0], keys])
    kwargs = dict(crf_kwargs or {})

    def seed(bg_score: float) -> np.ndarray:
        return np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=bg_score).argmax(0)

    # both seeds through one CRF object: the image's pairwise lattices are built once
    fg_crf, bg_crf = crf_from_labelings(image, [seed(conf_fg), seed(conf_bg)], len(padded_keys), **kwargs)
    fg_conf, bg_conf = padded_keys[fg_crf], padded_keys[bg_crf]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = IGNORE
    conf[bg_conf + fg_conf == 0] = 0
    return conf.astype(np.int64)


# ----------------------------------------------------------------------------- 2. pairs and paths


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


def _shift(t: Tensor, dy: int, dx: int, fill: float | int) -> Tensor:
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
        dst = _shift(lab, dy, dx, IGNORE)
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


# ----------------------------------------------------------------------------- 3. strides (network: models/)


def stride_ratio(big: int, small: int) -> int:
    """The power-of-two stride between a map of size ``big`` and one of size ``small`` (ceil rounding)."""
    if small >= big:
        return 1
    return 2 ** max(0, round(math.log2(big / small)))


# ----------------------------------------------------------------------------- 4. random walk


def transition_matrix(boundary: Tensor, radius: int, beta: float) -> Tensor:
    """The random walk's transition matrix ``D⁻¹A`` as a sparse CSR tensor ``(N, N)``, ``N = h·w``.

    ``A[i, j] = aff(i, j)^β`` for the pairs within ``radius`` (both directions), ``A[i, i] = 1``,
    and ``D`` its row sums; zero entries are left out, so ``nnz <= N·(2P + 1)``. This is the
    transpose of IRN's column-normalised ``trans_mat`` (``to_transition_matrix``), so
    ``T @ v`` here is ``v @ trans_mat`` there. No ``N×N`` array is ever built: the rows are
    assembled from ``2P + 1`` shifted ``(h, w)`` maps.
    """
    if boundary.ndim != 2:
        raise ValueError(f"transition_matrix: boundary must be (h, w), got {tuple(boundary.shape)}")
    h, w = boundary.shape
    n = h * w
    aff = path_affinities(boundary.float(), radius).clamp_(0.0, 1.0).pow_(beta)  # (P, h, w), src-indexed
    forward = dict(zip(affinity_pairs(radius), aff))
    columns = []
    for dy, dx in neighbourhood(radius):
        if (dy, dx) == (0, 0):
            columns.append(torch.ones_like(boundary, dtype=aff.dtype))
        elif (dy, dx) in forward:  # pair computed at this source pixel
            columns.append(forward[(dy, dx)])
        else:  # reverse pair: computed at the target pixel (y + dy, x + dx)
            columns.append(_shift(forward[(-dy, -dx)], dy, dx, 0.0))
    values = torch.stack(columns, -1).reshape(n, -1)  # (N, 2P + 1), columns in CSR order
    values = values / values.sum(1, keepdim=True)
    keep = values > 0
    lin = torch.tensor([dy * w + dx for dy, dx in neighbourhood(radius)], device=boundary.device)
    rows = torch.arange(n, device=boundary.device)
    index_dtype = torch.int32 if n * keep.shape[1] < 2**31 else torch.int64
    col = (rows[:, None] + lin[None, :])[keep].to(index_dtype)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=boundary.device)
    crow[1:] = keep.sum(1).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow.to(index_dtype), col, values[keep], (n, n), check_invariants=False)


def random_walk(scores: Tensor, boundary: Tensor, radius: int = 5, beta: float = 10.0, exp_times: int = 8) -> Tensor:
    """IRN's ``propagate_to_edge``: ``(C, h, w)`` scores random-walked over the boundary map ``(h, w)``.

    The scores are multiplied by ``1 − boundary`` and propagated ``2**exp_times`` steps with
    :func:`transition_matrix` (IRN squares the dense matrix ``exp_times`` times; the product is
    the same). IRN walks the foreground CAMs only — no background channel is added before the
    walk (:func:`pseudo_mask` adds it after). Memory is ``O(h·w·P)``.
    """
    if scores.ndim != 3 or scores.shape[1:] != boundary.shape:
        raise ValueError(
            f"random_walk: scores must be (C, h, w) matching the boundary {tuple(boundary.shape)}, "
            f"got {tuple(scores.shape)}"
        )
    if exp_times < 0:
        raise ValueError(f"irn.exp_times must be >= 0, got {exp_times}")
    c, h, w = scores.shape
    trans = transition_matrix(boundary, radius, beta)
    v = (scores.float() * (1.0 - boundary.float())).reshape(c, h * w).t().contiguous()
    for _ in range(2**exp_times):
        v = trans @ v
    return v.t().reshape(c, h, w)


# ----------------------------------------------------------------------------- 5. pseudo masks


def _to_resolution(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Image-resolution CAMs ``(K, H, W)`` → the boundary map's ``size``, each class re-normalised to max 1.

    Area averaging stands in for IRN's stride-4 ``cam`` (the raw CAMs interpolated to the strided size
    and max-normalised, ``make_cam.py``).
    """
    if tuple(cams.shape[-2:]) == tuple(size):
        return cams
    small = F.interpolate(cams[None], size=size, mode="area")[0]
    return small / (small.flatten(1).max(1).values[:, None, None] + 1e-5)


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """IRN's ``F.interpolate(rw, scale_factor=stride)[..., :H, :W]`` for any power-of-two stride."""
    h, w = x.shape[-2:]
    s = stride_ratio(max(size), max(h, w))
    if s == 1 and (h, w) == tuple(size):
        return x
    up = F.interpolate(x[None], scale_factor=s, mode="bilinear", align_corners=False)[0]
    if up.shape[-2] < size[0] or up.shape[-1] < size[1]:
        up = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    return up[..., : size[0], : size[1]]


def walked_scores(
    cams: np.ndarray | Tensor, boundary: Tensor, *, radius: int = 5, beta: float = 10.0, exp_times: int = 8
) -> Tensor:
    """The foreground scores of :func:`pseudo_mask` before its background cut → ``(K, H, W)`` in ``[0, 1]``.

    ``cams`` are the image-resolution CAMs ``(K, H, W)``; ``boundary`` the image's boundary map
    ``(h, w)`` (:func:`boundary_map`). Steps: CAMs to the boundary map's resolution,
    :func:`random_walk`, bilinear upsampling to ``(H, W)``, division by the global maximum (over all
    classes and pixels, as IRN). Several background scores can then be tried on one walk.
    """
    cams_t = torch.as_tensor(
        np.asarray(cams) if not isinstance(cams, Tensor) else cams, dtype=torch.float32, device=boundary.device
    )
    if cams_t.ndim != 3:
        raise ValueError(f"walked_scores: cams must be (K, H, W); got {tuple(cams_t.shape)}")
    size = (cams_t.shape[1], cams_t.shape[2])
    if cams_t.shape[0] == 0:
        return cams_t
    small = _to_resolution(cams_t, (boundary.shape[0], boundary.shape[1]))
    rw = random_walk(small, boundary, radius=radius, beta=beta, exp_times=exp_times)
    up = _upsample(rw, size)
    return up / up.max().clamp_min(1e-12)


def mask_from_scores(scores: Tensor, keys: Sequence[int], bg_thres: float = 0.25) -> np.ndarray:
    """:func:`walked_scores` → pseudo mask ``(H, W)`` int64: a background channel of constant ``bg_thres``
    (``sem_seg_bg_thres``) in front, arg-max, class ids ``keys`` (0 for background)."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if scores.ndim != 3 or scores.shape[0] != len(keys):
        raise ValueError(
            f"mask_from_scores: scores must be (K, H, W) with K = len(keys); got "
            f"{tuple(scores.shape)} and {len(keys)} keys"
        )
    with_bg = F.pad(scores, (0, 0, 0, 0, 1, 0), value=bg_thres)
    pred = with_bg.argmax(0).cpu().numpy()
    return np.concatenate([[0], keys])[pred]


def pseudo_mask(
    cams: np.ndarray | Tensor,
    keys: Sequence[int],
    boundary: Tensor,
    *,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    bg_thres: float = 0.25,
) -> np.ndarray:
    """One image's pseudo mask ``(H, W)`` int64 (class ids, 0 background) — ``make_sem_seg_labels.py``.

    ``cams`` are the image-resolution CAMs ``(K, H, W)`` of classes ``keys``; ``boundary`` the image's
    boundary map ``(h, w)`` (:func:`boundary_map`): :func:`walked_scores` (walk, upsampling, global
    max), then :func:`mask_from_scores` (constant ``bg_thres`` background, arg-max, class ids).
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if np.ndim(cams) != 3 or np.shape(cams)[0] != len(keys):  # checked before the walk, not after it
        raise ValueError(
            f"pseudo_mask: cams must be (K, H, W) with K = len(keys); got {tuple(np.shape(cams))} and {len(keys)} keys"
        )
    scores = walked_scores(cams, boundary, radius=radius, beta=beta, exp_times=exp_times)
    return mask_from_scores(scores, keys, bg_thres)
