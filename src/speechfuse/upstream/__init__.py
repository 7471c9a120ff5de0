"""Upstream registry: `load_upstream(spec, **options)` in the spirit of timm's create_model.

spec forms:
    "hf:<hub id or local folder>"  a transformers checkpoint (wav2vec2, hubert, wavlm, data2vec-audio, whisper)
    "<registered name>"            e.g. "whisper-tiny.en", "resemblyzer", "speech-embedding"
"""
from __future__ import annotations

from typing import Callable

from ..errors import UpstreamError
from .base import Upstream

_REGISTRY: dict[str, Callable[..., Upstream]] = {}


def register_upstream(name: str) -> Callable[[Callable[..., Upstream]], Callable[..., Upstream]]:
    def deco(factory: Callable[..., Upstream]) -> Callable[..., Upstream]:
        _REGISTRY[name] = factory
        return factory

    return deco


def list_upstreams() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY) + ["hf:<hub id or folder>"]


def _import_builtin() -> None:
    from . import bundled, hf  # noqa: F401  (registers entries)


def load_upstream(spec: str, **options) -> Upstream:
    _import_builtin()
    if not isinstance(spec, str) or not spec:
        raise UpstreamError(f"upstream spec must be a non-empty string, got {spec!r}")
    if spec.startswith("hf:"):
        from .hf import load_hf_upstream

        return load_hf_upstream(spec[3:], **options)
    if spec not in _REGISTRY:
        raise UpstreamError(
            f"unknown upstream {spec!r}. Known: {', '.join(sorted(_REGISTRY))}, "
            "or 'hf:<hub id or local folder>' for a transformers checkpoint"
        )
    return _REGISTRY[spec](**options)


__all__ = ["Upstream", "load_upstream", "list_upstreams", "register_upstream"]
