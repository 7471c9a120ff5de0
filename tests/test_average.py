"""train.average_best: N: the reported model is the mean of the N checkpoints with the lowest dev loss."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import make_fsdd, run_config, save_tiny_model, train_and_sigkill
from speechfuse.training.average import average_checkpoints
from speechfuse.training.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint_file
from speechfuse.config import config_from_dict


def test_average_of_hand_made_checkpoints(tmp_path):
    paths = []
    for i, (w, steps) in enumerate([([1.0, 2.0], 5), ([3.0, 6.0], 7), ([5.0, 1.0], 9)]):
        paths.append(tmp_path / f"c{i}.safetensors")
        save_checkpoint_file({"state_dict": {"w": torch.tensor(w), "n": torch.tensor(steps)},
                              "optimizer_states": [{"m": torch.zeros(2)}], "global_step": steps}, paths[-1])
    out = average_checkpoints(paths, tmp_path / "avg.safetensors")
    avg = load_checkpoint_file(out)
    assert avg["state_dict"]["w"].tolist() == [3.0, 3.0]  # (1 + 3 + 5) / 3, (2 + 6 + 1) / 3
    assert avg["state_dict"]["n"].item() == 5 and avg["global_step"] == 5  # not averaged: the first's
    assert "optimizer_states" not in avg and avg["averaged_from"] == ["c0.safetensors", "c1.safetensors", "c2.safetensors"]
    save_checkpoint_file({"state_dict": {"v": torch.zeros(2)}}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors holds other weights"):
        average_checkpoints([paths[0], tmp_path / "other.safetensors"], tmp_path / "x.safetensors")


def test_a_run_with_average_best_reports_the_mean_of_its_lowest_dev_losses(tmp_path):
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path)
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    run = tmp_path / "run"
    train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=6, val_every_steps=2, average_best=2)), run)
    ckpts = run / "checkpoints"
    top = sorted((ckpts / "top").glob("*.safetensors"))
    assert len(top) == 2  # 3 dev evaluations (steps 2, 4, 6), the 2 lowest dev losses kept
    with open(next((run / "logs" / "csv").rglob("metrics.csv")), newline="") as f:
        losses = {int(r["step"]) + 1: float(r["dev/loss"]) for r in csv.DictReader(f) if r.get("dev/loss")}
    assert len(losses) == 3
    kept = sorted(losses, key=losses.get)[:2]
    assert sorted(int(p.stem.split("=")[1]) for p in top) == sorted(kept)
    weights = [load_checkpoint_file(p)["state_dict"] for p in top]
    average = load_checkpoint_file(ckpts / "average.safetensors")["state_dict"]
    for key, value in average.items():
        if torch.is_floating_point(value):
            assert torch.allclose(value, (weights[0][key] + weights[1][key]) / 2, atol=1e-6)
    # the run's model folder was saved from the averaged weights
    from safetensors.torch import load_file

    assert json.loads((run / "model" / "config.json").read_text())["training"]["checkpoint"] == "average"
    saved = load_file(run / "model" / "model.safetensors")
    head = [k for k in average if k.startswith("head.") and torch.is_floating_point(average[k])]
    assert head and all(torch.equal(saved[k], average[k]) for k in head if k in saved)
    assert any(k in saved for k in head)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_average(tmp_path):
    """The kept top checkpoints survive a SIGKILL: the resumed run averages the same ones as an uninterrupted run."""
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path)
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    data = run_config(manifests, f"hf:{upstream}", max_steps=6, val_every_steps=2, average_best=2)
    full = train(config_from_dict(data), tmp_path / "full")
    train_and_sigkill(data, tmp_path / "killed", 4)
    resumed = train(config_from_dict(data), tmp_path / "killed")
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-6)
    names = [sorted(p.name for p in (tmp_path / run / "checkpoints" / "top").iterdir()) for run in ("full", "killed")]
    assert names[0] == names[1] and len(names[0]) == 2
    a = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "average.safetensors")["state_dict"]
    b = load_checkpoint_file(tmp_path / "killed" / "checkpoints" / "average.safetensors")["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
