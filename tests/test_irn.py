"""IRN's semantic refinement (§3.4): IR labels, pair labels, boundary network, sparse random walk,
and ``refine`` end to end on the smoke profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from esol_lib.method.affinity import (
    affinity_labels,
    affinity_loss,
    affinity_pairs,
    neighbourhood,
    path_affinities,
    path_points,
)
from esol_lib.method.irn import ir_labels, mask_from_scores, pseudo_mask, random_walk, transition_matrix, walked_scores
from esol_lib.models import build_backbone
from esol_lib.models.boundary import BoundaryNet, boundary_map

# ----------------------------------------------------------------------------- pairs and paths


def test_affinity_pairs_are_irn_half_disc():
    pairs = affinity_pairs(5)
    assert len(pairs) == 34 and len(set(pairs)) == 34
    assert (0, 1) in pairs and (4, 0) in pairs and (1, -4) in pairs
    assert (0, -1) not in pairs and (3, 4) not in pairs  # reverse pairs implied; 3²+4² = 25 is not < 25
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in pairs)
    assert len(neighbourhood(5)) == 2 * 34 + 1


def test_path_points_cover_the_segment_target_first():
    assert path_points((0, 3)) == ((0, 3), (0, 2), (0, 1), (0, 0))
    pts = path_points((2, 2))
    assert pts[0] == (2, 2) and pts[-1] == (0, 0) and (1, 1) in pts


# ----------------------------------------------------------------------------- IR labels


def test_ir_labels_give_fg_ignore_bg_bands():
    h, w = 24, 30
    x = np.arange(w, dtype=np.float32)
    cam = np.tile(np.clip(1.0 - x / 20.0, 0, 1), (h, 1))[None]  # 1 on the left, 0 from x = 20 on
    image = np.zeros((h, w, 3), np.uint8)  # three colour bands where the seeds change
    image[:, :14] = (200, 40, 40)
    image[:, 14:19] = (90, 90, 90)
    image[:, 19:] = (20, 120, 220)
    label = ir_labels(image, cam, [3], conf_fg=0.30, conf_bg=0.05)
    assert label.dtype == np.int64 and label.shape == (h, w)
    assert set(np.unique(label)) == {0, 3, 255}
    assert (label[:, :10] == 3).all()  # cam >= 0.5: confident foreground
    assert (label[:, 16:18] == 255).all()  # 0.05 < cam < 0.30: unsure, ignored
    assert (label[:, 22:] == 0).all()  # cam < 0.05: confident background


def test_ir_labels_without_classes_are_background():
    label = ir_labels(np.zeros((5, 6, 3), np.uint8), np.zeros((0, 5, 6), np.float32), [], 0.3, 0.05)
    assert (label == 0).all()


# ----------------------------------------------------------------------------- pair labels


def test_affinity_labels_by_hand():
    lab = np.array([[0, 0, 1], [0, 255, 1]])
    bg, fg, neg = affinity_labels(lab, 2)  # pairs (0, 1), (1, -1), (1, 0), (1, 1)
    assert affinity_pairs(2) == ((0, 1), (1, -1), (1, 0), (1, 1))
    assert bg.shape == fg.shape == neg.shape == (4, 2, 3)
    right, down_left, down, down_right = range(4)
    assert bg[right, 0, 0] and not fg[right, 0, 0] and not neg[right, 0, 0]  # 0-0
    assert neg[right, 0, 1]  # 0-1
    assert not (bg[right, 1, 0] | fg[right, 1, 0] | neg[right, 1, 0])  # 0-255: ignored
    assert not (bg[:, :, 2] | fg[:, :, 2] | neg[:, :, 2])[right].any()  # target outside the map
    assert fg[down, 0, 2]  # 1-1
    assert not neg[down_left, 0, 2] and not fg[down_left, 0, 2]  # 1-255: ignored
    assert bg[down, 0, 0] and bg[down_left, 0, 1] and neg[down_right, 0, 1]
    assert not (bg[down] | fg[down] | neg[down])[1].any()  # bottom row: target outside
    assert int(bg.sum()) == 3 and int(fg.sum()) == 1 and int(neg.sum()) == 2


def test_affinities_and_loss_on_a_clean_boundary():
    b = torch.zeros(8, 8)
    b[:, 4] = 1.0
    aff = path_affinities(b, 3)
    right = affinity_pairs(3).index((0, 1))
    assert aff[right, 0, 0] == 1.0 and aff[right, 0, 3] == 0.0 and aff[right, 0, 7] == 0.0  # last: off the map
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[..., 5:] = 2
    label[..., 4] = 255
    perfect, _ = affinity_loss(b[None], label, 3)
    blurred, _ = affinity_loss(torch.full((1, 8, 8), 0.5), label, 3)
    assert float(perfect) < 1e-3 < float(blurred)


def _path_affinities_by_definition(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """1 − max over each path's points, stacked and reduced: the definition, slow but plain."""
    m, (h, w) = radius - 1, boundary.shape[-2:]
    padded = torch.nn.functional.pad(boundary, (m, m, 0, m), value=1.0)
    affs = [
        1.0 - torch.stack([padded[..., py : py + h, m + px : m + px + w] for py, px in path_points(o)]).max(0).values
        for o in affinity_pairs(radius)
    ]
    return torch.stack(affs, boundary.ndim - 2)


