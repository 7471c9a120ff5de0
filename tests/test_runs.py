"""Run folders and sweep folders that keep what they hold: RunFolder's names and readers, evaluate's data
fingerprint check, one feature cache for `train` and `sweep`, and sweeps that keep every finished run."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from helpers import FakeTrainer, make_fsdd, run_config, save_tiny_model, SWEEP_BASE
from speechfuse.cli import main
from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError
from speechfuse.training.runfolder import RunFolder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run on its own copy of the manifests (the tests edit them)."""
    from speechfuse.training.runner import train

    root = tmp_path_factory.mktemp("trained")
    manifests = make_fsdd(root)
    upstream = save_tiny_model("hubert", root / "hubert")
    data = run_config(manifests, f"hf:{upstream}", max_steps=2, val_every_steps=2, importance=False)
    run = root / "run"
    metrics = train(config_from_dict(data), run)
    return run, manifests, metrics


# -- RunFolder ------------------------------------------------------------------------------------------------

def test_run_folder_names_and_readers(trained):
    run_dir, manifests, metrics = trained
    run = RunFolder(run_dir)
    assert run.is_finished and run.require_finished("evaluate") is run
    assert run.read_metrics() == json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert run.read_config().data.test == str(manifests["test"])
    assert run.task_name() == "classify" and run.read_task().labels == ["0", "1"]
    assert run.checkpoint("best").is_file() and run.utterances("test").is_file()
    assert (run.model_dir / "config.json").is_file() and run.read_interface()["num_parameters"] > 0
    assert run.changed_manifests({"test": str(manifests["test"])}) == []


