"""Character CTC ASR (the SUPERB ASR recipe: projection, BiLSTM, linear to characters; or, with
`head: transformer`, ML-SUPERB's ESPnet encoder: projection, conv2d2 subsampling, pre-norm Transformer blocks).

Vocabulary: index 0 is the CTC blank, index 1 `<unk>`, then every character (Unicode code point) of the
normalised training texts in sorted order, in any script; the word separator is the plain space " ".
A character unseen in training maps to `<unk>` with a warning; `<unk>` decodes to nothing.

Text normalisation (training targets, references and predictions alike), in this order:
1. Unicode NFC, so a composed "é" and "e" + combining acute are the same one character;
2. `case: lower` (default) lower-cases with Python's str.lower, which changes only letters that have case
   (Latin, Greek, Cyrillic, Armenian, ...; a final capital sigma becomes "ς"); scripts without case
   (CJK, Arabic, Devanagari, Thai, ...) are untouched. `case: keep` keeps case. NFC again after it;
3. `punctuation: keep` (default) keeps every character; `strip` deletes every character of Unicode
   general category P* (.,!?;:'"-()[]«»¿¡、。 ...) without putting a space in its place ("don't" -> "dont");
   `strip_ascii` deletes only Python's string.punctuation (the 32 ASCII marks), as ESPnet's ML-SUPERB data
   prep does (`process_text`), so "¿", "«", "。" stay;
4. whitespace runs become one space; leading and trailing space is dropped.
WER and CER are fractions (0.25 = 25 %), computed with jiwer over the corpus.
"""
from __future__ import annotations

import math
import string
import unicodedata
import warnings
from typing import Any, Literal, Optional

import jiwer
import torch
import torch.nn.functional as F
from torch import nn
from pydantic import Field, ValidationInfo, field_validator
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechfuse.data.manifest import Utterance
from speechfuse.errors import ConfigError, ShapeError
from speechfuse.tasks.predictions import Prediction, Transcription
from speechfuse.tasks import Task, TaskOptions, register_task

BLANK, UNK = "<blank>", "<unk>"


def edit_counts(refs: list[str], hyps: list[str], process: Any) -> tuple[list[int], list[int]]:
    """(errors, reference tokens) per sentence, from jiwer's `process_words` or `process_characters`."""
    errors, totals = [], []
    for ref, hyp in zip(refs, hyps):
        out = process(ref, hyp)
        errors.append(out.substitutions + out.deletions + out.insertions)
        totals.append(out.hits + out.substitutions + out.deletions)
    return errors, totals


_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str, case: str = "lower", punctuation: str = "keep") -> str:
    """NFC, lower-case cased letters (case="lower"), strip Unicode punctuation (punctuation="strip"),
    collapse whitespace (see the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    if case == "lower":
        text = unicodedata.normalize("NFC", text.lower())
    if punctuation == "strip":
        text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    elif punctuation == "strip_ascii":
        text = text.translate(_ASCII_PUNCTUATION)
    return " ".join(text.split())


def check_lengths(lengths: torch.Tensor, batch: int, frames: int, who: str) -> None:
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ShapeError(f"{who}: lengths must be [B] with B={batch}, got shape {tuple(lengths.shape)}")
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > frames):
        raise ShapeError(f"{who}: lengths must lie in 1..{frames} (the padded frame count), got "
                         f"{lengths.tolist()}")


def utterance_mvn(features: torch.Tensor, lengths: torch.Tensor, norm_vars: bool = False,
                  eps: float = 1e-20) -> torch.Tensor:
    """Per-utterance mean (and variance) normalisation over each utterance's valid frames, padded frames set to
    0: ESPnet's `normalize: utterance_mvn` (UtteranceMVN; by default means only)."""
    valid = (torch.arange(features.shape[1], device=features.device)[None, :] < lengths.to(features.device)[:, None])
    valid = valid.unsqueeze(-1).to(features.dtype)
    count = valid.sum(1, keepdim=True)
    x = (features - (features * valid).sum(1, keepdim=True) / count) * valid
    if norm_vars:
        x = x / (x.pow(2).sum(1, keepdim=True) / count).clamp(min=eps).sqrt()
    return x


