"""Memoised backbone features for ESOL's stages.

Both ESOL stages freeze everything before their sampler and detach the backbone (§4.1), so the
backbone maps an input to the same features every time it sees it. The expansion and shrinkage
stages of one run draw the same training batches (same seed), every ablation of chapter 07 shares
the trained baseline, and every variant computes CAMs of the same images: the backbone's output
can be computed once per input and reused; on a CPU that is a large share of an ESOL step and of its
CAMs (the book's Build time page shows the stages' times).

The cache is keyed by *content*: a fingerprint of the backbone's weights and the bytes of the
input batch. A cached value is therefore exactly what the backbone would return — nothing
depends on batch order or on which run asked first — and a retrained baseline simply misses.
It lives in memory, in one process, within a byte budget (least recently used first out), and
optionally on disk (``RUN/cache/features/``, one file per input batch, with a checksum checked
on every read: a damaged entry is recomputed with a warning) so that the next chapter's kernel —
another process — finds what this one computed; ablation forks share their main run's folder. It
is off by default (``feature_cache_mb: 0``): on a GPU with VOC-sized inputs, hashing
inputs and holding ResNet features costs more than it saves. The CPU profiles switch it on; the
disk folder can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from esol_lib.runtime.atomic import atomic_save

log = logging.getLogger(__name__)

__all__ = [
    "FeatureCache",
    "CachedBackbone",
    "cached_backbone",
    "module_fingerprint",
    "input_key",
    "read_entry",
    "tensor_checksum",
    "shared_feature_cache",
]


def module_fingerprint(module: nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(_bytes(t))
    return h.hexdigest()


def input_key(fingerprint: str, x: torch.Tensor) -> str:
    """The cache key of ``x`` for the module with ``fingerprint``: shape, dtype and every byte of ``x``."""
    t = x.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{fingerprint}|{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(_bytes(t))
    return h.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


class FeatureCache:
    """An LRU map from input keys to feature tensors, bounded by ``max_mb`` mebibytes.

    Example::

        cache = FeatureCache(max_mb=1024)
        feats = cache.compute(backbone_fn, fingerprint, images)   # runs backbone_fn once per distinct input
    """

    def __init__(self, max_mb: float) -> None:
        if max_mb < 0:
            raise ValueError(f"feature_cache_mb must be >= 0, got {max_mb}")
        self.max_bytes = int(max_mb * 2**20)
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: str) -> torch.Tensor | None:
        value = self._store.get(key)
        if value is None:
            return None
        self._store.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes or key in self._store:
            return
        while self._store and self.bytes + size > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        self._store[key] = value
        self.bytes += size

    def compute(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        fingerprint: str,
        x: torch.Tensor,
        directory: str | Path | None = None,
    ) -> torch.Tensor:
        """``fn(x)``, from the cache when this input was seen before; the result never requires grad.

        With ``directory``, a value missing from memory is looked up there, and a computed one is
        written there (atomically: a killed process leaves no half-written file).
        Values are stored as ordinary tensors even when computed under ``torch.inference_mode``, so
        features cached while making CAMs can feed a training step (which saves them for backward).
        """
        key = input_key(fingerprint, x)
        hit = self.get(key)
        path = Path(directory) / key[:2] / f"{key}.pt" if directory else None
        if hit is None and path is not None and path.is_file():
            hit = read_entry(path, x.device)
            if hit is not None:
                self.put(key, hit)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        with torch.no_grad():
            out = fn(x)
        with torch.inference_mode(False):
            out = out.detach().clone()
        self.put(key, out)
        if path is not None:
            try:  # the cache is optional: a failed write (a full disk) costs a warning, not the stage
                value = out.cpu()  # a memo, checked when read (its checksum): no fsync
                atomic_save({"features": value, "checksum": tensor_checksum(value)}, path, durable=False)
            except (OSError, RuntimeError) as e:
                log.warning("feature cache: could not write %s (%s); going on without caching it", path, e)
        return out


def tensor_checksum(t: torch.Tensor) -> str:
    """A digest of a tensor's shape, dtype and bytes, stored beside each cache entry on disk."""
    t = t.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{tuple(t.shape)}|{t.dtype}|".encode(), digest_size=16)
    h.update(_bytes(t))
    return h.hexdigest()


def read_entry(path: Path, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The features stored in cache file ``path`` if they read back and match their checksum; else
    None (the caller recomputes and overwrites), with one warning naming a damaged file. An entry
    written before checksums (a bare tensor) cannot be verified and is recomputed too."""
    try:
        with torch.inference_mode(False):
            entry = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # cut short, zeroed, a foreign file
        log.warning("feature cache: %s is unreadable (%s); recomputing it", path, type(e).__name__)
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("features"), torch.Tensor):
        return None  # the format before checksums: recompute silently
    if entry.get("checksum") != tensor_checksum(entry["features"]):
        log.warning("feature cache: %s does not match its checksum (damaged); recomputing it", path)
        return None
    return entry["features"]


_SHARED: FeatureCache | None = None


def shared_feature_cache(max_mb: float) -> FeatureCache | None:
    """The process-wide cache, grown to at least ``max_mb``; None when ``max_mb`` is 0 (caching off).

    One cache per process serves every run opened in it: the ablations of chapter 07 reuse the
    features the main run's stages computed.
    """
    global _SHARED
    if max_mb <= 0:
        return None
    if _SHARED is None:
        _SHARED = FeatureCache(max_mb)
    else:
        _SHARED.max_bytes = max(_SHARED.max_bytes, int(max_mb * 2**20))
    return _SHARED


class CachedBackbone:
    """``backbone(x)["out"]`` through a :class:`FeatureCache` (and its disk folder, when given)."""

    def __init__(self, backbone: nn.Module, cache: FeatureCache, directory: str | Path | None = None) -> None:
        self.backbone, self.cache, self.directory = backbone, cache, directory
        self.fingerprint = module_fingerprint(backbone)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.cache.compute(lambda t: self.backbone(t)["out"], self.fingerprint, x, self.directory)


def cached_backbone(backbone: nn.Module, max_mb: float, directory: str | Path | None = None) -> CachedBackbone | None:
    """``backbone`` behind the process-wide cache (config ``feature_cache_mb``); None when caching is off."""
    cache = shared_feature_cache(max_mb)
    return None if cache is None else CachedBackbone(backbone, cache, directory)
