"""Stop signals (issue 16, item 2): SIGTERM (what a scheduler sends) and SIGUSR1 (SLURM's preemption warning)
behave like the first Ctrl-C in train, sweep, extract and predict: the step finishes, `last` is saved, the
command exits 128 + the signal with a message saying how to resume. Under DDP every rank stops at the same step.
Before: SIGTERM exited 0 with no message and no checkpoint of the last steps."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from helpers import make_fsdd, run_config, save_tiny_model, SWEEP_BASE
from speechfuse.training.checkpoint import load_checkpoint_file
from speechfuse.cli import main
from speechfuse.config import config_from_dict


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last.safetensors"


class SignalAtStep(pl.Callback):
    """Sends `signum` to this process as step `step` + 1 starts (so that step is the one to finish)."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _assert_same_weights(a: Path, b: Path, steps: int) -> None:
    ca, cb = load_checkpoint_file(_last(a)), load_checkpoint_file(_last(b))
    assert ca["global_step"] == cb["global_step"] == steps
    for k in cb["state_dict"]:
        torch.testing.assert_close(ca["state_dict"][k], cb["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_sigterm_of_a_train_process_saves_exits_143_and_resumes_exactly(corpus, tmp_path):
    """`kill -TERM` of a real `speechfuse train`: exit 143 (was 0), the resume message, `last` at the step it
    stopped; the same command (trained to step + 2) then ends with the weights of an uninterrupted run."""
    _, manifests, upstream = corpus
    data = run_config(manifests, f"hf:{upstream}", max_steps=10_000, val_every_steps=2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "speechfuse.cli", "train", str(cfg), "--out", str(run)]
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 300  # a bound on waiting, not an assertion on speed
        while not _last(run).is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
        subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)
        code = proc.wait(timeout=300)
    stderr = (tmp_path / "err.txt").read_text()
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    step = load_checkpoint_file(_last(run))["global_step"]
    assert f"stopped by SIGTERM after step {step}; {_last(run)} was saved: run the same command again to resume" \
        in stderr and "Traceback" not in stderr
    assert 2 <= step < 10_000 and not (run / "metrics.json").exists()

    again = [*command[3:], "--set", f"train.max_steps={step + 2}"]
    assert main(again) == 0
    assert main([*again[:-4], "--out", str(tmp_path / "whole"), *again[-2:]]) == 0
    _assert_same_weights(run, tmp_path / "whole", step + 2)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((tmp_path / "whole" / "metrics.json").read_text())


@pytest.mark.slow
def test_sigusr1_finishes_the_step_and_saves_last(corpus, tmp_path):
    """SLURM's warning signal: the step under way finishes (step 3 here), `last` holds it, and the run
    resumes to the weights of an uninterrupted one."""
    from speechfuse.training.learner import TrainingInterrupted
    from speechfuse.training.runner import train

    _, manifests, upstream = corpus
    cfg = config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=5, val_every_steps=2))
    with pytest.raises(TrainingInterrupted, match="stopped by SIGUSR1 after step 3") as stop:
        train(cfg, tmp_path / "run", callbacks=[SignalAtStep(signal.SIGUSR1, 2)])
    assert stop.value.exit_code == 128 + signal.SIGUSR1
    assert load_checkpoint_file(_last(tmp_path / "run"))["global_step"] == 3
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers are given back
    train(cfg, tmp_path / "run")
    train(cfg, tmp_path / "whole")
    _assert_same_weights(tmp_path / "run", tmp_path / "whole", 5)


def test_sigterm_during_a_sweep_run_saves_it_and_the_rerun_finishes(corpus, tmp_path, monkeypatch, capsys):
    import speechfuse.training.runner as train_module

    _, manifests, upstream = corpus
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(run_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=2)))
    real = train_module.make_trainer
    monkeypatch.setattr(train_module, "make_trainer",
                        lambda *a, **k: real(a[0], a[1], a[2], [SignalAtStep(signal.SIGTERM, 1), *a[3]]))
    command = ["sweep", str(cfg), "--grid", "interface.name=weighted_sum", "--out", str(tmp_path / "sweep")]
    assert main(command) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 2" in err and "run the same command again to resume" in err
    run = tmp_path / "sweep" / "runs"
    (run_dir,) = run.iterdir()
    assert load_checkpoint_file(_last(run_dir))["global_step"] == 2 and not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(train_module, "make_trainer", real)
    assert main(command) == 0
    assert (run_dir / "metrics.json").is_file() and load_checkpoint_file(_last(run_dir))["global_step"] == 4


def saved_model(corpus, folder: Path) -> Path:
    """An untrained (random) digit classifier on the corpus's tiny hubert, saved as a model folder."""
    from speechfuse.data import load_manifest
    from speechfuse.fusion.model import FusedModel, build_task

    _, manifests, upstream = corpus
    cfg = config_from_dict(run_config(manifests, f"hf:{upstream}"))
    torch.manual_seed(0)
    return FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"]))).save_pretrained(folder)


