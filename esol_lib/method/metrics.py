"""Segmentation metrics: one confusion matrix per split, mIoU, foreground precision/recall/F1,
the background-threshold sweep that scores CAM seeds (the protocol of IRN and the paper), and a
threshold-free localization AP of the maps themselves (:func:`localization_ap`).

Label maps hold class indices: 0 = background, 1..C = foreground classes, 255 = void (ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esol_lib.data.palette import VOID
from esol_lib.runtime.atomic import atomic_write_text

IGNORE = VOID  # VOC's void label: never scored, and ignored by IRN's pair labels
AP_BINS = 1000  # score resolution of the localization AP's histograms (scores are in [0, 1])


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 confusion matrix (rows = ground truth, columns = prediction), void ignored.

    ``num_classes`` counts background too (K = C + 1). Predictions outside ``[0, K)`` are an error.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size and (g.max() >= num_classes or g.min() < 0):
        raise ValueError(f"ground truth has labels outside [0, {num_classes}) besides {IGNORE}")
    if p.size and (p.max() >= num_classes or p.min() < 0):
        raise ValueError(f"prediction has labels outside [0, {num_classes})")
    return np.bincount(g * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class, ``TP / (TP + FP + FN)``; NaN for a class absent from both GT and prediction."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def foreground_scores(conf: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of foreground pixels, class-agnostic (any label other than 0).

    Table 6 and Fig. 7 of the paper measure how well the maps *localise* objects, so a foreground
    pixel given another foreground class still counts as found; class confusions show in the mIoU.
    """
    fg_gt = conf[1:, :].sum()
    fg_pred = conf[:, 1:].sum()
    tp = conf[1:, 1:].sum()
    precision = float(tp / fg_pred) if fg_pred else 0.0
    recall = float(tp / fg_gt) if fg_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1)}


