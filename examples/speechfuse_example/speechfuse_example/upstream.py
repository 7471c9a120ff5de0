"""An upstream without pretrained weights: log-mel, MFCC and delta-MFCC computed with torch."""
from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from speechfuse.fusion.upstream import Upstream, UpstreamOptions, register_upstream
from speechfuse.fusion.upstream.whisper_features import mel_filterbank, power_spectrogram


def dct_matrix(size: int) -> torch.Tensor:
    """Orthonormal DCT-II as a [size, size] matrix: `x @ dct_matrix(n)` transforms the last axis."""
    n = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(math.pi / size * (n[:, None] + 0.5) * n[None, :])
    basis[:, 0] *= 1 / math.sqrt(2)
    return (basis * math.sqrt(2 / size)).float()


class MfccOptions(UpstreamOptions):
    num_mels: int = Field(40, ge=8, le=128)
    """Mel bands, and so the width of every hidden state."""


@register_upstream
class MfccUpstream(Upstream):
    """Three hidden states of `num_mels` dims at 100 Hz (25 ms windows, 10 ms hop, no padding):
    0 the log-mel spectrogram, 1 its MFCC (orthonormal DCT-II, all coefficients kept),
    2 the MFCC's frame-to-frame difference (0 at the first frame). Nothing is learned."""

    name = "example-mfcc"
    Options = MfccOptions
    frame_rate = 100.0
    sample_rate = 16000
    n_fft = 400
    hop = 160
    min_samples = n_fft

    def __init__(self, num_mels: int = 40, trainable: bool = False) -> None:
        super().__init__(trainable=trainable)
        self.num_layers = 3
        self.hidden_size = num_mels
        # fixed transforms, rebuilt from the options: not saved with a model
        self.register_buffer("mel_filters", mel_filterbank(num_mels, self.n_fft, self.sample_rate), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("dct", dct_matrix(num_mels), persistent=False)
        self._finish_init()

    def num_frames(self, num_samples: int) -> int:
        return (num_samples - self.n_fft) // self.hop + 1

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return (sample_lengths - self.n_fft) // self.hop + 1

    def options(self) -> dict[str, Any]:
        return {**super().options(), "num_mels": self.hidden_size}  # part of the feature-cache key

    def _hidden(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        power = power_spectrogram(wavs, self.n_fft, self.hop, self.window, center=False)  # [B, F, T]
        log_mel = torch.log(power.transpose(1, 2) @ self.mel_filters + 1e-6)            # [B, T, M]
        mfcc = log_mel @ self.dct
        delta = torch.diff(mfcc, dim=1, prepend=mfcc[:, :1])
        hidden = torch.stack([log_mel, mfcc, delta])                                     # [3, B, T, M]
        frames = self.frame_lengths(wav_lengths).to(wavs.device)
        valid = torch.arange(hidden.shape[2], device=wavs.device)[None, :] < frames[:, None]
        return hidden * valid[None, :, :, None]  # frames past each clip's end are zero
