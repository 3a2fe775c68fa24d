"""DenseCRF (Krähenbühl & Koltun, 2011) on pydensecrf: one function for every use in the pipeline.

- seed refinement and IRN's inter-pixel relation labels: unary from a *labelling*
  (:func:`crf_from_labels`, IRN's parameters);
- DeepLab's test-time post-processing: unary from *probabilities* (:func:`crf_from_probs`,
  DeepLab-v2's published parameters).

Every function takes one parameter object, :class:`~esol_lib.runtime.config.CRFConfig` (the run's
``crf`` section, whose defaults are the one list of the CRF's defaults), and keyword changes to it
(:func:`crf_params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from esol_lib.runtime.config import CRFConfig


def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels, unary_from_softmax
    except ImportError as err:  # pragma: no cover - pydensecrf2 is a hard dependency
        raise ImportError("DenseCRF needs pydensecrf: pip install pydensecrf2") from err
    return dcrf, unary_from_labels, unary_from_softmax


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"CRF image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[:2] != tuple(shape):
        raise ValueError(f"CRF image is {image.shape[:2]} but the scores/labels are {tuple(shape)}")
    return np.ascontiguousarray(image)


def _pairwise_crf(
    image: np.ndarray,
    n_labels: int,
    *,
    gauss_sxy: float,
    gauss_compat: float,
    bilateral_sxy: float,
    bilateral_srgb: float,
    bilateral_compat: float,
):
    """A DenseCRF2D with the image's two pairwise terms (their lattices built here, once)."""
    dcrf, _, _ = _import_densecrf()
    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_compat)
    return d


def _infer(d, unary: np.ndarray, n_labels: int, iterations: int, shape: tuple[int, int]) -> np.ndarray:
    """Mean-field inference from ``unary``; it starts from the unary alone, so one CRF object serves
    several unaries with the results of fresh ones."""
    d.setUnaryEnergy(np.ascontiguousarray(unary.astype(np.float32)))
    q = d.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, *shape)


def label_crf_settings(params: CRFConfig) -> dict[str, float]:
    """The fields of ``params`` that IRN's label CRF reads (:func:`crf_from_labelings`), by name: what a
    folder of IR labels or CRF seeds records as the CRF it was made with."""
    return {
        "gt_prob": params.gt_prob,
        "iterations": params.iterations,
        "gauss_sxy": params.gauss_sxy,
        "gauss_compat": params.gauss_compat,
        "bilateral_sxy": params.bilateral_sxy,
        "bilateral_srgb": params.bilateral_srgb,
        "bilateral_compat": params.bilateral_compat,
    }


def crf_params(params: CRFConfig | None = None, **changes: Any) -> CRFConfig:
    """The one CRF parameter object: ``params`` (default: the ``crf`` section as it ships) with ``changes``
    (:class:`~esol_lib.runtime.config.CRFConfig` field names, e.g. ``gt_prob=0.6``).

    Raises:
        TypeError: naming a change that is not a CRFConfig field.
    """
    params = CRFConfig() if params is None else params
    if not changes:
        return params
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(CRFConfig)})
    if unknown:
        raise TypeError(f"unknown CRF parameter(s) {', '.join(unknown)}; the fields of CRFConfig are the parameters")
    return dataclasses.replace(params, **changes)


def crf_from_labels(
    image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFConfig | None = None, **changes: Any
) -> np.ndarray:
    """Refine a labelling ``(H, W)`` with values in ``[0, n_labels)``; returns the refined ``(H, W)`` labels.

    IRN's ``crf_inference_label``: each pixel's label is trusted with probability ``gt_prob``; the
    parameters are :func:`crf_params` of ``params`` and ``changes``.
    """
    return crf_from_labelings(image, [labels], n_labels, params, **changes)[0]


def crf_from_labelings(
    image: np.ndarray,
    labelings: Sequence[np.ndarray],
    n_labels: int,
    params: CRFConfig | None = None,
    **changes: Any,
) -> list[np.ndarray]:
    """:func:`crf_from_labels` for several labellings of one image: the same results, with the image's work done once.

    The pairwise terms depend on the image alone, so their lattices are built once and each
    labelling only sets its unary (a seed at five thresholds, IRN's two confident seeds).
    """
    p = crf_params(params, **changes)
    if not 0 < p.gt_prob < 1:
        raise ValueError(f"gt_prob must lie in (0, 1), got {p.gt_prob}")
    labelings = [np.asarray(labels) for labels in labelings]
    for labels in labelings:
        if labels.ndim != 2:
            raise ValueError(f"CRF labels must be (H, W), got {labels.shape}")
        if labels.shape != labelings[0].shape:
            raise ValueError(f"CRF labellings of one image differ in size: {labels.shape} and {labelings[0].shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
            raise ValueError(f"CRF labels must lie in [0, {n_labels}), got [{labels.min()}, {labels.max()}]")
    if not labelings:
        return []
    image = _check_image(image, labelings[0].shape)
    _, unary_from_labels, _ = _import_densecrf()
    d = _pairwise_crf(
        image,
        n_labels,
        gauss_sxy=p.gauss_sxy,
        gauss_compat=p.gauss_compat,
        bilateral_sxy=p.bilateral_sxy,
        bilateral_srgb=p.bilateral_srgb,
        bilateral_compat=p.bilateral_compat,
    )
    out = []
    for labels in labelings:
        unary = unary_from_labels(labels.astype(np.int64).ravel(), n_labels, gt_prob=p.gt_prob, zero_unsure=False)
        out.append(_infer(d, unary, n_labels, p.iterations, labels.shape).argmax(0).astype(np.int64))
    return out


def crf_from_probs(image: np.ndarray, probs: np.ndarray, params: CRFConfig | None = None, **changes: Any) -> np.ndarray:
    """Refine class probabilities ``(K, H, W)`` (each pixel sums to 1); returns refined ``(K, H, W)``.

    DeepLab-v2's test-time CRF: the ``seg_*`` fields of :func:`crf_params` (DeepLab-v2's published
    parameters as they ship) and ``iterations`` mean-field steps.
    """
    p = crf_params(params, **changes)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3:
        raise ValueError(f"CRF probabilities must be (K, H, W), got {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1 + 1e-4:
        raise ValueError("CRF probabilities must be finite and lie in [0, 1]")
    if not np.allclose(probs.sum(0), 1.0, atol=1e-3):
        raise ValueError("CRF probabilities must sum to 1 over classes at every pixel (apply a softmax)")
    image = _check_image(image, probs.shape[1:])
    _, _, unary_from_softmax = _import_densecrf()
    unary = unary_from_softmax(np.clip(probs, 1e-8, 1.0))
    d = _pairwise_crf(
        image,
        probs.shape[0],
        gauss_sxy=p.seg_pos_xy_std,
        gauss_compat=p.seg_pos_w,
        bilateral_sxy=p.seg_bi_xy_std,
        bilateral_srgb=p.seg_bi_rgb_std,
        bilateral_compat=p.seg_bi_w,
    )
    return _infer(d, unary, probs.shape[0], p.iterations, probs.shape[1:])
