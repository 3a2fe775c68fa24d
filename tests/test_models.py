"""Backbones and the CAM classifier (§3.1, Eq. (1)): shapes, strides, weights, freezing, CAM = GAP algebra."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision

from esol_lib.models import (
    IMAGENET_FILES,
    Backbone,
    CAMClassifier,
    build_backbone,
    build_classifier,
    multilabel_loss,
)
from esol_lib.runtime.config import ModelConfig
from esol_lib.runtime.errors import ConfigError, WeightsNotFoundError


def _small_classifier(num_classes: int = 4, **kwargs) -> CAMClassifier:
    torch.manual_seed(0)
    return CAMClassifier(build_backbone("small", (1, 2, 2, 1)), num_classes, **kwargs)


# ----------------------------------------------------------------------------- backbones


@pytest.mark.parametrize(("strides", "size"), [((2, 2, 2, 1), 4), ((2, 2, 1, 1), 8)])
def test_resnet50_strides_give_irn_output_size(strides, size):
    net = build_backbone("resnet50", strides).eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 64, 64))
    assert set(feats) == {"stem", "layer1", "layer2", "layer3", "layer4", "out"}
    assert feats["out"].shape == (1, 2048, size, size)
    assert feats["stem"].shape[-1] == 16 and feats["layer1"].shape[1] == 256
    assert net.out_channels == 2048 and net.stage_channels == [256, 512, 1024, 2048]
    assert len(net.stages) == 5


def test_small_backbone_cpu_profile_has_output_stride_4():
    net = build_backbone("small", [1, 2, 2, 1])
    feats = net(torch.zeros(2, 3, 64, 64))
    assert isinstance(net, Backbone)
    assert feats["out"].shape == (2, 128, 16, 16)
    assert [feats[f"layer{i}"].shape[1] for i in range(1, 5)] == [32, 64, 128, 128] == net.stage_channels
    assert feats["out"] is feats["layer4"]


def test_unknown_backbone_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"model\.backbone.*resnet50.*resnet101.*small"):
        build_backbone("vgg16")


@pytest.mark.parametrize("strides", [(2, 2, 2), (2, 3, 2, 1), (2, 2, 2, 1, 1), "2221", (2.0, 2, 2, 1)])
def test_bad_strides_name_the_key(strides):
    with pytest.raises(ConfigError, match=r"model\.strides"):
        build_backbone("small", strides)


def test_bad_frozen_stages_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.frozen_stages"):
        build_backbone("small", (1, 2, 2, 1), frozen_stages=6)


def test_imagenet_without_local_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone("resnet50", pretrained="imagenet")
    msg = str(info.value)
    assert IMAGENET_FILES["resnet50"][0] in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert "download" in msg and "model.pretrained" in msg


def test_imagenet_weights_are_read_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), ckpt_dir / IMAGENET_FILES["resnet50"][1])
    net = build_backbone("resnet50", pretrained="imagenet")
    torch.testing.assert_close(net.stages[0][0].weight, reference.conv1.weight)


def test_missing_pretrained_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "r50.pth"
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        build_backbone("resnet50", pretrained=str(missing))


def test_pretrained_path_loads_a_torchvision_state_dict_with_fc(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)  # includes fc.weight / fc.bias, which are dropped
    net = build_backbone("resnet50", (2, 2, 2, 1), str(path))
    stem, layer1, layer2, layer3, layer4 = net.stages
    torch.testing.assert_close(stem[0].weight, reference.conv1.weight)
    torch.testing.assert_close(stem[1].running_mean, reference.bn1.running_mean)
    torch.testing.assert_close(layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    torch.testing.assert_close(layer4[0].downsample[0].weight, reference.layer4[0].downsample[0].weight)
    assert layer4[0].conv2.stride == (1, 1)  # weights load whatever the strides


def test_pretrained_file_of_another_arch_is_a_config_error(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(build_backbone("small", (1, 2, 2, 1)).state_dict(), path)
    with pytest.raises(ConfigError, match=r"model\.pretrained.*resnet50"):
        build_backbone("resnet50", pretrained=str(path))


def test_freeze_bn_keeps_running_stats_in_train_mode():
    net = build_backbone("small", (1, 2, 2, 1), freeze_bn=True).train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    net(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert all(not bn.training for bn in bns) and net.training
    for bn, mean in zip(bns, before):
        torch.testing.assert_close(bn.running_mean, mean)
        assert not bn.weight.requires_grad and not bn.bias.requires_grad
    assert all(m.weight.requires_grad for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_frozen_stages_freezes_the_first_k_modules():
    net = build_backbone("small", (1, 2, 2, 1), frozen_stages=2).train()
    stem, layer1, layer2 = net.stages[:3]
    assert not any(p.requires_grad for p in [*stem.parameters(), *layer1.parameters()])
    assert all(p.requires_grad for p in layer2.parameters())
    assert not stem.training and not layer1.training and layer2.training


# ----------------------------------------------------------------------------- CAM classifier


def test_classifier_shapes_and_gap_of_cam_equals_logits():
    model = _small_classifier().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        cam = model.cam(x)
    assert logits.shape == (2, 4) and cam.shape == (2, 4, 16, 16)
    torch.testing.assert_close(cam.mean(dim=(-2, -1)), logits, atol=1e-5, rtol=1e-5)
    assert model.classifier.bias is None and model.extra1.bias is None


def test_extra_layers_are_plain_convs_of_the_configured_size():
    model = _small_classifier(extra_kernel=3, extra_channels=16)
    assert isinstance(model.extra1, torch.nn.Conv2d) and model.extra1.weight.shape == (16, 128, 3, 3)
    assert model.extra2.weight.shape == (16, 16, 3, 3) and model.classifier.weight.shape == (4, 16, 1, 1)
    assert model.head(model.features(torch.zeros(1, 3, 32, 32))).min() >= 0  # ReLU after the extra convs


def test_extra_kernel_1_works_and_other_kernels_are_rejected():
    model = _small_classifier(extra_kernel=1, extra_channels=0)
    assert model.extra1.weight.shape == (128, 128, 1, 1)
    assert model.cam(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 16, 16)
    with pytest.raises(ConfigError, match=r"model\.extra_kernel"):
        _small_classifier(extra_kernel=5)


def test_param_groups_split_backbone_and_new_layers():
    model = CAMClassifier(build_backbone("small", (1, 2, 2, 1), frozen_stages=1), 3)
    backbone_group, new_group = model.param_groups(0.1, 10.0)
    assert backbone_group["name"] == "backbone" and new_group["name"] == "new"
    assert backbone_group["lr"] == 0.1 and new_group["lr"] == pytest.approx(1.0)
    new_params = [model.extra1.weight, model.extra2.weight, model.classifier.weight]
    assert {id(p) for p in new_group["params"]} == {id(p) for p in new_params}
    trainable_backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    assert {id(p) for p in backbone_group["params"]} == {id(p) for p in trainable_backbone}
    assert not any(id(p) in {id(q) for q in backbone_group["params"]} for p in model.backbone.stages[0].parameters())


def test_multilabel_loss_is_eq1_and_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(5, 20) * 30  # large values: logsigmoid keeps it finite
    labels = (torch.rand(5, 20) > 0.7).float()
    got = multilabel_loss(logits, labels)
    torch.testing.assert_close(got, F.multilabel_soft_margin_loss(logits, labels))
    small = torch.tensor([[0.5, -1.0]])
    by_hand = -(torch.log(torch.sigmoid(small[0, 0])) + torch.log(1 - torch.sigmoid(small[0, 1]))) / 2
    torch.testing.assert_close(multilabel_loss(small, torch.tensor([[1.0, 0.0]])), by_hand)


def test_a_backward_step_changes_backbone_and_new_params():
    model = _small_classifier(num_classes=3).train()
    opt = torch.optim.SGD(model.param_groups(0.1, 10.0), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = multilabel_loss(model(torch.randn(2, 3, 32, 32)), torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    loss.backward()
    opt.step()
    for name in ("classifier.weight", "extra1.weight", "backbone.stages.4.0.conv1.weight"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name])


def test_build_classifier_from_model_config():
    cfg = ModelConfig(backbone="small", strides=[1, 2, 2, 1], pretrained=None, frozen_stages=0, freeze_bn=False)
    model = build_classifier(cfg, num_classes=4)
    assert model.extra1.out_channels == 128 and model.num_classes == 4
    assert model.cam(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 16, 16)
    as_namespace = SimpleNamespace(**{**vars(cfg), "extra_kernel": 1, "extra_channels": 8})
    assert build_classifier(as_namespace, 2).classifier.weight.shape == (2, 8, 1, 1)
