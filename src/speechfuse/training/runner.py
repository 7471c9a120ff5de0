"""The runner: a Config in, a run folder out. This module only orchestrates; each job has its own module:

    what the model is         speechfuse.fusion.model      (FusedModel, build_frontend, build_task)
    how it learns             speechfuse.training.learner    (FusionTask, the callbacks, make_trainer)
    what it reads             speechfuse.data.loader (load_splits, FusionData, the feature cache wiring)
    where a run lives         speechfuse.training.runfolder  (RunFolder: file names and readers; lock, fingerprints, resume checks)
    how a run is measured     speechfuse.serving.evaluate   (score, evaluate, load_run)

    from speechfuse.config import load_config
    from speechfuse.training.runner import train, evaluate
    metrics = train(load_config("configs/fsdd_speaker.yaml"), "runs/speaker")   # {"dev": {...}, "test": {...}}
    evaluate("runs/speaker", split="test")

Behaviour worth knowing:
- Before any work: the folder is locked (a second `train` into it fails naming the first), its folders must be
  writable and its disk must hold the checkpoints.
- Resume: `train()` on a folder that holds checkpoints/last.safetensors continues from it: model, optimizer,
  scheduler, loop position, the position inside the epoch (batches already trained on are skipped) and the
  torch RNG state are restored, so a killed run ends with the same weights and metrics as an uninterrupted one.
  A damaged `last` checkpoint (checksums) falls back to `best` with a warning. Resuming refuses a changed config
  (but for runfolder.RESUME_MAY_CHANGE) and changed manifest contents (unless train.allow_changed_data).
- Ctrl-C (SIGINT), SIGTERM or SIGUSR1 finishes the current step, evaluates dev and saves `last` / `best` as a
  scheduled evaluation does, then raises TrainingInterrupted (a KeyboardInterrupt; the CLI exits 128 + the
  signal: 130, 143, 138). A second signal stops at once. Under DDP every rank stops at the same step.
- A NaN/inf training loss stops the run with an error naming the step (train.on_nonfinite_loss=skip skips the
  batch instead); metrics.json is only written by a run that finished.
- `callbacks`: extra Lightning callbacks for the Trainer (the tests use one to kill a run at a given step).
"""
from __future__ import annotations

import os
import shutil
import signal
import warnings
from contextlib import nullcontext
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

from speechfuse.training.checkpoint import resume_checkpoint
from speechfuse.config import Config, config_to_yaml
from speechfuse.data.loader import SPLITS, FusionData, load_splits, resolve_cache_dir
from speechfuse.training.curves import plot_curves
from speechfuse.data.manifest import clip_limit
from speechfuse.training.average import averaged_best
from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.training.interrupt import signal_name
from speechfuse.serving.evaluate import (collect_records, evaluate, load_run, load_weights, save_task_tensors, score,
                       write_interface_report)
from speechfuse.training.learner import FusionTask, StopOnInterrupt, TrainingInterrupted, checkpoint_bytes, make_trainer
from speechfuse.fusion.model import build_frontend, build_task, save_run_model
from speechfuse.io import check_free_space, check_writable, disk_full
from speechfuse.training.runfolder import (BEST, EXT, LAST, TEST_CHOSEN, RunFolder, RunLock, check_data_unchanged,
                        check_same_config, check_same_task, record_fingerprint)
from speechfuse.training.test_chosen import choose_on_test, score_step_checkpoints
from speechfuse.tasks import check_targets_known


