"""Filling the feature cache of a whole config: every frozen upstream it names over every utterance of its
splits (`speechfuse extract CONFIG`; a parallel sweep, a search and a cluster launcher fill the caches this way
before their runs start). The batched extraction itself is speechfuse.cache.extract."""
from __future__ import annotations

from pathlib import Path

from speechfuse.cache.store import FeatureCache
from speechfuse.data.loader import load_splits, resolve_cache_dir
from speechfuse.data.manifest import clip_limit
from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.cache.extract import fill_caches
from speechfuse.fusion.model import build_task
from speechfuse.fusion.upstream import load_upstream


def fill_config_caches(cfg, out_dir, *, device="cpu", batch_seconds: float | None = None, progress: bool = True,
                       rank: int = 0, world_size: int = 1):
    """What `speechfuse extract CONFIG` does: every frozen upstream of `cfg` over every utterance of its splits,
    into the config's cache folder (resolved against `out_dir`). Returns (cache folder, entries, utterances)."""
    out_dir = Path(out_dir)
    cache_dir = resolve_cache_dir(cfg)
    if cache_dir is None:
        raise ConfigError("cache is 'off'; set cache to auto or a folder to extract features")
    task = build_task(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    upstreams = [load_upstream(u.spec, **u.options) for u in cfg.upstreams]
    trainable = [u.name for u in upstreams if u.trainable]
    if trainable:
        raise SpeechfuseError(f"upstream(s) {trainable} are trainable; only frozen upstreams are cached")
    splits = load_splits(cfg, out_dir, task.target_field, max_clip=clip_limit(upstreams))
    utts = [u for s in splits.values() for u in s]
    entries = fill_caches(upstreams, utts, FeatureCache.from_config(cache_dir, cfg.cache),
                          batch_seconds=batch_seconds or cfg.train.batch_seconds, device=device, progress=progress,
                          rank=rank, world_size=world_size)
    return cache_dir, entries, len(utts)


__all__ = ["fill_config_caches"]
