"""LPCAM (Chen et al., CVPR 2023): the maps, the k-means, the prototype filter and the pixel sets, by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esol_lib.method.cam import multiscale_cam
from esol_lib.method.lpcam import (
    PrototypeBank,
    Prototypes,
    class_probability,
    cosine_kmeans,
    lpcam_cam_fn,
    lpcam_maps,
    lpcam_weight,
    select_prototypes,
)

R = 1 / math.sqrt(2)


def test_map_is_mean_fg_cosine_minus_mean_ctx_cosine_by_hand():
    # a 2x2 map of 2-channel features: (1,0), (0,3) / (1,1), (0,0)
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    f = torch.stack(f)[None]  # (1, 2, 2, 2)
    fg = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # not unit: only directions count
    ctx = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    got = lpcam_maps(f, {0: Prototypes(fg, ctx), 1: Prototypes(fg[:1], ctx[:0])}, num_classes=2)
    # class 0, pixel by pixel: mean(cos to fg) - mean(cos to ctx)
    by_hand = torch.tensor(
        [
            [(1 + 0) / 2 - (R + R) / 2, (0 + 1) / 2 - (R - R) / 2],
            [(R + R) / 2 - (1 + 0) / 2, 0.0],  # a zero feature scores 0
        ]
    )
    torch.testing.assert_close(got[0, 0], by_hand)
    # class 1 has no context prototypes: the mean cosine to its foreground alone (negative values kept)
    torch.testing.assert_close(got[0, 1], torch.tensor([[1.0, 0.0], [R, 0.0]]))


def test_maps_equal_cosine_similarity_loops_on_random_features():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, 3, 4, generator=g)
    protos = {0: Prototypes(torch.randn(3, 5, generator=g), torch.randn(2, 5, generator=g))}
    got = lpcam_maps(f, protos, num_classes=1)
    fg_mean = torch.stack([F.cosine_similarity(f, p[None, :, None, None], dim=1) for p in protos[0].fg]).mean(0)
    ctx_mean = torch.stack([F.cosine_similarity(f, q[None, :, None, None], dim=1) for q in protos[0].ctx]).mean(0)
    torch.testing.assert_close(got[:, 0], fg_mean - ctx_mean)


def test_a_class_without_prototypes_gives_a_zero_map():
    f = torch.rand(1, 3, 2, 2) + 0.1
    # class 1 absent, class 2 has context but no foreground: both zero; class 0 is live
    protos = {0: Prototypes(torch.eye(3)[:1], torch.zeros(0, 3)), 2: Prototypes(torch.zeros(0, 3), torch.eye(3))}
    got = lpcam_maps(f, protos, num_classes=3)
    assert got[0, 0].gt(0).all()
    assert got[0, 1].eq(0).all() and got[0, 2].eq(0).all()
    assert lpcam_weight({}, 2, 3).eq(0).all()


def test_cosine_kmeans_recovers_separated_directions_with_raw_mean_centres():
    g = torch.Generator().manual_seed(1)
    dirs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    which = torch.arange(30) % 3
    x = dirs[which] * (1 + 4 * torch.rand(30, 1, generator=g)) + 0.05 * torch.rand(30, 3, generator=g)
    # seed 0 starts from rows of three directions; like any k-means, a start with two rows of one
    # direction may end in a local optimum instead
    centres = cosine_kmeans(x, 3, iters=50, seed=0)
    assert centres.shape == (3, 3)
    match = F.normalize(centres, dim=1) @ dirs.T  # each centre points along one direction, all three found
    assert sorted(match.argmax(1).tolist()) == [0, 1, 2] and match.max(1).values.min() > 0.99
    for c in centres:  # a centre is the plain mean of the raw rows of its direction, not a unit vector
        d = int((c @ dirs.T).argmax())
        torch.testing.assert_close(c, x[which == d].mean(0))
    assert centres.norm(dim=1).min() > 1.5


def test_cosine_kmeans_is_deterministic_for_a_seed():
    x = torch.rand(40, 4, generator=torch.Generator().manual_seed(2))
    a = cosine_kmeans(x, 5, iters=20, seed=7, tol=0.0)
    assert torch.equal(a, cosine_kmeans(x, 5, iters=20, seed=7, tol=0.0))
    first = cosine_kmeans(x, 5, iters=1, seed=7)  # one update from the same draw of 5 distinct rows
    assert torch.equal(first, cosine_kmeans(x, 5, iters=1, seed=7))
    assert not torch.equal(first, cosine_kmeans(x, 5, iters=1, seed=8))


def test_cosine_kmeans_with_fewer_rows_than_clusters_zero_rows_and_empty_clusters():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # the zero row has no direction: left out
    assert torch.equal(cosine_kmeans(x, 12, iters=5, seed=0), x[:2])
    assert cosine_kmeans(torch.zeros(0, 4), 3, iters=5, seed=0).shape == (0, 4)
    same = torch.ones(4, 2)  # every row ties with every centre: cluster 1 empties and is refilled, no NaN
    centres = cosine_kmeans(same, 2, iters=3, seed=0)
    assert centres.shape == (2, 2) and torch.isfinite(centres).all()
    torch.testing.assert_close(centres, torch.ones(2, 2))


def test_prototype_filter_keeps_centres_as_the_thresholds_say():
    w = (10 * torch.eye(3))[:, :, None, None]  # logits of a centre u: 10 u
    fg = torch.tensor([[1.0, 0, 0], [0.3, 0, 0], [0.2, 0, 0], [0, 1.0, 0]])
    # p_0 = softmax(10u)_0: e^10/(e^10+2) = 0.9999, e^3/(e^3+2) = 0.909, e^2/(e^2+2) = 0.787, 1/(e^10+2)
    p = class_probability(fg, w, 0)
    torch.testing.assert_close(p, torch.tensor([0.99991, 0.90944, 0.78699, 4.54e-5]), atol=1e-4, rtol=0)
    ctx = torch.tensor([[0.2, 0, 0], [0.05, 0.05, 0.05], [1.0, 0, 0], [0, 1.0, 0]])  # 0.787, 1/3, 0.9999, 4.5e-5
    kept = select_prototypes(fg, ctx, w, 0)
    assert torch.equal(kept.fg, fg[:2])  # > 0.9; (0.2, 0, 0) points the same way but scores 0.787: dropped
    assert torch.equal(kept.ctx, ctx[:2])  # 0.05 < p < 0.9
    assert select_prototypes(fg[2:], ctx, w, 0).fg.shape == (0, 3)
    best = select_prototypes(fg[2:], ctx, w, 0, fallback_best=True)  # MS COCO's rule keeps the best one
    assert torch.equal(best.fg, fg[2:3])
    # MS COCO's context range for class 1: p_1 = 1/(e^2+2) = 0.106, 1/3, 4.5e-5 kept (> 0), 0.9999 dropped
    assert torch.equal(select_prototypes(fg, ctx, w, 1, ctx_range=(0.0, 0.5)).ctx, ctx[:3])


def test_accumulate_splits_pixels_by_the_cam_threshold_for_labelled_classes_only():
    f = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2) + 1  # pixel (i, j) has feature (1+2i+j, 5+2i+j)
    rows = f[0].flatten(1).T  # (4, 2), pixels in raster order
    cams = torch.zeros(1, 3, 2, 2)
    cams[0, 0] = torch.tensor([[0.5, 0.1], [0.05, 0.2]])  # 0.1 exactly: neither foreground nor context
    cams[0, 1] = 1.0  # not labelled: never read
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    bank = PrototypeBank(3, max_per_class=None)
    bank.accumulate(f, cams, labels)
    fg, ctx = bank.features(0)
    assert torch.equal(fg, rows[[0, 3]]) and torch.equal(ctx, rows[[2]])
    assert bank.features(1)[0].shape == (0, 2) and bank.features(1)[1].shape == (0, 2)
    fg2, ctx2 = bank.features(2)  # labelled, CAM zero everywhere: all context
    assert fg2.shape == (0, 2) and torch.equal(ctx2, rows)
    assert bank.seen(0) == (2, 1) and bank.seen(1) == (0, 0)


def test_accumulate_resamples_the_cams_by_nearest_neighbour():
    f = torch.rand(1, 2, 2, 2) + 0.1
    big = torch.rand(1, 1, 4, 4)
    a, b = PrototypeBank(1, max_per_class=None), PrototypeBank(1, max_per_class=None)
    a.accumulate(f, big, torch.ones(1, 1))
    b.accumulate(f, big[..., ::2, ::2], torch.ones(1, 1))  # what F.interpolate(mode="nearest") picks
    assert all(torch.equal(x, y) for x, y in zip(a.features(0), b.features(0)))


def test_the_cap_keeps_a_seeded_subset_in_arrival_order():
    f = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4)

    def bank(seed):
        out = PrototypeBank(1, max_per_class=5, seed=seed)
        out.accumulate(f, torch.zeros(1, 1, 4, 4), torch.ones(1, 1))  # 16 context pixels
        return out.features(0)[1].flatten()

    kept = bank(0)
    assert len(kept) == 5 and torch.equal(kept, kept.sort().values) and len(set(kept.tolist())) == 5
    assert torch.equal(kept, bank(0)) and not torch.equal(kept, bank(1))


def test_fit_finds_each_class_prototypes_and_filters_them():
    dirs = torch.eye(3)
    f = torch.zeros(1, 3, 2, 3)
    f[0, :, :, 0], f[0, :, :, 1], f[0, :, :, 2] = dirs[0, :, None], dirs[1, :, None], dirs[2, :, None]
    cams = torch.zeros(1, 2, 2, 3)
    cams[0, 0, :, 0] = 1.0  # class 0 on column 0, class 1 on column 1; column 2 is the context of both
    cams[0, 1, :, 1] = 1.0
    bank = PrototypeBank(2)
    bank.accumulate(f, cams, torch.ones(1, 2))
    w = torch.zeros(2, 3, 1, 1)
    w[0, 0], w[1, 1] = 10.0, 10.0
    protos = bank.fit(w, k=12, iters=10, seed=0)
    # two foreground pixels, fewer than 12 clusters: each is its own centre (p_0 = e^10/(e^10+1), kept)
    assert torch.equal(protos[0].fg, dirs[[0, 0]])
    # class 0's context: the class-1 column (p_0 = 4.5e-5, dropped) and column 2 (p_0 = 1/2, kept)
    assert protos[0].ctx.shape == (2, 3) and torch.equal(protos[0].ctx, dirs[[2, 2]])
    assert torch.equal(protos[1].fg, dirs[[1, 1]])


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.extra = nn.Conv2d(4, 4, 1, bias=False)
        self.classifier = nn.Conv2d(4, 2, 1, bias=False)
        g = torch.Generator().manual_seed(3)  # fixed weights, without touching the global generator
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def features(self, x):
        return F.relu(self.body(x))

    def head(self, feat):
        return F.relu(self.extra(feat))


@pytest.mark.parametrize("flip_features", [True, False])
def test_with_multiscale_cam_the_maps_lie_in_0_1(flip_features):
    model = _Tiny().eval()
    protos = {0: Prototypes(torch.rand(2, 4), torch.rand(3, 4)), 1: Prototypes(torch.rand(1, 4), torch.zeros(0, 4))}
    images = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cams = multiscale_cam(lpcam_cam_fn(model, protos, flip_features=flip_features), images, (1.0, 0.5), flip=False)
    assert cams.shape == (2, 2, 8, 10)
    assert cams.min() >= 0 and cams.max() <= 1 and cams.amax((-1, -2)).gt(0.99).any()


def test_feature_flip_makes_multiscale_flip_redundant():
    model = _Tiny().eval()
    g = torch.Generator().manual_seed(3)  # seeded: unseeded draws made the test depend on the tests before it
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    protos = {0: Prototypes(rand(2, 4), rand(3, 4)), 1: Prototypes(rand(1, 4), torch.zeros(0, 4))}
    images = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    fn = lpcam_cam_fn(model, protos)
    with torch.no_grad():
        once = multiscale_cam(fn, images, (1.0,), flip=False)
        twice = multiscale_cam(fn, images, (1.0,), flip=True)
        f = model.head(model.features(images)) + model.head(model.features(images.flip(-1))).flip(-1)
        by_hand = F.relu(lpcam_maps(f, protos, 2))
    torch.testing.assert_close(once, twice, atol=1e-4, rtol=1e-4)  # equal but for where eps enters
    torch.testing.assert_close(once, by_hand / (by_hand.amax((-1, -2), keepdim=True) + 1e-5))
