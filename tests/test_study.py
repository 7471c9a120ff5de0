"""The scaling study: subsets, depth-truncated stand-ins, parameter counts, the seed table and the figure.

The study's sweeps run with a fake trainer whose metric is a known function of (models, interface, depth,
seed), so the table's means and stds are checked against numbers computed here; tiny random transformers
models stand in for the upstreams (their parameters are counted for real). One short real run goes
through the CLI end to end.
"""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from speechfuse.cli import main
from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError
from speechfuse.experiments.study import (DEPTH_NOTE, model_subsets, parse_depths, parse_sizes, plot_scaling,
                              scaling_study)
from speechfuse.fusion.upstream import load_upstream
from helpers import StudyFakeTrainer as FakeTrainer, csv_rows, make_fsdd, save_tiny_model, study_accuracy as accuracy

SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"a": "hf:" + save_tiny_model("hubert", root / "a", num_hidden_layers=3),  # 4 hidden states
            "b": "hf:" + save_tiny_model("wav2vec2", root / "b", num_hidden_layers=2),  # 3 hidden states
            "a2": "hf:" + save_tiny_model("hubert", root / "a2", num_hidden_layers=2)}


def study_config(upstreams, tmp_path, **train):
    return config_from_dict({"task": "classify", "data": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                             "upstreams": upstreams, "interface": {"name": "weighted_sum"},
                             "train": {"max_steps": 2, **train}}, tmp_path)


def test_model_subsets_are_every_nonempty_subset():
    assert model_subsets(["a", "b", "c"]) == [["a"], ["b"], ["c"], ["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c"]]
    four = model_subsets(list("wxyz"))
    assert len(four) == 15 and len({tuple(s) for s in four}) == 15
    assert [len(s) for s in four] == sorted(len(s) for s in four)


def test_parse_depths_and_sizes():
    assert parse_depths(["whisper-tiny.en=5,3,4"]) == {"whisper-tiny.en": [3, 4, 5]}
    assert parse_sizes(["w=hf:org/tiny,hf:org/base"]) == {"w": ["hf:org/tiny", "hf:org/base"]}
    for bad, match in ((["whisper-tiny.en"], "UPSTREAM=K1"), (["whisper-tiny.en=a"], "whole numbers"),
                       (["x=0"], "at least 1"), (["x=2,2"], "distinct"), (["x=1", "x=2"], "twice"), (["=1"], "UPSTREAM")):
        with pytest.raises(ConfigError, match=match):
            parse_depths(bad)
    with pytest.raises(ConfigError, match="FAMILY=SPEC1"):
        parse_sizes(["w"])
    with pytest.raises(ConfigError, match="listed twice"):
        parse_sizes(["w=a,a"])


def truncated_count(spec: str, k: int) -> int:
    """The first k hidden states' weights, worked out from the full model: everything minus the encoder
    layers above k and the final layer norm these pre-norm models apply after their last layer."""
    full = load_upstream(spec)
    encoder = full.model.encoder
    dropped = list(encoder.layers[k - 1:]) + ([encoder.layer_norm] if k < full.num_layers else [])
    return sum(p.numel() for p in full.parameters()) - sum(p.numel() for m in dropped for p in m.parameters())


