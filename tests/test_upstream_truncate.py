"""max_layers=k: an upstream truncated to its first k hidden states, the stand-in for model size in
the scaling study and the way pruning stops an upstream early.

Checked on every transformers family (tiny random models with 3 layers, so 4 hidden states) and on the
three bundled real models, on real FSDD speech: the truncated output equals the full model's first k
hidden states bit for bit (torch.equal), the layers above k are never called, and the feature-cache
key changes with k.
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from torch import nn

from speechfuse.cache.store import FeatureCache
from speechfuse.errors import ConfigError, UpstreamError
from speechfuse.fusion.upstream import load_upstream
from speechfuse.fusion.upstream.bundled import SPEECH_EMBEDDING_BLOCKS
from helpers import FAMILIES, FSDD, make_fsdd, real_batch, run_config, save_tiny_model


def fsdd_batch(*names: str) -> tuple[torch.Tensor, torch.Tensor]:
    """FSDD clips (8 kHz) resampled to 16 kHz and zero-padded into one batch."""
    clips = [torch.from_numpy(soxr.resample(sf.read(FSDD / f"{name}.flac", dtype="float32")[0], 8000, 16000))
             for name in names]
    lengths = torch.tensor([len(c) for c in clips])
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for i, clip in enumerate(clips):
        wavs[i, :len(clip)] = clip
    return wavs, lengths


@pytest.fixture(scope="module")
def batch():
    return fsdd_batch("3_george_0", "7_jackson_1")  # two lengths, so padding and masks are exercised


def save_tiny(folder, family: str) -> str:
    """A tiny random model of `family` with 3 layers (4 hidden states)."""
    layers = {"encoder_layers": 3} if family == "whisper" else {"num_hidden_layers": 3}
    return save_tiny_model(family, folder / family, **layers)




class LayerCalls:
    """Counts forward calls of every module of one class, wherever it sits (a global forward hook)."""

    def __init__(self, layer_class: type) -> None:
        self.layer_class, self.count = layer_class, 0

    def __enter__(self) -> "LayerCalls":
        self.handle = nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def _hook(self, module, args, output) -> None:
        self.count += isinstance(module, self.layer_class)

    def __exit__(self, *exc) -> None:
        self.handle.remove()


CASES = [(family, {}) for family in FAMILIES] + [("whisper", {"whisper_mode": "pad30"})]


@pytest.mark.parametrize("family,options", CASES, ids=[f + "".join(o.values()) for f, o in CASES])
def test_truncated_hf_upstream_is_exactly_the_first_k_layers(tmp_path, batch, family, options):
    spec = "hf:" + save_tiny(tmp_path, family)
    full_upstream = load_upstream(spec, **options)
    full = full_upstream(*batch)
    assert full.hidden.shape[0] == full_upstream.num_layers == 4
    encoder = full_upstream.encoder if family == "whisper" else full_upstream.model.encoder
    layer_class = type(encoder.layers[0])
    with LayerCalls(layer_class) as calls:
        full_upstream(*batch)
    assert calls.count == 3
    for k in (1, 2, 3):
        upstream = load_upstream(spec, max_layers=k, **options)
        assert upstream.num_layers == k
        with LayerCalls(layer_class) as calls:
            truncated = upstream(*batch)
        assert calls.count == k - 1, f"max_layers={k} ran {calls.count} encoder layers"
        assert truncated.hidden.shape == (k,) + tuple(full.hidden.shape[1:])
        assert torch.equal(truncated.hidden, full.hidden[:k]), (
            f"max_layers={k}: max abs diff {(truncated.hidden - full.hidden[:k]).abs().max()}")
        assert torch.equal(truncated.lengths, full.lengths)


def test_keeping_every_layer_is_the_full_upstream(tmp_path):
    spec = "hf:" + save_tiny(tmp_path, "wav2vec2")
    full, same = load_upstream(spec), load_upstream(spec, max_layers=4)
    assert same.identity() == full.identity()
    assert "max_layers" not in same.options()


def test_cache_key_and_identity_follow_max_layers(tmp_path):
    spec = "hf:" + save_tiny(tmp_path, "hubert")
    cache = FeatureCache(tmp_path / "cache")
    upstreams = [load_upstream(spec, max_layers=k) for k in (1, 2, 3)] + [load_upstream(spec)]
    assert [u.options().get("max_layers") for u in upstreams] == [1, 2, 3, None]
    folders = {cache.entry(u).folder for u in upstreams}
    assert len(folders) == 4
    assert len({str(u.identity()) for u in upstreams}) == 4


@pytest.mark.parametrize("bad", [0, 5, -1, True, 1.5, "2"])
def test_max_layers_out_of_range_is_a_clear_error(tmp_path, bad):
    spec = "hf:" + save_tiny(tmp_path, "wavlm")
    # the options model refuses what is never a layer count; the model, once loaded, the count it lacks
    expected = "max_layers must be a whole number from 1 to 4 .*got" if bad == 5 else \
        r"max_layers: must be a whole number from 1 to the model's number of hidden states, or null \(got"
    with pytest.raises(ConfigError, match=expected):
        load_upstream(spec, max_layers=bad)


def test_config_options_carry_max_layers(tmp_path):
    from speechfuse.fusion.model import build_frontend_from

    spec = "hf:" + save_tiny(tmp_path, "data2vec-audio")
    frontend = build_frontend_from([{"spec": spec, "options": {"max_layers": 2}}], align={},
                                   interface={"name": "weighted_sum"})
    assert frontend.upstreams[0].num_layers == 2
    assert frontend.upstreams[0].identity()["options"]["max_layers"] == 2


# -- bundled real models -------------------------------------------------------------------------
def test_whisper_tiny_en_truncated(tmp_path, monkeypatch, batch):
    monkeypatch.setenv("SPEECHFUSE_HOME", str(tmp_path))
    full_upstream = load_upstream("whisper-tiny.en")
    full = full_upstream(*batch)
    layer_class = type(full_upstream.encoder.layers[0])
    for k in (1, 3):
        upstream = load_upstream("whisper-tiny.en", max_layers=k)
        assert upstream.name == "whisper-tiny.en" and upstream.num_layers == k
        with LayerCalls(layer_class) as calls:
            truncated = upstream(*batch)
        assert calls.count == k - 1
        assert torch.equal(truncated.hidden, full.hidden[:k])
    with pytest.raises(ConfigError, match="max_layers"):
        load_upstream("whisper-tiny.en", max_layers=6)


def test_resemblyzer_truncated(batch):
    full_upstream = load_upstream("resemblyzer")
    full = full_upstream(*batch)
    for k in (1, 2):
        upstream = load_upstream("resemblyzer", max_layers=k)
        with LayerCalls(nn.LSTM) as calls:
            truncated = upstream(*batch)
        assert calls.count == k  # the clips fit one window: one call per kept LSTM layer
        assert torch.equal(truncated.hidden, full.hidden[:k])
        assert upstream.identity()["options"] == {"max_layers": k, "normalize_volume": True}
        with pytest.raises(UpstreamError, match="embed.*max_layers"):
            upstream.embed(*batch)
    with pytest.raises(ConfigError, match="from 1 to 3"):
        load_upstream("resemblyzer", max_layers=4)


class RecordingSession:
    """Stands in for an onnxruntime session: records the outputs requested, then runs the real one."""

    def __init__(self, session) -> None:
        self.session, self.requested = session, []

    def run(self, outputs, feeds):
        self.requested.append(list(outputs))
        return self.session.run(outputs, feeds)


def test_speech_embedding_truncated(batch):
    full = load_upstream("speech-embedding")(*batch)
    upstream = load_upstream("speech-embedding", max_layers=1)
    upstream.emb_session = RecordingSession(upstream.emb_session)
    truncated = upstream(*batch)
    assert upstream.emb_session.requested == []  # the embedding model never runs for layer 0 alone
    assert torch.equal(truncated.hidden, full.hidden[:1])
    for k in (3, 10):
        upstream = load_upstream("speech-embedding", max_layers=k)
        upstream.emb_session = RecordingSession(upstream.emb_session)
        truncated = upstream(*batch)
        wanted = (SPEECH_EMBEDDING_BLOCKS + [upstream.emb_session.session.get_outputs()[0].name])[:k - 1]
        assert all(requested == wanted for requested in upstream.emb_session.requested)
        assert np.array_equal(truncated.hidden.numpy(), full.hidden[:k].numpy())


def test_fused_model_with_truncated_upstreams_round_trips(tmp_path):
    """A saved model records max_layers with its upstreams and rebuilds them truncated: a fine-tuned
    truncated upstream's stored weights fit the rebuilt one, and the reload predicts exactly."""
    import json

    from speechfuse.config import config_from_dict
    from speechfuse.data import load_manifest
    from speechfuse.fusion.model import FusedModel, build_task

    manifests = make_fsdd(tmp_path / "corpus", takes=range(6))
    hubert = "hf:" + save_tiny(tmp_path, "hubert")
    whisper = "hf:" + save_tiny(tmp_path, "whisper")
    cfg = config_from_dict(run_config(manifests, [{"spec": hubert, "options": {"max_layers": 2, "trainable": True}},
                                                  {"spec": whisper, "options": {"max_layers": 3}}]))
    task = build_task(cfg).fit(load_manifest(manifests["train"]))
    torch.manual_seed(0)
    model = FusedModel.from_config(cfg, task).eval()
    assert [u.num_layers for u in model.frontend.upstreams] == [2, 3]
    with torch.no_grad():  # the fine-tuned upstream now differs from its checkpoint folder
        next(model.frontend.upstreams[0].parameters()).add_(0.05)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [u["identity"]["options"].get("max_layers") for u in saved["upstreams"]] == [2, 3]
    loaded = FusedModel.from_pretrained(tmp_path / "m")
    wavs, lengths = real_batch(manifests["test"])
    with torch.no_grad():
        expected, _ = model(wavs, lengths)
        got, _ = loaded(wavs, lengths)
    assert torch.equal(got, expected)
