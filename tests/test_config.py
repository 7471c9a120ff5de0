"""Config validation: unknown keys and wrong types name the key; overrides; path resolution; round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from speechfuse.config import Config, config_from_dict, config_to_yaml, load_config, parse_override
from speechfuse.data import Utterance
from speechfuse.errors import ConfigError
from speechfuse.tasks import get_task

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
task: classify
data: {train: train.csv, dev: dev.csv, test: test.csv, target: label}
upstreams: [{spec: whisper-tiny.en}, {spec: resemblyzer}]
align: {}
interface: {name: hconv}
downstream: {}
train: {max_steps: 1000, batch_seconds: 60, lr: 1.0e-3, interface_lr: 1.0e-2, seed: 0}
"""


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "sub" / "run.yaml"
    path.parent.mkdir()
    path.write_text(MINIMAL)
    return path


def test_minimal_schema_loads_with_defaults_and_resolved_paths(cfg_file):
    cfg = load_config(cfg_file)
    assert cfg.task == "classify" and [u.spec for u in cfg.upstreams] == ["whisper-tiny.en", "resemblyzer"]
    assert cfg.train.lr == 1e-3 and cfg.train.interface_lr == 1e-2 and cfg.train.max_steps == 1000
    assert cfg.data.train == str(cfg_file.parent / "train.csv")  # relative to the config file's folder
    # the default protocol (docs/plateau.md): layer norm where the interface takes it, fan-in lr scaling, clipping
    assert cfg.interface.name == "hconv" and cfg.interface.options() == {"layer_norm": True}
    assert cfg.train.interface_lr_scaling == "fan_in" and cfg.train.grad_clip == 1.0
    plain = load_config(cfg_file, ["interface.layer_norm=false", "train.interface_lr_scaling=none",
                                   "train.grad_clip=null"])
    assert plain.train.interface_lr_scaling == "none" and plain.train.grad_clip is None  # the old behaviour
    assert plain.interface.options() == {"layer_norm": False}
    assert load_config(cfg_file, ["interface.name=last"]).interface.options() == {}  # `last` takes no layer norm
    assert cfg.cache.dir == "auto" and cfg.cache.key == "sample" and cfg.train.skip_bad_rows is False


def test_overrides_are_yaml_scalars_and_nested(cfg_file):
    cfg = load_config(cfg_file, ["train.max_steps=5", "train.lr=3e-4", "interface.name=weighted_sum",
                                 "interface.output_dim=64", "downstream.dropout=0.1", "train.skip_bad_rows=true",
                                 "upstreams=[resemblyzer]", "align.frame_rate=50", "cache=off"])
    assert cfg.train.max_steps == 5 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string; we read a number
    assert cfg.interface.name == "weighted_sum" and cfg.interface.options() == {"output_dim": 64, "layer_norm": True}
    assert cfg.downstream == {"dropout": 0.1} and cfg.train.skip_bad_rows is True
    assert [u.spec for u in cfg.upstreams] == ["resemblyzer"] and cfg.align.options() == {"frame_rate": 50}
    assert cfg.cache.dir == "off"
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override('train.precision="16"') == (["train", "precision"], "16")  # quoted stays a string


@pytest.mark.parametrize("override, key, words", [
    ("train.maxsteps=3", "train.maxsteps", "max_steps"),         # unknown key lists the valid ones
    ("bogus=1", "bogus", "upstreams"),
    ("data.labels=x", "data.labels", "target"),
    ("upstreams=[{spec: a, opts: {}}]", "upstreams[0].opts", "options"),
    ("align.rate=50", "align.rate", "frame_rate"),
])
def test_unknown_key_is_named_with_the_valid_keys(cfg_file, override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, [override])
    msg = str(err.value)
    assert f"unknown key '{key}'" in msg and words in msg and str(cfg_file) in msg


@pytest.mark.parametrize("override, key, expected", [
    ("train.max_steps=many", "train.max_steps", "integer"),
    ("train.lr=fast", "train.lr", "number"),
    ("train.skip_bad_rows=perhaps", "train.skip_bad_rows", "true or false"),
    ("upstreams=whisper", "upstreams", "list"),
    ("data.train=[1]", "data.train", "string"),
    ("task=tts", "task", "asr"),
    ("train.max_steps=0", "train.max_steps", "greater than 0"),
    ("data.target=colour", "data.target", "text, label"),
])
def test_wrong_type_or_value_names_the_key(cfg_file, override, key, expected):
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, [override])
    assert f"'{key}'" in str(err.value) and expected in str(err.value)


def test_missing_keys_and_bad_files(tmp_path, cfg_file):
    data = yaml.safe_load(MINIMAL)
    del data["data"]["dev"]
    with pytest.raises(ConfigError, match=r"missing required key 'data\.dev'"):
        config_from_dict(data)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(cfg_file, ["train.max_steps"])
    with pytest.raises(ConfigError, match="'train.lr' is not a section"):
        load_config(cfg_file, ["train.lr.x=1"])


