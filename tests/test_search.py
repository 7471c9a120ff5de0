"""search: the space file, a pruned run's folder, and 2 worker processes sharing one SQLite study (real runner,
real bundled upstream, real FSDD clips, a few steps per run)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from speechfuse.errors import ConfigError
from speechfuse.experiments.search import RunPruned, ReportToTrial, load_space, search, space_from_dict
from helpers import free_port, fsdd_takes

pytestmark = pytest.mark.slow  # every test here trains or launches processes


def test_space_file_is_validated_naming_the_field(tmp_path):
    space = space_from_dict({"space": {"upstreams": {"subsets_of": ["a", "b", "c"]}, "train.lr": [1e-3, 1e-2],
                                       "train.interface_lr": {"low": 1e-4, "high": 1e-1, "log": True}},
                             "trials": 5, "seeds": [0, 1]})
    assert len(space.choices["upstreams"]) == 7  # every non-empty subset of three
    assert space.ranges["train.interface_lr"] == {"low": 1e-4, "high": 1e-1, "log": True}
    assert space.keys == ["upstreams", "train.lr", "train.interface_lr"]
    bad = [({"space": {}}, "needs a `space:` section"),
           ({"space": {"train.lr": []}}, "space.train.lr: an empty list"),
           ({"space": {"train.lr": {"low": 1, "high": 0}}}, "space.train.lr: a range needs numbers low < high"),
           ({"space": {"train.seed": [0, 1]}}, "seeds are not searched"),
           ({"space": {"train.lr": [1]}, "pruner": "asha"}, "pruner must be one of"),
           ({"space": {"train.lr": [1]}, "trails": 3}, r"unknown field\(s\) \['trails'\]"),
           ({"space": {"train.lr": [1, 1]}}, "repeat a value"),
           ({"space": {"train.lr": {"low": 0.1, "high": 1}}, "sampler": "grid"}, "sampler grid needs lists")]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            space_from_dict(data, "space.yaml")
    path = tmp_path / "s.yaml"
    path.write_text("space: [1, 2]\n")
    with pytest.raises(ConfigError, match="s.yaml: needs a `space:` section"):
        load_space(path)


def _fsdd_config(tmp_path, **train):
    from speechfuse.config import config_from_dict

    # speaker ID on 12 clips a split: digits 0 and 1 of the 6 speakers, one take each
    manifests = fsdd_takes(tmp_path / "data", {"train": [10], "dev": [5], "test": [0]}, digits="01")
    return config_from_dict({
        "task": "classify",
        "data": {k: str(v) for k, v in manifests.items()} | {"target": "speaker"},
        "upstreams": ["speech-embedding"],
        "train": {"max_steps": 4, "batch_seconds": 4, "val_every_steps": 2, "progress_bar": False,
                  "importance": False, "accelerator": "cpu", **train},
    })


class StartStep(Callback):
    """Records the step a (resumed) fit starts at."""

    step = None

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


def test_a_pruned_run_saves_last_at_its_step_and_resumes_to_the_end(tmp_path):
    import optuna

    from speechfuse.training.runner import train

    cfg = _fsdd_config(tmp_path)
    # a real pruner that stops every trial whose dev accuracy is under 2 (all of them) at its first report
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()
    reporter = ReportToTrial(trial, "accuracy")
    run_dir = tmp_path / "run"
    with pytest.raises(RunPruned, match="after step 2"):
        train(cfg, run_dir, callbacks=[reporter])
    assert reporter.pruned_at == 2 and list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [2]
    # the folder is a run cut off mid-way: `last` saved, no metrics.json, the lock released
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "train.lock").exists()
    start = StartStep()
    metrics = train(cfg, run_dir, callbacks=[start])
    assert start.step == 2  # resumed from the step it was stopped at, not from scratch
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics


def test_prune_on_dev_loss_reports_the_logged_dev_loss_negated_for_a_maximised_metric(tmp_path):
    """prune_on: dev_loss: the trial gets the dev loss the run itself logs (logs/csv), at every dev evaluation,
    negated because speaker accuracy is maximised; a space with another value is refused naming the field."""
    import optuna

    from speechfuse.training.runner import train

    cfg = _fsdd_config(tmp_path)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    run_dir = tmp_path / "run"
    train(cfg, run_dir, callbacks=[ReportToTrial(trial, "accuracy", "dev_loss", higher_is_better=True)])
    reported = study.trials[0].intermediate_values
    with open(next((run_dir / "logs" / "csv").rglob("metrics.csv")), newline="") as f:
        logged = {int(r["step"]): float(r["dev/loss"]) for r in csv.DictReader(f) if r.get("dev/loss")}
    assert sorted(reported) == [2, 4] and len(logged) == 2
    # Lightning's CSV logger writes the step before the optimizer step's increment: pair them in order
    assert [-reported[s] for s in sorted(reported)] == pytest.approx([logged[s] for s in sorted(logged)])
    assert all(v < 0 for v in reported.values())
    # trials.md: a stopped trial's loss is not shown as its dev metric (Optuna keeps it as the trial's value)
    from speechfuse.experiments.search import trial_rows

    space = space_from_dict({"space": {"train.lr": [1e-3]}, "prune_on": "dev_loss"})
    stopped = optuna.create_study(direction="maximize")
    other = stopped.ask({"train.lr": optuna.distributions.CategoricalDistribution([0])})
    other.report(-2.5, 2)
    stopped.tell(other, state=optuna.trial.TrialState.PRUNED)
    (row,) = trial_rows(stopped, space, "accuracy")
    assert row["dev_accuracy"] is None and row["last_dev_loss"] == 2.5
    with pytest.raises(ConfigError, match="prune_on must be one of"):
        space_from_dict({"space": {"train.lr": [1]}, "prune_on": "loss"}, "space.yaml")


def test_metric_then_loss_ranks_by_the_metric_and_breaks_its_ties_by_the_dev_loss():
    """What ReportToTrial reports under prune_on: metric_then_loss, for a minimised WER and a maximised accuracy:
    equal metrics are ordered by their loss, different ones by the metric alone, however large the loss."""
    from types import SimpleNamespace

    import torch

    from speechfuse.training.average import DEV_LOSS

    def reported(metric_name, metric, loss, higher):
        trainer = SimpleNamespace(callback_metrics={DEV_LOSS: torch.tensor(loss)})
        module = SimpleNamespace(dev_metrics={metric_name: metric})
        return ReportToTrial(None, metric_name, "metric_then_loss", higher)._value(trainer, module)

    # WER, lower is better: on the plateau (1.0 for both) the lower loss ranks first; off it, the lower WER does
    assert reported("wer", 1.0, 2.0, False) < reported("wer", 1.0, 3.0, False)
    assert reported("wer", 0.50, 1e6, False) < reported("wer", 0.51, 0.0, False)
    assert abs(reported("wer", 0.5, 7.0, False) - 0.5) < 1e-8
    # accuracy, higher is better: equal accuracies, the lower loss reports the higher value
    assert reported("accuracy", 0.8, 0.5, True) > reported("accuracy", 0.8, 0.9, True)
    assert reported("accuracy", 0.81, 1e6, True) > reported("accuracy", 0.80, 0.0, True)


def test_prune_on_auto_is_the_tasks_own_early_signal():
    """CTC tasks (asr, multilingual_asr) prune on the metric with ties broken by the dev loss, the others on
    their metric; an explicit choice stays."""
    from speechfuse.config import config_from_dict
    from speechfuse.experiments.search import for_task
    from speechfuse.tasks import TASKS

    auto = space_from_dict({"space": {"train.lr": [1e-3]}})
    assert auto.prune_on == "auto"
    signals = {}
    for task in ("asr", "multilingual_asr", "classify", "verify"):
        cfg = config_from_dict({"task": task, "data": {"train": "t.csv", "dev": "d.csv"}, "upstreams": ["resemblyzer"]})
        signals[task] = for_task(auto, cfg).prune_on
        assert for_task(space_from_dict({"space": {"train.lr": [1e-3]}, "prune_on": "metric"}), cfg).prune_on == "metric"
    assert signals == {"asr": "metric_then_loss", "multilingual_asr": "metric_then_loss", "classify": "metric",
                       "verify": "metric"}
    assert all(TASKS.get(t).early_signal in ("metric", "metric_then_loss", "dev_loss") for t in TASKS.names())


class LoggingTrain:
    """The real runner, logging which trial trained which run folder in which process (picklable)."""

    def __init__(self, log_path):
        self.log_path = str(log_path)

    def __call__(self, cfg, run_dir, callbacks=()):
        from speechfuse.training.runner import train

        trial = next((c.trial for c in callbacks if isinstance(c, ReportToTrial)), None)  # None: a retrain
        deadline = time.monotonic() + 300
        while trial is not None and time.monotonic() < deadline and len(
                {t.user_attrs.get("worker") for t in trial.study.get_trials(deepcopy=False)} - {None}) < 2:
            time.sleep(0.5)  # the first trial waits for the other worker to join, so both take part
        trial = None if trial is None else trial.number
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"trial": trial, "run": run_dir.name, "pid": os.getpid()}) + "\n")
        return train(cfg, run_dir, callbacks=list(callbacks))


def _pg_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    installed = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))  # Debian keeps them off the PATH
    return str(installed[-1]) if installed else None


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server on localhost for one test: initdb into a temp folder, started, stopped and removed
    afterwards. PostgreSQL refuses to run as root: as root, it runs as the `postgres` user."""
    initdb, pg_ctl = _pg_program("initdb"), _pg_program("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("needs a PostgreSQL server (apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="needs psycopg2 (pip install psycopg2-binary)")
    folder = Path(tempfile.mkdtemp(prefix="speechfuse-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` user to run the server as")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, text=True, timeout=120)

    port, data = free_port(), folder / "data"
    run(initdb, "-D", str(data), "-U", "speechfuse", "--auth=trust")
    run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "start",
        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
    try:
        yield f"postgresql+psycopg2://speechfuse@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_sqlite_study_and_never_train_a_trial_twice(tmp_path):
    _two_workers_share_one_study(tmp_path, None)


def test_two_workers_share_one_study_on_a_postgresql_server(tmp_path, postgres_url):
    _two_workers_share_one_study(tmp_path, postgres_url)


def _two_workers_share_one_study(tmp_path, storage):
    import optuna

    cfg = _fsdd_config(tmp_path)
    # 4 combinations, 6 trials: the sampler must draw some values twice, which then train once
    space = space_from_dict({"space": {"interface.name": ["weighted_sum", "hconv"], "train.lr": [1e-3, 3e-2]},
                             "trials": 6, "seeds": [0, 1], "survivors": 2, "min_steps": 2, "reduction_factor": 2})
    out = tmp_path / "search"
    log = tmp_path / "trained.jsonl"
    summary = search(cfg, space, out, workers=2, threads=1, train_fn=LoggingTrain(log), progress=False,
                     storage=storage)

    trained = [json.loads(line) for line in log.read_text().splitlines()]
    trial_runs = [t for t in trained if t["run"].endswith("__seed=0")]
    assert len({t["trial"] for t in trial_runs}) == len(trial_runs)  # no trial trained twice
    assert len({t["run"] for t in trial_runs}) == len(trial_runs)  # no run folder trained twice
    study = optuna.load_study(study_name="search", storage=storage or f"sqlite:///{out / 'study.db'}")
    started = study.get_trials()
    trials = [t for t in started if not t.user_attrs.get("over_budget")]
    assert [t.number for t in trials] == list(range(6))  # the budget, over both workers
    for t in started[6:]:  # a worker may start a trial as the other takes the last one: it trains nothing
        assert t.state.name == "PRUNED" and "run" not in t.user_attrs
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials of the one study
    for t in trials:  # every trial either trained its run or took the outcome of the one that did
        owner = t.user_attrs.get("duplicate_of", t.number)
        assert sum(r["trial"] == owner for r in trial_runs) == 1
        assert trials[owner].user_attrs["run"] == t.user_attrs["run"]
    # a pruned run stopped before the last step; a finished one trained all 4
    for t in trials:
        if "duplicate_of" not in t.user_attrs:
            assert t.user_attrs["steps"] == (4 if t.state.name == "COMPLETE" else 2)

    # the result is a sweep folder: the survivors over both seeds, seed 0 reused from the trials
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["seed"] for r in rows) == sorted(["0", "1"] * len(summary["survivors"]))
    retrained = [t["run"] for t in trained if not t["run"].endswith("__seed=0")]
    assert sorted(retrained) == sorted(f"{s}__seed=1" for s in summary["survivors"])
    assert 1 <= len(summary["survivors"]) <= 2
    with open(out / "trials.csv", newline="") as f:
        assert [int(r["trial"]) for r in csv.DictReader(f)] == [t.number for t in trials]
    assert (out / "stopped.png").stat().st_size > 0 and (out / "summary.csv").is_file()
    assert summary["trial_steps"] == sum(t.user_attrs.get("steps", 0) for t in trials)


