"""Data: audio reading, manifests and their validation, duration batching, collate, corpus adapters."""
from __future__ import annotations

import csv
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from speechfuse.errors import AudioError, ConfigError
from speechfuse.data import (AudioDataset, DurationBatchSampler, ManifestError, Utterance, audio_info,
                             bundled_fsdd_dir, check_manifest, collate_audio, folder_manifest, fsdd_manifests,
                             librispeech_manifest, load_manifest, make_batches, padding_ratio, read_audio,
                             validate_manifest, write_manifest)
from helpers import FakeUpstream, FSDD, make_fsdd, run_config

FSDD_CLIP = FSDD / "7_jackson_22.flac"


def tone(path: Path, seconds: float, rate: int = 8000, channels: int = 1, fmt: str | None = None) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    data = np.stack([wave, -wave], axis=1) if channels == 2 else wave
    sf.write(str(path), data, rate, format=fmt)
    return path


# -- audio ---------------------------------------------------------------------------------------------

def test_read_audio_resamples_real_speech():
    samples, rate, channels, duration = audio_info(FSDD_CLIP)
    assert (rate, channels) == (8000, 1) and duration == pytest.approx(samples / 8000)
    wav = read_audio(FSDD_CLIP, 16000)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(wav.shape[0] - 2 * samples) <= 2
    native = read_audio(FSDD_CLIP, 8000)
    assert native.shape[0] == samples
    # resampling keeps the signal's energy (a zero or garbage output would not)
    assert wav.pow(2).mean().item() == pytest.approx(native.pow(2).mean().item(), rel=0.05)


def test_stereo_is_mixed_down_with_a_warning(tmp_path):
    path = tone(tmp_path / "stereo.wav", 0.5, channels=2)
    with pytest.warns(UserWarning, match="stereo.wav"):
        wav = read_audio(path, 8000)
    assert wav.abs().max().item() < 1e-4  # the channels were opposite, so their mean is silence


def test_read_audio_rejects_a_bad_rate():
    with pytest.raises(ConfigError, match="sample_rate"):
        read_audio(FSDD_CLIP, 16000.0)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty", "nan"])
def test_bad_audio_raises_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(b"RIFF this is not audio at all" * 10)
    elif kind == "empty":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 8000)
    elif kind == "nan":
        sf.write(str(path), np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match=f"{kind}.wav"):
        read_audio(path, 16000)


# -- manifests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_round_trip_and_relative_paths(tmp_path, suffix):
    (tmp_path / "audio").mkdir()
    audio = tone(tmp_path / "audio" / "a.wav", 0.3)
    utts = [Utterance("a", str(audio), 0.3, text="hello world", speaker="s1", extra={"gender": "f"}),
            Utterance("b", str(audio), None, text="again", language="en")]
    out = write_manifest(utts, tmp_path / f"m{suffix}", relative_paths=True)
    raw = out.read_text()
    assert "audio/a.wav" in raw and str(tmp_path) not in raw
    loaded = load_manifest(out)
    assert [u.id for u in loaded] == ["a", "b"]
    assert loaded[0].path == str(audio) and loaded[0].duration == pytest.approx(0.3)
    assert loaded[0].text == "hello world" and loaded[0].speaker == "s1" and loaded[0].extra == {"gender": "f"}
    assert loaded[1].duration is None and loaded[1].language == "en"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot format this cell")


