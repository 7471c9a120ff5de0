"""Corpus adapters on tiny synthetic copies of the real layouts (IEMOCAP, VoxCeleb1), `speechfuse prepare`,
and malformed protocol files giving errors that name the file and line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechfuse.cli import main
from speechfuse.data.corpora import CorpusError, iemocap_manifests, prepare, voxceleb1_manifests
from speechfuse.data.manifest import Utterance, load_manifest
from speechfuse.data.trials import read_trials
from speechfuse.errors import ConfigError


def wav(path: Path, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(16000 * seconds), dtype=np.float32), 16000)


# -- IEMOCAP -----------------------------------------------------------------------------------------

EMOTIONS = ["neu", "hap", "exc", "sad", "ang", "fru", "xxx"]  # 5 kept (exc -> hap), 2 left out


def make_iemocap(root: Path) -> None:
    """Per session: one improvised dialog, 7 turns (one per emotion above), both speakers."""
    for s in range(1, 6):
        dialog = f"Ses0{s}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i, emo in enumerate(EMOTIONS):
            turn = f"{dialog}_{'FM'[i % 2]}{i:03d}"
            lines += [f"[{i}.5000 - {i + 1}.2500]\t{turn}\t{emo}\t[2.5000, 3.0000, 2.0000]",
                      "C-E2:\tNeutral state;\t()", "A-E3:\tval 3; act 2; dom  2;\t()", ""]
            wav(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{turn}.wav")
        label_dir = root / f"Session{s}" / "dialog" / "EmoEvaluation"
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        (label_dir / "Categorical").mkdir(exist_ok=True)  # the real folder has these sub-folders: ignored


def test_iemocap_folds(tmp_path):
    make_iemocap(tmp_path / "IEMOCAP_full_release")
    folds = iemocap_manifests(tmp_path / "IEMOCAP_full_release", tmp_path / "out")
    assert sorted(folds) == [f"fold{k}" for k in range(1, 6)]
    for k in range(1, 6):
        split = {name: load_manifest(path) for name, path in folds[f"fold{k}"].items()}
        test_sessions = {u.id[:5] for u in split["test"]}
        assert test_sessions == {f"Ses0{k}"}  # leave one session out
        rest = split["train"] + split["dev"]
        assert f"Ses0{k}" not in {u.id[:5] for u in rest} and len(rest) == 4 * 5
        assert len(split["dev"]) == 4  # 20 % of the 20 sentences of the other four sessions
        assert {u.label for u in split["test"]} == {"neu", "hap", "sad", "ang"}
        assert [u.label for u in split["test"]].count("hap") == 2  # hap + exc
        assert {u.speaker for u in split["test"]} == {f"Ses0{k}F", f"Ses0{k}M"}
    # seeded: the same dev split twice
    again = iemocap_manifests(tmp_path / "IEMOCAP_full_release", tmp_path / "again")
    assert [u.id for u in load_manifest(again["fold3"]["dev"])] == [u.id for u in load_manifest(folds["fold3"]["dev"])]


def test_iemocap_malformed_label_line_names_file_and_line(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root)
    label = root / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    lines = label.read_text().splitlines()
    lines[6] = "[6.5 - oops]\tSes02F_impro01_M001\tneu\t[2.5, 3.0, 2.0]"  # file line 7
    label.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError) as err:
        iemocap_manifests(root, tmp_path / "out")
    assert f"{label} line 7" in str(err.value)


def test_iemocap_missing_wav_and_missing_session(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root)
    (root / "Session4" / "sentences" / "wav" / "Ses04F_impro01" / "Ses04F_impro01_M003.wav").unlink()
    with pytest.raises(CorpusError, match="1 labelled sentence.*Ses04F_impro01_M003.wav"):
        iemocap_manifests(root, tmp_path / "out")
    with pytest.raises(CorpusError, match="Session1/dialog/EmoEvaluation not found"):
        iemocap_manifests(tmp_path / "empty", tmp_path / "out")


# -- VoxCeleb1 ---------------------------------------------------------------------------------------

def make_voxceleb1(root: Path, layout: str = "zips") -> list[str]:
    """6 dev speakers x 2 videos x 2 clips, 2 test speakers the same; iden_split, veri_test2 (4 trials) and
    voxceleb1_test_v2 (5)."""
    names = [f"id1{s:04d}/vid{v}/0000{c}.wav" for s in range(1, 9) for v in range(2) for c in range(1, 3)]
    for n in names:
        test = n.startswith(("id10007", "id10008"))
        base = {"zips": f"vox1_{'test' if test else 'dev'}_wav/wav", "merged": "wav"}[layout]
        wav(root / base / n)
    iden = [f"{3 if n.endswith('00002.wav') and 'vid1' in n else 2 if n.endswith('00002.wav') else 1} {n}"
            for n in names]
    (root / "iden_split.txt").write_text("\n".join(iden) + "\n")
    cleaned = ("1 id10007/vid0/00001.wav id10007/vid1/00002.wav\n"
               "0 id10007/vid0/00001.wav id10008/vid0/00002.wav\n"
               "1 id10008/vid0/00001.wav id10008/vid1/00001.wav\n"
               "0 id10008/vid1/00001.wav id10007/vid0/00002.wav\n")
    (root / "veri_test2.txt").write_text(cleaned)
    # SUPERB's list: the original trials, of which the cleaned list drops some (here one, and it adds none)
    (root / "voxceleb1_test_v2.txt").write_text(cleaned + "1 id10007/vid1/00001.wav id10007/vid0/00002.wav\n")
    return names


@pytest.mark.parametrize("layout", ["zips", "merged"])
def test_voxceleb1_identification_and_verification(tmp_path, layout):
    names = make_voxceleb1(tmp_path / "vox1", layout)
    out = voxceleb1_manifests(tmp_path / "vox1", tmp_path / "out", dev_speakers=2, trials="veri_test2")
    iden = {s: load_manifest(out["identification"][s]) for s in ("train", "dev", "test")}
    assert sum(len(v) for v in iden.values()) == len(names)
    assert all(u.id.endswith("00001.wav") for u in iden["train"]) and len(iden["test"]) == 8
    assert all(u.label == u.id.split("/")[0] and Path(u.path).is_file() for v in iden.values() for u in v)

    ver = out["verification"]
    test = load_manifest(ver["test"])
    assert {u.speaker for u in test} == {"id10007", "id10008"} and len(test) == 6  # the 6 names in the trials
    train, dev = load_manifest(ver["train"]), load_manifest(ver["dev"])
    assert len({u.speaker for u in dev}) == 2 and len({u.speaker for u in train}) == 4
    assert not {u.speaker for u in train} & ({u.speaker for u in dev} | {"id10007", "id10008"})
    assert [(t.label, t.enrol, t.test) for t in read_trials(ver["test_trials"])] == \
        [(t.label, t.enrol, t.test) for t in read_trials(tmp_path / "vox1" / "veri_test2.txt")]
    dev_trials = read_trials(ver["dev_trials"])
    dev_ids = {u.id for u in dev}
    assert sum(t.label for t in dev_trials) == 2 and all({t.enrol, t.test} <= dev_ids for t in dev_trials)


def test_voxceleb1_malformed_split_line_names_file_and_line(tmp_path):
    root = tmp_path / "vox1"
    make_voxceleb1(root)
    lines = (root / "iden_split.txt").read_text().splitlines()
    lines[4] = "4 id10002/vid0/00001.wav"
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"iden_split.txt line 5: expected 'SET SPEAKER/VIDEO/CLIP.wav'"):
        voxceleb1_manifests(root, tmp_path / "out", dev_speakers=2)


def test_voxceleb1_malformed_trial_line_and_missing_wav(tmp_path):
    root = tmp_path / "vox1"
    make_voxceleb1(root)
    with open(root / "veri_test2.txt", "a") as f:
        f.write("1 id10007/vid0/00001.wav\n")
    with pytest.raises(ConfigError, match=r"veri_test2.txt line 5: expected 3 fields"):
        voxceleb1_manifests(root, tmp_path / "out", dev_speakers=2, trials="veri_test2")
    make_voxceleb1(root)
    (root / "vox1_dev_wav" / "wav" / "id10003" / "vid1" / "00002.wav").unlink()
    with pytest.raises(CorpusError, match=r"1 listed file.*id10003/vid1/00002.wav \(iden_split.txt line 12\)"):
        voxceleb1_manifests(root, tmp_path / "out", dev_speakers=2)


def test_voxceleb1_defaults_are_superbs_trials_speakers_and_test_chosen_checkpoints(tmp_path):
    """By default: voxceleb1_test_v2 (5 trials here, 6 names), every speaker outside it trains (6 here; 1,211
    in VoxCeleb1), and dev is the test set with its trials (SUPERB picks the best test EER)."""
    make_voxceleb1(tmp_path / "vox1")
    ver = voxceleb1_manifests(tmp_path / "vox1", tmp_path / "out")["verification"]
    assert len(read_trials(ver["test_trials"])) == 5 and sum(t.label for t in read_trials(ver["test_trials"])) == 3
    test = load_manifest(ver["test"])
    assert len(test) == 7  # the distinct names of the five trials
    assert len({u.speaker for u in load_manifest(ver["train"])}) == 6
    assert ver["dev"] == ver["test"] and ver["dev_trials"] == ver["test_trials"]  # no dev set: chosen on test
    assert not (tmp_path / "out" / "verification" / "dev.csv").exists()
    cleaned = voxceleb1_manifests(tmp_path / "vox1", tmp_path / "clean", trials="veri_test2")["verification"]
    assert len(read_trials(cleaned["test_trials"])) == 4 and len(load_manifest(cleaned["test"])) == 6
    with pytest.raises(CorpusError, match="trials must be one of voxceleb1_test_v2, veri_test2"):
        voxceleb1_manifests(tmp_path / "vox1", tmp_path / "bad", trials="veri_test")


def test_s3prl_sox_chain_trims_silence_lowers_gain_and_drops_short_training_clips(tmp_path):
    """gain -3 dB and `silence 1 0.1 0.1% -1 0.1 0.1%` (libsox through cysox) on a 1 s silence + 2.5 s tone +
    1 s silence clip: the silences go, the tone stays, its peak falls by 3 dB; a 1.5 s tone clip is not over
    2 s after the chain, so the training filter drops it; a test clip is never dropped."""
    from speechfuse.data import read_audio
    from speechfuse.data.sox_chain import apply_s3prl_chain

    rate = 16000
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(int(2.5 * rate)) / rate).astype(np.float32)
    silent = np.zeros(rate, dtype=np.float32)
    sf.write(tmp_path / "long.wav", np.concatenate([silent, tone, silent]), rate, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", tone[:int(1.5 * rate)], rate, subtype="FLOAT")
    utts = [Utterance("spk/v/long.wav", str(tmp_path / "long.wav")), Utterance("spk/v/short.wav", str(tmp_path / "short.wav"))]
    kept = apply_s3prl_chain(utts, tmp_path / "out", min_seconds=2.0)
    assert [u.id for u in kept] == ["spk/v/long.wav"]
    processed = read_audio(kept[0].path, rate).numpy()
    assert 2.5 <= len(processed) / rate < 2.5 + 0.25 and kept[0].duration == pytest.approx(len(processed) / rate)
    assert np.abs(processed).max() == pytest.approx(0.5 * 10 ** (-3 / 20), rel=1e-3)
    assert np.abs(processed[:int(0.05 * rate)]).max() > 0.1  # starts on the tone, not on the second of silence
    assert [u.id for u in apply_s3prl_chain(utts, tmp_path / "out")] == ["spk/v/long.wav", "spk/v/short.wav"]


# -- the CLI -----------------------------------------------------------------------------------------

def test_prepare_cli(tmp_path, capsys):
    make_iemocap(tmp_path / "iemocap")
    assert main(["prepare", "iemocap", str(tmp_path / "iemocap"), "--out", str(tmp_path / "er")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["fold5"]["test"]).is_file()
    make_voxceleb1(tmp_path / "vox1")
    assert main(["prepare", "voxceleb1", str(tmp_path / "vox1"), "--out", str(tmp_path / "sv"),
                 "--trials", "veri_test2", "--dev-speakers", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)["verification"]
    assert len(read_trials(printed["test_trials"])) == 4 and len({u.speaker for u in load_manifest(printed["dev"])}) == 2
    assert main(["prepare", "iemocap", str(tmp_path / "iemocap"), "--out", str(tmp_path / "er2"),
                 "--trials", "veri_test2"]) == 2
    assert "prepare iemocap: takes no options" in capsys.readouterr().err
    assert main(["prepare", "voxceleb1", str(tmp_path / "nothing"), "--out", str(tmp_path / "sv")]) == 2
    err = capsys.readouterr().err
    assert "folder not found" in err and "Traceback" not in err
    with pytest.raises(CorpusError, match="unknown corpus 'timit'"):
        prepare("timit", tmp_path, tmp_path / "x")
