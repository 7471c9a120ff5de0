"""Typed options: every upstream, the Aligner, every interface and every task head has an `Options` model;
the config checks them all when it loads, with errors naming the dotted key."""
from __future__ import annotations

import inspect

import pytest

import speechfuse as sf
from speechfuse.fusion.align import Aligner
from speechfuse.config import config_from_dict, config_to_dict
from speechfuse.errors import ConfigError
from speechfuse.fusion.interfaces import INTERFACES
from speechfuse.options import ComponentOptions
from speechfuse.tasks import TASKS
from speechfuse.fusion.upstream import UPSTREAMS, upstream_options
from speechfuse.fusion.upstream.bundled import ResemblyzerUpstream, SpeechEmbeddingUpstream
from speechfuse.fusion.upstream.hf import HFOptions, HFSSLUpstream, HFWhisperUpstream, load_hf_upstream
from helpers import save_tiny_model

BASE = {"task": "classify", "data": {"train": "t.csv", "dev": "d.csv"}, "upstreams": ["resemblyzer"]}


def _defaults(function) -> dict:
    return {k: p.default for k, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("options, builder", [
    (upstream_options("hf:any"), load_hf_upstream),
    (upstream_options("whisper-tiny.en"), load_hf_upstream),
    (HFSSLUpstream.Options, HFSSLUpstream.__init__),
    (HFWhisperUpstream.Options, HFWhisperUpstream.__init__),
    (ResemblyzerUpstream.Options, ResemblyzerUpstream.__init__),
    (SpeechEmbeddingUpstream.Options, SpeechEmbeddingUpstream.__init__),
    (Aligner.Options, Aligner.__init__),
])
def test_options_defaults_are_the_constructors_defaults(options, builder):
    """The config builds through the Options model, Python code through the constructor: same defaults."""
    fields = {k: f.default for k, f in options.model_fields.items()}
    assert fields == _defaults(builder)


def test_every_registered_component_has_a_name_and_an_options_model():
    for registry in (UPSTREAMS, INTERFACES, TASKS):
        for name in registry.names():
            entry = registry.get(name)
            assert entry.name == name and issubclass(entry.Options, ComponentOptions)


def test_an_upstream_option_is_checked_before_any_weights_load(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=r"unknown option\(s\) layers; valid options: max_layers, max_seconds"):
        sf.load_upstream(f"hf:{missing}", layers=[1, 2])
    with pytest.raises(ConfigError, match="option window_seconds: Input should be greater than 0"):
        sf.load_upstream("resemblyzer", window_seconds=-1)


@pytest.mark.parametrize("name, options, words", [
    ("weighted_sum", {"layer_norm": 1}, "layer_norm: Input should be a valid boolean"),
    ("gumd", {"anneal_steps": True}, "anneal_steps: Input should be a valid integer"),
    ("gumd", {"tau_start": "1"}, "tau_start: Input should be a valid number"),
    ("group_ws", {"groups": 2.0}, "groups: Input should be a valid integer"),
    ("cls_pool", {"dropout": 1.0}, "dropout: Input should be less than 1"),
    ("chconv", {"projection": "middle"}, "projection: Input should be 'first_conv' or 'per_layer_linear'"),
    ("last", {"output_dim": 0}, "output_dim: Input should be greater than or equal to 1"),
])
def test_interface_options_are_typed_strictly(name, options, words):
    """As the hand-written checks were: a flag is true or false, an integer is not a bool or a float."""
    with pytest.raises(ConfigError, match=f"interface '{name}': option {words}"):
        sf.build_interface(name, num_layers=5, hidden_size=8, num_models=2, **options)


def test_the_config_checks_every_components_options_and_names_the_key():
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "upstreams": [{"spec": "resemblyzer", "options": {"max_layer": 2}}],
                          "align": {"frame_rate": "fastest"},
                          "interface": {"name": "gumd", "tau_endd": 1, "anneal_steps": 2.5}})
    lines = str(err.value).splitlines()[1:]
    assert sorted(line.strip() for line in lines) == sorted([
        "unknown key 'upstreams[0].options.max_layer'; valid keys here: trainable, max_layers, weights, "
        "normalize_volume, window_seconds",
        "key 'align.frame_rate': must be 'max', 'min' or a positive number (got 'fastest')",
        "key 'interface.anneal_steps' must be an integer, got 2.5",
        "unknown key 'interface.tau_endd'; valid keys here: name, output_dim, tau_start, tau_end, anneal_steps, "
        "init_keep_logit",
    ])