def test_sigterm_during_predict_keeps_the_rows_written_and_exits_143(corpus, tmp_path, monkeypatch, capsys):
    """predict: the batches written stay in --out; exit 143 with the resume message; the rerun completes."""
    import speechfuse.serving.inference as inference

    model_dir = saved_model(corpus, tmp_path / "model")
    files = sorted((corpus[0] / "recordings").iterdir())[:4]
    real = inference.iter_predictions

    def stop_after_first(*args, **kwargs):
        for n, batch in enumerate(real(*args, **kwargs)):
            yield batch
            if n == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(inference, "iter_predictions", stop_after_first)
    out = tmp_path / "p.jsonl"
    command = ["predict", str(model_dir), *map(str, files), "--out", str(out), "--batch-seconds", "0.5"]
    assert main(command) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted: SIGTERM received; the rows already written to --out are kept: run the same command " \
           "again to predict the rest" in err
    written = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert 1 <= len(written) < len(files)
    monkeypatch.setattr(inference, "iter_predictions", real)
    assert main(command) == 0
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == sorted(map(str, files))


def test_sigterm_during_extract_exits_143_and_the_rerun_completes(corpus, tmp_path, monkeypatch, capsys):
    import speechfuse.cache.fill as fill

    _, manifests, upstream = corpus
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**run_config(manifests, f"hf:{upstream}"), "cache": str(tmp_path / "cache")}))
    real = fill.fill_config_caches

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(fill, "fill_config_caches", killed)
    command = ["extract", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert main(command) == 128 + signal.SIGTERM
    assert "the features stored so far are kept: run the same command again" in capsys.readouterr().err
    monkeypatch.setattr(fill, "fill_config_caches", real)
    assert main(command) == 0
    assert json.loads(capsys.readouterr().out)["utterances"] > 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


@pytest.mark.slow
def test_ddp_ranks_stop_at_the_same_step_when_one_rank_gets_sigterm(tmp_path):
    """2 gloo processes under torchrun; SIGTERM goes to one rank only. Both finish the same step, `last`
    holds it, and each rank's message names that step."""
    manifests = make_fsdd(tmp_path / "data")
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    data = run_config(manifests, f"hf:{upstream}", max_steps=10_000, val_every_steps=2, accelerator="cpu")
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", "-m", "speechfuse.cli", "train", str(cfg), "--out", str(run)],
                                stdout=err, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 400  # a bound on waiting, not an assertion on speed
        while not _last(run).is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
        ranks = _children(proc.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGTERM)
        code = proc.wait(timeout=400)
    log = (tmp_path / "err.txt").read_text()
    assert code != 0, log[-3000:]
    steps = re.findall(r"stopped by SIGTERM after step (\d+)", log)
    assert len(steps) == 2 and steps[0] == steps[1], log[-4000:]  # one message per rank, the same step
    assert load_checkpoint_file(_last(run))["global_step"] == int(steps[0]) >= 2
    assert not (run / "metrics.json").exists()


class WaitForStop:
    """A stand-in for train() in a sweep worker: waits for a stop signal, records which, stops like train."""

    def __call__(self, cfg, run_dir):
        import time

        from speechfuse.training.interrupt import Interrupted, stop_signals

        got: list[int] = []
        with stop_signals(lambda signum, frame: got.append(signum)):
            (run_dir / "started").write_text("")
            deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on speed
            while not got and time.monotonic() < deadline:
                time.sleep(0.05)
        (run_dir / "stopped").write_text(str(got[0] if got else 0))
        raise Interrupted("stopped", got[0] if got else 0)


@pytest.mark.slow
def test_sweep_jobs_pass_sigterm_on_to_their_running_runs(tmp_path):
    """`sweep --jobs 2` gets SIGTERM (sent to its own process only, as `kill` does): both running runs receive
    it, so each saves and stops, and the sweep raises Interrupted once they have."""
    import threading

    from speechfuse.training.interrupt import Interrupted, stop_signals
    from speechfuse.experiments.sweep import run_sweep

    runs = [tmp_path / "runs" / name for name in ("weighted_sum", "hconv")]

    def send_when_started():
        deadline = time.monotonic() + 120
        while not all((r / "started").is_file() for r in runs) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_when_started, daemon=True).start()
    with stop_signals(), pytest.raises(Interrupted) as stop:
        run_sweep(SWEEP_BASE, {"interface.name": ["weighted_sum", "hconv"]}, tmp_path, train_fn=WaitForStop(),
                  progress=False, plots=False, jobs=2)
    assert stop.value.signum == signal.SIGTERM
    assert [(r / "stopped").read_text() for r in runs] == [str(int(signal.SIGTERM))] * 2
