"""Clips longer than an upstream's single-pass limit run in overlapping windows (Upstream._hidden_long),
stitched to the whole clip's exact frame count; training may crop them (train.crop_seconds).

Tiny random HF models with a small max_seconds, so that a few seconds of audio exceed the limit.
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

import speechfuse as sf
from speechfuse.data.dataset import AudioItem
from speechfuse.data.loader import _Collate, crop_states
from speechfuse.data.manifest import Utterance
from speechfuse.fusion.hidden import HiddenStates

from helpers import make_fsdd, run_config, save_tiny_model

FAMILIES = ["hubert", "data2vec-audio", "whisper"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("long_clip_models")
    return {family: save_tiny_model(family, root / family) for family in FAMILIES}


def noise(num_samples: int, seed: int) -> torch.Tensor:
    return torch.randn(num_samples, generator=torch.Generator().manual_seed(seed)) * 0.1


def padded(*clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in clips])
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        wavs[i, :len(c)] = c
    return wavs, lengths


@pytest.mark.parametrize("family", FAMILIES)
def test_windows_tile_the_clip_within_the_limit(family, folders):
    upstream = sf.load_upstream("hf:" + folders[family], max_seconds=1)
    for num_samples in (16000 + 700, 16000 * 3 + 17, 16000 * 7 - 5):
        windows = upstream.long_clip_windows(num_samples)
        assert len(windows) > 1
        kept = 0
        for w in windows:
            assert w.end - w.start <= upstream.max_samples and 0 <= w.start and w.end <= num_samples
            assert upstream.num_frames(w.end - w.start) == w.frames == upstream.window_frames()
            assert w.frame == kept and w.keep > 0 and w.skip + w.keep <= w.frames
            kept += w.keep
        assert kept == upstream.num_frames(num_samples)


def test_a_limit_shorter_than_one_frame_is_a_clear_error(folders):
    from speechfuse.errors import ConfigError

    tiny = sf.load_upstream("hf:" + folders["hubert"], max_seconds=0.001)  # 16 samples, under the 40-sample field
    with pytest.raises(ConfigError, match="max_seconds=0.001 s is too short for one frame"):
        tiny(noise(1000, 4)[None], torch.tensor([1000]))


@pytest.mark.parametrize("family", FAMILIES)
def test_long_clip_gives_exact_frames_and_short_rows_are_unchanged(family, folders):
    """A batch of a long clip (over max_seconds = 1 s) and a short one: the whole clip's frame count and
    lengths; the short row equals running it without any limit; each window's kept frames are exactly
    that window run on its own, in their place."""
    limited = sf.load_upstream("hf:" + folders[family], max_seconds=1)
    unlimited = sf.load_upstream("hf:" + folders[family])
    long_clip, short_clip = noise(16000 * 3 + 123, 0), noise(11000, 1)
    out = limited(*padded(long_clip, short_clip))
    total = limited.num_frames(len(long_clip))
    assert out.hidden.shape[:3] == (limited.num_layers, 2, total)
    assert out.lengths.tolist() == [total, limited.num_frames(len(short_clip))]
    short_alone = unlimited(short_clip[None], torch.tensor([len(short_clip)]))
    n = out.lengths[1]
    assert torch.equal(out.hidden[:, 1, :n], short_alone.hidden[:, 0, :n])
    assert not out.hidden[:, 1, n:].any()  # padding frames stay zero
    with torch.no_grad():
        clip = limited._long_clip_input(long_clip[None], torch.tensor([len(long_clip)]))
        for w in limited.long_clip_windows(len(long_clip)):
            alone = limited._window_hidden(clip[:, w.start:w.end], torch.tensor([w.end - w.start]))
            assert torch.equal(out.hidden[:, 0, w.frame:w.frame + w.keep], alone[:, 0, w.skip:w.skip + w.keep])
    # a clip within the limit takes no windows: identical to the unlimited upstream
    inside = noise(15000, 2)[None], torch.tensor([15000])
    assert torch.equal(limited(*inside).hidden, unlimited(*inside).hidden)


@pytest.mark.parametrize("family", ["hubert", "whisper"])
def test_a_limit_other_than_the_default_is_part_of_the_cache_key(family, folders):
    """Long clips' features depend on the window size, so a non-default max_seconds changes the cache key;
    the default leaves the key as it was before windows existed."""
    default = sf.load_upstream("hf:" + folders[family])
    assert "max_samples" not in default.options()
    assert sf.load_upstream("hf:" + folders[family], max_seconds=1).options()["max_samples"] == 16000
    assert sf.load_upstream("hf:" + folders[family], max_seconds=1).identity() != default.identity()


@pytest.mark.parametrize("family", ["hubert", "data2vec-audio"])
def test_ssl_windows_stay_close_to_one_pass(family, folders):
    """Windows see less attention context than one pass over the whole clip; with the seams discarded
    the stitched states stay close (tiny random models; benchmarks/long_clip_stitching.py measures the
    real whisper-tiny.en)."""
    windowed = sf.load_upstream("hf:" + folders[family], max_seconds=1)
    whole = sf.load_upstream("hf:" + folders[family])
    clip = noise(16000 * 3, 3)[None], torch.tensor([16000 * 3])
    a, b = windowed(*clip).hidden, whole(*clip).hidden
    relative = ((a - b).norm() / b.norm()).item()
    assert 0 < relative < 0.05, relative


def test_training_crop_cuts_audio_and_cached_states_to_a_random_span():
    class NoTargets:
        def encode(self, utts):
            return None

    wav = torch.arange(16000 * 5, dtype=torch.float32)
    items = [(AudioItem(Utterance("long", "x.wav", duration=5.0), wav), 2, True),
             (AudioItem(Utterance("short", "y.wav", duration=1.0), wav[:16000]), 2, True)]
    batch = _Collate(NoTargets(), crop_seconds=2.0, seed=0)(items)
    assert batch.wav_lengths.tolist() == [32000, 16000]
    start = int(batch.wavs[0, 0])
    assert 0 <= start <= 48000 and torch.equal(batch.wavs[0], wav[start:start + 32000])  # one contiguous span
    assert torch.equal(batch.wavs[1, :16000], wav[:16000])  # within the crop: whole
    starts = {int(_Collate(NoTargets(), crop_seconds=2.0, seed=s)(items).wavs[0, 0]) for s in range(5)}
    assert len(starts) > 1  # the span is drawn, not fixed

    frames = torch.arange(250, dtype=torch.float32)[None, None, :, None].expand(2, 2, 250, 3).clone()
    states = HiddenStates(frames, torch.tensor([250, 40]), frame_rate=50.0)
    cropped = crop_states(states, [1.5, 0.0], 2.0)
    assert cropped.lengths.tolist() == [100, 40]
    assert torch.equal(cropped.hidden[0, 0, :, 0], torch.arange(75, 175, dtype=torch.float32))
    assert torch.equal(cropped.hidden[1, 1, :40, 0], torch.arange(40, dtype=torch.float32))


def three_minute_clip(path, digit: int) -> str:
    """180 s of real FSDD speech of one digit (its recordings, repeated), written at 8 kHz."""
    from speechfuse.data.adapters import bundled_fsdd_dir

    files = sorted((bundled_fsdd_dir() / "recordings").glob(f"{digit}_*.flac"))
    pieces, total = [], 0
    while total < 180 * 8000:
        wav, _ = soundfile.read(files[len(pieces) % len(files)], dtype="float32")
        pieces.append(wav)
        total += len(wav)
    soundfile.write(path, np.concatenate(pieces)[:180 * 8000], 8000)
    return str(path)


@pytest.mark.slow
def test_three_minute_clip_trains_cropped_evaluates_and_predicts(tmp_path):
    """A windowed HF SSL model (10 s limit) and Whisper (its 30 s window) fused: a 3-minute clip in the
    training set (cropped to 2 s, from the feature cache), in the test set (scored whole) and predicted whole
    (upstreams run directly)."""
    from speechfuse.config import config_from_dict
    from speechfuse.data import load_manifest, write_manifest
    from speechfuse.serving.evaluate import evaluate
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path, speakers=("george",))
    long_train = three_minute_clip(tmp_path / "long0.wav", 0)
    long_test = three_minute_clip(tmp_path / "long1.wav", 1)
    for split, path, label in (("train", long_train, "0"), ("test", long_test, "1")):
        utts = load_manifest(manifests[split])
        write_manifest([*utts, Utterance(f"long-{split}", path, text=label, label=label)], manifests[split])
    hubert = save_tiny_model("hubert", tmp_path / "hubert", conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8))  # 50 Hz
    whisper = save_tiny_model("whisper", tmp_path / "whisper")
    upstreams = [{"spec": f"hf:{hubert}", "options": {"max_seconds": 10}}, {"spec": f"hf:{whisper}"}]
    config = run_config(manifests, upstreams, downstream={"hidden_dim": 16}, max_steps=4, crop_seconds=2.0,
                        batch_seconds=4.0, importance=False)
    config["cache"] = str(tmp_path / "cache")  # whole clips extracted (in windows), training crops the cached states
    metrics = train(config_from_dict(config), tmp_path / "run")
    again = evaluate(tmp_path / "run", split="test")["test"]  # the long clip scored whole, as in training's test
    assert set(again) == set(metrics["test"])
    for key, value in metrics["test"].items():
        assert again[key] == pytest.approx(value, abs=1e-6), key
    model = sf.load_model(tmp_path / "run")
    (prediction,) = model.predict([long_test])
    assert prediction.label in ("0", "1") and abs(sum(prediction.probabilities.values()) - 1) < 1e-5


def test_bundled_whisper_tiny_en_runs_a_35_second_clip_in_30_second_windows():
    """The real whisper-tiny.en (CTranslate2 weights converted to transformers): 35 s of speech, over its
    30 s window, gives the whole clip's 1,750 frames, finite, its first 25 s equal to the first window alone."""
    from speechfuse.data.adapters import bundled_fsdd_dir

    upstream = sf.load_upstream("whisper-tiny.en")
    files = sorted((bundled_fsdd_dir() / "recordings").glob("*.flac"))
    pieces, total = [], 0
    while total < 35 * 8000:
        wav, _ = soundfile.read(files[len(pieces) % len(files)], dtype="float32")
        pieces.append(wav)
        total += len(wav)
    clip = torch.from_numpy(np.repeat(np.concatenate(pieces)[:35 * 8000], 2))  # 8 -> 16 kHz, enough for a count
    out = upstream(clip[None], torch.tensor([len(clip)]))
    assert out.hidden.shape[2] == out.lengths.item() == 1750 and torch.isfinite(out.hidden).all()
    windows = upstream.long_clip_windows(len(clip))
    assert [(w.start, w.end) for w in windows] == [(0, 480000), (80000, 560000)]
    first = upstream(clip[None, :480000], torch.tensor([480000])).hidden
    keep = windows[0].keep  # 30 s less the 5 s seam: 1,250 frames
    assert keep == 1250 and torch.equal(out.hidden[:, :, :keep], first[:, :, :keep])
