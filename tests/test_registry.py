"""One registry mechanism: users add their own upstream, interface or task through the same decorator, which
reads the component's `name` (and checks its `Options` model)."""
from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel

import speechfuse as sf
from speechfuse.errors import ConfigError, UpstreamError
from speechfuse.fusion.interfaces import INTERFACES, register_interface
from speechfuse.registry import Registry
from speechfuse.tasks import TASKS, get_task, list_tasks


class Widget:
    name = "mine"
    Options = BaseModel


def test_registry_reads_the_name_and_names_the_known_entries():
    reg = Registry("widget", ConfigError, ["speechfuse.tasks.asr"])
    assert reg.register(Widget) is Widget
    assert reg.get("mine") is Widget
    with pytest.raises(ConfigError, match="unknown widget 'other'; known: mine.*--plugin MODULE"):
        reg.get("other")


def test_registering_needs_a_name_and_an_options_model_and_refuses_a_clash():
    reg = Registry("widget", ConfigError)
    with pytest.raises(ConfigError, match="`name` attribute"):
        reg.register("mine")  # the old @register("name") form
    with pytest.raises(ConfigError, match="`name` attribute"):
        reg.register(type("Nameless", (), {"Options": BaseModel}))
    with pytest.raises(ConfigError, match="'mine'.*`Options` must be a pydantic model"):
        reg.register(type("NoOptions", (), {"name": "mine", "Options": dict}))
    reg.register(Widget)
    reg.register(Widget)  # the same class again (a module imported twice) is fine
    with pytest.raises(ConfigError, match="widget 'mine' is already registered by .*Widget; give .*Other"):
        reg.register(type("Other", (), {"name": "mine", "Options": BaseModel}))


def test_a_user_interface_registers_and_builds_like_a_builtin():
    @register_interface
    class MeanOfLayers(sf.Interface):
        name = "mean_of_layers_test"

        def fuse(self, stack: torch.Tensor) -> torch.Tensor:
            return stack.mean(dim=(0, 1))

    try:
        interface = sf.build_interface("mean_of_layers_test", num_layers=3, hidden_size=4)
        states = [sf.HiddenStates(torch.ones(3, 2, 5, 4), torch.tensor([5, 3]), 50.0, "x")]
        feats, lengths = interface(states)
        assert feats.shape == (2, 5, 4) and lengths.tolist() == [5, 3]
        assert feats[1, 3:].abs().sum() == 0 and feats[0].eq(1).all()  # padded frames zeroed, valid ones averaged
        assert "mean_of_layers_test" in sf.list_interfaces()
    finally:
        INTERFACES._entries.pop("mean_of_layers_test")


def test_unknown_names_list_what_is_known():
    with pytest.raises(ConfigError, match="unknown interface 'hcnv'; known: .*hconv"):
        sf.build_interface("hcnv", num_layers=3, hidden_size=4)
    with pytest.raises(UpstreamError, match="unknown upstream 'wavlm'; known: .*resemblyzer.*hf:"):
        sf.load_upstream("wavlm")
    with pytest.raises(ConfigError, match="unknown task 'translate'; known: asr, classify"):
        get_task("translate")
    assert list_tasks() == sorted(TASKS.names()) and {"asr", "classify"} <= set(list_tasks())
