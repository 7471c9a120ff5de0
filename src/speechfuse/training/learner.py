"""How the fused model learns: the LightningModule, its callbacks and the Trainer they run in.

    model = FusionTask(cfg, task, frontend)          # FusionFrontend + the task head, AdamW
    trainer = make_trainer(cfg, run_dir, task, [StopOnInterrupt()])
    trainer.fit(model, datamodule=FusionData(...))   # speechfuse.data.loader

- Checkpoints hold only what is trained: frozen upstream weights come back from the spec, after a check that
  their fingerprint is the one trained with (restore_frozen). They also hold every rank's RNG state and the
  position inside the epoch, so a resumed run continues exactly where it stopped.
- A NaN/inf training loss stops the run with NonFiniteLossError naming the step (train.on_nonfinite_loss=skip
  skips the batch instead).
- Dev evaluation runs on the full dev set in every rank (no cross-rank gathering needed), every
  `train.val_every_steps` steps and after the last step; `last` and `best` are saved right after it.
- Ctrl-C, SIGTERM or SIGUSR1 (StopOnInterrupt) finishes the current step, evaluates dev and saves `last` /
  `best` as a scheduled evaluation does; a second one stops at once.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from speechfuse.training.augment import SpecAugment
from speechfuse.training.average import DEV_LOSS, TOP_DIR
from speechfuse.training.checkpoint import SafetensorsCheckpointIO
from speechfuse.config import Config
from speechfuse.data.loader import EpochPosition, FusionBatch
from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.fusion.frontend import FusionFrontend
from speechfuse.training.interrupt import STOP_SIGNALS, Interrupted, signal_name
from speechfuse.fusion.model import build_frontend
from speechfuse.training.runfolder import BEST, CKPT_DIR, EXT, LAST, LOGS_DIR, STEPS_DIR
from speechfuse.tasks import Task


class NonFiniteLossError(SpeechfuseError):
    """The training loss became NaN or infinite (train.on_nonfinite_loss=stop)."""


class TrainingInterrupted(Interrupted):
    """A stop signal (Ctrl-C, SIGTERM, SIGUSR1) stopped training; the message says whether a checkpoint was saved."""
    says_how_to_resume = True


class FusionTask(pl.LightningModule):
    """FusionFrontend (upstreams -> aligner -> interface) + the task head, trained with AdamW."""

    def __init__(self, cfg: Config, task: Task, frontend: Optional[FusionFrontend] = None) -> None:
        super().__init__()
        self.cfg, self.task = cfg, task
        self.frontend = frontend if frontend is not None else build_frontend(cfg)
        self.head = task.build_head(self.frontend.output_dim)
        # training-only masks on the fused features (train.specaug); no weights, so checkpoints are unchanged
        aug = cfg.train.specaug
        self.specaug = SpecAugment(**aug.model_dump()) if aug is not None else None
        self.position = EpochPosition()
        self._rng_to_restore: Optional[dict] = None
        self._dev: list = []  # Task.collect records of the dev set
        self._dev_loss = [0.0, 0]
        self.dev_metrics: dict[str, float] = {}
        # who needs the dev loss scored (train.average_best, or a search that prunes on it); None: not scored
        self.dev_loss_for: Optional[str] = "train.average_best" if cfg.train.average_best else None

    # -- forward ------------------------------------------------------------------------------
    def forward(self, batch: FusionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.states is not None:
            feats, lengths = self.frontend.fuse(batch.states)
        else:
            feats, lengths = self.frontend(batch.wavs, batch.wav_lengths)
        if self.specaug is not None and self.training:
            feats = self.specaug(feats, lengths)
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
            *interface_param_groups([self.frontend.interface, self.frontend.aligner], t.interface_lr,
                                    t.interface_lr_scaling),
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
        self._dev_loss = [0.0, 0]  # summed per-batch loss x batch size, utterances (when dev_loss_for is set)

    def validation_step(self, batch: FusionBatch, batch_idx: int) -> None:
        out, out_lengths = self(batch)
        self._dev += self.task.collect(out, out_lengths, batch.utts)
        if self.dev_loss_for:
            try:
                loss = float(self.task.loss(out, out_lengths, batch.targets))
            except ConfigError as err:  # e.g. verify: dev speakers are not training classes
                raise ConfigError(f"{self.dev_loss_for} needs the dev loss, which task {self.task.name!r} cannot "
                                  f"compute on this dev set ({err}); "
                                  + ("set train.average_best: null" if self.dev_loss_for == "train.average_best"
                                     else "prune on the dev metric instead")) from None
            self._dev_loss[0] += loss * len(batch.utts)
            self._dev_loss[1] += len(batch.utts)

    def on_validation_epoch_end(self) -> None:
        self.dev_metrics = self.task.evaluate(self._dev, "dev")
        if self._dev_loss[1]:
            self.log(DEV_LOSS, self._dev_loss[0] / self._dev_loss[1], rank_zero_only=False)
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


def interface_param_groups(modules: list[torch.nn.Module], lr: float, scaling: str = "none") -> list[dict]:
    """The optimizer groups of the interface and aligner (train.interface_lr_scaling).

    none: one group at `lr`. fan_in: each nn.Linear / Conv1d's weight and bias at lr / sqrt(fan_in), one group
    per fan_in (`interface/fan_in=N`); the other parameters in the `interface` group at `lr`. Adam moves each
    weight by about its lr per step, whatever the gradient's size, while torch initialises these weights within
    +-1/sqrt(fan_in): at one lr for all, a wide conv's weights move by their own size in a step or two.
    """
    if scaling not in ("none", "fan_in"):
        raise ConfigError(f"train.interface_lr_scaling must be none or fan_in, got {scaling!r}")
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if scaling == "none":
        return [{"name": "interface", "lr": lr, "params": params}]
    fan_ins: dict[int, int] = {}  # id(parameter) -> fan_in of the layer it belongs to
    for m in modules:
        for layer in m.modules():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d)):
                fan_in = layer.weight[0].numel()
                fan_ins.update((id(p), fan_in) for p in layer.parameters(recurse=False))
    by_fan_in: dict[int, list] = {}
    plain = []
    for p in params:
        (by_fan_in.setdefault(fan_ins[id(p)], []) if id(p) in fan_ins else plain).append(p)
    groups = [{"name": "interface", "lr": lr, "params": plain}] if plain else []
    return groups + [{"name": f"interface/fan_in={n}", "lr": lr / n ** 0.5, "params": ps}
                     for n, ps in sorted(by_fan_in.items())]


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


def checkpoint_bytes(model: FusionTask) -> int:
    """Size of one checkpoint: the stored (not frozen) weights plus AdamW's two moments per trainable weight."""
    frozen = model._frozen_keys()
    stored = sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k not in frozen)
    return stored + 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# callbacks and the Trainer