def test_run_folder_errors_name_the_file(tmp_path):
    run = RunFolder(tmp_path / "run")
    with pytest.raises(ConfigError, match="prune: run folder not found"):
        run.require_finished("prune")
    run.path.mkdir()
    (run.path / "config.yaml").write_text("task: classify\n")
    (run.path / "task.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"is not a finished speechfuse run \(metrics.json is missing\)"):
        run.require_finished("prune")
    assert not run.is_finished
    with pytest.raises(ConfigError, match=rf"{run.task_path} is not valid JSON"):
        run.read_task()
    (run.path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=rf"{run.metrics_path} holds no metrics"):
        run.read_metrics()
    assert run.read_interface() == {}  # optional: only adds columns


def test_only_runfolder_spells_the_run_folder_file_names():
    """The run folder's file names are RunFolder's: no other module builds them from string literals."""
    import re

    import speechfuse

    # (layers.png is left out: a sweep folder has its own plots/layers.png)
    names = re.compile(r"""["'](config\.yaml|task\.json|metrics\.json|fingerprint\.json|interface\.json|logs|"""
                       r"""train\.lock|checkpoints)["']|["'](utterances|skipped)_[{'"]""")
    src = Path(speechfuse.__file__).parent
    found = [f"{path.relative_to(src)}:{n}" for path in sorted(src.rglob("*.py")) if path.name != "runfolder.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if names.search(line) and not line.lstrip().startswith("#")]
    assert found == []


# -- evaluate checks the run's data fingerprints ----------------------------------------------------------------

def _relabel_first_row(manifest: Path) -> tuple[str, str]:
    """Give the first row of a manifest the other digit, as an edit of the labels would: (its id, new label)."""
    rows = list(csv.DictReader(manifest.open(newline="")))
    rows[0]["label"] = "1" if rows[0]["label"] == "0" else "0"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows[0]["id"], rows[0]["label"]


def _reference(path: Path, utt_id: str) -> str:
    return next(row["reference"] for row in map(json.loads, path.read_text().splitlines()) if row["id"] == utt_id)


def test_evaluate_refuses_a_changed_manifest_and_scores_new_rows_elsewhere(trained, tmp_path, capsys):
    """Row: `evaluate` after the test manifest's labels were edited scored on the new labels and rewrote
    utterances_test.jsonl."""
    run_dir, manifests, _ = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    own = (run / "utterances_test.jsonl").read_bytes()
    original = manifests["test"].read_bytes()
    try:
        edited, label = _relabel_first_row(manifests["test"])
        assert main(["evaluate", str(run), "--split", "test"]) == 2
        err = capsys.readouterr().err
        assert f"the contents of data.test ({manifests['test']}) changed since {run} was trained" in err
        assert "--manifest" in err and "Traceback" not in err
        assert (run / "utterances_test.jsonl").read_bytes() == own

        assert main(["evaluate", str(run), "--split", "test", "--manifest", str(manifests["test"])]) == 0
        captured = capsys.readouterr()
        assert 0.0 <= json.loads(captured.out)["test"]["accuracy"] <= 1.0
        [new] = list((run / "eval").glob("test-*/utterances_test.jsonl"))
        assert f"per-utterance results in {new.parent}" in captured.err
        assert (run / "utterances_test.jsonl").read_bytes() == own  # the run's own results are kept
        assert _reference(new, edited) == label != _reference(run / "utterances_test.jsonl", edited)
    finally:
        manifests["test"].write_bytes(original)
    assert main(["evaluate", str(run), "--split", "test"]) == 0  # restored: the run's own data again
    assert json.loads(capsys.readouterr().out)["test"]["accuracy"] == json.loads(
        (run / "metrics.json").read_text())["test"]["accuracy"]


def test_evaluate_checks_its_manifest_before_the_model_loads(trained, tmp_path, monkeypatch, capsys):
    import speechfuse.serving.evaluate as evaluate

    run_dir, manifests, _ = trained
    monkeypatch.setattr(evaluate, "load_run", lambda *a, **k: pytest.fail("the model loaded first"))
    assert main(["evaluate", str(run_dir), "--manifest", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv not found" in capsys.readouterr().err and not (run_dir / "eval").exists()


# -- one feature cache for train and sweep ----------------------------------------------------------------------

def test_a_train_and_a_sweep_on_one_config_extract_once(trained, tmp_path, monkeypatch, speechfuse_home):
    """Row: `train` cached into OUT/../cache and `sweep` into OUT/cache, so the same features were extracted twice.
    Both now use the user's cache ($SPEECHFUSE_HOME/cache): the sweep's run never runs the upstream."""
    from speechfuse.experiments.sweep import run_sweep
    from speechfuse.training.runner import train
    from speechfuse.fusion.upstream.base import Upstream

    run_dir, manifests, _ = trained
    data = RunFolder(run_dir).read_config_dict()
    data["cache"] = "auto"
    calls = []
    real_forward = Upstream.forward

    def counting_forward(self, *args, **kwargs):
        calls.append(len(args[0]))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(Upstream, "forward", counting_forward)
    train(config_from_dict(data), tmp_path / "train" / "run")
    extracted = sum(calls)
    assert extracted >= 12  # every utterance of the three splits went through the upstream once
    assert [p.name for p in (speechfuse_home / "cache").iterdir()]
    rows = run_sweep(config_from_dict(data), {"interface.name": ["hconv"]}, tmp_path / "sweep", progress=False,
                     plots=False)
    assert sum(calls) == extracted  # the sweep read every feature from the cache train filled
    assert rows[0]["run"] == "hconv" and 0.0 <= rows[0]["test_accuracy"] <= 1.0


# -- a sweep folder keeps every finished run ----------------------------------------------------------------------

def _runs(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [row["run"] for row in csv.DictReader(f)]


def test_a_rerun_with_another_grid_keeps_the_finished_rows(tmp_path, capsys):
    """Row: a sweep rerun into its folder with a different grid rewrote results.md / results.csv with only the
    new rows."""
    from speechfuse.experiments.sweep import run_sweep

    run_sweep(SWEEP_BASE, {"interface.name": ["weighted_sum", "hconv"]}, tmp_path, train_fn=FakeTrainer(), progress=False,
              plots=False)
    before = {row["run"]: row for row in csv.DictReader((tmp_path / "results.csv").open(newline=""))}
    again = FakeTrainer()
    rows = run_sweep(SWEEP_BASE, {"interface.name": ["hconv"], "train.lr": [0.1]}, tmp_path, train_fn=again,
                     progress=False, plots=False)
    assert again.calls == ["hconv__lr=0.1"] and [r["run"] for r in rows] == ["hconv__lr=0.1"]
    assert _runs(tmp_path / "results.csv") == ["hconv__lr=0.1", "weighted_sum", "hconv"]
    after = {row["run"]: row for row in csv.DictReader((tmp_path / "results.csv").open(newline=""))}
    for name in ("weighted_sum", "hconv"):  # the kept rows hold the numbers they had
        assert after[name]["test_accuracy"] == before[name]["test_accuracy"]
        assert after[name]["interface_params"] == before[name]["interface_params"]
    assert "| weighted_sum | a | weighted_sum | 3 |" in (tmp_path / "results.md").read_text()
    assert "2 finished run(s) of an earlier grid keep their rows" in capsys.readouterr().err

    shutil.rmtree(tmp_path / "runs" / "weighted_sum")  # a run folder deleted on purpose drops out
    run_sweep(SWEEP_BASE, {"interface.name": ["hconv"], "train.lr": [0.2]}, tmp_path, train_fn=FakeTrainer(),
              progress=False, plots=False)
    assert _runs(tmp_path / "results.csv") == ["hconv__lr=0.2", "hconv__lr=0.1", "hconv"]


def test_a_rerun_with_seeds_keeps_the_earlier_configurations(tmp_path):
    from speechfuse.experiments.sweep import run_sweep

    run_sweep(SWEEP_BASE, {"interface.name": ["weighted_sum"]}, tmp_path, seeds=[0, 1], train_fn=FakeTrainer(),
              progress=False, plots=False)
    run_sweep(SWEEP_BASE, {"interface.name": ["hconv"]}, tmp_path, seeds=[0, 1], train_fn=FakeTrainer(), progress=False,
              plots=False)
    assert _runs(tmp_path / "results.csv") == ["hconv__seed=0", "hconv__seed=1", "weighted_sum__seed=0",
                                               "weighted_sum__seed=1"]
    with (tmp_path / "summary.csv").open(newline="") as f:
        summary = {row["config"]: row for row in csv.DictReader(f)}
    assert sorted(summary) == ["hconv", "weighted_sum"] and summary["weighted_sum"]["seeds"] == "2"
    assert float(summary["weighted_sum"]["test_accuracy_mean"]) == pytest.approx(0.5)


def test_a_failed_run_does_not_stop_the_others(tmp_path, capsys):
    """Row: a failing sweep combination named neither the run nor the file, and stopped the sweep."""
    from speechfuse.experiments.sweep import SweepFailed, run_sweep

    grid = {"interface.name": ["weighted_sum", "hconv"]}
    with pytest.raises(SweepFailed) as err:
        run_sweep(SWEEP_BASE, grid, tmp_path, train_fn=FakeTrainer(fail_on="weighted_sum"), progress=False, plots=False)
    log = RunFolder(tmp_path / "runs" / "weighted_sum").error_path
    assert str(err.value).startswith(f"sweep: 1 run(s) failed (the finished rows are in {tmp_path / 'results.md'})")
    assert (f"run 'weighted_sum' (interface.name=weighted_sum) in {tmp_path / 'runs' / 'weighted_sum'} failed: "
            f"RuntimeError: boom (traceback in {log})") in str(err.value)
    assert err.value.failed == ["weighted_sum"] and [r["run"] for r in err.value.rows] == ["hconv"]
    assert "RuntimeError: boom" in log.read_text() and "the other runs go on" in capsys.readouterr().err
    assert _runs(tmp_path / "results.csv") == ["hconv"]

    fixed = FakeTrainer()
    rows = run_sweep(SWEEP_BASE, grid, tmp_path, train_fn=fixed, progress=False, plots=False)
    assert fixed.calls == ["weighted_sum"] and [r["run"] for r in rows] == ["weighted_sum", "hconv"]
    assert not log.exists()


@pytest.mark.slow  # spawns 2 worker processes (46-50 s here), like the parallel tests in test_sweep.py
def test_a_failed_parallel_run_does_not_stop_the_others(tmp_path):
    from speechfuse.experiments.sweep import SweepFailed, run_sweep

    grid = {"interface.name": ["weighted_sum", "hconv"], "train.lr": [0.1]}
    with pytest.raises(SweepFailed, match=r"sweep: 1 run\(s\) failed .*run 'weighted_sum__lr=0.1' \(interface.name="
                                          r"weighted_sum, train.lr=0.1\)"):
        run_sweep(SWEEP_BASE, grid, tmp_path, train_fn=FakeTrainer(fail_on="weighted_sum"), progress=False, plots=False,
                  jobs=2)
    assert _runs(tmp_path / "results.csv") == ["hconv__lr=0.1"]


def test_sweep_cli_names_the_failed_run_its_combination_and_the_file(trained, tmp_path, capsys):
    """A fold whose manifest lists a missing clip: the other fold trains, the command exits 2 naming both the run,
    its combination and the manifest row."""
    run_dir, manifests, _ = trained
    data = RunFolder(run_dir).read_config_dict()
    folds = {}
    for fold in ("good", "bad"):
        folds[fold] = tmp_path / fold
        folds[fold].mkdir()
        for split in ("train", "dev", "test"):
            shutil.copy(manifests[split], folds[fold] / f"{split}.csv")
    lines = (folds["bad"] / "train.csv").read_text().splitlines()
    lines[1] = lines[1].replace(".flac", "_missing.flac", 1)
    (folds["bad"] / "train.csv").write_text("\n".join(lines) + "\n")
    config = tmp_path / "sweep.yaml"
    config.write_text(json.dumps(data))
    code = main(["sweep", str(config), "--grid", f"data={folds['good']},{folds['bad']}", "--out",
                 str(tmp_path / "sweep")])
    captured = capsys.readouterr()
    assert code == 2
    [row] = json.loads(captured.out)  # the finished run is still a result
    assert row["data"] == str(folds["good"])
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("speechfuse sweep: error: sweep: 1 run(s) failed")
    assert f"(data={folds['bad']})" in err and str(folds["bad"] / "train.csv") in err