class AsrHead(nn.Module):
    """features [B,T,D], lengths [B] -> logits [B,T,V], lengths [B]. Padded frames never reach valid ones."""

    def __init__(self, input_dim: int, vocab_size: int, proj_dim: int | None = 1024, hidden_size: int = 1024,
                 num_layers: int = 2, bidirectional: bool = True, dropout: float = 0.2, normalize: str = "none",
                 normalize_vars: bool = False) -> None:
        super().__init__()
        self.normalize, self.normalize_vars = normalize, normalize_vars
        self.proj = nn.Linear(input_dim, proj_dim) if proj_dim else nn.Identity()
        rnn_in = proj_dim or input_dim
        self.rnn = (nn.LSTM(rnn_in, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                            batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
                    if num_layers > 0 else None)
        self.dropout = nn.Dropout(dropout)
        out_in = hidden_size * (2 if bidirectional else 1) if num_layers > 0 else rnn_in
        self.out = nn.Linear(out_in, vocab_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 3:
            raise ShapeError(f"AsrHead: features must be [B,T,D], got shape {tuple(features.shape)}")
        check_lengths(lengths, features.shape[0], features.shape[1], "AsrHead")
        if self.normalize == "utterance_mvn":
            features = utterance_mvn(features, lengths, self.normalize_vars)
        x = self.proj(features)
        if self.rnn is not None:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=features.shape[1])
        return self.out(self.dropout(x)), lengths


def sinusoid_positions(frames: int, dim: int, device: torch.device) -> torch.Tensor:
    """[frames, dim] absolute sinusoidal position encoding (sin on even, cos on odd channels)."""
    position = torch.arange(frames, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(frames, dim, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table


class PreNormBlock(nn.Module):
    """One pre-norm Transformer block (ESPnet normalize_before: true): x + attention(LayerNorm(x)), then
    x + feed-forward(LayerNorm(x)). Attention ignores the keys where `padded` [B,T] is True. Written out rather
    than nn.MultiheadAttention, whose traced reshapes fix the batch size in an ONNX export."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm, self.ff_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.attention_norm(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, heads, T, T]
        weights = self.dropout(scores.masked_fill(padded[:, None, None, :], float("-inf")).softmax(-1))
        x = x + self.dropout(self.attention_out((weights @ v).transpose(1, 2).flatten(2)))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class TransformerCtcHead(nn.Module):
    """ML-SUPERB's ESPnet CTC encoder: features [B,T,D], lengths [B] -> logits [B,T',V], lengths [B].

    Linear projection (ESPnet's `preencoder: linear`), then `subsample: conv2d2` (two 3x3 convolutions over
    (time, feature), the first with stride 2: T' = (T - 1) // 2 - 2, as ESPnet's Conv2dSubsampling2) or a
    linear layer (`none`, T' = T), scaled by sqrt(attention_dim) plus sinusoidal positions, then pre-norm
    Transformer blocks whose self-attention masks padded frames, a final LayerNorm and a linear layer to the
    vocabulary. A valid output frame depends on valid input frames only."""

    def __init__(self, input_dim: int, vocab_size: int, proj_dim: int | None = 80, subsample: str = "conv2d2",
                 attention_dim: int = 256, attention_heads: int = 8, ff_dim: int = 1024, transformer_layers: int = 2,
                 dropout: float = 0.1, normalize: str = "none", normalize_vars: bool = False) -> None:
        super().__init__()
        self.normalize, self.normalize_vars = normalize, normalize_vars
        self.proj = nn.Linear(input_dim, proj_dim) if proj_dim else nn.Identity()
        in_dim = proj_dim or input_dim
        self.subsample = subsample
        if subsample == "conv2d2":
            self.conv = nn.Sequential(nn.Conv2d(1, attention_dim, 3, stride=(2, 2)), nn.ReLU(),
                                      nn.Conv2d(attention_dim, attention_dim, 3, stride=(1, 1)), nn.ReLU())
            conv_features = ((in_dim - 1) // 2 - 2)
            if conv_features < 1:
                raise ConfigError(f"transformer head: subsample conv2d2 needs at least 7 input features, got "
                                  f"{in_dim}; raise downstream.proj_dim")
            self.embed = nn.Linear(attention_dim * conv_features, attention_dim)
        else:
            self.embed = nn.Linear(in_dim, attention_dim)
        self.position_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(PreNormBlock(attention_dim, attention_heads, ff_dim, dropout)
                                    for _ in range(transformer_layers))
        self.norm = nn.LayerNorm(attention_dim)
        self.out = nn.Linear(attention_dim, vocab_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths - 1, 2, rounding_mode="floor") - 2 if self.subsample == "conv2d2" else lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 3:
            raise ShapeError(f"TransformerCtcHead: features must be [B,T,D], got shape {tuple(features.shape)}")
        check_lengths(lengths, features.shape[0], features.shape[1], "TransformerCtcHead")
        out_lengths = self.output_lengths(lengths)
        if int(out_lengths.min()) < 1:
            raise ShapeError(f"TransformerCtcHead: conv2d2 subsampling needs at least 7 frames per utterance, got "
                             f"lengths {lengths.tolist()}; use subsample: none or a higher frame rate")
        if self.normalize == "utterance_mvn":
            features = utterance_mvn(features, lengths, self.normalize_vars)
        x = self.proj(features)
        if self.subsample == "conv2d2":
            x = self.conv(x.unsqueeze(1))  # [B, C, T', F']
            x = x.transpose(1, 2).flatten(2)  # [B, T', C*F']
        x = self.embed(x)
        x = x * math.sqrt(x.shape[-1]) + sinusoid_positions(x.shape[1], x.shape[-1], x.device).to(x.dtype)
        padded = torch.arange(x.shape[1], device=x.device)[None, :] >= out_lengths.to(x.device)[:, None]
        x = self.position_dropout(x)
        for block in self.blocks:
            x = block(x, padded)
        return self.out(self.norm(x)), out_lengths


class AsrOptions(TaskOptions):
    """The head's options (the config's `downstream` section); defaults follow SUPERB's ASR head."""

    proj_dim: Optional[int] = Field(1024, ge=0)
    """Linear projection before the LSTM (or the Transformer's subsampling); 0 or null: none."""
    hidden_size: int = Field(1024, ge=1)
    num_layers: int = Field(2, ge=0)
    """LSTM layers; 0: a linear head on the (projected) features."""
    bidirectional: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)
    case: Literal["lower", "keep"] = "lower"
    """lower: lower-case the letters that have case (other scripts are untouched); keep: keep case."""
    punctuation: Literal["keep", "strip", "strip_ascii"] = "keep"
    """keep: punctuation characters are vocabulary entries; strip: delete Unicode category P* characters;
    strip_ascii: delete only the ASCII marks of Python's string.punctuation (ESPnet's ML-SUPERB data prep)."""
    head: Literal["bilstm", "transformer"] = "bilstm"
    """bilstm: SUPERB's head (hidden_size, num_layers, bidirectional); transformer: ML-SUPERB's ESPnet encoder
    (subsample, attention_dim, attention_heads, ff_dim, transformer_layers). Both use proj_dim and dropout."""
    subsample: Literal["conv2d2", "none"] = "conv2d2"
    """transformer: conv2d2 halves the frame rate (ESPnet input_layer conv2d2); none keeps it."""
    attention_dim: int = Field(256, ge=1)
    attention_heads: int = Field(8, ge=1)
    ff_dim: int = Field(1024, ge=1)
    transformer_layers: int = Field(2, ge=1)
    normalize: Literal["none", "utterance_mvn"] = "none"
    """utterance_mvn: subtract each utterance's mean over its frames from the fused features before the head
    (ESPnet's `normalize: utterance_mvn`, after SpecAugment as there); none: as they are."""
    normalize_vars: bool = False
    """utterance_mvn also divides by each utterance's standard deviation (ESPnet's norm_vars, off by default)."""
    token_type: Literal["char", "word"] = "char"
    """char: one output per character (the space included); word: one per whitespace-separated word of the
    training texts (ESPnet's token_type word, which ML-SUPERB uses for cmn and jpn), scored by WER."""
    ctc_normalize: Literal["length", "batch"] = "length"
    """length: each utterance's CTC loss divided by its target length, then the batch mean (torch's
    reduction="mean"); batch: summed over the batch and divided by the batch size (ESPnet's CTC)."""
    ctc_too_short: Literal["error", "zero"] = "error"
    """A training or dev utterance with fewer output frames than CTC needs for its transcript: error stops with
    a message naming it; zero gives it zero loss and gradient and goes on (ESPnet's CTC, zero_infinity=True)."""

    @field_validator("attention_heads")
    @classmethod
    def _heads_divide_attention_dim(cls, heads: int, info: ValidationInfo) -> int:
        dim = info.data.get("attention_dim")
        if info.data.get("head") == "transformer" and dim and dim % heads:
            raise ValueError(f"attention_dim ({dim}) must be a multiple of attention_heads ({heads})")
        return heads


HEAD_OPTIONS = ("proj_dim", "hidden_size", "num_layers", "bidirectional", "dropout", "normalize", "normalize_vars")
TRANSFORMER_OPTIONS = ("proj_dim", "subsample", "attention_dim", "attention_heads", "ff_dim", "transformer_layers",
                       "dropout", "normalize", "normalize_vars")


@register_task
class AsrTask(Task):
    name = "asr"
    hub_pipeline_tag = "automatic-speech-recognition"  # the model card's pipeline_tag
    target_field = "text"
    main_metric = "wer"
    higher_is_better = False
    utterance_metric = "wer"
    early_signal = "metric_then_loss"  # every trial's dev WER is 1.0 on the blank plateau: the loss ranks them there
    Options = AsrOptions
    prediction_type = Transcription
    prediction_field = "text"
    output_axes = {"out": {0: "batch", 1: "frames"}, "out_lengths": {0: "batch"}}  # CTC logits [B,T,V]
    paper_columns = {"librispeech": ("LibriSpeech WER", "test WER (word edits / reference words over the utterances), "
                                                       "mean over seeds")}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.vocab: list[str] = []

    def predictions(self, out: torch.Tensor, out_lengths: torch.Tensor,
                    clips: list[dict[str, Any]]) -> list[Prediction]:
        return [Transcription(**clip, text=text) for clip, text in zip(clips, self.predict(out, out_lengths))]

    def describe(self, target: Optional[str] = None) -> str:
        return f"character CTC speech recognition ({len(self.vocab)} symbols)"

    @property
    def is_fitted(self) -> bool:
        return bool(self.vocab)

    def tokens(self, text: str) -> list[str]:
        """A normalised text's output units: its characters, or its words (`token_type: word`)."""
        return text.split() if self.options.get("token_type") == "word" else list(text)

    def join(self, tokens: list[str]) -> str:
        """Decoded units back to text, whitespace collapsed."""
        return " ".join((" " if self.options.get("token_type") == "word" else "").join(tokens).split())

    def fit(self, train_utts: list[Utterance]) -> "AsrTask":
        units = {c for u in train_utts for c in self.tokens(self.normalize(self._target_of(u)))}
        if not units:
            raise ConfigError("asr task: the training texts contain no characters; check the 'text' column")
        self.vocab = [BLANK, UNK, *sorted(units)]
        return self

    def encode(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets [B,U] int64 padded with 0, target_lengths [B] int64)."""
        self._require_fitted("encode")
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown: dict[str, set[str]] = {}
        sequences = []
        for u in utts:
            units = self.tokens(self.normalize(self._target_of(u)))
            for c in units:
                if c not in index:
                    unknown.setdefault(c, set()).add(u.id)
            sequences.append([index.get(c, 1) for c in units])
        if unknown:
            detail = "; ".join(f"{c!r} in {sorted(ids)[:3]}" for c, ids in sorted(unknown.items()))
            kind = "words" if self.options.get("token_type") == "word" else "characters"
            warnings.warn(f"asr task: {kind} not in the training vocabulary map to <unk>: {detail}", stacklevel=2)
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
        targets = torch.zeros(len(sequences), max([1, *(len(s) for s in sequences)]), dtype=torch.int64)
        for row, seq in enumerate(sequences):
            targets[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        return targets, lengths

    def build_head(self, input_dim: int) -> nn.Module:
        self._require_fitted("build_head")
        if self.options["head"] == "transformer":
            return TransformerCtcHead(input_dim, len(self.vocab), **{k: self.options[k] for k in TRANSFORMER_OPTIONS})
        return AsrHead(input_dim, len(self.vocab), **{k: self.options[k] for k in HEAD_OPTIONS})

    def loss(self, out: torch.Tensor, out_lengths: torch.Tensor,
             targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """CTC loss: each utterance's divided by its target length, then averaged; or (ctc_normalize: batch)
        summed over the batch and divided by the batch size."""
        labels, label_lengths = targets
        labels, label_lengths = labels.to(out.device), label_lengths.to(out.device)
        # CTC needs one frame per label plus one between repeated labels; say so instead of returning inf
        repeats = ((labels[:, 1:] == labels[:, :-1]) &
                   (torch.arange(1, labels.shape[1], device=out.device)[None, :] < label_lengths[:, None])).sum(1)
        needed = label_lengths + repeats
        short = (out_lengths.to(out.device) < needed).nonzero().flatten().tolist()
        zero = self.options.get("ctc_too_short") == "zero"
        if short and not zero:
            raise ShapeError(f"asr task: utterance(s) at batch position(s) {short} have fewer output frames "
                             f"({out_lengths[short].tolist()}) than CTC needs for their transcripts "
                             f"({needed[short].tolist()}); use a higher frame rate or drop those utterances")
        log_probs = out.float().log_softmax(-1).transpose(0, 1)  # [T,B,V]
        if self.options.get("ctc_normalize") == "batch":
            return F.ctc_loss(log_probs, labels, out_lengths, label_lengths, blank=0, reduction="sum",
                              zero_infinity=zero) / out.shape[0]
        return F.ctc_loss(log_probs, labels, out_lengths, label_lengths, blank=0, reduction="mean",
                          zero_infinity=zero)

    def predict(self, out: torch.Tensor, out_lengths: torch.Tensor) -> list[str]:
        """Greedy CTC: best class per frame, collapse repeats, drop blanks (and <unk>)."""
        self._require_fitted("predict")
        best = out.argmax(-1).cpu()
        texts = []
        for row, length in enumerate(out_lengths.cpu().tolist()):
            path = best[row, :length].tolist()
            ids = [t for i, t in enumerate(path) if (i == 0 or t != path[i - 1]) and t > 1]
            texts.append(self.join([self.vocab[t] for t in ids]))
        return texts

    def normalize(self, text: str) -> str:
        return normalize_text(text, self.options["case"], self.options["punctuation"])

    def references(self, utts: list[Utterance]) -> list[str]:
        return [self.normalize(self._target_of(u)) for u in utts]

    def metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        self._check_pairs(predictions, references)
        refs = [self.normalize(r) for r in references]
        empty = [i for i, r in enumerate(refs) if not r]
        if empty:
            raise ConfigError(f"asr metrics: reference(s) at position(s) {empty[:10]} are empty; WER is undefined "
                              "for them, remove those utterances from the evaluation set")
        hyps = [self.normalize(p) for p in predictions]
        return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}

    def utterance_errors(self, predictions: list[str], references: list[str]) -> tuple[list[int], list[int]]:
        """Word edit errors (substitutions + deletions + insertions) and reference words per utterance: their
        sums are jiwer's corpus WER numerator and denominator (it aligns each sentence on its own)."""
        self._check_pairs(predictions, references)
        return edit_counts([self.normalize(r) for r in references], [self.normalize(p) for p in predictions],
                           jiwer.process_words)

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "vocab": list(self.vocab)}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "AsrTask":
        task = cls(**state.get("options", {}))
        vocab = state.get("vocab")
        if not isinstance(vocab, list) or vocab[:2] != [BLANK, UNK]:
            raise ConfigError(f"asr task state: 'vocab' must be a list starting with {BLANK!r}, {UNK!r}; "
                              "the run folder's task.json is damaged")
        task.vocab = vocab
        return task
