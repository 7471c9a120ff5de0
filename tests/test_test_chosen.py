"""train.report_test_chosen: one run reports SUPERB's test-chosen checkpoint (the best test value over the kept
step checkpoints, s3prl's test_expdir.sh) next to the dev-chosen test metrics, which stay the main result."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from speechfuse.config import config_from_dict, config_to_yaml
from speechfuse.errors import ConfigError
from speechfuse.experiments.sweep import run_sweep
from speechfuse.experiments.table import paper_table
from speechfuse.serving.evaluate import evaluate
from speechfuse.training.test_chosen import choose_on_test
from helpers import A, AB, folds, make_fsdd, run_config, save_tiny_model, sweep, train_and_sigkill, verify_config


def test_the_choice_is_the_best_test_value_and_the_earliest_step_on_a_tie():
    runs = [{"step": 2, "eer": 0.30}, {"step": 4, "eer": 0.10}, {"step": 6, "eer": 0.10}]
    chosen = choose_on_test(runs, "eer", higher_is_better=False)
    assert (chosen["step"], chosen["eer"], chosen["checkpoints_scored"]) == (4, 0.10, 3)
    runs = [{"step": 2, "accuracy": 0.5}, {"step": 4, "accuracy": 0.75}, {"step": 6, "accuracy": 0.25}]
    assert choose_on_test(runs, "accuracy", higher_is_better=True)["step"] == 4


@pytest.mark.slow
def test_one_run_reports_the_test_chosen_checkpoint_recomputed_from_every_step_checkpoint(tmp_path):
    """FSDD speaker identification (bundled resemblyzer), 3 dev evaluations: the test-chosen accuracy is the best
    of the per-checkpoint test accuracies, each recomputed here by `evaluate` on that checkpoint; it is never below
    the dev-chosen one."""
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path, digits=(0, 1, 2), speakers=("george", "jackson", "lucas"))
    data = run_config(manifests, "hf:unused", max_steps=6, val_every_steps=2, lr=5e-2, seed=1, report_test_chosen=True,
                      importance=False)
    data["data"]["target"], data["upstreams"] = "speaker", [{"spec": "resemblyzer"}]
    run = tmp_path / "run"
    metrics = train(config_from_dict(data), run)
    chosen = metrics["test_chosen_on_test"]
    steps = sorted(p.name for p in (run / "checkpoints" / "steps").iterdir())
    assert steps == ["step=2.safetensors", "step=4.safetensors", "step=6.safetensors"]

    recomputed = {}
    for name in steps:  # each step checkpoint scored on its own, as the run's `best`, by the evaluate command
        probe = tmp_path / f"probe_{name}"
        shutil.copytree(run, probe, ignore=shutil.ignore_patterns("steps", "model", "logs"))
        shutil.copy(run / "checkpoints" / "steps" / name, probe / "checkpoints" / "best.safetensors")
        recomputed[int(name[len("step="):-len(".safetensors")])] = evaluate(probe, "test")["test"]["accuracy"]
    assert [r["step"] for r in chosen["per_checkpoint"]] == [2, 4, 6]
    for r in chosen["per_checkpoint"]:
        assert r["accuracy"] == pytest.approx(recomputed[r["step"]], abs=1e-9)
    assert len(set(recomputed.values())) > 1  # the checkpoints differ on test, so the choice is not vacuous
    best = max(recomputed.values())
    assert chosen["accuracy"] == pytest.approx(best, abs=1e-9)
    assert chosen["step"] == min(s for s, v in recomputed.items() if v == best)
    assert chosen["checkpoints_scored"] == 3
    assert chosen["accuracy"] >= metrics["test"]["accuracy"]  # the dev-chosen checkpoint is one of the three

    # metrics.json holds both; the card labels the test-chosen number and keeps it out of the hub results
    assert json.loads((run / "metrics.json").read_text())["test_chosen_on_test"]["step"] == chosen["step"]
    card = (run / "model" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "test_chosen_on_test" not in front and "chosen on test" not in front
    assert (f"Chosen on test (SUPERB's VoxCeleb1 rule, `train.report_test_chosen`; not a held-out estimate): test "
            f"accuracy {chosen['accuracy']:.4f} at step {chosen['step']}, the best of 3 checkpoints") in body


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_test_chosen_checkpoint(tmp_path):
    """The step checkpoints written before a SIGKILL stay, the resumed run adds the rest, and it reports the same
    per-checkpoint test values and choice as an uninterrupted run."""
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path, digits=(0, 1, 2), speakers=("george", "jackson", "lucas"))
    data = run_config(manifests, "hf:unused", max_steps=6, val_every_steps=2, lr=5e-2, seed=1, report_test_chosen=True,
                      importance=False)
    data["data"]["target"], data["upstreams"] = "speaker", [{"spec": "resemblyzer"}]
    full = train(config_from_dict(data), tmp_path / "full")
    train_and_sigkill(data, tmp_path / "killed", 4)
    steps = tmp_path / "killed" / "checkpoints" / "steps"
    assert sorted(p.name for p in steps.iterdir()) == ["step=2.safetensors", "step=4.safetensors"]
    resumed = train(config_from_dict(data), tmp_path / "killed")
    assert sorted(p.name for p in steps.iterdir()) == ["step=2.safetensors", "step=4.safetensors",
                                                        "step=6.safetensors"]
    ours, theirs = resumed["test_chosen_on_test"], full["test_chosen_on_test"]
    assert [r["step"] for r in ours["per_checkpoint"]] == [2, 4, 6]
    assert [r["accuracy"] for r in ours["per_checkpoint"]] == pytest.approx(
        [r["accuracy"] for r in theirs["per_checkpoint"]], abs=1e-9)
    assert (ours["step"], ours["accuracy"]) == (theirs["step"], pytest.approx(theirs["accuracy"], abs=1e-9))


@pytest.mark.slow
def test_a_verify_run_scores_each_checkpoint_with_its_own_cohort(tmp_path):
    """verify (AS-norm cohort fitted per checkpoint, as for the main result): the dev-chosen checkpoint is among
    the step checkpoints, so its test EER reappears there and the test-chosen EER is not above it."""
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path, digits=(0, 1), speakers=("george", "jackson", "lucas"))
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    data = verify_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=2, report_test_chosen=True)
    data["cache"] = "off"
    metrics = train(config_from_dict(data), tmp_path / "run")
    chosen = metrics["test_chosen_on_test"]
    per = {r["step"]: r["eer"] for r in chosen["per_checkpoint"]}
    assert sorted(per) == [2, 4] and chosen["eer"] == min(per.values())
    assert any(v == pytest.approx(metrics["test"]["eer"], abs=1e-9) for v in per.values())
    assert chosen["eer"] <= metrics["test"]["eer"] + 1e-12


def test_only_the_voxceleb_paper_config_reports_the_test_chosen_checkpoint():
    from speechfuse.config import load_config

    paper = Path(__file__).resolve().parents[1] / "configs" / "paper"
    on = {p.stem for p in paper.glob("*.yaml") if load_config(p).train.report_test_chosen}
    assert on == {"voxceleb1_sv"}


def test_report_test_chosen_without_a_test_split_is_refused_before_the_folder_exists(tmp_path):
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path, digits=(0,), takes=range(5))
    data = run_config(manifests, "hf:unused", report_test_chosen=True)
    data["upstreams"] = [{"spec": "whisper-tiny.en"}]
    del data["data"]["test"]
    with pytest.raises(ConfigError, match="train.report_test_chosen .* data.test is not set"):
        train(config_from_dict(data), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_table_shows_the_test_chosen_value_in_its_own_marked_column(tmp_path):
    """The VoxCeleb1 column keeps the dev-chosen EER; the test-chosen one gets a † column right after it, averaged
    over seeds as the column is; a run without the option leaves that cell empty."""
    def metrics_of(cfg):
        dev_chosen = {0: 0.06, 1: 0.08}[cfg.train.seed]
        return {"eer": dev_chosen}

    (vox,) = folds(tmp_path, ["vox"], "voxceleb1")
    held_out = config_from_dict({"task": "verify", "data": {"train": f"{vox}/train.csv", "dev": f"{vox}/dev.csv",
                                                             "test": f"{vox}/test.csv", "target": "speaker"},
                                 "upstreams": [{"spec": "whisper-tiny.en"}], "interface": {"name": "hconv"}},
                                ".", "test")

    def fake_train(cfg, run_dir):
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
        on_test = {0: 0.05, 1: 0.03}[cfg.train.seed]
        return {"dev": {"eer": 0.07}, "test": metrics_of(cfg),
                "test_chosen_on_test": {"step": 4, "eer": on_test, "checkpoints_scored": 3, "per_checkpoint": []}}

    both = tmp_path / "both"
    run_sweep(held_out, {"upstreams": [A]}, both, seeds=[0, 1], train_fn=fake_train, progress=False, plots=False)
    plain = sweep(tmp_path, "plain", "verify", {"upstreams": [AB], "data": folds(tmp_path, ["vox1"], "voxceleb1")},
                  lambda cfg: {"eer": 0.04})
    rows = paper_table([both, plain], tmp_path / "t.md")
    header = list(rows[0])
    assert header.index("VoxCeleb1 EER, chosen on test (%)") == header.index("VoxCeleb1 EER (%)") + 1
    cells = {r["upstreams"]: (r["VoxCeleb1 EER (%)"], r["VoxCeleb1 EER, chosen on test (%)"]) for r in rows}
    assert cells == {"whisper-tiny.en": ("7.00", "4.00 †"), "whisper-tiny.en+resemblyzer": ("4.00", "–")}
    text = (tmp_path / "t.md").read_text()
    assert "- VoxCeleb1 EER, chosen on test: per run the best test value over its step checkpoints" in text
    assert "†: checkpoint chosen on test" in text
