"""sweep: grid parsing/expansion, run naming, resume, results table (fake trainer and the real runner)."""
from __future__ import annotations

import csv
import json
import re

import pytest

from speechfuse.errors import ConfigError
from speechfuse.experiments.sweep import combo_config, expand_grid, parse_grid, run_name, run_sweep
from helpers import FakeTrainer, fsdd_takes, SWEEP_BASE

def test_parse_grid():
    grid = parse_grid(["interface.name=weighted_sum,hconv, chconv", "upstreams=a+b,c", "train.lr=1e-3,0.01"])
    assert grid == {
        "interface.name": ["weighted_sum", "hconv", "chconv"],
        "upstreams": [["a", "b"], ["c"]],
        "train.lr": [0.001, 0.01],
    }
    with pytest.raises(ConfigError, match="KEY=V1"):
        parse_grid(["interface.name"])
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["a=1", "a=2"])


def test_expand_grid_and_names():
    combos = expand_grid({"upstreams": [["a"], ["a", "hf:org/m"]], "interface.name": ["ws", "hconv"]})
    assert len(combos) == 4
    assert [run_name(c) for c in combos] == ["a__ws", "a__hconv", "a+org-m__ws", "a+org-m__hconv"]
    assert run_name({"interface.name": "ws", "train.lr": 0.01}) == "ws__lr=0.01"
    with pytest.raises(ConfigError, match="non-empty list"):
        expand_grid({"interface.name": []})
    with pytest.raises(ConfigError, match="list of specs"):
        expand_grid({"upstreams": ["a"]})


def test_a_list_of_grids_is_the_union_of_their_combinations(tmp_path):
    grids = [{"upstreams": [["a"], ["a", "b"]], "interface.name": ["ws", "hconv"]},
             {"upstreams": [["a", "b"]], "interface.name": ["chconv"]}]
    assert [run_name(c) for c in expand_grid(grids)] == ["a__ws", "a__hconv", "a+b__ws", "a+b__hconv", "a+b__chconv"]
    with pytest.raises(ConfigError, match="empty list of grids"):
        expand_grid([])
    trainer = FakeTrainer()
    run_sweep(SWEEP_BASE, [{"interface.name": ["weighted_sum"]}, {"interface.name": ["hconv"], "train.lr": [0.1]}], tmp_path,
              train_fn=trainer, progress=False, plots=False)
    assert trainer.calls == ["weighted_sum", "hconv__lr=0.1"]
    with open(tmp_path / "results.csv", newline="") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["weighted_sum", "hconv__lr=0.1"]
    with pytest.raises(ConfigError, match="duplicate run names"):
        run_sweep(SWEEP_BASE, [{"interface.name": ["ws"]}, {"interface.name": ["ws"]}], tmp_path / "dup",
                  train_fn=FakeTrainer(), progress=False)
    with pytest.raises(ConfigError, match="both grid and select keys"):
        run_sweep(SWEEP_BASE, [{"interface.name": ["ws"]}, {"train.lr": [0.1]}], tmp_path / "sel",
                  select={"train.lr": [0.1, 0.2]}, train_fn=FakeTrainer(), progress=False)


def test_combo_config_keeps_options_and_sets_cache():
    out = combo_config(SWEEP_BASE, {"upstreams": ["a", "b"], "interface.name": "hconv", "train.lr": 0.1}, "/c")
    assert out["upstreams"] == [{"spec": "a", "options": {"x": 1}}, {"spec": "b"}]
    assert out["interface"]["name"] == "hconv" and out["train"]["lr"] == 0.1 and out["cache"] == "/c"
    assert SWEEP_BASE["interface"]["name"] == "weighted_sum"  # base untouched


