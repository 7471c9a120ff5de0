"""DDP: 2 CPU processes (gloo) launched with torchrun train the same model as one process, up to float noise.

The global batch is the same in both: every rank builds the same duration batches and takes every 2nd
utterance of each, and each rank's loss is weighted by its share so DDP's gradient average equals the
single process's gradient of the whole batch's mean loss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import make_fsdd, run_config, save_tiny_model
from speechfuse.training.checkpoint import load_checkpoint_file
from speechfuse.config import config_from_dict

pytestmark = pytest.mark.slow  # every test here trains or launches processes


def test_two_gloo_processes_match_one_process(tmp_path):
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path / "data")
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    data = run_config(manifests, f"hf:{upstream}", max_steps=5, val_every_steps=5, accelerator="cpu")
    data["downstream"]["dropout"] = 0.0  # dropout masks differ between 1 and 2 processes by design
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(data))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "speechfuse.cli", "train", str(cfg_path), "--out", str(tmp_path / "ddp"), "--verbose"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr  # --verbose: Lightning's own INFO lines, which a plain run leaves out
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log, log[-3000:]

    single = train(config_from_dict(data), tmp_path / "single")
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for split in ("dev", "test"):
        assert ddp[split] == pytest.approx(single[split], abs=1e-6)

    a = load_checkpoint_file(tmp_path / "ddp" / "checkpoints" / "last.safetensors")
    b = load_checkpoint_file(tmp_path / "single" / "checkpoints" / "last.safetensors")
    assert a["global_step"] == b["global_step"] == 5
    for key in b["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-4, atol=1e-5, msg=key)
    # and training did move the weights (so the comparison is not between two untouched initialisations)
    moved = load_checkpoint_file(tmp_path / "single" / "checkpoints" / "last.safetensors")["optimizer_states"]
    assert all(float(s["step"]) == 5 for s in moved[0]["state"].values())


def test_ddp_ranks_extract_their_own_cache_shards(tmp_path, speechfuse_home):
    manifests = make_fsdd(tmp_path / "data", digits=(0, 1), speakers=("george",), takes=range(6))
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    data = run_config(manifests, f"hf:{upstream}", max_steps=2, val_every_steps=2, accelerator="cpu")
    data["cache"] = "auto"
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "speechfuse.cli", "train", str(cfg_path), "--out", str(tmp_path / "runs" / "ddp")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [entry] = list((speechfuse_home / "cache").iterdir())
    shards = sorted(p.name for p in entry.glob("shard-*.bin"))
    # 12 utterances: each rank extracted its 6 (utts[rank::2]) into its own shard, then both read all 12
    assert {name.split("-")[1] for name in shards} == {"0", "1"}, shards
    assert (tmp_path / "runs" / "ddp" / "metrics.json").is_file()


def _torchrun(cfg_path, out, cwd, kill_after=None):
    """`speechfuse train` on 2 processes; with kill_after, tests/killed_run.py, which SIGKILLs both ranks
    right after that step's checkpoints."""
    what = ["-m", "speechfuse.cli", "train", str(cfg_path), "--out", str(out)] if kill_after is None else \
        [str(Path(__file__).with_name("killed_run.py")), str(cfg_path), str(out), str(kill_after)]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *what],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_killed_ddp_run_resumes_exactly_with_each_ranks_rng(tmp_path):
    """With dropout on, every rank draws its own masks: each rank's RNG state is saved and restored."""
    manifests = make_fsdd(tmp_path / "data")
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    data = run_config(manifests, f"hf:{upstream}", max_steps=5, val_every_steps=2, accelerator="cpu")
    data["downstream"]["dropout"] = 0.5
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(data))

    full = _torchrun(cfg_path, tmp_path / "full", tmp_path)
    assert full.returncode == 0, full.stderr[-4000:]
    killed = _torchrun(cfg_path, tmp_path / "killed", tmp_path, kill_after=2)
    assert killed.returncode != 0
    ckpt = load_checkpoint_file(tmp_path / "killed" / "checkpoints" / "last.safetensors")
    assert ckpt["global_step"] == 2 and ckpt["speechfuse"]["rng"]["cpu"].shape[0] == 2
    assert not torch.equal(*ckpt["speechfuse"]["rng"]["cpu"])  # the two ranks' streams differ
    resumed = _torchrun(cfg_path, tmp_path / "killed", tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-20000:]

    a = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "last.safetensors")["state_dict"]
    b = load_checkpoint_file(tmp_path / "killed" / "checkpoints" / "last.safetensors")["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert json.loads((tmp_path / "full" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "killed" / "metrics.json").read_text())
