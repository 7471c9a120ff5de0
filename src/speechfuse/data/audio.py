"""Read one audio file, or a span of it, as a mono float32 tensor at the requested sample rate."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from speechfuse.errors import AudioError, ConfigError


def _header(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}. Check the manifest path (relative paths resolve "
                         "against the manifest's folder).")
    try:
        return sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError for unreadable headers
        raise AudioError(f"cannot read audio file {path}: {err}. Re-encode it as WAV or FLAC.") from err


def audio_info(path: str | Path) -> tuple[int, int, int, float]:
    """(num_samples, sample_rate, channels, duration_seconds) from the file header, without decoding."""
    info = _header(path)
    duration = info.frames / info.samplerate if info.samplerate else 0.0
    return int(info.frames), int(info.samplerate), int(info.channels), float(duration)


@dataclass(frozen=True)
class AudioProbe:
    """What the up-front manifest check learns about one file."""

    num_samples: int            # samples per channel actually present
    sample_rate: int
    duration: float             # seconds actually present
    declared_samples: int | None  # what a WAV header claims (None: not a WAV, or a streamed unknown size)
    non_finite: bool            # NaN or inf samples (only float files can hold them; others are not decoded)


FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what streaming writers put in a WAV header they cannot seek back to


def wav_declared_samples(path: str | Path) -> int | None:
    """Samples per channel that a RIFF/WAVE header's data chunk claims; None for other formats."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"data":
                return size // block_align if block_align and size not in _UNKNOWN_SIZES else None
            if kind == b"fmt ":
                fmt = f.read(16)
                block_align = int.from_bytes(fmt[12:14], "little")  # bytes per frame, all channels
                f.seek(size - len(fmt), 1)
            else:
                f.seek(size, 1)
            f.seek(size & 1, 1)  # chunks are padded to an even size


def probe_audio(path: str | Path) -> AudioProbe:
    """Header facts plus the checks worth doing before training: a truncated WAV and NaN/inf samples.

    Cost: a header read per file; files with float samples (the only ones that can hold NaN/inf) are also
    decoded once, in blocks, so memory stays flat. Integer PCM, FLAC and other integer codecs are not decoded.
    """
    info = _header(path)
    non_finite = False
    if info.subtype in FLOAT_SUBTYPES:
        try:
            non_finite = any(not np.isfinite(block).all()  # 1 M frames a block: memory stays bounded
                             for block in sf.blocks(str(path), blocksize=1 << 20, dtype="float32"))
        except Exception as err:
            raise AudioError(f"cannot decode audio file {path}: {err}. Re-encode it as WAV or FLAC.") from err
    rate = int(info.samplerate)
    return AudioProbe(int(info.frames), rate, info.frames / rate if rate else 0.0, wav_declared_samples(path),
                      non_finite)


def span_frames(path: str | Path, start: float | None, end: float | None, sample_rate: int,
                num_frames: int) -> tuple[int, int]:
    """[first, stop) frames of the span `start`..`end` seconds of a file (None: its start / its end).

    A boundary maps to the nearest frame (round(seconds * rate)); the span must be non-empty and inside
    the file, else an AudioError naming the file."""
    first = 0 if start is None else int(round(start * sample_rate))
    stop = num_frames if end is None else int(round(end * sample_rate))
    if first < 0 or stop > num_frames or stop <= first:
        raise AudioError(f"audio file {path}: the span start={start} s, end={end} s does not lie inside its "
                         f"{num_frames / sample_rate:.3f} s (needs 0 <= start < end <= the file's duration); "
                         "fix the row's start/end")
    return first, stop


def read_audio(path: str | Path, sample_rate: int, start: float | None = None,
               end: float | None = None) -> torch.Tensor:
    """Decode `path` (only the span `start`..`end` seconds when given: the rest is not read), mix to mono
    (with a warning), resample to `sample_rate`; returns float32 [S]."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ConfigError(f"read_audio({path}): sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}. Check the manifest path (relative paths resolve "
                         "against the manifest's folder).")
    first, stop = 0, None
    if start is not None or end is not None:
        info = _header(path)
        first, stop = span_frames(path, start, end, int(info.samplerate), int(info.frames))
    try:
        samples, file_rate = sf.read(str(path), start=first, stop=stop, dtype="float32", always_2d=True)
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
