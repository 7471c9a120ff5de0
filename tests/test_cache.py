"""Feature cache: round trip, invalidation, kill-and-resume, torn shards, disk-size check, multi-upstream fill."""
from __future__ import annotations

import collections
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import speechfuse.cache.store as cache_mod
from speechfuse.cache.store import (INDEX_OVERHEAD_BYTES, SAMPLE_BYTES, CacheEntry, CacheError, FeatureCache, audio_key,
                              estimate_cache_bytes)
from speechfuse.data.audio import audio_info, read_audio
from speechfuse.data.manifest import Utterance
from speechfuse.errors import ConfigError
from speechfuse.cache.extract import duration_batches, extract_batch, fill_cache, fill_caches
from speechfuse.fusion.upstream.base import Upstream
from helpers import FakeUpstream, FSDD

TOL = {"float16": 1e-3, "bfloat16": 8e-3}  # values are in [-1, 1]: fp16 step <= 2^-11, bf16 <= 2^-8


def make_utts(folder: Path, n_noise: int = 6, n_real: int = 4) -> list[Utterance]:
    """Noise clips of several lengths at 16 kHz plus real FSDD recordings (8 kHz, resampled on read)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_noise):
        p = folder / f"noise{i}.wav"
        sf.write(p, (rng.standard_normal(int(16000 * (0.02 + 0.3 * i))) * 0.1).astype(np.float32), 16000)
        paths.append(p)
    for name in sorted(os.listdir(FSDD))[:n_real]:
        shutil.copy(FSDD / name, folder / name)
        paths.append(folder / name)
    return [Utterance(id=p.stem, path=str(p), duration=audio_info(p)[3]) for p in paths]


def reference(up: Upstream, utt: Utterance) -> torch.Tensor:
    """A fresh single-utterance extraction, float32 [L, T, D]."""
    wav = read_audio(utt.path, up.sample_rate)
    with torch.inference_mode():
        states = up(wav[None], torch.tensor([wav.shape[0]]))
    return states.hidden[:, 0, : int(states.lengths[0])]


def assert_matches(entry, up, utts, layers=None, dtype="float16"):
    states = entry.read(utts)
    assert states.hidden.dtype == torch.float32
    for b, u in enumerate(utts):
        ref = reference(up, u)
        if layers is not None:
            ref = ref[layers]
        n = ref.shape[1]
        assert int(states.lengths[b]) == n, u.id
        torch.testing.assert_close(states.hidden[:, b, :n], ref, atol=TOL[dtype], rtol=TOL[dtype])
        assert (states.hidden[:, b, n:] == 0).all()


@pytest.fixture
def utts(tmp_path):
    return make_utts(tmp_path / "audio")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_trip_and_no_second_extraction(tmp_path, utts, dtype):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache", dtype=dtype)
    entry = fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    assert entry.missing(utts) == []
    assert_matches(entry, up, utts, dtype=dtype)
    # reading a subset in another order gives those rows
    sub = [utts[5], utts[0], utts[7]]
    assert_matches(entry, up, sub, dtype=dtype)
    seen = up.utterances_seen
    again = fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    assert up.utterances_seen == seen  # all cached: nothing extracted again
    assert again.folder == entry.folder


def test_layer_selection_order_and_checksums(tmp_path, utts):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache")
    entry = fill_cache(up, utts, cache, layers=[2, 0], progress=False)
    assert entry.num_layers == 2 and entry.layers == [2, 0]
    assert_matches(entry, up, utts, layers=[2, 0])
    entry.read(utts, verify=True)  # every CRC32 matches
    assert cache.entry(up).folder != entry.folder  # all layers is another key
    with pytest.raises(ConfigError, match="not a layer of 'fake'"):
        cache.entry(up, layers=[3])


def test_expected_size_printed_and_exact(tmp_path, utts, capsys):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache")
    expected = estimate_cache_bytes(up, utts)
    entry = fill_cache(up, utts, cache, progress=True)
    err = capsys.readouterr().err
    assert "expected size" in err and "s of audio per second" in err
    data_bytes = sum(p.stat().st_size for p in entry.folder.glob("shard-*.bin"))
    assert data_bytes == expected - len(utts) * INDEX_OVERHEAD_BYTES  # durations are exact here


def test_changed_audio_is_a_miss(tmp_path, utts):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache")
    entry = fill_cache(up, utts, cache, progress=False)
    target = utts[3]
    data, rate = sf.read(target.path, dtype="float32")
    sf.write(target.path, data[::-1].copy(), rate)  # same length, different content
    assert entry.missing(utts) == [target]
    with pytest.raises(CacheError, match="not cached or changed"):
        entry.read([target])
    seen = up.utterances_seen
    entry = fill_cache(up, utts, cache, progress=False)
    assert up.utterances_seen == seen + 1  # only the changed file
    assert_matches(entry, up, utts)


def test_touch_is_a_miss_by_stat_but_not_by_content(tmp_path, utts):
    up = FakeUpstream()
    by_stat = FeatureCache(tmp_path / "cache", audio_key="stat")
    by_content = FeatureCache(tmp_path / "cache", audio_key="content")
    e_stat = fill_cache(up, utts, by_stat, progress=False)
    e_content = fill_cache(up, utts, by_content, progress=False)
    st = os.stat(utts[0].path)
    os.utime(utts[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert e_stat.missing(utts) == [utts[0]]
    assert e_content.missing(utts) == []


def test_upstream_option_weights_dtype_change_the_key(tmp_path, utts):
    cache = FeatureCache(tmp_path / "cache")
    base = fill_cache(FakeUpstream(), utts, cache, progress=False)
    other_option = cache.entry(FakeUpstream(scale=2.0))
    other_weights = cache.entry(FakeUpstream(seed=1))
    other_dtype = FeatureCache(tmp_path / "cache", dtype="bfloat16").entry(FakeUpstream())
    folders = {base.folder, other_option.folder, other_weights.folder, other_dtype.folder}
    assert len(folders) == 4
    for entry in (other_option, other_weights, other_dtype):
        assert entry.missing(utts) == utts
    assert json.loads((other_option.folder / "meta.json").read_text())["identity"]["options"]["scale"] == 2.0
    # the changed option really changes the numbers that end up cached
    scaled = FakeUpstream(scale=2.0)
    entry = fill_cache(scaled, utts[:3], cache, progress=False)
    assert_matches(entry, scaled, utts[:3])
    assert not torch.allclose(entry.read(utts[:3]).hidden, base.read(utts[:3]).hidden, atol=1e-2)


def test_disk_too_small_refuses_before_extracting(tmp_path, utts, monkeypatch):
    import speechfuse.cache.store as cache_mod

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    up = FakeUpstream()
    needed = estimate_cache_bytes(up, utts)
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(CacheError) as err:
        fill_cache(up, utts, cache, progress=False)
    assert f"{needed} bytes" in str(err.value) and "1000 bytes" in str(err.value)
    assert up.utterances_seen == 0
    assert not list((tmp_path / "cache").rglob("shard-*"))


def test_torn_shard_is_detected_and_redone(tmp_path, utts):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache", shard_bytes=4000)
    entry = fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    shards = sorted(entry.folder.glob("shard-*.bin"))
    assert len(shards) >= 3
    victim = shards[1]
    index = json.loads(victim.with_suffix(".json").read_text())
    lost = len(index["entries"])
    with open(victim, "r+b") as f:  # a torn write: the index says more bytes than the file has
        f.truncate(victim.stat().st_size - 10)
    fresh = cache.entry(up)
    assert len(fresh.missing(utts)) == lost
    assert len(entry.missing(utts)) == lost  # an entry that had loaded the shard before forgets it too
    seen = up.utterances_seen
    entry = fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    assert up.utterances_seen == seen + lost
    assert not victim.exists() or victim.stat().st_size == json.loads(victim.with_suffix(".json").read_text())["bytes"]
    assert_matches(entry, up, utts)


KILL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from helpers import FakeUpstream
    from speechfuse.cache.store import FeatureCache, _ShardWriter
    from speechfuse.config import load_config
    from speechfuse.data.manifest import Utterance
    from speechfuse.cache.extract import fill_cache

    original = _ShardWriter.write
    def write(self, key, array):
        original(self, key, array)
        if self.number >= 1:  # the first shard is final; the second holds a written utterance
            print("READY", flush=True)
            time.sleep(300)
    _ShardWriter.write = write
    utts = [Utterance(**u) for u in json.load(open({manifest!r}))]
    cfg = load_config({config!r})  # the shard size comes from the config's cache section
    fill_cache(FakeUpstream(), utts, FeatureCache.from_config(cfg.cache.dir, cfg.cache), batch_seconds=2.0,
               progress=False)
""")


