"""How a trained run is measured: its metrics on a split, the interface report, and rebuilding it from its folder.

    model, cfg = load_run("runs/speaker")            # FusionTask + the run's Config (best checkpoint)
    evaluate("runs/speaker", split="test")           # {"test": {...}}: what `speechfuse evaluate` prints
    evaluate("runs/speaker", manifest="new_test.csv") # other rows: results in runs/speaker/eval/test-<sha>/
    score(model, loader, split, run_dir)             # the task's metrics over a loader's batches
    save_task_tensors(checkpoint, task.tensors())    # the runner, after fit_scoring (verify's AS-norm cohort)

For predictions on new recordings use the run's model folder instead: sf.load_model(RUN_DIR).predict(...)
(speechfuse.fusion.model, speechfuse.serving.inference).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from speechfuse.training.checkpoint import load_checkpoint_file, save_checkpoint_file
from speechfuse.config import Config
from speechfuse.data.loader import SPLITS, FusionData, load_splits, resolve_cache_dir
from speechfuse.data.manifest import clip_limit
from speechfuse.errors import ConfigError
from speechfuse.io import write_atomic
from speechfuse.training.learner import FusionTask, restore_frozen
from speechfuse.training.runfolder import BEST, LAST, RunFolder, file_sha256
from speechfuse.tasks import check_targets_known
from speechfuse.training.utterances import metric_ci, write_utterances

TASK_TENSORS = "task_tensors"  # the checkpoint's speechfuse section: what save_task_tensors stored


@torch.no_grad()
def score(model: FusionTask, loader: DataLoader, split: str = "test", run_dir: Optional[Path] = None
          ) -> dict[str, float]:
    """The task's metrics of `split` over every batch of `loader` (eval mode, on the model's device).

    `run_dir`, when given, is where the task may write what it scored with (verify: generated trials) and
    where the per-utterance results go (utterances_<split>.jsonl, for tasks with an `utterance_metric`); on
    the test split the metrics then gain `ci_low_<utterance_metric>` / `ci_high_...`, a bootstrap 95 % interval
    (prefixed, so `<metric>_<suffix>` names such as multilingual's `cer_<language>` stay unambiguous)."""
    records, ids = collect_records(model, loader)
    metrics = {k: float(v) for k, v in model.task.evaluate(records, split, run_dir).items()}
    task = model.task
    if run_dir is not None and task.utterance_metric is not None:
        # tasks with an utterance_metric keep the default (prediction, reference) records
        predictions, references = [p for p, _ in records], [r for _, r in records]
        errors, totals = task.utterance_errors(predictions, references)
        write_utterances(run_dir, split, ids, predictions, references, errors, totals)
        if split == "test":
            low, high = metric_ci(errors, totals, task.higher_is_better)
            metrics[f"ci_low_{task.utterance_metric}"], metrics[f"ci_high_{task.utterance_metric}"] = low, high
    return metrics


@torch.no_grad()
def collect_records(model: FusionTask, loader: DataLoader) -> tuple[list, list[str]]:
    """The task's `collect` records of every batch of `loader` (eval mode), and the utterance ids."""
    was_training = model.training
    model.eval()
    records: list = []
    ids: list[str] = []
    try:
        for batch in loader:
            batch = model.transfer_batch_to_device(batch, model.device, 0)
            out, out_lengths = model(batch)
            records += model.task.collect(out, out_lengths, batch.utts)
            ids += [u.id for u in batch.utts]
    finally:
        model.train(was_training)
    return records, ids


def load_weights(model: FusionTask, path: Path) -> dict:
    """Load a checkpoint's weights into `model`; returns the checkpoint."""
    checkpoint = load_checkpoint_file(path)
    restore_frozen(model, checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return checkpoint


def save_task_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Store the task's fitted tensors (verify: the AS-norm cohort) in the checkpoint they were fitted with,
    so `load_run` gets them back with its weights. Checkpoints written during training hold none."""
    checkpoint = load_checkpoint_file(path)
    checkpoint.setdefault("speechfuse", {})[TASK_TENSORS] = dict(tensors)
    save_checkpoint_file(checkpoint, path)


def write_interface_report(model: FusionTask, loader: DataLoader, run_dir: Path, importance: bool = True) -> dict:
    """interface.json (describe() + drop-one-layer importance on one dev batch) and layers.png."""
    interface = model.frontend.interface
    info: dict[str, Any] = {"interface": model.cfg.interface.name, "num_parameters": interface.num_parameters()}
    if importance:
        from speechfuse.fusion.importance import layer_importance

        batch = model.transfer_batch_to_device(next(iter(loader)), model.device, 0)
        states = batch.states if batch.states is not None else model.frontend.extract(batch.wavs, batch.wav_lengths)
        info["importance"] = layer_importance(model.frontend, states)
    info["describe"] = interface.describe()
    run = RunFolder(run_dir)
    write_atomic(run.interface_path, json.dumps(info, indent=2, default=float))
    try:
        from speechfuse.experiments.report import plot_importance
    except ImportError:
        plot_importance = None
    if plot_importance is not None:
        plot_importance(info["describe"], run.layers_png,
                        title=f"{model.cfg.interface.name}: " + "+".join(u.spec for u in model.cfg.upstreams))
    return info


def load_run(run_dir: str | os.PathLike, checkpoint: str = BEST) -> tuple[FusionTask, Config]:
    """Rebuild the trained model of a run folder from config.yaml + task.json + a checkpoint (`last` when the
    run has no `best` yet)."""
    run = RunFolder(run_dir)
    cfg, task = run.read_config(), run.read_task()
    model = FusionTask(cfg, task)
    path = run.checkpoint(checkpoint)
    if not path.is_file():
        path = run.checkpoint(LAST)
    checkpoint = load_weights(model, path)
    model.task.load_tensors(checkpoint.get("speechfuse", {}).get(TASK_TENSORS, {}), str(path))
    return model, cfg


def evaluate(run_dir: str | os.PathLike, split: str = "test", device: str | None = None,
             manifest: str | os.PathLike | None = None) -> dict:
    """Metrics of the run's best checkpoint on `split` (train | dev | test).

    The run's own data.<split> must still hold the rows it was trained / scored with (fingerprint.json, as on
    resume): a changed manifest is a ConfigError, not new numbers under the old run's name, and the run's
    utterances_<split>.jsonl is left as it was. To score other rows, pass `manifest` (CLI: --manifest): its
    per-utterance results go to RUN/eval/<split>-<sha256 of the manifest, 12 hex>/, never to the run's own files,
    and a line on stderr says where."""
    if split not in SPLITS:
        raise ConfigError(f"evaluate: split must be one of {', '.join(SPLITS)}, got {split!r}")
    run = RunFolder(run_dir)
    cfg = run.read_config()  # the checks below come before the model loads
    if manifest is None:
        if getattr(cfg.data, split) is None:
            raise ConfigError(f"evaluate: the run's config has no data.{split} manifest; give one with --manifest")
        changed = run.changed_manifests({split: getattr(cfg.data, split)})
        if changed:
            raise ConfigError(f"evaluate: the contents of {changed[0]} changed since {run.path} was trained "
                              f"(fingerprints in {run.fingerprint_path}), so its scores would not be this run's. "
                              f"Restore the old manifest, or score the new rows with --manifest "
                              f"{getattr(cfg.data, split)} (results go to {run.eval_dir}/, the run's own files are "
                              "kept).")
        out_dir = run.path
    else:
        manifest = Path(manifest).resolve()
        if not manifest.is_file():
            raise ConfigError(f"evaluate --manifest: {manifest} not found; give a manifest CSV of the rows to score")
        setattr(cfg.data, split, str(manifest))
        out_dir = run.eval_dir / f"{split}-{file_sha256(manifest)[:12]}"
    model, _ = load_run(run.path)
    if manifest is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"speechfuse evaluate: scoring {run.path} on {manifest} (not the rows it was trained / scored with); "
              f"per-utterance results in {out_dir}, the run's own files are kept", file=sys.stderr, flush=True)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    splits = load_splits(cfg, out_dir if manifest is not None else run.eval_dir, model.task.target_field,
                         which=(split,), max_clip=clip_limit(model.frontend.upstreams))
    check_targets_known(model.task, splits, {split: getattr(cfg.data, split)})
    frozen = all(not u.trainable for u in model.frontend.upstreams)
    data = FusionData(cfg, model.task, {split: splits[split]}, model.frontend,
                      resolve_cache_dir(cfg) if frozen else None)
    data.setup("test")
    return {split: score(model, data.loader(split), split, out_dir)}


__all__ = ["score", "collect_records", "save_task_tensors", "load_weights", "write_interface_report", "load_run", "evaluate"]
