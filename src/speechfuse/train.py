"""The runner: a Config in, a run folder out, on PyTorch Lightning.

    from speechfuse.config import load_config
    from speechfuse.train import train, evaluate
    metrics = train(load_config("configs/fsdd_speaker.yaml"), "runs/speaker")   # {"dev": {...}, "test": {...}}
    evaluate("runs/speaker", split="test")

A run folder holds (its layout, lock, fingerprints and atomic writer: speechfuse.runfolder):
    config.yaml       the resolved config            task.json       the fitted task (vocabulary / labels)
    fingerprint.json  sha256 of the config and of each manifest's contents (checked on resume)
    train.lock        while a `train` runs in the folder: its pid, host and start time
    checkpoints/      last.safetensors, best.safetensors (safetensors + JSON, see speechfuse.checkpoint)
    metrics.json      {"dev": {...}, "test": {...}} of the best checkpoint (chosen by the dev main metric)
    interface.json    {"interface", "num_parameters", "describe", "importance"}   layers.png  weights/importance
    logs/             CSV (logs/csv/metrics.csv) and TensorBoard (logs/tensorboard) logs
    model/            the best checkpoint as a model folder: sf.load_model(RUN_DIR) (see speechfuse.model)
    skipped_<split>.csv  the manifest rows dropped with train.skip_bad_rows

Behaviour worth knowing:
- Resume: `train()` on a folder that holds checkpoints/last.safetensors continues from it: model, optimizer,
  scheduler, loop position, the position inside the epoch (batches already trained on are skipped) and the
  torch RNG state are restored, so a killed run ends with the same weights and metrics as an uninterrupted one.
  A damaged `last` checkpoint (checksums) falls back to `best` with a warning. Resuming refuses a changed config
  (but for RESUME_MAY_CHANGE) and changed manifest contents (unless train.allow_changed_data).
- Ctrl-C (SIGINT) finishes the current step, evaluates dev and saves `last` / `best` as a scheduled evaluation
  does, then raises TrainingInterrupted (a KeyboardInterrupt; the CLI exits 130). A second Ctrl-C stops at once.
- A NaN/inf training loss stops the run with an error naming the step (train.on_nonfinite_loss=skip skips the
  batch instead); metrics.json is only written by a run that finished.
- Before any work: the folder is locked (a second `train` into it fails naming the first), its folders must be
  writable and its disk must hold the checkpoints.
- Batches: `train.batch_seconds` is the GLOBAL batch. Under DDP (torchrun or train.devices > 1) every rank
  builds the same duration batches and takes every world_size-th utterance of each; the loss of each rank is
  scaled by (its utterances * world_size / batch utterances), so DDP's gradient averaging yields the gradient
  of the whole batch's mean loss: the same update as one process (up to float noise).
- Dev evaluation runs on the full dev set in every rank (no cross-rank gathering needed), every
  `train.val_every_steps` steps and after the last step; `last` and `best` are saved right after it.
- Feature cache: used when every upstream is frozen and `cache` is not `off`. `cache: auto` means
  $SPEECHFUSE_HOME/cache when SPEECHFUSE_HOME is set, else RUN_DIR/../cache (shared by the runs of one
  parent folder, as a sweep does). Each DDP rank extracts its own shard, then all ranks wait and read all.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import CheckpointError, SafetensorsCheckpointIO, load_checkpoint_file
from .config import Config, config_from_dict, config_to_dict, config_to_yaml
from .data.batching import DurationBatchSampler
from .data.dataset import AudioDataset, collate_audio
from .data.manifest import (BadRow, ClipLimit, ManifestError, Utterance, clip_limit, validate_manifest,
                            write_bad_rows)
from .errors import ConfigError, SpeechfuseError
from .frontend import FusionFrontend
from .hidden import HiddenStates
from .model import build_frontend, build_task, save_run_model
from .runfolder import (CKPT_DIR, LOGS_DIR, RunLock, check_data_unchanged, check_free_space, check_writable,
                        disk_full, record_fingerprint, write_atomic)
from .tasks import Task, check_targets_known

LAST = "last"
BEST = "best"
EXT = ".safetensors"
SPLITS = ("train", "dev", "test")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def load_splits(cfg: Config, run_dir: Path, task_field: str, which: tuple[str, ...] = SPLITS,
                max_clip: Optional[ClipLimit] = None) -> dict[str, list[Utterance]]:
    """Validated utterances of every split, the target copied into `task_field`.

    Fails before any training with one error listing every bad row of every split (clips longer than
    `max_clip` included), unless train.skip_bad_rows: then bad rows are dropped and listed in
    RUN_DIR/skipped_<split>.csv.
    """
    source = cfg.data.target or task_field
    skip = cfg.train.skip_bad_rows
    out: dict[str, list[Utterance]] = {}
    problems: list[str] = []
    row_problems = False  # rows that skip_bad_rows could drop (not, say, an empty manifest)
    for split in which:
        path = getattr(cfg.data, split)
        if path is None:
            continue
        skipped = run_dir / f"skipped_{split}.csv"
        if skipped.is_file():
            skipped.unlink()  # from an earlier attempt
        check = source if source in ("text", "label") else None
        try:
            utts = validate_manifest(path, target=check, skip_bad=skip, skipped_out=skipped, max_clip=max_clip)
        except ManifestError as err:
            problems.append(f"data.{split}: {err}")
            row_problems |= bool(err.bad_rows) and not skip
            continue
        if check is None:  # a target the manifest checker does not know (speaker, language)
            dropped = _read_bad(skipped)
            rows = _row_numbers(len(utts), {b.row for b in dropped})
            missing = [(row, u) for row, u in zip(rows, utts) if not (getattr(u, source) or "").strip()]
            if missing and not skip:
                listing = "\n".join(f"  row {row} (id {u.id!r}, path {u.path!r}): missing {source}"
                                     for row, u in missing)
                problems.append(f"data.{split}: manifest {path}: {len(missing)} row(s) lack the target "
                                f"field {source!r} (rows are 1-based data rows):\n{listing}")
                row_problems = True
                continue
            if missing:
                bad = dropped + [BadRow(row, u.id, u.path, f"missing {source}") for row, u in missing]
                write_bad_rows(sorted(bad, key=lambda b: b.row), skipped)
                gone = {u.id for _, u in missing}
                utts = [u for u in utts if u.id not in gone]
        if source != task_field:
            utts = [dataclasses.replace(u, **{task_field: getattr(u, source)}) for u in utts]
        if not utts:
            problems.append(f"data.{split}: manifest {path} has no usable rows")
        out[split] = utts
    if problems:
        hint = ("\nFix these rows, or set train.skip_bad_rows=true to drop them (they are listed in "
                "RUN_DIR/skipped_<split>.csv)." if row_problems else "")
        raise ConfigError("bad input, nothing was trained:\n" + "\n".join(problems) + hint)
    return out


def _row_numbers(count: int, dropped: set[int]) -> list[int]:
    """Manifest row numbers of the `count` rows kept when the rows in `dropped` were skipped."""
    rows, row = [], 0
    for _ in range(count):
        row += 1
        while row in dropped:
            row += 1
        rows.append(row)
    return rows


def _read_bad(path: Path) -> list[BadRow]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [BadRow(int(r["row"]), r["id"], r["path"], r["reason"]) for r in csv.DictReader(f)]


@dataclasses.dataclass
class FusionBatch:
    """One (per-rank) batch: audio, or cached hidden states of every upstream, plus the encoded targets.

    weight scales the loss so that DDP's gradient average equals the global batch's mean (1 in one process)."""

    utts: list[Utterance]
    targets: Any
    wavs: Optional[torch.Tensor] = None
    wav_lengths: Optional[torch.Tensor] = None
    states: Optional[list[HiddenStates]] = None
    weight: float = 1.0


class _Items(Dataset):
    """Indexed by (index, global batch size, real) keys from _SplitBatches; audio read unless cached."""

    def __init__(self, utts: list[Utterance], sample_rate: int, read_audio: bool) -> None:
        self.utts = utts
        self.audio = AudioDataset(utts, sample_rate) if read_audio else None

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, key):
        index, global_size, real = key if isinstance(key, tuple) else (key, 1, True)
        item = self.audio[index] if self.audio is not None else self.utts[index]
        return item, global_size, real


class _Collate:
    def __init__(self, task: Task, entries: Optional[list] = None, world_size: int = 1) -> None:
        self.task, self.entries, self.world_size = task, entries, world_size

    def __call__(self, items) -> FusionBatch:
        global_size, real = items[0][1], sum(bool(r) for _, _, r in items)
        weight = real * self.world_size / global_size
        if self.entries is None:
            audio = collate_audio([it for it, _, _ in items])
            utts = audio.utts
            batch = FusionBatch(utts, None, wavs=audio.wavs, wav_lengths=audio.wav_lengths, weight=weight)
        else:
            utts = [it for it, _, _ in items]
            batch = FusionBatch(utts, None, states=[e.read(utts) for e in self.entries], weight=weight)
        batch.targets = self.task.encode(utts)
        return batch


class _Position:
    """Batches trained in the current epoch; after a resume, how many to skip."""

    def __init__(self) -> None:
        self.epoch, self.seen = 0, 0
        self.skip_epoch, self.skip = -1, 0

    def advance(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.seen = epoch, 0
        self.seen += 1

    def take_skip(self, epoch: int) -> int:
        skip = self.skip if epoch == self.skip_epoch else 0
        self.skip_epoch, self.skip = -1, 0
        if skip:
            self.epoch, self.seen = epoch, skip
        return skip


class _SplitBatches(Sampler):
    """Global duration batches (identical on every rank); rank r takes utterances r, r+W, ... of each.

    `sampler` is the DurationBatchSampler: Lightning calls its set_epoch. A rank whose share of a small
    batch is empty gets one utterance with loss weight 0 (DDP needs every rank to step)."""

    def __init__(self, sampler: DurationBatchSampler, world_size: int = 1, rank: int = 0,
                 position: Optional[_Position] = None) -> None:
        self.sampler, self.world_size, self.rank, self.position = sampler, world_size, rank, position

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        batches = self.sampler.global_batches()
        skip = self.position.take_skip(self.sampler.epoch) if self.position is not None else 0
        for batch in batches[skip:]:
            share = batch[self.rank:: self.world_size]
            if share:
                yield [(i, len(batch), True) for i in share]
            else:
                yield [(batch[0], len(batch), False)]


def resolve_cache_dir(cfg: Config, run_dir: Path) -> Optional[Path]:
    if cfg.cache.dir == "off":
        return None
    if cfg.cache.dir == "auto":
        home = os.environ.get("SPEECHFUSE_HOME")
        return Path(home) / "cache" if home else run_dir.resolve().parent / "cache"
    return Path(cfg.cache.dir)


class FusionData(pl.LightningDataModule):
    """Loaders for train / dev / test; fills the feature cache (this rank's shard) in setup()."""

    def __init__(self, cfg: Config, task: Task, splits: dict[str, list[Utterance]], frontend: FusionFrontend,
                 cache_dir: Optional[Path], position: Optional[_Position] = None) -> None:
        super().__init__()
        self.cfg, self.task, self.splits, self.frontend = cfg, task, splits, frontend
        self.cache_dir, self.position = cache_dir, position
        self.entries: Optional[list] = None
        self.world_size, self.rank = 1, 0

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        if trainer is not None:
            self.world_size, self.rank = trainer.world_size, trainer.global_rank
        if self.cache_dir is not None and self.entries is None:
            self.entries = self.fill_cache(trainer)

    def fill_cache(self, trainer: Optional[pl.Trainer] = None) -> list:
        from .cache import FeatureCache
        from .extract import fill_caches

        utts = [u for split in SPLITS for u in self.splits.get(split, [])]
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        cache = FeatureCache.from_config(self.cache_dir, self.cfg.cache)
        entries = fill_caches(list(self.frontend.upstreams), utts, cache,
                              batch_seconds=self.cfg.train.batch_seconds, device=device,
                              progress=self.cfg.train.progress_bar, rank=self.rank, world_size=self.world_size)
        if trainer is not None and self.world_size > 1:
            trainer.strategy.barrier("speechfuse-cache")
        for entry in entries:
            entry.refresh()
            missing = entry.missing(utts)
            if missing:
                raise SpeechfuseError(f"feature cache {entry.folder}: {len(missing)} utterance(s) still missing "
                                      f"after extraction (e.g. {missing[0].id!r}); delete the folder and rerun")
        return entries

    def loader(self, split: str, train: bool = False) -> DataLoader:
        utts = self.splits[split]
        seed = self.cfg.train.seed
        sampler = DurationBatchSampler([u.duration for u in utts], self.cfg.train.batch_seconds, shuffle=train,
                                       seed=seed)
        world, rank = (self.world_size, self.rank) if train else (1, 0)
        batches = _SplitBatches(sampler, world, rank, self.position if train else None)
        dataset = _Items(utts, self.frontend.sample_rate, read_audio=self.entries is None)
        workers = self.cfg.train.num_workers
        return DataLoader(dataset, batch_sampler=batches, collate_fn=_Collate(self.task, self.entries, world),
                          num_workers=workers, persistent_workers=False,
                          generator=torch.Generator().manual_seed(seed))  # never draws from the global RNG

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("dev")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class FusionTask(pl.LightningModule):
    """FusionFrontend (upstreams -> aligner -> interface) + the task head, trained with AdamW."""

    def __init__(self, cfg: Config, task: Task, frontend: Optional[FusionFrontend] = None) -> None:
        super().__init__()
        self.cfg, self.task = cfg, task
        self.frontend = frontend if frontend is not None else build_frontend(cfg)
        self.head = task.build_head(self.frontend.output_dim)
        self.position = _Position()
        self._rng_to_restore: Optional[dict] = None
        self._dev: list[tuple[list[str], list[str]]] = []
        self.dev_metrics: dict[str, float] = {}

    # -- forward ------------------------------------------------------------------------------
    def forward(self, batch: FusionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.states is not None:
            feats, lengths = self.frontend.fuse(batch.states)
        else:
            feats, lengths = self.frontend(batch.wavs, batch.wav_lengths)
        return self.head(feats, lengths)

    def transfer_batch_to_device(self, batch: FusionBatch, device: torch.device, dataloader_idx: int) -> FusionBatch:
        from lightning.fabric.utilities.apply_func import move_data_to_device

        return dataclasses.replace(
            batch,
            targets=move_data_to_device(batch.targets, device),
            wavs=None if batch.wavs is None else batch.wavs.to(device),  # wav_lengths stay on the host
            states=None if batch.states is None else [s.to(device) for s in batch.states],
        )

    # -- training -----------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # right after a resume: continue the interrupted RNG stream
            torch.set_rng_state(self._rng_to_restore["cpu"])
            if "cuda" in self._rng_to_restore and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng_to_restore["cuda"], self.device)
            self._rng_to_restore = None

    def training_step(self, batch: FusionBatch, batch_idx: int) -> Optional[torch.Tensor]:
        out, out_lengths = self(batch)
        loss = self.task.loss(out, out_lengths, batch.targets)
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:  # every rank must stop or skip together, or DDP hangs
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            return self._nonfinite(loss, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.utts))
        return loss * batch.weight

    def _nonfinite(self, loss: torch.Tensor, batch: FusionBatch) -> None:
        ids = ", ".join(repr(u.id) for u in batch.utts[:5]) + (", ..." if len(batch.utts) > 5 else "")
        where = (f"the training loss is {float(loss.detach())} at step {self.global_step + 1} "
                 f"(epoch {self.current_epoch}; utterances {ids})")
        if self.cfg.train.on_nonfinite_loss == "skip":
            warnings.warn(f"{where}; batch skipped, no update (train.on_nonfinite_loss=skip)", stacklevel=2)
            return None
        raise NonFiniteLossError(f"{where}. Training stopped (train.on_nonfinite_loss=stop): nothing of this step was "
                                 "saved and no metrics were written; any checkpoint in the run folder is from an "
                                 "earlier step. Check these inputs, lower train.lr / train.interface_lr, or set "
                                 "train.on_nonfinite_loss=skip to skip such batches.")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.position.advance(self.trainer.current_epoch)

    def configure_optimizers(self):
        t = self.cfg.train
        groups = [
            {"name": "interface", "lr": t.interface_lr,
             "params": [p for m in (self.frontend.interface, self.frontend.aligner) for p in m.parameters()
                        if p.requires_grad]},
            {"name": "head", "lr": t.lr, "params": [p for p in self.head.parameters() if p.requires_grad]},
            {"name": "upstreams", "lr": t.upstream_lr or t.lr,
             "params": [p for p in self.frontend.upstreams.parameters() if p.requires_grad]},
        ]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ConfigError("nothing to train: the interface, head and upstreams have no trainable parameters")
        optimizer = torch.optim.AdamW(groups, weight_decay=t.weight_decay)
        warmup = t.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- dev evaluation -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._dev = []

    def validation_step(self, batch: FusionBatch, batch_idx: int) -> None:
        out, out_lengths = self(batch)
        self._dev.append((self.task.predict(out, out_lengths), self.task.references(batch.utts)))

    def on_validation_epoch_end(self) -> None:
        preds = [p for ps, _ in self._dev for p in ps]
        refs = [r for _, rs in self._dev for r in rs]
        self.dev_metrics = self.task.metrics(preds, refs)
        for name, value in self.dev_metrics.items():
            # every rank scores the whole dev set, so the values agree without syncing
            self.log(f"dev/{name}", float(value), prog_bar=name == self.task.main_metric, rank_zero_only=False)

    # -- checkpoints: only what is trained (frozen upstream weights come from the spec) ----------
    def _frozen_keys(self) -> set[str]:
        names = set()
        for i, up in enumerate(self.frontend.upstreams):
            if not up.trainable:
                names.update(f"frontend.upstreams.{i}.{k}" for k in up.state_dict())
        return names

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = self._frozen_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        rng = {"cpu": self._gather_rng(torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = self._gather_rng(torch.cuda.get_rng_state(self.device))
        checkpoint["speechfuse"] = {
            "rng": rng, "epoch": self.position.epoch, "seen": self.position.seen,
            "upstreams": [up.identity() for up in self.frontend.upstreams],
        }

    def _gather_rng(self, state: torch.Tensor) -> torch.Tensor:
        """[world_size, n] RNG states, one row per rank (Lightning's all_gather; every rank saves its own)."""
        if self.trainer.world_size == 1:
            return state[None]
        return self.all_gather(state.to(self.device)).cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_frozen(self, checkpoint)
        extra = checkpoint.get("speechfuse", {})
        if "rng" in extra:
            # this rank's own state (a run resumed on a different number of processes takes rank 0's)
            rank = self.global_rank
            self._rng_to_restore = {k: (v[rank] if rank < v.shape[0] else v[0]).clone()  # own storage
                                    for k, v in extra["rng"].items()}
            self.position.skip_epoch, self.position.skip = int(extra["epoch"]), int(extra["seen"])


def restore_frozen(model: FusionTask, checkpoint: dict) -> None:
    """Put the frozen upstream weights (not stored) back, after checking they are the ones trained with."""
    saved = checkpoint.get("speechfuse", {}).get("upstreams")
    if saved is not None:
        for i, (up, ident) in enumerate(zip(model.frontend.upstreams, saved)):
            if not up.trainable and ident.get("fingerprint") != up.fingerprint():
                raise ConfigError(f"upstream {i} ({up.name}) has different weights than when this run was trained "
                                  "(fingerprint mismatch); load the same model version to evaluate or resume")
    own = model.state_dict()
    for key in model._frozen_keys():
        checkpoint["state_dict"].setdefault(key, own[key])


class _ValidateAtEnd(Callback):
    """Ask for a dev evaluation (and so the checkpoints) after the very last step, whatever val_every_steps."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        if trainer.global_step >= trainer.max_steps or (
                last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            trainer.should_stop = True


class NonFiniteLossError(SpeechfuseError):
    """The training loss became NaN or infinite (train.on_nonfinite_loss=stop)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the message says whether a checkpoint was saved first."""


class _Checkpoint(ModelCheckpoint):
    """Stores its file paths relative to the checkpoints folder: Lightning's absolute paths made a moved or
    copied run folder forget its best score, so the next evaluation replaced `best` whatever its score."""

    FILE_EXTENSION = EXT

    def state_dict(self) -> dict[str, Any]:
        return self._paths(super().state_dict(), lambda p: Path(p).name, dirpath=".")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # older checkpoints hold absolute paths: only the file name counts, in this run folder
        super().load_state_dict(self._paths(state_dict, lambda p: str(Path(self.dirpath) / Path(p).name),
                                            dirpath=self.dirpath))

    @staticmethod
    def _paths(state: dict[str, Any], convert, dirpath: Optional[str]) -> dict[str, Any]:
        def fix(path):
            return convert(path) if path else path

        out = dict(state, dirpath=dirpath)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in out:
                out[key] = fix(out[key])
        if "best_k_models" in out:
            out["best_k_models"] = {fix(p): v for p, v in out["best_k_models"].items()}
        return out


class _StopOnInterrupt(Callback):
    """Ctrl-C during the training loop: finish the step, then stop through `should_stop`, which makes Lightning
    evaluate dev and save `last` / `best` exactly where scheduled evaluations do (so the run resumes exactly).
    Before the loop (cache extraction) or a second time: KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        first = not self.requested
        self.requested = True
        if not (first and self.in_loop):
            raise KeyboardInterrupt
        print("\nspeechfuse: Ctrl-C: saving a checkpoint after this step (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_loop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_loop = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        stop = self.requested
        if trainer.world_size > 1:  # each rank gets its own SIGINT, maybe a step apart: stop together
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop = True


class _KillForTests(Callback):
    """Test hook: SPEECHFUSE_TEST_KILL_AFTER_STEP=k SIGKILLs the process when step k+1 is about to start
    (after step k's checkpoints), to test exact resume."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
def _devices(cfg: Config) -> Any:
    devices = cfg.train.devices
    launched = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun sets it
    if launched > 1 and devices in (1, "auto"):
        return launched
    return devices


def make_trainer(cfg: Config, run_dir: Path, task: Task, extra_callbacks: list | None = None) -> pl.Trainer:
    from lightning.pytorch.strategies import DDPStrategy

    t = cfg.train
    devices = _devices(cfg)
    multi = (isinstance(devices, int) and devices > 1) or int(os.environ.get("WORLD_SIZE", "1")) > 1
    strategy: Any = "auto"
    if multi:
        backend = "gloo" if t.accelerator == "cpu" or not torch.cuda.is_available() else None
        strategy = DDPStrategy(process_group_backend=backend)
    ckpt_dir = run_dir / CKPT_DIR
    monitor = f"dev/{task.main_metric}"
    callbacks: list[Callback] = [
        _Checkpoint(dirpath=ckpt_dir, filename=BEST, monitor=monitor, mode="max" if task.higher_is_better else "min",
                    save_top_k=1, save_on_train_epoch_end=False, enable_version_counter=False),
        _Checkpoint(dirpath=ckpt_dir, filename=LAST, monitor=None, save_top_k=1, save_on_train_epoch_end=False,
                    enable_version_counter=False),
        _ValidateAtEnd(),
        *(extra_callbacks or []),
    ]
    if t.progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar())  # plain lines in logs; shows no "Epoch 0/-2" for step-bound runs
    kill = os.environ.get("SPEECHFUSE_TEST_KILL_AFTER_STEP")
    if kill:
        callbacks.append(_KillForTests(int(kill)))
    # a resumed run logs into the next version_N folder, so the earlier part's CSV is kept
    loggers = [CSVLogger(run_dir / "logs", name="csv"),
               TensorBoardLogger(run_dir / "logs", name="tensorboard", version="")]
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return _trainer(t, run_dir, devices, strategy, callbacks, loggers)
    except (MisconfigurationException, ValueError) as err:
        raise ConfigError(f"train.accelerator={t.accelerator!r}, train.devices={t.devices!r}, "
                          f"train.precision={t.precision!r}: {err}") from err


def _trainer(t, run_dir, devices, strategy, callbacks, loggers) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=run_dir, max_steps=t.max_steps, max_epochs=t.max_epochs or -1,
        accelerator=t.accelerator, devices=devices, strategy=strategy, precision=t.precision,
        plugins=[SafetensorsCheckpointIO()], callbacks=callbacks, logger=loggers,
        val_check_interval=t.val_every_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        use_distributed_sampler=False, deterministic="warn" if t.deterministic else None,
        gradient_clip_val=t.grad_clip, log_every_n_steps=min(50, t.val_every_steps),
        enable_progress_bar=t.progress_bar, enable_model_summary=t.progress_bar,
    )


# train keys a resumed run may change: they do not change what is computed, only how long / where / how shown
# (or how a failure is handled)
RESUME_MAY_CHANGE = {"max_steps", "max_epochs", "val_every_steps", "progress_bar", "num_workers", "devices",
                     "accelerator", "importance", "skip_bad_rows", "on_nonfinite_loss", "allow_changed_data"}


def _check_same_config(cfg: Config, run_dir: Path) -> None:
    """Resuming (a last checkpoint exists) with a config that computes something else is an error."""
    import yaml

    path = run_dir / "config.yaml"
    if not (run_dir / CKPT_DIR / f"{LAST}{EXT}").is_file() or not path.is_file():
        return

    def essential(c: Config) -> dict:
        d = config_to_dict(c)
        d.pop("cache")
        d["train"] = {k: v for k, v in d["train"].items() if k not in RESUME_MAY_CHANGE}
        return d

    try:
        old = config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), run_dir, str(path))
    except (SpeechfuseError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml is unreadable ({err}); train into a new "
                          "folder (--out)") from err
    new, before = essential(cfg), essential(old)
    diff = sorted(f"{section}.{k}" if isinstance(new[section], dict) and isinstance(before.get(section), dict)
                  else section
                  for section in new if new[section] != before.get(section)
                  for k in ((x for x in new[section] if new[section].get(x) != before[section].get(x))
                            if isinstance(new[section], dict) and isinstance(before.get(section), dict) else [None]))
    if diff:
        raise ConfigError(f"run folder {run_dir} holds a checkpoint of a run with a different config ({', '.join(diff)} "
                          f"differ); resume it with the same config (only train.{{{', '.join(sorted(RESUME_MAY_CHANGE))}}} "
                          "and cache may change), or train into a new folder (--out)")


def _check_same_task(task: Task, run_dir: Path) -> None:
    """On resume, the task fitted now (labels / vocabulary) must be the one the checkpoints were trained for."""
    path = run_dir / "task.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != json.loads(json.dumps(task.state())):
        raise ConfigError(f"cannot resume {run_dir}: the training data now gives the task other labels / another "
                          f"vocabulary than {path}, which its checkpoints were trained for; train into a new folder "
                          "(--out)")


@torch.no_grad()
def score(model: FusionTask, loader: DataLoader) -> dict[str, float]:
    """The task's metrics over every batch of `loader` (eval mode, on the model's device)."""
    was_training = model.training
    model.eval()
    preds, refs = [], []
    try:
        for batch in loader:
            batch = model.transfer_batch_to_device(batch, model.device, 0)
            out, out_lengths = model(batch)
            preds += model.task.predict(out, out_lengths)
            refs += model.task.references(batch.utts)
    finally:
        model.train(was_training)
    return {k: float(v) for k, v in model.task.metrics(preds, refs).items()}


def _load_weights(model: FusionTask, path: Path) -> None:
    checkpoint = load_checkpoint_file(path)
    restore_frozen(model, checkpoint)
    model.load_state_dict(checkpoint["state_dict"])


def write_interface_report(model: FusionTask, loader: DataLoader, run_dir: Path, importance: bool = True) -> dict:
    """interface.json (describe() + drop-one-layer importance on one dev batch) and layers.png."""
    interface = model.frontend.interface
    info: dict[str, Any] = {"interface": model.cfg.interface.name, "num_parameters": interface.num_parameters()}
    if importance:
        from .importance import layer_importance

        batch = model.transfer_batch_to_device(next(iter(loader)), model.device, 0)
        states = batch.states if batch.states is not None else model.frontend.extract(batch.wavs, batch.wav_lengths)
        info["importance"] = layer_importance(model.frontend, states)
    info["describe"] = interface.describe()
    write_atomic(run_dir / "interface.json", json.dumps(info, indent=2, default=float))
    try:
        from .report import plot_importance
    except ImportError:
        plot_importance = None
    if plot_importance is not None:
        plot_importance(info["describe"], run_dir / "layers.png",
                        title=f"{model.cfg.interface.name}: " + "+".join(u.spec for u in model.cfg.upstreams))
    return info


def _resume_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: `last`, or `best` with a warning when `last` is damaged; None for a new run."""
    last, best = run_dir / CKPT_DIR / f"{LAST}{EXT}", run_dir / CKPT_DIR / f"{BEST}{EXT}"
    if not last.is_file():
        return None
    try:
        load_checkpoint_file(last)
        return last
    except CheckpointError as err:
        damaged = err
    if not best.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: {damaged}")
    try:
        step = load_checkpoint_file(best).get("global_step")
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume {run_dir}: both checkpoints are damaged. {damaged} {err}") from err
    warnings.warn(f"cannot resume from {last}, it is damaged ({str(damaged).split('; ')[0]}); resuming from {best} "
                  f"(step {step}) instead", stacklevel=3)
    return best


def _checkpoint_bytes(model: FusionTask) -> int:
    """Size of one checkpoint: the stored (not frozen) weights plus AdamW's two moments per trainable weight."""
    frozen = model._frozen_keys()
    stored = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k not in frozen)
    return stored + 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def train(cfg: Config, out_dir: str | os.PathLike, callbacks: list | None = None) -> dict:
    """Train (or resume) the run in `out_dir`; returns {"dev": {...}, "test": {...}} of the best checkpoint."""
    run_dir = Path(out_dir)
    check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # one `train` per folder; DDP's other ranks belong to the run that rank 0 locked
    with RunLock(run_dir) if rank_zero_only.rank == 0 else nullcontext():
        return _train(cfg, run_dir, callbacks)


def _train(cfg: Config, run_dir: Path, callbacks: list | None) -> dict:
    check_writable(run_dir, run_dir / CKPT_DIR, run_dir / LOGS_DIR)
    _check_same_config(cfg, run_dir)
    resume = _resume_checkpoint(run_dir)
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
        _check_same_task(task, run_dir)
    is_zero = rank_zero_only.rank == 0
    if is_zero:
        config_text = config_to_yaml(cfg)
        write_atomic(run_dir / "config.yaml", config_text)  # other ranks may be reading it
        write_atomic(run_dir / "task.json", json.dumps(task.state(), indent=2))
        record_fingerprint(run_dir, config_text, manifests)

    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)  # same initial weights on every rank
    model = FusionTask(cfg, task, frontend)
    if is_zero:  # last + best + the one being written, side by side for a moment
        check_free_space(run_dir, 3 * _checkpoint_bytes(model) + 2**20, "three checkpoints (last, best, one being "
                         "written)")
    frozen = all(not u.trainable for u in model.frontend.upstreams)
    cache_dir = resolve_cache_dir(cfg, run_dir) if frozen else None
    data = FusionData(cfg, task, splits, model.frontend, cache_dir, model.position)
    stopper = _StopOnInterrupt()
    trainer = make_trainer(cfg, run_dir, task, [*(callbacks or []), stopper])
    last = run_dir / CKPT_DIR / f"{LAST}{EXT}"
    stopper.install()
    try:
        with warnings.catch_warnings():
            # FusionTask restores the position inside the epoch itself (_Position), so this warning is moot;
            # frozen upstreams are in eval mode on purpose
            warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
            trainer.fit(model, datamodule=data, ckpt_path=str(resume) if resume is not None else None)
    except SystemExit as err:  # Lightning answers a KeyboardInterrupt with sys.exit(1)
        if stopper.requested:
            raise TrainingInterrupted(f"training of {run_dir} stopped by Ctrl-C before it saved a checkpoint; run "
                                      "the same command again to resume from its last checkpoint, if any") from err
        raise
    except OSError as err:
        full = disk_full(err, run_dir)
        if full is not None:
            raise full from err
        raise
    finally:
        stopper.uninstall()
    if stopper.requested:
        raise TrainingInterrupted(f"training of {run_dir} stopped by Ctrl-C after step {trainer.global_step}; "
                                  f"{last} was saved: run the same command again to resume")
    if trainer.interrupted:
        raise SpeechfuseError(f"training of {run_dir} was interrupted; run the same command again to resume "
                              "from its last checkpoint")

    best = Path(trainer.checkpoint_callback.best_model_path or "") if trainer.checkpoint_callback else None
    best = best if best and best.is_file() else run_dir / CKPT_DIR / f"{BEST}{EXT}"
    if not best.is_file():
        best = last
    _load_weights(model, best)
    model.to(trainer.strategy.root_device)
    metrics = {"dev": score(model, data.val_dataloader())}
    if "test" in splits:
        metrics["test"] = score(model, data.test_dataloader())
    if is_zero:
        write_interface_report(model, data.val_dataloader(), run_dir, cfg.train.importance)
        save_run_model(cfg, task, model.frontend, model.head, run_dir, metrics, best.stem)  # RUN_DIR/model/
        # last: a sweep treats a run folder with metrics.json as finished
        write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def load_run(run_dir: str | os.PathLike, checkpoint: str = BEST) -> tuple[FusionTask, Config]:
    """Rebuild the trained model of a run folder from config.yaml + task.json + a checkpoint."""
    import yaml

    run_dir = Path(run_dir)
    for name in ("config.yaml", "task.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir} is not a finished speechfuse run folder: {name} is missing")
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")), run_dir,
                           str(run_dir / "config.yaml"))
    task = Task.from_state(json.loads((run_dir / "task.json").read_text(encoding="utf-8")))
    model = FusionTask(cfg, task)
    path = run_dir / CKPT_DIR / f"{checkpoint}{EXT}"
    if not path.is_file():
        path = run_dir / CKPT_DIR / f"{LAST}{EXT}"
    _load_weights(model, path)
    return model, cfg


def evaluate(run_dir: str | os.PathLike, split: str = "test", device: str | None = None) -> dict:
    """Metrics of the run's best checkpoint on `split` (train | dev | test)."""
    if split not in SPLITS:
        raise ConfigError(f"evaluate: split must be one of {', '.join(SPLITS)}, got {split!r}")
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir)
    if getattr(cfg.data, split) is None:
        raise ConfigError(f"evaluate: the run's config has no data.{split} manifest")
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    splits = load_splits(cfg, run_dir / "eval", model.task.target_field, which=(split,),
                         max_clip=clip_limit(model.frontend.upstreams))
    check_targets_known(model.task, splits, {split: getattr(cfg.data, split)})
    frozen = all(not u.trainable for u in model.frontend.upstreams)
    data = FusionData(cfg, model.task, {split: splits[split]}, model.frontend,
                      resolve_cache_dir(cfg, run_dir) if frozen else None)
    data.setup("test")
    return {split: score(model, data.loader(split))}


__all__ = ["train", "evaluate", "load_run", "FusionTask", "FusionData", "FusionBatch", "score", "make_trainer",
           "load_splits", "build_frontend", "build_task", "resolve_cache_dir", "write_interface_report",
           "NonFiniteLossError", "TrainingInterrupted"]
