"""The backbone feature cache of the ESOL stages: exact values, content keys, a byte budget, and
stage results identical with and without it."""

from __future__ import annotations

import copy

import pytest
import torch

from esol_lib.method.losses import expansion_loss
from esol_lib.models import CAMClassifier, build_backbone
from esol_lib.models.esol import ESOLModel
from esol_lib.runtime.feature_cache import CachedBackbone, FeatureCache, input_key, module_fingerprint, read_entry
from tests.test_esol import _cfg


def _backbone_fn(calls: list):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def fn(x):
        calls.append(1)
        return conv(x)

    return conv, fn


def test_cache_returns_the_backbone_output_and_computes_each_input_once():
    calls: list = []
    conv, fn = _backbone_fn(calls)
    cache = FeatureCache(max_mb=1)
    fp = module_fingerprint(conv)
    x = torch.randn(2, 3, 8, 8)
    first = cache.compute(fn, fp, x)
    again = cache.compute(fn, fp, x.clone())  # same content, another tensor: a hit
    torch.testing.assert_close(first, conv(x).detach(), rtol=0, atol=0)
    assert torch.equal(first, again) and len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert not first.requires_grad
    cache.compute(fn, fp, x + 1e-3)  # other content: computed
    assert len(calls) == 2


def test_key_depends_on_weights_shape_and_every_value():
    conv = torch.nn.Conv2d(3, 4, 3)
    fp = module_fingerprint(conv)
    x = torch.zeros(1, 3, 4, 4)
    y = x.clone()
    y[0, 2, 3, 3] = 1e-7
    assert input_key(fp, x) != input_key(fp, y)
    assert input_key(fp, x) != input_key(fp, x.reshape(1, 3, 2, 8))
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] += 1.0  # a retrained backbone: every key changes
    assert module_fingerprint(conv) != fp


def test_budget_evicts_the_least_recently_used():
    cache = FeatureCache(max_mb=3 * 4096 / 2**20)  # room for three 4 KiB tensors
    t = {k: torch.full((1024,), float(k)) for k in range(4)}
    for k in range(3):
        cache.put(str(k), t[k])
    assert cache.get("0") is not None  # 0 is now the most recently used
    cache.put("3", t[3])
    assert cache.get("1") is None and cache.get("0") is not None and len(cache) == 3
    assert cache.bytes <= cache.max_bytes
    cache.put("big", torch.zeros(10_000))  # larger than the whole budget: not stored
    assert cache.get("big") is None
    with pytest.raises(ValueError, match="feature_cache_mb"):
        FeatureCache(-1)


def test_features_cached_under_inference_mode_can_train_the_offsets():
    """CAMs (inference mode) fill the cache; a later training step on the same input must work."""
    torch.manual_seed(0)
    base = CAMClassifier(build_backbone("small", [1, 2, 2, 1]), num_classes=3).eval()
    cache = FeatureCache(64)
    cached = ESOLModel(copy.deepcopy(base), *_cfg(exp_clip=True))
    cached.use_feature_cache(CachedBackbone(cached.backbone, cache))
    plain = ESOLModel(copy.deepcopy(base), *_cfg(exp_clip=True))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]]).float()
    with torch.inference_mode():
        cached.cam(x)
    grads = []
    for model in (cached, plain):
        params = model.train().stage_parameters("expansion")
        expansion_loss(model(x), y, alpha=1.0).backward()
        grads.append([p.grad.clone() for p in params])
    assert cache.hits == 1
    for g_cached, g_plain in zip(*grads):
        torch.testing.assert_close(g_cached, g_plain, rtol=0, atol=0)


def test_expansion_and_shrinkage_stages_are_identical_with_and_without_the_cache(tmp_path, monkeypatch):
    from esol_lib.runtime.config_io import load_config
    from esol_lib.runtime.feature_cache import shared_feature_cache
    from esol_lib.steps import expand, shrink, start_run, train_cam

    monkeypatch.chdir(tmp_path)
    states = {}
    for mb in (0, 64):
        cfg = load_config("smoke", [f"feature_cache_mb={mb}"])
        run = start_run(tmp_path / f"run{mb}", cfg, data_root=None)
        train_cam(run, progress=False)
        expand(run, progress=False)
        shrink(run, progress=False)
        states[mb] = torch.load(run.checkpoint("shrinkage"), map_location="cpu")["model"]
    assert shared_feature_cache(64).hits > 0  # shrinkage read the batches expansion cached
    for name, value in states[0].items():
        torch.testing.assert_close(states[64][name], value, rtol=0, atol=0, msg=name)