def test_a_failed_manifest_or_skipped_rows_write_keeps_the_old_file(tmp_path):
    """Both are written in one atomic step: a row that fails half-way leaves the previous file whole."""
    from speechfuse.data.manifest import BadRow, write_bad_rows

    audio = str(FSDD_CLIP)
    manifest = write_manifest([Utterance("a", audio, 0.3, text="seven")], tmp_path / "m.csv")
    before = manifest.read_bytes()
    with pytest.raises(RuntimeError, match="cannot format"):
        write_manifest([Utterance("a", audio, 0.3, text="seven"),
                        Utterance("b", audio, 0.3, text="seven", extra={"note": _Unprintable()})], manifest)
    assert manifest.read_bytes() == before

    skipped = tmp_path / "skipped_train.csv"
    write_bad_rows([BadRow(1, "a", audio, "empty")], skipped)
    before = skipped.read_bytes()
    with pytest.raises(RuntimeError, match="cannot format"):
        write_bad_rows([BadRow(1, "a", audio, "empty"), BadRow(2, "b", audio, _Unprintable())], skipped)
    assert skipped.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "path", "duration", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def bad_manifest(tmp_path) -> Path:
    good = tone(tmp_path / "good.wav", 0.5)
    other = tone(tmp_path / "other.wav", 0.25)
    (tmp_path / "corrupt.wav").write_bytes(b"not a wav file" * 20)
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 8000)
    rows = [
        {"id": "u1", "path": "good.wav", "duration": "", "text": "one"},          # 1 good
        {"id": "u2", "path": "gone.wav", "duration": "", "text": "two"},          # 2 missing file
        {"id": "u3", "path": "corrupt.wav", "duration": "", "text": "three"},     # 3 corrupt
        {"id": "u4", "path": "empty.wav", "duration": "", "text": "four"},        # 4 empty
        {"id": "u5", "path": "good.wav", "duration": "", "text": ""},             # 5 missing target
        {"id": "u6", "path": "good.wav", "duration": "long", "text": "six"},      # 6 wrong type
        {"id": "u1", "path": "good.wav", "duration": "", "text": "dup"},          # 7 duplicate id
        {"id": "u8", "path": str(other), "duration": "0.25", "text": "eight"},    # 8 good (absolute path)
    ]
    return write_csv(tmp_path / "train.csv", rows)


def test_validation_lists_every_bad_row(bad_manifest):
    with pytest.raises(ManifestError) as info:
        validate_manifest(bad_manifest, "text")
    message = str(info.value)
    assert str(bad_manifest) in message
    expected = {2: "not found", 3: "corrupt", 4: "empty", 5: "missing text", 6: "not a number", 7: "duplicate id"}
    assert {b.row for b in info.value.bad_rows} == set(expected)
    for row, reason in expected.items():
        assert any(b.row == row and reason in b.reason for b in info.value.bad_rows), (row, reason)
        assert f"row {row} " in message
    assert "row 1 " not in message and "row 8 " not in message
    assert "first used in row 1" in message


def test_load_manifest_reports_parse_errors_only(bad_manifest):
    with pytest.raises(ManifestError) as info:
        load_manifest(bad_manifest)
    assert [b.row for b in info.value.bad_rows] == [6]


def test_skip_bad_keeps_good_rows_and_writes_the_skipped_list(bad_manifest, tmp_path):
    skipped = tmp_path / "skipped.csv"
    good = validate_manifest(bad_manifest, "text", skip_bad=True, skipped_out=skipped)
    assert [u.id for u in good] == ["u1", "u8"]
    assert good[0].duration == pytest.approx(0.5)  # filled from the audio header
    assert good[1].duration == pytest.approx(0.25)
    with open(skipped) as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["row"]) for r in rows}) == [2, 3, 4, 5, 6, 7]
    with pytest.raises(ConfigError, match="skipped_out"):
        validate_manifest(bad_manifest, "text", skip_bad=True)


def test_check_manifest_on_objects_and_label_target(tmp_path):
    audio = str(tone(tmp_path / "a.wav", 0.2))
    utts = [Utterance("a", audio, label="x"), Utterance("b", audio, duration=-1.0, label=None),
            Utterance("", audio, label="y")]
    bad = check_manifest(utts, "label")
    assert {(b.row, b.reason.split(" ")[0]) for b in bad} == {(2, "duration"), (2, "missing"), (3, "missing")}
    assert check_manifest(utts[:1], "label") == []
    with pytest.raises(ConfigError, match="target"):
        check_manifest(utts, "transcript")


def test_jsonl_bad_lines_and_missing_columns(tmp_path):
    audio = tone(tmp_path / "a.wav", 0.2)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "path": "a.wav", "label": 3}) + "\n{broken\n"
                     + json.dumps({"id": "c", "path": "a.wav", "text": 5}) + "\n")
    with pytest.raises(ManifestError) as info:
        validate_manifest(jsonl, "label")
    reasons = {b.row: b.reason for b in info.value.bad_rows}
    assert "not valid JSON" in reasons[2] and "text must be a string" in reasons[3]
    good = validate_manifest(jsonl, "label", skip_bad=True, skipped_out=tmp_path / "skip.csv")
    assert [(u.id, u.label, u.path) for u in good] == [("a", "3", str(audio))]
    no_path = tmp_path / "nopath.csv"
    no_path.write_text("id,file\na,a.wav\n")
    with pytest.raises(ConfigError, match=r"nopath.csv.*\['path'\]"):
        load_manifest(no_path)
    with pytest.raises(ConfigError, match="unknown format"):
        load_manifest(tmp_path / "a.wav")