@pytest.mark.parametrize("shape, radius", [((3, 17, 13), 10), ((11, 9), 5), ((2, 6, 6), 3)])
def test_path_affinities_and_their_gradient_match_the_definition(shape, radius):
    torch.manual_seed(0)
    b = torch.rand(shape, requires_grad=True)
    ref = b.detach().clone().requires_grad_(True)
    fast, slow = path_affinities(b, radius), _path_affinities_by_definition(ref, radius)
    assert torch.equal(fast, slow)
    weights = torch.randint(0, 5, fast.shape).float()  # integer weights: both gradient sums are exact
    (fast * weights).sum().backward()
    (slow * weights).sum().backward()
    assert torch.equal(b.grad, ref.grad)  # the gradient reaches the same arg-max points


def _affinity_loss_by_definition(boundary: torch.Tensor, label: torch.Tensor, radius: int, eps: float = 1e-5):
    """IRN's loss from the stacked affinities and pair labels: every pair of every pixel at once."""
    aff = path_affinities(boundary, radius)
    bg_pos, fg_pos, neg = (m.to(aff.dtype) for m in affinity_labels(label, radius))
    bg = -(torch.log(aff + eps) * bg_pos).sum() / (bg_pos.sum() + eps)
    fg = -(torch.log(aff + eps) * fg_pos).sum() / (fg_pos.sum() + eps)
    ng = -(torch.log(1.0 + eps - aff) * neg).sum() / (neg.sum() + eps)
    parts = {"bg_pos": float(bg.detach()), "fg_pos": float(fg.detach()), "neg": float(ng.detach())}
    return (bg / 2 + fg / 2 + ng) / 2, parts


@pytest.mark.parametrize("shape, radius", [((4, 24, 20), 10), ((2, 9, 11), 5), ((1, 6, 6), 3)])
def test_fused_affinity_loss_and_gradient_match_the_stacked_definition(shape, radius):
    torch.manual_seed(0)
    base = torch.rand(shape)
    base[0, :2] = 1.0  # saturated boundaries: ties between equal path points
    label = torch.randint(0, 3, shape)
    label[:, -3:] = 255
    label[0, 0, :4] = 255
    fused_b = base.clone().requires_grad_(True)
    fused, parts = affinity_loss(fused_b, label, radius)
    fused.backward()
    truth_b = base.double().requires_grad_(True)  # the definition in float64: the reference for both
    truth, truth_parts = _affinity_loss_by_definition(truth_b, label, radius)
    truth.backward()
    assert fused.dtype == torch.float32 and fused_b.grad.dtype == torch.float32
    assert fused.item() == pytest.approx(truth.item(), rel=1e-6)
    assert parts == pytest.approx(truth_parts, rel=1e-6)
    assert torch.allclose(fused_b.grad.double(), truth_b.grad, rtol=1e-5, atol=1e-6 * float(truth_b.grad.abs().max()))
    assert torch.equal(fused_b.grad != 0, truth_b.grad != 0)  # the same arg-max points receive the gradient


