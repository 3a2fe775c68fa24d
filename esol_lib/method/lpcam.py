"""LPCAM: class activation maps from local prototypes of the foreground and of its context, training-free.

Chen, Z., Sun, Q., "Extracting Class Activation Maps from Non-Discriminative Features as well",
CVPR 2023 (arXiv:2303.10334); public code ``zhaozhengChen/LPCAM``. A CAM scores a pixel by one
weight vector per class, so it lights up the few most discriminative parts. LPCAM replaces that
vector by several *local prototypes* of the class, found by clustering the features a trained
classifier gives on the training images, so that non-discriminative parts of an object (which form
their own clusters) are scored as well; prototypes of the object's usual context are subtracted.

Three passes over a trained classifier, nothing is trained:

1. **Features.** For each training image and each class ``c`` it is labelled with, split the pixels
   of the feature map by that class's ordinary CAM ``M_c`` (Eq. (2), max-normalised, brought to the
   feature map's size by nearest-neighbour resampling): foreground ``M_c > τ`` (τ = 0.1) and context
   ``M_c < τ`` (everything else of that image, other objects included). Pixels with ``M_c = τ``
   exactly fall in neither set (the public code's two strict comparisons).
2. **Prototypes.** Cluster each class's foreground features, and separately its context features,
   by cosine k-means into 12 clusters (:func:`cosine_kmeans`). Score a centre ``u`` with the
   classifier: ``p_c(u) = softmax_k(w_k^T u)_c``, the softmax over the K classes of the centre's
   logits, read at class c. Keep foreground centres with ``p_c > 0.9`` and context centres with
   ``0.05 < p_c < 0.9`` (:func:`select_prototypes`).
3. **Maps.** For a feature ``f`` at a pixel, with foreground prototypes ``P_c`` and context
   prototypes ``Q_c``::

       L_c(f) = ReLU( 1/|P_c| Σ_{p ∈ P_c} cos(f, p)  −  1/|Q_c| Σ_{q ∈ Q_c} cos(f, q) )

   (without the second term when ``Q_c`` is empty). At each of IRN's scales ``f`` is the feature of
   the image plus that of its horizontal flip (flipped back); the scales' maps are upsampled, added
   and divided by their maximum, like Eq. (2). Since ``cos(f, p) = f̂ · p̂`` the mean of
   cosines is ``f̂ · mean_p p̂``, so ``L_c`` is a bias-free 1x1 convolution of the L2-normalised
   feature map with ``v_c = mean_p p̂ − mean_q q̂`` (:func:`lpcam_weight`): LPCAM is a CAM with
   ``w_c`` replaced by ``v_c`` and ``F`` by ``F / ||F||``.

Which feature map. The public code clusters ``stage4`` of its ResNet-50 (``net/resnet50_cam.py``,
``Net_CAM`` / ``Net_Feature``), which in IRN's classifier is the map the classifier is applied to
(GAP then the bias-free 1x1 ``classifier``); it scores centres with that classifier, which needs
the same channels. In this project's :class:`~esol_lib.models.classifier.CAMClassifier` that map is
the head's output ``F = model.head(model.features(x))`` (after the two extra convolutions and their
ReLUs): ``model.features`` may have other channels than ``classifier.weight`` and is not what the
classifier scores. So every function here takes ``F``.

Published settings, as checked in the public code (``step/make_lpcam.py`` unless said otherwise):

- features for clustering: ``save_feature`` runs ``Net_CAM`` once per image of ``voc12/train.txt``
  (1,464 images; ``VOC12ClassificationDataset`` with no resize, crop or flip: scale 1.0, no flip),
  keeping ``stage4`` (ReLU'd, not L2-normalised: the clustering's distance normalises);
- pixel sets: ``load_feature_select_and_cluster``: images whose label has the class; the mask is the
  class's ``high_res`` map from ``step/make_cam.py`` (IRN's multi-scale, flipped, max-normalised
  CAM), resampled by ``F.interpolate(..)`` with its default mode, nearest; ``mask > select_thres``
  and ``mask < select_thres`` with ``select_thres=0.1``;
- k-means: ``kmeans_pytorch.kmeans(X, num_clusters=12, distance='cosine', tol=5)`` (``environment.yml``
  pins ``kmeans-pytorch==0.3``): initial centres are 12 distinct points drawn uniformly with numpy's
  global, unseeded generator; points go to the centre of largest cosine; a centre becomes the
  *arithmetic mean of its members' raw features* (not normalised, so centres are not unit vectors);
  it stops when ``(Σ_j ||u_j − u_j^prev||)^2 < tol``, with no cap on iterations. An empty cluster gives
  a NaN centre in the ``v0.3`` tag of ``subhadarship/kmeans_pytorch`` (later versions redraw it from a
  random point); fewer points than clusters is an error there;
- filter: ``sim = torch.mm(cluster_centers, w.T)``, ``prob = F.softmax(sim, dim=1)``; foreground keeps
  ``prob[:, c] > class_thres`` (0.9), context keeps ``context_thres_low < prob[:, c] < context_thres``
  (0.05, 0.9), on the raw (mean) centres, whose norm sets the softmax's sharpness;
- maps: ``make_lpcam`` on ``voc12/train_aug.txt`` at scales (1.0, 0.5, 1.5, 2.0); at each scale the
  *features* of the image and of its flip are added, ``f(x) + flip(f(flip x))``, before the cosines
  (not the two maps); ``F.cosine_similarity`` per prototype, mean over prototypes, the context mean
  subtracted and ReLU'd only when the class has context prototypes; per-scale maps upsampled
  bilinearly, averaged over scales and divided by their maximum (no epsilon); only the image's
  ground-truth classes are computed. A class with no foreground prototype crashes it (``torch.cat``
  of an empty list); here it gives a zero map;
- thresholds (``run_sample.py``): seeds ``cam_eval_thres=0.3`` (``step/eval_cam.py`` reads the LPCAM
  folder); IRN ``conf_fg_thres=0.45``, ``conf_bg_thres=0.25`` (``step/cam_to_ir_label.py``);
  ``sem_seg_bg_thres=0.35`` (``step/make_sem_seg_labels.py``), ``beta=10``, ``exp_times=8``.
- MS COCO (``step_coco/make_lpcam.py``) uses other values: 20 clusters, ``select_thres=0.25``,
  context ``0 < p < 0.5``, features of 100 images drawn per class, and when no foreground centre
  passes ``0.9`` it keeps the best one (``fallback_best`` of :func:`select_prototypes`).

Where this module differs, and why: k-means is seeded (:func:`cosine_kmeans`: reproducible runs),
capped at ``iters`` iterations (bounded time), refills empty clusters deterministically and accepts
fewer points than clusters; :class:`PrototypeBank` may keep a uniform random subset of at most
``max_per_class`` features per class and set (bounded memory; the public code keeps every pixel);
and :func:`lpcam_cam_fn` plugs into :func:`~esol_lib.method.cam.multiscale_cam`, which sums scales
(the same after max normalisation) and adds ``eps`` to the maximum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esol_lib.method.cam import CamFn

__all__ = [
    "NUM_CLUSTERS",
    "CAM_THRESHOLD",
    "FG_MIN",
    "CTX_RANGE",
    "KMEANS_TOL",
    "SCALES",
    "SEED_THRESHOLD",
    "CONF_FG_THRESHOLD",
    "CONF_BG_THRESHOLD",
    "SEM_SEG_BG_THRESHOLD",
    "COCO_SETTINGS",
    "Prototypes",
    "PrototypeBank",
    "cosine_kmeans",
    "class_probability",
    "select_prototypes",
    "lpcam_weight",
    "lpcam_maps",
    "lpcam_cam_fn",
]

NUM_CLUSTERS = 12
"""Clusters per class and pixel set (``num_cluster``, ``step/make_lpcam.py``)."""
CAM_THRESHOLD = 0.1
"""Foreground ``M_c > 0.1``, context ``M_c < 0.1`` (``select_thres``)."""
FG_MIN = 0.9
"""A foreground centre is kept when ``p_c > 0.9`` (``class_thres``)."""
CTX_RANGE = (0.05, 0.9)
"""A context centre is kept when ``0.05 < p_c < 0.9`` (``context_thres_low``, ``context_thres``)."""
KMEANS_TOL = 5.0
"""k-means stops when the squared sum of centre shifts falls below this (``tol=5``), in raw feature units."""
SCALES = (1.0, 0.5, 1.5, 2.0)
"""Scales of the maps (``make_lpcam``'s ``VOC12ClassificationDatasetMSF``), each with its flip."""
SEED_THRESHOLD = 0.30
"""Background score of the seeds (``cam_eval_thres``, ``run_sample.py``)."""
CONF_FG_THRESHOLD = 0.45
"""IRN's confident-foreground threshold (``conf_fg_thres``)."""
CONF_BG_THRESHOLD = 0.25
"""IRN's confident-background threshold (``conf_bg_thres``)."""
SEM_SEG_BG_THRESHOLD = 0.35
"""Background score of the random-walk pseudo masks (``sem_seg_bg_thres``)."""
COCO_SETTINGS: Mapping[str, object] = {
    "num_clusters": 20,
    "cam_threshold": 0.25,
    "fg_min": 0.9,
    "ctx_range": (0.0, 0.5),
    "fallback_best": True,
    "images_per_class": 100,
}
"""The values ``step_coco/make_lpcam.py`` uses on MS COCO instead (its other thresholds are VOC's)."""


class Prototypes(NamedTuple):
    """A class's kept centres: ``fg`` (n, C) foreground and ``ctx`` (m, C) context prototypes; n or m may be 0."""

    fg: Tensor
    ctx: Tensor


def cosine_kmeans(x: Tensor, k: int, *, iters: int, seed: int, tol: float = KMEANS_TOL) -> Tensor:
    """Cosine k-means of the rows of ``x`` (N, C) → centres (k', C), ``k' = min(k, N')``, in the rules of
    ``kmeans_pytorch`` 0.3 that LPCAM calls.

    - Rows with zero norm have no direction: they are left out (N' counts the others).
    - Initial centres: ``k`` distinct rows drawn uniformly (``torch.randperm`` of a generator seeded
      with ``seed``): the same draw as the public code's, but reproducible.
    - A row goes to the centre of largest cosine similarity (ties: the first centre).
    - A centre becomes the arithmetic mean of its members' *raw* rows, as in ``kmeans_pytorch``: the
      centres are not unit vectors. Their direction is all the maps use; their norm matters to
      :func:`select_prototypes`, whose softmax was tuned on such means.
    - A cluster left empty takes the row that fits its assigned centre worst (lowest cosine), each empty
      cluster a different row, in cluster order: deterministic, and no NaN centre.
    - Stops after the update where ``(Σ_j ||u_j − u_j^prev||)^2 < tol`` (the public rule, ``tol`` in
      the features' own units: LPCAM's 5 was set for ResNet-50 ``stage4``), or after ``iters`` updates.
    - ``N' <= k``: every row is its own centre (``kmeans_pytorch`` raises there); ``N' = 0``: (0, C).

    Runs on ``x``'s device, in float32.
    """
    if x.ndim != 2:
        raise ValueError(f"cosine_kmeans: x must be (N, C), got {tuple(x.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"cosine_kmeans: k must be a positive integer, got {k!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"cosine_kmeans: iters must be a positive integer, got {iters!r}")
    x = x.detach().float()
    x = x[x.norm(dim=1) > 0]
    n = x.shape[0]
    if n <= k:
        return x.clone()
    gen = torch.Generator().manual_seed(int(seed))
    centres = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    unit = F.normalize(x, dim=1)
    for _ in range(iters):
        sim = unit @ F.normalize(centres, dim=1).T  # (N, k)
        best, assign = sim.max(dim=1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        new = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            worst = torch.argsort(best, stable=True)[: len(empty)]
            new[empty] = x[worst]
        shift = (new - centres).norm(dim=1).sum()
        centres = new
        if float(shift) ** 2 < tol:
            break
    return centres


def class_probability(centres: Tensor, classifier_weight: Tensor, cls: int) -> Tensor:
    """``p_c(u) = softmax_k(w_k^T u)_c`` of each centre ``u`` (n, C) → (n,): the public code's
    ``F.softmax(torch.mm(centers, w.T), dim=1)[:, c]``, with ``w`` the bias-free classifier (K, C, 1, 1)."""
    if not 0 <= cls < classifier_weight.shape[0]:
        raise ValueError(f"class_probability: class {cls} is outside 0..{classifier_weight.shape[0] - 1}")
    if centres.shape[0] == 0:  # nothing to score (a class with no pixels may have no channels either)
        return torch.zeros(0, device=centres.device)
    w = _classifier_matrix(classifier_weight, centres.shape[-1], "class_probability")
    logits = centres.detach().float() @ w.to(centres.device).T
    return F.softmax(logits, dim=1)[:, cls]


def select_prototypes(
    fg_centres: Tensor,
    ctx_centres: Tensor,
    classifier_weight: Tensor,
    cls: int,
    *,
    fg_min: float = FG_MIN,
    ctx_range: tuple[float, float] = CTX_RANGE,
    fallback_best: bool = False,
) -> Prototypes:
    """The centres LPCAM keeps for class ``cls`` (0-based, a row of ``classifier_weight``).

    Foreground centres with ``p_c > fg_min`` (the class owns them) and context centres with
    ``ctx_range[0] < p_c < ctx_range[1]`` (related to the class but not it: a low score is a centre
    the classifier ties to nothing, a high one is the object itself, missed by the CAM); both strict,
    as in the public code, ``p_c`` from :func:`class_probability`. With ``fallback_best`` (the MS COCO
    code's rule) a class whose foreground centres all fail keeps those of the highest ``p_c``.
    """
    lo, hi = ctx_range
    p_fg = class_probability(fg_centres, classifier_weight, cls)
    keep_fg = p_fg > fg_min
    if fallback_best and len(p_fg) and not bool(keep_fg.any()):
        keep_fg = p_fg > p_fg.max() - 1e-6
    p_ctx = class_probability(ctx_centres, classifier_weight, cls)
    keep_ctx = (p_ctx > lo) & (p_ctx < hi)
    return Prototypes(fg_centres[keep_fg.to(fg_centres.device)], ctx_centres[keep_ctx.to(ctx_centres.device)])


class PrototypeBank:
    """Collects each class's foreground and context features from batches, then clusters them (steps 1-2).

    Args:
        num_classes: K, the classifier's classes (no background).
        threshold: τ; a labelled class's pixels with CAM ``> τ`` are its foreground, ``< τ`` its context.
        max_per_class: at most this many feature rows kept per class and set (None: all, as the public
            code). Beyond it the bank keeps a uniform random subset of the rows seen: each row draws a
            key from a generator seeded with ``seed`` and the rows of the smallest keys stay, in the
            order they came. That is the same subset whatever the cap was reached at, and the same
            bank for the same batches in the same order. Memory: ``2·K·max_per_class·C`` floats
            (float32) at most, plus one batch.
        seed: seeds the subsampling keys.

    Rows are stored on the CPU, in float32.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        threshold: float = CAM_THRESHOLD,
        max_per_class: int | None = 10_000,
        seed: int = 0,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"PrototypeBank: num_classes must be a positive integer, got {num_classes!r}")
        if max_per_class is not None and (
            isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1
        ):
            raise ValueError(f"PrototypeBank: max_per_class must be a positive integer or None, got {max_per_class!r}")
        self.num_classes = num_classes
        self.threshold = float(threshold)
        self.max_per_class = max_per_class
        self._gen = torch.Generator().manual_seed(int(seed))
        self._rows: dict[tuple[int, int], Tensor] = {}
        self._keys: dict[tuple[int, int], Tensor] = {}
        self._seen: dict[tuple[int, int], int] = {}
        self._channels = 0

    def accumulate(self, f: Tensor, cams: Tensor, labels: Tensor) -> None:
        """Add one batch: features ``f`` (B, C, h, w), CAMs ``cams`` (B, K, H, W) in [0, 1], labels (B, K).

        ``f`` is the classifier's final feature map (``model.head(model.features(x))``, the image at
        scale 1.0, not flipped); ``cams`` are the ordinary CAMs of the same images (Eq. (2)), any
        size: they are resampled to (h, w) by nearest neighbour as the public code does. Only classes
        with label > 0.5 are read, and only their own CAM splits the image: foreground ``> τ``, context
        ``< τ`` (other objects included). Images are read in batch order, classes in index order.
        """
        if f.ndim != 4 or cams.ndim != 4 or labels.ndim != 2:
            raise ValueError(
                f"accumulate: expected f (B, C, h, w), cams (B, K, H, W), labels (B, K); got "
                f"{tuple(f.shape)}, {tuple(cams.shape)}, {tuple(labels.shape)}"
            )
        b, _, h, w = f.shape
        if cams.shape[:2] != (b, self.num_classes) or labels.shape != (b, self.num_classes):
            raise ValueError(
                f"accumulate: cams {tuple(cams.shape)} and labels {tuple(labels.shape)} must be (B={b}, "
                f"K={self.num_classes}, ...)"
            )
        if self._channels and f.shape[1] != self._channels:
            raise ValueError(f"accumulate: f has {f.shape[1]} channels, earlier batches had {self._channels}")
        self._channels = f.shape[1]
        f = f.detach().float()
        cams = cams.detach().float()
        if cams.shape[-2:] != (h, w):
            cams = F.interpolate(cams, size=(h, w), mode="nearest")
        rows = f.flatten(2).transpose(1, 2).cpu()  # (B, h*w, C)
        cams = cams.flatten(2).cpu()  # (B, K, h*w)
        present = labels.detach().cpu() > 0.5
        for i in range(b):
            for c in torch.nonzero(present[i]).flatten().tolist():
                m = cams[i, c]
                self._add((c, 0), rows[i][m > self.threshold])
                self._add((c, 1), rows[i][m < self.threshold])

    def _add(self, key: tuple[int, int], new: Tensor) -> None:
        self._seen[key] = self._seen.get(key, 0) + len(new)
        if len(new) == 0:
            return
        old = self._rows.get(key)
        rows = new if old is None else torch.cat([old, new])
        if self.max_per_class is None:
            self._rows[key] = rows
            return
        draws = torch.rand(len(new), generator=self._gen)
        keys = draws if old is None else torch.cat([self._keys[key], draws])
        if len(rows) > self.max_per_class:
            stay = torch.topk(keys, self.max_per_class, largest=False).indices.sort().values
            rows, keys = rows[stay], keys[stay]
        self._rows[key], self._keys[key] = rows, keys

    def features(self, cls: int) -> tuple[Tensor, Tensor]:
        """The kept rows of class ``cls``: (foreground (n, C), context (m, C)); (0, 0) tensors if none."""
        return self._get((cls, 0)), self._get((cls, 1))

    def seen(self, cls: int) -> tuple[int, int]:
        """How many foreground and context pixels of class ``cls`` were offered (before the cap)."""
        return self._seen.get((cls, 0), 0), self._seen.get((cls, 1), 0)

    def _get(self, key: tuple[int, int]) -> Tensor:
        if not 0 <= key[0] < self.num_classes:
            raise ValueError(f"PrototypeBank: class {key[0]} is outside 0..{self.num_classes - 1}")
        got = self._rows.get(key)
        return got if got is not None else torch.zeros(0, self._channels)

    def cluster(
        self,
        k: int = NUM_CLUSTERS,
        *,
        iters: int = 100,
        seed: int = 0,
        tol: float = KMEANS_TOL,
        device: torch.device | str | None = None,
    ) -> dict[int, tuple[Tensor, Tensor]]:
        """Step 2's k-means: class → (foreground centres, context centres), every class, on the CPU.

        Each class and set has its own k-means seed, ``(seed·K + c)·2 + set`` (set 0 foreground, 1
        context), so a class's centres do not depend on the other classes. ``device``: where the
        k-means runs (None: the CPU, where the rows are).
        """
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for c in range(self.num_classes):
            centres = []
            for kind, rows in enumerate(self.features(c)):
                run_seed = (int(seed) * self.num_classes + c) * 2 + kind
                x = rows if device is None else rows.to(device)
                centres.append(cosine_kmeans(x, k, iters=iters, seed=run_seed, tol=tol).cpu())
            out[c] = (centres[0], centres[1])
        return out

    def fit(
        self,
        classifier_weight: Tensor,
        k: int = NUM_CLUSTERS,
        *,
        iters: int = 100,
        seed: int = 0,
        tol: float = KMEANS_TOL,
        fg_min: float = FG_MIN,
        ctx_range: tuple[float, float] = CTX_RANGE,
        fallback_best: bool = False,
        device: torch.device | str | None = None,
    ) -> dict[int, Prototypes]:
        """Step 2 in full: :meth:`cluster`, then :func:`select_prototypes` per class → class → prototypes."""
        weight = classifier_weight.detach().float().cpu()
        return {
            c: select_prototypes(fg, ctx, weight, c, fg_min=fg_min, ctx_range=ctx_range, fallback_best=fallback_best)
            for c, (fg, ctx) in self.cluster(k, iters=iters, seed=seed, tol=tol, device=device).items()
        }


def lpcam_weight(prototypes: Mapping[int, tuple[Tensor, Tensor]], num_classes: int, channels: int) -> Tensor:
    """The 1x1 weights (K, C, 1, 1) of the maps: ``v_c = mean_p p̂ − mean_q q̂`` over class c's unit prototypes.

    ``f̂ · v_c`` is the mean cosine to the foreground prototypes minus the mean cosine to the context
    ones; no context prototypes: no second term (the public code skips it); no foreground prototype,
    or a class missing from ``prototypes``: ``v_c = 0``, a zero map. Classes are 0-based rows of the
    classifier.
    """
    weight = torch.zeros(num_classes, channels)
    for c, (fg, ctx) in prototypes.items():
        if not 0 <= c < num_classes:
            raise ValueError(f"lpcam_weight: class {c} is outside 0..{num_classes - 1}")
        for name, protos in (("foreground", fg), ("context", ctx)):
            if protos.ndim != 2 or (len(protos) and protos.shape[1] != channels):
                raise ValueError(
                    f"lpcam_weight: class {c}'s {name} prototypes are {tuple(protos.shape)}, expected (n, {channels})"
                )
        if len(fg) == 0:
            continue
        v = F.normalize(fg.detach().float().cpu(), dim=1).mean(0)
        if len(ctx):
            v = v - F.normalize(ctx.detach().float().cpu(), dim=1).mean(0)
        weight[c] = v
    return weight[:, :, None, None]


def lpcam_maps(f: Tensor, prototypes: Mapping[int, tuple[Tensor, Tensor]], num_classes: int) -> Tensor:
    """Raw LPCAM maps (B, K, h, w) of a feature map ``f`` (B, C, h, w): mean cosine similarity to each
    class's foreground prototypes minus mean cosine similarity to its context prototypes, before the
    ReLU (:func:`~esol_lib.method.cam.multiscale_cam` applies it per scale). A pixel whose feature is
    zero scores 0. See :func:`lpcam_weight` for the rules per class."""
    if f.ndim != 4:
        raise ValueError(f"lpcam_maps: f must be (B, C, h, w), got {tuple(f.shape)}")
    weight = lpcam_weight(prototypes, num_classes, f.shape[1]).to(device=f.device, dtype=f.dtype)
    return F.conv2d(F.normalize(f, dim=1), weight)


def lpcam_cam_fn(
    model: nn.Module,
    prototypes: Mapping[int, tuple[Tensor, Tensor]] | None = None,
    *,
    flip_features: bool = True,
    weight: Tensor | None = None,
) -> CamFn:
    """A ``cam_fn`` for :func:`~esol_lib.method.cam.multiscale_cam`: images (B, 3, H, W) → raw LPCAM maps (B, K, h, w).

    ``model`` has ``features`` and ``head`` (a :class:`~esol_lib.models.classifier.CAMClassifier` or
    an ESOL model) and a ``classifier`` whose weight (K, C, 1, 1) gives K and C. With
    ``flip_features`` (the public code's protocol) the map is computed from ``F(x) + flip(F(flip x))``,
    the features of the image and of its flip added, so it costs two passes: give ``multiscale_cam``
    ``flip=False``. Its ``flip=True`` would then add the map to its own flip-twin, which is the same
    map (the sum is symmetric in the two halves), so the result is unchanged up to rounding, at twice
    the cost. Without ``flip_features`` the flip is ``multiscale_cam``'s, of the maps. ``weight`` (K, C, 1, 1),
    :func:`lpcam_weight` of the prototypes, may be given instead of them (``checkpoints/lpcam.pt`` holds it).
    """
    classes, channels = model.classifier.weight.shape[:2]
    if (prototypes is None) == (weight is None):
        raise ValueError("lpcam_cam_fn: give either prototypes or their weight (lpcam_weight), not both")
    if weight is None:
        weight = lpcam_weight(prototypes, int(classes), int(channels))
    elif tuple(weight.shape) != (int(classes), int(channels), 1, 1):
        raise ValueError(f"lpcam_cam_fn: weight {tuple(weight.shape)} is not ({int(classes)}, {int(channels)}, 1, 1)")

    def cam_fn(x: Tensor) -> Tensor:
        f = model.head(model.features(x))
        if flip_features:
            f = f + model.head(model.features(x.flip(-1))).flip(-1)
        return F.conv2d(F.normalize(f, dim=1), weight.to(device=f.device, dtype=f.dtype))

    return cam_fn


def _classifier_matrix(classifier_weight: Tensor, channels: int, where: str) -> Tensor:
    """The classifier weight (K, C, 1, 1) (or (K, C)) as a float32 (K, C) matrix, checked against ``channels``."""
    w = classifier_weight.detach().float()
    if w.ndim == 4 and w.shape[2:] == (1, 1):
        w = w.flatten(1)
    if w.ndim != 2 or w.shape[1] != channels:
        raise ValueError(
            f"{where}: classifier weight {tuple(classifier_weight.shape)} does not match centres of {channels} channels"
        )
    return w
