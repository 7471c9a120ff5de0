"""Inference: typed predictions on real FSDD clips, bad inputs listed without stopping the run, and a killed
`speechfuse predict` that resumes without duplicates."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from helpers import make_fsdd, run_config, save_tiny_model
from speechfuse.config import config_from_dict
from speechfuse.data import load_manifest, read_audio
from speechfuse.errors import AudioError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A hubert + whisper (30 s limit) digit classifier and a hubert ASR model, saved; plus the corpus."""
    from speechfuse.fusion.model import FusedModel, build_task

    root = tmp_path_factory.mktemp("inference")
    manifests = make_fsdd(root)
    hubert = save_tiny_model("hubert", root / "hubert")
    whisper = save_tiny_model("whisper", root / "whisper")
    train_utts = load_manifest(manifests["train"])
    torch.manual_seed(0)
    cfg = config_from_dict(run_config(manifests, [{"spec": f"hf:{hubert}"}, {"spec": f"hf:{whisper}"}]))
    FusedModel.from_config(cfg, build_task(cfg).fit(train_utts)).save_pretrained(root / "classify")
    cfg = config_from_dict(run_config(manifests, [{"spec": f"hf:{hubert}"}], task="asr",
                                      downstream={"proj_dim": 16, "hidden_size": 16, "num_layers": 1}))
    FusedModel.from_config(cfg, build_task(cfg).fit(train_utts)).save_pretrained(root / "asr")
    return root, manifests


def test_predict_returns_typed_results_in_input_order(saved):
    import speechfuse as sf
    from speechfuse.serving.inference import Classification, Transcription

    root, manifests = saved
    model = sf.load_model(root / "classify")
    utts = load_manifest(manifests["test"])
    paths = [u.path for u in utts]
    wave = read_audio(paths[1], 16000)
    results = model.predict([paths[2], wave, paths[0]], batch_seconds=1.0, sample_rate=16000)
    assert [r.id for r in results] == [paths[2], "waveform-1", paths[0]]
    assert all(isinstance(r, Classification) for r in results)
    for r in results:
        assert set(r.probabilities) == {"0", "1"} and abs(sum(r.probabilities.values()) - 1) < 1e-5
        assert r.label == max(r.probabilities, key=r.probabilities.get)
    # batched with others or alone, from a file or from its waveform: the same answer
    alone = model.predict(paths[1])[0]
    together = model.predict(paths, batch_seconds=10.0)[1]
    for other in (together, results[1]):
        assert other.label == alone.label
        for k in alone.probabilities:
            assert other.probabilities[k] == pytest.approx(alone.probabilities[k], abs=1e-4)

    asr = sf.load_model(root / "asr")
    texts = asr.predict(manifests["test"])
    assert [t.id for t in texts] == [u.id for u in utts]
    assert all(isinstance(t, Transcription) and isinstance(t.text, str) for t in texts)


def write_bad_files(folder: Path) -> dict[str, str]:
    """Bad inputs beside real clips; returns {file name: expected reason fragment}."""
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    soundfile.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    rng = np.random.default_rng(0)
    nan = (rng.standard_normal(4000) * 0.1).astype(np.float32)
    nan[100] = np.nan
    soundfile.write(folder / "nan.wav", nan, 8000, subtype="FLOAT")
    return {"corrupt.wav": "cannot read", "empty.wav": "empty", "nan.wav": "NaN"}


def test_predict_on_a_folder_lists_bad_files_and_predicts_the_rest(saved, tmp_path, capsys):
    import speechfuse as sf
    from speechfuse.cli import main
    from speechfuse.serving.inference import Classification, Failure

    root, manifests = saved
    folder = tmp_path / "audio"
    folder.mkdir()
    good = [Path(u.path) for u in load_manifest(manifests["test"])]
    for p in good:
        shutil.copy(p, folder)
    bad = write_bad_files(folder)

    out = tmp_path / "predictions.jsonl"
    # exit 1: some inputs failed (each reason in --out; exit 0 is for all predicted)
    assert main(["predict", str(root / "classify"), str(folder), "--out", str(out), "--batch-seconds", "2"]) == 1
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {Path(r["id"]).name: r for r in rows}
    assert len(rows) == len(by_name) == len(good) + len(bad)
    for name, reason in bad.items():
        assert reason in by_name[name]["error"], (name, by_name[name])
    for p in good:
        assert by_name[p.name]["label"] in ("0", "1") and "error" not in by_name[p.name]
    assert summary["predicted"] == len(good) and summary["failed"] == len(bad)

    # the Python API: refuses up front, naming the bad files, unless told to skip them
    model = sf.load_model(root / "classify")
    with pytest.raises(AudioError, match="corrupt.wav") as err:
        model.predict(folder)
    assert "empty.wav" in str(err.value) and "skip_bad=True" in str(err.value)
    results = model.predict(folder, skip_bad=True)
    assert sorted(Path(r.id).name for r in results if isinstance(r, Failure)) == sorted(bad)
    assert sum(isinstance(r, Classification) for r in results) == len(good)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from speechfuse.fusion.model import FusedModel

    calls = [0]
    forward = FusedModel.forward

    def dying_forward(self, *args):  # the test's kill switch: SIGKILL when the third batch starts
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, *args)

    FusedModel.forward = dying_forward
    from speechfuse.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_killed_predict_resumes_without_duplicates(saved, tmp_path, capsys):
    from speechfuse.cli import main

    root, manifests = saved
    manifest = manifests["train"]
    n = len(load_manifest(manifest))
    args = ["predict", str(root / "classify"), str(manifest), "--batch-seconds", "1.5", "--device", "cpu"]

    clean = tmp_path / "clean.csv"
    assert main([*args, "--out", str(clean)]) == 0
    clean_summary = json.loads(capsys.readouterr().out)

    out = tmp_path / "resumed.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    before = read_csv(out)
    assert 0 < len(before) < n  # two batches made it to disk before the kill
    with open(out, "a") as f:
        f.write("8_torn_line,/x.wav,0.5,")  # as if the kill had hit mid-write

    assert main([*args, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    after = read_csv(out)
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids)) == n and "8_torn_line" not in ids
    assert after[: len(before)] == before  # nothing written before the kill was lost or rewritten
    assert summary["skipped"] == len(before) and summary["predicted"] == n - len(before)
    clean_rows = {r["id"]: r for r in read_csv(clean)}
    for row in after:
        assert row["prediction"] == clean_rows[row["id"]]["prediction"]
        assert float(row["prob_0"]) == pytest.approx(float(clean_rows[row["id"]]["prob_0"]), abs=1e-4)
    # the manifest has references: metrics over every row, the resumed ones included
    assert summary["scored"] == n and summary["metrics"] == clean_summary["metrics"]
    assert set(summary["metrics"]) == {"accuracy", "macro_f1"}


def test_predict_cli_errors_are_one_line(saved, tmp_path, capsys):
    from speechfuse.cli import main

    root, manifests = saved
    assert main(["predict", str(root / "classify"), str(manifests["test"]), "--out", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".jsonl or .csv" in err and "Traceback" not in err
    assert not (tmp_path / "p.txt").exists()
    assert main(["predict", str(tmp_path / "nowhere"), str(manifests["test"]), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model not found" in err
