"""Run folders that cannot be mixed, silently damaged or lost: checkpoint checksums, a non-finite loss, data
fingerprints, the lock, moved folders, read-only folders and full disks, Ctrl-C. Each test reproduces a row
of issue 8 and checks the clear error or the right behaviour that replaces it."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import read_only, run_config
from speechfuse.training.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint_file
from speechfuse.cli import main
from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError
from speechfuse.training.runfolder import RunFolderError, RunLock, check_free_space, write_atomic


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A finished 4-step run (dev evaluated and checkpoints saved at steps 2 and 4); tests work on copies."""
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=2)
    run = tmp_path_factory.mktemp("trained") / "run"
    metrics = train(config_from_dict(data), run)
    return run, data, metrics


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _tensor_data_span(path: Path) -> tuple[int, int]:
    """(start, end) byte offsets of a safetensors file's tensor data (after its 8-byte length + JSON header)."""
    raw = path.read_bytes()
    return 8 + int.from_bytes(raw[:8], "little"), len(raw)


def _scramble(path: Path, start: int, end: int, seed: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[start:end] = torch.randint(0, 256, (end - start,), generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(raw))


def _ckpt(run: Path, name: str) -> Path:
    return run / "checkpoints" / f"{name}.safetensors"


# -- 1. checkpoints carry checksums -------------------------------------------------------------------------

def test_damaged_tensor_bytes_are_named_on_load(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint_file({"state_dict": {"head.weight": torch.randn(64, 8), "head.bias": torch.zeros(8)}}, path)
    assert load_checkpoint_file(path)["state_dict"]["head.bias"].equal(torch.zeros(8))
    start, end = _tensor_data_span(path)
    _scramble(path, start + 100, start + 164)  # 64 random bytes inside the first tensor, file size unchanged
    with pytest.raises(CheckpointError, match=r"c\.safetensors is damaged: 1 tensor\(s\).*state_dict\.head\.weight"):
        load_checkpoint_file(path)


def test_evaluate_refuses_a_damaged_best_checkpoint(trained, tmp_path, capsys):
    """Row: random bytes in a checkpoint's tensor data made `evaluate` exit 0 with garbage metrics."""
    run = _copy(trained[0], tmp_path / "run")
    best = _ckpt(run, "best")
    start, end = _tensor_data_span(best)
    _scramble(best, start, start + 4096)
    assert main(["evaluate", str(run), "--split", "dev"]) == 2
    err = capsys.readouterr().err
    assert f"speechfuse evaluate: error: checkpoint {best} is damaged" in err and "Traceback" not in err


def test_resume_from_a_fully_corrupted_last_checkpoint(trained, tmp_path):
    """Row: a fully corrupted last checkpoint raised RuntimeError 'Invalid mt19937 state'. Now the resume falls
    back to `best` with a warning naming both files, or, with `best` damaged too, fails naming the files."""
    from speechfuse.training.runner import train

    run, data, _ = trained
    one, two = _copy(run, tmp_path / "one"), _copy(run, tmp_path / "two")
    best_step = load_checkpoint_file(_ckpt(one, "best"))["global_step"]
    longer = config_from_dict({**data, "train": {**data["train"], "max_steps": 6}})
    for folder in (one, two):
        start, end = _tensor_data_span(_ckpt(folder, "last"))
        _scramble(_ckpt(folder, "last"), start, end)  # every tensor byte, the RNG states included
    with pytest.warns(UserWarning, match=rf"last\.safetensors, it is damaged.*resuming from .*best\.safetensors "
                                         rf"\(step {best_step}\)"):
        train(longer, one)
    assert load_checkpoint_file(_ckpt(one, "last"))["global_step"] == 6  # overwritten by a sound one

    start, end = _tensor_data_span(_ckpt(two, "best"))
    _scramble(_ckpt(two, "best"), start, end, seed=1)
    with pytest.raises(CheckpointError, match=r"both checkpoints are damaged.*last\.safetensors.*best\.safetensors"):
        train(longer, two)


# -- 2. a non-finite loss stops the run ----------------------------------------------------------------------

def test_nonfinite_loss_stops_the_run_naming_the_step(corpus, tmp_path):
    """A learning rate of 1e30 blows the weights up at step 1, so the loss of step 2 is NaN: before, the run went
    on and wrote metrics.json."""
    from speechfuse.training.learner import NonFiniteLossError
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", max_steps=4, lr=1e30, interface_lr=1e30)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step 2 .*on_nonfinite_loss=skip"):
        train(config_from_dict(data), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_nonfinite_loss_skip_drops_only_that_batch(corpus, tmp_path, monkeypatch):
    from speechfuse.tasks.classify import ClassifyTask
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    real_loss, calls = ClassifyTask.loss, []

    def nan_on_second_batch(self, *args):
        calls.append(1)
        loss = real_loss(self, *args)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(ClassifyTask, "loss", nan_on_second_batch)
    data = run_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=4, on_nonfinite_loss="skip")
    with pytest.warns(UserWarning, match=r"loss is nan at step 2 .*batch skipped"):
        metrics = train(config_from_dict(data), tmp_path / "run")
    assert len(calls) == 4
    last = load_checkpoint_file(_ckpt(tmp_path / "run", "last"))
    assert last["global_step"] == 4  # the skipped batch counts as a step ...
    assert {float(s["step"]) for s in last["optimizer_states"][0]["state"].values()} == {3.0}  # ... but no update
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


# -- 3. fingerprints: changed manifests ----------------------------------------------------------------------

def test_resume_refuses_a_manifest_edited_in_place(corpus, tmp_path):
    """Row: a training manifest edited in place, then the same train command: it resumed on the new data,
    overwrote task.json's label map and reported a best checkpoint trained on the old labels."""
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    mine = {split: Path(shutil.copy(path, tmp_path / f"{split}.csv")) for split, path in manifests.items()}
    data = run_config(mine, f"hf:{upstream}", max_steps=2, val_every_steps=2)
    run = tmp_path / "run"
    train(config_from_dict(data), run)
    assert json.loads((run / "fingerprint.json").read_text())["manifests"]["train"]["path"] == str(mine["train"])
    task_before = (run / "task.json").read_text()

    lines = mine["train"].read_text().splitlines()
    mine["train"].write_text("\n".join(lines[:-2]) + "\n")  # two rows fewer, labels {0, 1} as before
    longer = {**data, "train": {**data["train"], "max_steps": 4}}
    with pytest.raises(ConfigError, match=rf"data\.train \({mine['train']}\) changed.*--allow-changed-data"):
        train(config_from_dict(longer), run)
    assert (run / "task.json").read_text() == task_before
    assert load_checkpoint_file(_ckpt(run, "last"))["global_step"] == 2

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(longer))
    with pytest.warns(UserWarning, match=r"data\.train .* changed.*allow_changed_data"):
        assert main(["train", str(tmp_path / "cfg.yaml"), "--allow-changed-data", "--out", str(run)]) == 0
    assert load_checkpoint_file(_ckpt(run, "last"))["global_step"] == 4
    allowed = {**longer, "train": {**longer["train"], "allow_changed_data": True}}

    # even when allowed, data that gives the task another label map cannot resume the trained head
    header, first, *rest = mine["train"].read_text().splitlines()
    cols = header.split(",")
    cells = first.split(",")
    cells[cols.index("label")] = "7"
    mine["train"].write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    more = {**allowed, "train": {**allowed["train"], "max_steps": 6}}
    with pytest.raises(ConfigError, match=r"other labels.*task\.json"), pytest.warns(UserWarning):
        train(config_from_dict(more), run)
    assert (run / "task.json").read_text() == task_before