# -- batching ------------------------------------------------------------------------------------------

def durations_fixture(n: int = 300, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.3, 6.0), 3) for _ in range(n)] + [25.0]  # one clip longer than a batch


def test_batches_respect_the_budget_and_cover_everything():
    durations = durations_fixture()
    sampler = DurationBatchSampler(durations, batch_seconds=20.0, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))
    for b in batches:
        padded = len(b) * max(durations[i] for i in b)
        assert padded <= 20.0 or len(b) == 1
    assert [len(durations) - 1] in batches  # the 25 s clip is alone


def test_batches_are_deterministic_per_epoch():
    durations = durations_fixture()
    a = DurationBatchSampler(durations, 20.0, seed=5)
    b = DurationBatchSampler(durations, 20.0, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    fixed = DurationBatchSampler(durations, 20.0, shuffle=False)
    assert list(fixed) == list(fixed) and list(fixed) == make_batches(durations, 20.0)


def test_sorting_reduces_padding_against_random_batches():
    durations = durations_fixture()
    sorted_batches = list(DurationBatchSampler(durations, 20.0, seed=0))
    rng = random.Random(0)
    order = list(range(len(durations)))
    rng.shuffle(order)
    size = max(1, len(durations) // len(sorted_batches))
    random_batches = [order[i: i + size] for i in range(0, len(order), size)]
    sorted_ratio, random_ratio = padding_ratio(sorted_batches, durations), padding_ratio(random_batches, durations)
    assert sorted_ratio < 0.1 < random_ratio
    assert sorted_ratio < random_ratio / 3


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_ddp_ranks_get_equal_disjoint_shares(replicas):
    durations = durations_fixture()
    total = len(make_batches(durations, 20.0))
    per_rank = [list(DurationBatchSampler(durations, 20.0, seed=2, num_replicas=replicas, rank=r))
                for r in range(replicas)]
    assert len({len(p) for p in per_rank}) == 1
    assert len(per_rank[0]) == -(-total // replicas)
    flat = [i for p in per_rank for b in p for i in b]
    assert set(flat) == set(range(len(durations)))
    padding = len(per_rank[0]) * replicas - total
    seen_batches = [tuple(b) for p in per_rank for b in p]
    assert len(seen_batches) - len(set(seen_batches)) == padding  # only the padding repeats a batch
    dropped = [list(DurationBatchSampler(durations, 20.0, seed=2, num_replicas=replicas, rank=r, drop_last=True))
               for r in range(replicas)]
    assert all(len(p) == total // replicas for p in dropped)
    dropped_ids = [i for p in dropped for b in p for i in b]
    assert len(dropped_ids) == len(set(dropped_ids))


def test_fewer_batches_than_ranks_still_gives_each_rank_one():
    per_rank = [list(DurationBatchSampler([1.0, 1.0], 5.0, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(p) == 1 for p in per_rank)


@pytest.mark.parametrize("kwargs,match", [
    (dict(durations=[1.0, float("nan")], batch_seconds=5.0), "item 1"),
    (dict(durations=[1.0, None], batch_seconds=5.0), "item 1"),
    (dict(durations=[], batch_seconds=5.0), "empty"),
    (dict(durations=[1.0], batch_seconds=0), "batch_seconds"),
    (dict(durations=[1.0], batch_seconds=5.0, num_replicas=2, rank=2), "rank"),
])
def test_sampler_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DurationBatchSampler(**kwargs)


# -- dataset -------------------------------------------------------------------------------------------

def test_dataset_and_collate_pad_with_zeros(tmp_path):
    utts = [Utterance("short", str(tone(tmp_path / "s.wav", 0.1))),
            Utterance("long", str(tone(tmp_path / "l.flac", 0.3, fmt="FLAC")))]
    dataset = AudioDataset(utts, 16000)
    batch = collate_audio([dataset[0], dataset[1]])
    assert batch.ids == ["short", "long"] and batch.utts == utts
    assert batch.wavs.dtype == torch.float32 and batch.wav_lengths.dtype == torch.int64
    assert batch.wav_lengths.tolist() == [1600, 4800] and batch.wavs.shape == (2, 4800)
    assert torch.equal(batch.wavs[0, :1600], dataset[0].wav)
    assert batch.wavs[0, 1600:].abs().sum() == 0 and batch.wavs[0, :1600].abs().sum() > 0


def test_dataloader_with_the_duration_sampler(tmp_path):
    utts = [Utterance(f"c{i}", str(tone(tmp_path / f"c{i}.wav", 0.1 * (i + 1))), 0.1 * (i + 1)) for i in range(6)]
    sampler = DurationBatchSampler([u.duration for u in utts], batch_seconds=0.8, seed=1)
    loader = DataLoader(AudioDataset(utts, 16000), batch_sampler=sampler, collate_fn=collate_audio)
    batches = list(loader)
    assert sorted(i for b in batches for i in b.ids) == sorted(u.id for u in utts)
    for batch in batches:
        assert batch.wavs.shape[1] == int(batch.wav_lengths.max())
        assert batch.wavs.shape[0] * batch.wavs.shape[1] / 16000 <= 0.8 + 1e-6 or len(batch.ids) == 1


def test_csv_with_a_byte_order_mark(tmp_path):
    tone(tmp_path / "a.wav", 0.1)
    (tmp_path / "bom.csv").write_text("\ufeffid,path,label\na,a.wav,yes\n", encoding="utf-8")
    assert [(u.id, u.label) for u in load_manifest(tmp_path / "bom.csv")] == [("a", "yes")]


# -- adapters ------------------------------------------------------------------------------------------

def test_fsdd_manifests_split_by_take(tmp_path):
    recordings = tmp_path / "rec"
    recordings.mkdir()
    for take in (0, 4, 5, 9, 10, 30):
        tone(recordings / f"7_alice_{take}.wav", 0.2)
    tone(recordings / "3_bob_12.flac", 0.2, fmt="FLAC")
    out = fsdd_manifests(recordings, tmp_path / "manifests")
    ids = {split: [u.id for u in load_manifest(path)] for split, path in out.items()}
    assert sorted(ids["test"]) == ["7_alice_0", "7_alice_4"]
    assert sorted(ids["dev"]) == ["7_alice_5", "7_alice_9"]
    assert sorted(ids["train"]) == ["3_bob_12", "7_alice_10", "7_alice_30"]
    bob = next(u for u in load_manifest(out["train"]) if u.id == "3_bob_12")
    assert (bob.text, bob.label, bob.speaker) == ("three", "3", "bob") and bob.duration == pytest.approx(0.2)
    tone(recordings / "3_bob_12.wav", 0.2)
    with pytest.raises(ConfigError, match="3_bob_12"):
        fsdd_manifests(recordings, tmp_path / "m2")
    (recordings / "3_bob_12.wav").unlink()
    tone(recordings / "seven.wav", 0.2)
    with pytest.raises(ConfigError, match="seven.wav"):
        fsdd_manifests(recordings, tmp_path / "m3")


def test_bundled_fsdd_subset_is_complete(tmp_path):
    folder = bundled_fsdd_dir()
    assert "CC BY-SA 4.0" in (folder / "README.md").read_text()
    assert (folder / "LICENSE").is_file() and (folder / "speakers.csv").is_file()
    splits = {k: load_manifest(v) for k, v in fsdd_manifests(folder / "recordings", tmp_path).items()}
    assert {k: len(v) for k, v in splits.items()} == {"train": 900, "dev": 300, "test": 300}
    for utts in splits.values():
        assert {u.speaker for u in utts} == {"jackson", "nicolas", "theo", "yweweler", "george", "lucas"}
        assert {u.label for u in utts} == {str(d) for d in range(10)}
    clip = splits["test"][0]
    assert clip.path.endswith(".flac") and read_audio(clip.path, 16000).shape[0] > 1000


def test_folder_manifest(tmp_path):
    for label, n in (("dog", 2), ("cat", 1)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(n):
            tone(tmp_path / "data" / label / f"{i}.wav", 0.1)
    utts = load_manifest(folder_manifest(tmp_path / "data", tmp_path / "m.csv"))
    assert [(u.id, u.label) for u in utts] == [("cat/0", "cat"), ("dog/0", "dog"), ("dog/1", "dog")]
    tone(tmp_path / "data" / "loose.wav", 0.1)
    with pytest.raises(ConfigError, match="no label"):
        folder_manifest(tmp_path / "data", tmp_path / "m2.csv")


def test_librispeech_manifest_on_a_synthetic_layout(tmp_path):
    split = tmp_path / "dev-clean"
    chapter = split / "84" / "121123"
    chapter.mkdir(parents=True)
    lines = {"84-121123-0000": "GO DO YOU HEAR", "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES"}
    for utt_id in lines:
        tone(chapter / f"{utt_id}.flac", 0.4, rate=16000, fmt="FLAC")
    (chapter / "84-121123.trans.txt").write_text("".join(f"{k} {v}\n" for k, v in lines.items()))
    utts = load_manifest(librispeech_manifest(split, tmp_path / "dev.jsonl"))
    assert [(u.id, u.text, u.speaker) for u in utts] == [(k, v, "84") for k, v in lines.items()]
    assert utts[0].duration == pytest.approx(0.4)
    (chapter / "84-121123-0001.flac").unlink()
    with pytest.raises(ConfigError, match="84-121123-0001.flac"):
        librispeech_manifest(split, tmp_path / "dev2.jsonl")


# -- the up-front check: rows that would fail or mislead later are found before any work -------------------

def one_row_per_file(path: Path, files: list[Path], durations: list[str] | None = None) -> Path:
    rows = [{"id": f.stem, "path": f.name, "duration": (durations or [""] * len(files))[i], "text": "x"}
            for i, f in enumerate(files)]
    return write_csv(path, rows)


def test_clip_longer_than_an_upstream_accepts_is_a_bad_row_naming_row_and_file(tmp_path):
    """Whisper's > 30 s error used to come from inside extraction, naming neither the file nor the row."""
    from speechfuse.data import ClipLimit

    files = [tone(tmp_path / "short.wav", 1.0), tone(tmp_path / "long.wav", 31.0), tone(tmp_path / "edge.wav", 30.0)]
    manifest = one_row_per_file(tmp_path / "m.csv", files)
    limit = ClipLimit(30.0, "whisper-tiny.en")
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest, "text", max_clip=limit)
    assert [b.row for b in info.value.bad_rows] == [2]  # 30.0 s exactly fits the window
    message = str(info.value)
    assert "row 2 (id 'long', path " in message and str(files[1]) in message
    assert "31.00 s, longer than the 30 s that whisper-tiny.en accepts" in message
    good = validate_manifest(manifest, "text", skip_bad=True, skipped_out=tmp_path / "skipped.csv", max_clip=limit)
    assert [u.id for u in good] == ["short", "edge"]
    assert (tmp_path / "skipped.csv").read_text().splitlines()[1].startswith("2,long,")
    assert len(validate_manifest(manifest, "text")) == 3  # no limit: every clip is fine


def test_clip_limit_comes_from_upstreams_that_cannot_window(tiny_model_dir):
    """HF upstreams run clips over max_seconds in windows, so they set no manifest limit; an upstream
    with a limit and no windows (no window_samples) still makes longer clips bad rows."""
    from speechfuse import load_upstream
    from speechfuse.data import ClipLimit, clip_limit

    whisper = load_upstream(f"hf:{tiny_model_dir('whisper')}")
    hubert = load_upstream(f"hf:{tiny_model_dir('hubert')}")
    assert clip_limit([]) is None
    assert hubert.max_samples == 60 * 16000 and whisper.max_samples == 30 * 16000
    assert hubert.runs_long_clips and whisper.runs_long_clips
    assert clip_limit([hubert, whisper]) is None

    class NoWindows:  # the attributes clip_limit reads, as a user's upstream without window_samples has them
        name, sample_rate, max_samples, runs_long_clips = "fixed", 16000, 16000 * 20, False

    assert clip_limit([hubert, NoWindows()]) == ClipLimit(20.0, "fixed")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_audio_is_a_bad_row_before_extraction(tmp_path, bad_value):
    """NaN/inf clips were found only during extraction, so skip_bad_rows could not drop them."""
    samples = np.full(4000, 0.1, dtype=np.float32)
    samples[1234] = bad_value
    sf.write(str(tmp_path / "broken.wav"), samples, 8000, subtype="FLOAT")
    files = [tone(tmp_path / "fine.wav", 0.5), tmp_path / "broken.wav"]
    manifest = one_row_per_file(tmp_path / "m.csv", files)
    with pytest.raises(ManifestError, match=r"row 2 \(id 'broken', .*NaN or infinite samples"):
        validate_manifest(manifest, "text")
    good = validate_manifest(manifest, "text", skip_bad=True, skipped_out=tmp_path / "skipped.csv")
    assert [u.id for u in good] == ["fine"]


def test_only_float_files_are_decoded_by_the_check(tmp_path, monkeypatch):
    """The check's cost: integer PCM and FLAC cannot hold NaN/inf, so only float files are decoded."""
    calls = []

    def recorded(real):
        return lambda path, *args, **kwargs: calls.append(Path(path).name) or real(path, *args, **kwargs)

    for name in ("blocks", "read"):  # the two ways soundfile decodes a whole file
        monkeypatch.setattr(sf, name, recorded(getattr(sf, name)))
    pcm = tone(tmp_path / "pcm.wav", 0.5)
    flac = tone(tmp_path / "c.flac", 0.5, fmt="FLAC")
    sf.write(str(tmp_path / "float.wav"), np.zeros(4000, dtype=np.float32), 8000, subtype="FLOAT")
    manifest = one_row_per_file(tmp_path / "m.csv", [pcm, flac, tmp_path / "float.wav"])
    assert len(validate_manifest(manifest, "text")) == 3
    assert calls == ["float.wav"]


def test_truncated_wav_is_a_warning_naming_the_file(tmp_path):
    """A WAV whose header claims more data than the file holds used to be half-used silently."""
    full = tone(tmp_path / "full.wav", 2.0)  # 16-bit PCM at 8 kHz: 44 header bytes + 32,000 data bytes
    data = full.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:44 + 16000])
    manifest = one_row_per_file(tmp_path / "m.csv", [tmp_path / "cut.wav", full])
    with pytest.warns(UserWarning) as caught:
        good = validate_manifest(manifest, "text")
    message = "\n".join(str(w.message) for w in caught)
    assert f"row 1 (id 'cut', path '{tmp_path / 'cut.wav'}')" in message
    assert "declares 2.00 s but the file holds only 1.00 s" in message and "full.wav" not in message
    assert [u.duration for u in good] == pytest.approx([1.0, 2.0])  # the audio actually present
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_manifest(one_row_per_file(tmp_path / "ok.csv", [full]), "text")  # an intact WAV: no warning


def test_duration_column_far_from_the_audio_is_a_warning_naming_the_row(tmp_path):
    """A wrong `duration` made the cache size estimate 5x too small, with no warning."""
    files = [tone(tmp_path / f"{name}.wav", 1.0) for name in ("a", "b", "c")]
    manifest = one_row_per_file(tmp_path / "m.csv", files, durations=["1.05", "5.0", "0.85"])
    with pytest.warns(UserWarning) as caught:
        good = validate_manifest(manifest, "text")
    message = "\n".join(str(w.message) for w in caught)
    assert str(manifest) in message and "2 row(s)" in message
    assert "row 2 (id 'b'" in message and "says 5 s but the audio lasts 1.00 s" in message
    assert "row 3 (id 'c'" in message and "row 1 " not in message  # 5 % off is within the 10 % tolerance
    assert [u.duration for u in good] == pytest.approx([1.0, 1.0, 1.0])  # the audio's own durations are used


def test_header_only_manifest_says_so_and_points_to_no_file(tmp_path):
    """It used to point to skipped_train.csv, which is never written."""
    manifest = write_csv(tmp_path / "train.csv", [])
    for skip in (False, True):
        with pytest.raises(ManifestError) as info:
            validate_manifest(manifest, "text", skip_bad=skip, skipped_out=tmp_path / "skipped.csv")
        assert "no data rows" in str(info.value) and "skipped" not in str(info.value)
    assert not (tmp_path / "skipped.csv").exists()


def test_header_only_manifest_in_a_run_names_the_split_and_no_skipped_file(tmp_path):
    from speechfuse.config import config_from_dict
    from speechfuse.data.loader import load_splits

    manifests = make_fsdd(tmp_path, speakers=("george",))
    manifests["test"].write_text(manifests["test"].read_text().splitlines()[0] + "\n")
    data = run_config(manifests, "hf:/unused", max_steps=1)
    for skip in (False, True):
        data["train"]["skip_bad_rows"] = skip
        with pytest.raises(ConfigError) as err:
            load_splits(config_from_dict(data), tmp_path / "run", "label")
        message = str(err.value)
        assert f"data.test: manifest {manifests['test']} has no data rows" in message
        assert "skipped_" not in message


# -- segment rows (start / end) -------------------------------------------------------------------------

def test_segment_reads_exactly_its_span_and_only_that_span(monkeypatch):
    import soxr

    full = read_audio(FSDD_CLIP, 8000).numpy()  # the clip's native rate
    calls = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **k: calls.append(k) or real_read(*a, **k))
    native = read_audio(FSDD_CLIP, 8000, start=0.1, end=0.3)
    np.testing.assert_array_equal(native.numpy(), full[800:2400])
    assert (calls[-1]["start"], calls[-1]["stop"]) == (800, 2400)  # the decoder was asked for the span only
    resampled = read_audio(FSDD_CLIP, 16000, start=0.1, end=0.3)
    np.testing.assert_array_equal(resampled.numpy(), soxr.resample(full[800:2400], 8000, 16000))
    tail = read_audio(FSDD_CLIP, 8000, start=0.25)  # start alone runs to the end of the file
    np.testing.assert_array_equal(tail.numpy(), full[2000:])
    head = read_audio(FSDD_CLIP, 8000, end=0.05)
    np.testing.assert_array_equal(head.numpy(), full[:400])


@pytest.mark.parametrize("start,end", [(0.3, 0.1), (0.2, 0.2), (-0.1, 0.2), (0.1, 99.0)])
def test_read_audio_refuses_a_span_outside_the_file(start, end):
    with pytest.raises(AudioError, match="7_jackson_22.flac.*span"):
        read_audio(FSDD_CLIP, 8000, start=start, end=end)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_segment_rows_round_trip_validate_and_load_their_span(tmp_path, suffix):
    full_seconds = audio_info(FSDD_CLIP)[3]
    utts = [Utterance("a", str(FSDD_CLIP), text="seven", start=0.1, end=0.3),
            Utterance("b", str(FSDD_CLIP), text="seven", start=0.2),
            Utterance("whole", str(FSDD_CLIP), text="seven")]
    manifest = write_manifest(utts, tmp_path / f"m{suffix}")
    loaded = validate_manifest(manifest, "text")
    assert [(u.start, u.end) for u in loaded] == [(0.1, 0.3), (0.2, None), (None, None)]
    assert loaded[0].duration == pytest.approx(0.2)
    assert loaded[1].duration == pytest.approx(full_seconds - 0.2)
    assert loaded[2].duration == pytest.approx(full_seconds)
    batch = collate_audio([AudioDataset(loaded, 8000)[i] for i in range(3)])
    full = read_audio(FSDD_CLIP, 8000)
    assert batch.wav_lengths.tolist() == [1600, full.shape[0] - 1600, full.shape[0]]
    torch.testing.assert_close(batch.wavs[0, :1600], full[800:2400], rtol=0, atol=0)


def test_bad_spans_are_bad_rows_naming_the_row(tmp_path):
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "text", "start", "end"])
        writer.writerow(["ok", str(FSDD_CLIP), "seven", "0.1", "0.3"])     # 1 good
        writer.writerow(["reversed", str(FSDD_CLIP), "seven", "0.3", "0.1"])
        writer.writerow(["empty", str(FSDD_CLIP), "seven", "0.2", "0.2"])
        writer.writerow(["negative", str(FSDD_CLIP), "seven", "-0.5", "0.1"])
        writer.writerow(["beyond", str(FSDD_CLIP), "seven", "0.1", "60"])
        writer.writerow(["late", str(FSDD_CLIP), "seven", "60", ""])
        writer.writerow(["word", str(FSDD_CLIP), "seven", "soon", ""])
    with pytest.raises(ManifestError) as info:
        validate_manifest(path, "text")
    by_row = {b.row: b.reason for b in info.value.bad_rows}
    assert sorted(by_row) == [2, 3, 4, 5, 6, 7]
    assert "after start" in by_row[2] and "after start" in by_row[3]
    assert "start -0.5" in by_row[4]
    assert "not inside" in by_row[5] and "not inside" in by_row[6]
    assert "start 'soon' is not a number" in by_row[7]
    assert "row 5 (id 'beyond'" in str(info.value)


def test_each_span_of_one_file_is_its_own_cache_entry(tmp_path):
    from speechfuse.cache.store import FeatureCache, audio_durations, utterance_key
    from speechfuse.cache.extract import fill_cache

    clip = tmp_path / "clip.wav"
    sf.write(clip, (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), 16000)
    utts = [Utterance("first", str(clip), 0.4, start=0.0, end=0.4),
            Utterance("second", str(clip), 0.5, start=0.5, end=1.0),
            Utterance("whole", str(clip), 1.0)]
    assert len({utterance_key(u) for u in utts}) == 3
    assert audio_durations(utts, warn=False) == pytest.approx([0.4, 0.5, 1.0])  # sizes and batches use spans
    up = FakeUpstream()
    entry = fill_cache(up, utts, FeatureCache(tmp_path / "cache"), batch_seconds=2.0, progress=False)
    states = entry.read(utts)
    assert states.lengths.tolist() == [up.num_frames(6400), up.num_frames(8000), up.num_frames(16000)]
    # each span's cached features equal a fresh extraction of exactly that span
    for b, u in enumerate(utts[:2]):
        wav = read_audio(u.path, 16000, u.start, u.end)
        with torch.inference_mode():
            ref = up(wav[None], torch.tensor([wav.shape[0]])).hidden[:, 0]
        torch.testing.assert_close(states.hidden[:, b, : ref.shape[1]], ref, atol=1e-3, rtol=1e-3)


def test_predict_inputs_from_a_segment_manifest_keep_their_span(tmp_path):
    from speechfuse.serving.inference import _Item, collect_inputs

    manifest = write_manifest([Utterance("a", str(FSDD_CLIP), text="seven", start=0.1, end=0.3),
                               Utterance("bad", str(FSDD_CLIP), text="seven", start=0.1, end=60.0)],
                              tmp_path / "m.csv")
    item, failure = collect_inputs(manifest, 16000)
    assert isinstance(item, _Item) and (item.start, item.end) == (0.1, 0.3)
    assert item.duration == pytest.approx(0.2)
    assert failure.id == "bad" and "span" in failure.error


def test_s3prl_buckets_reproduce_the_halving_rule_by_hand():
    """s3prl downstream/asr/dataset.py: longest first, buckets of N, a full bucket whose longest clip is over
    HALF_BATCHSIZE_TIME split in two, the last partial bucket kept whole when it has more than one clip."""
    from speechfuse.data.batching import DurationBatchSampler, s3prl_buckets

    durations = [5.0, 1.0, 4.0, 2.0, 3.0, 0.1, 0.05]  # longest first: 0, 2, 4, 3, 1, 5, 6
    assert s3prl_buckets(durations, 2, 0.125) == [[0], [2], [4], [3], [1], [5]]  # [6] alone is dropped
    assert s3prl_buckets(durations, 4, 0.125) == [[0, 2], [4, 3], [1, 5, 6]]
    assert s3prl_buckets([0.1] * 8, 4, 0.125) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # no clip over: not halved
    # LibriSpeech-like: every full bucket of 32 halved, so updates are on 16 utterances
    rng = random.Random(0)
    libri = [rng.uniform(1.0, 35.0) for _ in range(70)]
    sizes = [len(b) for b in s3prl_buckets(libri, 32, 0.125)]
    assert sizes == [16, 16, 16, 16, 6]
    sampler = DurationBatchSampler(libri, 400.0, shuffle=True, seed=0, bucket_utterances=32)
    first = sampler.global_batches()
    sampler.set_epoch(1)
    second = sampler.global_batches()
    assert sorted(map(sorted, first)) == sorted(map(sorted, second)) and first != second  # same buckets, new order
    assert len(sampler) == 5
