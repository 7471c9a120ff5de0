"""launcher: the options, and sweeps, searches, studies and prunes as jobs of submitit's LocalExecutor (keep-going,
reruns, extraction first). The tests against a real SLURM are in test_slurm.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from speechfuse.errors import ConfigError
from speechfuse.experiments.launcher import cluster_pool_factory, launcher_options
from speechfuse.experiments.sweep import run_sweep
from helpers import csv_rows, fsdd_takes

pytestmark = pytest.mark.slow  # every test here trains or launches processes

def test_launcher_options_from_the_config_section_and_the_command_line():
    options = launcher_options({"name": "slurm", "partition": "gpu", "gpus": 1, "extra": {"qos": "high"}},
                               {"partition": "debug", "time": None, "cpus": 4})
    assert (options.partition, options.gpus, options.cpus, options.time, options.extra) == \
        ("debug", 1, 4, 60, {"qos": "high"})  # the command line wins; unset options keep the section's
    with pytest.raises(ConfigError, match=r"cfg.yaml: launcher: unknown launcher option\(s\) \['gpu'\]"):
        launcher_options({"gpu": 1}, None, "cfg.yaml: launcher")
    with pytest.raises(ConfigError, match="name must be one of"):
        launcher_options({"name": "pbs"})
    with pytest.raises(ConfigError, match="time must be a whole number"):
        launcher_options({"time": "1h"})


def test_a_launcher_section_does_not_enter_the_run_config(tmp_path):
    from speechfuse.config import load_config

    (tmp_path / "c.yaml").write_text("task: classify\ndata: {train: t.csv, dev: d.csv}\nupstreams: [speech-embedding]\n"
                                     "launcher: {name: slurm, partition: gpu}\n")
    assert "launcher" not in load_config(tmp_path / "c.yaml").model_dump()


def _fsdd_config_file(tmp_path: Path, steps: int = 2) -> Path:

    # speaker ID on 12 clips a split: digits 0 and 1 of the 6 speakers, one take each
    manifests = fsdd_takes(tmp_path / "data", {"train": [10], "dev": [5], "test": [0]}, digits="01")
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({
        "task": "classify", "data": {k: str(v) for k, v in manifests.items()} | {"target": "speaker"},
        "upstreams": ["speech-embedding"],
        "train": {"max_steps": steps, "batch_seconds": 4, "val_every_steps": 2, "progress_bar": False,
                  "importance": False, "accelerator": "cpu"},
        "launcher": {"name": "local", "cpus": 1, "time": 20},
    }))
    return path


def test_sweep_and_search_run_as_jobs_of_the_local_executor(tmp_path, capsys):
    """submitit's LocalExecutor (no scheduler) through the command line: the launcher section of the config,
    extraction then training jobs, the same tables; a rerun submits nothing."""
    from speechfuse.cli import main

    config = _fsdd_config_file(tmp_path)
    out = tmp_path / "sweep"
    argv = ["sweep", str(config), "--grid", "interface.name=weighted_sum,hconv", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "1 extraction job(s) submitted" in err and "2 training job(s) submitted" in err
    jobs = json.loads((out / "launcher" / "jobs.json").read_text())
    assert sorted(jobs) == ["hconv", "weighted_sum"] and {j["launcher"] for j in jobs.values()} == {"local"}
    assert [r["run"] for r in csv_rows(out / "results.csv")] == ["weighted_sum", "hconv"]
    assert all((out / "runs" / name / "metrics.json").is_file() for name in jobs)
    assert main(argv) == 0  # a rerun collects the finished runs and submits nothing
    assert "submitted" not in capsys.readouterr().err
    assert json.loads((out / "launcher" / "jobs.json").read_text()) == jobs

    # the search: the extraction, then 2 workers on one journal-file study, as jobs; the survivor's seed 1 too
    space = tmp_path / "space.yaml"
    space.write_text("space: {interface.name: [weighted_sum, hconv]}\ntrials: 2\nsampler: grid\nseeds: [0, 1]\n"
                     "survivors: 1\n")
    found = tmp_path / "search"
    assert main(["search", str(config), "--space", str(space), "--out", str(found), "--workers", "2",
                 "--storage", f"journal:{found / 'study.log'}"]) == 0
    err = capsys.readouterr().err
    assert "1 speechfuse-extract job(s) submitted" in err and "2 speechfuse-search job(s) submitted" in err
    trials = csv_rows(found / "trials.csv")
    assert sorted(t["run"] for t in trials) == ["hconv__seed=0", "weighted_sum__seed=0"]
    assert {t["state"] for t in trials} == {"complete"}  # nothing to prune against with two trials at rung 1
    best = max(trials, key=lambda t: (float(t["dev_accuracy"]), -int(t["trial"])))["run"].replace("__seed=0", "")
    assert sorted(r["seed"] for r in csv_rows(found / "results.csv")) == ["0", "1"]
    assert list(json.loads((found / "launcher" / "jobs.json").read_text())) == [f"{best}__seed=1"]


def test_a_failed_job_does_not_stop_a_launcher_sweep(tmp_path, capsys):
    """submitit's LocalExecutor: the failing run is named with its combination and error (its job's traceback in
    RUN/error.txt), the other run finishes, SweepFailed at the end; a rerun resubmits only the failed run;
    keep_going=False stops at the failure."""
    import cloudpickle

    import helpers
    from speechfuse.experiments.launcher import JobFailed
    from speechfuse.experiments.sweep import SweepFailed
    from speechfuse.training.runfolder import RunFolder

    cloudpickle.register_pickle_by_value(helpers)  # the jobs cannot import the test modules
    base = {**helpers.SWEEP_BASE, "cache": "off"}
    grid = {"interface.name": ["weighted_sum", "hconv"]}
    options = launcher_options({"name": "local", "time": 5})
    out = tmp_path / "sweep"
    with pytest.raises(SweepFailed) as err:
        run_sweep(base, grid, out, train_fn=helpers.FakeTrainer(fail_on="weighted_sum"), progress=False,
                  plots=False, launcher=cluster_pool_factory(options, base, out))
    log = RunFolder(out / "runs" / "weighted_sum").error_path
    assert err.value.failed == ["weighted_sum"] and [r["run"] for r in err.value.rows] == ["hconv"]
    message = str(err.value)
    assert "\n" not in message
    assert f"run 'weighted_sum' (interface.name=weighted_sum) in {out / 'runs' / 'weighted_sum'} failed: JobFailed: " \
           "run 'weighted_sum' failed in job " in message
    assert message.endswith(f": RuntimeError: boom (traceback in {log})")
    trace = log.read_text()  # the job's own traceback, from its process
    assert "failed during processing with trace" in trace and "in process_job" in trace
    assert "the other runs go on" in capsys.readouterr().err
    assert [r["run"] for r in csv_rows(out / "results.csv")] == ["hconv"]

    first_jobs = json.loads((out / "launcher" / "jobs.json").read_text())
    rows = run_sweep(base, grid, out, train_fn=helpers.FakeTrainer(), progress=False, plots=False,
                     launcher=cluster_pool_factory(options, base, out))
    assert [r["run"] for r in rows] == ["weighted_sum", "hconv"] and not log.exists()
    again = json.loads((out / "launcher" / "jobs.json").read_text())
    assert again["hconv"] == first_jobs["hconv"] and again["weighted_sum"] != first_jobs["weighted_sum"]
    assert "1 training job(s) submitted" in capsys.readouterr().err

    with pytest.raises(JobFailed, match=r"speechfuse sweep: run 'weighted_sum' failed in job .*RuntimeError: boom\. "
                                        r"Finished runs are kept"):
        run_sweep(base, grid, tmp_path / "fail_fast", train_fn=helpers.FakeTrainer(fail_on="weighted_sum"),
                  progress=False, plots=False, keep_going=False,
                  launcher=cluster_pool_factory(options, base, tmp_path / "fail_fast"))


def test_a_study_runs_its_sweeps_as_jobs_and_equals_the_local_study(tmp_path, capsys, monkeypatch):
    """`study` through submitit's LocalExecutor: every series' runs are jobs of that series' sweep folder, the
    table equals the same study run here, a rerun submits nothing; the CLI passes the options and the config's
    launcher: section."""
    import cloudpickle

    import helpers
    from speechfuse.cli import main
    from speechfuse.config import config_from_dict
    from speechfuse.experiments.study import scaling_study
    from helpers import save_tiny_model

    cloudpickle.register_pickle_by_value(helpers)  # the jobs cannot import the test modules
    a = "hf:" + save_tiny_model("hubert", tmp_path / "a", num_hidden_layers=2)
    b = "hf:" + save_tiny_model("wav2vec2", tmp_path / "b", num_hidden_layers=1)
    data = {"task": "classify", "data": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
            "upstreams": [a, b], "interface": {"name": "weighted_sum"}, "train": {"max_steps": 2}, "cache": "off"}
    cfg = config_from_dict(data, tmp_path)
    study = dict(interfaces=["weighted_sum"], seeds=[0], depths={a: [2]}, progress=False)

    def trainer(root):
        fake = helpers.StudyFakeTrainer()
        fake.root = root
        return fake

    here = scaling_study(cfg, tmp_path / "here", train_fn=trainer(tmp_path / "here"), **study)
    options = launcher_options({"name": "local", "time": 5, "cpus": 1})
    on_jobs = scaling_study(cfg, tmp_path / "jobs", train_fn=trainer(tmp_path / "jobs"), launcher=options, **study)
    assert on_jobs == here and len(here) == 4  # 3 model subsets and one depth
    assert (tmp_path / "jobs" / "scaling.csv").read_text() == (tmp_path / "here" / "scaling.csv").read_text()
    err = capsys.readouterr().err
    assert err.count("training job(s) submitted") == 2  # one job array per series
    models = json.loads((tmp_path / "jobs" / "models" / "launcher" / "jobs.json").read_text())
    assert len(models) == 3 and {j["launcher"] for j in models.values()} == {"local"}
    assert scaling_study(cfg, tmp_path / "jobs", train_fn=trainer(tmp_path / "jobs"), launcher=options,
                         **study) == here
    assert "submitted" not in capsys.readouterr().err  # the rerun collects the finished runs

    seen = {}
    monkeypatch.setattr("speechfuse.experiments.study.scaling_study",
                        lambda *args, **kwargs: seen.update(kwargs) or [])
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps({**data, "launcher": {"name": "local", "time": 7}}))
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "scaling.md").write_text("table\n")
    assert main(["study", "scaling", str(config), "--out", str(tmp_path / "cli"), "--cpus", "1"]) == 0
    assert (seen["launcher"].name, seen["launcher"].time, seen["launcher"].cpus) == ("local", 7, 1)


def test_under_a_launcher_the_series_of_a_study_are_in_the_queue_at_once(tmp_path):
    """The models series' runs wait for a run of the depth series to start: with the series one after another
    they would fail after 60 s; at once, the study finishes with every row."""
    import cloudpickle

    import helpers
    from speechfuse.config import config_from_dict
    from speechfuse.experiments.study import scaling_study
    from helpers import save_tiny_model

    cloudpickle.register_pickle_by_value(helpers)
    a = "hf:" + save_tiny_model("hubert", tmp_path / "a", num_hidden_layers=2)
    b = "hf:" + save_tiny_model("wav2vec2", tmp_path / "b", num_hidden_layers=1)
    cfg = config_from_dict({"task": "classify", "data": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                            "upstreams": [a, b], "train": {"max_steps": 2}, "cache": "off"}, tmp_path)
    trainer = helpers.GatedStudyTrainer()
    trainer.root = tmp_path / "jobs"
    rows = scaling_study(cfg, trainer.root, interfaces=["weighted_sum"], seeds=[0], depths={a: [2]}, progress=False,
                         train_fn=trainer, launcher=launcher_options({"name": "local", "time": 5, "cpus": 1}))
    assert len(rows) == 4  # 3 model subsets and one depth
    assert sorted(p.name.split("-")[1] for p in trainer.root.glob("started-*")) == ["depth"] + ["models"] * 3


def test_prune_runs_its_measurement_and_retraining_as_jobs(tmp_path, capsys, fused_run):
    """`prune --launcher local`: the measurement is one job, the retraining a job; the rows equal a prune run here
    (but for the measured seconds); a rerun submits nothing."""
    from speechfuse.cli import main
    from speechfuse.experiments.prune import prune_run

    run, _ = fused_run
    here, there = tmp_path / "here" / "full", tmp_path / "there" / "full"
    for copy in (here, there):
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("prune"))
    local = prune_run(here, [0.6], importance="feature", clips=4, repeat=1)  # the loss ablation may find none
    argv = ["prune", str(there), "--budget", "0.6", "--importance", "feature", "--clips", "4", "--repeat", "1",
            "--launcher", "local", "--cpus", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 speechfuse-prune-measure job(s) submitted" in captured.err
    assert "speechfuse prune: 1 training job(s) submitted" in captured.err
    on_jobs = json.loads(captured.out)

    def without_seconds(rows):
        return [{k: v for k, v in row.items() if k != "seconds_fraction"} for row in rows]

    assert len(on_jobs) == 2 and on_jobs[1]["kept"] != on_jobs[0]["kept"]  # the budget pruned something
    assert without_seconds(on_jobs) == without_seconds(local)
    assert list(json.loads((there / "prune" / "launcher" / "jobs.json").read_text())) == ["budget=0.6,importance=feature"]
    assert main(argv) == 0
    again = capsys.readouterr()
    assert "submitted" not in again.err and json.loads(again.out) == on_jobs


def test_under_a_launcher_a_failed_retraining_leaves_the_other_budgets_and_a_rerun_trains_it(tmp_path, capsys,
                                                                                             monkeypatch, fused_run):
    """`prune --launcher local` with two budgets, one of whose jobs fails: the command names it and exits 2, the
    table holds the other budget, and rerunning the same command trains only the failed one."""
    import cloudpickle

    import helpers
    from speechfuse.cli import main

    run, _ = fused_run
    there = tmp_path / "full"
    shutil.copytree(run, there, ignore=shutil.ignore_patterns("prune"))
    cloudpickle.register_pickle_by_value(helpers)
    failing = "budget=0.3,importance=feature"
    monkeypatch.setattr("speechfuse.training.runner.train", helpers.TrainFailingIn(failing))
    argv = ["prune", str(there), "--budgets", "0.3,0.6", "--importance", "feature", "--clips", "4", "--repeat", "1",
            "--launcher", "local", "--cpus", "1"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"planned failure of {failing}" in err and "the other budgets go on" in err
    assert "run the same command again to resubmit the failed ones" in err
    assert [r["budget"] for r in csv_rows(there / "prune" / "results_feature.csv")] == ["full", "0.6"]

    monkeypatch.undo()
    assert main(argv) == 0
    again = capsys.readouterr()
    assert "speechfuse prune: 1 training job(s) submitted" in again.err
    assert [r["budget"] for r in json.loads(again.out)] == ["full", "0.3", "0.6"]


def test_a_failed_extraction_job_leaves_the_runs_to_say_why(tmp_path, capsys):
    """LocalExecutor, through the command line: a fold whose manifest lists a missing clip fails the extraction job
    (named on stderr), the good fold's run extracts for itself and finishes, the bad fold's run fails naming the
    manifest, exit 2 with the finished row on stdout."""
    from speechfuse.cli import main

    config = _fsdd_config_file(tmp_path)
    folds = {}
    for fold in ("good", "bad"):
        folds[fold] = tmp_path / fold
        folds[fold].mkdir()
        for split in ("train", "dev", "test"):
            shutil.copy(tmp_path / "data" / f"{split}.csv", folds[fold] / f"{split}.csv")
    lines = (folds["bad"] / "train.csv").read_text().splitlines()
    lines[1] = lines[1].replace(".flac", "_missing.flac", 1)
    assert "_missing.flac" in lines[1]
    (folds["bad"] / "train.csv").write_text("\n".join(lines) + "\n")
    code = main(["sweep", str(config), "--grid", f"data={folds['good']},{folds['bad']}", "--out",
                 str(tmp_path / "sweep")])
    captured = capsys.readouterr()
    assert code == 2
    [row] = json.loads(captured.out)
    assert row["data"] == str(folds["good"])
    assert "speechfuse sweep: extraction failed in job" in captured.err
    assert "the runs extract what they need themselves" in captured.err
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("speechfuse sweep: error: sweep: 1 run(s) failed")
    assert f"(data={folds['bad']})" in err and str(folds["bad"] / "train.csv") in err
