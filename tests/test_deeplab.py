"""DeepLab-v2 (Chen et al., TPAMI 2017): ASPP, lr multipliers, loss, multi-scale/flip inference, CRF,
and the train-seg / eval-seg stages end to end on the smoke profile."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esol_lib.method.seg_recipe import (
    crf_postprocess,
    param_groups,
    predict,
    seg_loss,
    upsample_logits,
)
from esol_lib.models.deeplab import ASPP, DeepLabV2, build_deeplab
from esol_lib.runtime.config import CRFConfig, SegConfig
from esol_lib.runtime.config_io import load_config
from esol_lib.runtime.errors import ConfigError, StageError
from esol_lib.steps.segmentation import eval_seg, prediction_dir, train_seg, training_split

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _small_deeplab(num_classes: int = 3, dilations=(1, 2)) -> DeepLabV2:
    torch.manual_seed(0)
    cfg = SegConfig(backbone="small", pretrained=None, dilations=list(dilations))
    return build_deeplab(cfg, num_classes)


# ------------------------------------------------------------------------------------------ ASPP


def test_aspp_sums_one_atrous_3x3_branch_per_rate():
    torch.manual_seed(0)
    aspp = ASPP(4, 3, [1, 2, 3])
    assert [c.dilation for c in aspp.branches] == [(1, 1), (2, 2), (3, 3)]
    assert [c.padding for c in aspp.branches] == [(1, 1), (2, 2), (3, 3)]
    assert all(c.kernel_size == (3, 3) and c.bias is not None for c in aspp.branches)
    assert all(float(c.bias.detach().abs().max()) == 0.0 for c in aspp.branches)  # bias initialised to 0
    std = torch.cat([c.weight.detach().flatten() for c in aspp.branches]).std()
    assert 0.005 < float(std) < 0.02  # N(0, 0.01)
    x = torch.randn(2, 4, 9, 11)
    for c in aspp.branches:
        nn.init.normal_(c.bias)
    by_hand = sum(F.conv2d(x, c.weight, c.bias, padding=d, dilation=d) for c, d in zip(aspp.branches, [1, 2, 3]))
    out = aspp(x)
    assert out.shape == (2, 3, 9, 11)
    torch.testing.assert_close(out, by_hand)


def test_deeplab_output_stride_and_dilated_resnet():
    model = _small_deeplab(3)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 8, 8)  # small: strides (1, 2, 2, 1)
    net = build_deeplab(SegConfig(backbone="resnet50", pretrained=None), 21)
    layer3, layer4 = net.backbone.stages[3], net.backbone.stages[4]
    assert {m.dilation for m in layer3.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {(2, 2)}
    assert {m.dilation for m in layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {(4, 4)}
    assert [c.dilation[0] for c in net.aspp.branches] == [6, 12, 18, 24]
    net.eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 21, 8, 8)  # output stride 8


def test_seg_strides_override_the_layout_and_bad_ones_name_the_key():
    net = build_deeplab(SegConfig(backbone="small", pretrained=None, strides=[2, 2, 2, 1], dilations=[1]), 3)
    net.eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 128, 128)).shape == (1, 3, 16, 16)  # output stride 8, as the cpu profile
    for bad in ([2, 2, 1], [3, 2, 2, 1], "2221"):
        with pytest.raises(ConfigError, match=r"seg\.strides"):
            build_deeplab(SegConfig(backbone="small", pretrained=None, strides=bad), 3)


def test_cpu_profile_runs_deeplab_at_the_strides_its_backbone_was_pretrained_at():
    cfg = load_config("cpu")
    assert cfg.seg.pretrained == cfg.model.pretrained == "openmoji"
    assert cfg.seg.strides == cfg.model.strides == [2, 2, 2, 1]


def test_param_groups_use_deeplab_lr_multipliers():
    model = _small_deeplab()
    groups = param_groups(model, 0.01)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(0.01)
    assert by_name["aspp_weight"]["lr"] == pytest.approx(0.1)
    assert by_name["aspp_bias"]["lr"] == pytest.approx(0.2)
    assert by_name["aspp_bias"]["weight_decay"] == 0.0

    def ids(ps):
        return {id(p) for p in ps}

    assert ids(by_name["aspp_weight"]["params"]) == {id(c.weight) for c in model.aspp.branches}
    assert ids(by_name["aspp_bias"]["params"]) == {id(c.bias) for c in model.aspp.branches}
    assert ids(by_name["backbone"]["params"]) == ids(model.backbone.parameters())
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    # Through make_sgd + PolyLR the multipliers survive.
    from esol_lib.runtime.schedule import PolyLR, make_sgd

    opt = make_sgd(groups, 0.01, momentum=0.9, weight_decay=5e-4)
    sched = PolyLR(opt, 10)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.01, 0.1, 0.2])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 5e-4, 0.0]
    assert sched.max_steps == 10


# ------------------------------------------------------------------------------------------ loss


def test_seg_loss_ignores_void_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5, 6)
    target = torch.full((1, 5, 6), 255, dtype=torch.long)
    target[0, 2, 3] = 2
    expected = -F.log_softmax(logits[0, :, 2, 3], dim=0)[2]
    torch.testing.assert_close(seg_loss(logits, target), expected)
    # all void: zero (not NaN), and it still backpropagates
    logits.requires_grad_(True)
    empty = seg_loss(logits, torch.full((1, 5, 6), 255, dtype=torch.long))
    assert float(empty.detach()) == 0.0
    empty.backward()


def test_seg_loss_upsamples_logits_to_the_label_size():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :2] = 255
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seg_loss(logits, target), F.cross_entropy(up, target, ignore_index=255))
    assert upsample_logits(up, (16, 16)) is up


# ------------------------------------------------------------------------------------------ inference


def test_predict_returns_probabilities_at_image_size():
    model = _small_deeplab(3)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (21, 27, 3), dtype=np.uint8)
    model.train()
    probs = predict(model, image, MEAN, STD, scales=[0.5, 1.0, 1.5], flip=True)
    assert model.training  # mode restored
    assert probs.shape == (3, 21, 27) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert probs.min() >= 0.0


def test_flip_averaging_is_flip_equivariant():
    model = _small_deeplab(3)  # stride-2 convolutions: the network alone is not flip-equivariant
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    for scales in ([1.0], [0.75, 1.25]):
        p = predict(model, image, MEAN, STD, scales=scales, flip=True)
        q = predict(model, mirrored, MEAN, STD, scales=scales, flip=True)
        np.testing.assert_allclose(q, p[:, :, ::-1], atol=1e-5)
    # a mirror-symmetric image gets a mirror-symmetric prediction
    sym = np.concatenate([image[:, :15], image[:, :15][:, ::-1]], axis=1)
    p = predict(model, sym, MEAN, STD, scales=[1.0], flip=True)
    np.testing.assert_allclose(p, p[:, :, ::-1], atol=1e-5)
    without = predict(model, image, MEAN, STD, scales=[1.0], flip=False)
    assert not np.allclose(without, without[:, :, ::-1], atol=1e-3)


def test_crf_postprocess_keeps_a_confident_labelling():
    h, w = 24, 32
    labels = np.zeros((h, w), np.int64)
    labels[6:18, 8:20] = 1
    labels[:, 26:] = 2
    image = np.zeros((h, w, 3), np.uint8)
    image[labels == 1] = (220, 30, 30)
    image[labels == 2] = (30, 30, 220)
    probs = np.full((3, h, w), 0.025, np.float32)
    np.put_along_axis(probs, labels[None], 0.95, axis=0)
    out = crf_postprocess(image, probs, CRFConfig())
    assert out.shape == (h, w) and out.dtype == np.int64
    np.testing.assert_array_equal(out, labels)


# ------------------------------------------------------------------------------------------ stages


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke run whose 'baseline' pseudo masks are the ground truth of the cam split (stand-in for refine)."""
    from esol_lib.data import read_split
    from esol_lib.steps import start_run

    tmp = tmp_path_factory.mktemp("seg")
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    try:
        cfg = load_config("smoke")
        run = start_run(tmp / "run", cfg, None)
        cfg = run.load_config()
        out = run.pseudo_masks("baseline")
        out.mkdir(parents=True)
        root = tmp / "data" / "synth-smoke"
        for image_id in read_split(root, cfg.data.cam_split):
            shutil.copy(root / "SegmentationClass" / f"{image_id}.png", out / f"{image_id}.png")
        yield run
    finally:
        mp.undo()