def test_affinity_loss_rejects_scores_outside_0_1_and_other_shapes():
    with pytest.raises(ValueError, match="boundary scores"):
        affinity_loss(torch.full((1, 6, 6), -0.5), torch.zeros(1, 6, 6, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        affinity_loss(torch.rand(6, 6), torch.zeros(6, 6, dtype=torch.long), 3)


def test_path_affinities_reject_scores_outside_0_1():
    with pytest.raises(ValueError, match="boundary scores"):
        path_affinities(torch.full((6, 6), -0.5), 3)


# ----------------------------------------------------------------------------- random walk


def test_random_walk_spreads_inside_a_region_not_across_the_boundary():
    b = torch.zeros(12, 12)
    b[:, 6] = 1.0
    seed = torch.zeros(1, 12, 12)
    seed[0, 5, 2] = 1.0
    rw = random_walk(seed, b, radius=5, beta=10, exp_times=8)[0]
    left, right = rw[:, :6], rw[:, 6:]
    assert float(left.min()) > 0.5 * float(left.max())  # spread over the whole left region
    assert float(right.abs().max()) == 0.0


def _dense_irn_walk(x: np.ndarray, b: np.ndarray, radius: int, beta: float, exp_times: int) -> np.ndarray:
    """IRN's dense propagate_to_edge, written with loops: x (C, h, w) · trans_mat^(2^t)."""
    h, w = b.shape
    n = h * w
    a = np.eye(n)
    for y in range(h):
        for xx in range(w):
            for dy, dx in affinity_pairs(radius):
                ty, tx = y + dy, xx + dx
                if 0 <= ty < h and 0 <= tx < w:
                    v = (1 - max(b[y + py, xx + px] for py, px in path_points((dy, dx)))) ** beta
                    a[y * w + xx, ty * w + tx] = a[ty * w + tx, y * w + xx] = v
    t = a / a.sum(0, keepdims=True)
    for _ in range(exp_times):
        t = t @ t
    return ((x * (1 - b)).reshape(len(x), n) @ t).reshape(x.shape)


def test_sparse_walk_equals_irns_dense_walk():
    g = torch.Generator().manual_seed(0)
    b = torch.rand(7, 9, generator=g) ** 3
    x = torch.rand(2, 7, 9, generator=g)
    ours = random_walk(x, b, radius=3, beta=2.0, exp_times=3)
    ref = _dense_irn_walk(x.double().numpy(), b.double().numpy(), 3, 2.0, 3)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_transition_matrix_is_sparse_and_row_stochastic():
    h, w, radius = 40, 50, 5
    b = torch.rand(h, w, generator=torch.Generator().manual_seed(1)) * 0.5
    t = transition_matrix(b, radius, beta=10.0)
    n = h * w
    assert t.layout == torch.sparse_csr and t.shape == (n, n)
    neighbours = 2 * len(affinity_pairs(radius))  # both directions of every pair
    assert t._nnz() <= n * (neighbours + 1) < n * n // 20
    ones = t @ torch.ones(n, 1)
    torch.testing.assert_close(ones, torch.ones(n, 1))


def test_pseudo_mask_on_a_toy_image():
    cams = np.zeros((1, 16, 16), np.float32)
    cams[0, 4:8, 4:8] = 1.0  # a seed inside the object left of the boundary
    b = torch.zeros(16, 16)
    b[:, 10] = 1.0
    mask = pseudo_mask(cams, [2], b, radius=4, beta=10, exp_times=6, bg_thres=0.25)
    assert mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 2}
    assert (mask[:, :10] == 2).all() and (mask[:, 10:] == 0).all()
    assert (pseudo_mask(np.zeros((0, 16, 16), np.float32), [], b) == 0).all()


def test_one_walk_scored_at_several_background_scores_equals_pseudo_mask_at_each():
    cams = np.zeros((2, 16, 16), np.float32)
    cams[0, 4:8, 4:8] = 1.0
    cams[1, 10:14, 12:15] = 0.6
    b = torch.zeros(16, 16)
    b[:, 10] = 1.0
    scores = walked_scores(cams, b, radius=4, beta=10, exp_times=6)
    assert scores.shape == (2, 16, 16) and float(scores.max()) == pytest.approx(1.0)
    for bg in (0.05, 0.25, 0.5, 0.9):
        assert np.array_equal(
            mask_from_scores(scores, [1, 3], bg),
            pseudo_mask(cams, [1, 3], b, radius=4, beta=10, exp_times=6, bg_thres=bg),
        )
    with pytest.raises(ValueError, match="len\\(keys\\)"):
        mask_from_scores(scores, [1], 0.25)
    with pytest.raises(ValueError, match="len\\(keys\\)"):
        pseudo_mask(cams, [1], b)
    with pytest.raises(ValueError, match="walked_scores: cams must be \\(K, H, W\\)"):
        walked_scores(cams[0], b)


# ----------------------------------------------------------------------------- boundary network


@pytest.mark.parametrize("name,strides,stride", [("small", [1, 2, 2, 1], 1), ("small", [2, 2, 2, 1], 2)])
def test_boundary_net_shape_range_and_frozen_backbone(name, strides, stride):
    torch.manual_seed(0)
    net = BoundaryNet(build_backbone(name, strides))
    net.train()
    assert not net.backbone.training
    x = torch.randn(2, 3, 32, 36)
    y = net(x)
    assert y.shape == (2, 32 // stride, 36 // stride)
    assert float(y.detach().min()) >= 0.0 and float(y.detach().max()) <= 1.0
    label = torch.randint(0, 3, y.shape)
    loss, parts = affinity_loss(y, label, 3)
    loss.backward()
    assert set(parts) == {"bg_pos", "fg_pos", "neg"}
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.trainable_parameters())
    edge = boundary_map(net.eval(), x[0])
    assert edge.shape == y.shape[1:]


def test_boundary_net_odd_sizes():
    net = BoundaryNet(build_backbone("small", [1, 2, 2, 1])).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 29, 35)).shape == (1, 29, 35)


