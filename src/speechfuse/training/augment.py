"""SpecAugment on the fused features: training-only time masks and feature (channel) masks.

SpecAugment (Park et al., Interspeech 2019) zeroes random bands of a feature sequence. s3prl applies it to
the upstream representation right before the downstream head, in training steps only (its runner's
`training_step`: `features, _ = self.specaug(features)` after the featurizer); ESPnet (and so ML-SUPERB)
applies it to the frontend's features before the encoder, in training only. speechfuse does the same: the
interface's output `features [B,T,D]` is masked before the task head, while training (`train.specaug`; the
runner's FusionTask applies it when it is in train mode, so dev/test scoring, `predict` and exported models
never see it).

    aug = SpecAugment(time_masks=2, time_width=40, feature_masks=4, feature_width=50)
    aug.train(); masked = aug(features, lengths)

Per utterance (its own valid frames `lengths[b]`, never the padding):
  time masks     `time_masks` bands of frames, each w frames wide with w uniform over 0..W-1, placed
                 uniformly inside the valid frames (w is capped at the utterance's length); W is
                 `time_width` frames, or, when below 1, that fraction of the utterance's valid frames
                 (rounded down, as ESPnet's `time_mask_width_ratio_range` does for the batch's length);
  feature masks  `feature_masks` bands of feature channels, same width rule over D (a fraction of D when
                 below 1), zeroed on the utterance's valid frames.
  time warp      (`time_warp` = window w > 0, before the masks, as s3prl and ESPnet do) a centre c uniform
                 over w..n-w-1 and a new position c' uniform over c-w+1..c+w; frames [0, c) are resized to
                 c' frames and [c, n) to n-c' frames (bicubic along time, as ESPnet's `time_warp`), so the
                 utterance keeps its n valid frames. Utterances with n <= 2w frames are left unwarped.
With `span="batch"` the masks are drawn as s3prl's and ESPnet's `MaskAlongAxis` draws them, over the padded
batch instead: time widths 0..W-1 with W `time_width` frames or that fraction of the batch's padded length, and
every band's start uniform over 0..max(1, size - the widest band of the batch)-1 of the padded length (feature
bands likewise over D), so a short utterance gets wider time masks and some land on its padding.
Masked values are 0 (s3prl's and ESPnet's `replace_with_zero`). Widths 0..W-1 are what s3prl's and ESPnet's
`torch.randint(0, W)` draw for `mask_width_range: [0, W]`. The warp is per utterance over its valid frames, as
s3prl's `TimeWarp.forward` (downstream/specaug.py) and ESPnet's (espnet2/layers/time_warp.py, for a batch whose
lengths differ; one shared warp when they are all equal) do.

Randomness comes from torch's global CPU generator (one draw per batch), whose state every checkpoint saves
and a resume restores, so a resumed run masks exactly as an uninterrupted one.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from speechfuse.errors import ShapeError


def band_widths(limit: float, sizes: torch.Tensor) -> torch.Tensor:
    """[B] exclusive upper bound W of the band widths: `limit` frames/channels, or that fraction of `sizes`."""
    if limit < 1:
        return torch.floor(limit * sizes.double()).long()
    return torch.full_like(sizes, int(limit))


def draw_bands(count: int, limit: float, sizes: torch.Tensor, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
    """[B, count, 2] (start, end) bands with 0 <= start <= end <= sizes[b] and end - start uniform over
    0..W-1 (W from `band_widths`, capped at sizes[b] + 1 so a band never leaves the valid range)."""
    sizes = sizes.long().cpu()
    batch = sizes.shape[0]
    upper = torch.minimum(band_widths(limit, sizes).clamp_min(1), sizes + 1)  # widths 0..upper-1
    u_width, u_start = torch.rand(2, batch, count, generator=generator, dtype=torch.float64)
    width = torch.floor(u_width * upper[:, None]).long()
    start = torch.floor(u_start * (sizes[:, None] - width + 1)).long()
    return torch.stack([start, start + width], dim=-1)


def band_mask(bands: torch.Tensor, size: int) -> torch.Tensor:
    """[B, count, 2] bands -> [B, size] bool, True inside any band."""
    positions = torch.arange(size)[None, None, :]
    inside = (positions >= bands[..., :1]) & (positions < bands[..., 1:])
    return inside.any(dim=1)


def time_warp(features: torch.Tensor, lengths: torch.Tensor, window: int,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Warp each utterance's valid frames around a random centre (see the module doc); padding unchanged."""
    out = features.clone()
    for b, n in enumerate(lengths.long().cpu().tolist()):
        if n <= 2 * window:
            continue
        centre = int(torch.randint(window, n - window, (1,), generator=generator))
        warped = int(torch.randint(centre - window, centre + window, (1,), generator=generator)) + 1
        x = features[b, :n][None, None]  # [1, 1, n, D]
        dims = x.shape[-1]
        left = nn.functional.interpolate(x[:, :, :centre], size=(warped, dims), mode="bicubic", align_corners=False)
        right = nn.functional.interpolate(x[:, :, centre:], size=(n - warped, dims), mode="bicubic",
                                          align_corners=False)
        out[b, :n] = torch.cat([left, right], dim=2)[0, 0]
    return out