def test_train_and_eval_seg_end_to_end(smoke_run):
    run = smoke_run
    result = train_seg(run, "baseline", progress=False)
    assert run.checkpoint("seg-baseline").is_file()
    assert result.steps == run.load_config().seg.max_steps
    metrics = eval_seg(run, "baseline", progress=False)
    path = run.metrics("seg-baseline_val")
    assert path.is_file()
    saved = json.loads(path.read_text())
    for key in ("stage", "split", "miou", "precision", "recall", "f1", "per_class_iou", "crf"):
        assert key in saved
    assert saved["stage"] == "baseline" and saved["split"] == "val" and saved["crf"] is True
    assert 0.0 <= saved["miou"] <= 1.0
    assert list(saved["per_class_iou"])[0] == "background" and len(saved["per_class_iou"]) == 4
    assert metrics["miou"] == saved["miou"]
    from esol_lib.data import read_split

    ids = read_split(run.load_config().data.root, "val")
    pngs = sorted(p.stem for p in prediction_dir(run, "baseline").glob("*.png"))
    assert pngs == sorted(ids)
    # training again is a no-op (the finished checkpoint is reused)
    assert train_seg(run, "baseline", progress=False).steps == 0


def test_missing_pseudo_masks_name_esol_refine(smoke_run):
    with pytest.raises(StageError, match="esol refine --run .* --stage shrinkage"):
        train_seg(smoke_run, "shrinkage", progress=False)
    with pytest.raises(StageError, match="esol train-seg"):
        eval_seg(smoke_run, "expansion", progress=False)
    with pytest.raises(StageError, match="unknown stage"):
        train_seg(smoke_run, "nope", progress=False)