def test_disk_layer_serves_another_process_and_survives_a_torn_file(tmp_path):
    calls: list = []
    conv, fn = _backbone_fn(calls)
    fp = module_fingerprint(conv)
    x = torch.randn(2, 3, 8, 8)
    first = FeatureCache(max_mb=1).compute(fn, fp, x, tmp_path)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp"))
    fresh = FeatureCache(max_mb=1)  # a new kernel: empty memory, same folder
    assert torch.equal(fresh.compute(fn, fp, x, tmp_path), first) and len(calls) == 1 and fresh.hits == 1
    files[0].write_bytes(b"not a tensor")  # a damaged entry is recomputed, not trusted
    again = FeatureCache(max_mb=1).compute(fn, fp, x, tmp_path)
    assert torch.equal(again, first) and len(calls) == 2


@pytest.mark.parametrize("damage", ["zeros of the same shape", "one flipped bit", "a bare tensor"])
def test_a_cache_entry_that_does_not_match_its_checksum_is_recomputed(tmp_path, damage, caplog):
    """Overwriting every entry with zeros of the same shape, or flipping one bit, used to load
    without error and change 7 of 10 metrics of a rerun (issue 30, case 4)."""
    calls: list = []
    conv, fn = _backbone_fn(calls)
    fp = module_fingerprint(conv)
    x = torch.randn(2, 3, 8, 8)
    first = FeatureCache(max_mb=1).compute(fn, fp, x, tmp_path)
    (path,) = tmp_path.rglob("*.pt")
    entry = torch.load(path, weights_only=True)
    if damage == "zeros of the same shape":
        torch.save({"features": torch.zeros_like(first), "checksum": entry["checksum"]}, path)
    elif damage == "one flipped bit":
        data = bytearray(path.read_bytes())
        raw = first.numpy().tobytes()
        at = bytes(data).find(raw[:64])  # the tensor's storage inside the zip archive
        assert at >= 0
        data[at + 5] ^= 0x10
        path.write_bytes(bytes(data))
    else:  # the format before checksums: unverifiable
        torch.save(torch.zeros_like(first), path)
    with caplog.at_level("WARNING", logger="esol_lib.runtime.feature_cache"):
        again = FeatureCache(max_mb=1).compute(fn, fp, x, tmp_path)
    assert torch.equal(again, first) and len(calls) == 2
    if damage != "a bare tensor":
        assert path.name in caplog.text
    assert read_entry(path) is not None  # overwritten with a good entry


def test_a_forked_run_shares_its_source_cache(tmp_path):
    from esol_lib.runtime.config_io import load_config
    from esol_lib.runtime.rundir import create_run, fork_run

    main = create_run(tmp_path / "main", load_config("smoke"))
    fork = fork_run(main.root, tmp_path / "main" / "ablations" / "a", ["expansion.beta=0.3"], share=())
    assert fork.feature_cache().resolve() == main.feature_cache().resolve()


def test_baseline_cams_through_the_cache_equal_the_plain_ones(tmp_path, monkeypatch):
    """The baseline's CAM pass reads the backbone through the cache (it fills it for the ESOL stages)."""
    from esol_lib.runtime.config_io import load_config
    from esol_lib.steps import load_baseline, stage_cam_fn, start_run, train_cam

    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", ["feature_cache_mb=64"])
    run = start_run(tmp_path / "run", cfg, data_root=None)
    train_cam(run, progress=False)
    cam_fn = stage_cam_fn(run, cfg, "baseline", 3, torch.device("cpu"))
    plain = load_baseline(run, cfg, 3, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        first, again, ref = cam_fn(x), cam_fn(x), plain.cam(x)
    torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-5)  # NHWC vs NCHW: equal up to rounding
    assert torch.equal(first, again) and list(run.feature_cache().rglob("*.pt"))
