"""Batched extraction of several frozen upstreams over the same audio, and filling their feature caches.

- `extract_batch(upstreams, wavs, wav_lengths)`: every upstream on one loaded batch, under
  torch.inference_mode, with bf16/fp16 autocast on GPU.
- `duration_batches(durations, batch_seconds)`: length-sorted batches whose padded size stays under
  `batch_seconds` of audio.
- `fill_caches(upstreams, utts, cache)`: reads each batch's audio once (per sample rate), feeds every
  upstream that still misses some of it, and streams the results to disk shard by shard (RAM holds one
  batch at a time). This is what `speechfuse extract` and `train` run; `fill_cache(upstream, utts, cache)`
  is the same for one upstream.

The cache itself (speechfuse.cache.store) only stores and reads: it never extracts, so it does not import this module.
"""
from __future__ import annotations

import contextlib
import errno
import sys
import time
from typing import Sequence

import numpy as np
import torch

from speechfuse.cache.store import (DISK_FULL, CacheEntry, CacheError, FeatureCache, audio_durations, estimate_cache_bytes,
                    format_bytes, utterance_key)
from speechfuse.data.batching import make_batches
from speechfuse.errors import ConfigError
from speechfuse.fusion.hidden import HiddenStates

AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """autocast dtype: None on CPU; "auto" = bf16 on a GPU that supports it, else fp16."""
    if amp in (None, "off", "none", "fp32", "float32") or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp not in AMP_DTYPES:
        raise ConfigError(f"amp must be 'auto', 'bf16', 'fp16' or None, got {amp!r}")
    return AMP_DTYPES[amp]


