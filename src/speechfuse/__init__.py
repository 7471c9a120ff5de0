"""speechfuse: fuse all layers of several pretrained speech models through one trainable interface."""
from speechfuse.errors import AudioError, ConfigError, ShapeError, SpeechfuseError, UpstreamError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.fusion.upstream import Upstream, list_upstreams, load_upstream, register_upstream

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import speechfuse` light
    if name == "Aligner":
        from speechfuse.fusion.align import Aligner

        return Aligner
    if name in ("build_interface", "list_interfaces", "register_interface", "Interface"):
        from speechfuse.fusion import interfaces

        return getattr(interfaces, name)
    if name in ("FusedModel", "load_model"):
        from speechfuse.fusion import model

        return getattr(model, name)
    if name == "FusionFrontend":
        from speechfuse.fusion.frontend import FusionFrontend

        return FusionFrontend
    raise AttributeError(f"module 'speechfuse' has no attribute {name!r}")


__all__ = [
    "HiddenStates", "Upstream", "load_upstream", "list_upstreams", "register_upstream",
    "Aligner", "build_interface", "list_interfaces", "register_interface", "Interface", "FusionFrontend",
    "FusedModel", "load_model",
    "SpeechfuseError", "ConfigError", "AudioError", "UpstreamError", "ShapeError",
]
