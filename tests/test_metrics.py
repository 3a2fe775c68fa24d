"""Metrics: the confusion-matrix mIoU against an independent computation, P/R/F1, the sweep."""

import numpy as np
import pytest

from esol_lib.method.metrics import (
    ThresholdSweep,
    confusion_matrix,
    foreground_scores,
    localization_ap,
    read_metrics,
    summarize,
    sweep_at,
    write_metrics,
)


def reference_miou(pairs, k):
    """Independent per-class set computation (no confusion matrix)."""
    inter = np.zeros(k)
    union = np.zeros(k)
    for gt, pred in pairs:
        valid = gt != 255
        for c in range(k):
            g = (gt == c) & valid
            p = (pred == c) & valid
            inter[c] += np.logical_and(g, p).sum()
            union[c] += np.logical_or(g, p).sum()
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


def test_miou_matches_an_independent_computation_on_random_label_maps():
    rng = np.random.default_rng(0)
    k = 5
    pairs = []
    for _ in range(6):
        gt = rng.integers(0, k, size=(17, 23))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, k, gt.shape))
        pairs.append((gt, pred))
    conf = sum(confusion_matrix(g, p, k) for g, p in pairs)
    names = [f"c{i}" for i in range(k)]
    assert summarize(conf, names)["miou"] == pytest.approx(reference_miou(pairs, k), abs=1e-12)


def test_void_pixels_are_ignored_and_absent_classes_are_not_averaged():
    gt = np.array([[0, 1], [255, 255]])
    pred = np.array([[0, 1], [2, 2]])
    conf = confusion_matrix(gt, pred, 3)
    assert conf.sum() == 2
    s = summarize(conf, ["bg", "a", "b"])
    assert s["miou"] == 1.0 and s["per_class_iou"]["b"] is None


def test_foreground_precision_recall_f1_by_hand():
    gt = np.array([[0, 0, 1, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 0, 1, 2]])  # fg pred at 4 pixels, 3 of them on GT foreground
    s = foreground_scores(confusion_matrix(gt, pred, 3))
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(0.75)


