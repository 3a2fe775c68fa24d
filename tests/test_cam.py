"""CAM inference (Eq. 2): hand computations on tiny inputs, flip and scale merging, storage, evaluation."""

import json

import numpy as np
import pytest
import torch

from esol_lib.data.synth import SynthSpec, generate_benchmark
from esol_lib.data.voc import VOCSegmentation
from esol_lib.method.cam import cam_batch_size, cams_to_label, compute_cams, evaluate_cams, load_cam, multiscale_cam
from esol_lib.runtime.errors import StageError


def test_single_scale_is_relu_then_max_normalisation_by_hand():
    w = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.5, 0.5]])  # 2 classes from 3 channels (a 1x1 "classifier")

    def cam_fn(x):
        return torch.einsum("kc,bchw->bkhw", w, x)

    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) - 10
    got = multiscale_cam(cam_fn, x, scales=[1.0], flip=False)
    raw = torch.einsum("kc,bchw->bkhw", w, x).clamp(min=0)
    by_hand = torch.zeros_like(raw)
    for b in range(2):
        for k in range(2):
            by_hand[b, k] = raw[b, k] / (raw[b, k].max() + 1e-5)  # an all-zero map stays zero
    torch.testing.assert_close(got, by_hand)
    assert (got[:, 0] == 0).any() and got.amax((-1, -2)).max() <= 1.0


def test_flip_merge_adds_the_flipped_map_back_in_place():
    ramp = torch.tensor([0.0, 1.0, 2.0, 3.0])  # position-dependent, so the flip matters

    def cam_fn(x):
        return x[:, :1] * ramp

    x = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]]).expand(1, 3, 1, 4).contiguous()
    got = multiscale_cam(cam_fn, x, scales=[1.0], flip=True, eps=0.0)
    # original: [0, 0, 0, 0]; flipped input [0,0,0,1] * ramp = [0,0,0,3], flipped back: [3,0,0,0]
    torch.testing.assert_close(got[0, 0, 0], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_scales_are_fed_at_their_size_and_summed():
    seen = []

    def cam_fn(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.ones(x.shape[0], 1, *x.shape[-2:]) * x.shape[-1]  # value = width at that scale

    x = torch.zeros(1, 3, 8, 8)
    got = multiscale_cam(cam_fn, x, scales=[1.0, 0.5], flip=True, eps=0.0)
    assert seen == [(8, 8), (4, 4)]
    # constant maps: 2*(8) + 2*(4) = 24 everywhere, normalised to 1
    torch.testing.assert_close(got, torch.ones(1, 1, 8, 8))


def test_negative_scale_evidence_does_not_cancel_positive():
    calls = iter([torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 1, 1), -5.0)])
    got = multiscale_cam(lambda x: next(calls), torch.zeros(1, 3, 2, 2), scales=[1.0, 0.5], flip=False, eps=0.0)
    torch.testing.assert_close(got, torch.ones(1, 1, 2, 2))


def test_cams_to_label():
    cams = np.array([[[0.9, 0.1], [0.4, 0.0]], [[0.2, 0.3], [0.6, 0.0]]], np.float32)
    label = cams_to_label(cams, np.array([2, 3]), threshold=0.25)
    assert label.tolist() == [[2, 3], [3, 0]]


def test_compute_store_and_evaluate_round_trip(tmp_path):
    root = generate_benchmark(tmp_path / "d", SynthSpec(train=5, val=1, size=32, num_classes=3), progress=False)
    ds = VOCSegmentation(root, "train")

    def oracle(x):  # a "model" whose CAM is the ground truth itself, to check the plumbing end to end
        return oracle.maps

    masks = torch.stack([torch.from_numpy(ds[i]["mask"].astype(np.int64)) for i in range(len(ds))])
    out = tmp_path / "cams"
    for i in range(len(ds)):
        m = masks[i]
        oracle.maps = torch.stack([(m == k).float() for k in range(1, 4)])[None]
        compute_cams(
            oracle,
            _Subset(ds, i),
            out,
            mean=[0.5] * 3,
            std=[0.5] * 3,
            scales=[1.0],
            flip=False,
            signature="s",
            progress=False,
        )
    cams, keys = load_cam(out, ds.ids[0])
    assert cams.dtype == np.float32 and len(keys) == int(ds[0]["label"].sum())
    metrics = evaluate_cams(out, ds, [0.3, 0.5], progress=False, stage="oracle", split="train")
    assert metrics["miou"] == pytest.approx(1.0) and metrics["stage"] == "oracle"
    with pytest.raises(StageError, match="make-cam"):
        load_cam(out, "missing_id")


#: compute_cams at one scale, without flips, on images normalised by 0.5.
ONE_SCALE = {"mean": [0.5] * 3, "std": [0.5] * 3, "scales": [1.0], "flip": False, "signature": "s", "progress": False}


