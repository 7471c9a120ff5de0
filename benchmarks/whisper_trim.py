"""Whisper encoder: whisper_mode="trim" vs "pad30" on 1-3 s clips, measured side by side in one run.

Prints, per batch size: median wall time of each mode, the speed ratio pad30/trim, the max abs
difference of valid frames between the modes (last layer and any layer, with the pad30 output's max
abs value for scale), and how much batching changes a clip in trim mode (batched vs alone).

    python benchmarks/whisper_trim.py                       # tiny random whisper, d_model 384, 4 layers
    python benchmarks/whisper_trim.py --model whisper-tiny.en   # the bundled real tiny.en encoder
    python benchmarks/whisper_trim.py --model /path/to/hf/folder --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf_audio
import soxr
import torch

import speechfuse as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FSDD_DIR  # noqa: E402

LIBRIVOX = Path(__file__).resolve().parents[1] / "tests" / "data" / "librivox"
FSDD = FSDD_DIR


def tiny_random_whisper(folder: Path) -> str:
    """A random Whisper with tiny.en's encoder shape (d_model 384, 4 layers, 6 heads, FFN 1536)."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                           decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=1500, vocab_size=64, pad_token_id=1, bos_token_id=2,
                           eos_token_id=3, decoder_start_token_id=2)
    tf.WhisperModel(cfg).save_pretrained(folder)
    tf.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return str(folder)


def speech_clips(count: int, seed: int, audio_dir: Path = LIBRIVOX) -> tuple[list[torch.Tensor], str]:
    """`count` real-speech clips of 1-3 s at 16 kHz (16 kHz wav/flac in audio_dir, else FSDD digits)."""
    rng = np.random.default_rng(seed)
    sentences = sorted(audio_dir.glob("*.wav")) + sorted(audio_dir.glob("*.flac")) if audio_dir.is_dir() else []
    if sentences:
        source = f"16 kHz sentences from {audio_dir}"
        audio = [sf_audio.read(p, dtype="float32")[0] for p in sentences]
        clips = []
        for i in range(count):
            wav = audio[i % len(audio)]
            n = int(rng.uniform(1.0, 3.0) * 16000)
            start = int(rng.integers(0, max(1, len(wav) - n)))
            clips.append(torch.from_numpy(wav[start:start + n].copy()))
        return clips, source
    source = "FSDD digits resampled 8 -> 16 kHz, concatenated to 1-3 s"
    files = sorted(FSDD.glob("*.flac")) or sorted(FSDD.glob("*.wav"))
    clips = []
    for i in range(count):
        target = int(rng.uniform(1.0, 3.0) * 16000)
        pieces, total = [], 0
        while total < target:
            wav, rate = sf_audio.read(files[int(rng.integers(len(files)))], dtype="float32")
            wav = soxr.resample(wav, rate, 16000)
            pieces.append(wav)
            total += len(wav)
        clips.append(torch.from_numpy(np.concatenate(pieces)[:target].astype(np.float32)))
    return clips, source


def pad_batch(clips: list[torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in clips])
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        wavs[i, : len(c)] = c
    return wavs.to(device), lengths.to(device)


def timed(upstream: sf.Upstream, wavs: torch.Tensor, lengths: torch.Tensor, repeats: int, device: str):
    times, out = [], None
    for _ in range(repeats + 1):  # the first run warms up and is not counted
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = upstream(wavs, lengths)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), out


def valid_max_abs_diff(a: sf.HiddenStates, b: sf.HiddenStates, layer: int | None = None) -> float:
    worst = 0.0
    for i, n in enumerate(a.lengths.tolist()):
        x, y = a.hidden[:, i, :n], b.hidden[:, i, :n]
        if layer is not None:
            x, y = x[layer], y[layer]
        worst = max(worst, (x - y).abs().max().item())
    return worst


def valid_relative_diff(a: sf.HiddenStates, b: sf.HiddenStates) -> float:
    """Worst layer's ||a - b|| / ||b|| over all valid frames of the batch."""
    mask = b.padding_mask()  # [B,T]
    worst = 0.0
    for layer in range(b.num_layers):
        x, y = a.hidden[layer][mask], b.hidden[layer][mask]
        worst = max(worst, ((x - y).norm() / y.norm()).item())
    return worst


def valid_cosine(a: sf.HiddenStates, b: sf.HiddenStates) -> float:
    """Mean cosine similarity of valid last-layer frames."""
    mask = b.padding_mask()
    return torch.nn.functional.cosine_similarity(a.hidden[-1][mask], b.hidden[-1][mask], dim=-1).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default=None,
                        help="hf Whisper folder, or a registered name such as whisper-tiny.en "
                             "(default: a tiny random whisper with d_model 384 / 4 layers)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--audio-dir", type=Path, default=LIBRIVOX,
                        help="folder of 16 kHz speech wavs (default: the five LibriVox sentences in tests/data/librivox)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            spec, label = "hf:" + tiny_random_whisper(Path(tmp) / "whisper"), "tiny random whisper (384 x 4 layers)"
        elif Path(args.model).is_dir():
            spec, label = "hf:" + args.model, args.model
        else:
            spec, label = args.model, args.model
        trim = sf.load_upstream(spec, whisper_mode="trim").to(args.device)
        pad30 = sf.load_upstream(spec, whisper_mode="pad30").to(args.device)

        clips, source = speech_clips(max(args.batch_sizes), seed=0, audio_dir=args.audio_dir)
        print(f"model: {label}; device: {args.device}; threads: {args.threads}; audio: {source}")
        print(f"clip lengths (s): {[round(len(c) / 16000, 2) for c in clips]}")
        print("| batch | trim s/batch | pad30 s/batch | pad30/trim | max|diff| last layer | max|diff| any layer "
              "| max|pad30| | rel. diff (worst layer) | cosine last layer | trim batched vs alone max|diff| |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for batch_size in args.batch_sizes:
            wavs, lengths = pad_batch(clips[:batch_size], args.device)
            t_trim, out_trim = timed(trim, wavs, lengths, args.repeats, args.device)
            t_pad, out_pad = timed(pad30, wavs, lengths, args.repeats, args.device)
            last = valid_max_abs_diff(out_trim, out_pad, layer=-1)
            any_layer = valid_max_abs_diff(out_trim, out_pad)
            scale = out_pad.hidden.abs().max().item()
            batching = 0.0
            with torch.inference_mode():
                for i, clip in enumerate(clips[:batch_size]):
                    alone = trim(clip[None].to(args.device), torch.tensor([len(clip)], device=args.device))
                    n = int(alone.lengths[0])
                    batching = max(batching, (alone.hidden[:, 0, :n] - out_trim.hidden[:, i, :n]).abs().max().item())
            print(f"| {batch_size} | {t_trim:.4f} | {t_pad:.4f} | {t_pad / t_trim:.1f}x | {last:.3g} | "
                  f"{any_layer:.3g} | {scale:.3g} | {valid_relative_diff(out_trim, out_pad):.3g} | "
                  f"{valid_cosine(out_trim, out_pad):.4f} | {batching:.3g} |")


if __name__ == "__main__":
    main()
