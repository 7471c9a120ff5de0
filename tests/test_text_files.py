"""Text inputs in another encoding (issue 16, item 7): every manifest, split file, transcript and trial list is
decoded by speechfuse.data.textfile, so a Latin-1 byte gives an error naming the file and the line (old: a
UnicodeDecodeError naming neither)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import FSDD
from speechfuse.data.textfile import TextEncodingError

LATIN1 = "café".encode("latin-1")  # b"caf\xe9": not UTF-8


def _write(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _expect(path: Path, line: int, what: str):
    return pytest.raises(TextEncodingError, match=rf"^{what} {path} line {line}: byte 0xe9 at column \d+ is not "
                                                  r"valid UTF-8; save the file as UTF-8")


def test_csv_and_jsonl_manifests(tmp_path):
    from speechfuse.data import load_manifest

    clip = FSDD / "0_george_0.flac"
    csv_path = _write(tmp_path / "m.csv", [b"id,path,text", f"a,{clip},one".encode(), b"b,%s,%s" % (bytes(clip), LATIN1)])
    with _expect(csv_path, 3, "manifest"):
        load_manifest(csv_path)
    jsonl = _write(tmp_path / "m.jsonl", [b'{"id": "a", "path": "%s", "text": "%s"}' % (bytes(clip), LATIN1)])
    with _expect(jsonl, 1, "manifest"):
        load_manifest(jsonl)
    # a UTF-8 file with a spreadsheet's BOM still reads
    good = tmp_path / "bom.csv"
    good.write_bytes("\ufeffid,path,text\na,{},café\n".format(clip).encode("utf-8"))
    assert load_manifest(good)[0].text == "café"


def test_trial_lists(tmp_path):
    from speechfuse.data.trials import read_trials

    path = _write(tmp_path / "veri_test2.txt", [b"1 a/x/1.wav a/y/2.wav", b"0 a/x/1.wav b/z/%s.wav" % LATIN1])
    with _expect(path, 2, "trial list"):
        read_trials(path)


def test_voxceleb_split_file_and_mlsuperb_transcript(tmp_path):
    from speechfuse.data.corpora import read_iden_split, read_mlsuperb_transcript

    split = _write(tmp_path / "iden_split.txt", [b"1 id10001/abc/00001.wav", b"3 id10001/%s/00002.wav" % LATIN1])
    with _expect(split, 2, "VoxCeleb1 split file"):
        read_iden_split(split)
    transcript = _write(tmp_path / "transcript_10min_train.txt", [b"utt1 A hello", b"utt2 A %s" % LATIN1])
    with _expect(transcript, 2, "ML-SUPERB transcript"):
        read_mlsuperb_transcript(transcript)


def test_librispeech_transcript(tmp_path):
    from speechfuse.data import librispeech_manifest

    chapter = tmp_path / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for n in (0, 1):
        shutil.copy(FSDD / f"0_george_{n}.flac", chapter / f"84-121123-000{n}.flac")
    trans = _write(chapter / "84-121123.trans.txt", [b"84-121123-0000 ZERO", b"84-121123-0001 %s" % LATIN1.upper()])
    with _expect(trans, 2, "LibriSpeech transcript"):
        librispeech_manifest(tmp_path / "dev-clean", tmp_path / "out.csv")


def test_the_cli_prints_it_in_one_line(saved_classifier, tmp_path, capsys):
    """`speechfuse predict` on a Latin-1 manifest: exit 2, one line naming the file and line."""
    from speechfuse.cli import main

    model, clips = saved_classifier
    manifest = _write(tmp_path / "m.csv", [b"id,path,label", b"%s,%s,0" % (LATIN1, bytes(clips[0]))])
    assert main(["predict", str(model), str(manifest), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert err == [f"speechfuse predict: error: manifest {manifest} line 2: byte 0xe9 at column 4 is not valid "
                   "UTF-8; save the file as UTF-8 (for example `iconv -f latin1 -t utf-8 OLD > NEW` for a Latin-1 "
                   "file)"]