def test_yaml_round_trip(cfg_file, tmp_path):
    cfg = load_config(cfg_file, ["interface.output_dim=32", "train.devices=2"])
    again = tmp_path / "again.yaml"
    again.write_text(config_to_yaml(cfg))
    assert load_config(again) == cfg
    assert Config.model_validate(cfg.model_dump()) == cfg  # what the sweep does


@pytest.mark.parametrize("name", ["fsdd_speaker.yaml", "fsdd_digits_asr.yaml", "librispeech_hubert_wavlm.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(REPO / "configs" / name)
    if name.startswith("fsdd"):
        assert Path(cfg.data.train).is_file()  # the committed manifests of the bundled FSDD subset


def test_quoted_number_head_option_is_read_as_its_type(cfg_file):
    """Issue 8: `downstream.hidden_dim: "128"` crashed with a TypeError when the head was built."""
    cfg_file.write_text(MINIMAL.replace("downstream: {}", 'downstream: {hidden_dim: "128", dropout: "0.1"}'))
    cfg = load_config(cfg_file)
    assert cfg.downstream == {"hidden_dim": 128, "dropout": 0.1}  # only the keys given: defaults stay the task's
    task = get_task(cfg.task, **cfg.downstream).fit([Utterance("u1", "a.wav", label="a"),
                                                     Utterance("u2", "b.wav", label="b")])
    head = task.build_head(8)
    assert head.classifier[0].out_features == 128


@pytest.mark.parametrize("task, override, expected", [
    ("classify", 'downstream.hidden_dim="12x"', "key 'downstream.hidden_dim' must be an integer, got '12x'"),
    ("classify", "downstream.dropout=1.5", "key 'downstream.dropout': Input should be less than 1"),
    ("classify", "downstream.hidden_dim=0", "key 'downstream.hidden_dim': Input should be greater than or equal to 1"),
    ("classify", "downstream.hidden_dims=8",
     "unknown key 'downstream.hidden_dims'; valid keys here: hidden_dim, dropout"),
    ("asr", "downstream.bidirectional=perhaps", "key 'downstream.bidirectional' must be true or false"),
    ("asr", "downstream.hidden_dim=8", "valid keys here: proj_dim, hidden_size, num_layers, bidirectional, dropout"),
    ("asr", "downstream.head=gru", "key 'downstream.head': Input should be 'bilstm' or 'transformer'"),
    ("multilingual_asr", "downstream.attention_heads=0",
     "key 'downstream.attention_heads': Input should be greater than or equal to 1"),
])
def test_head_options_are_typed_per_task(cfg_file, task, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, [f"task={task}", override])
    assert expected in str(err.value) and str(cfg_file) in str(err.value)


def test_head_options_are_checked_again_when_the_task_changes(cfg_file):
    """Sweeps and --set may change `task` after `downstream` was written for another task."""
    cfg = load_config(cfg_file, ["downstream.hidden_dim=16"])
    with pytest.raises(ConfigError, match="unknown key 'downstream.hidden_dim'"):
        config_from_dict({**cfg.model_dump(), "task": "asr"})


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_configs_are_valid(path):
    """configs/paper: each loads, validates (head options typed per task) and builds its task's options."""
    cfg = load_config(path)
    assert cfg.task in ("asr", "multilingual_asr", "verify", "classify")
    get_task(cfg.task, **cfg.downstream)  # the head options are accepted by the task itself
    assert cfg.data.test is not None  # the paper's table reads test metrics
    assert cfg.data.train.startswith(str(path.parent / "data"))  # `speechfuse prepare ... --out configs/paper/data/...`


def test_paper_configs_cover_every_table_column():
    tasks = {p.stem: load_config(p).task for p in (REPO / "configs" / "paper").glob("*.yaml")}
    assert tasks == {"librispeech_asr": "asr", "mlsuperb_mono": "multilingual_asr", "mlsuperb_multi": "multilingual_asr",
                     "voxceleb1_sv": "verify", "iemocap_er": "classify"}


@pytest.mark.parametrize("name", ["mlsuperb_mono.yaml", "mlsuperb_multi.yaml"])
def test_mlsuperb_paper_configs_build_espnets_transformer_ctc_head(name):
    """ESPnet train_asr_s3prl_10min.yaml: linear 80, conv2d2, 2 blocks of 256 dims, 8 heads, 1024 FF, dropout 0.1."""
    from speechfuse.data import Utterance
    from speechfuse.tasks.asr import TransformerCtcHead

    cfg = load_config(REPO / "configs" / "paper" / name)
    head = get_task(cfg.task, **cfg.downstream).fit([Utterance("u", "a.wav", text="ab", language="eng")]).build_head(768)
    assert isinstance(head, TransformerCtcHead) and head.proj.out_features == 80 and head.subsample == "conv2d2"
    block = head.blocks[0]
    assert (len(head.blocks), block.qkv.in_features, block.heads) == (2, 256, 8)
    assert (block.ff[0].out_features, block.dropout.p) == (1024, 0.1)