def test_training_split_prefers_a_complete_train_split(smoke_run):
    cfg = smoke_run.load_config()
    masks = smoke_run.pseudo_masks("baseline")
    assert training_split(cfg, masks)[0] == cfg.data.cam_split
    # train_split 'val' has no pseudo masks here: fall back to the cam split
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_split="val"))
    split, ids = training_split(other, masks)
    assert split == cfg.data.cam_split and len(ids) == cfg.data.synth.train
    # and when 'val' is complete it is used
    root = smoke_run.load_config().data.root
    tmp = masks.parent / "all"
    shutil.copytree(masks, tmp)
    from pathlib import Path

    from esol_lib.data import read_split

    for image_id in read_split(root, "val"):
        shutil.copy(Path(root) / "SegmentationClass" / f"{image_id}.png", tmp / f"{image_id}.png")
    assert training_split(other, tmp)[0] == "val"
    (tmp / f"{ids[0]}.png").unlink()
    (tmp / f"{read_split(root, 'val')[0]}.png").unlink()
    with pytest.raises(StageError, match="pseudo masks of split"):
        training_split(other, tmp)
    shutil.rmtree(tmp)


def test_aspp_lr_mult_is_deeplabs_on_a_pretrained_backbone_and_one_from_scratch():
    from esol_lib.method.seg_recipe import aspp_lr_mult
    from esol_lib.runtime.config_io import load_config
    from esol_lib.runtime.errors import ConfigError

    assert aspp_lr_mult(load_config("voc12").seg) == (10.0, 20.0)
    cpu = load_config("toy").seg
    assert cpu.pretrained is None and aspp_lr_mult(cpu) == (1.0, 1.0)
    assert aspp_lr_mult(load_config("cpu", ["seg.aspp_lr_mult=null"]).seg) == (10.0, 20.0)  # openmoji backbone
    assert aspp_lr_mult(load_config("cpu", ["seg.aspp_lr_mult=[10, 20]"]).seg) == (10.0, 20.0)
    groups = {g["name"]: g["lr"] for g in param_groups(_small_deeplab(), 0.01, aspp_lr_mult(cpu))}
    assert groups == pytest.approx({"backbone": 0.01, "aspp_weight": 0.01, "aspp_bias": 0.01})
    with pytest.raises(ConfigError, match="seg.aspp_lr_mult"):
        aspp_lr_mult(load_config("cpu", ["seg.aspp_lr_mult=[10]"]).seg)
