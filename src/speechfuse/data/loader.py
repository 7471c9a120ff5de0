"""What the runner reads: a config's splits as validated utterances, batched into FusionBatches.

    splits = load_splits(cfg, run_dir, task.target_field, max_clip=clip_limit(frontend.upstreams))
    data = FusionData(cfg, task, splits, frontend, resolve_cache_dir(cfg), position)
    trainer.fit(model, datamodule=data)

- Batches: `train.batch_seconds` is the GLOBAL batch. Under DDP (torchrun or train.devices > 1) every rank
  builds the same duration batches and takes every world_size-th utterance of each; the loss of each rank is
  scaled by (its utterances * world_size / batch utterances), so DDP's gradient averaging yields the gradient
  of the whole batch's mean loss: the same update as one process (up to float noise).
- Dev and test loaders are not sharded: every rank scores the full split.
- Resume inside an epoch: an EpochPosition, saved in the checkpoint by the LightningModule, makes the train
  sampler skip the batches already trained on.
- Feature cache: used when every upstream is frozen and `cache` is not `off`. `cache: auto` means
  $SPEECHFUSE_HOME/cache (default ~/.cache/speechfuse/cache), one cache shared by every train, sweep and
  extract of this user (resolve_cache_dir is the one place that decides). Each DDP rank extracts its own shard, then all ranks wait and read all.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import random
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from speechfuse.cache.store import FeatureCache
from speechfuse.io import speechfuse_home
from speechfuse.training.runfolder import RunFolder
from speechfuse.config import Config
from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.cache.extract import fill_caches
from speechfuse.fusion.frontend import FusionFrontend
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.tasks import Task
from speechfuse.data.batching import DurationBatchSampler
from speechfuse.data.dataset import AudioDataset, AudioItem, collate_audio
from speechfuse.data.manifest import BadRow, ClipLimit, ManifestError, Utterance, validate_manifest, write_bad_rows

SPLITS = ("train", "dev", "test")


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
        skipped = RunFolder(run_dir).skipped(split)
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
        if cfg.data.languages is not None and utts:
            utts = [u for u in utts if u.language in cfg.data.languages]
            if not utts:
                problems.append(f"data.{split}: manifest {path} has no rows of data.languages "
                                f"{cfg.data.languages} (its `language` column)")
                continue
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
    """Pads one batch; with crop_seconds (training only), each longer clip is cut to a random span of that
    length first: its audio, or the same seconds of every upstream's cached hidden states."""

    def __init__(self, task: Task, entries: Optional[list] = None, world_size: int = 1,
                 crop_seconds: Optional[float] = None, seed: int = 0, sample_rate: int = 16000) -> None:
        self.task, self.entries, self.world_size = task, entries, world_size
        self.crop_seconds, self.sample_rate = crop_seconds, sample_rate
        self.rng = random.Random(seed)  # its own generator: cropping never draws from the global RNG

    def __call__(self, items) -> FusionBatch:
        global_size, real = items[0][1], sum(bool(r) for _, _, r in items)
        weight = real * self.world_size / global_size
        if self.entries is None:
            audio_items = [it for it, _, _ in items]
            if self.crop_seconds is not None:
                audio_items = [self._crop_audio(it) for it in audio_items]
            audio = collate_audio(audio_items)
            utts = audio.utts
            batch = FusionBatch(utts, None, wavs=audio.wavs, wav_lengths=audio.wav_lengths, weight=weight)
        else:
            utts = [it for it, _, _ in items]
            states = [e.read(utts) for e in self.entries]
            if self.crop_seconds is not None:
                starts = [self._crop_start(u.duration) for u in utts]
                states = [crop_states(s, starts, self.crop_seconds) for s in states]
            batch = FusionBatch(utts, None, states=states, weight=weight)
        batch.targets = self.task.encode(utts)
        return batch

    def _crop_start(self, seconds: Optional[float]) -> float:
        """A random start (seconds) of a crop_seconds span inside a clip of `seconds` (0 when it fits)."""
        spare = (seconds or 0.0) - self.crop_seconds
        return self.rng.uniform(0.0, spare) if spare > 0 else 0.0

    def _crop_audio(self, item: AudioItem) -> AudioItem:
        keep = round(self.crop_seconds * self.sample_rate)
        if item.wav.shape[0] <= keep:
            return item
        start = round(self._crop_start(item.wav.shape[0] / self.sample_rate) * self.sample_rate)
        start = min(start, item.wav.shape[0] - keep)
        return AudioItem(item.utt, item.wav[start:start + keep])


def crop_states(states: HiddenStates, starts: list[float], seconds: float) -> HiddenStates:
    """Each row's frames from starts[b] seconds on, at most `seconds` long, left-aligned and re-padded."""
    rate = states.frame_rate
    firsts = [min(int(start * rate), int(n)) for start, n in zip(starts, states.lengths.tolist())]
    lengths = [min(int(n) - first, math.ceil(seconds * rate)) for first, n in zip(firsts, states.lengths.tolist())]
    hidden = states.hidden.new_zeros(*states.hidden.shape[:2], max(lengths), states.hidden.shape[3])
    for b, (first, n) in enumerate(zip(firsts, lengths)):
        hidden[:, b, :n] = states.hidden[:, b, first:first + n]
    return HiddenStates(hidden, torch.tensor(lengths, dtype=torch.long, device=states.lengths.device),
                        rate, states.name)


class EpochPosition:
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
                 position: Optional[EpochPosition] = None) -> None:
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


def resolve_cache_dir(cfg: Config) -> Optional[Path]:
    """The one place that decides the feature cache folder: None for `cache: off`, speechfuse_home()/cache
    for `auto` (shared by every train, sweep, extract and evaluate of this user), else the folder named."""
    if cfg.cache.dir == "off":
        return None
    if cfg.cache.dir == "auto":
        return speechfuse_home() / "cache"
    return Path(cfg.cache.dir)


class FusionData(pl.LightningDataModule):
    """Loaders for train / dev / test; fills the feature cache (this rank's shard) in setup()."""

    def __init__(self, cfg: Config, task: Task, splits: dict[str, list[Utterance]], frontend: FusionFrontend,
                 cache_dir: Optional[Path], position: Optional[EpochPosition] = None) -> None:
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
        return self.utterance_loader(self.splits[split], train)

    def utterance_loader(self, utts: list[Utterance], train: bool = False) -> DataLoader:
        """Batches of `utts` (of the splits given, so cached when the splits are: the runner embeds the
        verify task's cohort of training utterances through this)."""
        seed = self.cfg.train.seed
        crop = self.cfg.train.crop_seconds if train else None
        durations = [u.duration if crop is None else min(u.duration, crop) for u in utts]
        buckets = self.cfg.train.bucket_utterances if train else None
        sampler = DurationBatchSampler(durations, self.cfg.train.batch_seconds, shuffle=train, seed=seed,
                                       bucket_utterances=buckets, half_over_seconds=self.cfg.train.half_batch_over_seconds)
        world, rank = (self.world_size, self.rank) if train else (1, 0)
        batches = _SplitBatches(sampler, world, rank, self.position if train else None)
        dataset = _Items(utts, self.frontend.sample_rate, read_audio=self.entries is None)
        workers = self.cfg.train.num_workers
        collate = _Collate(self.task, self.entries, world, crop, seed, self.frontend.sample_rate)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                          num_workers=workers, persistent_workers=False,
                          generator=torch.Generator().manual_seed(seed))  # never draws from the global RNG

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("dev")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")


__all__ = ["SPLITS", "load_splits", "FusionBatch", "EpochPosition", "resolve_cache_dir", "FusionData"]
