"""Runner: safetensors checkpoints, training end to end on real FSDD clips, determinism, kill-and-resume,
bad manifest rows, the feature cache path, evaluate()."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import run_config, train_and_sigkill
from speechfuse.training.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint_file
from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError

def _weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint_file(run_dir / "checkpoints" / f"{name}.safetensors")["state_dict"]


# -- checkpoint format ---------------------------------------------------------------------------------------

def test_checkpoint_round_trip_is_exact(tmp_path):
    state = {
        "state_dict": {"a.weight": torch.randn(3, 4), "b": torch.tensor(7, dtype=torch.int64)},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "name": "head"}]}],
        "callbacks": {"ModelCheckpoint{'monitor': 'dev/accuracy'}": {"best_model_score": torch.tensor(0.5),
                                                                      "kth": float("inf"), "path": None}},
        "flags": [True, False, 1.5, "x"],
    }
    path = tmp_path / "c.safetensors"
    save_checkpoint_file(state, path)
    back = load_checkpoint_file(path)
    assert back["optimizer_states"][0]["state"][0]["exp_avg"].equal(torch.ones(2))
    assert list(back["optimizer_states"][0]["state"]) == [0]  # int keys stay ints
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples stay tuples
    assert back["callbacks"]["ModelCheckpoint{'monitor': 'dev/accuracy'}"]["kth"] == float("inf")
    assert back["state_dict"]["a.weight"].equal(state["state_dict"]["a.weight"])
    assert back["state_dict"]["b"].dtype == torch.int64 and back["flags"] == [True, False, 1.5, "x"]
    # a plain safetensors file: no pickle anywhere
    assert path.read_bytes()[8:9] == b"{"


def test_checkpoint_refuses_unpicklable_free_objects(tmp_path):
    with pytest.raises(CheckpointError, match=r"optim\.extra.*object"):
        save_checkpoint_file({"optim": {"extra": object()}}, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint_file(tmp_path / "bad.safetensors")


# -- training --------------------------------------------------------------------------------------------------

def test_train_writes_a_complete_run_folder_and_evaluate_agrees(corpus, tmp_path):
    from speechfuse.training.runner import evaluate, train

    _, manifests, upstream = corpus
    cfg = config_from_dict(run_config(manifests, f"hf:{upstream}"))
    metrics = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert set(metrics) == {"dev", "test"} and set(metrics["dev"]) == {"accuracy", "macro_f1"}
    assert json.loads((run / "metrics.json").read_text()) == metrics
    for name in ("config.yaml", "task.json", "interface.json", "layers.png", "checkpoints/best.safetensors",
                 "checkpoints/last.safetensors", "logs/csv/version_0/metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    info = json.loads((run / "interface.json").read_text())
    assert info["num_parameters"] == 3  # weighted_sum over the tiny model's 3 layers
    assert len(info["importance"]["importance"][0]) == 3
    # frozen upstream weights are not stored; the trained parts are
    keys = _weights(run).keys()
    assert not any(k.startswith("frontend.upstreams.") for k in keys) and any(k.startswith("head.") for k in keys)
    # dev was evaluated after steps 3, 6 and the last one (8): three rows in the CSV log
    rows = (run / "logs" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    assert sum(1 for r in rows[1:] if r.split(",")[0] != "") == 3
    # evaluate() rebuilds the model from the folder and reproduces the test metrics
    assert evaluate(run, "test")["test"] == pytest.approx(metrics["test"])
    # training moved the weights away from the seed's initialisation
    last = load_checkpoint_file(run / "checkpoints" / "last.safetensors")
    assert last["global_step"] == 8


@pytest.mark.slow
def test_same_config_twice_gives_identical_results(corpus, tmp_path):
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    cfg = config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=4))
    a = train(cfg, tmp_path / "a")
    b = train(cfg, tmp_path / "b")
    assert a == b
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=4, seed=1)), tmp_path / "c")
    wc = _weights(tmp_path / "c")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the seed matters


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [3, 5], ids=["mid-epoch", "epoch-end"])
def test_killed_run_resumes_to_the_same_result(corpus, tmp_path, kill_after):
    """SIGKILL a run just after its checkpoint at step 3 (mid-epoch) or 5 (the end of the first epoch),
    resume, compare with an uninterrupted run."""
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", max_steps=8, val_every_steps=kill_after)
    cfg = config_from_dict(data)
    full = train(cfg, tmp_path / "full")

    train_and_sigkill(data, tmp_path / "killed", kill_after)
    killed = tmp_path / "killed"
    assert load_checkpoint_file(killed / "checkpoints" / "last.safetensors")["global_step"] == kill_after
    assert not (killed / "metrics.json").exists()
    # an epoch has 5 batches, so the 8 steps cross into a reshuffled 2nd epoch
    from speechfuse.data import load_manifest, make_batches

    per_epoch = len(make_batches([u.duration for u in load_manifest(manifests["train"])], 2.5))
    assert per_epoch == 5
    ckpt = load_checkpoint_file(killed / "checkpoints" / "last.safetensors")
    assert ckpt["speechfuse"]["epoch"] == 0 and ckpt["speechfuse"]["seen"] == kill_after

    resumed = train(cfg, killed)
    assert (killed / "logs" / "csv" / "version_0" / "metrics.csv").is_file()  # the first part's log is kept
    assert (killed / "logs" / "csv" / "version_1" / "metrics.csv").is_file()
    assert load_checkpoint_file(killed / "checkpoints" / "last.safetensors")["global_step"] == 8
    assert resumed.keys() == full.keys()
    for split in full:
        assert resumed[split] == pytest.approx(full[split], abs=1e-6)
    wf, wr = _weights(tmp_path / "full"), _weights(killed)
    assert wf.keys() == wr.keys()
    for k in wf:
        torch.testing.assert_close(wr[k], wf[k], rtol=1e-5, atol=1e-6, msg=k)
    # the optimizer state continued too (Adam's step counter counts every step once)
    opt = load_checkpoint_file(killed / "checkpoints" / "last.safetensors")["optimizer_states"][0]["state"]
    assert {float(s["step"]) for s in opt.values()} == {8.0}


@pytest.mark.slow
def test_resume_refuses_a_different_config_but_may_train_longer(corpus, tmp_path):
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    run = tmp_path / "run"
    bad = run_config(manifests, f"hf:{upstream}", max_steps=2)
    bad["interface"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):  # fails before any checkpoint ...
        train(config_from_dict(bad), run)
    train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=2)), run)  # ... so a fixed retry may reuse it
    with pytest.raises(ConfigError, match=r"different config \(train\.lr differ"):
        train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=2, lr=1e-2)), run)
    train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=4)), run)  # extend the run
    assert load_checkpoint_file(run / "checkpoints" / "last.safetensors")["global_step"] == 4


# -- bad input ---------------------------------------------------------------------------------------------------

def _bad_manifest(root: Path, manifests: dict) -> Path:
    text = manifests["train"].read_text().splitlines()
    header, rows = text[0], text[1:]
    import numpy as np
    import soundfile

    soundfile.write(str(root / "empty.wav"), np.zeros(0, dtype="float32"), 8000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    cols = header.split(",")
    def row(**kw):
        base = dict(zip(cols, rows[0].split(",")))
        base.update(kw)
        return ",".join(str(base[c]) for c in cols)
    extra = [row(id="gone", path=str(root / "missing.wav")),
             row(id="corrupt", path=str(root / "corrupt.wav")),
             row(id="empty", path=str(root / "empty.wav")),
             row(id="badtype", duration="long")]
    out = root / "bad_train.csv"
    out.write_text("\n".join([header, *rows, *extra]) + "\n")
    return out


def test_bad_rows_fail_before_training_listing_every_row(corpus, tmp_path):
    from speechfuse.training.runner import train

    root, manifests, upstream = corpus
    bad = _bad_manifest(tmp_path, manifests)
    n = len(manifests["train"].read_text().splitlines()) - 1
    data = run_config(manifests, f"hf:{upstream}")
    data["data"]["train"] = str(bad)
    with pytest.raises(ConfigError) as err:
        train(config_from_dict(data), tmp_path / "run")
    msg = str(err.value)
    for offset, what in enumerate(["not found", "corrupt", "empty", "not a number"], start=1):
        assert f"row {n + offset} " in msg and what in msg, (what, msg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained

    data["train"]["skip_bad_rows"] = True
    data["train"]["max_steps"] = 2
    train(config_from_dict(data), tmp_path / "run2")
    skipped = (tmp_path / "run2" / "skipped_train.csv").read_text().splitlines()
    assert skipped[0] == "row,id,path,reason"
    assert [line.split(",")[0] for line in skipped[1:]] == [str(n + i) for i in range(1, 5)]


# -- feature cache -----------------------------------------------------------------------------------------------

def test_cached_run_never_runs_the_upstream(corpus, tmp_path, monkeypatch, speechfuse_home):
    from speechfuse.training.runner import train
    from speechfuse.fusion.upstream.base import Upstream

    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", max_steps=3)
    data["cache"] = "auto"
    first = train(config_from_dict(data), tmp_path / "runs" / "a")
    entries = list((speechfuse_home / "cache").iterdir())  # auto = $SPEECHFUSE_HOME/cache
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("the upstream ran although every utterance is cached")

    monkeypatch.setattr(Upstream, "forward", boom)
    second = train(config_from_dict(data), tmp_path / "runs" / "b")
    assert second == first


def test_missing_speaker_target_is_reported_by_row(corpus, tmp_path):
    """data.target may name a column the manifest checker does not know (speaker): still row-numbered."""
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    lines = manifests["train"].read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("speaker")
    cells = lines[3].split(",")
    cells[col] = ""
    broken = tmp_path / "train.csv"
    broken.write_text("\n".join([lines[0], lines[1], lines[2], ",".join(cells), *lines[4:]]) + "\n")
    data = run_config(manifests, f"hf:{upstream}", max_steps=1)
    data["data"].update(train=str(broken), target="speaker")
    with pytest.raises(ConfigError, match=r"row 3 \(id .*\): missing speaker"):
        train(config_from_dict(data), tmp_path / "run")
    data["train"]["skip_bad_rows"] = True
    train(config_from_dict(data), tmp_path / "run")
    assert (tmp_path / "run" / "skipped_train.csv").read_text().splitlines()[1].startswith("3,")


def test_optimizer_groups_and_trainable_upstreams_skip_the_cache(corpus, tmp_path, speechfuse_home):
    from speechfuse.tasks import get_task
    from speechfuse.training.learner import FusionTask
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", lr=1e-3, interface_lr=1e-2, upstream_lr=1e-5)
    task = get_task("classify", hidden_dim=8)
    task.labels = ["0", "1"]
    model = FusionTask(config_from_dict(data), task)
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [("interface", 1e-2), ("head", 1e-3)]  # frozen upstream: none
    assert sum(p.numel() for p in groups[0]["params"]) == model.frontend.interface.num_parameters()

    data["upstreams"] = [{"spec": f"hf:{upstream}", "options": {"trainable": True}}]
    data["cache"] = "auto"
    data["train"]["max_steps"] = 1
    trainable = FusionTask(config_from_dict(data), task)
    groups = trainable.configure_optimizers()["optimizer"].param_groups
    assert [(g["name"], g["lr"]) for g in groups][-1] == ("upstreams", 1e-5)
    before = {k: v.clone() for k, v in trainable.frontend.upstreams.state_dict().items()}
    train(config_from_dict(data), tmp_path / "runs" / "ft")
    assert not (speechfuse_home / "cache").exists()  # a trainable upstream is never cached
    saved = _weights(tmp_path / "runs" / "ft")
    changed = [k for k, v in before.items() if not torch.equal(saved[f"frontend.upstreams.{k}"], v)]
    assert changed  # the fine-tuned upstream weights are in the checkpoint and moved
