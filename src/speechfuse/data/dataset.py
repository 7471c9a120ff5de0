"""Dataset of utterances and the collate function that pads them into a Batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from speechfuse.errors import ConfigError
from speechfuse.data.audio import read_audio
from speechfuse.data.manifest import Utterance


@dataclass
class AudioItem:
    utt: Utterance
    wav: torch.Tensor  # [S] float32


@dataclass
class Batch:
    ids: list[str]
    wavs: torch.Tensor  # [B, S] float32, zero-padded
    wav_lengths: torch.Tensor  # [B] int64
    utts: list[Utterance]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.ids, self.wavs.to(device), self.wav_lengths.to(device), self.utts)


class AudioDataset(Dataset):
    """Reads each utterance's audio (its start/end span only, for a segment row) at `sample_rate` (mono
    float32) when indexed."""

    def __init__(self, utts: list[Utterance], sample_rate: int) -> None:
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ConfigError(f"AudioDataset: sample_rate must be a positive integer, got {sample_rate!r}")
        self.utts = list(utts)
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, index: int) -> AudioItem:
        utt = self.utts[index]
        return AudioItem(utt, read_audio(utt.path, self.sample_rate, utt.start, utt.end))


def collate_audio(items: list[AudioItem]) -> Batch:
    if not items:
        raise ConfigError("collate_audio: empty batch")
    lengths = torch.tensor([item.wav.shape[0] for item in items], dtype=torch.int64)
    wavs = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
    for row, item in enumerate(items):
        wavs[row, : item.wav.shape[0]] = item.wav
    return Batch(ids=[item.utt.id for item in items], wavs=wavs, wav_lengths=lengths,
                 utts=[item.utt for item in items])