def summarize(conf: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU over background + classes, per-class IoU and foreground precision/recall/F1."""
    if len(class_names) != conf.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {conf.shape[0]}-class confusion matrix")
    ious = iou_per_class(conf)
    out = {"miou": float(np.nanmean(ious)) if np.isfinite(ious).any() else 0.0}
    out.update(foreground_scores(conf))
    out["per_class_iou"] = {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, ious)}
    return out


def localization_ap(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float | None:
    """Average precision of a score ranking from score histograms (bin 0 lowest); None without positives.

    ``pos_hist[b]`` / ``neg_hist[b]`` count positive / negative pixels whose score falls in bin ``b``.
    Every bin edge is a threshold, walked from the highest score down;
    ``AP = sum over thresholds of (recall gain) x (precision there)``. Pixels sharing a bin share a
    threshold (ties).
    """
    pos = np.asarray(pos_hist, dtype=np.float64)[::-1].cumsum()
    neg = np.asarray(neg_hist, dtype=np.float64)[::-1].cumsum()
    if pos.size == 0 or pos[-1] == 0:
        return None
    precision = pos / np.maximum(pos + neg, 1.0)
    recall_gain = np.diff(pos, prepend=0.0) / pos[-1]
    return float((recall_gain * precision).sum())


@dataclass
class ThresholdSweep:
    """Accumulates one confusion matrix per background threshold over a split (seed evaluation).

    From the scores it also accumulates the histograms of the localization AP (:meth:`result`'s
    ``ap``): every map of a class the image has, scored as a detector of that class's pixels against
    all other labelled pixels, pooled over classes and images. A threshold picks one point of the
    precision/recall curve; the AP summarises the whole curve, so it does not change when every map
    is rescaled by the same increasing function (a flatter map that just needs a higher threshold)
    and rises only when the maps *rank* pixels better.
    """

    thresholds: Sequence[float]
    num_classes: int  # background included
    confs: np.ndarray = field(init=False)
    pos_hist: np.ndarray = field(init=False)
    neg_hist: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if not len(self.thresholds):
            raise ValueError("the threshold sweep needs at least one threshold")
        self.confs = np.zeros((len(self.thresholds), self.num_classes, self.num_classes), dtype=np.int64)
        self.pos_hist = np.zeros(AP_BINS + 1, dtype=np.int64)
        self.neg_hist = np.zeros(AP_BINS + 1, dtype=np.int64)

    def add_scores(self, gt: np.ndarray, scores: np.ndarray, keys: Sequence[int]) -> None:
        """Add one image from its CAMs: ``scores`` ``(K_gt, H, W)`` in [0, 1] for class indices ``keys``
        (1-based, i.e. label values). Background wins where every score is below the threshold."""
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim != 3 or scores.shape[1:] != np.shape(gt):
            raise ValueError(f"scores {scores.shape} do not match the mask {np.shape(gt)}")
        keys = np.asarray(list(keys), dtype=np.int64)
        if len(keys) != scores.shape[0]:
            raise ValueError(f"{len(keys)} class keys for {scores.shape[0]} score maps")
        if len(keys) == 0:
            best = np.zeros(np.shape(gt), dtype=np.float32)
            arg = np.zeros(np.shape(gt), dtype=np.int64)
        else:
            best = scores.max(0)
            arg = keys[scores.argmax(0)]
        for i, t in enumerate(self.thresholds):
            pred = np.where(best > t, arg, 0)
            self.confs[i] += confusion_matrix(gt, pred, self.num_classes)
        if len(keys):
            gt = np.asarray(gt)
            valid = np.broadcast_to(gt != IGNORE, scores.shape)
            own = gt[None] == keys[:, None, None]
            bins = np.clip((scores * AP_BINS).astype(np.int64), 0, AP_BINS)
            self.pos_hist += np.bincount(bins[own & valid], minlength=AP_BINS + 1)
            self.neg_hist += np.bincount(bins[~own & valid], minlength=AP_BINS + 1)

    def result(self, class_names: Sequence[str], **meta) -> dict:
        """The metrics dict of DESIGN.md: best-mIoU threshold's scores plus the whole sweep."""
        sweep = []
        for t, conf in zip(self.thresholds, self.confs):
            s = summarize(conf, class_names)
            sweep.append(
                {
                    "threshold": float(t),
                    "miou": s["miou"],
                    "precision": s["precision"],
                    "recall": s["recall"],
                    "f1": s["f1"],
                }
            )
        best = max(range(len(sweep)), key=lambda i: sweep[i]["miou"])
        out = dict(meta)
        out["threshold"] = float(self.thresholds[best])
        out.update(summarize(self.confs[best], class_names))
        ap = localization_ap(self.pos_hist, self.neg_hist)
        if ap is not None:  # only when scores were added (a CRF sweep adds labels)
            out["ap"] = ap
        out["sweep"] = sweep
        return out


def sweep_at(metrics: dict, threshold: float) -> dict:
    """The scores of ``metrics``' threshold sweep at ``threshold``: ``{threshold, miou, precision, recall, f1}``.

    Compares stages at one common threshold. Each stage's headline scores sit at its own best
    threshold, which moves from stage to stage (flatter maps peak higher), so they hide how the
    maps changed; the sweep's entry at a shared threshold does not. ``threshold`` must be one of the
    swept values (every stage of a run sweeps ``cam.thresholds``), else ValueError.
    """
    for entry in metrics["sweep"]:
        if abs(entry["threshold"] - threshold) < 1e-9:
            return dict(entry)
    swept = ", ".join(f"{e['threshold']:g}" for e in metrics["sweep"])
    raise ValueError(f"threshold {threshold:g} was not swept; the sweep has {swept}")


def at_best_thresholds(stages: dict[str, dict]) -> dict[str, dict]:
    """Every stage's sweep entry at every stage's best threshold: ``{'<stage>, t = 0.30': entry, ...}``.

    The table chapters 02 and 04 use to compare stages at a shared threshold (:func:`sweep_at`),
    ordered by threshold, then by the order of ``stages``.
    """
    common = sorted({m["threshold"] for m in stages.values()})
    return {f"{st}, t = {t:.2f}": sweep_at(m, t) for t in common for st, m in stages.items()}


def write_metrics(path: str | Path, metrics: dict) -> Path:
    """Write a metrics dict as JSON (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    return path


def read_metrics(path: str | Path) -> dict:
    """Read a metrics JSON written by :func:`write_metrics`."""
    return json.loads(Path(path).read_text())


def miou_of(pairs: Iterable[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]) -> dict:
    """Summary of (ground truth, prediction) pairs accumulated into one confusion matrix."""
    conf = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    for gt, pred in pairs:
        conf += confusion_matrix(gt, pred, len(class_names))
    return summarize(conf, class_names)
