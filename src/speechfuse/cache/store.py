"""Feature cache for frozen upstreams: hidden states stored per upstream in fp16 (or bf16), sharded and
memory-mapped.

Layout (one folder per key under the cache root):

    <root>/<upstream name>-<key hash>/
        meta.json                  what the key covers (upstream identity, layers, dtype) and the shapes
        shard-<rank>-<n>.bin       raw [L,T,D] arrays of many utterances, concatenated
        shard-<rank>-<n>.json      its index: audio key -> [element offset, T]; written last, atomically

Key of the folder: sha256 over upstream.identity() (name, output-changing options, weight fingerprint),
the upstream class, sample rate, shapes, the layer selection and the dtype.
Key of an utterance (`audio_key`, see AUDIO_KEY_MODES): sha256 over the resolved path, size and mtime_ns
("stat"), plus the first and last 64 KiB of the file ("sample", the default), or over all of the file's
bytes ("content"). A changed audio file gets a new key, so it is a miss, never stale data.

Integrity: every utterance carries the CRC32 of its bytes. `read` checks it (verify=True by default);
extraction (speechfuse.cache.extract: `fill_cache` / `fill_caches`) checks every finalised shard before deciding
what is missing.
A mismatch drops the damaged utterances from their shard's index, so they are extracted again, never used.

Crash safety: a shard's bytes are written to `shard-*.bin.partial`, fsynced, renamed to `.bin`, and only
then is its index written (speechfuse.io.write_atomic: tmp file, fsync, rename). A shard without an index, a
leftover `.partial`, or a `.bin` whose size disagrees with its index is torn: readers ignore it and the next
extraction by that rank deletes it and extracts its utterances again. A shard is finalised every `shard_bytes` (64 MiB) or
`shard_seconds` (30 s), so a kill loses at most that much work (plus the batch in flight).

Writers: one extraction per (entry, rank) at a time; a second process waits on `extract-<rank>.lock` (a
speechfuse.io.HolderLock), then extracts only what the first did not.

This module only stores and reads; extraction (which writes into it) is speechfuse.cache.extract.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from speechfuse.data.audio import audio_info
from speechfuse.data.manifest import span_duration
from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.io import HolderLock, RunFolderError, describe_holder, try_lock_open_file, write_atomic

FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# numpy has no bfloat16: those shards hold the raw 16 bits and are viewed back as bf16 in torch
_NP_STORAGE = {"float16": np.float16, "bfloat16": np.uint16}
INDEX_OVERHEAD_BYTES = 200  # per utterance: its line in a shard index (JSON)
AUDIO_KEY_MODES = ("stat", "sample", "content")
SAMPLE_BYTES = 64 << 10  # the "sample" key reads this much from each end of the file
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_SHARD_RE = re.compile(r"^shard-(\d+)-(\d+)\.(bin|json|bin\.partial)$")


class CacheError(SpeechfuseError):
    """The feature cache cannot be used as asked (disk too small, missing entries, bad options)."""


# -- keys --------------------------------------------------------------------------------------------

def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# (mode, path, size, mtime_ns, ctime_ns) -> key. ctime is in the memo, not the key: no tool can set it back
# (a `cp -p` changes it), but a chmod or a backup restore changes it too, which must not cost a re-extraction.
_hashes: dict[tuple[str, str, int, int, int], str] = {}


def audio_key(path: str | os.PathLike, mode: str = "sample") -> str:
    """Key of one audio file (see AUDIO_KEY_MODES): resolved path + size + mtime_ns ("stat"); the same plus
    the first and last SAMPLE_BYTES of the file ("sample"); or the sha256 of all its bytes ("content").
    A process reads a file again only after it changed (its ctime moved)."""
    if mode not in AUDIO_KEY_MODES:
        raise ConfigError(f"FeatureCache audio_key must be one of {', '.join(AUDIO_KEY_MODES)}, got {mode!r}")
    resolved = Path(path).resolve()
    try:
        st = resolved.stat()
    except OSError as err:
        raise CacheError(f"audio file not found: {path} ({err}). Fix the manifest path.") from err
    stat_part = [str(resolved), st.st_size, st.st_mtime_ns]
    if mode == "stat":
        return _sha(stat_part)[:32]
    memo = (mode, str(resolved), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo not in _hashes:
        h = hashlib.sha256(json.dumps(stat_part).encode()) if mode == "sample" else hashlib.sha256()
        with open(resolved, "rb") as f:
            if mode == "sample":
                h.update(f.read(SAMPLE_BYTES))
                f.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
                h.update(f.read(SAMPLE_BYTES))
            else:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _hashes[memo] = h.hexdigest()[:32]
    return _hashes[memo]


def utterance_key(utt, mode: str = "sample") -> str:
    """Key of one manifest row: its file's audio_key, plus its start/end span for a segment row (two spans
    of one file are two entries; a whole-file row keeps the file's key)."""
    key = audio_key(utt.path, mode)
    if getattr(utt, "start", None) is None and getattr(utt, "end", None) is None:
        return key
    return _sha([key, utt.start, utt.end])[:32]


