"""Aligner: frame rate, exact lengths, layers, dims, padding invariance, errors."""
from __future__ import annotations

import pytest
import torch

import speechfuse as sf
from speechfuse import ConfigError, HiddenStates, ShapeError

# the three bundled real models: whisper-tiny.en encoder, resemblyzer LSTM, speech_embedding
BUNDLED = [(5, 384, 50.0), (3, 256, 100.0), (10, 96, 12.5)]


def states_for(layouts, lengths_per_model, seed=0, pad_value=0.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for (layers, dim, rate), lengths in zip(layouts, lengths_per_model):
        lengths = torch.tensor(lengths)
        hidden = torch.randn(layers, len(lengths), int(lengths.max()), dim, generator=g)
        valid = torch.arange(hidden.shape[2])[None, :] < lengths[:, None]
        hidden = torch.where(valid[None, :, :, None], hidden, torch.full_like(hidden, pad_value))
        out.append(HiddenStates(hidden, lengths, rate, f"m{rate}"))
    return out


def test_bundled_trio_exact_lengths_at_max_rate():
    aligner = sf.Aligner(BUNDLED)
    # 50 Hz: 50, 37 frames -> 100, 74 at 100 Hz; 100 Hz: 100, 73; 12.5 Hz: 12, 9 -> 96, 72
    out = aligner(states_for(BUNDLED, [[50, 37], [100, 73], [12, 9]]))
    assert (aligner.num_layers, aligner.hidden_size, aligner.frame_rate, aligner.num_models) == (10, 384, 100.0, 3)
    for s in out:
        assert s.hidden.shape == (10, 2, 96, 384)
        assert s.lengths.tolist() == [96, 72]
        assert s.frame_rate == 100.0
        assert torch.all(s.hidden[:, 1, 72:] == 0)
    # only the models whose D differs get a projection, and those are the only parameters
    assert sorted(aligner.projections.keys()) == ["1", "2"]
    assert sum(p.numel() for p in aligner.parameters()) == (256 * 384 + 384) + (96 * 384 + 384)


def test_min_rate_and_ceil_rule():
    aligner = sf.Aligner(BUNDLED, frame_rate="min", num_layers="min", hidden_size="min")
    # to 12.5 Hz: ceil(50/4)=13, ceil(37/4)=10; ceil(100/8)=13, ceil(73/8)=10; 12, 9 -> min 12, 9
    out = aligner(states_for(BUNDLED, [[50, 37], [100, 73], [12, 9]]))
    for s in out:
        assert s.hidden.shape == (3, 2, 12, 96)
        assert s.lengths.tolist() == [12, 9]


def test_numeric_rate_layers_and_size():
    aligner = sf.Aligner(BUNDLED, frame_rate=25, num_layers=7, hidden_size=128)
    # to 25 Hz: 25, ceil(18.5)=19; 25, ceil(18.25)=19; 24, 18 -> 24, 18
    out = aligner(states_for(BUNDLED, [[50, 37], [100, 73], [12, 9]]))
    assert [s.hidden.shape for s in out] == [(7, 2, 24, 128)] * 3
    assert out[0].lengths.tolist() == [24, 18]
    assert len(aligner.projections) == 3


def test_length_max_zero_fills_shorter_models():
    layouts = [(2, 4, 50.0), (2, 4, 50.0)]
    aligner = sf.Aligner(layouts, length="max")
    states = states_for(layouts, [[10, 6], [8, 7]])
    out = aligner(states)
    assert out[0].lengths.tolist() == [10, 7] and out[1].lengths.tolist() == [10, 7]
    assert torch.equal(out[1].hidden[:, 0, :8], states[1].hidden[:, 0, :8])
    assert torch.all(out[1].hidden[:, 0, 8:] == 0)
    assert torch.all(out[0].hidden[:, 1, 6:] == 0)


def test_upsample_x4_linear_and_nearest():
    ramp = torch.arange(5, dtype=torch.float32)  # 5 frames at 12.5 Hz, value = frame index
    hidden = ramp.view(1, 1, 5, 1).repeat(1, 1, 1, 2)
    state = HiddenStates(hidden, torch.tensor([5]), 12.5, "slow")
    lin = sf.Aligner([(1, 2, 12.5)], frame_rate=50.0)(
        [state])[0]
    # output frame j sits at source position (j + 0.5)/4 - 0.5, clamped to [0, 4]
    expected = [min(max((j + 0.5) / 4 - 0.5, 0.0), 4.0) for j in range(20)]
    assert lin.lengths.tolist() == [20]
    assert torch.allclose(lin.hidden[0, 0, :, 0], torch.tensor(expected))
    near = sf.Aligner([(1, 2, 12.5)], frame_rate=50.0, time_method="nearest")([state])[0]
    assert near.hidden[0, 0, :, 0].tolist() == [float(i) for i in range(5) for _ in range(4)]


def test_downsample_x2_averages_pairs():
    hidden = torch.randn(2, 1, 10, 3)
    state = HiddenStates(hidden, torch.tensor([10]), 100.0, "fast")
    out = sf.Aligner([(2, 3, 100.0)], frame_rate=50.0)([state])[0]
    assert out.lengths.tolist() == [5]
    assert torch.allclose(out.hidden, (hidden[:, :, 0::2] + hidden[:, :, 1::2]) / 2, atol=1e-6)


def test_layer_interpolation_and_nearest():
    hidden = torch.randn(13, 1, 4, 3)
    state = HiddenStates(hidden, torch.tensor([4]), 50.0, "a")
    up = sf.Aligner([(13, 3, 50.0)], num_layers=25)([state])[0].hidden
    assert torch.allclose(up[0], hidden[0]) and torch.allclose(up[24], hidden[12])
    assert torch.allclose(up[1], (hidden[0] + hidden[1]) / 2, atol=1e-6)  # position 1*12/24 = 0.5
    assert torch.allclose(up[2], hidden[1])
    small = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 2, 1).contiguous()
    near = sf.Aligner([(3, 1, 50.0)], num_layers=5, layer_method="nearest")(
        [HiddenStates(small, torch.tensor([2]), 50.0, "b")])[0].hidden
    assert near[:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]  # positions 0, .5, 1, 1.5, 2; half rounds up
    last = sf.Aligner([(13, 3, 50.0)], num_layers=1)([state])[0].hidden
    assert torch.equal(last[0], hidden[12])