def test_kill_mid_extraction_then_resume(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    rng = np.random.default_rng(1)
    utts = []
    for i in range(8):  # 1 s each: 49 frames x 3 layers x 8 dims x 2 bytes = 2352 bytes; 3 fill a shard
        p = folder / f"u{i}.wav"
        sf.write(p, (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
        utts.append(Utterance(id=f"u{i}", path=str(p), duration=1.0))
    manifest = tmp_path / "utts.json"
    manifest.write_text(json.dumps([{"id": u.id, "path": u.path, "duration": u.duration} for u in utts]))
    root = tmp_path / "cache"
    config = tmp_path / "config.yaml"
    config.write_text(f"task: classify\ndata: {{train: t.csv, dev: d.csv}}\nupstreams: [resemblyzer]\n"
                      f"cache: {{dir: {root}, shard_mb: {6000 / 2**20}}}\n")
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), manifest=str(manifest), config=str(config))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()

    up = FakeUpstream()
    entry = FeatureCache(root, shard_bytes=6000).entry(up)
    names = sorted(p.name for p in entry.folder.glob("shard-*"))
    assert names == ["shard-0-0.bin", "shard-0-0.json", "shard-0-1.bin.partial"]  # one final, one torn
    done = json.loads((entry.folder / "shard-0-0.json").read_text())["entries"]
    assert len(done) == 3
    assert len(entry.missing(utts)) == 5  # the torn shard's utterance is not served
    entry = fill_cache(up, utts, FeatureCache(root, shard_bytes=6000), batch_seconds=2.0, progress=False)
    assert up.utterances_seen == 5  # resumed: the 3 finished utterances were not extracted again
    assert not list(entry.folder.glob("*.partial"))
    assert_matches(entry, up, utts)
    entry.read(utts, verify=True)


def test_fill_caches_reads_audio_once_for_several_upstreams(tmp_path, utts, monkeypatch):
    import speechfuse.data.audio as audio_mod

    calls = collections.Counter()
    real = audio_mod.read_audio

    def counting(path, sample_rate):
        calls[path] += 1
        return real(path, sample_rate)

    monkeypatch.setattr(audio_mod, "read_audio", counting)
    ups = [FakeUpstream(seed=0), FakeUpstream(seed=1, num_layers=2, hidden_size=5)]
    cache = FeatureCache(tmp_path / "cache")
    entries = fill_caches(ups, utts, cache, batch_seconds=2.0, layers=[None, [1]], progress=False)
    assert sorted(calls.values()) == [1] * len(utts)
    monkeypatch.setattr(audio_mod, "read_audio", real)
    assert_matches(entries[0], ups[0], utts)
    assert_matches(entries[1], ups[1], utts, layers=[1])


def test_ranks_extract_their_own_share(tmp_path, utts):
    ups = [FakeUpstream(), FakeUpstream()]
    cache = FeatureCache(tmp_path / "cache")
    e0 = fill_cache(ups[0], utts, cache, rank=0, world_size=2, progress=False)
    e1 = fill_cache(ups[1], utts, cache, rank=1, world_size=2, progress=False)
    assert ups[0].utterances_seen == len(utts[0::2]) and ups[1].utterances_seen == len(utts[1::2])
    assert {p.name.split("-")[1] for p in e0.folder.glob("shard-*.json")} == {"0", "1"}
    assert e0.missing(utts) == []  # picks up rank 1's finalised shards
    assert_matches(e1, ups[1], utts)


def test_bad_options_and_fp16_overflow(tmp_path, utts):
    with pytest.raises(ConfigError, match="dtype"):
        FeatureCache(tmp_path, dtype="float32")
    with pytest.raises(CacheError, match="trainable"):
        fill_cache(FakeUpstream(trainable=True), utts, FeatureCache(tmp_path / "c"), progress=False)
    with pytest.raises(CacheError, match="bfloat16"):
        fill_cache(FakeUpstream(offset=1e6), utts, FeatureCache(tmp_path / "c"), progress=False)
    entry = fill_cache(FakeUpstream(offset=1e6), utts[:2], FeatureCache(tmp_path / "c", dtype="bfloat16"),
                       progress=False)
    states = entry.read(utts[:2])
    valid = states.hidden[:, 1, : int(states.lengths[1])]
    assert (valid - 1e6).abs().max() <= 1e6 * 2**-8


def test_duration_batches_and_extract_batch():
    batches = duration_batches([1.0, 5.0, 2.0, 2.0, 0.5, 9.0], batch_seconds=6.0)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [5]  # longer than a batch: on its own
    durations = [1.0, 5.0, 2.0, 2.0, 0.5, 9.0]
    for b in batches[1:]:
        assert max(durations[i] for i in b) * len(b) <= 6.0
    ups = [FakeUpstream(seed=0), FakeUpstream(seed=1)]
    wavs = torch.randn(2, 8000)
    out = extract_batch(ups, wavs, torch.tensor([8000, 5000]))
    assert [s.hidden.shape for s in out] == [torch.Size([3, 2, 24, 8])] * 2
    assert out[0].lengths.tolist() == [24, 15]
    assert not torch.equal(out[0].hidden, out[1].hidden)


def test_real_tiny_models_round_trip_and_whisper_mode_key(tmp_path, utts, tiny_model_dir):
    import speechfuse as sf_

    hubert = sf_.load_upstream("hf:" + tiny_model_dir("hubert"))
    whisper_dir = tiny_model_dir("whisper")
    trim = sf_.load_upstream("hf:" + whisper_dir, whisper_mode="trim")
    pad30 = sf_.load_upstream("hf:" + whisper_dir, whisper_mode="pad30")
    cache = FeatureCache(tmp_path / "cache")
    assert cache.entry(trim).folder != cache.entry(pad30).folder
    some = utts[2:6]
    # batch_seconds below every clip: one utterance per batch, so the cache must equal a lone forward
    entries = fill_caches([hubert, trim], some, cache, batch_seconds=0.01, progress=False)
    assert_matches(entries[0], hubert, some)
    assert_matches(entries[1], trim, some)
    assert cache.entry(pad30).missing(some) == some  # same weights, other mode: a miss


def test_autocast_precision_is_part_of_the_key(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    up = FakeUpstream()
    full = cache.entry(up)
    assert cache.entry(up, autocast=torch.bfloat16).folder != full.folder
    assert cache.entry(up, autocast=torch.float16).folder != cache.entry(up, autocast=torch.bfloat16).folder
    assert cache.entry(up, autocast=None).folder == full.folder


def test_reading_one_utterance_uses_only_its_bytes_and_verify_catches_corruption(tmp_path, utts):
    up = FakeUpstream()
    entry = fill_cache(up, utts, FeatureCache(tmp_path / "cache"), progress=False)
    shard = next(entry.folder.glob("shard-*.json"))
    index = json.loads(shard.read_text())["entries"]
    assert len(index) == len(utts)  # one shard holds them all

    victim, other = utts[4], utts[7]
    offset, frames, _ = index[audio_key(victim.path)]
    with open(shard.with_suffix(".bin"), "r+b") as f:  # flip the victim's bytes in place (size unchanged)
        f.seek(offset * 2)
        f.write(b"\x7b" * (up.num_layers * frames * up.hidden_size * 2))
    fresh = FeatureCache(tmp_path / "cache").entry(up)
    assert_matches(fresh, up, [other])  # its neighbour in the same file is untouched
    fresh.read([other], verify=True)
    with pytest.raises(CacheError, match=f"checksum mismatch for utterance '{victim.id}'"):
        fresh.read([victim], verify=True)


def test_upstreams_at_two_sample_rates_read_each_file_once_per_rate(tmp_path, utts, monkeypatch):
    import speechfuse.data.audio as audio_mod

    calls = collections.Counter()
    real = audio_mod.read_audio

    def counting(path, sample_rate):
        calls[(path, sample_rate)] += 1
        return real(path, sample_rate)

    monkeypatch.setattr(audio_mod, "read_audio", counting)
    slow = FakeUpstream(seed=2)
    slow.sample_rate = 8000  # 400-sample frames at 8 kHz
    ups = [FakeUpstream(), slow]
    entries = fill_caches(ups, utts, FeatureCache(tmp_path / "cache"), batch_seconds=2.0, progress=False)
    assert set(calls.values()) == {1} and len(calls) == 2 * len(utts)
    monkeypatch.setattr(audio_mod, "read_audio", real)
    assert_matches(entries[0], ups[0], utts)
    assert_matches(entries[1], slow, utts)


def test_a_live_writers_unfinished_shard_is_not_taken_for_torn(tmp_path, utts):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache")
    entry = cache.entry(up)
    writer = entry.writer(rank=0)
    writer.write("k" * 32, np.zeros((3, 5, 8), dtype=np.float16))
    partial = entry.folder / "shard-0-0.bin.partial"
    assert partial.exists()
    assert entry.clean_torn(rank=0) == []  # locked by the live writer (another process would see the same)
    assert partial.exists()
    writer.abandon()
    assert not partial.exists()
    # the same file left behind by a dead process (no lock) is torn and removed
    partial.write_bytes(b"\0" * 10)
    assert entry.clean_torn(rank=0) == [partial] and not partial.exists()


def test_shards_are_also_finalised_by_time(tmp_path, utts):
    cache = FeatureCache(tmp_path / "cache", shard_seconds=0.0)  # every utterance closes its shard
    entry = fill_cache(FakeUpstream(), utts, cache, progress=False)
    assert len(list(entry.folder.glob("shard-*.json"))) == len(utts)
    assert_matches(entry, FakeUpstream(), utts)


def test_fill_caches_runs_only_the_upstreams_that_miss_something(tmp_path, utts):
    cache = FeatureCache(tmp_path / "cache")
    a, b = FakeUpstream(seed=0), FakeUpstream(seed=1)
    fill_caches([a], utts[:6], cache, progress=False)
    seen_a = a.utterances_seen
    entries = fill_caches([a, b], utts, cache, batch_seconds=2.0, progress=False)
    assert a.utterances_seen == seen_a + len(utts) - 6  # only the 4 it lacked
    assert b.utterances_seen == len(utts)
    assert_matches(entries[0], a, utts)
    assert_matches(entries[1], b, utts)


# -- integrity: a damaged shard is never used -----------------------------------------------------------------

def test_shard_overwritten_with_random_bytes_is_an_error_on_read_and_re_extracted_by_the_next_extraction(tmp_path, utts):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache")
    entry = fill_cache(up, utts, cache, progress=False)
    [shard] = entry.folder.glob("shard-*.bin")
    good = entry.read(utts).hidden
    shard.write_bytes(np.random.default_rng(0).bytes(shard.stat().st_size))  # same size: the index still fits
    fresh = FeatureCache(tmp_path / "cache").entry(up)
    assert fresh.missing(utts) == []  # size and index look fine: only the checksums can tell
    with pytest.raises(CacheError, match=f"checksum mismatch for utterance '{utts[0].id}' in {shard}"):
        fresh.read(utts)  # the training read path (verify is on by default)
    seen = up.utterances_seen
    entry = fill_cache(up, utts, cache, progress=False)  # what `speechfuse extract` and `train` run first
    assert up.utterances_seen == seen + len(utts)  # every damaged utterance extracted anew
    torch.testing.assert_close(entry.read(utts).hidden, good)
    assert_matches(entry, up, utts)


def test_4kb_of_random_bytes_inside_a_shard_re_extracts_only_the_hit_utterances(tmp_path, utts, capsys):
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache")
    entry = fill_cache(up, utts, cache, progress=False)
    [index_path] = entry.folder.glob("shard-*.json")
    index = json.loads(index_path.read_text())["entries"]
    start = 3000  # bytes into the shard
    hit = [k for k, (offset, frames, _) in index.items()
           if offset * 2 < start + 4096 and start < (offset + up.num_layers * frames * up.hidden_size) * 2]
    assert 0 < len(hit) < len(utts)
    with open(index_path.with_suffix(".bin"), "r+b") as f:
        f.seek(start)
        f.write(np.random.default_rng(1).bytes(4096))
    seen = up.utterances_seen
    entry = fill_cache(up, utts, cache, progress=True)
    assert "is damaged (checksum mismatch)" in capsys.readouterr().err
    assert up.utterances_seen == seen + len(hit)
    assert_matches(entry, up, utts)
    entry.read(utts, verify=True)


def test_extract_then_train_on_a_damaged_cache_re_extracts_and_trains_on_good_features(tmp_path, tiny_model_dir,
                                                                                       capsys):
    """The issue's row end to end: `extract`, random bytes over a shard, then `extract` and `train` again."""
    import yaml
    from speechfuse.cli import main
    from speechfuse.data import fsdd_manifests
    from speechfuse.fusion.upstream import load_upstream

    rec = tmp_path / "recordings"
    rec.mkdir()
    for name in sorted(os.listdir(FSDD)):
        if name.split("_")[0] in "01" and name.split("_")[1] in ("george", "jackson") and \
                int(name.split("_")[2].split(".")[0]) < 4:
            shutil.copy(FSDD / name, rec)
    manifests = fsdd_manifests(rec, tmp_path / "manifests", dev_takes=[2], test_takes=[3])
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "task": "classify", "upstreams": [{"spec": "hf:" + tiny_model_dir("hubert")}],
        "data": {"train": str(manifests["train"]), "dev": str(manifests["dev"]), "test": str(manifests["test"])},
        "interface": {"name": "weighted_sum"}, "downstream": {"hidden_dim": 8},
        "train": {"max_steps": 2, "batch_seconds": 2.5, "val_every_steps": 2, "progress_bar": False,
                  "importance": False},
        "cache": {"dir": str(tmp_path / "cache"), "shard_mb": 0.01}}))
    out = tmp_path / "run"
    assert main(["extract", str(cfg), "--out", str(out), "--device", "cpu"]) == 0
    shards = sorted((tmp_path / "cache").rglob("shard-*.bin"))
    assert len(shards) >= 2
    victim = shards[0]
    victim.write_bytes(np.random.default_rng(0).bytes(victim.stat().st_size))
    capsys.readouterr()
    assert main(["extract", str(cfg), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"{victim} is damaged (checksum mismatch)" in err and "0 to extract" not in err
    victim = sorted((tmp_path / "cache").rglob("shard-*.bin"))[-1]  # and again before `train`
    victim.write_bytes(np.random.default_rng(1).bytes(victim.stat().st_size))
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    assert f"{victim} is damaged (checksum mismatch)" in capsys.readouterr().err
    [log] = (out / "logs" / "csv").rglob("metrics.csv")
    losses = [float(row["train/loss"]) for row in csv.DictReader(open(log)) if row.get("train/loss")]
    assert losses and all(np.isfinite(losses))
    [folder] = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert FeatureCache(tmp_path / "cache").entry(load_upstream("hf:" + tiny_model_dir("hubert"))).folder == folder
    assert CacheEntry(folder, json.loads((folder / "meta.json").read_text())).verify_shards() == {}


# -- keys that cannot go stale --------------------------------------------------------------------------------

def _rewrite_keeping_size_and_mtime(path: str, data: bytes) -> None:
    """What `cp -p` / `rsync -t` of another recording of the same size does."""
    st = os.stat(path)
    assert len(data) == st.st_size
    Path(path).write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_audio_rewritten_with_same_size_and_mtime_is_a_miss_by_default(tmp_path, utts):
    up = FakeUpstream()
    caches = {mode: FeatureCache(tmp_path / "cache", audio_key=mode) for mode in ("stat", "sample", "content")}
    assert FeatureCache(tmp_path / "x").audio_key == "sample"  # the default
    entries = {mode: fill_cache(up, utts, cache, progress=False) for mode, cache in caches.items()}
    target = utts[4]  # noise, 1.22 s: a 39 KB WAV, so the sample covers all of it
    data, rate = sf.read(target.path, dtype="float32")
    header = Path(target.path).read_bytes()[:44]
    samples = (data[::-1] * 32767).astype("<i2").tobytes()  # same length, other audio
    _rewrite_keeping_size_and_mtime(target.path, header + samples)
    assert entries["stat"].missing(utts) == []  # what `stat` misses (documented): a stale hit
    assert entries["sample"].missing(utts) == [target]
    assert entries["content"].missing(utts) == [target]
    entry = fill_cache(up, utts, caches["sample"], progress=False)
    assert_matches(entry, up, [target])  # the new audio's features, not the stale ones


def test_sample_key_misses_a_same_size_edit_in_the_middle_of_a_long_file_content_key_catches_it(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, (np.random.default_rng(0).standard_normal(16000 * 10) * 0.1).astype(np.float32), 16000)
    keys = {mode: audio_key(path, mode) for mode in ("stat", "sample", "content")}
    raw = bytearray(path.read_bytes())
    assert len(raw) > 4 * SAMPLE_BYTES
    raw[len(raw) // 2: len(raw) // 2 + 100] = bytes(100)  # 100 bytes zeroed mid-file, size and mtime kept
    _rewrite_keeping_size_and_mtime(str(path), bytes(raw))
    cache_mod._hashes.clear()  # as a new process would (the memo's ctime may not move within a clock tick)
    assert audio_key(path, "sample") == keys["sample"]  # the documented blind spot of the cheap default
    assert audio_key(path, "content") != keys["content"]
    raw[100:104] = b"\x01\x02\x03\x04"  # within the first 64 KiB: the sample sees it
    _rewrite_keeping_size_and_mtime(str(path), bytes(raw))
    cache_mod._hashes.clear()
    assert audio_key(path, "sample") != keys["sample"]


def test_config_cache_section_selects_key_shards_and_verify(tmp_path):
    from speechfuse.config import CacheConfig, config_from_dict

    base = {"task": "classify", "data": {"train": "t.csv", "dev": "d.csv"}, "upstreams": ["resemblyzer"]}
    cfg = config_from_dict({**base, "cache": {"dir": "c", "key": "content", "shard_mb": 1, "shard_seconds": 5,
                                              "verify": False}}, tmp_path)
    cache = FeatureCache.from_config(cfg.cache.dir, cfg.cache)
    assert (cache.root, cache.audio_key, cache.shard_bytes, cache.shard_seconds, cache.verify) == \
        (tmp_path / "c", "content", 1 << 20, 5.0, False)
    assert config_from_dict({**base, "cache": "off"}).cache.dir == "off"  # the short form still works
    defaults = FeatureCache.from_config("x", CacheConfig())
    assert (defaults.audio_key, defaults.shard_bytes, defaults.shard_seconds, defaults.verify) == \
        ("sample", 64 << 20, 30.0, True)
    with pytest.raises(ConfigError, match="cache.key"):
        config_from_dict({**base, "cache": {"key": "mtime"}})


# -- writers on one cache coordinate ---------------------------------------------------------------------------

TWO_WRITERS_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from helpers import FakeUpstream
    from speechfuse.cache.store import FeatureCache
    from speechfuse.data.manifest import Utterance
    from speechfuse.cache.extract import fill_cache

    class Held(FakeUpstream):  # the first batch waits (at most 60 s) until the test releases it
        def _hidden(self, wavs, wav_lengths):
            if self.utterances_seen == 0 and not os.path.exists({release!r}):
                print("EXTRACTING", flush=True)
                for _ in range(600):
                    if os.path.exists({release!r}):
                        break
                    time.sleep(0.1)
            return super()._hidden(wavs, wav_lengths)

    utts = [Utterance(**u) for u in json.load(open({manifest!r}))]
    up = Held()
    print("READY", flush=True)
    sys.stdin.readline()
    fill_cache(up, utts, FeatureCache({root!r}), batch_seconds=1.0, progress=True)
    print(up.utterances_seen, flush=True)
""")


@pytest.mark.slow
def test_two_extract_processes_on_one_cache_extract_each_utterance_once(tmp_path, utts):
    manifest = tmp_path / "utts.json"
    manifest.write_text(json.dumps([{"id": u.id, "path": u.path, "duration": u.duration} for u in utts]))
    root, release = tmp_path / "cache", tmp_path / "release"
    script = TWO_WRITERS_SCRIPT.format(tests=str(Path(__file__).parent), manifest=str(manifest), root=str(root),
                                       release=str(release))
    first, second = procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                             for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        first.stdin.write("go\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "EXTRACTING"  # mid-extraction, nothing finalised yet
        second.stdin.write("go\n")
        second.stdin.flush()
        for line in second.stderr:  # without coordination it would extract everything itself instead
            if "waiting for pid" in line:
                break
        release.touch()
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        release.touch()
        for proc in procs:
            proc.kill()
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    seen = [int(out.split()[-1]) for out, _ in results]
    assert seen == [len(utts), 0]  # not 2x: the second waited, then found every utterance done
    [folder] = [p for p in root.iterdir() if p.is_dir()]  # both wrote into one entry
    entry = CacheEntry(folder, json.loads((folder / "meta.json").read_text()))
    assert entry.missing(utts) == []
    assert_matches(entry, FakeUpstream(), utts)  # Held computes what FakeUpstream does


@pytest.mark.slow
def test_the_cache_only_stores_it_does_not_import_extraction():
    """extract imports cache, never the other way round (no import cycle, not even a lazy one)."""
    code = "import sys, speechfuse.cache.store; print('speechfuse.cache.extract' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    source = Path(cache_mod.__file__).read_text()
    assert "extract import" not in source and "import extract" not in source


# -- a full disk -------------------------------------------------------------------------------------------------

def test_disk_full_during_extraction_is_a_clear_error_keeping_finalised_shards(tmp_path, utts, monkeypatch):
    real_write = cache_mod._write_all
    calls = []

    def write_until_full(handle, data):
        calls.append(len(data))
        if len(calls) > 3 * 7:  # 3 layers per utterance: the 8th utterance hits a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(handle, data)

    monkeypatch.setattr(cache_mod, "_write_all", write_until_full)
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache", shard_bytes=3000)
    with pytest.raises(CacheError) as err:
        fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    message = str(err.value)
    assert str(tmp_path / "cache") in message and "disk is full" in message and "ENOSPC" in message
    entry = cache.entry(up)
    missing = entry.missing(utts)
    assert len(missing) == len(utts) - 7  # every utterance written before the failure is kept
    assert f"(7 of {len(utts)} utterances) is kept" in message
    assert f"needs about" in message and f"({estimate_cache_bytes(up, missing)} bytes)" in message
    assert not list(entry.folder.glob("*.partial"))
    monkeypatch.setattr(cache_mod, "_write_all", real_write)
    seen = up.utterances_seen
    entry = fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    assert up.utterances_seen == seen + len(missing)  # the rerun extracts only the rest
    assert_matches(entry, up, utts)


def test_disk_full_while_writing_a_shard_index_is_the_same_clear_error(tmp_path, utts, monkeypatch):
    """Shard indexes go through speechfuse.io.write_atomic, which turns ENOSPC into its own error: extraction still
    says the disk is full, keeps the shards finalised before, and a rerun extracts only the rest."""
    import speechfuse.io as sf_io

    real_write_atomic, indexes = cache_mod.write_atomic, []

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_on_second_index(path, data):
        if Path(path).name.startswith("shard-"):
            indexes.append(Path(path).name)
            if len(indexes) == 2:
                with monkeypatch.context() as full:
                    full.setattr(sf_io.os, "fsync", no_space)
                    return real_write_atomic(path, data)
        return real_write_atomic(path, data)

    monkeypatch.setattr(cache_mod, "write_atomic", full_on_second_index)
    up = FakeUpstream()
    cache = FeatureCache(tmp_path / "cache", shard_bytes=3000)
    with pytest.raises(CacheError, match="disk is full .*ENOSPC.* is kept") as err:
        fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    assert isinstance(err.value.__cause__, sf_io.RunFolderError)
    entry = cache.entry(up)
    first = json.loads((entry.folder / indexes[0]).read_text())["entries"]
    assert len(entry.missing(utts)) == len(utts) - len(first) > 0  # the first shard is kept, the second is not
    monkeypatch.setattr(cache_mod, "write_atomic", real_write_atomic)
    seen = up.utterances_seen
    entry = fill_cache(up, utts, cache, batch_seconds=2.0, progress=False)
    assert up.utterances_seen == seen + len(utts) - len(first)
    assert_matches(entry, up, utts)


def test_size_estimate_uses_the_audio_files_not_a_wrong_manifest_duration(tmp_path, utts, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    up = FakeUpstream()
    real = estimate_cache_bytes(up, utts)
    lying = [Utterance(id=u.id, path=u.path, duration=u.duration / 5) for u in utts]  # 5x too short
    assert estimate_cache_bytes(up, lying, durations=[u.duration for u in lying]) < real / 3
    with pytest.warns(UserWarning, match=r"manifest durations are more than 10 % off.*'noise1'"):
        with pytest.raises(CacheError, match=f"needs .* \\({real} bytes\\)"):
            fill_cache(up, lying, FeatureCache(tmp_path / "cache"), progress=False)
