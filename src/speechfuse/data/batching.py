"""Duration-aware batching: similar lengths together so padding stays small.

Batches are built over the length-sorted corpus: each batch's padded duration (its size times its
longest clip) stays within `batch_seconds`; a single clip longer than that forms its own batch.
Shuffling changes the order of batches (and which equal-length clips share one) from epoch to epoch,
deterministically from seed + epoch. For DDP every rank builds the same global batch list, pads it by
repeating batches from its start so it divides evenly, and takes every `num_replicas`-th batch.
Use it as a `batch_sampler`; with Lightning set `use_distributed_sampler=False` and pass
`num_replicas` / `rank` yourself.
"""
from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

from torch.utils.data import Sampler

from speechfuse.errors import ConfigError


def make_batches(durations: Sequence[float], batch_seconds: float, rng: random.Random | None = None) -> list[list[int]]:
    """Length-sorted greedy batches (indices) whose padded duration is <= batch_seconds.

    With `rng`, clips of equal duration are ordered randomly before sorting; batch order is not shuffled here.
    """
    order = list(range(len(durations)))
    if rng is not None:
        rng.shuffle(order)
    order.sort(key=lambda i: durations[i])  # stable: random tie order survives
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # ascending order, so clip i is the longest if added
        if current and (len(current) + 1) * durations[i] > batch_seconds:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def s3prl_buckets(durations: Sequence[float], bucket_size: int, half_over_seconds: float) -> list[list[int]]:
    """s3prl's ASR batches (downstream/asr/dataset.py, SequenceDataset): the clips sorted longest first, cut
    into consecutive buckets of `bucket_size`; a full bucket whose longest clip is over `half_over_seconds`
    (s3prl: HALF_BATCHSIZE_TIME = 2000 samples, 0.125 s at 16 kHz, so every LibriSpeech bucket) becomes two,
    its first bucket_size // 2 clips and the rest; the last, partial bucket is kept, unhalved, only when it
    holds more than one clip. The composition is fixed; only the order of the buckets is shuffled."""
    order = sorted(range(len(durations)), key=lambda i: durations[i], reverse=True)
    batches: list[list[int]] = []
    for first in range(0, len(order), bucket_size):
        bucket = order[first:first + bucket_size]
        if len(bucket) < bucket_size:
            if len(bucket) > 1:
                batches.append(bucket)
        elif bucket_size >= 2 and max(durations[i] for i in bucket) > half_over_seconds:
            batches += [bucket[:bucket_size // 2], bucket[bucket_size // 2:]]
        else:
            batches.append(bucket)
    return batches


def padding_ratio(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Fraction of the padded audio that is padding: 1 - sum(real) / sum(batch size * longest clip)."""
    padded = sum(len(b) * max(durations[i] for i in b) for b in batches)
    real = sum(durations[i] for b in batches for i in b)
    return 0.0 if padded == 0 else 1.0 - real / padded


class DurationBatchSampler(Sampler[list[int]]):
    def __init__(self, durations: Sequence[float], batch_seconds: float, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False,
                 bucket_utterances: int | None = None, half_over_seconds: float = 0.125) -> None:
        """bucket_utterances: s3prl's buckets of that many clips (s3prl_buckets) instead of batch_seconds."""
        if len(durations) == 0:
            raise ConfigError("DurationBatchSampler: no durations given (empty dataset)")
        for i, d in enumerate(durations):
            if d is None or isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
                raise ConfigError(f"DurationBatchSampler: duration of item {i} is {d!r}; every duration must be a "
                                  "finite number of seconds >= 0 (fill missing ones with validate_manifest)")
        if not (isinstance(batch_seconds, (int, float)) and batch_seconds > 0):
            raise ConfigError(f"DurationBatchSampler: batch_seconds must be > 0, got {batch_seconds!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"DurationBatchSampler: need num_replicas >= 1 and 0 <= rank < num_replicas, "
                              f"got num_replicas={num_replicas}, rank={rank}")
        self.durations = [float(d) for d in durations]
        self.batch_seconds = float(batch_seconds)
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.bucket_utterances, self.half_over_seconds = bucket_utterances, half_over_seconds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """All batches of this epoch, before the split across ranks."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch) if self.shuffle else None
        batches = self._batches(rng)
        if rng is not None:
            rng.shuffle(batches)
        return batches

    def _batches(self, rng: random.Random | None = None) -> list[list[int]]:
        if self.bucket_utterances is not None:
            return s3prl_buckets(self.durations, self.bucket_utterances, self.half_over_seconds)
        return make_batches(self.durations, self.batch_seconds, rng)

    def _rank_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % self.num_replicas]
        else:
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            while len(batches) < total:  # repeat from the start (cycling if there are fewer batches than ranks)
                batches = batches + batches[: total - len(batches)]
        return batches[self.rank:: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())

    def __len__(self) -> int:
        n = len(self._batches())
        return n // self.num_replicas if self.drop_last else math.ceil(n / self.num_replicas)
