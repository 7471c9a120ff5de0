"""Upstream registry: `load_upstream(spec, **options)` in the spirit of timm's create_model.

spec forms:
    "hf:<hub id or local folder>"  a transformers checkpoint (wav2vec2, hubert, wavlm, data2vec-audio, whisper)
    "<registered name>"            e.g. "whisper-tiny.en", "resemblyzer", "speech-embedding"

A registered upstream is an Upstream subclass (`@register_upstream` reads its `name`; its `Options` model
types the options), or a loader function registered with `@upstream_loader(name, Options)`.
"""
from __future__ import annotations

from typing import Any, Callable

from speechfuse.errors import UpstreamError
from speechfuse.options import check_options
from speechfuse.registry import Registry
from speechfuse.fusion.upstream.base import TruncatableOptions, Upstream, UpstreamOptions

UPSTREAMS: Registry = Registry("upstream", UpstreamError, ["speechfuse.fusion.upstream.bundled", "speechfuse.fusion.upstream.hf"],
                               hint=", or 'hf:<hub id or local folder>' for a transformers checkpoint")
register_upstream = UPSTREAMS.register


def upstream_loader(name: str, options: type[UpstreamOptions]) -> Callable[[Callable[..., Upstream]], Callable]:
    """Register a function that returns an Upstream (of a class registered elsewhere, or of none) under `name`;
    it is called with the options `options` validated, defaults filled in."""
    def deco(load: Callable[..., Upstream]) -> Callable[..., Upstream]:
        load.name, load.Options = name, options  # type: ignore[attr-defined]
        return register_upstream(load)

    return deco


def upstream_options(spec: str) -> type[UpstreamOptions]:
    """The Options model of the upstream that `spec` names (UpstreamError for an unknown name). For `hf:`
    specs it is the Options of the checkpoint's family, read from its config.json without loading weights."""
    if not isinstance(spec, str) or not spec:
        raise UpstreamError(f"upstream spec must be a non-empty string, got {spec!r}")
    if spec.startswith("hf:"):
        from speechfuse.fusion.upstream.hf import hf_options

        return hf_options(spec[3:])  # the family's own Options (HFSSLUpstream / HFWhisperUpstream)
    return UPSTREAMS.get(spec).Options


def list_upstreams() -> list[str]:
    return sorted(UPSTREAMS.names()) + ["hf:<hub id or folder>"]


def load_upstream(spec: str, **options: Any) -> Upstream:
    """The upstream `spec` names, built with `options` (checked by its Options model: ConfigError naming the
    option, before any weights load)."""
    checked = check_options(upstream_options(spec), options, f"upstream {spec!r}").model_dump()
    if spec.startswith("hf:"):
        from speechfuse.fusion.upstream.hf import load_hf_upstream

        return load_hf_upstream(spec[3:], **checked)
    return UPSTREAMS.get(spec)(**checked)


__all__ = ["Upstream", "UpstreamOptions", "TruncatableOptions", "load_upstream", "list_upstreams",
           "register_upstream", "upstream_loader", "upstream_options"]