def extract_batch(upstreams, wavs: torch.Tensor, wav_lengths: torch.Tensor,
                  amp: torch.dtype | str | None = None) -> list[HiddenStates]:
    """Run every upstream on the same batch (no gradients). wavs [B,S] on the upstreams' device."""
    if isinstance(amp, str) or amp is None:
        amp = resolve_amp(amp, wavs.device)
    autocast = torch.autocast(wavs.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        return [up(wavs, wav_lengths) for up in upstreams]


def duration_batches(durations: Sequence[float], batch_seconds: float) -> list[list[int]]:
    """The sampler's length-sorted batches, longest first (a batch that does not fit fails early).
    A clip longer than batch_seconds gets a batch of its own."""
    if batch_seconds <= 0:
        raise ConfigError(f"batch_seconds must be positive, got {batch_seconds}")
    return make_batches(durations, batch_seconds)[::-1]


def load_audio_batch(utts, sample_rate: int, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the audio of `utts` once: (wavs [B,S] zero-padded float32, wav_lengths [B] int64)."""
    from speechfuse.data.audio import read_audio

    clips = [read_audio(u.path, sample_rate, start=u.start, end=u.end) if u.is_segment  # a span of the file
             else read_audio(u.path, sample_rate) for u in utts]
    lengths = torch.tensor([c.shape[0] for c in clips], dtype=torch.long)
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for b, clip in enumerate(clips):
        wavs[b, : clip.shape[0]] = clip
    if pin:
        wavs = wavs.pin_memory()
    return wavs, lengths


def _per_upstream_layers(layers, count: int) -> list[Sequence[int] | None]:
    """layers: None (all), one list for every upstream, or one list/None per upstream."""
    if layers is None:
        return [None] * count
    layers = list(layers)
    if layers and all(isinstance(x, (list, tuple)) or x is None for x in layers):
        if len(layers) != count:
            raise ConfigError(f"layers: got {len(layers)} selections for {count} upstreams; give one per upstream")
        return layers
    return [layers] * count


def _store(writer, entry: CacheEntry, states: HiddenStates, keys: list[str], layer_index: torch.Tensor | None,
           storage: torch.dtype) -> None:
    """Select layers and cast on the device, move to the host once, write each utterance trimmed."""
    hidden = states.hidden if layer_index is None else states.hidden.index_select(0, layer_index.to(states.hidden.device))
    # fp16 overflows above 65504; amax also turns NaN into NaN (fails the test) and is cheap in float32
    peak = float(hidden.detach().abs().amax()) if hidden.numel() else 0.0
    limit = torch.finfo(storage).max
    if not peak <= limit:
        raise CacheError(
            f"upstream '{states.name}' produced values (max |x| = {peak:g}) that do not fit {entry.dtype} "
            f"(max {limit:g}) while filling {entry.folder}. Use FeatureCache(dtype='bfloat16') or turn the cache off."
        )
    # [B, L, T, D] on the host: each utterance's layers are contiguous [T, D] runs, written without copies
    hidden = hidden.to(storage).transpose(0, 1).contiguous().cpu()
    lengths = states.lengths.cpu().tolist()
    raw = hidden.view(torch.int16).numpy().view(np.uint16) if storage == torch.bfloat16 else hidden.numpy()
    for b, (key, n) in enumerate(zip(keys, lengths)):
        writer.write(key, raw[b, :, :n])


def fill_caches(upstreams, utts, cache: FeatureCache, batch_seconds: float = 60, layers=None,
                device: str | torch.device = "cpu", progress: bool = True, rank: int = 0, world_size: int = 1,
                amp: str | None = "auto") -> list[CacheEntry]:
    """Extract the missing utterances of this rank's share (utts[rank::world_size]) for every upstream,
    loading each batch's audio once. Returns one CacheEntry per upstream (with every rank's shards that
    are finalised so far; in DDP call `entry.refresh()` after a barrier). On CUDA, amp="auto" runs the
    upstreams under bf16 (fp16 where bf16 is unsupported) autocast; that precision is part of the key.
    The upstreams are moved to `device` and stay there."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    for up in upstreams:
        if getattr(up, "trainable", False):
            raise CacheError(f"upstream '{up.name}' is trainable; the feature cache only holds frozen upstreams. "
                             "Set `cache: off` or freeze it.")
    device = torch.device(device)
    amp_dtype = resolve_amp(amp, device)
    selections = _per_upstream_layers(layers, len(upstreams))
    entries = [cache.entry(up, sel, amp_dtype) for up, sel in zip(upstreams, selections)]
    with contextlib.ExitStack() as locks:
        # one writer per (entry, rank): a second process waits here, then finds the first one's work done
        for entry in sorted({e.folder: e for e in entries}.values(), key=lambda e: e.folder):  # fixed order
            locks.enter_context(entry.writing(rank))
        _fill_locked(upstreams, list(utts)[rank::world_size], cache, entries, selections, batch_seconds, device,
                     amp_dtype, progress, rank)
    for entry in entries:
        entry.refresh()
    return entries


def fill_cache(upstream, utts, cache: FeatureCache, batch_seconds: float = 60, layers=None,
               device: str | torch.device = "cpu", progress: bool = True, rank: int = 0, world_size: int = 1,
               amp: str | None = "auto") -> CacheEntry:
    """fill_caches for one upstream: extract what `cache` misses of this rank's share of `utts`, return the entry.
    Prints the expected disk size first; CacheError if the disk is too small."""
    return fill_caches([upstream], utts, cache, batch_seconds=batch_seconds, layers=layers, device=device,
                       progress=progress, rank=rank, world_size=world_size, amp=amp)[0]


def _fill_locked(upstreams, mine, cache: FeatureCache, entries, selections, batch_seconds, device, amp_dtype,
                 progress, rank) -> None:
    storage = {"float16": torch.float16, "bfloat16": torch.bfloat16}[cache.dtype]
    for entry in entries:
        entry.clean_torn(rank)
        if cache.verify:
            for shard, count in entry.verify_shards().items():
                _log(f"feature cache: {shard} is damaged (checksum mismatch); dropped {count} utterance(s) "
                     "from it, extracting them again")
    # what each upstream still needs, deduplicated by audio key
    needs: list[dict[str, object]] = []
    for entry in entries:
        todo: dict[str, object] = {}
        for u in entry.missing(mine):
            todo.setdefault(utterance_key(u, cache.audio_key), u)
        needs.append(todo)
    union: dict[str, object] = {}
    for todo in needs:
        union.update(todo)
    keys = list(union)
    todo_utts = list(union.values())
    # the files' real lengths: a wrong manifest `duration` would mislead the size estimate and the batches
    seconds_of = dict(zip(keys, audio_durations(todo_utts)))

    needed = 0
    for up, sel, entry, todo in zip(upstreams, selections, entries, needs):
        est = estimate_cache_bytes(up, list(todo.values()), sel, cache.dtype, [seconds_of[k] for k in todo])
        needed += est
        if progress:
            _log(f"feature cache {entry.folder}: {len(mine) - len(todo)} of {len(mine)} utterances cached; "
                 f"expected size of the {len(todo)} to extract: {format_bytes(est)}")
    if not union:
        return
    cache.check_space(needed, what=f"extracting {len(union)} utterances ")

    for up in upstreams:
        up.to(device)
    rates = sorted({up.sample_rate for up in upstreams})
    durations = [seconds_of[k] for k in keys]
    batches = duration_batches(durations, batch_seconds)
    layer_index = [None if sel is None else torch.tensor(entry.layers) for sel, entry in zip(selections, entries)]
    writers = [entry.writer(rank, cache.shard_bytes, cache.shard_seconds) for entry in entries]
    bar = None
    from speechfuse.training.progress import quiet

    if progress and not quiet():
        from tqdm import tqdm

        bar = tqdm(total=sum(durations), unit="s audio", desc="extract", file=sys.stderr,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
                              "[{elapsed}<{remaining}, {rate_fmt}]")
    start, done_seconds = time.perf_counter(), 0.0
    pin = device.type == "cuda"
    try:
        for batch in batches:
            batch_keys = [keys[i] for i in batch]
            batch_utts = [todo_utts[i] for i in batch]
            wanted = [[b for b, k in enumerate(batch_keys) if k in todo] for todo in needs]
            for rate in rates:
                users = [u for u, up in enumerate(upstreams) if up.sample_rate == rate and wanted[u]]
                if not users:
                    continue
                wavs, lengths = load_audio_batch(batch_utts, rate, pin=pin)
                wavs = wavs.to(device, non_blocking=True)
                for u in users:
                    up, rows = upstreams[u], wanted[u]
                    if len(rows) == len(batch):
                        sub_wavs, sub_lengths = wavs, lengths
                    else:
                        sub_lengths = lengths[rows]
                        sub_wavs = wavs[torch.tensor(rows, device=device), : int(sub_lengths.max())]
                    states = extract_batch([up], sub_wavs, sub_lengths, amp_dtype)[0]
                    _store(writers[u], entries[u], states, [batch_keys[b] for b in rows], layer_index[u], storage)
            seconds = sum(durations[i] for i in batch)
            done_seconds += seconds
            if bar is not None:
                bar.update(seconds)
        for writer in writers:
            writer.finalise()
    except BaseException as err:
        # keep every utterance written completely so far: finalise, or drop the shard if that fails too
        for writer in writers:
            try:
                writer.finalise()
            except Exception:
                writer.abandon()
        # a shard's index is written by io.write_atomic, which reports a full disk as its own error
        oserror = err if isinstance(err, OSError) else err.__cause__
        if isinstance(oserror, OSError) and oserror.errno in DISK_FULL:
            raise _disk_full(oserror, upstreams, mine, cache, entries, selections) from err
        raise
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    if progress:
        _log(f"extracted {len(todo_utts)} utterances, {done_seconds:.1f} s of audio in {elapsed:.1f} s "
             f"({done_seconds / max(elapsed, 1e-9):.1f} s of audio per second)")


def _disk_full(err: OSError, upstreams, mine, cache: FeatureCache, entries, selections) -> CacheError:
    """The disk-full error: where, what is kept, and how much space the rest needs."""
    import shutil

    kept, still = 0, 0
    for up, sel, entry in zip(upstreams, selections, entries):
        missing = entry.missing(mine)
        kept += len(mine) - len(missing)
        still += estimate_cache_bytes(up, missing, sel, cache.dtype)
    done = f"{kept} of {len(mine)} utterances" if len(entries) == 1 else \
        f"{kept} of {len(mine) * len(entries)} (utterance, upstream) results"
    free = shutil.disk_usage(cache.root).free
    return CacheError(
        f"feature cache {cache.root}: the disk is full ({errno.errorcode.get(err.errno, err.errno)}: {err.strerror}). "
        f"What was finalised ({done}) is kept; the rest needs about {format_bytes(still)} ({still} bytes) "
        f"more and {format_bytes(free)} are free. Free space or point `cache.dir` at a larger disk, then run "
        "`speechfuse extract` again: it resumes where it stopped.")


def _log(msg: str) -> None:
    from speechfuse.training.progress import quiet

    if not quiet():  # --quiet
        print(msg, file=sys.stderr, flush=True)


__all__ = ["extract_batch", "fill_caches", "fill_cache", "duration_batches", "load_audio_batch", "resolve_amp"]