@pytest.mark.slow
def test_sweep_writes_table_and_resumes(tmp_path):
    grid = {"upstreams": [["a"], ["a", "b"]], "interface.name": ["weighted_sum", "hconv"]}
    trainer = FakeTrainer()
    rows = run_sweep(SWEEP_BASE, grid, tmp_path, train_fn=trainer, progress=False)
    assert trainer.calls == ["a__weighted_sum", "a__hconv", "a+b__weighted_sum", "a+b__hconv"]
    assert trainer.cache == "auto"  # resolved by the runner, as `train` resolves it (the user's cache)
    assert [r["interface_params"] for r in rows] == [3, 1000, 6, 2000]
    assert rows[2]["upstreams"] == "a+b" and rows[2]["interface"] == "weighted_sum"
    assert rows[3]["dev_accuracy"] == pytest.approx(0.7) and rows[3]["test_macro_f1"] == 0.3
    with open(tmp_path / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["run"] for t in table] == ["a__weighted_sum", "a__hconv", "a+b__weighted_sum", "a+b__hconv"]
    assert "| a+b__hconv | a+b | hconv | 2000 |" in (tmp_path / "results.md").read_text()
    # each run's own figure, plus the side-by-side layer figure (no comparison: these runs have no per-utterance results)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted([f"{r['run']}.png" for r in rows]
                                                                              + ["layers.png"])

    # resume: nothing re-runs, the same rows come back
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/metrics.json")}
    again = FakeTrainer()
    rows2 = run_sweep(SWEEP_BASE, grid, tmp_path, train_fn=again, progress=False)
    assert again.calls == [] and rows2 == rows
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/metrics.json")}

    # a grown grid runs only the new combinations
    grid2 = {"upstreams": [["a"], ["a", "b"], ["b"]], "interface.name": ["weighted_sum", "hconv"]}
    more = FakeTrainer()
    rows3 = run_sweep(SWEEP_BASE, grid2, tmp_path, train_fn=more, progress=False)
    assert more.calls == ["b__weighted_sum", "b__hconv"] and len(rows3) == 6


def test_sweep_crash_keeps_finished_rows_then_resumes(tmp_path):
    grid = {"interface.name": ["weighted_sum", "hconv"]}
    with pytest.raises(RuntimeError, match="boom"):  # --fail-fast; the default goes on (test_runs.py)
        run_sweep(SWEEP_BASE, grid, tmp_path, train_fn=FakeTrainer(fail_on="hconv"), progress=False, keep_going=False)
    with open(tmp_path / "results.csv", newline="") as f:
        assert [t["run"] for t in csv.DictReader(f)] == ["weighted_sum"]
    trainer = FakeTrainer()
    rows = run_sweep(SWEEP_BASE, grid, tmp_path, train_fn=trainer, progress=False)
    assert trainer.calls == ["hconv"] and len(rows) == 2


def test_sweep_cache_off_and_named(tmp_path):
    trainer = FakeTrainer()
    run_sweep({**SWEEP_BASE, "cache": "off"}, {"interface.name": ["weighted_sum"]}, tmp_path / "a", train_fn=trainer,
              progress=False)
    assert trainer.cache == "off"
    run_sweep({**SWEEP_BASE, "cache": str(tmp_path / "mine")}, {"interface.name": ["weighted_sum"]}, tmp_path / "b",
              train_fn=trainer, progress=False)
    assert trainer.cache == str(tmp_path / "mine")


def test_combo_config_on_a_real_config(tmp_path):
    from speechfuse.config import config_from_dict

    cfg = config_from_dict({"task": "classify", "data": {"train": "t.csv", "dev": "d.csv"},
                            "upstreams": [{"spec": "resemblyzer", "options": {"trainable": False}}],
                            "interface": {"name": "hconv", "layer_norm": True}}, tmp_path)
    out = combo_config(cfg, {"upstreams": ["resemblyzer", "speech-embedding"], "interface.name": "chconv"},
                       str(tmp_path / "c"))
    assert type(out) is type(cfg)
    assert [u.spec for u in out.upstreams] == ["resemblyzer", "speech-embedding"]
    assert out.upstreams[0].options == {"trainable": False}
    assert out.interface.name == "chconv" and out.interface.options() == {"layer_norm": True}
    assert out.cache.dir == str(tmp_path / "c") and out.data.train == str(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="train.nope"):
        combo_config(cfg, {"train.nope": 1}, None)


@pytest.mark.parametrize("grid, key", [
    # the 3rd combination names an option hconv does not take (layer_norm is weighted_sum's and hconv's)
    ({"interface.name": ["weighted_sum", "hconv", "group_ws"], "interface.layer_norm": [True]},
     "interface.layer_norm"),
    # an upstream option's typo in the 3rd combination of an upstream grid
    ({"upstreams": [["resemblyzer"], ["speech-embedding"], [{"spec": "resemblyzer", "options": {"max_layer": 2}}]]},
     "upstreams[0].options.max_layer"),
])
def test_a_typo_in_any_grid_combination_is_refused_before_the_first_run(tmp_path, grid, key):
    from speechfuse.config import config_from_dict

    cfg = config_from_dict({"task": "classify", "data": {"train": "t.csv", "dev": "d.csv"},
                            "upstreams": ["resemblyzer"], "interface": {"name": "weighted_sum"}}, tmp_path)
    trainer = FakeTrainer()
    with pytest.raises(ConfigError, match=rf"unknown key '{re.escape(key)}'; valid keys here: "):
        run_sweep(cfg, grid, tmp_path / "sweep", train_fn=trainer, progress=False, plots=False)
    assert trainer.calls == [] and not (tmp_path / "sweep" / "runs").exists()