def test_unknown_component_names_are_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"key 'interface.name': unknown interface 'hcnv'; known: .*hconv.*--plugin"):
        config_from_dict({**BASE, "interface": {"name": "hcnv"}})
    with pytest.raises(ConfigError, match=r"key 'upstreams\[1\].spec': unknown upstream 'wavlm'; .*hf:.*--plugin"):
        config_from_dict({**BASE, "upstreams": ["resemblyzer", "wavlm"]})


def test_the_config_keeps_only_the_options_given_typed():
    cfg = config_from_dict({**BASE, "upstreams": [{"spec": "resemblyzer", "options": {"window_seconds": 5}}],
                            "align": {"frame_rate": 50, "length": None}, "interface": {"name": "chconv"}})
    assert cfg.upstreams[0].options == {"window_seconds": 5.0}
    assert cfg.align.options() == {"frame_rate": 50.0}  # null keeps the Aligner's default
    # nothing given for chconv: only the default protocol's per-layer layer norm (docs/plateau.md) is added
    assert cfg.interface.options() == {"layer_norm": True}
    assert config_from_dict(cfg.model_dump()) == cfg
    assert "plugins" not in config_to_dict(cfg)  # built-in components only: saved as before plug-ins existed
    assert config_to_dict(config_from_dict({**BASE, "plugins": ["json"]}))["plugins"] == ["json"]


def test_each_hf_family_owns_its_options_and_a_wrong_one_is_refused_before_the_weights_load(tmp_path,
                                                                                                monkeypatch):
    """hf: checkpoints are typed by their family's Options, read from config.json: whisper_mode belongs to
    Whisper, so a HuBERT given it is refused naming the dotted key, and a typo in a Whisper option too."""
    import speechfuse.fusion.upstream.hf as hf

    hubert, whisper = save_tiny_model("hubert", tmp_path / "hubert"), save_tiny_model("whisper", tmp_path / "whisper")
    assert upstream_options(f"hf:{hubert}") is HFSSLUpstream.Options
    assert upstream_options(f"hf:{whisper}") is HFWhisperUpstream.Options
    assert upstream_options("whisper-tiny.en") is HFWhisperUpstream.Options
    assert upstream_options(f"hf:{tmp_path / 'not-here'}") is HFOptions  # family unknown until it is there
    assert "whisper_mode" not in HFSSLUpstream.Options.model_fields

    loads = []
    monkeypatch.setattr(hf, "_load_weights", lambda *args: loads.append(args))
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "upstreams": [{"spec": f"hf:{hubert}", "options": {"whisper_mode": "pad30"}},
                                                {"spec": f"hf:{whisper}", "options": {"whisper_mod": "pad30"}}]})
    lines = sorted(line.strip() for line in str(err.value).splitlines()[1:])
    assert lines == ["unknown key 'upstreams[0].options.whisper_mode'; valid keys here: trainable, max_layers, "
                     "max_seconds",
                     "unknown key 'upstreams[1].options.whisper_mod'; valid keys here: trainable, max_layers, "
                     "max_seconds, whisper_mode"]
    with pytest.raises(ConfigError, match=r"unknown option\(s\) whisper_mode; valid options: max_layers, "
                                          r"max_seconds, trainable$"):
        sf.load_upstream(f"hf:{hubert}", whisper_mode="trim")
    assert loads == []