@pytest.mark.slow
def test_study_rows_counts_table_and_figure(tmp_path, tiny):
    cfg = study_config([tiny["a"], tiny["b"]], tmp_path)
    trainer = FakeTrainer()
    trainer.root = tmp_path / "study"
    numbers = scaling_study(cfg, tmp_path / "study", interfaces=["weighted_sum", "hconv"], seeds=SEEDS,
                            sizes={"hubert": [tiny["a2"], tiny["a"]]}, depths={tiny["a"]: [3, 4]},
                            select={"train.interface_lr": [1e-3, 1e-2]}, train_fn=trainer, progress=False)
    out = tmp_path / "study"
    # 3 subsets + 2 sizes + 2 depths, x 2 interfaces; each: 2 candidates on seed 0, then seeds 1 and 2
    assert len(numbers) == 14 and len(trainer.calls) == 14 * 4
    models = [r for r in numbers if r["axis"] == "models"]
    assert sorted((r["upstreams"].count("+") + 1, r["models"]) for r in models) == [(1, 1)] * 4 + [(2, 2)] * 2
    params = {s: load_upstream(tiny[s]).num_parameters() for s in ("a", "b", "a2")}
    spec_of = {v: k for k, v in tiny.items()}
    for r in models + [r for r in numbers if r["axis"] == "size"]:
        assert r["upstream_params"] == sum(params[spec_of[s]] for s in r["upstreams"].split("+"))
    assert params["a2"] < params["a"]

    rows = csv_rows(out / "scaling.csv")
    assert len(rows) == 14
    for row in rows:
        depth = int(row["layers"]) if row["layers"] else None
        values = [accuracy(int(row["models"]), row["interface"], depth, s) for s in SEEDS]
        assert float(row["test_accuracy_mean"]) == pytest.approx(statistics.mean(values))
        assert float(row["test_accuracy_std"]) == pytest.approx(statistics.stdev(values))
        assert float(row["test_macro_f1_mean"]) == pytest.approx(statistics.mean(values) / 2)
        assert row["seeds"] == "3"
        assert row["train.interface_lr"] == ("0.01" if row["interface"] == "weighted_sum" else "0.001")
        assert (row["note"] == DEPTH_NOTE) == (row["axis"] == "depth")
        if row["axis"] == "depth":
            assert row["upstreams"] == tiny["a"] and depth in (3, 4)
            assert int(row["upstream_params"]) == truncated_count(tiny["a"], depth)
    assert truncated_count(tiny["a"], 3) < truncated_count(tiny["a"], 4) == params["a"]

    md = (out / "scaling.md").read_text()
    assert "| train.interface_lr (chosen on dev) |" in md
    assert md.count(DEPTH_NOTE) >= 5  # four depth rows and the note under the table
    one = [statistics.mean(accuracy(2, "hconv", None, s) for s in SEEDS),
           statistics.stdev(accuracy(2, "hconv", None, s) for s in SEEDS)]
    assert f"| {one[0]:.4f} ± {one[1]:.4f} |" in md
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_has_one_line_per_interface_and_labels_the_stand_in(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr("speechfuse.experiments.study.save_figure", lambda fig, path: figures.append(fig))
    numbers = [{"axis": "models", "series": "subsets", "upstreams": u, "interface": i, "models": n,
                "upstream_params": p, "test_accuracy_mean": m, "test_accuracy_std": 0.01}
               for u, n, p, m in (("a", 1, 10, 0.5), ("b", 1, 20, 0.6), ("a+b", 2, 30, 0.7))
               for i in ("weighted_sum", "hconv")]
    numbers += [{"axis": "depth", "series": "a", "upstreams": "a", "interface": i, "models": 1, "upstream_params": p,
                 "test_accuracy_mean": 0.4, "test_accuracy_std": float("nan")} for p in (4, 8) for i in ("weighted_sum", "hconv")]
    plot_scaling(numbers, "test_accuracy", tmp_path / "f.png")
    left, right = figures[0].axes
    means = {line.get_label(): list(line.get_ydata()) for line in left.get_lines() if "mean over" in line.get_label()}
    assert means == {"weighted_sum (mean over subsets)": [0.55, 0.7], "hconv (mean over subsets)": [0.55, 0.7]}
    labels = right.get_legend_handles_labels()[1]
    assert sum(DEPTH_NOTE in label for label in labels) == 2
    assert right.get_xscale() == "log"


def test_bad_study_inputs_fail_before_training(tmp_path, tiny):
    cfg = study_config([tiny["a"]], tmp_path)
    trainer = FakeTrainer()
    trainer.root = tmp_path
    with pytest.raises(ConfigError, match=r"--depths .*=9.*max_layers must be a whole number from 1 to 4"):
        scaling_study(cfg, tmp_path / "s", interfaces=["weighted_sum"], depths={tiny["a"]: [2, 9]}, train_fn=trainer,
                      progress=False)
    with pytest.raises(ConfigError, match=r"--depths .*=2 with interface hconv: .*at least 3 layers.*drop that depth"):
        scaling_study(cfg, tmp_path / "s", depths={tiny["a"]: [2, 3]}, train_fn=trainer, progress=False)
    with pytest.raises(ConfigError, match="unknown interface.*nope"):
        scaling_study(cfg, tmp_path / "s", interfaces=["nope"], train_fn=trainer, progress=False)
    assert trainer.calls == []


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["study", "scaling", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and len(err.strip().splitlines()) == 1
    assert main(["study", "scaling", "configs/fsdd_speaker.yaml", "--depths", "whisper-tiny.en", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--depths 'whisper-tiny.en': expected UPSTREAM=K1" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_real_training_end_to_end(tmp_path, tiny, monkeypatch, speechfuse_home, capsys):
    import speechfuse.experiments.prune

    seeded = []  # the depth's cache entry is sliced from the full upstream's, cached by the subsets series
    real_seed = speechfuse.experiments.prune.seed_truncated_cache

    def spy(cfg, depths, *rest):
        copied = real_seed(cfg, depths, *rest)
        seeded.append((depths, copied))
        return copied

    monkeypatch.setattr(speechfuse.experiments.prune, "seed_truncated_cache", spy)

    manifests = make_fsdd(tmp_path / "corpus", takes=range(6))
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps({
        "task": "classify", "data": {k: str(v) for k, v in manifests.items()},
        "upstreams": [tiny["a"], tiny["b"]], "interface": {"name": "weighted_sum"},
        "downstream": {"hidden_dim": 8},
        "train": {"max_steps": 2, "batch_seconds": 2.5, "val_every_steps": 2, "progress_bar": False,
                  "importance": False, "accelerator": "cpu"}}))
    code = main(["study", "scaling", str(config), "--interfaces", "weighted_sum", "--seeds", "0",
                 "--depths", f"{tiny['a']}=2", "--out", str(tmp_path / "study")])
    assert code == 0
    printed, notes = capsys.readouterr()
    assert printed.strip() == (tmp_path / "study" / "scaling.md").read_text().strip()  # the table alone on stdout
    assert "4 rows; table" in notes
    rows = csv_rows(tmp_path / "study" / "scaling.csv")
    assert [(r["axis"], r["models"], r["layers"]) for r in rows] == [
        ("models", "1", ""), ("models", "1", ""), ("models", "2", ""), ("depth", "1", "2")]
    for r in rows:
        assert 0.0 <= float(r["test_accuracy_mean"]) <= 1.0
    assert int(rows[3]["upstream_params"]) == truncated_count(tiny["a"], 2)
    assert list((speechfuse_home / "cache").iterdir())  # one feature cache for every series: the user's
    assert seeded == [([2], 24)]  # every utterance of the 3 splits (2 digits x 2 speakers x 6 takes)


def test_bundled_parameter_counts_follow_the_kept_layers():
    resemblyzer = load_upstream("resemblyzer")
    for k in (1, 2, 3):  # the LSTM layers kept; the final Linear only serves embed()
        expected = sum(p.numel() for layer in resemblyzer.lstm[:k] for p in layer.parameters())
        assert load_upstream("resemblyzer", max_layers=k).num_parameters() == expected
    counts = [load_upstream("speech-embedding", max_layers=k).num_parameters() for k in (1, 2, 5, 10)]
    assert counts[0] == 0  # layer 0 is the pooled mel: the embedding network never runs
    assert counts == sorted(counts) and len(set(counts)) == 4
    onnx = pytest.importorskip("onnx")  # an independent parser for the full count (`speechfuse[export]`)
    from speechfuse.fusion.upstream.bundled import SPEECH_EMBEDDING_HINT, package_file

    graph = onnx.load(str(package_file("openwakeword", "resources/models/embedding_model.onnx",
                                       SPEECH_EMBEDDING_HINT))).graph
    assert counts[-1] == sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


class FailingTrainer(FakeTrainer):
    """FakeTrainer whose runs of one upstream set fail."""

    def __init__(self, fail_on: str) -> None:
        super().__init__()
        self.fail_on = fail_on

    def __call__(self, cfg, run_dir):
        if run_dir.name.startswith(self.fail_on + "__"):
            raise RuntimeError("boom")
        return super().__call__(cfg, run_dir)


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_other_series(tmp_path, tiny):
    from speechfuse.experiments.sweep import SweepFailed

    cfg = study_config([tiny["a"], tiny["b"]], tmp_path)
    trainer = FailingTrainer(fail_on=tiny["b"].removeprefix("hf:").replace("/", "-").strip("-"))
    trainer.root = tmp_path / "study"
    with pytest.raises(SweepFailed, match=r"scaling study: 1 run\(s\) failed \(the finished rows are in .*scaling.md\)"
                                          r": sweep: 1 run\(s\) failed") as err:
        scaling_study(cfg, tmp_path / "study", interfaces=["weighted_sum"], seeds=[0], depths={tiny["a"]: [2]},
                      train_fn=trainer, progress=False)
    assert len(err.value.failed) == 1 and err.value.failed[0].startswith("models/")
    rows = csv_rows(tmp_path / "study" / "scaling.csv")
    assert [(r["axis"], r["upstreams"]) for r in rows] == [("models", tiny["a"]), ("models", f"{tiny['a']}+{tiny['b']}"),
                                                           ("depth", tiny["a"])]  # the depth series ran after it