# -- 4. the lock ---------------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from speechfuse.training.runfolder import RunLock
lock = RunLock(sys.argv[1])  # held while referenced (a filelock is released when collected)
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_train_into_a_busy_folder_is_refused(corpus, tmp_path):
    """Row: two `train` commands into one --out both exited 0 and mixed the folder. A process holding the
    folder's lock stands for the first `train`; once it is killed its lock is stale and is taken over."""
    import socket

    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=2, val_every_steps=2))
        with pytest.raises(RunFolderError, match=rf"in use by another `speechfuse train` \(pid {holder.pid} on host "
                                                 rf"{socket.gethostname()}, started "):
            train(cfg, run)
        assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((run / "train.lock").read_text())["pid"] == holder.pid  # left behind by the killed holder
    train(cfg, run)
    assert (run / "metrics.json").is_file() and not (run / "train.lock").exists()


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderError, match=rf"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


# -- 5. a moved run folder keeps its best checkpoint ---------------------------------------------------------

def test_resuming_a_moved_run_folder_keeps_its_best(trained, tmp_path):
    """Row: a run folder copied elsewhere, then resumed: best.safetensors was replaced by a worse checkpoint
    (Lightning stored absolute paths and dropped the best score when they changed). The copy's recorded best
    score is set out of reach, so keeping `best` is the only right outcome whatever the new evaluations score."""
    from speechfuse.training.runner import train

    run, data, _ = trained
    moved = _copy(run, tmp_path / "elsewhere" / "run")
    last = load_checkpoint_file(_ckpt(moved, "last"))
    (key,) = [k for k in last["callbacks"] if "dev/accuracy" in k]
    assert last["callbacks"][key]["best_model_path"] == "best.safetensors"  # no absolute path stored
    last["callbacks"][key]["best_model_score"] = torch.tensor(2.0)  # accuracy never exceeds 1
    save_checkpoint_file(last, _ckpt(moved, "last"))
    best_before = _ckpt(moved, "best").read_bytes()

    train(config_from_dict({**data, "train": {**data["train"], "max_steps": 6}}), moved)
    assert load_checkpoint_file(_ckpt(moved, "last"))["global_step"] == 6
    assert _ckpt(moved, "best").read_bytes() == best_before
    assert float(load_checkpoint_file(_ckpt(moved, "last"))["callbacks"][key]["best_model_score"]) == 2.0