# ----------------------------------------------------------------------------- refine end to end


@pytest.mark.slow
def test_refine_end_to_end_on_smoke(smoke_stages, tmp_path, monkeypatch):
    from conftest import copy_run

    from esol_lib import steps
    from esol_lib.runtime.config_io import save_config
    from esol_lib.runtime.errors import ConfigError, StageError
    from esol_lib.steps._shared import split_dataset
    from esol_lib.steps.refinement import ir_label_dir, refine

    monkeypatch.chdir(tmp_path)
    run = copy_run(smoke_stages, tmp_path / "run")  # the baseline trained, no CAMs yet
    with pytest.raises(StageError, match="esol make-cam --run .* --stage baseline"):
        refine(run, "baseline", progress=False)
    steps.make_cam(run, "baseline", progress=False)
    cfg = run.load_config()
    good = cfg.irn.backbone
    cfg.irn.backbone = "imagenet"  # a wrong irn.backbone is reported before the IR labels are made
    save_config(cfg, run.config_path)
    with pytest.raises(ConfigError, match="irn.backbone': 'imagenet' is out of range"):
        refine(run, "baseline", progress=False)
    assert not list(ir_label_dir(run, "baseline").glob("*.png"))
    cfg.irn.backbone = good
    save_config(cfg, run.config_path)
    metrics = refine(run, "baseline", progress=False)

    ids = split_dataset(cfg, cfg.data.cam_split).ids
    k = len(split_dataset(cfg, cfg.data.cam_split).classes)
    for folder in (ir_label_dir(run, "baseline"), run.pseudo_masks("baseline")):
        assert sorted(p.stem for p in folder.glob("*.png")) == sorted(ids)
    assert run.checkpoint("irn-baseline").is_file()
    for i in ids:
        with Image.open(run.pseudo_masks("baseline") / f"{i}.png") as img:
            assert img.mode == "P"
            assert set(np.unique(np.asarray(img))) <= set(range(k + 1))
    path = run.metrics(f"mask-baseline_{cfg.data.cam_split}")
    saved = json.loads(path.read_text())
    for key in ("stage", "split", "miou", "precision", "recall", "f1", "per_class_iou"):
        assert key in saved
    assert saved["stage"] == "baseline" and 0.0 <= saved["miou"] <= 1.0
    assert set(saved["per_class_iou"]) == {"background", *split_dataset(cfg, cfg.data.cam_split).classes}
    assert metrics["miou"] == saved["miou"]

    mtime = path.stat().st_mtime_ns
    assert refine(run, "baseline", progress=False) == saved  # every step complete: nothing redone
    assert path.stat().st_mtime_ns == mtime

    # another irn.backbone: the boundary branch is retrained on it, the pseudo masks are made again
    assert torch.load(run.checkpoint("irn-baseline"), weights_only=True)["extra"]["backbone"] == cfg.irn.backbone
    other = "classifier" if cfg.irn.backbone != "classifier" else "random"
    cfg.irn.backbone = other
    save_config(cfg, run.config_path)
    refine(run, "baseline", progress=False)
    assert torch.load(run.checkpoint("irn-baseline"), weights_only=True)["extra"]["backbone"] == other
    assert path.stat().st_mtime_ns != mtime


