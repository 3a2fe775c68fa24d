"""DenseCRF: a confident labelling that follows image edges is kept; bad input is refused."""

import numpy as np
import pytest

from esol_lib.method.crf import crf_from_labels, crf_from_probs


def _two_region_image():
    img = np.zeros((24, 24, 3), np.uint8)
    img[:, 12:] = 255
    lab = np.zeros((24, 24), np.int64)
    lab[:, 12:] = 1
    return img, lab


def test_crf_keeps_a_confident_labelling_that_follows_the_edges():
    img, lab = _two_region_image()
    assert np.array_equal(crf_from_labels(img, lab, 2), lab)
    probs = np.stack([1.0 - lab, lab]).astype(np.float32) * 0.98 + 0.01
    out = crf_from_probs(img, probs)
    assert np.array_equal(out.argmax(0), lab)


def test_crf_snaps_a_sloppy_labelling_to_the_edge():
    img, lab = _two_region_image()
    sloppy = lab.copy()
    sloppy[:, 10:12] = 1  # two columns of the dark region wrongly labelled
    out = crf_from_labels(img, sloppy, 2, gt_prob=0.6)
    assert (out != lab).sum() < (sloppy != lab).sum()


def test_crf_input_validation():
    img, lab = _two_region_image()
    with pytest.raises(ValueError, match="uint8"):
        crf_from_labels(img.astype(np.float32), lab, 2)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        crf_from_labels(img, lab + 1, 2)
    with pytest.raises(ValueError, match="scores/labels"):
        crf_from_labels(img[:10], lab, 2)
    with pytest.raises(ValueError, match="sum to 1"):
        crf_from_probs(img, np.full((2, 24, 24), 0.9, np.float32))
    with pytest.raises(ValueError, match="finite"):
        crf_from_probs(img, np.full((2, 24, 24), np.nan, np.float32))


def test_several_labellings_of_one_image_give_what_fresh_crfs_give():
    """One CRF object, its pairwise lattices built once, serves every labelling (a seed at five
    thresholds, IRN's two confident seeds): each result equals that of a CRF made for it alone."""
    from esol_lib.method.crf import crf_from_labelings

    g = np.random.default_rng(3)
    size = 40
    yy, xx = np.mgrid[0:size, 0:size]
    labellings = []
    for r in (6, 9, 12, 15):
        lab = np.zeros((size, size), np.int64)
        for k, (cy, cx) in enumerate(g.uniform(0.25, 0.75, (2, 2)) * size, start=1):
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = k
        labellings.append(lab)
    img = (g.integers(0, 60, (size, size, 3)) + 70 * labellings[1][..., None]).astype(np.uint8)
    shared = crf_from_labelings(img, labellings, 3, gt_prob=0.6)
    assert [a.tolist() for a in shared] == [crf_from_labels(img, lab, 3, gt_prob=0.6).tolist() for lab in labellings]
    assert any(not np.array_equal(a, lab) for a, lab in zip(shared, labellings))  # the CRF changed something
    assert crf_from_labelings(img, [], 3) == []
    with pytest.raises(ValueError, match="differ in size"):
        crf_from_labelings(img, [labellings[0], labellings[0][:20]], 3)


def test_one_parameter_object_reaches_every_crf_and_refuses_unknown_names():
    from esol_lib.method.crf import crf_from_labelings, crf_params, label_crf_settings
    from esol_lib.runtime.config import CRFConfig

    assert crf_params() == CRFConfig()
    cfg = CRFConfig(gt_prob=0.6, iterations=3)
    assert crf_params(cfg, iterations=5) == CRFConfig(gt_prob=0.6, iterations=5) and cfg.iterations == 3
    assert label_crf_settings(cfg)["gt_prob"] == 0.6 and "seg_bi_w" not in label_crf_settings(cfg)
    with pytest.raises(TypeError, match="unknown CRF parameter.*pos_w"):
        crf_params(pos_w=3.0)  # DeepLab's name; the field is seg_pos_w
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    lab = rng.integers(0, 3, (16, 16))
    by_object = crf_from_labelings(img, [lab], 3, cfg)[0]
    by_changes = crf_from_labelings(img, [lab], 3, gt_prob=0.6, iterations=3)[0]
    assert np.array_equal(by_object, by_changes)
    with pytest.raises(ValueError, match="gt_prob must lie in"):
        crf_from_labelings(img, [lab], 3, CRFConfig(gt_prob=1.0))
