"""The Upstream contract shared by every pretrained model family.

Subclasses implement `_hidden(wavs, wav_lengths) -> [L,B,T,D]` and `num_frames(num_samples)`;
the base class converts integer PCM to float, validates input, pads clips shorter than the receptive
field, computes exact lengths and keeps the model frozen unless `trainable=True`.

Long clips: an upstream with a length limit (`max_samples`) that also says how many samples a window of
k frames needs (`window_samples`) runs every clip over its limit in overlapping windows (`_hidden_long`)
and stitches the hidden states back to the whole clip's exact frame count; only upstreams that cannot
window refuse longer clips.
"""
from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, NamedTuple, Optional

import torch
from pydantic import Field
from torch import nn

from speechfuse.errors import AudioError, ConfigError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.options import StrictOptions, described_as

# integer PCM -> float in [-1, 1): the scale soundfile uses when it reads such a file as float
PCM_SCALES = {torch.int16: 2.0**15, torch.int32: 2.0**31}


def as_float_waveform(wavs: torch.Tensor, name: str) -> torch.Tensor:
    """Float tensors pass through; int16 / int32 PCM is scaled to [-1, 1); any other dtype is refused."""
    if wavs.is_floating_point():
        return wavs
    if wavs.dtype not in PCM_SCALES:
        raise AudioError(
            f"{name}: waveform dtype {wavs.dtype} is not supported; pass float audio in [-1, 1] or int16 / int32 "
            "PCM (scaled by 2**15 / 2**31). For 8-bit WAV data, read the file with "
            "speechfuse.data.audio.read_audio (it returns float)"
        )
    return wavs.float() / PCM_SCALES[wavs.dtype]


def positive_seconds(value: Any, option: str, name: str) -> float | None:
    """Check an optional duration option (`window_seconds`, `max_seconds`): None or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{name}: {option} must be a positive number of seconds or null, got {value!r}")
    return float(value)


class ClipWindow(NamedTuple):
    """One window of a long clip: samples [start, end) give `frames` frames; of these, frames
    [skip, skip + keep) are kept, as the clip's frames [frame, frame + keep)."""

    start: int
    end: int
    frames: int
    frame: int
    skip: int
    keep: int


Seconds = Optional[float]


def seconds_option(default: float | None = None) -> Any:
    """A duration option (`window_seconds`, `max_seconds`): null or a positive, finite number of seconds."""
    return Field(default, gt=0, allow_inf_nan=False)


class UpstreamOptions(StrictOptions):
    """Options every upstream takes (the config's `upstreams[i].options`); a subclass's `Options` adds its own."""

    trainable: bool = False
    """Fine-tune the upstream with the rest of the model (default: frozen, eval mode, no gradients)."""


class TruncatableOptions(UpstreamOptions):
    max_layers: Annotated[Optional[int], Field(ge=1), described_as("a whole number from 1 to the model's number of "
                                                                    "hidden states, or null")] = None
    """Keep only the first k hidden states and never run the layers above (null: all of them); the upper
    bound is checked when the model loads (Upstream.layers_to_keep)."""