def train(cfg: Config, out_dir: str | os.PathLike, callbacks: list | None = None) -> dict:
    """Train (or resume) the run in `out_dir`; returns {"dev": {...}, "test": {...}} of the best checkpoint."""
    from speechfuse.training.preflight import check_components

    check_components(cfg)  # names and options: before the folder exists and before any weights load
    if cfg.train.report_test_chosen and cfg.data.test is None:
        raise ConfigError("train.report_test_chosen scores the test split at every checkpoint, but data.test is not "
                          "set; give data.test or set train.report_test_chosen: false")
    run_dir = Path(out_dir)
    check_writable(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        # one `train` per folder; DDP's other ranks belong to the run that rank 0 locked
        with RunLock(run_dir) if rank_zero_only.rank == 0 else nullcontext():
            return _train(cfg, run_dir, callbacks)
    except ConfigError:  # bad input (config, manifests, audio); not a full disk or a diverged loss
        if created and rank_zero_only.rank == 0:
            _remove_if_untrained(run_dir)
        raise


def _remove_if_untrained(run_dir: Path) -> None:
    """A folder this call created and that holds no checkpoint has nothing worth keeping: an input error leaves
    no half-made run behind (the feature cache lives outside the run folder)."""
    if not any(RunFolder(run_dir).checkpoints_dir.glob(f"*{EXT}")):
        shutil.rmtree(run_dir, ignore_errors=True)


def _train(cfg: Config, run_dir: Path, callbacks: list | None) -> dict:
    run = RunFolder(run_dir)
    check_writable(run_dir, run.checkpoints_dir, run.logs_dir)
    check_same_config(cfg, run_dir)
    resume = resume_checkpoint(run_dir)
    manifests = {split: path for split in SPLITS if (path := getattr(cfg.data, split)) is not None}
    if resume is not None:
        check_data_unchanged(run_dir, manifests, cfg.train.allow_changed_data)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    task = build_task(cfg)
    frontend = build_frontend(cfg)  # first: the manifest check needs each upstream's longest clip
    splits = load_splits(cfg, run_dir, task.target_field, max_clip=clip_limit(frontend.upstreams))
    task.fit(splits["train"])
    check_targets_known(task, splits, {split: getattr(cfg.data, split) for split in splits})
    if resume is not None:
        check_same_task(task, run_dir)
    is_zero = rank_zero_only.rank == 0
    if is_zero:
        config_text = config_to_yaml(cfg)
        run.write_config(config_text)  # other ranks may be reading it
        run.write_task(task)
        record_fingerprint(run_dir, config_text, manifests)

    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)  # same initial weights on every rank
    model = FusionTask(cfg, task, frontend)
    if is_zero:  # last + best + the one being written, side by side for a moment
        needed, what = 3 * checkpoint_bytes(model) + 2**20, "three checkpoints (last, best, one being written)"
        if cfg.train.report_test_chosen:  # weights only (about a third of a checkpoint), one per dev evaluation
            kept = cfg.train.max_steps // cfg.train.val_every_steps + 1
            needed += kept * checkpoint_bytes(model) // 3
            what += f" and {kept} step checkpoints (train.report_test_chosen)"
        check_free_space(run_dir, needed, what)
    frozen = all(not u.trainable for u in model.frontend.upstreams)
    cache_dir = resolve_cache_dir(cfg) if frozen else None
    data = FusionData(cfg, task, splits, model.frontend, cache_dir, model.position)
    stopper = StopOnInterrupt()
    trainer = make_trainer(cfg, run_dir, task, [*(callbacks or []), stopper])
    last = run.checkpoint(LAST)
    stopper.install()
    try:
        with warnings.catch_warnings():
            # FusionTask restores the position inside the epoch itself (EpochPosition), so this warning is moot;
            # frozen upstreams are in eval mode on purpose
            warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
            # a resumed run's checkpoints folder is not empty on purpose; train.on_nonfinite_loss=skip returns None;
            # LeafSpec: a deprecation inside Lightning's own code, nothing a user can act on
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            trainer.fit(model, datamodule=data, ckpt_path=str(resume) if resume is not None else None)
    except SystemExit as err:  # Lightning answers a KeyboardInterrupt with sys.exit(1)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        signum = stopper.signum or (signal.SIGTERM if isinstance(err, SIGTERMException) else 0)
        if signum:
            raise TrainingInterrupted(f"training of {run_dir} stopped by {signal_name(signum)} before it saved a "
                                      "checkpoint; run the same command again to resume from its last checkpoint, "
                                      "if any", signum) from err
        raise
    except OSError as err:
        full = disk_full(err, run_dir)
        if full is not None:
            raise full from err
        raise
    finally:
        stopper.uninstall()
    if stopper.signum:  # this rank's signal, or another rank's (DDP), or one during the last evaluation
        raise TrainingInterrupted(f"training of {run_dir} stopped by {signal_name(stopper.signum)} after step "
                                  f"{trainer.global_step}; {last} was saved: run the same command again to resume",
                                  stopper.signum)
    if trainer.interrupted:
        raise SpeechfuseError(f"training of {run_dir} was interrupted; run the same command again to resume "
                              "from its last checkpoint")

    best = Path(trainer.checkpoint_callback.best_model_path or "") if trainer.checkpoint_callback else None
    best = best if best and best.is_file() else run.checkpoint(BEST)
    if not best.is_file():
        best = last
    if cfg.train.average_best:
        best = averaged_best(trainer, run_dir, write=is_zero) or best
    model.to(trainer.strategy.root_device)
    scoring = task.scoring_utterances(splits["train"])  # verify: the AS-norm cohort of training embeddings
    test_chosen = None
    if cfg.train.report_test_chosen:  # before the main result, which then loads and fits `best` as usual
        test_chosen = choose_on_test(score_step_checkpoints(model, data, run, scoring), task.main_metric,
                                     task.higher_is_better)
    load_weights(model, best)
    if scoring:
        task.fit_scoring(collect_records(model, data.utterance_loader(scoring))[0])
        if is_zero:
            save_task_tensors(best, task.tensors())
    metrics = {"dev": score(model, data.val_dataloader(), "dev", run_dir if is_zero else None)}
    if "test" in splits:
        metrics["test"] = score(model, data.test_dataloader(), "test", run_dir if is_zero else None)
    if test_chosen is not None:
        metrics[TEST_CHOSEN] = test_chosen
    if is_zero:
        write_interface_report(model, data.val_dataloader(), run_dir, cfg.train.importance)
        plot_curves(run_dir, title=run_dir.name)  # RUN/curves.png from the CSV log
        save_run_model(cfg, task, model.frontend, model.head, run_dir, metrics, best.stem)  # RUN_DIR/model/
        # last: a sweep treats a run folder with metrics.json as finished
        run.write_metrics(metrics)
    return metrics


__all__ = ["train", "evaluate", "load_run"]