@pytest.mark.parametrize("time_method", ["interpolate", "nearest"])
def test_padding_never_leaks(time_method):
    layouts = BUNDLED
    aligner = sf.Aligner(layouts, time_method=time_method)
    torch.manual_seed(0)
    short = states_for(layouts, [[50, 37], [100, 73], [12, 9]], seed=1)
    # the same batch, padded 7 frames further with NaN
    padded = []
    for s in short:
        extra = torch.full((s.num_layers, s.batch_size, 7, s.hidden_size), float("nan"))
        hidden = torch.cat([s.hidden, extra], dim=2)
        mask = s.padding_mask()
        hidden[:, :, : s.num_frames] = torch.where(mask[None, :, :, None], s.hidden, torch.tensor(float("nan")))
        padded.append(HiddenStates(hidden, s.lengths, s.frame_rate, s.name))
    a, b = aligner(short), aligner(padded)
    for x, y in zip(a, b):
        assert torch.equal(x.lengths, y.lengths)
        assert not torch.isnan(y.hidden).any()
        assert torch.allclose(x.hidden, y.hidden, atol=1e-6)
    # the single-utterance batch gives the same valid frames as inside the batch
    alone = aligner([HiddenStates(s.hidden[:, 1:, : int(s.lengths[1])], s.lengths[1:], s.frame_rate, s.name)
                     for s in short])
    for x, y in zip(a, alone):
        n = int(y.lengths[0])
        assert n == int(x.lengths[1])
        assert torch.allclose(x.hidden[:, 1, :n], y.hidden[:, 0, :n], atol=1e-6)


def test_gradients_reach_projections():
    aligner = sf.Aligner(BUNDLED)
    out = aligner(states_for(BUNDLED, [[50, 37], [100, 73], [12, 9]]))
    sum(s.hidden.pow(2).sum() for s in out).backward()
    for name, p in aligner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_errors():
    aligner = sf.Aligner(BUNDLED)
    good = states_for(BUNDLED, [[50, 37], [100, 73], [12, 9]])
    with pytest.raises(ShapeError, match="3 models but got 2"):
        aligner(good[:2])
    bad_batch = states_for(BUNDLED, [[50, 37], [100, 73], [12]])
    with pytest.raises(ShapeError, match="batch size"):
        aligner(bad_batch)
    swapped = [good[1], good[0], good[2]]
    with pytest.raises(ShapeError, match="layout says"):
        aligner(swapped)
    wrong_rate = list(good)
    wrong_rate[2] = HiddenStates(good[2].hidden, good[2].lengths, 25.0, "x")
    with pytest.raises(ShapeError, match="frame rate"):
        aligner(wrong_rate)
    too_long = list(good)
    too_long[0] = HiddenStates(good[0].hidden, torch.tensor([51, 3]), 50.0, "x")
    with pytest.raises(ShapeError, match="lengths"):
        aligner(too_long)
    with pytest.raises(ConfigError, match="time_method"):
        sf.Aligner(BUNDLED, time_method="cubic")
    with pytest.raises(ConfigError, match="frame_rate"):
        sf.Aligner(BUNDLED, frame_rate="fastest")
    with pytest.raises(ConfigError, match="num_layers"):
        sf.Aligner(BUNDLED, num_layers=2.5)
    with pytest.raises(ConfigError, match="layouts is empty"):
        sf.Aligner([])
    with pytest.raises(ConfigError, match="unknown option"):
        sf.Aligner.from_upstreams([], frame_rat="max")