# ---------------------------------------------------------------------------------------------
class _ValidateAtEnd(Callback):
    """Ask for a dev evaluation (and so the checkpoints) after the very last step, whatever val_every_steps."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        if trainer.global_step >= trainer.max_steps or (
                last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            trainer.should_stop = True


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


class StopOnInterrupt(Callback):
    """A stop signal (Ctrl-C, SIGTERM, SIGUSR1: speechfuse.training.interrupt) during the training loop: finish the step,
    then stop through `should_stop`, which makes Lightning evaluate dev and save `last` / `best` exactly where
    scheduled evaluations do (so the run resumes exactly). Before the loop (cache extraction) or a second time:
    Interrupted at once. Under DDP the ranks agree after every step, so all stop at the same step even when only
    one of them got the signal; `signum` is then the signal on every rank."""

    def __init__(self) -> None:
        self.requested = False  # this process got a stop signal
        self.signum = 0  # the signal that stops training (under DDP: also when another rank got it)
        self.in_loop = False
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def uninstall(self) -> None:
        for s, old in self._previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = not self.requested
        self.requested = True
        self.signum = self.signum or signum
        if not (first and self.in_loop):
            raise Interrupted(f"{signal_name(signum)} received", signum)
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        print(f"\nspeechfuse: {signal_name(signum)}: saving a checkpoint after this step ({again} again to stop at "
              "once)", file=sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_loop = True
        # Lightning's own SIGTERM handler stops without saving (and exits 0); its teardown restores ours
        if self._previous:
            for s in STOP_SIGNALS:
                signal.signal(s, self._on_signal)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.in_loop = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        signum = self.signum
        if trainer.world_size > 1:  # each rank gets its own signal, maybe a step apart, or none: stop together
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=trainer.strategy.root_device),
                                                 reduce_op="max"))
        if signum:
            self.signum = signum
            trainer.should_stop = True


class _StepCheckpoints(_Checkpoint):
    """Weights only, one file per dev evaluation, none removed (train.report_test_chosen). A class of its own:
    Lightning tells callbacks' saved states apart by class, monitor and mode, which `last` shares."""


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
    if t.average_best:  # the N lowest dev losses (speechfuse.training.average); before `last`, which then saves its state
        callbacks.insert(1, _Checkpoint(dirpath=ckpt_dir / TOP_DIR, filename="{step}", monitor=DEV_LOSS, mode="min",
                                        save_top_k=t.average_best, save_on_train_epoch_end=False,
                                        enable_version_counter=False))
    if t.report_test_chosen:  # every dev evaluation's weights, scored on test after fit (training.test_chosen)
        callbacks.insert(1, _StepCheckpoints(dirpath=ckpt_dir / STEPS_DIR, filename="{step}", monitor=None,
                                             save_top_k=-1, save_weights_only=True, save_on_train_epoch_end=False,
                                             enable_version_counter=False))
    from lightning.pytorch.callbacks import LearningRateMonitor

    from speechfuse.training.progress import quiet, verbose
    from speechfuse.training.stepbar import StepProgressBar, drop_adverts

    # one bar on stderr counting optimizer steps (Lightning's own counts batches per epoch, on stdout)
    callbacks += [StepProgressBar(task.main_metric, enabled=t.progress_bar and not quiet()),
                  LearningRateMonitor(logging_interval="step")]
    if verbose():  # the plain summary logs to stderr (Lightning's default, the rich one, prints to stdout)
        from lightning.pytorch.callbacks import ModelSummary

        callbacks.append(ModelSummary(max_depth=1))
    drop_adverts()
    loggers = make_loggers(t, run_dir)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return _trainer(t, run_dir, devices, strategy, callbacks, loggers)
    except (MisconfigurationException, ValueError) as err:
        raise ConfigError(f"train.accelerator={t.accelerator!r}, train.devices={t.devices!r}, "
                          f"train.precision={t.precision!r}: {err}") from err


