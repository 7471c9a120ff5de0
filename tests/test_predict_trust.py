"""`predict` you can trust (issue 16, item 6): a lock on its output, duplicate inputs and ids named with their
rows, exit codes that say whether inputs failed, waveforms that need their sample rate, and output folder
errors in one line. Each test names the behaviour of old main it replaces."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from filelock import FileLock

from helpers import read_only
from speechfuse.cli import main
from speechfuse.errors import ConfigError


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _one_line(err: str) -> str:
    """The message of a failed command: one line (progress bars aside), no traceback."""
    lines = [line for line in err.strip().splitlines() if "%|" not in line and line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_second_predict_into_the_same_out_is_refused(saved_classifier, tmp_path, monkeypatch, capsys):
    """Old: two predicts into one --out at once wrote 33 rows for 20 inputs and both exited 0. Now the second,
    started while the first is writing, exits 2 naming the lock; the first ends with one row per input."""
    import speechfuse.serving.inference as inference

    model, clips = saved_classifier
    out = tmp_path / "p.jsonl"
    command = ["predict", str(model), *map(str, clips), "--out", str(out), "--batch-seconds", "0.5"]
    real = inference.iter_predictions
    second: list[int] = []

    def first_run(*args, **kwargs):
        for batch in real(*args, **kwargs):
            yield batch
            if not second:
                second.append(main(command))  # the other predict, while this one holds --out

    monkeypatch.setattr(inference, "iter_predictions", first_run)
    assert main(command) == 0
    assert second == [2]
    err = capsys.readouterr().err
    assert f"another `speechfuse predict` is writing to it (lock {out}.lock is held)" in err
    assert sorted(r["id"] for r in _rows(out)) == sorted(map(str, clips))
    with FileLock(f"{out}.lock", timeout=0):  # released by the first, so it can be taken now
        pass


def test_an_input_given_twice_is_predicted_once_and_named(saved_classifier, tmp_path, capsys):
    """Old: `skipped: 2` without naming the row."""
    model, clips = saved_classifier
    out = tmp_path / "p.jsonl"
    with pytest.warns(UserWarning, match=rf"1 input\(s\) given more than once, predicted once: '{clips[0]}' "
                                         r"\(input 1, input 3\)"):
        assert main(["predict", str(model), str(clips[0]), str(clips[1]), str(clips[0]), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["repeated"] == {str(clips[0]): ["input 1", "input 3"]}
    assert summary["predicted"] == 2 and summary["skipped"] == 0 and len(_rows(out)) == 2


def test_a_duplicate_manifest_id_for_another_file_is_refused_naming_both_rows(saved_classifier, tmp_path, capsys):
    """Old: one row was scored against another file's prediction."""
    model, clips = saved_classifier
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,path,label\na,{clips[0]},0\nb,{clips[1]},0\na,{clips[2]},1\n")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(model), str(manifest), "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"id 'a' names two different inputs: {manifest} row 1 ({clips[0]}) and {manifest} row 3 ({clips[2]})" in err
    assert not out.exists() or out.read_text() == ""


def test_a_rerun_whose_id_now_names_another_file_is_refused(saved_classifier, tmp_path, capsys):
    model, clips = saved_classifier
    out = tmp_path / "p.jsonl"
    first, second = tmp_path / "m1.csv", tmp_path / "m2.csv"
    first.write_text(f"id,path,label\na,{clips[0]},0\n")
    second.write_text(f"id,path,label\na,{clips[3]},1\n")
    assert main(["predict", str(model), str(first), "--out", str(out)]) == 0
    assert main(["predict", str(model), str(second), "--out", str(out)]) == 2
    assert f"already holds id 'a' for {clips[0]}, but this input 'a' is {clips[3]}" in capsys.readouterr().err


def test_exit_codes_count_the_failed_inputs(saved_classifier, tmp_path, capsys):
    """Old: exit 0 even when every input failed. Now 1 when some failed, 3 when all did, with the count."""
    model, clips = saved_classifier
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00not a wav")
    silent = tmp_path / "empty.wav"
    soundfile.write(silent, np.zeros(0, dtype=np.float32), 8000)
    some = ["predict", str(model), str(clips[0]), str(bad), "--out", str(tmp_path / "some.jsonl")]
    assert main(some) == 1
    assert f"1 of 2 input(s) failed; their rows in {tmp_path / 'some.jsonl'} give the reason" in capsys.readouterr().err
    assert main(some) == 1  # the rerun skips both, but the failure is still in --out
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    assert main(["predict", str(model), str(bad), str(silent), "--out", str(tmp_path / "all.jsonl")]) == 3
    assert "2 of 2 input(s) failed" in capsys.readouterr().err
    assert main(["predict", str(model), str(clips[0]), "--out", str(tmp_path / "ok.jsonl")]) == 0


def test_a_waveform_needs_its_sample_rate(saved_classifier):
    """Old: an array was read as 16 kHz, so an 8 kHz clip got a confident wrong answer. Now it needs
    sample_rate=, and with it the answer is the file's."""
    import speechfuse as sf

    model_dir, clips = saved_classifier
    model = sf.load_model(model_dir)
    wav, rate = soundfile.read(clips[0], dtype="float32")
    assert rate == 8000
    for given in (wav, torch.from_numpy(wav)):
        with pytest.raises(ConfigError, match=r"a waveform input needs its sample rate: pass sample_rate="):
            model.predict(given)
    from_file = model.predict(str(clips[0]))[0].probabilities
    from_array = model.predict(wav, sample_rate=8000)[0].probabilities
    assert from_array == pytest.approx(from_file, abs=1e-5)


def test_a_read_only_out_folder_is_one_line(saved_classifier, tmp_path, capsys):
    model, clips = saved_classifier
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        assert main(["predict", str(model), str(clips[0]), "--out", str(folder / "p.jsonl")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"predict --out {folder / 'p.jsonl'}: cannot write" in err and "choose another --out" in err


def test_a_full_disk_is_one_line_and_keeps_the_rows_written(saved_classifier, tmp_path, monkeypatch, capsys):
    """Old: OSError 28, twice chained. Now one line; the batches before stay and a rerun completes."""
    model, clips = saved_classifier
    out = tmp_path / "p.jsonl"
    command = ["predict", str(model), *map(str, clips), "--out", str(out), "--batch-seconds", "0.5"]
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(command) == 2
    err = _one_line(capsys.readouterr().err)
    assert "the disk is full after" in err and "run the same command again to continue" in err
    kept = _rows(out) if out.read_text().endswith("\n") else _rows(out)[:-1]
    assert kept  # the first batch made it
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(command) == 0
    assert sorted(r["id"] for r in _rows(out)) == sorted(map(str, clips))