def draw_batch_bands(count: int, limit: float, size: int, batch: int, generator: Optional[torch.Generator] = None
                     ) -> torch.Tensor:
    """[batch, count, 2] bands as s3prl's and ESPnet's mask_along_axis draws them over a padded axis of `size`:
    widths uniform over 0..W-1 (W from `band_widths` of `size`), starts uniform over 0..max(1, size - widest)-1."""
    upper = int(band_widths(limit, torch.tensor([size]))[0].clamp_min(1))
    u_width, u_start = torch.rand(2, batch, count, generator=generator, dtype=torch.float64)
    width = torch.floor(u_width * upper).long()
    room = max(1, size - int(width.max())) if width.numel() else 1
    start = torch.floor(u_start * room).long()
    return torch.stack([start, start + width], dim=-1)


class SpecAugment(nn.Module):
    """Zeroes random time and feature bands of `features [B,T,D]` on the valid frames, in train mode only."""

    def __init__(self, time_masks: int = 2, time_width: float = 40, feature_masks: int = 4,
                 feature_width: float = 50, time_warp: int = 0, span: str = "utterance") -> None:
        super().__init__()
        self.time_masks, self.time_width = time_masks, time_width
        self.feature_masks, self.feature_width = feature_masks, feature_width
        self.time_warp = time_warp
        self.span = span

    def extra_repr(self) -> str:
        return (f"time_masks={self.time_masks}, time_width={self.time_width}, "
                f"feature_masks={self.feature_masks}, feature_width={self.feature_width}, time_warp={self.time_warp}, "
                f"span={self.span}")

    def masks(self, lengths: torch.Tensor, frames: int, dims: int, generator: Optional[torch.Generator] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bands one call draws: time [B, time_masks, 2] and feature [B, feature_masks, 2]."""
        lengths = lengths.long().cpu().clamp(max=frames)
        if self.span == "batch":
            batch = lengths.shape[0]
            return (draw_batch_bands(self.time_masks, self.time_width, frames, batch, generator),
                    draw_batch_bands(self.feature_masks, self.feature_width, dims, batch, generator))
        time = draw_bands(self.time_masks, self.time_width, lengths, generator)
        feature = draw_bands(self.feature_masks, self.feature_width, torch.full_like(lengths, dims), generator)
        return time, feature

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not self.training:
            return features
        if features.dim() != 3:
            raise ShapeError(f"SpecAugment: features must be [B,T,D], got shape {tuple(features.shape)}")
        batch, frames, dims = features.shape
        if self.time_warp > 0:
            features = time_warp(features, lengths.clamp(max=frames), self.time_warp, generator)
        time, feature = self.masks(lengths, frames, dims, generator)
        device = features.device  # only the small [B,T] / [B,D] masks move; the [B,T,D] one is built there
        valid = (torch.arange(frames)[None, :] < lengths.long().cpu()[:, None]).to(device)
        in_time, in_feature = band_mask(time, frames).to(device), band_mask(feature, dims).to(device)
        masked = (in_time[:, :, None] | in_feature[:, None, :]) & valid[:, :, None]
        return features.masked_fill(masked, 0.0)


__all__ = ["SpecAugment", "draw_bands", "draw_batch_bands", "band_mask", "band_widths", "time_warp"]
