"""speechfuse: fuse all layers of several pretrained speech models through one trainable interface."""
from .errors import AudioError, ConfigError, ShapeError, SpeechfuseError, UpstreamError
from .hidden import HiddenStates
from .upstream import Upstream, list_upstreams, load_upstream, register_upstream

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import speechfuse` light
    if name == "Aligner":
        from .align import Aligner

        return Aligner
    if name in ("build_interface", "list_interfaces", "register_interface", "Interface"):
        from . import interfaces

        return getattr(interfaces, name)
    if name in ("FusedModel", "load_model"):
        from . import model

        return getattr(model, name)
    if name == "FusionFrontend":
        from .frontend import FusionFrontend

        return FusionFrontend
    raise AttributeError(f"module 'speechfuse' has no attribute {name!r}")


__all__ = [
    "HiddenStates", "Upstream", "load_upstream", "list_upstreams", "register_upstream",
    "Aligner", "build_interface", "list_interfaces", "register_interface", "Interface", "FusionFrontend",
    "FusedModel", "load_model",
    "SpeechfuseError", "ConfigError", "AudioError", "UpstreamError", "ShapeError",
]