def _trainer(t, run_dir, devices, strategy, callbacks, loggers) -> pl.Trainer:
    from speechfuse.training.progress import verbose

    return pl.Trainer(
        default_root_dir=run_dir, max_steps=t.max_steps, max_epochs=t.max_epochs or -1,
        accelerator=t.accelerator, devices=devices, strategy=strategy, precision=t.precision,
        plugins=[SafetensorsCheckpointIO()], callbacks=callbacks, logger=loggers,
        val_check_interval=t.val_every_steps, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        use_distributed_sampler=False, deterministic="warn" if t.deterministic else None,
        gradient_clip_val=t.grad_clip, log_every_n_steps=1,  # every step: the curves need them, and few runs
        enable_progress_bar=True, enable_model_summary=verbose(),  # are long enough for the CSV to matter
    )


def make_loggers(t, run_dir: Path) -> list:
    """The CSV log (always: RUN/curves.png is drawn from it) plus train.logger's (tensorboard by default). A resumed
    run logs into the next CSV version_N folder, so the earlier part's values are kept."""
    loggers: list = [CSVLogger(run_dir / LOGS_DIR, name="csv")]
    for name in ([t.logger] if isinstance(t.logger, str) else t.logger):
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir / LOGS_DIR, name="tensorboard", version=""))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(run_dir / LOGS_DIR), name=run_dir.name))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(MLFlowLogger(experiment_name="speechfuse", run_name=run_dir.name,
                                        save_dir=str(run_dir / LOGS_DIR / "mlruns")))
    return loggers


__all__ = ["FusionTask", "interface_param_groups", "restore_frozen", "checkpoint_bytes", "make_trainer", "StopOnInterrupt",
           "NonFiniteLossError", "TrainingInterrupted"]
