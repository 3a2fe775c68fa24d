"""ESOL core on real tensors: zero offsets reproduce the baseline, gradients reach only the offset
branch of each stage, Eq. (5)–(7) by hand, the divergence guard, the ablation switches."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from esol_lib.method.losses import area_loss, area_maps, expansion_loss, feature_clip, multilabel_loss, shrinkage_loss
from esol_lib.models import CAMClassifier, build_backbone
from esol_lib.models.esol import ESOLModel
from esol_lib.models.samplers import DeformableSampler, kernel_grid, sampling_points
from esol_lib.runtime.errors import DivergenceError
from esol_lib.steps._esol_shared import OffsetGuard


def _baseline(kernel: int = 3) -> CAMClassifier:
    torch.manual_seed(0)
    model = CAMClassifier(build_backbone("small", [1, 2, 2, 1]), num_classes=3, extra_kernel=kernel)
    return model.eval()


def _cfg(**kw):
    exp = dict(offsets=True, deformable=True, train_regular=False, clip=False, beta=0.15)
    shr = dict(offsets=True, train_regular=False)
    exp.update({k[4:]: v for k, v in kw.items() if k.startswith("exp_")})
    shr.update({k[4:]: v for k, v in kw.items() if k.startswith("shr_")})
    return SimpleNamespace(**exp), SimpleNamespace(**shr)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kernel", [3, 1])
def test_zero_offsets_reproduce_the_baseline_exactly(kernel):
    base = _baseline(kernel)
    model = ESOLModel(copy.deepcopy(base), *_cfg()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.cam(x), base.cam(x), rtol=1e-5, atol=1e-5)


def _one_step(model: ESOLModel, stage: str, loss_of) -> None:
    params = model.stage_parameters(stage)
    opt = torch.optim.SGD(params, lr=10.0)
    model.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]).float()
    loss_of(model, x, y).backward()
    opt.step()


def test_expansion_step_moves_only_the_expansion_offsets():
    model = ESOLModel(_baseline(), *_cfg(exp_clip=True))
    before = _snapshot(model)
    _one_step(model, "expansion", lambda m, x, y: expansion_loss(m(x), y, alpha=1.0))
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("es.offset_conv") for k in changed), changed
    assert "es.weight" not in changed  # regular weights stay the baseline's (A.1.3)


def test_shrinkage_step_moves_only_the_shrinkage_offsets():
    model = ESOLModel(_baseline(), *_cfg(exp_clip=True))
    with torch.no_grad():
        model.es.offset_conv.bias.fill_(0.3)  # as if expanded: ES must stay where expansion left it
    before = _snapshot(model)

    def loss(m, x, y):
        logits, cams = m(x, return_cams=True)
        return shrinkage_loss(logits, y, cams)[0]

    _one_step(model, "shrinkage", loss)
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("ss.offset_conv") for k in changed), changed


def test_backbone_gets_no_gradient_and_keeps_its_statistics():
    model = ESOLModel(_baseline(), *_cfg())
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    model.train()
    expansion_loss(model(torch.randn(2, 3, 32, 32)), torch.ones(2, 3), 1.0).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in stats.items())


def test_expansion_loss_is_minus_alpha_times_eq1():
    logits, labels = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    by_hand = -0.5 * (torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(1 - torch.sigmoid(torch.tensor(-1.0))))
    torch.testing.assert_close(multilabel_loss(logits, labels), by_hand)
    torch.testing.assert_close(expansion_loss(logits, labels, 0.01), -0.01 * by_hand)


def test_feature_clip_matches_eq7_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [4.0, 10.0]], [[2.0, 2.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
    got = feature_clip(x, beta=0.15)
    # channel 0: max 10 → ceiling 1.5; channel 1: max 2 → ceiling 0.3
    expected = torch.tensor([[[[0.0, 1.0], [1.5, 1.5]], [[0.3, 0.3], [0.3, 0.0]]]])
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="beta"):
        feature_clip(x, beta=0.0)


def test_area_loss_matches_eq6_by_hand():
    cams = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[10.0, -10.0], [10.0, -10.0]]]])  # (1, 2, 2, 2)
    # S_1 = 0.5 (sigmoid(0)); with s = sigmoid(10), S_2 = (2 s + 2 (1 - s)) / 4 = 0.5 → L_area = (0.5 + 0.5) / 2
    torch.testing.assert_close(area_loss(area_maps(cams, "sigmoid")), torch.tensor(0.5))
    # max-normalised CAMs: class 1 is all zero; class 2 → [1, 0, 1, 0] / (1 + eps) → S_2 ≈ 0.5 → L ≈ 0.25
    torch.testing.assert_close(area_loss(area_maps(cams, "cam")), torch.tensor(0.25), atol=1e-5, rtol=0)
    logits, labels = cams.mean((-2, -1)), torch.tensor([[0.0, 1.0]])
    loss, parts = shrinkage_loss(logits, labels, cams, gamma=2.0, mu=3.0)
    torch.testing.assert_close(loss, 2.0 * multilabel_loss(logits, labels) + 3.0 * 0.5)
    assert parts["area"] == pytest.approx(0.5)


def test_offset_guard_trips_on_a_runaway_and_not_before():
    sampler = DeformableSampler(torch.nn.Conv2d(4, 4, 3, padding=1, bias=False))
    guard = OffsetGuard("shrinkage", sampler, max_offset=2.0)
    x = torch.randn(1, 4, 6, 6)
    sampler(x)
    guard(1, sampler, {})  # zero offsets: fine
    with torch.no_grad():
        sampler.offset_conv.bias.fill_(50.0)  # a forced runaway
    sampler(x)
    with pytest.raises(DivergenceError, match=r"shrinkage.*step 7.*max_offset"):
        guard(7, sampler, {})


def test_sampling_points_before_and_after():
    sampler = DeformableSampler(torch.nn.Conv2d(2, 2, 3, padding=1, bias=False))
    x = torch.randn(1, 2, 5, 5)
    regular, deformed = sampling_points(sampler, x, 2, 3)
    assert torch.equal(regular, deformed)
    assert regular.tolist()[0] == [1.0, 2.0] and regular.tolist()[4] == [2.0, 3.0]  # row-major R around (2, 3)
    with torch.no_grad():
        sampler.offset_conv.bias.copy_(torch.tensor([1.0, -1.0] * 9))
    _, deformed = sampling_points(sampler, x, 2, 3)
    torch.testing.assert_close(deformed, regular + torch.tensor([1.0, -1.0]))
    assert kernel_grid(1).tolist() == [[0.0, 0.0]]


def test_deformable_sampling_uses_dy_dx_order():
    """A whole-cell offset (Δy=1, Δx=0) on a 1×1 kernel reads the pixel one row below."""
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    sampler = DeformableSampler(conv)
    with torch.no_grad():
        sampler.offset_conv.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = sampler(x)
    torch.testing.assert_close(out[0, 0, :3], x[0, 0, 1:])


def test_ablation_switches():
    conv = torch.nn.Conv2d(2, 2, 3, padding=1, bias=False)
    plain = DeformableSampler(conv, offsets=False)  # Table 5 without DT
    assert plain.offset_conv is None and plain.learnable_parameters() == []
    no_dcn = DeformableSampler(conv, deformable=False)  # A.1.1: loss maximisation on a plain conv
    assert no_dcn.offset_conv is None and no_dcn.weight.requires_grad
    regular = DeformableSampler(conv, train_regular=True)  # A.1.3
    assert regular.offset_conv is not None and regular.weight.requires_grad
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(plain(x), conv(x))


def test_grid_sample_path_equals_torchvision_deform_conv2d_in_values_and_gradients():
    from torchvision.ops import deform_conv2d

    from esol_lib.models.samplers import deform_conv2d_sampled

    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    off = (3 * torch.randn(2, 18, 7, 6, dtype=torch.float64)).requires_grad_()  # many samples off the map
    b = torch.randn(4, dtype=torch.float64)
    ref = deform_conv2d(x, off, w, b, padding=(1, 1))
    got = deform_conv2d_sampled(x, off, w, b)
    torch.testing.assert_close(got, ref)
    for g_ref, g_got in zip(
        torch.autograd.grad(ref.square().sum(), [x, off, w]), torch.autograd.grad(got.square().sum(), [x, off, w])
    ):
        torch.testing.assert_close(g_got, g_ref)


def test_stage_with_nothing_to_learn_finishes_without_training(tmp_path, monkeypatch):
    """Table 5 row 'FL only': expansion without offsets has no parameter; it is saved untouched."""
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import expand, make_cam, shrink, start_run, train_cam
    from esol_lib.steps._esol_shared import load_stage_model

    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", ["expansion.offsets=false"])
    run = start_run(tmp_path / "run", cfg, data_root=None)
    train_cam(run, progress=False)
    result = expand(run, progress=False)
    assert result.steps == 0 and run.checkpoint("expansion").is_file()
    model = load_stage_model(run, cfg, "expansion", 3, torch.device("cpu"))
    assert model.es.offset_conv is None or all(float(p.abs().max()) == 0 for p in model.es.offset_conv.parameters())
    assert shrink(run, progress=False).steps == cfg.shrinkage.max_steps  # the next stage trains as usual
    make_cam(run, "expansion", progress=False)


def test_one_expansion_checkpoint_serves_shrinkage_with_and_without_offsets(tmp_path):
    """Table 5 forks the expansion model into 'shrinkage without DT_s' and back: the shrinkage sampler's
    offset branch, untrained during expansion, may be present on one side only."""
    from esol_lib.models.esol import UNTRAINED_IN_EXPANSION
    from esol_lib.runtime.atomic import atomic_save
    from esol_lib.runtime.checkpoint import load_stage_checkpoint
    from esol_lib.runtime.rundir import RunDir

    run = RunDir(tmp_path)
    with_dts = ESOLModel(_baseline(), *_cfg(exp_clip=True))
    with torch.no_grad():
        with_dts.es.offset_conv.weight.normal_()  # a trained expansion sampler
    atomic_save({"model": with_dts.state_dict(), "done": True}, run.checkpoint("expansion"))
    without = ESOLModel(_baseline(), *_cfg(exp_clip=True, shr_offsets=False))
    load_stage_checkpoint(run, "expansion", without, optional=UNTRAINED_IN_EXPANSION)
    torch.testing.assert_close(without.es.offset_conv.weight, with_dts.es.offset_conv.weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # zero SS offsets == no SS offsets: the same model
        torch.testing.assert_close(without(x), with_dts.eval()(x), rtol=1e-5, atol=1e-5)

    atomic_save({"model": without.state_dict(), "done": True}, run.checkpoint("expansion"))
    again = ESOLModel(_baseline(), *_cfg(exp_clip=True))
    load_stage_checkpoint(run, "expansion", again, optional=UNTRAINED_IN_EXPANSION)
    assert float(again.ss.offset_conv.weight.detach().abs().sum()) == 0.0  # left at its zero init
    with pytest.raises(RuntimeError, match="es.offset_conv"):  # anything else must still match
        load_stage_checkpoint(run, "expansion", ESOLModel(_baseline(), *_cfg(exp_offsets=False)))


def test_area_loss_over_present_classes_by_hand():
    maps = torch.zeros(2, 3, 2, 2)
    maps[0, 0] = 1.0  # image 0: class 0 covers everything
    maps[0, 1] = 0.5  # an absent class's map
    maps[1, 2, 0, 0] = 1.0  # image 1: class 2 covers a quarter
    labels = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    torch.testing.assert_close(area_loss(maps), torch.tensor((4 + 2 + 1) / 24))  # Eq. (6): all C classes
    torch.testing.assert_close(area_loss(maps, labels), torch.tensor((1.0 + 0.25) / 2))  # GT classes only
    with pytest.raises(ValueError, match="area_classes"):
        shrinkage_loss(torch.zeros(2, 3), labels, maps, area_classes="some")
