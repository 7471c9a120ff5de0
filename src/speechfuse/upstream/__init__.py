"""Upstream registry: `load_upstream(spec, **options)` in the spirit of timm's create_model.

spec forms:
    "hf:<hub id or local folder>"  a transformers checkpoint (wav2vec2, hubert, wavlm, data2vec-audio, whisper)
    "<registered name>"            e.g. "whisper-tiny.en", "resemblyzer", "speech-embedding"
"""
from __future__ import annotations

from ..errors import UpstreamError
from ..registry import Registry
from .base import Upstream

UPSTREAMS: Registry = Registry("upstream", UpstreamError, ["speechfuse.upstream.bundled", "speechfuse.upstream.hf"],
                               hint=", or 'hf:<hub id or local folder>' for a transformers checkpoint")
register_upstream = UPSTREAMS.register


def list_upstreams() -> list[str]:
    return sorted(UPSTREAMS.names()) + ["hf:<hub id or folder>"]


def load_upstream(spec: str, **options) -> Upstream:
    if not isinstance(spec, str) or not spec:
        raise UpstreamError(f"upstream spec must be a non-empty string, got {spec!r}")
    if spec.startswith("hf:"):
        from .hf import load_hf_upstream

        return load_hf_upstream(spec[3:], **options)
    return UPSTREAMS.get(spec)(**options)


__all__ = ["Upstream", "load_upstream", "list_upstreams", "register_upstream"]
