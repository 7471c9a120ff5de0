"""HiddenStates: every layer of one upstream for one batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from speechfuse.errors import ShapeError


@dataclass
class HiddenStates:
    """All layers of one model for a batch.

    hidden:     [L, B, T, D] (layer 0 is the embedding / CNN output)
    lengths:    [B] valid frames per utterance (int64)
    frame_rate: frames per second
    name:       the upstream's name
    """

    hidden: torch.Tensor
    lengths: torch.Tensor
    frame_rate: float
    name: str = ""

    def __post_init__(self) -> None:
        if self.hidden.dim() != 4:
            raise ShapeError(
                f"HiddenStates '{self.name}': hidden must be [L,B,T,D], got shape {tuple(self.hidden.shape)}"
            )
        if self.lengths.dim() != 1 or self.lengths.shape[0] != self.hidden.shape[1]:
            raise ShapeError(
                f"HiddenStates '{self.name}': lengths must be [B] with B={self.hidden.shape[1]}, "
                f"got shape {tuple(self.lengths.shape)}"
            )

    @property
    def num_layers(self) -> int:
        return self.hidden.shape[0]

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[1]

    @property
    def num_frames(self) -> int:
        return self.hidden.shape[2]

    @property
    def hidden_size(self) -> int:
        return self.hidden.shape[3]

    def padding_mask(self) -> torch.Tensor:
        """[B, T] bool, True on valid frames."""
        frames = torch.arange(self.num_frames, device=self.hidden.device)
        return frames[None, :] < self.lengths.to(self.hidden.device)[:, None]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "HiddenStates":
        hidden = self.hidden.to(device=device, dtype=dtype)
        lengths = self.lengths.to(device) if device is not None else self.lengths
        return HiddenStates(hidden, lengths, self.frame_rate, self.name)
