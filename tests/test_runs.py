"""Run folders and sweep folders that keep what they hold: RunFolder's names and readers, evaluate's data
fingerprint check, one feature cache for `train` and `sweep`, and sweeps that keep every finished run."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import save_tiny_model
from speechfuse.cli import main
from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError
from speechfuse.runfolder import RunFolder
from test_train import make_fsdd, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run on its own copy of the manifests (the tests edit them)."""
    from speechfuse.train import train

    root = tmp_path_factory.mktemp("trained")
    manifests = make_fsdd(root)
    upstream = save_tiny_model("hubert", root / "hubert")
    data = tiny_config(manifests, upstream, max_steps=2, val_every_steps=2, importance=False)
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
