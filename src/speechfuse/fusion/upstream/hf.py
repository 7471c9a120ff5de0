"""transformers speech checkpoints as Upstreams: wav2vec2 (incl. XLS-R, MMS), HuBERT, WavLM,
data2vec-audio and the Whisper encoder.

`load_hf_upstream(path_or_hub_id)` reads config.json's `model_type`, maps it explicitly to a
transformers base class, loads only the base / encoder weights (from a base model or a task model
such as *ForCTC / WhisperForConditionalGeneration) and refuses a checkpoint whose encoder weights
did not load. A local folder never touches the network; a hub id is resolved through the local
Hugging Face cache (and the network only when the hub is not set offline). trust_remote_code is
never used.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn

from speechfuse.errors import AudioError, ConfigError, UpstreamError
from speechfuse.fusion.upstream.base import Seconds, TruncatableOptions, Upstream, positive_seconds, seconds_option
from speechfuse.fusion.upstream.whisper_features import log_mel_spectrogram, mel_filterbank

SSL_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
SUPPORTED_MODEL_TYPES = SSL_MODEL_TYPES + ("whisper",)
WHISPER_MODES = ("trim", "pad30")
# Longest clip a wav2vec2-style model runs in one pass by default (option max_seconds); longer clips run
# in overlapping windows of at most this (Upstream._hidden_long). Self-attention memory grows with the
# square of the clip length; a window changes the features a little near its seams, which are discarded.
SSL_MAX_SECONDS = 60.0

# parameters a base model may lack in a task checkpoint without changing inference outputs
# (masked_spec_embed is only used by SpecAugment during training)
_OPTIONAL_KEYS = ("masked_spec_embed",)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# -- shared helpers --------------------------------------------------------------------------------
def valid_sample_mask(wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
    """[B,S] bool, True on the first wav_lengths[b] samples of row b."""
    positions = torch.arange(wavs.shape[1], device=wavs.device)
    return positions[None, :] < wav_lengths.to(wavs.device)[:, None]


def normalize_valid(wavs: torch.Tensor, wav_lengths: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples only; padding set to 0.

    Same formula as transformers' Wav2Vec2FeatureExtractor (population variance, eps 1e-7), in
    float64 statistics so the result does not depend on how much padding a row has.
    """
    mask = valid_sample_mask(wavs, wav_lengths)
    x = wavs.double() * mask
    count = wav_lengths.to(device=wavs.device, dtype=torch.float64)[:, None]
    mean = x.sum(dim=1, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    return (((x - mean) / torch.sqrt(var + eps)) * mask).to(wavs.dtype)


def conv_output_length(num_samples: int, kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Frames after a stack of unpadded 1-D convs: floor((n - k) / s) + 1 per layer, 0 if too short."""
    n = num_samples
    for kernel, stride in zip(kernels, strides):
        if n < kernel:
            return 0
        n = (n - kernel) // stride + 1
    return n


def conv_output_lengths(num_samples: torch.Tensor, kernels: tuple[int, ...], strides: tuple[int, ...]) -> torch.Tensor:
    """conv_output_length elementwise on an integer tensor."""
    n = num_samples.long()
    for kernel, stride in zip(kernels, strides):
        n = torch.where(n >= kernel, (n - kernel) // stride + 1, torch.zeros_like(n))
    return n


def receptive_field(kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Smallest input length that yields one frame from an unpadded conv stack."""
    field, jump = kernels[0], strides[0]
    for kernel, stride in zip(kernels[1:], strides[1:]):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def _zero_padded_frames(hidden: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    frames = torch.arange(hidden.shape[2], device=hidden.device)
    valid = frames[None, :] < frame_lengths.to(hidden.device)[:, None]  # [B,T]
    return hidden * valid[None, :, :, None].to(hidden.dtype)


def truncate_encoder(encoder: nn.Module, keep_layers: int, norm_after_layers: bool) -> None:
    """Drop the transformer layers above the first `keep_layers` so they are never run.

    Pre-norm encoders (Whisper, wav2vec2-style "stable layer norm") apply a final layer norm after
    their last layer, and transformers returns the last hidden state after it; every other hidden
    state is a layer's raw output. So a truncated encoder drops that norm too: its k-th hidden
    state is then exactly the full model's k-th, not a normalised copy of it.
    """
    if keep_layers == len(encoder.layers):
        return
    encoder.layers = encoder.layers[:keep_layers]
    if norm_after_layers:
        encoder.layer_norm = nn.Identity()


def stack_hidden_states(out: Any) -> torch.Tensor:
    """[L,B,T,D] from a transformers output; with no layer left (max_layers=1) transformers records
    no hidden state, and the input embedding is the last_hidden_state."""
    return torch.stack(out.hidden_states or (out.last_hidden_state,), dim=0)


# -- wav2vec2 / HuBERT / WavLM / data2vec-audio ------------------------------------------------------
class _MaskedPositionalConvs(nn.Module):
    """data2vec-audio's stack of positional convs, with padding frames re-zeroed after every conv.

    transformers zeroes the padding only before the first conv, so from the second conv on the
    frames next to an utterance's end see the previous conv's output on padding instead of zeros,
    and attention spreads that to every frame. Re-zeroing makes each utterance's frames equal to
    running it alone (where the conv's own zero padding is all it sees). Same parameters and keys.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.layers = original.layers
        self.valid_frames: torch.Tensor | None = None  # [B,T] bool, set for one forward call

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
            if self.valid_frames is not None:
                x = x * self.valid_frames[:, None, :].to(x.dtype)
        return x.transpose(1, 2)


class HFCheckpointOptions(TruncatableOptions):
    """Options every `hf:` checkpoint takes; each family's Options adds its own."""

    max_seconds: Seconds = seconds_option(None)
    """The longest clip one pass takes; longer clips run in overlapping windows (null: 60 s for wav2vec2-style
    models, 30 s for Whisper, whose window can only be lowered)."""


class HFSSLOptions(HFCheckpointOptions):
    """Options of a wav2vec2, HuBERT, WavLM or data2vec-audio `hf:` checkpoint (HFSSLUpstream)."""


class HFWhisperOptions(HFCheckpointOptions):
    """Options of a Whisper `hf:` checkpoint (HFWhisperUpstream) and of whisper-tiny.en."""

    whisper_mode: Literal["trim", "pad30"] = "trim"
    """trim: encode only the clip's frames; pad30: pad every clip to Whisper's 30 s window."""


# The options of an `hf:` spec whose family is not known yet (a hub id not in the local cache): the
# union of the families' (Whisper's holds them all). Once config.json is read, load_hf_upstream refuses
# a whisper_mode other than the default for any other family.
HFOptions = HFWhisperOptions


class HFSSLUpstream(Upstream):
    """A wav2vec2-style model (wav2vec2 / XLS-R / MMS, HuBERT, WavLM, data2vec-audio).

    Input: the waveform is normalised per utterance over its valid samples when the checkpoint's
    preprocessor_config.json says `do_normalize` (default True when the file is absent, as in
    Wav2Vec2FeatureExtractor); padding is set to zero.

    Padding and batching:
    * An attention mask is passed for layer-norm feature encoders (`feat_extract_norm == "layer"`,
      e.g. wav2vec2-large-lv60 / XLS-R / MMS, HuBERT large), for WavLM and for data2vec-audio. With
      a layer-norm feature encoder the valid frames of an utterance do not depend on what it was
      batched with.
    * Group-norm feature encoders (`feat_extract_norm == "group"`: wav2vec2-base, HuBERT base) were
      trained without an attention mask and transformers does not use one for them, so none is
      passed. Their first conv's GroupNorm normalises each channel over the whole padded time axis
      and every frame attends to the padding, so the padding changes the valid frames of shorter
      utterances in a batch. Lengths stay exact, but the values differ from running the utterance
      alone. Batch utterances of similar length (speechfuse.data.DurationBatchSampler buckets by
      duration) or use batch size 1 when exact per-utterance features matter. WavLM base / base+
      have a group-norm encoder too: they get the attention mask, but the GroupNorm still sees the
      padding.
    * data2vec-audio stacks several positional convs and transformers zeroes padding only before
      the first; speechfuse re-zeroes it after each (see _MaskedPositionalConvs), so batched
      valid frames equal the utterance run alone, as for the other masked models.

    Long clips: a clip over `max_seconds` (default SSL_MAX_SECONDS = 60 s) is normalised as a whole, then
    run in overlapping windows of at most max_seconds that start on frame boundaries (320 samples), so
    each window's conv frames are the whole clip's; the frames next to a seam, which see less attention
    context, are discarded (Upstream.long_clip_windows). Clips within the limit are run exactly as before.

    Output: every hidden state transformers returns (CNN/projection output + one per layer), with
    frames past each utterance's length set to zero. `max_layers=k` keeps the first k of them and
    never runs the layers above (see truncate_encoder: the k-th equals the full model's k-th). When trainable=True and in training mode, the
    model's own dropout, LayerDrop and SpecAugment (config.apply_spec_augment / mask_time_prob) are
    active, exactly as in transformers fine-tuning.
    """

    Options = HFSSLOptions

    def __init__(
        self, model: nn.Module, name: str, do_normalize: bool, sample_rate: int, trainable: bool = False,
        max_seconds: float | None = None, max_layers: int | None = None,
    ) -> None:
        super().__init__(trainable=trainable)
        config = model.config
        self.model = model
        self.name = name
        self.model_type = config.model_type
        self.do_normalize = bool(do_normalize)
        self.feat_extract_norm = getattr(config, "feat_extract_norm", "layer")
        self.use_attention_mask = self.model_type in ("wavlm", "data2vec-audio") or self.feat_extract_norm == "layer"
        self.kernels = tuple(int(k) for k in config.conv_kernel)
        self.strides = tuple(int(s) for s in config.conv_stride)
        self.num_layers = int(config.num_hidden_layers) + 1
        self.hidden_size = int(config.hidden_size)
        self.sample_rate = int(sample_rate)
        self.max_samples = round((positive_seconds(max_seconds, "max_seconds", name) or SSL_MAX_SECONDS)
                                 * self.sample_rate)
        self.frame_rate = self.sample_rate / math.prod(self.strides)
        self.min_samples = receptive_field(self.kernels, self.strides)
        if self.model_type == "data2vec-audio":
            model.encoder.pos_conv_embed = _MaskedPositionalConvs(model.encoder.pos_conv_embed)
        self.num_layers = self.layers_to_keep(max_layers)
        truncate_encoder(model.encoder, self.num_layers - 1,
                         norm_after_layers=type(model.encoder).__name__.endswith("StableLayerNorm"))
        self._finish_init()

    def num_frames(self, num_samples: int) -> int:
        return conv_output_length(int(num_samples), self.kernels, self.strides)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(sample_lengths, self.kernels, self.strides)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "do_normalize": self.do_normalize, "attention_mask": self.use_attention_mask}

    def max_seconds_advice(self) -> str:
        return (", or raise the upstream option max_seconds (self-attention spans the whole clip, so its memory "
                "grows with the square of the clip length)")

    def window_samples(self, frames: int) -> int:
        return (frames - 1) * math.prod(self.strides) + self.min_samples

    def default_max_samples(self) -> int:
        return round(SSL_MAX_SECONDS * self.sample_rate)

    def _long_clip_input(self, wav: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        return normalize_valid(wav, length) if self.do_normalize else wav

    def _window_hidden(self, wav: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        return self._encode(wav, length)  # already normalised over the whole clip

    def _hidden(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        inputs = normalize_valid(wavs, wav_lengths) if self.do_normalize else wavs
        return self._encode(inputs, wav_lengths)

    def _encode(self, inputs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Normalised [B,S] input -> [L,B,T,D] (padding samples zeroed here)."""
        sample_mask = valid_sample_mask(inputs, wav_lengths)
        wavs = inputs = inputs * sample_mask
        attention_mask = sample_mask.long() if self.use_attention_mask else None
        frame_lengths = self.frame_lengths(wav_lengths).to(wavs.device)
        pos_convs = self.model.encoder.pos_conv_embed
        masked = isinstance(pos_convs, _MaskedPositionalConvs)
        if masked:
            width = torch.full_like(wav_lengths[:1], wavs.shape[1])
            frames = torch.arange(self.frame_lengths(width)[0], device=wavs.device)
            pos_convs.valid_frames = frames[None, :] < frame_lengths[:, None]
        try:
            out = self.model(inputs, attention_mask=attention_mask, output_hidden_states=True)
        finally:
            if masked:
                pos_convs.valid_frames = None
        hidden = stack_hidden_states(out)  # [L,B,T,D]
        if hidden.shape[0] != self.num_layers:
            raise RuntimeError(f"{self.name}: transformers returned {hidden.shape[0]} hidden states, "
                               f"expected {self.num_layers}")
        return _zero_padded_frames(hidden, frame_lengths)


# -- Whisper encoder -------------------------------------------------------------------------------
class HFWhisperUpstream(Upstream):
    """The encoder of a Whisper checkpoint; hidden states = conv/positional embedding + every layer
    (the last one after the encoder's final layer norm, as transformers returns it). `max_layers=k`
    keeps the first k and never runs the layers above; the final layer norm is then dropped, so the
    k-th hidden state equals the full encoder's k-th (see truncate_encoder).

    Features: Whisper log-mel (speechfuse.fusion.upstream.whisper_features), settings from the checkpoint's
    preprocessor_config.json (defaults when absent: num_mel_bins from config.json, 16 kHz, n_fft 400,
    hop 160). Frames: ceil(n / hop) mel frames (100 Hz), conv1 keeps them, conv2 halves them: 50 Hz,
    num_frames(n) = ceil(ceil(n / 160) / 2). Clips over 30 s (the encoder's 1500 positions), or over a
    lower `max_seconds` (it may lower the limit, never raise it), run in overlapping windows of that
    length starting on encoder-frame boundaries (320 samples), each its own Whisper input (its own
    log-mel maximum, as Whisper's long-form transcription does per 30 s segment); the frames next to a
    seam are discarded (Upstream.long_clip_windows).

    whisper_mode:
    * "pad30": bit-faithful to transformers: log-mel of the clip zero-padded to 30 s, the full
      1500-position encoder, then the frames trimmed to the batch's longest clip. Independent of
      batching (every clip sees its own 30 s window).
    * "trim" (default): only the batch's longest clip is encoded (mel frames padded to an even
      count), positional embeddings sliced to that length. The mel frames are identical to pad30's;
      the encoder output differs because frames no longer attend to the ~30 s of trailing silence
      Whisper was trained with (benchmarks/whisper_trim.py measures how much). Whisper itself has no
      attention mask, so a short clip batched with a longer one would attend to the padding frames,
      which changes its features a lot (max abs 11 on real tiny.en, as large as the features). Trim
      mode therefore zeroes each clip's mel frames past its own (even) length and adds a key-padding
      mask to every self-attention: a clip's valid frames equal running it alone.
    """

    Options = HFWhisperOptions

    def __init__(self, encoder: nn.Module, name: str, preprocessor: dict[str, Any], whisper_mode: str = "trim",
                 trainable: bool = False, max_seconds: float | None = None, max_layers: int | None = None) -> None:
        super().__init__(trainable=trainable)
        if whisper_mode not in WHISPER_MODES:
            raise ConfigError(f"{name}: whisper_mode must be one of {WHISPER_MODES}, got {whisper_mode!r}")
        config = encoder.config
        self.encoder = encoder
        self.name = name
        self.whisper_mode = whisper_mode
        self.num_mels = int(preprocessor.get("feature_size", config.num_mel_bins))
        if self.num_mels != config.num_mel_bins:
            raise UpstreamError(f"{name}: preprocessor_config.json has feature_size={self.num_mels} but config.json "
                                f"has num_mel_bins={config.num_mel_bins}; the checkpoint folder is inconsistent")
        if float(preprocessor.get("dither", 0.0)) != 0.0:
            raise UpstreamError(f"{name}: preprocessor_config.json sets dither={preprocessor['dither']}; speechfuse "
                                "needs deterministic features (for caching). Set dither to 0.0 in that file.")
        self.n_fft = int(preprocessor.get("n_fft", 400))
        self.hop_length = int(preprocessor.get("hop_length", 160))
        self.sample_rate = int(preprocessor.get("sampling_rate", 16000))
        self.conv_strides = (int(encoder.conv1.stride[0]), int(encoder.conv2.stride[0]))
        self.max_mel_frames = int(config.max_source_positions) * math.prod(self.conv_strides)
        self.context_samples = self.max_mel_frames * self.hop_length  # the 30 s input Whisper was trained on
        context_seconds = self.context_samples / self.sample_rate
        limit = positive_seconds(max_seconds, "max_seconds", name)
        if limit is not None and limit > context_seconds:
            raise ConfigError(f"{name}: max_seconds={limit:g} is over Whisper's {context_seconds:g} s window "
                              f"({config.max_source_positions} encoder positions); it can only be lowered")
        self.max_samples = round(limit * self.sample_rate) if limit else self.context_samples
        self.register_buffer("mel_filters", mel_filterbank(self.num_mels, self.n_fft, self.sample_rate),
                             persistent=False)
        self.num_layers = len(encoder.layers) + 1
        self.num_layers = self.layers_to_keep(max_layers)
        truncate_encoder(encoder, self.num_layers - 1, norm_after_layers=True)
        self.hidden_size = int(config.d_model)
        self.frame_rate = self.sample_rate / (self.hop_length * math.prod(self.conv_strides))
        self.min_samples = 1
        self._finish_init()

    def options(self) -> dict[str, Any]:
        return {**super().options(), "whisper_mode": self.whisper_mode}

    def _mel_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        # not -(-n // hop): ONNX's integer division truncates towards zero, which is no floor for negatives
        return (num_samples + self.hop_length - 1) // self.hop_length

    def _encoder_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Frames after the two convs: integer arithmetic, on ints or elementwise on tensors."""
        frames = self._mel_frames(num_samples)
        for conv in (self.encoder.conv1, self.encoder.conv2):
            frames = (frames + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        return frames

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return self._encoder_frames(sample_lengths.long())

    def num_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Also takes a 0-dim tensor (a traced length), and then returns one."""
        if not isinstance(num_samples, torch.Tensor):
            num_samples = int(num_samples)
        return self._encoder_frames(num_samples)

    def window_samples(self, frames: int) -> int:
        return frames * self.hop_length * math.prod(self.conv_strides)

    def default_max_samples(self) -> int:
        return self.context_samples

    def _hidden(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        if wavs.shape[1] > self.context_samples:  # forward runs longer clips in windows (_hidden_long)
            raise AudioError(f"{self.name}: {wavs.shape[1]} samples in one pass is over Whisper's "
                             f"{self.context_samples / self.sample_rate:.0f} s window; call the upstream itself")
        num_out = self.num_frames(wavs.shape[1])
        wavs = wavs * valid_sample_mask(wavs, wav_lengths)
        if self.whisper_mode == "pad30":
            padded = nn.functional.pad(wavs, (0, self.context_samples - wavs.shape[1]))
            mel = log_mel_spectrogram(padded, self.mel_filters, self.n_fft, self.hop_length)
            out = self.encoder(mel, output_hidden_states=True)
            hidden = stack_hidden_states(out)[:, :, :num_out]
        else:
            hidden = self._encode_trimmed(self._trimmed_mel(wavs, wav_lengths), wav_lengths)
        return _zero_padded_frames(hidden, self.frame_lengths(wav_lengths))

    def _trimmed_mel(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """[B, mels, M] with M even; row b is zero past its own even mel length (as if run alone)."""
        mel_frames = self._mel_frames(wavs.shape[1])
        mel_frames += mel_frames % 2
        # Pad with zeros as the 30 s window does, so the last kept frames see the same silence (not
        # a reflection of the clip); the two extra frames hold any audio tail, so the per-utterance
        # max (the -8 floor) is taken over the same content as in pad30.
        width = mel_frames * self.hop_length + self.n_fft
        width = width.clamp(max=self.context_samples) if torch.is_tensor(width) else min(width, self.context_samples)
        padded = nn.functional.pad(wavs, (0, width - wavs.shape[1]))
        mel = log_mel_spectrogram(padded, self.mel_filters, self.n_fft, self.hop_length, max_frames=mel_frames + 2)
        mel = mel[:, :, :mel_frames]
        own_frames = self._mel_frames(wav_lengths.to(wavs.device))
        own_frames = own_frames + own_frames % 2
        keep = torch.arange(mel_frames, device=wavs.device)[None, :] < own_frames[:, None]
        return mel * keep[:, None, :]

    def _encode_trimmed(self, mel: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """WhisperEncoder.forward with positional embeddings sliced to the input length and a
        key-padding mask so that padding frames are never attended to."""
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(mel))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        x = nn.functional.dropout(x, p=enc.dropout, training=self.training)
        frame_lengths = self.frame_lengths(wav_lengths)
        mask = None  # no padding frames: exactly transformers' unmasked attention
        # a trace always takes the mask: it must serve batches with padding too
        if torch.jit.is_tracing() or bool((frame_lengths < x.shape[1]).any()):
            frame_lengths = frame_lengths.to(x.device)
            valid_keys = torch.arange(x.shape[1], device=x.device)[None, :] < frame_lengths[:, None]  # [B,T]
            mask = torch.zeros(valid_keys.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~valid_keys, torch.finfo(x.dtype).min)[:, None, None, :]  # [B,1,1,T]
            mask = mask.expand(-1, 1, x.shape[1], -1)  # [B,1,T,T], transformers' additive 4-D layout
        states = [x]
        for layer in enc.layers:
            if not (self.training and enc.layerdrop > 0.0 and torch.rand([]) < enc.layerdrop):
                x = layer(x, mask)
            states.append(x)
        states[-1] = enc.layer_norm(x)  # an identity when truncated (truncate_encoder)
        return torch.stack(states, dim=0)


# -- loading ---------------------------------------------------------------------------------------
def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(constants.HF_HUB_OFFLINE)


def _hub_folder(repo_id: str) -> Path:
    """The local snapshot folder of a hub model (cache first; network only when not offline)."""
    from huggingface_hub import snapshot_download

    offline = _hub_offline()
    how = (f"Download it on a machine with network (`huggingface-cli download {repo_id}`), copy the folder here "
           f"and pass it: load_upstream('hf:/path/to/folder').")
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"],
                                        local_files_only=offline, etag_timeout=10))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "pytorch_model*.bin"],
                                            local_files_only=offline, etag_timeout=10))
    except Exception as exc:  # any hub failure (offline, not cached, no route, unknown repo) means the same to the user
        state = "the hub is set offline (HF_HUB_OFFLINE)" if offline else "the hub could not be reached"
        raise UpstreamError(
            f"hf:{repo_id}: not a local folder, not in the local Hugging Face cache, and {state}. {how} "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return folder


def resolve_folder(path_or_hub_id: str) -> Path:
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UpstreamError(f"hf:{path_or_hub_id} is a file; pass the checkpoint folder (config.json + weights)")
    if not _HUB_ID.match(path_or_hub_id) or path_or_hub_id.startswith((".", "~")):
        raise UpstreamError(f"hf:{path_or_hub_id}: no such folder, and it is not a hub id of the form 'org/name'")
    return _hub_folder(path_or_hub_id)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UpstreamError(f"cannot read {path}: {exc}; the checkpoint folder is damaged") from exc


def _load_weights(model_class: type, folder: Path, spec: str) -> nn.Module:
    try:
        model, info = model_class.from_pretrained(
            folder, local_files_only=True, output_loading_info=True, dtype=torch.float32, trust_remote_code=False
        )
    except pickle.UnpicklingError as exc:  # torch's weights_only loader refused objects other than tensors
        pickles = ", ".join(sorted(p.name for p in folder.glob("*.bin"))) or "a pickle file"
        raise UpstreamError(f"{spec}: {folder} holds its weights as a pickle ({pickles}) with objects other than "
                            "tensors, which speechfuse does not unpickle (unpickling can run code); convert it to "
                            "model.safetensors where you trust the file (transformers: save_pretrained) and load "
                            "that folder") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise UpstreamError(f"{spec}: transformers could not load {model_class.__name__} weights from {folder}: "
                            f"{exc}") from exc
    missing = sorted(k for k in info["missing_keys"] if not k.endswith(_OPTIONAL_KEYS))
    if missing or info["mismatched_keys"]:
        raise UpstreamError(
            f"{spec}: the weights in {folder} do not fill a {model_class.__name__}: {len(missing)} missing "
            f"(e.g. {missing[:5]}), mismatched {sorted(info['mismatched_keys'])[:5]}. These would stay random; "
            "check that the folder is a complete checkpoint of this model type."
        )
    return model


def _ssl_model_class(model_type: str) -> type:
    import transformers as tf

    return {"wav2vec2": tf.Wav2Vec2Model, "hubert": tf.HubertModel, "wavlm": tf.WavLMModel,
            "data2vec-audio": tf.Data2VecAudioModel}[model_type]


def _load_whisper_encoder(folder: Path, config: dict[str, Any], spec: str) -> nn.Module:
    from transformers import WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if "WhisperEncoder" in (config.get("architectures") or []):
        return _load_weights(WhisperEncoder, folder, spec)
    # WhisperModel also takes WhisperForConditionalGeneration checkpoints ("model." prefix);
    # the decoder is dropped right away.
    return _load_weights(WhisperModel, folder, spec).get_encoder()


def hf_upstream_class(model_type: Any, spec: str, config_path: Path) -> type[Upstream]:
    """The Upstream class of a checkpoint's config.json `model_type` (UpstreamError for another model)."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UpstreamError(f"{spec}: model_type {model_type!r} in {config_path} is not a supported speech model. "
                            f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return HFWhisperUpstream if model_type == "whisper" else HFSSLUpstream


def _local_config_json(path_or_hub_id: str) -> Path | None:
    """config.json of a local checkpoint folder or of a hub model already in the local cache; None when
    neither (never the network)."""
    folder = Path(path_or_hub_id).expanduser()
    if folder.is_dir():
        return folder / "config.json" if (folder / "config.json").is_file() else None
    if not _HUB_ID.match(path_or_hub_id) or path_or_hub_id.startswith((".", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path_or_hub_id, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def hf_options(path_or_hub_id: str) -> type[HFCheckpointOptions]:
    """The Options model of the `hf:` checkpoint: its family's (read from config.json, no weights loaded),
    or HFOptions (every family's options) while the checkpoint is not local or cached."""
    config_path = _local_config_json(path_or_hub_id)
    if config_path is None:
        return HFOptions
    model_type = _read_json(config_path).get("model_type")
    return hf_upstream_class(model_type, f"hf:{path_or_hub_id}", config_path).Options


def load_hf_upstream(path_or_hub_id: str, whisper_mode: str = "trim", trainable: bool = False,
                     max_seconds: float | None = None, max_layers: int | None = None, **options: Any) -> Upstream:
    """Load a transformers speech checkpoint (folder or hub id) as an Upstream.

    whisper_mode ("trim" | "pad30") applies to Whisper checkpoints only; see HFWhisperUpstream.
    max_seconds: the longest clip accepted; None: the family's default (SSL_MAX_SECONDS = 60 s for
    wav2vec2-style models, the 30 s window for Whisper, which can only be lowered).
    max_layers: keep only the first k hidden states (layer 0 = the conv / input embedding) and never
    run the layers above; None: all of them.
    """
    if options:
        raise ConfigError(f"hf:{path_or_hub_id}: unknown option(s) {sorted(options)}; "
                          "hf upstreams take whisper_mode, trainable, max_seconds and max_layers")
    if whisper_mode not in WHISPER_MODES:
        raise ConfigError(f"hf:{path_or_hub_id}: whisper_mode must be one of {WHISPER_MODES}, got {whisper_mode!r}")
    spec = f"hf:{path_or_hub_id}"
    positive_seconds(max_seconds, "max_seconds", spec)  # fail before loading any weights
    folder = resolve_folder(path_or_hub_id)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UpstreamError(f"{spec}: {folder} has no config.json; pass a transformers checkpoint folder "
                            "(config.json + model.safetensors, as written by save_pretrained)")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    family = hf_upstream_class(model_type, spec, config_path)
    if family is HFSSLUpstream and whisper_mode != "trim":
        raise ConfigError(f"{spec}: option whisper_mode applies to Whisper checkpoints only, and this is a "
                          f"{model_type} checkpoint; remove it")
    preprocessor_path = folder / "preprocessor_config.json"
    preprocessor = _read_json(preprocessor_path) if preprocessor_path.is_file() else {}
    if family is HFWhisperUpstream:
        encoder = _load_whisper_encoder(folder, config, spec)
        return HFWhisperUpstream(encoder, spec, preprocessor, whisper_mode=whisper_mode, trainable=trainable,
                                 max_seconds=max_seconds, max_layers=max_layers)
    model = _load_weights(_ssl_model_class(model_type), folder, spec)
    return HFSSLUpstream(model, spec, do_normalize=preprocessor.get("do_normalize", True),
                         sample_rate=preprocessor.get("sampling_rate", 16000), trainable=trainable,
                         max_seconds=max_seconds, max_layers=max_layers)
