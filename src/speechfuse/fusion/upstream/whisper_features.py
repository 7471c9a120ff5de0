"""Whisper's log-mel front end in torch, on the waveform's own device.

Same arithmetic as transformers' WhisperFeatureExtractor (and OpenAI whisper): a centred STFT
(n_fft 400, hop 160, periodic Hann window, reflect padding), the power of every bin but the last
frame, a Slaney-normalised Slaney-scale mel filterbank, log10 clamped at 1e-10, a floor at
(per-utterance max - 8), then (x + 4) / 4.
"""
from __future__ import annotations

import math

import torch

_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    linear = hz / _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_MEL + torch.log(hz.clamp(min=_SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return torch.where(hz >= _SLANEY_MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = mel * _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (mel - _SLANEY_MIN_LOG_MEL))
    return torch.where(mel >= _SLANEY_MIN_LOG_MEL, log, linear)


def mel_filterbank(
    num_mels: int, n_fft: int = 400, sample_rate: int = 16000, f_min: float = 0.0, f_max: float = 8000.0
) -> torch.Tensor:
    """Triangular Slaney filters, area-normalised: [n_fft // 2 + 1, num_mels], float32."""
    fft_freqs = torch.linspace(0.0, float(sample_rate // 2), n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(
        hz_to_mel(torch.tensor(f_min, dtype=torch.float64)).item(),
        hz_to_mel(torch.tensor(f_max, dtype=torch.float64)).item(),
        num_mels + 2,
        dtype=torch.float64,
    )
    edges = mel_to_hz(mel_points)  # [num_mels + 2]
    widths = edges[1:] - edges[:-1]
    offsets = edges[None, :] - fft_freqs[:, None]  # [F, num_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters = filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return filters.float()


def power_spectrogram(wavs: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor,
                      center: bool = True) -> torch.Tensor:
    """[B, S] -> [B, n_fft // 2 + 1, frames] |STFT|^2 (centred frames with reflect padding when `center`).

    Under an ONNX export the STFT is taken with real output (ONNX has no complex tensors; its STFT op
    returns real and imaginary parts side by side), the same transform."""
    if torch.onnx.is_in_onnx_export():
        import warnings

        with warnings.catch_warnings():  # return_complex=False is deprecated in eager PyTorch, not in ONNX
            warnings.simplefilter("ignore")
            parts = torch.stft(wavs, n_fft, hop_length, n_fft, window=window, center=center, return_complex=False)
        return parts.square().sum(dim=-1)
    stft = torch.stft(wavs, n_fft, hop_length, n_fft, window=window, center=center, return_complex=True)
    return stft.abs() ** 2


def log_mel_spectrogram(
    wavs: torch.Tensor,
    filters: torch.Tensor,
    n_fft: int = 400,
    hop_length: int = 160,
    max_frames: int | None = None,
) -> torch.Tensor:
    """[B, S] float waveforms -> [B, num_mels, S // hop_length] Whisper log-mel features.

    `max_frames` crops the frames before the per-utterance max is taken, so a caller that pads the
    waveform with extra silence can reproduce the max over exactly the frames it wants.
    """
    if wavs.dim() != 2:
        raise ValueError(f"log_mel_spectrogram expects [B,S] waveforms, got shape {tuple(wavs.shape)}")
    window = torch.hann_window(n_fft, device=wavs.device, dtype=torch.float32)
    power = power_spectrogram(wavs.float(), n_fft, hop_length, window)[..., :-1].contiguous()  # [B, F, frames]
    if max_frames is not None:
        power = power[..., :max_frames]
    mel = filters.to(device=wavs.device, dtype=torch.float32).T @ power
    log_mel = torch.clamp(mel, min=1e-10).log10()
    peak = log_mel.amax(dim=(1, 2), keepdim=True)
    log_mel = torch.maximum(log_mel, peak - 8.0)
    return (log_mel + 4.0) / 4.0