# -- 6. read-only folders, full disks ------------------------------------------------------------------------

def test_read_only_folders_fail_before_training(trained, tmp_path):
    """Row: a read-only run folder or checkpoints folder raised PermissionError / SafetensorError after 5 steps."""
    from speechfuse.training.runner import train

    run, data, _ = trained
    cfg = config_from_dict({**data, "train": {**data["train"], "max_steps": 6}})
    for sub in ("", "checkpoints"):
        folder = _copy(run, tmp_path / f"ro{sub}")
        with read_only(folder / sub), pytest.raises(RunFolderError, match=rf"cannot write into {folder / sub} "
                                                                           r".*nothing was trained"):
            train(cfg, folder)
        assert load_checkpoint_file(_ckpt(folder, "last"))["global_step"] == 4
        assert not (folder / "logs" / "csv" / "version_1").exists()  # training never started


def test_too_little_free_space_and_a_full_disk_are_clear_errors(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(RunFolderError, match=r"MiB free on the disk of .*checkpoints need about"):
        check_free_space(tmp_path, free + 2**30, "checkpoints")
    check_free_space(tmp_path, 1, "checkpoints")

    target = tmp_path / "metrics.json"
    write_atomic(target, "old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)  # what a full disk makes write(2) answer
    with pytest.raises(RunFolderError, match=rf"disk full while writing {target}.*previous version"):
        write_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_write_atomic_files_get_the_mode_open_would_give(tmp_path, umask):
    """One writer for run folders and the shared feature cache alike: 0o666 less the umask, as open() gives."""
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "atomic.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "atomic.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 \
        == 0o666 & ~umask


def test_low_disk_space_stops_before_training(corpus, tmp_path, monkeypatch):
    import collections

    import speechfuse.io as sf_io
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sf_io.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**19, 2**19))
    with pytest.raises(RunFolderError, match=r"only 0\.5 MiB free on the disk of .*three checkpoints"):
        train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=2)), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_disk_full_while_saving_a_checkpoint_is_a_clear_error(corpus, tmp_path, monkeypatch):
    """write(2) answers ENOSPC for checkpoint files only, as a disk that fills up during training would."""
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    real_write = os.write

    def write(fd, data):
        if ".safetensors.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    run = tmp_path / "run"
    with pytest.raises(RunFolderError, match=r"disk full while writing .*checkpoints/(best|last)\.safetensors"):
        train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=2)), run)
    assert not list((run / "checkpoints").iterdir()) and not (run / "metrics.json").exists()  # no torn files


# -- 7. Ctrl-C saves and exits 130 ---------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(corpus, tmp_path, capsys):
    """Row: Ctrl-C exited 1. Now SIGINT during `speechfuse train` saves a checkpoint, exits 130, and the
    resumed run ends with the same weights as an uninterrupted one. While it trains, a second `train` with
    another config into the same folder is refused (row: both exited 0 and mixed the folder)."""
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", max_steps=10_000, val_every_steps=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "speechfuse.cli", "train", str(tmp_path / "cfg.yaml"),
                                 "--out", str(run)], stdout=out, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 300  # a bound on waiting, not an assertion on speed
        while not _ckpt(run, "last").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
        assert main(["train", str(tmp_path / "cfg.yaml"), "--set", "interface.name=hconv", "--out", str(run)]) == 2
        assert f"in use by another `speechfuse train` (pid {proc.pid}" in capsys.readouterr().err
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=300)
    stderr = (tmp_path / "err.txt").read_text()
    assert code == 130, stderr[-3000:]
    step = load_checkpoint_file(_ckpt(run, "last"))["global_step"]
    assert f"stopped by Ctrl-C after step {step}" in stderr and "Traceback" not in stderr
    assert 2 <= step < 10_000 and not (run / "metrics.json").exists()

    target = {**data, "train": {**data["train"], "max_steps": step + 2}}
    train(config_from_dict(target), run)
    train(config_from_dict(target), tmp_path / "uninterrupted")
    resumed, full = (load_checkpoint_file(_ckpt(r, "last")) for r in (run, tmp_path / "uninterrupted"))
    assert resumed["global_step"] == full["global_step"] == step + 2
    for k in full["state_dict"]:
        torch.testing.assert_close(resumed["state_dict"][k], full["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)