@pytest.mark.slow
def test_real_sweep_end_to_end_resumes(tmp_path, speechfuse_home):
    """The real runner on real bundled upstreams and real FSDD clips (a few clips, 2 steps per run)."""
    from speechfuse.config import config_from_dict
    from speechfuse.training.runner import train

    # speaker ID on 12 clips a split: digits 0 and 1 of the 6 speakers, one take each
    manifests = fsdd_takes(tmp_path / "data", {"train": [10], "dev": [5], "test": [0]}, digits="01")
    cfg = config_from_dict({
        "task": "classify",
        "data": {k: str(v) for k, v in manifests.items()} | {"target": "speaker"},
        "upstreams": ["speech-embedding"],
        "train": {"max_steps": 2, "batch_seconds": 4, "val_every_steps": 2, "progress_bar": False,
                  "importance": False, "accelerator": "cpu"},
    })
    calls = []

    def counting_train(run_cfg, run_dir):
        calls.append(run_dir.name)
        return train(run_cfg, run_dir)

    grid = {"upstreams": [["speech-embedding"], ["speech-embedding", "resemblyzer"]],
            "interface.name": ["weighted_sum", "hconv"]}
    rows = run_sweep(cfg, grid, tmp_path / "sweep", train_fn=counting_train, progress=False)
    assert calls == ["speech-embedding__weighted_sum", "speech-embedding__hconv",
                     "speech-embedding+resemblyzer__weighted_sum", "speech-embedding+resemblyzer__hconv"]
    # one shared cache: one entry per upstream, in the user's cache ($SPEECHFUSE_HOME/cache)
    entries = sorted(p.name.split("-")[0] for p in (speechfuse_home / "cache").iterdir() if p.is_dir())
    assert entries == ["resemblyzer", "speech"]
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["dev_macro_f1"] <= 1.0
        assert r["interface_params"] > 0
    assert rows[0]["interface_params"] == 10  # speech-embedding: 10 layers, one weight each
    assert rows[3]["interface_params"] > rows[2]["interface_params"]
    with open(tmp_path / "sweep" / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("runs/*/metrics.json")}
    calls.clear()
    assert run_sweep(cfg, grid, tmp_path / "sweep", train_fn=counting_train, progress=False) == rows
    assert calls == []
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("runs/*/metrics.json")}


class SeededTrainer(FakeTrainer):
    """Test accuracy depends on the seed: 0.6, 0.7, 0.8 for seeds 0, 1, 2."""

    def __call__(self, cfg, run_dir):
        metrics = super().__call__(cfg, run_dir)
        metrics["test"]["accuracy"] = 0.6 + 0.1 * cfg["train"]["seed"]
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


def test_sweep_over_seeds_reports_mean_and_std(tmp_path):
    trainer = SeededTrainer()
    rows = run_sweep(SWEEP_BASE, {"interface.name": ["weighted_sum", "hconv"]}, tmp_path, seeds=[0, 1, 2],
                     train_fn=trainer, progress=False, plots=False)
    assert trainer.calls == [f"{i}__seed={s}" for i in ("weighted_sum", "hconv") for s in (0, 1, 2)]
    with open(tmp_path / "results.csv", newline="") as f:
        per_seed = list(csv.DictReader(f))
    assert [(r["config"], r["seed"]) for r in per_seed] == [(c, str(s)) for c in ("weighted_sum", "hconv") for s in range(3)]
    with open(tmp_path / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["config"] for r in summary] == ["weighted_sum", "hconv"] and summary[0]["seeds"] == "3"
    assert float(summary[0]["test_accuracy_mean"]) == pytest.approx(0.7)
    assert float(summary[0]["test_accuracy_std"]) == pytest.approx(0.1)  # sample std of 0.6, 0.7, 0.8
    assert float(summary[0]["test_macro_f1_std"]) == 0.0
    assert "0.7000 ± 0.1000" in (tmp_path / "results.md").read_text()
    assert len(rows) == 6
    with pytest.raises(ConfigError, match="not both"):
        run_sweep(SWEEP_BASE, {"train.seed": [0, 1]}, tmp_path / "x", seeds=[0], train_fn=trainer, progress=False)


