"""DenseCRF: a confident labelling that follows image edges is kept; bad input is refused."""

import numpy as np
import pytest

from esol_lib.crf import crf_from_labels, crf_from_probs


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
