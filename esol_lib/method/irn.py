"""IRN's semantic half (Ahn, Cho & Kwak, CVPR 2019): the refinement that turns CAMs into pseudo masks (§3.4).

ESOL produces its final localization maps with the Shrinkage model and "obtain[s] our final pseudo
ground-truths using IRN [1] … to refine the coarse map M" (§3.4). This module is that refinement,
written after IRN's public code (``step/cam_to_ir_label.py``, ``net/resnet50_irn.py``,
``step/train_irn.py``, ``misc/indexing.py``, ``step/make_sem_seg_labels.py``); the instance half
(displacement field) is out of scope.

1. **Inter-pixel relation labels** (:func:`ir_labels`): confident foreground from the CAMs with a
   high background score, confident background with a low one, both refined by DenseCRF; pixels
   where the two disagree are ignored (255).
2. **Pairs and affinities** (:mod:`esol_lib.method.affinity`): every pair of pixels within a
   radius, its label from the IR labels, and its affinity ``1 − max boundary along its segment``
   on the class boundary map of :class:`~esol_lib.models.boundary.BoundaryNet` (1×1 conv +
   GroupNorm + ReLU on every level of a frozen backbone, upsampled, concatenated, a 1×1 conv and a
   sigmoid), trained with IRN's class-balanced loss.
3. **Random walk** (:func:`transition_matrix`, :func:`random_walk`): affinities to the power β,
   symmetric, self-loops 1, normalised into a transition matrix that is applied ``2**exp_times``
   times to the CAMs (multiplied by ``1 − boundary`` first). IRN squares a *dense* ``N×N`` matrix;
   here the matrix stays sparse (CSR, ``N·(2P+1)`` entries at most for ``P`` pair offsets) and is
   applied to the score vectors ``2**exp_times`` times, which is the same product
   (``x·T^(2^t) = ((x·T)·T)…``) in ``O(N·P)`` memory.
4. **Pseudo masks** (:func:`pseudo_mask`): random walk at the boundary map's resolution, bilinear
   upsampling to the image, division by the global maximum, a constant background score
   ``sem_seg_bg_thres`` and an arg-max — exactly ``make_sem_seg_labels.py``. Note that IRN walks
   the *foreground* CAMs only (no background channel before the walk); the background enters after
   the walk as the constant ``sem_seg_bg_thres`` channel.

Label maps hold class ids (``keys``, 1-based), 0 for background and 255 for ignored pixels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from esol_lib.method.affinity import affinity_pairs, neighbourhood, path_affinities, shifted
from esol_lib.method.crf import crf_from_labelings
from esol_lib.method.metrics import IGNORE
from esol_lib.runtime.config import CRFConfig

__all__ = [
    "ir_labels",
    "mask_from_scores",
    "pseudo_mask",
    "random_walk",
    "stride_ratio",
    "transition_matrix",
    "walked_scores",
]


# ----------------------------------------------------------------------------- 1. IR labels


def ir_labels(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    conf_fg: float,
    conf_bg: float,
    crf: CRFConfig | None = None,
) -> np.ndarray:
    """IRN's inter-pixel relation label (``cam_to_ir_label.py``) of one image → ``(H, W)`` int64.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (the CRF's bilateral term).
        cams: ``(K, H, W)`` CAMs in ``[0, 1]`` of the image's classes.
        keys: their 1-based class ids.
        conf_fg: background score padded in front of the CAMs for *confident foreground*
            (IRN ``conf_fg_thres``, 0.30): a pixel is foreground only where a CAM beats it.
        conf_bg: the same for *confident background* (``conf_bg_thres``, 0.05).
        crf: the CRF's parameters (the run's ``crf`` section; None: as it ships).

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

    def seed(bg_score: float) -> np.ndarray:
        return np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=bg_score).argmax(0)

    # both seeds through one CRF object: the image's pairwise lattices are built once
    fg_crf, bg_crf = crf_from_labelings(image, [seed(conf_fg), seed(conf_bg)], len(padded_keys), crf)
    fg_conf, bg_conf = padded_keys[fg_crf], padded_keys[bg_crf]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = IGNORE
    conf[bg_conf + fg_conf == 0] = 0
    return conf.astype(np.int64)


# ----------------------------------------------------------------------------- 2. strides (network: models/)


def stride_ratio(big: int, small: int) -> int:
    """The power-of-two stride between a map of size ``big`` and one of size ``small`` (ceil rounding)."""
    if small >= big:
        return 1
    return 2 ** max(0, round(math.log2(big / small)))


# ----------------------------------------------------------------------------- 3. random walk


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
            columns.append(shifted(forward[(-dy, -dx)], dy, dx, 0.0))
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


# ----------------------------------------------------------------------------- 4. pseudo masks


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
