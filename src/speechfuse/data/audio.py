"""Read one audio file as a mono float32 tensor at the requested sample rate."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from ..errors import AudioError, ConfigError


def audio_info(path: str | Path) -> tuple[int, int, int, float]:
    """(num_samples, sample_rate, channels, duration_seconds) from the file header, without decoding."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}. Check the manifest path (relative paths resolve "
                         "against the manifest's folder).")
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError for unreadable headers
        raise AudioError(f"cannot read audio file {path}: {err}. Re-encode it as WAV or FLAC.") from err
    duration = info.frames / info.samplerate if info.samplerate else 0.0
    return int(info.frames), int(info.samplerate), int(info.channels), float(duration)


def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Decode `path`, mix to mono (with a warning), resample to `sample_rate`; returns float32 [S]."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ConfigError(f"read_audio({path}): sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}. Check the manifest path (relative paths resolve "
                         "against the manifest's folder).")
    try:
        samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"cannot decode audio file {path}: {err}. Re-encode it as WAV or FLAC.") from err
    if samples.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples). Remove it from the manifest.")
    if samples.shape[1] > 1:
        warnings.warn(f"{path} has {samples.shape[1]} channels; mixing down to mono by averaging", stacklevel=2)
        samples = samples.mean(axis=1, keepdims=True)
    mono = np.ascontiguousarray(samples[:, 0])
    if not np.isfinite(mono).all():
        raise AudioError(f"audio file {path} contains NaN or infinite samples. Re-export or remove it.")
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(mono))