class LrTrainer(FakeTrainer):
    """Dev accuracy peaks at interface_lr 3e-4 for weighted_sum and at 1e-3 for hconv; dev WER (asr) is
    1 - that accuracy, so selection on WER must pick the same values by taking the lowest."""

    BEST = {"weighted_sum": 3e-4, "hconv": 1e-3}

    def __call__(self, cfg, run_dir):
        metrics = super().__call__(cfg, run_dir)
        lr = cfg["train"]["interface_lr"]
        accuracy = 0.9 - abs(lr - self.BEST[cfg["interface"]["name"]]) * 100
        metrics["dev"] = {"accuracy": accuracy, "wer": 1 - accuracy}
        metrics["test"]["accuracy"] = accuracy + 0.01 * cfg["train"]["seed"]
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


@pytest.mark.parametrize("task", ["classify", "asr"])
def test_select_picks_the_best_dev_candidate_then_runs_the_seeds(tmp_path, task):
    base = {**SWEEP_BASE, "task": {"name": task}}
    trainer = LrTrainer()
    rows = run_sweep(base, {"interface.name": ["weighted_sum", "hconv"]}, tmp_path, seeds=[0, 1],
                     select={"train.interface_lr": [1e-4, 3e-4, 1e-3]}, train_fn=trainer, progress=False, plots=False)
    # 3 candidates on seed 0, then seed 1 at the choice (seed 0 at the choice is the candidate's own run)
    assert trainer.calls == ["weighted_sum__interface_lr=0.0001__seed=0", "weighted_sum__interface_lr=0.0003__seed=0",
                             "weighted_sum__interface_lr=0.001__seed=0", "weighted_sum__interface_lr=0.0003__seed=1",
                             "hconv__interface_lr=0.0001__seed=0", "hconv__interface_lr=0.0003__seed=0",
                             "hconv__interface_lr=0.001__seed=0", "hconv__interface_lr=0.001__seed=1"]
    assert [(r["interface"], r["train.interface_lr"], r["seed"]) for r in rows] == [
        ("weighted_sum", "0.0003", 0), ("weighted_sum", "0.0003", 1), ("hconv", "0.001", 0), ("hconv", "0.001", 1)]
    with open(tmp_path / "selection.csv", newline="") as f:
        chosen = [(r["config"], r["train.interface_lr"]) for r in csv.DictReader(f) if r["chosen"] == "True"]
    assert chosen == [("weighted_sum", "0.0003"), ("hconv", "0.001")]
    again = LrTrainer()
    run_sweep(base, {"interface.name": ["weighted_sum", "hconv"]}, tmp_path, seeds=[0, 1],
              select={"train.interface_lr": [1e-4, 3e-4, 1e-3]}, train_fn=again, progress=False, plots=False)
    assert again.calls == []  # a rerun resumes every finished run


def test_select_refuses_a_key_that_is_also_compared(tmp_path):
    with pytest.raises(ConfigError, match="both grid and select keys"):
        run_sweep(SWEEP_BASE, {"train.lr": [0.1]}, tmp_path, select={"train.lr": [0.1, 0.2]}, train_fn=FakeTrainer(),
                  progress=False)


def test_a_data_folder_value_is_one_fold(tmp_path):
    from speechfuse.config import config_from_dict

    for k in (1, 2):
        (tmp_path / f"fold{k}").mkdir()
        for split in ("train", "dev", "test"):
            (tmp_path / f"fold{k}" / f"{split}.csv").write_text("id,path,label\n")
    cfg = config_from_dict({"task": "classify", "data": {"train": "t.csv", "dev": "d.csv", "target": "label"},
                            "upstreams": [{"spec": "resemblyzer"}]}, tmp_path)
    grid = parse_grid([f"data={tmp_path / 'fold1'},{tmp_path / 'fold2'}"])
    runs = [combo_config(cfg, combo, None) for combo in expand_grid(grid)]
    assert [r.data.test for r in runs] == [str(tmp_path / f"fold{k}" / "test.csv") for k in (1, 2)]
    assert runs[1].data.train == str(tmp_path / "fold2" / "train.csv") and runs[1].data.target == "label"
    assert len({run_name(c) for c in expand_grid(grid)}) == 2
    (tmp_path / "fold2" / "dev.csv").unlink()
    with pytest.raises(ConfigError, match="dev.csv not found"):
        combo_config(cfg, {"data": str(tmp_path / "fold2")}, None)