def test_a_journal_file_study_is_shared_and_a_bad_space_fails_in_one_line(tmp_path, capsys):
    from speechfuse.cli import main
    from speechfuse.config import config_from_dict
    from speechfuse.experiments.search import open_study

    cfg = config_from_dict({"task": "classify", "data": {"train": "t.csv", "dev": "d.csv"},
                            "upstreams": ["speech-embedding"]})
    space = space_from_dict({"space": {"train.lr": [0.1, 0.2]}, "trials": 2})
    journal = f"journal:{tmp_path / 'shared' / 'study.log'}"
    first = open_study(cfg, space, journal, "s")
    assert first.direction.name == "MAXIMIZE"  # classify: accuracy, higher is better
    trial = first.ask()
    trial.suggest_categorical("train.lr", [0, 1])
    first.tell(trial, 0.5)
    second = open_study(cfg, space, journal, "s")  # another worker opening the same file sees the trial
    assert [t.value for t in second.get_trials()] == [0.5]

    (tmp_path / "space.yaml").write_text("space: {train.lr: []}\n")
    (tmp_path / "c.yaml").write_text("task: classify\ndata: {train: t.csv, dev: d.csv}\n"
                                     "upstreams: [speech-embedding]\n")
    capsys.readouterr()
    code = main(["search", str(tmp_path / "c.yaml"), "--space", str(tmp_path / "space.yaml"), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "space.yaml: space.train.lr: an empty list of choices" in err[0]


def test_search_help(capsys):
    from speechfuse.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0 and "--space" in capsys.readouterr().out