def test_labels_outside_the_class_set_raise():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([[5]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_threshold_sweep_picks_the_best_threshold_and_writes_the_design_schema(tmp_path):
    gt = np.array([[0, 0, 1, 1]])
    scores = np.array([[[0.1, 0.3, 0.6, 0.9]]], dtype=np.float32)  # class 1's CAM
    sweep = ThresholdSweep([0.2, 0.5, 0.95], num_classes=2)
    sweep.add_scores(gt, scores, keys=[1])
    res = sweep.result(["background", "a"], stage="baseline", split="train")
    assert res["threshold"] == 0.5 and res["miou"] == 1.0
    assert [r["threshold"] for r in res["sweep"]] == [0.2, 0.5, 0.95]
    assert res["sweep"][0]["recall"] == 1.0 and res["sweep"][0]["precision"] == pytest.approx(2 / 3)
    assert res["sweep"][2]["recall"] == 0.0
    for key in ("stage", "split", "threshold", "miou", "precision", "recall", "f1", "per_class_iou", "sweep"):
        assert key in res
    path = write_metrics(tmp_path / "metrics" / "baseline_train.json", res)
    assert read_metrics(path) == res
    assert not list(path.parent.glob("*.tmp"))


def test_sweep_argmax_between_two_classes_and_image_without_classes():
    gt = np.array([[1, 2, 0]])
    scores = np.array([[[0.9, 0.2, 0.1]], [[0.5, 0.8, 0.1]]], dtype=np.float32)
    sweep = ThresholdSweep([0.3], num_classes=3)
    sweep.add_scores(gt, scores, keys=[1, 2])
    sweep.add_scores(np.array([[0, 0]]), np.zeros((0, 1, 2), np.float32), keys=[])
    assert np.array_equal(np.diag(sweep.confs[0]), [3, 1, 1])


def test_sweep_at_gives_one_thresholds_scores_and_refuses_a_threshold_not_swept(tmp_path):
    gt = np.array([[0, 0, 1, 1]])
    sweep = ThresholdSweep([0.2, 0.5, 0.95], num_classes=2)
    sweep.add_scores(gt, np.array([[[0.1, 0.3, 0.6, 0.9]]], dtype=np.float32), keys=[1])
    res = sweep.result(["background", "a"])
    low = sweep_at(res, 0.2)  # not the best threshold (0.5): fg predicted at 3 pixels, 2 of them right
    assert low == res["sweep"][0]
    assert low["recall"] == 1.0 and low["precision"] == pytest.approx(2 / 3)
    low["recall"] = 0.0  # a copy: the metrics dict is left alone
    assert res["sweep"][0]["recall"] == 1.0
    stored = read_metrics(write_metrics(tmp_path / "m.json", res))  # after a JSON round trip
    assert sweep_at(stored, 0.5)["miou"] == 1.0 and sweep_at(stored, 0.95)["recall"] == 0.0
    with pytest.raises(ValueError, match="not swept"):
        sweep_at(res, 0.3)


def test_at_best_thresholds_puts_every_stage_at_every_stages_best_threshold():
    from esol_lib.method.metrics import at_best_thresholds

    def stage(best, scores):
        sweep = [{"threshold": t, "miou": v, "precision": v, "recall": 1 - v, "f1": v} for t, v in scores]
        return {"threshold": best, "sweep": sweep}

    a = stage(0.3, [(0.1, 0.2), (0.3, 0.5)])
    b = stage(0.1, [(0.1, 0.4), (0.3, 0.1)])
    rows = at_best_thresholds({"a": a, "b": b})
    assert list(rows) == ["a, t = 0.10", "b, t = 0.10", "a, t = 0.30", "b, t = 0.30"]
    assert rows["a, t = 0.10"]["miou"] == 0.2 and rows["b, t = 0.30"]["recall"] == pytest.approx(0.9)


def test_localization_ap_by_hand_and_unchanged_by_an_increasing_rescaling():
    # class 1's map ranks its pixels: 0.9 (pos), 0.5 (neg), 0.2 (pos), 0.1 (neg)
    # AP = 1/2 · 1 (first positive, precision 1) + 1/2 · 2/3 (second, 2 of 3 above it)
    gt = np.array([[1, 0, 1, 0, 255]])
    scores = np.array([[[0.9, 0.5, 0.2, 0.1, 1.0]]], dtype=np.float32)  # the void pixel is ignored
    sweep = ThresholdSweep([0.3], num_classes=2)
    sweep.add_scores(gt, scores, keys=[1])
    assert sweep.result(["background", "a"])["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    squared = ThresholdSweep([0.3], num_classes=2)  # same ranking, different threshold-picked scores
    squared.add_scores(gt, scores**2, keys=[1])
    assert squared.result(["background", "a"])["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert squared.result(["background", "a"])["miou"] != sweep.result(["background", "a"])["miou"]


def test_localization_ap_scores_each_map_against_its_own_class_and_skips_absent_ones():
    # two classes, each map scored on its own class's pixels (positives) against the image's other
    # labelled pixels, another class's included (negatives); pooled, every positive ranks first
    gt = np.array([[1, 1, 2, 0]])
    scores = np.array([[[0.6, 0.6, 0.1, 0.0]], [[0.1, 0.1, 0.9, 0.0]]], dtype=np.float32)
    sweep = ThresholdSweep([0.3], num_classes=3)
    sweep.add_scores(gt, scores, keys=[1, 2])
    sweep.add_scores(np.array([[0, 0]]), np.zeros((0, 1, 2), np.float32), keys=[])  # no map, no pixels
    assert sweep.result(["background", "a", "b"])["ap"] == pytest.approx(1.0)
    assert localization_ap(np.zeros(3), np.ones(3)) is None  # no positives: undefined
    crf_only = ThresholdSweep([0.3], num_classes=2)  # a CRF sweep adds confusions, never scores
    crf_only.confs[0] += confusion_matrix(np.array([[1, 0]]), np.array([[1, 0]]), 2)
    assert "ap" not in crf_only.result(["background", "a"])
