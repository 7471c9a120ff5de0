"""Shared fixtures: tiny random transformers models saved into temp folders (never the network)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# real speech that ships with the checkout, so a fresh clone tests on its own:
# the FSDD FLAC subset inside the package (takes 0-24, 8 kHz) and five LibriVox sentences (tests/data)
FSDD = Path(__file__).resolve().parents[1] / "src" / "speechfuse" / "assets" / "fsdd" / "recordings"
LIBRIVOX = Path(__file__).resolve().parent / "data" / "librivox"


@pytest.fixture(scope="session", autouse=True)
def session_speechfuse_home(tmp_path_factory):
    """The tests never write into the real ~/.cache/speechfuse: module fixtures get one home for the session..."""
    before = os.environ.get("SPEECHFUSE_HOME")
    os.environ["SPEECHFUSE_HOME"] = str(tmp_path_factory.mktemp("session_speechfuse_home"))
    yield
    if before is None:
        os.environ.pop("SPEECHFUSE_HOME", None)
    else:
        os.environ["SPEECHFUSE_HOME"] = before


@pytest.fixture(autouse=True)
def speechfuse_home(tmp_path_factory, monkeypatch) -> Path:
    """...and every test its own (so no test finds features another one cached): the `cache: auto` folder is
    speechfuse_home / "cache"."""
    home = tmp_path_factory.mktemp("speechfuse_home")
    monkeypatch.setenv("SPEECHFUSE_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every model in the suite is small: on a shared CPU, intra-op thread hand-offs cost more than the
    maths (measured 5-20x slower with 2 threads on this 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

FAMILIES = ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"]

_CNN = dict(
    conv_dim=(32, 32, 32),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def tiny_config(family: str, **overrides):
    """A tiny random config of one family: 2-3 layers, hidden 32."""
    import transformers as tf

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if family == "wav2vec2":
        cfg = tf.Wav2Vec2Config(**common, **_CNN, feat_extract_norm="layer", do_stable_layer_norm=True)
    elif family == "hubert":
        cfg = tf.HubertConfig(**common, **_CNN, feat_extract_norm="layer", do_stable_layer_norm=True)
    elif family == "wavlm":
        cfg = tf.WavLMConfig(**common, **_CNN, feat_extract_norm="layer", do_stable_layer_norm=True,
                             num_buckets=16, max_bucket_distance=64)
    elif family == "data2vec-audio":
        cfg = tf.Data2VecAudioConfig(**common, **{**_CNN, "num_conv_pos_embeddings": 5}, conv_pos_kernel_size=5)
    elif family == "whisper":
        cfg = tf.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                               decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
                               num_mel_bins=80, max_source_positions=1500, vocab_size=64,
                               pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def save_tiny_model(family: str, folder, seed: int = 0, **overrides) -> str:
    """Save a tiny random model (+ feature extractor) of `family` into `folder`; return the path."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(family, **overrides)
    if family == "whisper":
        model = tf.WhisperModel(cfg)
        fe = tf.WhisperFeatureExtractor(feature_size=80)
    else:
        cls = {"wav2vec2": tf.Wav2Vec2Model, "hubert": tf.HubertModel, "wavlm": tf.WavLMModel,
               "data2vec-audio": tf.Data2VecAudioModel}[family]
        model = cls(cfg)
        fe = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                          do_normalize=True, return_attention_mask=True)
    model.eval()
    model.save_pretrained(folder)
    fe.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Factory fixture: tiny_model_dir("hubert") -> path of a saved tiny model."""

    def make(family: str, **overrides) -> str:
        return save_tiny_model(family, tmp_path / family, **overrides)

    return make