class UtteranceTrainer(FakeTrainer):
    """Also writes what the runner writes for per-utterance results: task.json and utterances_test.jsonl.
    Over 200 test utterances a run errs on the first WRONG[run] of them (seed 1 on one more), so every run
    errs on a superset of the best run's utterances."""

    WRONG = {"a__weighted_sum": 20, "a__hconv": 22, "a+b__weighted_sum": 60, "a+b__hconv": 80}

    def __call__(self, cfg, run_dir):
        from speechfuse.training.utterances import write_utterances

        metrics = super().__call__(cfg, run_dir)
        wrong = self.WRONG[run_dir.name.split("__seed")[0]] + cfg["train"].get("seed", 0)
        errors = [int(i < wrong) for i in range(200)]
        (run_dir / "task.json").write_text(json.dumps({"name": "classify"}))
        write_utterances(run_dir, "test", [f"u{i}" for i in range(200)], ["p"] * 200, ["r"] * 200, errors, [1] * 200)
        metrics["test"]["accuracy"] = 1 - wrong / 200
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


GRID = {"upstreams": [["a"], ["a", "b"]], "interface.name": ["weighted_sum", "hconv"]}


def test_sweep_marks_rows_not_distinguishable_from_the_best(tmp_path):
    run_sweep(SWEEP_BASE, GRID, tmp_path, train_fn=UtteranceTrainer(), progress=False, plots=False)
    with open(tmp_path / "results.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    # 2 extra errors in 200 utterances are within the noise; 40 and 60 are not
    assert {k: r["tied_with_best"] for k, r in rows.items()} == {
        "a__weighted_sum": "best", "a__hconv": "yes", "a+b__weighted_sum": "no", "a+b__hconv": "no"}
    assert rows["a__weighted_sum"]["vs_best_p"] == "" and float(rows["a__hconv"]["vs_best_p"]) >= 0.05
    assert float(rows["a+b__weighted_sum"]["vs_best_p"]) < 0.05
    assert "tied_with_best" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_sweep_draws_the_comparison_and_layer_figures(tmp_path):
    import numpy as np
    from matplotlib.image import imread

    run_sweep(SWEEP_BASE, GRID, tmp_path, seeds=[0, 1], train_fn=UtteranceTrainer(), progress=False, plots=True)
    image = imread(tmp_path / "plots" / "comparison.png")
    assert image.shape[0] >= 150 and image.shape[1] >= 500  # one row per configuration
    assert float(np.std(image[..., :3])) > 0.05  # not blank

    from speechfuse.experiments.sweep_figures import plot_layer_weights

    png = plot_layer_weights([("a", {"layer_matrix": [[0.1, 0.5, 0.4]]}),
                              ("b", {"layer_matrix": [[0.3, 0.3], [0.2, 0.2]]})], tmp_path / "layers.png")
    wide = imread(png)
    assert wide.shape[1] > wide.shape[0] and float(np.std(wide[..., :3])) > 0.05  # two panels side by side


def test_sweep_over_seeds_pools_the_seeds_per_utterance(tmp_path):
    from speechfuse.training.utterances import metric_ci

    run_sweep(SWEEP_BASE, GRID, tmp_path, seeds=[0, 1], train_fn=UtteranceTrainer(), progress=False, plots=False)
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert [rows[k]["tied_with_best"] for k in ("a__weighted_sum", "a__hconv", "a+b__weighted_sum")] == ["best", "yes", "no"]
    # pooled: per utterance, errors and totals summed over seeds 0 (20 wrong) and 1 (21 wrong)
    pooled = [2] * 20 + [1] + [0] * 179
    low, high = metric_ci(pooled, [2] * 200, higher_is_better=True)
    assert float(rows["a__weighted_sum"]["test_ci_low_accuracy"]) == low
    assert float(rows["a__weighted_sum"]["test_ci_high_accuracy"]) == high
    assert low < float(rows["a__weighted_sum"]["test_accuracy_mean"]) < high
    assert f"[{low:.4f}, {high:.4f}]" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_parallel_jobs_train_the_same_runs_and_make_the_same_choices(tmp_path):
    base = {**SWEEP_BASE, "task": {"name": "classify"}}
    grid = {"interface.name": ["weighted_sum", "hconv"]}
    select = {"train.interface_lr": [1e-4, 3e-4, 1e-3]}
    serial = run_sweep(base, grid, tmp_path / "serial", seeds=[0, 1], select=select, train_fn=LrTrainer(),
                       progress=False, plots=False)
    seen: list[str] = []
    parallel = run_sweep(base, grid, tmp_path / "parallel", seeds=[0, 1], select=select, train_fn=LrTrainer(),
                         progress=False, plots=False, jobs=2, on_run=seen.append)
    assert parallel == serial
    assert sorted(seen) == sorted(p.name for p in (tmp_path / "serial" / "runs").iterdir())  # every run, once
    for name in ("selection.csv", "results.csv", "summary.csv"):
        assert (tmp_path / "parallel" / name).read_text() == (tmp_path / "serial" / name).read_text()
    with pytest.raises(ConfigError, match="jobs"):
        run_sweep(base, grid, tmp_path / "x", train_fn=LrTrainer(), progress=False, jobs=0)


@pytest.mark.slow
def test_a_failed_parallel_run_is_named_and_finished_runs_are_kept(tmp_path):
    with pytest.raises(RuntimeError, match="boom") as err:
        run_sweep(SWEEP_BASE, {"interface.name": ["weighted_sum", "hconv"]}, tmp_path, train_fn=FakeTrainer(fail_on="hconv"),
                  progress=False, plots=False, jobs=2, keep_going=False)
    assert any("'hconv'" in note for note in getattr(err.value, "__notes__", []))
    assert (tmp_path / "runs" / "weighted_sum" / "metrics.json").is_file()


class ThreadTrainer(FakeTrainer):
    """Records the torch threads the run trained with, as its dev metric."""

    def __call__(self, cfg, run_dir):
        import torch

        metrics = super().__call__(cfg, run_dir)
        metrics["dev"] = {"threads": torch.get_num_threads()}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


@pytest.mark.slow
def test_threads_per_run_are_fixed_serial_and_parallel(tmp_path):
    import torch

    grid = {"interface.name": ["weighted_sum", "hconv"]}
    before = torch.get_num_threads()
    for jobs in (1, 2):
        rows = run_sweep(SWEEP_BASE, grid, tmp_path / f"jobs{jobs}", train_fn=ThreadTrainer(), progress=False, plots=False,
                         jobs=jobs, threads=2)  # the test session runs on 1 thread (conftest)
        assert [r["dev_threads"] for r in rows] == [2, 2]
        assert torch.get_num_threads() == before  # the sweep gives its own threads back
    with pytest.raises(ConfigError, match="threads"):
        run_sweep(SWEEP_BASE, grid, tmp_path / "x", train_fn=ThreadTrainer(), progress=False, threads=0)


def test_a_configuration_with_missing_seeds_says_so_and_is_not_the_best(tmp_path):
    """A seed that failed leaves its configuration with fewer seeds: that row names the missing seeds, and the
    best is decided on error rates among the rows with every seed (not on errors summed over the seeds)."""

    class Trainer(UtteranceTrainer):  # a+b__weighted_sum errs least, but only its seed 0 finishes
        WRONG = {"a__weighted_sum": 60, "a__hconv": 40, "a+b__weighted_sum": 30}

    with pytest.raises(RuntimeError, match="boom"):
        run_sweep(SWEEP_BASE, {"upstreams": [["a"], ["a", "b"]], "interface.name": ["weighted_sum", "hconv"]}, tmp_path,
                  seeds=[0, 1, 2], train_fn=Trainer(fail_on="a+b__weighted_sum__seed=1"), progress=False, plots=False,
                  keep_going=False)
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert {k: (r["seeds"], r["missing_seeds"]) for k, r in rows.items()} == {
        "a__weighted_sum": ("3", ""), "a__hconv": ("3", ""), "a+b__weighted_sum": ("1", "1 2")}
    assert {k: r["tied_with_best"] for k, r in rows.items()} == {
        "a__weighted_sum": "no", "a__hconv": "best", "a+b__weighted_sum": "better"}  # 30 vs 40 errors on seed 0
    assert rows["a+b__weighted_sum"]["vs_best_seeds"] == "0" and rows["a__weighted_sum"]["vs_best_seeds"] == ""
    md = (tmp_path / "results.md").read_text()
    assert "missing_seeds" in md and "| 1 2 |" in md
