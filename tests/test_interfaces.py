"""Interfaces: parameter counts, shapes, HConv numerics, padding invariance, gradients, describe, errors;
plus layer_importance."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import speechfuse as sf
from speechfuse import ConfigError, HiddenStates, ShapeError
from speechfuse.fusion.importance import layer_importance

ALL = ["last", "layer", "weighted_sum", "hconv", "chconv", "concat_proj", "group_ws", "cls_pool", "gumd"]
NEEDS = {"layer": {"index": 1}}

# layer-axis sizes after each HConv conv, worked out by hand from floor((L-1)/3)+1
HCONV_SIZES = {5: [2], 9: [3, 1], 13: [5, 2], 25: [9, 3], 27: [9, 3, 1], 33: [11, 4, 2]}


def make_states(n, layers, dim, lengths, frames=None, seed=0, pad=0.0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    frames = frames or int(lengths.max())
    valid = (torch.arange(frames)[None, :] < lengths[:, None])[None, :, :, None]
    out = []
    for m in range(n):
        hidden = torch.randn(layers, len(lengths), frames, dim, generator=g)
        out.append(HiddenStates(torch.where(valid, hidden, torch.tensor(pad)), lengths, 50.0, f"model{m}"))
    return out


def build(name, layers, dim, n=1, **kw):
    return sf.build_interface(name, num_layers=layers, hidden_size=dim, num_models=n, **{**NEEDS.get(name, {}), **kw})


# -- parameter counts, computed independently of the implementation ---------------------------------
def linear(i, o):
    return i * o + o


def conv(i, o):
    return i * o * 5 + o


def hconv_params(in_dim, dim, layers, out):
    sizes = HCONV_SIZES[layers]
    total, channels = 0, in_dim
    for k, _ in enumerate(sizes):
        o = dim // sizes[-1] if k == len(sizes) - 1 else dim
        total += conv(channels, o)
        channels = dim
    flat = (dim // sizes[-1]) * sizes[-1]
    return total + (0 if flat == out else linear(flat, out))


def expected_params(name, n, layers, dim, out):
    proj = 0 if out == dim else linear(dim, out)
    if name in ("last", "layer"):
        return 0 if (n == 1 and out == dim) else linear(n * dim, out)
    if name == "weighted_sum":
        return n * layers + proj
    if name == "hconv":
        return hconv_params(dim, dim, layers, out)
    if name == "chconv":
        return hconv_params(n * dim, dim, layers, out)
    if name == "concat_proj":
        return linear(n * layers * dim, out)
    if name == "group_ws":
        return n * layers + linear(n * 4 * dim, out)
    if name == "cls_pool":
        ffn = 4 * dim
        encoder = linear(dim, 3 * dim) + linear(dim, dim) + linear(dim, ffn) + linear(ffn, dim) + 4 * dim
        return dim + (1 + n * layers) * dim + encoder + proj
    if name == "gumd":
        return n * layers * dim + linear(n * layers * dim, out)
    raise AssertionError(name)


def test_hconv_worked_cases():
    assert build("hconv", 13, 768).num_parameters() == 4_424_832
    h25 = build("hconv", 25, 1024)
    summary = h25.describe()
    assert summary["details"]["flattened_dim"] == 1023 and h25.output_dim == 1024
    assert summary["output_projection"] == {"from": 1023, "to": 1024}
    assert build("hconv", 25, 1024, output_dim=1023).describe()["output_projection"] is None
    h33 = build("hconv", 33, 1280)
    convs = [m for m in h33.hconv.transforms if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 3 and h33.output_dim == 1280 and h33.describe()["output_projection"] is None
    assert [c.out_channels for c in convs] == [1280, 1280, 640]


def test_hconv_layer_counts_use_integer_arithmetic():
    from speechfuse.fusion.interfaces import hconv_layer_sizes

    for layers, sizes in HCONV_SIZES.items():
        assert hconv_layer_sizes(layers) == sizes
    assert hconv_layer_sizes(3) == [1] and hconv_layer_sizes(26) == [9, 3] and hconv_layer_sizes(81) == [27, 9, 3, 1]
    with pytest.raises(ConfigError, match="at least 3 layers"):
        build("hconv", 2, 8)


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_over_grid(name):
    # built on the meta device: real shapes, no memory or init cost even for 3 x 33 x 1024
    with torch.device("meta"):
        for n in (1, 2, 3):
            for layers in (5, 13, 25, 33):
                for dim in (96, 256, 384, 768, 1024):
                    for out in (None, 128):
                        interface = build(name, layers, dim, n, output_dim=out)
                        assert interface.num_parameters() == expected_params(name, n, layers, dim, out or dim), \
                            (n, layers, dim, out)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n,layers,dim", [(1, 5, 96), (2, 13, 96), (3, 5, 256), (2, 25, 96), (1, 33, 96)])
def test_output_shapes(name, n, layers, dim):
    torch.manual_seed(0)
    interface = build(name, layers, dim, n, output_dim=None if layers != 5 else 40).eval()
    feats, lengths = interface(make_states(n, layers, dim, [3, 2]))
    assert feats.shape == (2, 3, interface.output_dim)
    assert interface.output_dim == (40 if layers == 5 else dim)
    assert lengths.tolist() == [3, 2]
    assert interface.num_parameters() == expected_params(name, n, layers, dim, interface.output_dim)


def numpy_conv1d(x, weight, bias, stride=3, pad=2):
    """x [C_in, L], weight [C_out, C_in, K] -> [C_out, L_out] by explicit loops."""
    c_out, c_in, k = weight.shape
    padded = np.zeros((c_in, x.shape[1] + 2 * pad))
    padded[:, pad:pad + x.shape[1]] = x
    length = (x.shape[1] + 2 * pad - k) // stride + 1
    out = np.zeros((c_out, length))
    for o in range(c_out):
        for i in range(length):
            total = bias[o]
            for c in range(c_in):
                for j in range(k):
                    total += weight[o, c, j] * padded[c, i * stride + j]
            out[o, i] = total
    return out


def test_hconv_numerics_by_hand():
    torch.manual_seed(3)
    interface = build("hconv", 9, 4)
    states = make_states(1, 9, 4, [2])
    feats, _ = interface(states)
    convs = [m for m in interface.hconv.transforms if isinstance(m, torch.nn.Conv1d)]
    hidden = states[0].hidden.double().numpy()
    for t in range(2):
        x = hidden[:, 0, t, :].T  # [D, L]: channels = hidden dims, the conv runs over layers
        for c in convs:
            x = np.maximum(numpy_conv1d(x, c.weight.detach().double().numpy(), c.bias.detach().double().numpy()), 0)
        assert x.shape == (4, 1)
        np.testing.assert_allclose(feats[0, t].detach().numpy(), x.reshape(-1), rtol=1e-5, atol=1e-6)


def test_multi_model_hconv_is_hconv_of_the_sum():
    torch.manual_seed(0)
    two, one = build("hconv", 13, 8, 2), build("hconv", 13, 8, 1)
    one.load_state_dict(two.state_dict())
    a, b = make_states(2, 13, 8, [4, 2])
    summed = HiddenStates(a.hidden + b.hidden, a.lengths, 50.0, "sum")
    assert torch.allclose(two([a, b])[0], one([summed])[0], atol=1e-5)


def test_weight_keys_match_reference_layout():
    keys = set(build("hconv", 13, 8).state_dict())
    assert keys == {"hconv.transforms.0.weight", "hconv.transforms.0.bias",
                    "hconv.transforms.2.weight", "hconv.transforms.2.bias"}


def test_chconv_projection_options():
    first = build("chconv", 13, 8, 2)
    per_layer = build("chconv", 13, 8, 2, projection="per_layer_linear")
    assert first.hconv.transforms[0].in_channels == 16
    assert per_layer.hconv.transforms[0].in_channels == 8 and per_layer.layer_projection.in_features == 16
    assert per_layer.num_parameters() == linear(16, 8) + hconv_params(8, 8, 13, 8)
    feats, _ = per_layer(make_states(2, 13, 8, [3, 1]))
    assert feats.shape == (2, 3, 8)


@pytest.mark.parametrize("name", ALL)
def test_padding_invariance(name):
    torch.manual_seed(0)
    interface = build(name, 5, 8, 2).eval()
    tight = make_states(2, 5, 8, [6, 3], seed=1)
    loose = [HiddenStates(torch.cat([s.hidden, torch.full((5, 2, 4, 8), float("nan"))], dim=2), s.lengths, 50.0, s.name)
             for s in tight]
    for s in loose:
        s.hidden[:, 1, 3:6] = float("nan")  # utterance 1's padding is NaN as well
    f_tight, _ = interface(tight)
    f_loose, _ = interface(loose)
    assert not torch.isnan(f_loose).any()
    assert torch.all(f_loose[1, 3:] == 0) and torch.all(f_loose[0, 6:] == 0)
    assert torch.allclose(f_tight, f_loose[:, :6], atol=1e-5)
    alone, _ = interface([HiddenStates(s.hidden[:, 1:, :3], s.lengths[1:], 50.0, s.name) for s in tight])
    assert torch.allclose(alone[0], f_tight[1, :3], atol=1e-5)


def test_gumd_training_padding_invariance_with_same_noise():
    interface = build("gumd", 5, 8, 2).train()
    tight = make_states(2, 5, 8, [6, 3], seed=1)
    loose = [HiddenStates(torch.cat([s.hidden, torch.randn(5, 2, 5, 8)], dim=2), s.lengths, 50.0, s.name) for s in tight]
    torch.manual_seed(7)
    a, _ = interface(tight)
    torch.manual_seed(7)
    b, _ = interface(loose)
    assert torch.allclose(a, b[:, :6], atol=1e-5) and torch.all(b[:, 6:] == 0)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    interface = build(name, 13, 8, 2, output_dim=6).train()
    feats, _ = interface(make_states(2, 13, 8, [5, 4]))
    feats.pow(2).sum().backward()
    params = [(k, p) for k, p in interface.named_parameters() if p.requires_grad]
    assert params
    for key, p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", ALL)
def test_describe_is_json(name):
    interface = build(name, 5, 8, 2)
    summary = json.loads(json.dumps(interface.describe()))
    assert summary["name"] == name and summary["num_parameters"] == interface.num_parameters()
    assert summary["options"].keys() == sf.fusion.interfaces.interface_options(name).keys()
    assert set(summary) == {"name", "options", "num_models", "num_layers", "hidden_size", "output_dim", "num_parameters",
                            "output_projection", "layer_matrix", "layer_matrix_kind", "importance", "details"}
    if name in ("weighted_sum", "group_ws", "gumd"):
        assert np.array(summary["layer_matrix"]).shape == (2, 5) and summary["layer_matrix_kind"]
    else:
        assert summary["layer_matrix"] is None and summary["layer_matrix_kind"] is None
    if name == "weighted_sum":
        assert np.array(summary["layer_matrix"]).sum() == pytest.approx(1.0)


def test_weighted_sum_layer_norm_and_group_bounds():
    ws = build("weighted_sum", 5, 8, 2, layer_norm=True)
    states = make_states(2, 5, 8, [4])
    feats, _ = ws(states)
    stack = torch.stack([s.hidden for s in states])
    expected = torch.nn.functional.layer_norm(stack, (8,)).mean(dim=(0, 1))  # equal weights at init
    assert torch.allclose(feats, expected, atol=1e-5)
    group = build("group_ws", 13, 8, groups=4)
    assert group.describe()["details"]["groups"] == [[0, 4], [4, 7], [7, 10], [10, 13]]


def test_gumd_annealing_and_deterministic_eval():
    interface = build("gumd", 5, 4, 1, tau_start=2.0, tau_end=0.5, anneal_steps=4)
    states = make_states(1, 5, 4, [3])
    assert interface.temperature() == pytest.approx(2.0)
    interface.train()
    for _ in range(2):
        interface(states)
    assert interface.temperature() == pytest.approx(2.0 * 0.25 ** 0.5)
    mask = interface.mask()
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    for _ in range(5):
        interface(states)
    assert interface.temperature() == pytest.approx(0.5)
    interface.eval()
    with torch.no_grad():
        interface.keep_logits[:7] = -1.0
    first, _ = interface(states)
    second, _ = interface(states)
    assert torch.equal(first, second)
    assert interface.describe()["details"]["kept_fraction"] == pytest.approx(13 / 20)


def test_errors():
    with pytest.raises(ConfigError, match="unknown interface 'hcnv'.*weighted_sum"):
        sf.build_interface("hcnv", num_layers=13, hidden_size=8)
    with pytest.raises(ConfigError, match="unknown option.*layernorm.*valid options: layer_norm"):
        sf.build_interface("weighted_sum", num_layers=13, hidden_size=8, layernorm=True)
    with pytest.raises(ConfigError, match="projection"):
        build("chconv", 13, 8, 2, projection="middle")
    with pytest.raises(ConfigError, match="groups"):
        build("group_ws", 5, 8, groups=6)
    with pytest.raises(ConfigError, match="index"):
        build("layer", 5, 8, index=5)
    with pytest.raises(ConfigError, match="index"):
        sf.build_interface("layer", num_layers=5, hidden_size=8)
    with pytest.raises(ConfigError, match="num_heads"):
        build("cls_pool", 5, 10, num_heads=3)
    with pytest.raises(ConfigError, match="tau_end"):
        build("gumd", 5, 8, tau_end=0)
    interface = build("hconv", 5, 8, 2)
    with pytest.raises(ShapeError, match="2 model"):
        interface(make_states(1, 5, 8, [3]))
    with pytest.raises(ShapeError, match="6 layers x 8 dims, expected 5 x 8"):
        interface(make_states(2, 6, 8, [3]))
    with pytest.raises(ShapeError, match="5 layers x 9 dims"):
        interface(make_states(2, 5, 9, [3]))
    a = make_states(1, 5, 8, [3, 2])[0]
    b = HiddenStates(a.hidden, torch.tensor([3, 1]), 50.0, "b")
    with pytest.raises(ShapeError, match="lengths"):
        interface([a, b])


# -- importance -----------------------------------------------------------------------------------
def test_importance_flags_the_only_weighted_layer():
    interface = build("weighted_sum", 5, 8, 2)
    with torch.no_grad():
        interface.weights[1 * 5 + 3] = 50.0  # all weight on model 1, layer 3
    states = make_states(2, 5, 8, [6, 4])
    result = layer_importance(interface, states)
    scores = np.array(result["importance"])
    assert scores.shape == (2, 5)
    assert np.unravel_index(scores.argmax(), scores.shape) == (1, 3)
    assert scores[1, 3] == pytest.approx(1.0, abs=1e-3)
    scores[1, 3] = 0
    assert scores.max() < 1e-3
    assert interface.describe()["importance"]["importance"] == result["importance"]
    json.dumps(interface.describe())


def test_importance_with_loss_and_mean_replacement():
    torch.manual_seed(0)
    interface = build("weighted_sum", 5, 8, 1)
    with torch.no_grad():
        interface.weights[2] = 50.0
    states = make_states(1, 5, 8, [6, 4])
    target = states[0].hidden[2].clone()

    def loss(feats, lengths):
        return (feats - target).pow(2).mean()

    result = layer_importance(interface, states, loss_fn=loss, replace="mean", store=False)
    scores = np.array(result["importance"])[0]
    assert result["measure"] == "loss_increase" and result["baseline_loss"] < 1e-6
    assert scores.argmax() == 2 and scores[2] > 0.5 and np.abs(np.delete(scores, 2)).max() < 1e-4
    assert interface.importance is None


@pytest.mark.parametrize("name", ["hconv", "cls_pool", "gumd"])
def test_importance_runs_for_other_interfaces(name):
    torch.manual_seed(0)
    interface = build(name, 5, 8, 2).train()
    result = layer_importance(interface, make_states(2, 5, 8, [4, 2]))
    assert interface.training  # mode restored
    scores = np.array(result["importance"])
    assert scores.shape == (2, 5) and (scores >= 0).all() and scores.sum() > 0
    assert sum(map(sum, result["share"])) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="replace"):
        layer_importance(interface, make_states(2, 5, 8, [4, 2]), replace="noise")
