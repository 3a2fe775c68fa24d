"""AdvCAM (esol_lib.method.advcam): one anti-adversarial step, the regulariser, the half-scale quirk, aggregation.

Most tests use a tiny bias-free linear "classifier" built from 1x1 convolutions and 2x2 average pooling, which
is exactly flip-equivariant (a map of the flipped image is the flipped map), so the code's Grad-CAM factor
``n_b / (P · Σn)`` is the same ``1 / (2P)`` for both flips and every scale.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esol_lib.method.advcam import (
    advcam_maps,
    anti_adversarial_step,
    attribution_map,
    half_scale_steps,
    score_term,
)
from esol_lib.method.cam import multiscale_cam
from esol_lib.models.backbone import build_backbone
from esol_lib.models.classifier import CAMClassifier


class ToyCAM(nn.Module):
    """``features`` = avgpool2(tanh(1x1 conv)), ``head`` = ReLU, bias-free 1x1 classifier; records input sizes."""

    def __init__(self, channels: int = 6, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Conv2d(3, channels, 1)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.calls: list[tuple[int, int]] = []

    def features(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        return F.avg_pool2d(torch.tanh(self.embed(x)), 2)

    def head(self, feat):
        return F.relu(feat)

    def cam_from_head(self, f):
        return F.conv2d(f, self.classifier.weight)

    def logits_from_head(self, f):
        return self.cam_from_head(f).mean(dim=(2, 3))

    def cam(self, x):
        return self.cam_from_head(self.head(self.features(x)))


def _image(seed: int = 1, size: int = 16) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _pair(image: torch.Tensor) -> torch.Tensor:
    return torch.cat([image, image.flip(-1)])


def _steps(model, pair, target, n, **kw):
    """``n`` steps from ``pair``; returns (first step, final pair, A⁰)."""
    first = anti_adversarial_step(model, pair, target, **kw)
    x = first.image
    for _ in range(n - 1):
        x = anti_adversarial_step(model, x, target, first.init, **kw).image
    return first, x, first.init


def test_half_scale_steps_follow_the_code():
    assert [half_scale_steps(t) for t in (27, 12, 11, 10, 6, 5, 1)] == [13, 6, 5, 5, 5, 5, 1]


def test_one_step_raises_the_score_term():
    model = ToyCAM().eval()
    pair = _pair(_image())
    for target in range(3):
        step = anti_adversarial_step(model, pair, target, lam=0.0)
        after = anti_adversarial_step(model, step.image, target, lam=0.0)
        assert after.score > step.score
        cam = model.cam(pair)  # the score suppresses every other class, labelled or not
        s = F.relu(cam).mean(dim=(2, 3))
        by_hand = sum(s[b, target] - sum(s[b, k] for k in range(3) if k != target) for b in range(2))
        torch.testing.assert_close(score_term(cam, target), by_hand)
        torch.testing.assert_close(step.score, by_hand.detach())


def test_regulariser_is_zero_at_step_zero_so_lambda_does_not_change_the_first_step():
    model = ToyCAM().eval()
    pair = _pair(_image())
    plain = anti_adversarial_step(model, pair, 1, lam=0.0)
    heavy = anti_adversarial_step(model, pair, 1, lam=100.0)
    assert heavy.regulariser == 0
    torch.testing.assert_close(heavy.init, heavy.attribution)
    assert torch.equal(plain.image, heavy.image)  # d|u|/du = 0 at u = 0: no gradient from L_AD at step 0


def test_large_lambda_holds_the_masked_region_still():
    model = ToyCAM().eval()
    pair = _pair(_image())
    changes = {}
    for lam in (0.0, 50.0):
        first, x, a0 = _steps(model, pair, 0, 5, lam=lam)
        a = attribution_map(model, x, 0)
        assert first.mask.any() and not first.mask.all()
        changes[lam] = ((a - a0).abs() * first.mask).sum()  # change of A on the step-0 mask after 5 steps
        later = anti_adversarial_step(model, x, 0, a0, lam=lam)  # L_AD of a later step, by hand
        torch.testing.assert_close(later.regulariser, ((later.attribution - a0).abs() * later.mask).sum())
        torch.testing.assert_close(later.mask, later.attribution / later.attribution.max() > 0.5)
    assert changes[0.0] > 0
    # a fixed step of 0.08 leaves a residual wobble, so the change shrinks (to about a third here), not to 0
    assert changes[50.0] < 0.5 * changes[0.0]


def test_step_is_max_normalised_and_clamped_to_the_current_range():
    model = ToyCAM().eval()
    pair = _pair(_image())
    step = anti_adversarial_step(model, pair, 2, step_size=0.08)
    torch.testing.assert_close(step.step.abs().max(), torch.tensor(0.08))
    assert step.step.abs().lt(0.08 - 1e-6).any()  # not a sign step
    assert step.image.min() >= pair.min() and step.image.max() <= pair.max()  # the code's scalar clamp
    torch.testing.assert_close(step.image, (pair + step.step).clamp(pair.min(), pair.max()))
    wide = anti_adversarial_step(model, pair, 2, value_range=(torch.tensor(-1e6), torch.tensor(1e6)))
    torch.testing.assert_close(wide.image, pair + wide.step)
    low, high = torch.tensor([-0.5, -1.0, 0.0]).view(1, 3, 1, 1), torch.tensor([0.5, 1.0, 0.2]).view(1, 3, 1, 1)
    fixed = anti_adversarial_step(model, pair, 2, value_range=(low, high))
    assert (fixed.image >= low).all() and (fixed.image <= high).all()


def test_gradcam_is_the_cam_scaled_by_positive_cells_over_positive_weights():
    model = ToyCAM().eval()
    pair = _pair(_image())
    target = 0
    cam = F.relu(model.cam(pair)[:, target])
    n = (cam > 0).flatten(1).sum(1).float()  # positive cells per flip
    p = (model.classifier.weight[target] > 0).sum().float()  # positive weights of w_c
    by_hand = (n[0] * cam[0] + n[1] * cam[1].flip(-1)) / (p * n.sum())
    torch.testing.assert_close(attribution_map(model, pair, target), by_hand.detach())
    torch.testing.assert_close(attribution_map(model, pair, target, attribution="cam"), (cam[0] + cam[1].flip(-1)))


def test_output_is_in_unit_range_with_max_one_per_class():
    model = ToyCAM().eval()
    image = _image(size=12)
    maps = advcam_maps(model, image, [1, 0], scales=(1.0, 0.5), steps=4)
    assert maps.shape == (2, 12, 12)
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps.flatten(1).max(1).values, torch.ones(2), atol=1e-3, rtol=0)
    assert advcam_maps(model, image, []).shape == (0, 12, 12)


@pytest.mark.parametrize("attribution", ["cam", "gradcam"])
def test_one_iteration_is_the_plain_multiscale_cam(attribution):
    # steps=1 accumulates A⁰ only. With "cam" that is Eq. (2) exactly; with "gradcam" each scale's map is the
    # CAM times 1/(2P) (the same for every scale of this flip-equivariant model), equal after division by the max
    # (exactly so with eps=0; the default + 1e-5 is added to a max 2P times smaller).
    model = ToyCAM().eval()
    image = _image(size=16)
    scales = (1.0, 0.5, 1.5, 2.0)
    got = advcam_maps(model, image, [1, 0], scales=scales, steps=1, attribution=attribution, eps=0.0)
    plain = multiscale_cam(model.cam, image, scales, flip=True, eps=0.0)[0, [1, 0]]
    torch.testing.assert_close(got, plain, atol=1e-6, rtol=0)
    with_eps = advcam_maps(model, image, [1, 0], scales=scales, steps=1, attribution=attribution)
    torch.testing.assert_close(with_eps, plain, atol=1e-3, rtol=0)  # the + 1e-5 meets maps of another size


@pytest.mark.parametrize("quirk", [True, False])
def test_half_scale_runs_half_the_forward_passes(quirk):
    model = ToyCAM().eval()
    advcam_maps(model, _image(size=16), [0, 1], scales=(1.0, 0.5, 2.0), steps=12, half_steps_at_half_scale=quirk)
    counts = {size: model.calls.count(size) for size in set(model.calls)}
    half = 6 if quirk else 12
    assert counts == {(16, 16): 2 * 12, (8, 8): 2 * half, (32, 32): 2 * 12}  # one pass per iteration and class


def test_half_scale_quirk_changes_only_the_half_scale_weighting():
    model = ToyCAM().eval()
    image = _image(size=16)
    kw = {"scales": (1.0, 0.5), "steps": 12}
    # the 0.5 map with 6 iterations (quirk) vs 12: accumulating 6 of 12 steps is a different map
    with_quirk = advcam_maps(model, image, [0], half_steps_at_half_scale=True, **kw)
    without = advcam_maps(model, image, [0], half_steps_at_half_scale=False, **kw)
    assert not torch.allclose(with_quirk, without, atol=1e-4)
    # with the 1.0 scale alone the quirk is only the common weight 2, which cancels in the normalisation
    alone_quirk = advcam_maps(model, image, [0], scales=(1.0,), steps=12, half_steps_at_half_scale=True)
    alone = advcam_maps(model, image, [0], scales=(1.0,), steps=12, half_steps_at_half_scale=False)
    torch.testing.assert_close(alone_quirk, alone, atol=1e-4, rtol=0)


def test_area_reduction_equals_sum_at_the_reference_size_and_scales_with_area():
    model = ToyCAM().eval()
    pair = _pair(_image(size=16))  # 8x8 = 64 feature cells
    first = anti_adversarial_step(model, pair, 0, lam=0.0)
    x, a0 = first.image, first.init
    kw = {"mask_threshold": 0.3}
    as_sum = anti_adversarial_step(model, x, 0, a0, lam=7.0, reg_reduction="sum", **kw)
    at_ref = anti_adversarial_step(model, x, 0, a0, lam=7.0, reg_reduction="area", reference_cells=64, **kw)
    assert as_sum.regulariser > 0
    torch.testing.assert_close(at_ref.regulariser, as_sum.regulariser)
    torch.testing.assert_close(at_ref.image, as_sum.image)
    big = anti_adversarial_step(model, x, 0, a0, lam=7.0, reg_reduction="area", reference_cells=256, **kw)
    times4 = anti_adversarial_step(model, x, 0, a0, lam=28.0, reg_reduction="sum", **kw)
    torch.testing.assert_close(big.regulariser, 4 * as_sum.regulariser)
    torch.testing.assert_close(big.image, times4.image)


def test_real_classifier_keeps_its_parameters_and_gets_no_grad():
    torch.manual_seed(0)
    model = CAMClassifier(build_backbone("small", (2, 2, 2, 1)), 4, extra_kernel=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():  # gradients are turned on inside, even here
        maps = advcam_maps(model, image, [3, 1], scales=(1.0, 0.5), steps=3)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_bad_inputs_are_refused():
    model = ToyCAM()
    with pytest.raises(ValueError, match="eval mode"):
        advcam_maps(model, _image(), [0])
    model.eval()
    with pytest.raises(ValueError, match="image must be"):
        advcam_maps(model, torch.zeros(2, 3, 8, 8), [0])
    with pytest.raises(ValueError, match="steps"):
        advcam_maps(model, _image(), [0], steps=0)
    with pytest.raises(ValueError, match="reg_reduction"):
        advcam_maps(model, _image(), [0], reg_reduction="mean")
    with pytest.raises(ValueError, match="pair"):
        anti_adversarial_step(model, _image(), 0)