def resolve_layers(upstream, layers: Sequence[int] | None) -> list[int]:
    """Selected layer indices (all by default), negative indices allowed, order kept."""
    n = upstream.num_layers
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise ConfigError(
                f"cache layers: {layer!r} is not a layer of '{upstream.name}', which has {n} hidden states "
                f"(0..{n - 1}; negative indices count from the end)"
            )
        out.append(int(layer) % n)
    if not out:
        raise ConfigError("cache layers: empty selection; pass None for all layers")
    if len(set(out)) != len(out):
        raise ConfigError(f"cache layers: {list(layers)} selects a layer twice")
    return out


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ConfigError(f"FeatureCache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return dtype


def audio_durations(utts, warn: bool = True) -> list[float]:
    """Real durations (s) of `utts` from their audio headers (cheap: nothing is decoded); a segment row's is
    its start/end span's. With `warn`, a warning names the rows whose manifest `duration` is more than 10 %
    off: those would mislead the size estimate and the batching."""
    real = [span_duration(u, audio_info(u.path)[3]) for u in utts]
    if warn:
        off = [(u, r) for u, r in zip(utts, real)
               if u.duration is not None and abs(float(u.duration) - r) > max(0.1 * r, 0.05)]
        if off:
            first = ", ".join(f"{u.id!r} ({float(u.duration):.2f} s in the manifest, {r:.2f} s in {u.path})"
                              for u, r in off[:3])
            warnings.warn(f"{len(off)} of {len(utts)} manifest durations are more than 10 % off the audio files "
                          f"(e.g. {first}); the cache size estimate and batches use the files' real lengths. "
                          "Fix the manifest's duration column.", stacklevel=2)
    return real


def estimate_cache_bytes(upstream, utts, layers: Sequence[int] | None = None, dtype: str = "float16",
                         durations: Sequence[float] | None = None) -> int:
    """Disk bytes the cache needs for `utts`: sum of L * T * D * 2 + index. `durations` (s, one per utt):
    default the audio files' real lengths (audio_durations), not the manifest's `duration` column."""
    _check_dtype(dtype)
    if durations is None:
        durations = audio_durations(utts, warn=False)
    num_layers = len(resolve_layers(upstream, layers))
    per_frame = num_layers * upstream.hidden_size * 2
    total = 0
    for seconds in durations:
        samples = max(1, int(round(float(seconds) * upstream.sample_rate)), upstream.min_samples)
        total += upstream.num_frames(samples) * per_frame + INDEX_OVERHEAD_BYTES
    return total


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


# -- writing -----------------------------------------------------------------------------------------

def _write_all(handle, data: memoryview) -> None:
    """Write all of `data` to an unbuffered file (raw writes may be partial)."""
    while data:
        data = data[handle.write(data):]


class _ShardWriter:
    """Appends utterance arrays to one shard file of a rank; finalises it (index written last) every
    `shard_bytes` or `shard_seconds`, so a kill loses at most the unfinished shard and RAM never holds
    more than a batch. The unfinished shard is locked (flock) until its index is written."""

    def __init__(self, folder: Path, rank: int, shard_bytes: int, meta: dict, shard_seconds: float = 30.0) -> None:
        self.folder, self.rank, self.shard_bytes, self.meta = folder, rank, shard_bytes, meta
        self.shard_seconds = shard_seconds
        self.opened_at = 0.0
        self.handle = None
        self.entries: dict[str, list[int]] = {}
        self.offset = 0  # in elements
        self.number = -1
        self.itemsize = 2

    def _open(self) -> None:
        while self.handle is None:
            taken = [int(m.group(2)) for p in self.folder.iterdir()
                     if (m := _SHARD_RE.match(p.name)) and int(m.group(1)) == self.rank]
            self.number = max(taken, default=-1) + 1
            try:
                self.handle = open(self._path(".bin.partial"), "xb", buffering=0)
            except FileExistsError:  # another process of the same rank claimed it first
                continue
            try_lock_open_file(self.handle)  # a live writer's unfinished shard is never taken for a torn one
        self.entries, self.offset = {}, 0
        self.opened_at = time.monotonic()

    def _path(self, suffix: str) -> Path:
        return self.folder / f"shard-{self.rank}-{self.number}{suffix}"

    def write(self, key: str, array: np.ndarray) -> None:
        """array: [L, T, D] in the storage dtype (each layer a contiguous [T, D] block)."""
        if self.handle is None:
            self._open()
        crc = 0
        for layer in array:  # [T, D] runs are contiguous in a [B, L, T, D] batch: no copy
            chunk = memoryview(np.ascontiguousarray(layer)).cast("B")
            _write_all(self.handle, chunk)
            crc = zlib.crc32(chunk, crc)
        self.entries[key] = [self.offset, int(array.shape[1]), crc]
        self.offset += array.size
        if self.offset * self.itemsize >= self.shard_bytes or time.monotonic() - self.opened_at >= self.shard_seconds:
            self.finalise()

    def finalise(self) -> None:
        if self.handle is None:
            return
        if not self.entries:
            self.abandon()
            return
        self.handle.truncate(self.offset * self.itemsize)  # drops a half-written utterance after an error
        os.fsync(self.handle.fileno())
        # the lock follows the file through the rename and is released only once the index exists
        os.replace(self._path(".bin.partial"), self._path(".bin"))
        index = {"version": FORMAT_VERSION, "bytes": self.offset * self.itemsize, "entries": self.entries,
                 "layers": self.meta["num_layers"], "hidden_size": self.meta["hidden_size"],
                 "dtype": self.meta["dtype"]}
        write_atomic(self._path(".json"), json.dumps(index))
        self.handle.close()
        self.handle = None

    def abandon(self) -> None:
        """Drop the unfinished shard (finalised ones stay)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
            self._path(".bin.partial").unlink(missing_ok=True)


# -- reading -----------------------------------------------------------------------------------------

@dataclass
class _Loc:
    shard: str
    offset: int
    frames: int
    crc: int


class CacheEntry:
    """The cached hidden states of one upstream (one key). `read` memory-maps only the asked bytes and,
    with `verify` (default), checks each utterance's CRC32 before returning it."""

    def __init__(self, folder: Path, meta: dict, audio_key_mode: str = "sample", verify: bool = True) -> None:
        self.folder = Path(folder)
        self.meta = meta
        self.audio_key_mode = audio_key_mode
        self.verify = verify
        self.num_layers = int(meta["num_layers"])
        self.hidden_size = int(meta["hidden_size"])
        self.frame_rate = float(meta["frame_rate"])
        self.name = str(meta["name"])
        self.dtype = str(meta["dtype"])
        self.layers = list(meta["layers"])
        self._index: dict[str, _Loc] = {}
        self._maps: dict[str, np.memmap] = {}
        self._declared: dict[str, int] = {}  # shard stem -> byte size its index declares (parsed once)
        self.refresh()

    # finding shards
    def shard_status(self) -> tuple[list[str], list[Path]]:
        """(names of complete shards, paths of torn shard files)."""
        complete, torn = [], []
        files = {p.name: p for p in self.folder.iterdir() if _SHARD_RE.match(p.name)}
        for name, path in files.items():
            stem, _, ext = name.partition(".")
            if ext == "bin.partial":
                torn.append(path)
            elif ext == "bin" and f"{stem}.json" not in files:
                torn.append(path)
            elif ext == "json":
                bin_path = self.folder / f"{stem}.bin"
                try:
                    declared = self._declared.get(stem)
                    if declared is None:
                        declared = json.loads(path.read_text())["bytes"]
                    ok = bin_path.is_file() and bin_path.stat().st_size == declared
                except (OSError, ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    complete.append(stem)
                else:
                    torn += [p for p in (path, bin_path) if p.exists()]
        return sorted(complete), torn

    def refresh(self) -> None:
        """Pick up shards finalised since (by this or another process / rank); forget shards that are
        gone or torn since."""
        complete = set(self.shard_status()[0])
        gone = set(self._declared) - complete
        if gone:
            self._index = {k: loc for k, loc in self._index.items() if loc.shard not in gone}
            for stem in gone:
                self._declared.pop(stem)
                self._maps.pop(stem, None)
        for stem in sorted(complete - set(self._declared)):
            try:
                index = json.loads((self.folder / f"{stem}.json").read_text())
            except (OSError, ValueError):
                continue  # deleted meanwhile
            for key, (offset, frames, crc) in index["entries"].items():
                self._index[key] = _Loc(stem, int(offset), int(frames), int(crc))
            self._declared[stem] = int(index["bytes"])

    def _keys(self, utts) -> list[str]:
        return [utterance_key(u, self.audio_key_mode) for u in utts]

    def missing(self, utts) -> list:
        """The utterances of `utts` that are not (or no longer, after an audio change or a torn shard)
        in the cache. Re-checks the shards on disk (a directory listing and a stat per shard)."""
        keys = self._keys(utts)
        self.refresh()
        return [u for u, k in zip(utts, keys) if k not in self._index]

    def __contains__(self, utt) -> bool:
        return not self.missing([utt])

    def __len__(self) -> int:
        return len(self._index)

    def _map(self, stem: str) -> np.memmap:
        if stem not in self._maps:
            self._maps[stem] = np.memmap(self.folder / f"{stem}.bin", dtype=_NP_STORAGE[self.dtype], mode="r")
        return self._maps[stem]

    def _array(self, loc: _Loc) -> np.ndarray:
        """The utterance's stored values, copied out of the shard: [L*T*D] in the storage dtype."""
        count = self.num_layers * loc.frames * self.hidden_size
        view = self._map(loc.shard)[loc.offset: loc.offset + count]
        if view.shape[0] != count:
            raise CacheError(f"feature cache {self.folder}: {loc.shard}.bin is shorter than its index says; "
                             "run `speechfuse extract` (or extract.fill_cache) again to redo the torn shard")
        return np.array(view)  # copies only this utterance's bytes

    def read(self, utts, verify: bool | None = None) -> HiddenStates:
        """Padded float32 HiddenStates [L,B,T,D] for `utts` (layers in the selected order, exact lengths).
        verify (default: the entry's, True unless the cache was made with verify=False) checks each
        utterance's CRC32; a mismatch drops it from the cache (so the next extraction redoes it) and
        raises CacheError naming the shard file."""
        verify = self.verify if verify is None else verify
        keys = self._keys(utts)
        if any(k not in self._index for k in keys):
            self.refresh()
        absent = [u.id for u, k in zip(utts, keys) if k not in self._index]
        if absent:
            raise CacheError(
                f"feature cache {self.folder}: {len(absent)} utterance(s) not cached or changed since "
                f"extraction (first: {absent[:5]}). Run `speechfuse extract` (or extract.fill_cache) first."
            )
        locs = [self._index[k] for k in keys]
        lengths = torch.tensor([loc.frames for loc in locs], dtype=torch.long)
        hidden = torch.zeros(self.num_layers, len(utts), int(lengths.max()) if len(utts) else 0, self.hidden_size)
        for b, (u, key, loc) in enumerate(zip(utts, keys, locs)):
            arr = self._array(loc)
            # checked right after the copy, while its bytes are still in the CPU cache
            if verify and zlib.crc32(memoryview(arr).cast("B")) != loc.crc:
                self.drop(loc.shard, [key])
                raise CacheError(
                    f"feature cache: checksum mismatch for utterance {u.id!r} in {self.folder / loc.shard}.bin "
                    "(the file was damaged after it was written); the utterance was dropped from the cache. "
                    "Run `speechfuse extract` (or train again) to extract it anew.")
            tensor = torch.from_numpy(arr)
            if self.dtype == "bfloat16":
                tensor = tensor.view(torch.bfloat16)
            hidden[:, b, : loc.frames] = tensor.view(self.num_layers, loc.frames, self.hidden_size)
        return HiddenStates(hidden=hidden, lengths=lengths, frame_rate=self.frame_rate, name=self.name)

    def verify_shards(self) -> dict[str, int]:
        """Check the CRC32 of every utterance in every finalised shard (a sequential read of the entry);
        drop the damaged utterances, so they count as missing. Returns {shard file: utterances dropped}."""
        self.refresh()
        by_shard: dict[str, list[tuple[str, _Loc]]] = {}
        for key, loc in self._index.items():
            by_shard.setdefault(loc.shard, []).append((key, loc))
        per_frame = self.num_layers * self.hidden_size * 2
        damaged: dict[str, int] = {}
        for stem, items in sorted(by_shard.items()):
            path = self.folder / f"{stem}.bin"
            bad = []
            try:
                with open(path, "rb") as f:
                    for key, loc in sorted(items, key=lambda kv: kv[1].offset):
                        f.seek(loc.offset * 2)
                        data = f.read(loc.frames * per_frame)
                        if len(data) != loc.frames * per_frame or zlib.crc32(data) != loc.crc:
                            bad.append(key)
            except FileNotFoundError:  # deleted meanwhile (torn and cleaned by another process)
                continue
            if bad:
                self.drop(stem, bad)
                damaged[str(path)] = len(bad)
        return damaged

    def drop(self, stem: str, keys: Sequence[str]) -> None:
        """Remove `keys` from shard `stem`'s index (atomically rewritten); the shard goes when none remain."""
        for key in keys:
            self._index.pop(key, None)
        index_path = self.folder / f"{stem}.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            return  # already gone (or torn: clean_torn removes it)
        for key in keys:
            index["entries"].pop(key, None)
        if index["entries"]:
            write_atomic(index_path, json.dumps(index))
        else:  # index first: a .bin without its index is torn, never read
            index_path.unlink(missing_ok=True)
            (self.folder / f"{stem}.bin").unlink(missing_ok=True)
            self._declared.pop(stem, None)
            self._maps.pop(stem, None)

    @contextlib.contextmanager
    def writing(self, rank: int = 0):
        """Hold the writer lock of (this entry, rank): a second process waits, saying for whom, until the
        first is done (a killed holder releases it). Lets two `extract`s share the work, not double it."""
        lock = HolderLock(self.folder / f"extract-{rank}.lock", busy=describe_holder, wait=True,
                          on_wait=lambda holder: _log(f"feature cache {self.folder}: waiting for "
                                                      f"{describe_holder(holder)}, which is checking or extracting "
                                                      f"into it (rank {rank})"))
        try:
            lock.acquire()
        except RunFolderError:  # a read-only cache: nothing can be written, so there is nothing to coordinate
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def clean_torn(self, rank: int | None = None) -> list[Path]:
        """Delete torn shard files (of `rank` only, when given: another rank may be writing its own)."""
        _, torn = self.shard_status()
        removed = []
        for path in torn:
            m = _SHARD_RE.match(path.name)
            if rank is not None and not (m and int(m.group(1)) == rank):
                continue
            if path.name.endswith((".partial", ".bin")):
                try:
                    with open(path, "rb") as handle:
                        if not try_lock_open_file(handle):
                            continue  # a live writer (this or another process) still owns it
                except FileNotFoundError:
                    continue
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def writer(self, rank: int = 0, shard_bytes: int = 64 << 20, shard_seconds: float = 30.0) -> _ShardWriter:
        return _ShardWriter(self.folder, rank, shard_bytes, self.meta, shard_seconds)

    def __repr__(self) -> str:
        return f"CacheEntry({str(self.folder)!r}, {len(self._index)} utterances, {self.dtype})"


class FeatureCache:
    """A folder of cache entries, one per (upstream identity, layer selection, dtype).

    audio_key: "sample" (default), "stat" or "content": what decides that an audio file is unchanged
      (see audio_key(); docs/cache.md says what each catches and misses).
    shard_bytes, shard_seconds: a shard is finalised (and survives a kill) every this many bytes, or this
      many seconds after its first utterance, whichever comes first.
    verify: check every utterance's CRC32 on read, and every shard when an extraction (fill_caches) starts.
    """

    def __init__(self, root: str | os.PathLike, dtype: str = "float16", audio_key: str = "sample",
                 shard_bytes: int = 64 << 20, shard_seconds: float = 30.0, verify: bool = True) -> None:
        self.root = Path(root)
        self.dtype = _check_dtype(dtype)
        if audio_key not in AUDIO_KEY_MODES:
            raise ConfigError(f"FeatureCache audio_key must be one of {', '.join(AUDIO_KEY_MODES)}, got {audio_key!r}")
        self.audio_key = audio_key
        if int(shard_bytes) <= 0:
            raise ConfigError(f"FeatureCache shard_bytes must be positive, got {shard_bytes}")
        if float(shard_seconds) < 0:
            raise ConfigError(f"FeatureCache shard_seconds must be >= 0, got {shard_seconds}")
        self.shard_bytes = int(shard_bytes)
        self.shard_seconds = float(shard_seconds)
        self.verify = bool(verify)

    @classmethod
    def from_config(cls, root: str | os.PathLike, options) -> "FeatureCache":
        """From a config's `cache` section (speechfuse.config.CacheConfig)."""
        return cls(root, audio_key=options.key, shard_bytes=int(options.shard_mb * (1 << 20)),
                   shard_seconds=options.shard_seconds, verify=options.verify)

    def key(self, upstream, layers: Sequence[int] | None = None, autocast: torch.dtype | None = None) -> dict:
        """Everything that decides the cached numbers (the folder name is a hash of it). `autocast`: the
        reduced precision the upstream ran in (GPU bf16/fp16 autocast), which changes its outputs."""
        key = {
            "version": FORMAT_VERSION,
            "identity": upstream.identity(),
            "class": f"{type(upstream).__module__}.{type(upstream).__qualname__}",
            "sample_rate": upstream.sample_rate,
            "frame_rate": upstream.frame_rate,
            "num_layers_total": upstream.num_layers,
            "hidden_size": upstream.hidden_size,
            "layers": resolve_layers(upstream, layers),
            "dtype": self.dtype,
        }
        if autocast is not None:  # absent for full precision, so those keys stay as they were
            key["autocast"] = str(autocast).replace("torch.", "")
        return key

    def entry(self, upstream, layers: Sequence[int] | None = None, autocast: torch.dtype | None = None) -> CacheEntry:
        """The entry of `upstream` (created empty if new); no extraction. `autocast` as in `key`."""
        key = self.key(upstream, layers, autocast)
        safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(upstream.name))[:40] or "upstream"
        folder = self.root / f"{safe_name}-{_sha(key)[:16]}"
        meta = {**key, "name": upstream.name, "num_layers": len(key["layers"])}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot create the feature cache folder {folder}: {err}. "
                             "Choose a writable cache directory (config key `cache`).") from err
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            write_atomic(meta_path, json.dumps(meta, indent=1, default=str))
        return CacheEntry(folder, meta, self.audio_key, self.verify)

    def check_space(self, needed: int, what: str = "") -> None:
        """CacheError when the cache's disk has less free space than `needed` bytes."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise CacheError(
                f"feature cache {self.root}: {what}needs {format_bytes(needed)} ({needed} bytes) but the disk has "
                f"only {format_bytes(free)} ({free} bytes) free. Free space, point the cache at a larger disk "
                "(config key `cache: <dir>`), cache fewer layers, or set `cache: off`."
            )


def _log(msg: str) -> None:
    from speechfuse.training.progress import quiet

    if not quiet():  # --quiet
        print(msg, file=sys.stderr, flush=True)


__all__ = ["FeatureCache", "CacheEntry", "CacheError", "estimate_cache_bytes", "audio_key", "utterance_key", "resolve_layers"]
