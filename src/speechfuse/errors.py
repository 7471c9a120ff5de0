"""Exceptions raised by speechfuse. Every message says what was wrong and what to do."""


class SpeechfuseError(Exception):
    """Base class for all speechfuse errors."""


class ConfigError(SpeechfuseError, ValueError):
    """A config key, option or value is wrong."""


class AudioError(SpeechfuseError, ValueError):
    """Audio input is unusable: corrupt, empty, wrong rate, NaN, wrong shape."""


class UpstreamError(SpeechfuseError):
    """An upstream model cannot be loaded or run."""


class ShapeError(SpeechfuseError, ValueError):
    """Hidden states of several models or layers do not line up."""
