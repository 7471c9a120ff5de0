"""train.interface_lr_scaling: the interface's optimizer groups (docs/plateau.md)."""
from __future__ import annotations

import math

import pytest
import torch

from speechfuse.fusion.align import Aligner
from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError
from speechfuse.fusion.interfaces import build_interface
from speechfuse.training.learner import interface_param_groups

LR = 1e-2


def _pair_modules(name: str):
    """An interface over two models whose widths differ (24 and 16), so the aligner projects 16 -> 24."""
    torch.manual_seed(0)
    aligner = Aligner([(5, 24, 50.0), (3, 16, 100.0)])
    interface = build_interface(name, aligner.num_layers, aligner.hidden_size, num_models=2)
    return [interface, aligner]


@pytest.mark.parametrize("name", ["weighted_sum", "hconv", "chconv"])
def test_none_is_one_group_of_every_parameter_in_order(name):
    modules = _pair_modules(name)
    groups = interface_param_groups(modules, LR)
    assert [(g["name"], g["lr"]) for g in groups] == [("interface", LR)]
    expected = [p for m in modules for p in m.parameters()]
    assert len(groups[0]["params"]) == len(expected)
    assert all(a is b for a, b in zip(groups[0]["params"], expected))


def test_fan_in_divides_each_layers_lr_by_its_fan_in_root():
    interface, aligner = modules = _pair_modules("chconv")
    groups = {g["name"]: g for g in interface_param_groups(modules, LR, "fan_in")}
    conv = interface.hconv.transforms[0]  # the first conv maps 2 x 24 channels -> 24 // 2, kernel 5
    projection = next(iter(aligner.projections.values()))  # Linear(16 -> 24)
    assert set(groups) == {"interface/fan_in=16", "interface/fan_in=240"}  # no parameter left at LR
    assert groups["interface/fan_in=240"]["lr"] == pytest.approx(LR / math.sqrt(2 * 24 * 5))
    assert groups["interface/fan_in=16"]["lr"] == pytest.approx(LR / 4)
    assert {id(p) for p in groups["interface/fan_in=240"]["params"]} == {id(conv.weight), id(conv.bias)}
    assert {id(p) for p in groups["interface/fan_in=16"]["params"]} == {id(p) for p in projection.parameters()}


def test_fan_in_keeps_layer_logits_at_interface_lr():
    interface, aligner = modules = _pair_modules("weighted_sum")
    groups = {g["name"]: g for g in interface_param_groups(modules, LR, "fan_in")}
    assert groups["interface"]["lr"] == LR
    assert [id(p) for p in groups["interface"]["params"]] == [id(interface.weights)]


def test_first_adam_step_moves_conv_weights_by_the_scaled_lr():
    """Adam's first step is lr * g / (|g| + eps): each weight moves by at most its group's lr, almost all by it."""
    interface, aligner = modules = _pair_modules("hconv")
    conv = interface.hconv.transforms[0]
    before = conv.weight.detach().clone()
    optimizer = torch.optim.AdamW(interface_param_groups(modules, LR, "fan_in"), weight_decay=0.0)
    from speechfuse.fusion.hidden import HiddenStates

    torch.manual_seed(1)
    states = [HiddenStates(torch.randn(5, 2, 7, 24), torch.tensor([7, 5]), 50.0, "a"),
              HiddenStates(torch.randn(3, 2, 14, 16), torch.tensor([14, 10]), 100.0, "b")]
    feats, _ = interface(aligner(states))
    feats.pow(2).sum().backward()
    optimizer.step()
    moved = (conv.weight.detach() - before).abs()
    scaled = LR / math.sqrt(24 * 5)
    assert float(moved.max()) <= scaled * (1 + 1e-6)
    assert float(moved.median()) == pytest.approx(scaled, rel=1e-3)


def test_unknown_scaling_is_a_config_error():
    data = {"task": "classify", "data": {"train": "t.csv", "dev": "d.csv"}, "upstreams": ["resemblyzer"],
            "train": {"interface_lr_scaling": "sqrt"}}
    with pytest.raises(ConfigError, match="train.interface_lr_scaling"):
        config_from_dict(data)
    with pytest.raises(ConfigError, match="none or fan_in"):
        interface_param_groups(_pair_modules("hconv"), LR, "sqrt")