def test_irn_backbone_choices(tmp_path):
    from esol_lib.runtime.config_io import load_config
    from esol_lib.runtime.errors import ConfigError
    from esol_lib.runtime.rundir import RunDir
    from esol_lib.steps.refinement import irn_backbone

    cfg = load_config("smoke", ["irn.backbone=random"])
    run = RunDir(tmp_path / "run")  # no checkpoint: 'random' and 'pretrained' do not read the run
    state = torch.random.get_rng_state()
    first, second = (irn_backbone(run, cfg, 3).state_dict() for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random stream is left alone
    assert all(torch.equal(first[k], second[k]) for k in first)  # seeded: the same network every time
    cfg.seed += 1
    other = irn_backbone(run, cfg, 3).state_dict()
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())

    cfg.irn.backbone = "pretrained"  # IRN's setup needs weights the smoke profile does not have
    with pytest.raises(ConfigError, match=r"irn.backbone='pretrained'.*model.pretrained"):
        irn_backbone(run, cfg, 3)
    cfg.irn.backbone = "imagenet"
    with pytest.raises(ConfigError, match="irn.backbone: unknown choice 'imagenet'.*pretrained, random, classifier"):
        irn_backbone(run, cfg, 3)


def test_irn_backbone_pretrained_reads_model_pretrained(tmp_path):
    from esol_lib.runtime.config_io import load_config
    from esol_lib.runtime.rundir import RunDir
    from esol_lib.steps.refinement import irn_backbone

    weights = build_backbone("small", (1, 2, 2, 1))
    path = tmp_path / "small.pth"
    torch.save(weights.state_dict(), path)
    cfg = load_config("smoke", ["irn.backbone=pretrained", f"model.pretrained={path}"])
    got = irn_backbone(RunDir(tmp_path / "run"), cfg, 3).state_dict()
    assert all(torch.equal(got[k], v) for k, v in weights.state_dict().items())
