"""FusionFrontend: fake upstreams at 12.5/50/100 Hz with exact lengths, and two tiny transformers models
that train on a toy target."""
from __future__ import annotations

import json

import pytest
import torch

import speechfuse as sf
from speechfuse import ConfigError
from speechfuse.fusion.importance import layer_importance
from helpers import FakeUpstream


def fakes():
    fake = FakeUpstream.framewise
    return [fake(12.5, 3, 16, 0), fake(50.0, 5, 24, 1), fake(100.0, 13, 32, 2), fake(50.0, 25, 32, 3)]


def batch(lengths, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    wavs = torch.randn(len(lengths), width, generator=g)
    for i, n in enumerate(lengths):
        wavs[i, n:] = 0
    return wavs, torch.tensor(lengths)


def test_fake_upstreams_exact_lengths_and_shapes():
    frontend = sf.FusionFrontend(fakes(), interface="hconv")
    wavs, lens = batch([16000, 10000, 3000])
    raw = frontend.extract(wavs, lens)
    # hops 1280 / 320 / 160 / 320 samples
    assert [s.lengths.tolist() for s in raw] == [[12, 7, 2], [50, 31, 9], [100, 62, 18], [50, 31, 9]]
    assert all(not s.hidden.is_inference() and not s.hidden.requires_grad for s in raw)
    feats, lengths = frontend.fuse(raw)
    # at 100 Hz: 12.5 Hz -> 96, 56, 16; 50 Hz -> 100, 62, 18; 100 Hz -> 100, 62, 18; minimum per utterance
    assert lengths.tolist() == [96, 56, 16]
    assert feats.shape == (3, 96, 32) and frontend.output_dim == 32
    assert (frontend.aligner.num_layers, frontend.aligner.hidden_size, frontend.frame_rate) == (25, 32, 100.0)
    assert torch.all(feats[1, 56:] == 0) and torch.all(feats[2, 16:] == 0)
    again, _ = frontend(wavs, lens)
    assert torch.equal(again, feats)


def test_min_rate_and_padding_invariance_end_to_end():
    frontend = sf.FusionFrontend(fakes(), interface="weighted_sum",
                                 aligner_options={"frame_rate": "min", "num_layers": "min", "hidden_size": 16},
                                 interface_options={"output_dim": 8})
    wavs, lens = batch([16000, 10000, 3000])
    feats, lengths = frontend(wavs, lens)
    # at 12.5 Hz: ceil(50/4)=13, ceil(31/4)=8, ceil(9/4)=3; ceil(100/8)=13, 8, 3; 12, 7, 2 -> minimum
    assert lengths.tolist() == [12, 7, 2] and feats.shape == (3, 12, 8)
    wide = torch.cat([wavs, torch.randn(3, 5000)], dim=1)  # more padding, and it is not even silent
    wide_feats, wide_lengths = frontend(wide, lens)
    assert torch.equal(wide_lengths, lengths)
    assert torch.allclose(wide_feats[:, :12], feats, atol=1e-5)
    alone, _ = frontend(wavs[2:, :3000], lens[2:])
    assert torch.allclose(alone[0, :2], feats[2, :2], atol=1e-5)


def test_importance_through_frontend_is_in_upstream_layers():
    frontend = sf.FusionFrontend(fakes()[:2], interface="weighted_sum")
    wavs, lens = batch([8000, 6000])
    result = layer_importance(frontend, frontend.extract(wavs, lens))
    assert [len(row) for row in result["importance"]] == [3, 5]
    assert result["layers"].startswith("upstream")
    assert json.loads(json.dumps(frontend.interface.describe()))["importance"]["num_layers"] == [3, 5]


def test_frontend_errors():
    with pytest.raises(ConfigError, match="empty"):
        sf.FusionFrontend([])
    with pytest.raises(ConfigError, match="upstreams\\[1\\]"):
        sf.FusionFrontend([fakes()[0], torch.nn.Linear(2, 2)])
    with pytest.raises(ConfigError, match="sample rates"):
        sf.FusionFrontend([FakeUpstream.framewise(50.0, 5, 8), FakeUpstream.framewise(50.0, 5, 8, sample_rate=8000)])
    with pytest.raises(ConfigError, match="unknown option.*frame_rat"):
        sf.FusionFrontend(fakes(), aligner_options={"frame_rat": "min"})
    with pytest.raises(ConfigError, match="unknown option.*kernel"):
        sf.FusionFrontend(fakes(), interface_options={"kernel": 3})
    with pytest.raises(ConfigError, match="unknown interface"):
        sf.FusionFrontend(fakes(), interface="mlp")


def test_two_tiny_transformers_models_train(tiny_model_dir):
    hubert = tiny_model_dir("hubert")
    # a second model with a different depth, width and frame rate: 5 hidden states x 48 at 400 Hz
    wavlm = tiny_model_dir("wavlm", num_hidden_layers=4, hidden_size=48, conv_stride=(5, 2, 4))
    frontend = sf.FusionFrontend([f"hf:{hubert}", f"hf:{wavlm}"], interface="hconv",
                                 interface_options={"output_dim": 16})
    assert [u.num_layers for u in frontend.upstreams] == [3, 5]
    assert [u.hidden_size for u in frontend.upstreams] == [32, 48]
    assert [u.frame_rate for u in frontend.upstreams] == [800.0, 400.0]
    torch.manual_seed(0)
    # toy target: is the clip a low tone (class 0) or white noise (class 1)?
    t = torch.arange(4000) / 16000
    wavs = torch.stack([torch.sin(2 * torch.pi * 220 * t), torch.randn(4000) * 0.3,
                        torch.sin(2 * torch.pi * 330 * t), torch.randn(4000) * 0.3])
    lens = torch.tensor([4000, 4000, 3000, 3500])
    for i, n in enumerate(lens.tolist()):
        wavs[i, n:] = 0
    labels = torch.tensor([0, 1, 0, 1])
    head = torch.nn.Linear(frontend.output_dim, 2)
    trainable = [p for p in list(frontend.parameters()) + list(head.parameters()) if p.requires_grad]
    assert all(not p.requires_grad for p in frontend.upstreams.parameters())
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    states = frontend.extract(wavs, lens)  # frozen upstreams: extract once, train the rest
    frontend.train()
    losses = []
    for _ in range(25):
        feats, lengths = frontend.fuse(states)
        valid = (torch.arange(feats.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        pooled = (feats * valid).sum(dim=1) / lengths[:, None]
        loss = torch.nn.functional.cross_entropy(head(pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert frontend.aligner.projections["0"].weight.grad is not None  # hubert's 32 dims -> 48
    assert all(p.grad is None for p in frontend.upstreams.parameters())
    # the whole forward (extract + fuse) also runs and backpropagates into the trainable parts
    feats, lengths = frontend(wavs, lens)
    feats.sum().backward()
