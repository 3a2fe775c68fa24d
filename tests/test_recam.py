"""ReCAM (Chen et al., CVPR 2022): class features, loss, product weight, gradients and lr groups on tiny tensors."""

import pytest
import torch
import torch.nn.functional as F

from esol_lib.method.cam import multiscale_cam
from esol_lib.method.recam import (
    ClassPredictor,
    class_features,
    recam_cam_fn,
    recam_loss,
    recam_objective,
    recam_param_groups,
    recam_weight,
)
from esol_lib.models.backbone import build_backbone
from esol_lib.models.classifier import CAMClassifier


def _tiny_model(num_classes: int = 3) -> CAMClassifier:
    torch.manual_seed(0)
    return CAMClassifier(build_backbone("small", (2, 2, 2, 1)), num_classes, extra_kernel=1, extra_channels=8)


def test_class_features_are_the_mean_of_the_max_normalised_relu_cam_times_f_by_hand():
    torch.manual_seed(0)
    f = torch.randn(1, 4, 2, 3)
    w = torch.randn(3, 4, 1, 1)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    feats, targets = class_features(f, w, labels)
    assert feats.shape == (2, 4) and targets.tolist() == [0, 2]
    for row, k in enumerate([0, 2]):
        cam = torch.zeros(2, 3)
        for y in range(2):
            for x in range(3):
                cam[y, x] = max(0.0, float(sum(w[k, c, 0, 0] * f[0, c, y, x] for c in range(4))))
        cam = cam / (cam.max() + 1e-5)
        by_hand = torch.stack([(cam * f[0, c]).mean() for c in range(4)])
        torch.testing.assert_close(feats[row], by_hand)


def test_class_features_give_one_row_per_labelled_pair_image_by_image():
    torch.manual_seed(1)
    f = torch.randn(3, 2, 2, 2)
    w = torch.randn(4, 2, 1, 1)
    labels = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    feats, targets = class_features(f, w, labels)
    assert feats.shape == (3, 2) and targets.tolist() == [1, 3, 0]
    alone, _ = class_features(f[2:], w, labels[2:])  # row 3 is image 2's class 0
    torch.testing.assert_close(feats[2], alone[0])
    zero_cam, _ = class_features(torch.zeros(1, 2, 2, 2), w, labels[:1])  # an all-zero CAM: a zero feature
    assert torch.equal(zero_cam, torch.zeros(2, 2))


def test_recam_loss_is_multilabel_loss_plus_weight_times_per_image_cross_entropy_over_batch():
    torch.manual_seed(2)
    logits = torch.randn(3, 4)
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2, 3, 1])
    class_logits = torch.randn(4, 4)
    loss, parts = recam_loss(logits, labels, class_logits, targets, weight=0.7)
    bce = F.multilabel_soft_margin_loss(logits, labels)
    # ReCAM's Class_Predictor: per image the mean CE over its classes, summed, divided by B = 3 (empty image included)
    ce = (F.cross_entropy(class_logits[:3], targets[:3]) + F.cross_entropy(class_logits[3:], targets[3:])) / 3
    torch.testing.assert_close(loss, bce + 0.7 * ce)
    assert parts["cls"] == pytest.approx(float(bce)) and parts["recam"] == pytest.approx(float(ce))
    assert float(ce) != pytest.approx(float(F.cross_entropy(class_logits, targets)))  # not the mean over pairs
    plain, _ = recam_loss(logits, labels, class_logits, targets, weight=0.0)
    torch.testing.assert_close(plain, bce)


def test_recam_loss_refuses_rows_out_of_order_and_is_zero_without_labels():
    logits = torch.zeros(1, 3)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="targets"):
        recam_loss(logits, labels, torch.zeros(2, 3), torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="class_logits"):
        recam_loss(logits, labels, torch.zeros(3, 3), torch.tensor([0, 2, 2]))
    empty = torch.zeros(0, 3, requires_grad=True)
    loss, parts = recam_loss(logits, torch.zeros(1, 3), empty, torch.zeros(0, dtype=torch.long))
    assert parts["recam"] == 0.0
    torch.testing.assert_close(loss, F.multilabel_soft_margin_loss(logits, torch.zeros(1, 3)))


def test_class_predictor_is_a_bias_free_1x1_layer_with_recams_state_dict_key():
    pred = ClassPredictor(3, 4)
    assert list(pred.state_dict()) == ["classifier.weight"] and pred.classifier.weight.shape == (3, 4, 1, 1)
    z = torch.randn(5, 4)
    torch.testing.assert_close(pred(z), pred.classifier(z[..., None, None]).flatten(1))
    with pytest.raises(ValueError, match="class features"):
        pred(torch.randn(5, 3))


def test_recam_weight_is_the_elementwise_product_and_the_cam_fn_convolves_f_with_it():
    model = _tiny_model()
    pred = ClassPredictor(3, 8)
    prod = recam_weight(model.classifier.weight, pred)
    torch.testing.assert_close(prod, pred.classifier.weight * model.classifier.weight)
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        f = model.head(model.features(x))
        raw = recam_cam_fn(model, pred)(x)
        torch.testing.assert_close(raw, F.conv2d(f, prod))
        cams = multiscale_cam(recam_cam_fn(model, pred), x, scales=[1.0], flip=False)
    up = F.interpolate(F.relu(F.conv2d(f, prod)), size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cams, up / (up.flatten(2).amax(-1)[..., None, None] + 1e-5))
    with pytest.raises(ValueError, match="differ"):
        recam_weight(model.classifier.weight, ClassPredictor(3, 4))


def test_recam_term_gradient_reaches_predictor_backbone_and_classifier_through_the_undetached_cam():
    model = _tiny_model()
    pred = ClassPredictor(3, 8)
    x = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    f = model.head(model.features(x))
    feats, targets = class_features(f, model.classifier.weight, labels)
    logits = model.logits_from_head(f).detach()  # the multi-label term sends no gradient: only the CE term does
    recam_loss(logits, labels, pred(feats), targets, 1.0)[0].backward()
    assert pred.classifier.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0  # through A_c: ReCAM does not detach the CAM
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.extra1.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_param_groups_give_backbone_and_classifier_a_tenth_and_the_predictor_the_full_lr():
    model = _tiny_model()
    pred = ClassPredictor(3, 8)
    groups = recam_param_groups(model, pred, 5e-4)
    assert [g["name"] for g in groups] == ["backbone", "new", "predictor"]
    assert [g["lr"] for g in groups] == pytest.approx([5e-5, 5e-5, 5e-4])
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in model.backbone.parameters()}
    assert id(model.classifier.weight) in ids[1] and id(model.extra2.weight) in ids[1]
    assert ids[2] == {id(pred.classifier.weight)}
    assert sum(len(i) for i in ids) == len(list(model.parameters())) + 1


def test_one_sgd_step_on_the_recam_objective_lowers_it():
    model = _tiny_model()
    model.eval()  # fixed BatchNorm statistics, so the two evaluations see the same function
    pred = ClassPredictor(3, 8)
    x = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    opt = torch.optim.SGD(recam_param_groups(model, pred, 0.5, backbone_mult=0.1), lr=0.5)
    before, parts = recam_objective(model, pred, x, labels)
    assert set(parts) == {"cls", "recam"}
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = recam_objective(model, pred, x, labels)
    assert float(after) < float(before.detach())