def test_a_nonfinite_cam_stops_make_cam_before_it_is_written(tmp_path):
    """A model that diverged while its loss stayed finite (issue 29: voc12 on random weights at IRN's
    lr) used to write NaN CAMs that eval-cam scored and expansion trained on, until "loss is nan"."""
    from esol_lib.runtime.errors import DivergenceError

    root = generate_benchmark(tmp_path / "d", SynthSpec(train=3, val=1, size=32, num_classes=3), progress=False)
    ds = VOCSegmentation(root, "train")

    def diverged(x):
        return torch.full((x.shape[0], 3, 2, 2), float("nan"))

    out = tmp_path / "cams"
    with pytest.raises(DivergenceError, match=r"not finite .*lower train_cam\.lr"):
        compute_cams(diverged, ds, out, **ONE_SCALE, diverged_fix="lower train_cam.lr")
    assert not list(out.glob("*.npz"))


def test_a_dead_models_all_zero_cams_are_refused_by_make_cam_and_eval_cam(tmp_path):
    """A dead classifier (every ReLU off) writes CAMs that are zero for every image; they used to be
    scored (8.3 mIoU: background alone) and trained on with exit code 0 (issue 36)."""
    from esol_lib.runtime.errors import DivergenceError

    root = generate_benchmark(tmp_path / "d", SynthSpec(train=3, val=1, size=32, num_classes=3), progress=False)
    ds = VOCSegmentation(root, "train")

    def dead(x):
        return torch.zeros(x.shape[0], 3, 4, 4)

    out = tmp_path / "cams"
    with pytest.raises(DivergenceError, match=r"every CAM in .*cams is zero \(3 images.*lower train_cam\.lr"):
        compute_cams(dead, ds, out, **ONE_SCALE, diverged_fix="lower train_cam.lr")
    assert len(list(out.glob("*.npz"))) == 3  # kept: they are what the model gives, and cost time to make
    with pytest.raises(DivergenceError, match="is zero"):  # a second make-cam finds the folder complete
        compute_cams(dead, ds, out, **ONE_SCALE, diverged_fix="lower train_cam.lr")
    with pytest.raises(DivergenceError, match=r"is zero.*retrain it"):
        evaluate_cams(out, ds, [0.3], progress=False, dead_fix="retrain it")
    with pytest.raises(DivergenceError, match="is zero"):  # the CRF path reads them first too
        evaluate_cams(out, ds, [0.3], crf=lambda image, labellings, n: labellings, progress=False, workers=1)

    live = tmp_path / "live"

    def one_live_pixel(x):  # a model alive on a single pixel of one image is not dead
        cams = torch.zeros(x.shape[0], 3, 4, 4)
        cams[-1, :, 0, 0] = 1.0
        return cams

    compute_cams(one_live_pixel, ds, live, **ONE_SCALE, batch_size=1)
    assert evaluate_cams(live, ds, [0.3], progress=False)["miou"] >= 0


def test_adding_another_splits_cams_keeps_the_folders_time_stamp(tmp_path):
    """Metrics are current when newer than ``_meta.json``; val CAMs added later must not make train's stale."""
    root = generate_benchmark(tmp_path / "d", SynthSpec(train=2, val=1, size=32, num_classes=3), progress=False)
    ds = VOCSegmentation(root, "train")
    out = tmp_path / "cams"
    ones = lambda x: torch.ones(x.shape[0], 3, 8, 8)  # noqa: E731
    kwargs = dict(mean=[0.5] * 3, std=[0.5] * 3, scales=[1.0], flip=False, progress=False)
    compute_cams(ones, _Subset(ds, 0), out, signature="s", **kwargs)
    meta = out / "_meta.json"
    stamp = meta.stat().st_mtime_ns
    compute_cams(ones, _Subset(ds, 1), out, signature="s", **kwargs)  # same model, another image
    assert meta.stat().st_mtime_ns == stamp and len(list(out.glob("*.npz"))) == 2
    compute_cams(ones, _Subset(ds, 1), out, signature="t", **kwargs)  # another model: folder redone
    assert json.loads(meta.read_text())["signature"] == "t" and len(list(out.glob("*.npz"))) == 1


class _Subset:
    """One image of a dataset, exposing what compute_cams uses."""

    def __init__(self, ds, i):
        self.ds, self.i, self.ids = ds, i, [ds.ids[i]]

    def __getitem__(self, j):
        return self.ds[self.i]

    def image_path(self, image_id):
        return self.ds.image_path(image_id)


def test_cam_batches_are_single_images_only_on_a_cpu_without_the_feature_cache():
    assert cam_batch_size("cpu") == 1  # 8 images (16 with flips) at scale 2.0 outgrow the CPU's caches
    assert cam_batch_size("cpu", feature_cache=True) == 8  # one cache entry per batch: fewer, larger entries
    assert cam_batch_size("cuda") == 8 and cam_batch_size("cuda", feature_cache=True) == 8