class Upstream(nn.Module):
    """One pretrained speech model that returns all of its hidden states.

    Attributes every subclass sets in __init__: name, num_layers, hidden_size,
    frame_rate (Hz), sample_rate (Hz), min_samples (shortest clip the model accepts).
    max_samples: the longest clip one pass takes (None: no limit). Attention models set one, from their
    `max_seconds` option (attention memory grows with the square of the clip; Whisper has 30 s of positions).
    A clip over it runs in overlapping windows when the subclass implements `window_samples` (see
    `_hidden_long`); otherwise it is refused, and checked per manifest row before training
    (`runs_long_clips`, speechfuse.data.clip_limit).
    window_seconds: audio run at a time by models whose windows stitch exactly (None: whole clip).
    """

    name: str
    Options: ClassVar[type[UpstreamOptions]] = UpstreamOptions
    num_layers: int
    hidden_size: int
    frame_rate: float
    sample_rate: int = 16000
    min_samples: int = 400
    max_samples: int | None = None  # longest clip the model accepts (None: any); Whisper: its 30 s window
    window_seconds: float | None = None
    seam_seconds: float = 5.0  # context each side of a long-clip window's kept frames (at most a quarter window)
    max_layers: int | None = None  # set by truncate_layers: only the first k hidden states are computed

    def __init__(self, trainable: bool = False) -> None:
        super().__init__()
        self.trainable = trainable

    # -- to be implemented by subclasses ---------------------------------------------------------
    def num_frames(self, num_samples: int) -> int:
        raise NotImplementedError

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """[B] valid samples -> [B] valid frames (int64). Families whose num_frames is integer arithmetic
        override this with the same arithmetic on tensors, so that a trace keeps it dynamic
        (speechfuse.serving.export.export_whole: one trace for every input length)."""
        return torch.tensor([self.num_frames(int(n)) for n in sample_lengths.tolist()], dtype=torch.long,
                            device=sample_lengths.device)

    def export_blocker(self) -> str | None:
        """Why the whole model cannot be traced through this upstream (None: it can; speechfuse.serving.export
        then checks the trace against eager at two input lengths)."""
        return None

    def _hidden(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """[B,S] float32, [B] int64 on the CPU -> [L,B,T,D]. S >= min_samples is guaranteed."""
        raise NotImplementedError

    def window_samples(self, frames: int) -> int | None:
        """Samples a window starting on a frame boundary needs to yield exactly `frames` frames; None (the
        default): this upstream cannot run a clip longer than max_samples in windows, and refuses it."""
        return None

    def _long_clip_input(self, wav: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """[1,S] -> [1,S]: what is computed once over a whole long clip before it is cut into windows
        (e.g. per-utterance normalisation). Default: nothing."""
        return wav

    def _window_hidden(self, wav: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """[1,s] window of `_long_clip_input`'s output -> [L,1,t,D]. Default: `_hidden`."""
        return self._hidden(wav, length)

    def default_max_samples(self) -> int | None:
        """The family's own single-pass limit (max_samples without a max_seconds option)."""
        return None

    def options(self) -> dict[str, Any]:
        """Options that change the outputs (part of the feature-cache key). Subclasses extend this dict.
        A single-pass limit other than the family's default changes the windows a long clip runs in, so it is
        part of the key (the default is left out: the key of an upstream with no options stays as it was)."""
        out = {} if self.max_layers is None else {"max_layers": self.max_layers}
        if self.max_samples is not None and self.window_samples(1) is not None:
            if self.max_samples != self.default_max_samples():
                out["max_samples"] = self.max_samples
            if self.seam_seconds != Upstream.seam_seconds:
                out["seam_seconds"] = self.seam_seconds
        return out

    def num_parameters(self) -> int:
        """The weights this upstream computes its hidden states with (the scaling study's model size).

        A truncated upstream (max_layers=k) holds only the layers below its k-th hidden state, so this is
        the count of the first k. Fixed front ends (mel filter banks) are buffers and not counted.
        Subclasses leave out weights that no hidden state uses, or count weights held outside torch.
        """
        return sum(p.numel() for p in self.parameters())

    def layers_to_keep(self, max_layers: Any) -> int:
        """Check the `max_layers` option against the full model and record it; returns the hidden states to keep.

        Call with the full model's num_layers set; the subclass then drops everything above and sets
        num_layers to the result. Keeping all layers is the same upstream as no option (same cache key).
        """
        full = self.num_layers
        if max_layers is None:
            return full
        if isinstance(max_layers, bool) or not isinstance(max_layers, int) or not 1 <= max_layers <= full:
            raise ConfigError(f"{self.name}: max_layers must be a whole number from 1 to {full} (the hidden states this "
                              f"model returns), got {max_layers!r}")
        self.max_layers = max_layers if max_layers < full else None
        return max_layers

    def items_per_window(self, per_second: float, total: int) -> int:
        """How many frames (at `per_second`) one window_seconds holds; all `total` when windowing is off."""
        if self.window_seconds is None or torch.jit.is_tracing():
            # a trace records one pass over the whole clip: windows stitch exactly, and a window count
            # taken from the traced input's length would be frozen into the graph
            return max(1, total)
        return max(1, int(self.window_seconds * per_second))

    # -- long clips ---------------------------------------------------------------------------------
    @property
    def runs_long_clips(self) -> bool:
        """True when forward takes a clip of any length (no limit, or windows over it)."""
        return self.max_samples is None or self.window_samples(1) is not None

    def window_frames(self) -> int:
        """Frames in one long-clip window: the most whose window_samples fit in max_samples."""
        frames = self.num_frames(self.max_samples)
        while frames > 0 and self.window_samples(frames) > self.max_samples:
            frames -= 1
        if frames < 1:
            raise ConfigError(f"{self.name}: max_seconds={self.max_samples / self.sample_rate:g} s is too short for "
                              "one frame, so long clips cannot run in windows; raise max_seconds")
        return frames

    def long_clip_windows(self, num_samples: int) -> list[ClipWindow]:
        """The windows a clip of num_samples runs in. Every window holds window_frames() frames W, starts
        on a frame boundary and is cut from the clip (so it is within the limit); the frames kept tile the
        clip's num_frames exactly. Each window keeps its middle: the `seam_seconds` of frames next to a
        seam (at most W // 4) are discarded, as they see less context; the clip's own ends are kept."""
        total, width = self.num_frames(num_samples), self.window_frames()
        seam = min(int(round(self.seam_seconds * self.frame_rate)), width // 4)
        hop = round(self.sample_rate / self.frame_rate)  # samples per frame: an integer for every family here
        windows, kept = [], 0
        while kept < total:
            first = max(0, min(kept - seam, total - width))
            last = min(total, first + width)
            keep_to = last if last == total else last - seam
            start = first * hop
            windows.append(ClipWindow(start, min(num_samples, start + self.window_samples(last - first)),
                                      last - first, kept, kept - first, keep_to - kept))
            kept = keep_to
        return windows

    def _hidden_long(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """[B,S] with S > max_samples -> [L,B,T,D]: the rows within the limit in one pass (exactly as
        without windows), each longer row in windows (long_clip_windows), stitched on the frame axis."""
        total = self.num_frames(wavs.shape[1])
        out: torch.Tensor | None = None

        def put(rows: torch.Tensor | list[int], first: int, part: torch.Tensor) -> None:
            nonlocal out
            if out is None:
                out = part.new_zeros(part.shape[0], wavs.shape[0], total, part.shape[3])
            out[:, rows, first:first + part.shape[2]] = part

        short = torch.nonzero(wav_lengths <= self.max_samples).flatten()
        if len(short):
            width = int(wav_lengths[short].max())
            put(short, 0, self._hidden(wavs[short, :width], wav_lengths[short]))
        for row in torch.nonzero(wav_lengths > self.max_samples).flatten().tolist():
            length = wav_lengths[row:row + 1]
            clip = self._long_clip_input(wavs[row:row + 1, :int(length)], length)
            for w in self.long_clip_windows(int(length)):
                part = self._window_hidden(clip[:, w.start:w.end], torch.tensor([w.end - w.start]))
                if part.shape[2] != w.frames:  # a subclass's window_samples disagrees with its num_frames
                    raise RuntimeError(f"{self.name}: a window of {w.end - w.start} samples gave {part.shape[2]} "
                                       f"frames, window_samples promised {w.frames}")
                put([row], w.frame, part[:, :, w.skip:w.skip + w.keep])
        return out

    # -- shared behaviour -------------------------------------------------------------------------
    def freeze(self) -> None:
        self.trainable = False
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Upstream":
        # a frozen upstream stays in eval mode (no dropout) even inside a training model
        return super().train(mode and self.trainable)

    def _finish_init(self) -> None:
        """Call at the end of a subclass __init__."""
        if not self.trainable:
            self.freeze()

    def fingerprint(self) -> str:
        """A short hash of the weights (part of the feature-cache key)."""
        h = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(str(tuple(tensor.shape)).encode())
            # a strided sample, taken on the tensor's device before any copy, keeps the hash cheap
            # for big models while still catching changed weights
            flat = tensor.detach().flatten()
            step = max(1, flat.numel() // 4096)
            h.update(flat[::step].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options(), "fingerprint": self.fingerprint()}

    def validate(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> None:
        if wavs.dim() == 3:
            raise AudioError(
                f"{self.name}: got a 3-D batch {tuple(wavs.shape)}; speechfuse expects mono [B,S]. "
                "Mix stereo down to mono first (speechfuse.data.audio.read_audio does this)."
            )
        if wavs.dim() != 2:
            raise AudioError(f"{self.name}: wavs must be [B,S], got shape {tuple(wavs.shape)}")
        if wav_lengths.dim() != 1 or wav_lengths.shape[0] != wavs.shape[0]:
            raise AudioError(
                f"{self.name}: wav_lengths must be [B] with B={wavs.shape[0]}, got {tuple(wav_lengths.shape)}"
            )
        if (wav_lengths <= 0).any():
            bad = torch.nonzero(wav_lengths <= 0).flatten().tolist()
            raise AudioError(f"{self.name}: empty clip(s) at batch index {bad}; remove them from the manifest")
        if (wav_lengths > wavs.shape[1]).any():
            raise AudioError(f"{self.name}: a wav_length exceeds the padded width {wavs.shape[1]}")
        if not torch.isfinite(wavs).all():
            bad = torch.nonzero(~torch.isfinite(wavs).all(dim=1)).flatten().tolist()
            raise AudioError(f"{self.name}: NaN or inf samples in batch index {bad}; check the audio files")
        if not self.runs_long_clips and (wav_lengths > self.max_samples).any():
            bad = torch.nonzero(wav_lengths > self.max_samples).flatten().tolist()
            longest = int(wav_lengths.max()) / self.sample_rate
            raise AudioError(
                f"{self.name}: clip(s) at batch index {bad} are longer than this upstream's limit, "
                f"max_seconds={self.max_samples / self.sample_rate:g} s (longest {longest:.1f} s); split long "
                f"recordings into shorter segments{self.max_seconds_advice()}"
            )

    def max_seconds_advice(self) -> str:
        """The end of the too-long message: how to lift the limit where the model allows it."""
        return ""

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor, sample_rate: int | None = None) -> HiddenStates:
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise AudioError(
                f"{self.name}: audio is {sample_rate} Hz but the model expects {self.sample_rate} Hz; "
                "resample first (speechfuse.data.audio.read_audio(path, sample_rate=...))"
            )
        # lengths live on the host: validation and frame arithmetic then need no device round trip
        # (the NaN/inf check below is the one host sync per batch)
        wav_lengths = torch.as_tensor(wav_lengths, dtype=torch.long).cpu()
        wavs = as_float_waveform(wavs, self.name)
        self.validate(wavs, wav_lengths)
        wavs = wavs.float()
        if wavs.shape[1] < self.min_samples:
            wavs = nn.functional.pad(wavs, (0, self.min_samples - wavs.shape[1]))
        # short clips are zero-padded up to min_samples; the valid-sample count follows
        model_lengths = wav_lengths.clamp(min=self.min_samples)
        lengths = self.frame_lengths(model_lengths)
        long_clip = (self.max_samples is not None and wavs.shape[1] > self.max_samples
                     and not torch.jit.is_tracing())  # a trace records one pass (export's max_samples)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self._hidden_long(wavs, model_lengths) if long_clip else self._hidden(wavs, model_lengths)
        expected_t = self.num_frames(wavs.shape[1])
        if hidden.shape[2] != expected_t:
            # programming error in a subclass, not user input: fail loudly
            raise RuntimeError(f"{self.name}: produced T={hidden.shape[2]} but num_frames says {expected_t}")
        return HiddenStates(hidden=hidden, lengths=lengths.to(hidden.device), frame_rate=self.frame_rate, name=self.name)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, layers={self.num_layers}, hidden={self.hidden_size}, "
            f"rate={self.frame_rate} Hz, trainable={self.trainable}"
        )
