"""Training transforms: shapes, void padding, flips that move masks with images, determinism."""

import numpy as np
import torch

from esol_lib.data.transforms import TrainTransform, crop_sample, hflip_sample, resize_sample, to_tensor


def _sample(h=20, w=30):
    rng = np.random.default_rng(0)
    return {
        "id": "x",
        "image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        "mask": rng.integers(0, 3, (h, w), dtype=np.uint8),
    }


def test_resize_keeps_masks_nearest():
    out = resize_sample(_sample(), 2.0)
    assert out["image"].shape == (40, 60, 3) and out["mask"].shape == (40, 60)
    assert set(np.unique(out["mask"])) <= {0, 1, 2}


def test_flip_moves_mask_with_image():
    s = _sample()
    f = hflip_sample(s)
    assert np.array_equal(f["image"][:, 0], s["image"][:, -1]) and np.array_equal(f["mask"][:, 0], s["mask"][:, -1])


def test_crop_pads_small_inputs_with_void():
    out = crop_sample(_sample(10, 12), 16, np.random.default_rng(1))
    assert out["image"].shape == (16, 16, 3) and out["mask"].shape == (16, 16)
    assert (out["mask"] == 255).sum() == 16 * 16 - 10 * 12


def test_to_tensor_normalises():
    x = to_tensor(np.full((2, 2, 3), 255, np.uint8), [0.5] * 3, [0.5] * 3)
    assert x.shape == (3, 2, 2) and torch.allclose(x, torch.ones_like(x))


def test_train_transform_is_deterministic_in_its_rng():
    t = TrainTransform(resize_long=(24, 40), crop_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    a = t(_sample(), np.random.default_rng(3))
    b = t(_sample(), np.random.default_rng(3))
    assert a["image"].shape == (3, 32, 32) and a["mask"].dtype == torch.long
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
