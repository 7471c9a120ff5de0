"""ML-SUPERB adapter on a tiny synthetic copy of the released layout (<DATASET>/<LANG>/wav + transcript files)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechfuse.cli import main
from speechfuse.data.corpora import MLSUPERB_FEW_SHOT, CorpusError, mlsuperb_manifests
from speechfuse.data.manifest import load_manifest

SPLIT_FILES = {"train10": "transcript_10min_train.txt", "train1h": "transcript_1h_train.txt",
               "dev": "transcript_10min_dev.txt", "test": "transcript_10min_test.txt"}


def make_folder(root: Path, dataset: str, lang: str, prefix: str, rows: dict[str, list[tuple[str, str, float]]]):
    folder = root / dataset / lang
    (folder / "wav").mkdir(parents=True)
    for key, file_name in SPLIT_FILES.items():
        lines = []
        for utt, text, seconds in rows.get(key, []):
            utt_id = f"{prefix}_{lang}_{utt}"
            sf.write(str(folder / "wav" / f"{utt_id}.wav"), np.zeros(int(8000 * seconds), np.float32), 8000)
            lines.append(f"{utt_id}\tA\t{text}")
        (folder / file_name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_mlsuperb(root: Path) -> None:
    make_folder(root, "mls", "eng", "mls", {
        "train10": [("000001", "hello world", 1.0), ("000002", "far too long", 21.0)],  # > 20 s: dropped
        "train1h": [("000001", "hello world", 1.0), ("000003", "a [noise] second one [laughter]", 1.0), ("000004", "third", 0.5)],
        "dev": [("000010", "dev line", 0.5)], "test": [("000020", "test line", 0.5)]})
    make_folder(root, "fleurs", "eng", "fleurs", {
        "train10": [("000001", "fleurs english", 0.5)], "train1h": [("000001", "fleurs english", 0.5)],
        "dev": [("000010", "fleurs dev", 0.5)], "test": [("000020", "fleurs test", 0.5)]})
    make_folder(root, "fleurs", "cmn", "fleurs", {
        "train10": [("000001", "你好世界", 0.5)], "train1h": [("000001", "你好世界", 0.5)],
        "dev": [("000010", "开发", 0.5)], "test": [("000020", "测试", 0.5)]})


def ids(path) -> list[str]:
    return sorted(u.id for u in load_manifest(path))


def test_mlsuperb_multilingual_and_monolingual(tmp_path):
    root = tmp_path / "ml_superb"
    make_mlsuperb(root)
    test_file = root / "mls" / "eng" / "transcript_10min_test.txt"  # a line of tags only: left out, with a warning
    test_file.write_text(test_file.read_text() + "mls_eng_000021\tA\t[noise]\n", encoding="utf-8")
    sf.write(str(root / "mls" / "eng" / "wav" / "mls_eng_000021.wav"), np.zeros(4000, np.float32), 8000)
    with pytest.warns(UserWarning, match=r"transcript_10min_test.txt: 1 line\(s\) hold only \[...\] tags .*\[2\]"):
        out = mlsuperb_manifests(root, tmp_path / "out")
    assert sorted(out) == ["monolingual_10min", "monolingual_1h", "multilingual_10min", "multilingual_1h"]

    multi = {split: load_manifest(p) for split, p in out["multilingual_10min"].items()}
    assert sorted(u.id for u in multi["train"]) == ["fleurs_cmn_000001", "fleurs_eng_000001", "mls_eng_000001"]
    assert {u.id: u.language for u in multi["train"]} == {"fleurs_cmn_000001": "cmn", "fleurs_eng_000001": "eng",
                                                         "mls_eng_000001": "eng"}
    assert {u.id: u.text for u in multi["train"]}["fleurs_cmn_000001"] == "你好世界"
    assert len(ids(out["multilingual_1h"]["train"])) == 5  # 3 mls + 1 fleurs eng + 1 fleurs cmn
    # dev and test are the 10-minute files for both durations
    for duration in ("10min", "1h"):
        assert ids(out[f"multilingual_{duration}"]["dev"]) == ["fleurs_cmn_000010", "fleurs_eng_000010",
                                                               "mls_eng_000010"]
        assert len(ids(out[f"multilingual_{duration}"]["test"])) == 3

    # monolingual: only the pairs present (eng1 = eng from mls, cmn = cmn from fleurs); eng2 (nchlt) absent
    assert sorted(out["monolingual_10min"]) == ["cmn", "eng1"]
    eng1 = out["monolingual_1h"]["eng1"]
    assert ids(eng1["train"]) == ["mls_eng_000001", "mls_eng_000003", "mls_eng_000004"]
    # ESPnet's single_lang_data_prep.py: tags kept as words, and no 20 s limit on training rows
    assert {u.id: u.text for u in load_manifest(eng1["train"])}["mls_eng_000003"] == "a [noise] second one [laughter]"
    assert {u.id: u.text for u in multi["train"] + load_manifest(out["multilingual_1h"]["train"])}.get(
        "mls_eng_000003") == "a second one"  # the multilingual sets remove them
    assert ids(out["monolingual_10min"]["eng1"]["train"]) == ["mls_eng_000001", "mls_eng_000002"]
    assert ids(eng1["dev"]) == ["mls_eng_000010"]  # dev from the training dataset only
    # test from every dataset of the language; the tags-only line is a word there
    assert ids(eng1["test"]) == ["fleurs_eng_000020", "mls_eng_000020", "mls_eng_000021"]
    assert {u.language for u in load_manifest(eng1["test"])} == {"eng"}


def test_mlsuperb_malformed_line_names_file_and_line(tmp_path):
    root = tmp_path / "ml_superb"
    make_mlsuperb(root)
    transcript = root / "fleurs" / "eng" / "transcript_10min_dev.txt"
    transcript.write_text(transcript.read_text() + "fleurs_eng_000011\n", encoding="utf-8")  # line 2: no text
    with pytest.raises(CorpusError) as err:
        mlsuperb_manifests(root, tmp_path / "out")
    assert f"{transcript} line 2" in str(err.value) and "UTT FIELD TRANSCRIPT" in str(err.value)


def test_mlsuperb_missing_wav_and_wrong_root(tmp_path, capsys):
    root = tmp_path / "ml_superb"
    make_mlsuperb(root)
    (root / "mls" / "eng" / "wav" / "mls_eng_000003.wav").unlink()
    with pytest.raises(CorpusError, match=r"transcript_1h_train.txt line 2: .*mls_eng_000003.wav not found"):
        mlsuperb_manifests(root, tmp_path / "out")
    assert main(["prepare", "mlsuperb", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no <DATASET>/<LANG>/wav folders" in capsys.readouterr().err


def test_prepare_mlsuperb_cli(tmp_path, capsys):
    make_mlsuperb(tmp_path / "ml_superb")
    assert main(["prepare", "mlsuperb", str(tmp_path / "ml_superb"), "--out", str(tmp_path / "out")]) == 0
    written = json.loads(capsys.readouterr().out)
    assert Path(written["monolingual_10min"]["eng1"]["train"]).is_file()
    assert Path(written["multilingual_1h"]["test"]).is_file()


def test_few_shot_languages_keep_only_espnets_five_training_rows(tmp_path):
    """ESPnet data_prep.py: a reserved language (here bos) trains on its five listed utterances only."""
    root = tmp_path / "ml_superb"
    make_mlsuperb(root)
    listed = [u.split("_")[-1] for u in MLSUPERB_FEW_SHOT["bos"]]  # 000067, 000078, 000080, 000088, 000090
    extra = ["000001", "000068", "000100"]  # not on ESPnet's list: dropped, although they come first in the file
    train = [(utt, f"bosanski {utt}", 0.5) for utt in sorted(extra + listed)]
    make_folder(root, "fleurs", "bos", "fleurs", {"train10": train, "train1h": train,
                                                  "dev": [("000010", "dev", 0.5)], "test": [("000020", "test", 0.5)]})
    out = mlsuperb_manifests(root, tmp_path / "out")
    for duration in ("10min", "1h"):
        rows = load_manifest(out[f"multilingual_{duration}"]["train"])
        assert sorted(u.id for u in rows if u.language == "bos") == sorted(MLSUPERB_FEW_SHOT["bos"])
        assert len([u for u in rows if u.language != "bos"]) == (3 if duration == "10min" else 5)  # unchanged
        assert [u.id for u in load_manifest(out[f"multilingual_{duration}"]["dev"]) if u.language == "bos"] == \
            ["fleurs_bos_000010"]  # dev and test keep every row of a few-shot language

    # the list is a parameter: {} keeps every row; another list restricts another language, warning on absent ids
    out = mlsuperb_manifests(root, tmp_path / "all", few_shot={})
    assert len([u for u in load_manifest(out["multilingual_10min"]["train"]) if u.language == "bos"]) == 8
    with pytest.warns(UserWarning, match=r"few-shot language 'eng' keeps 1 of its 2 .*\['mls_eng_000002'\]"):
        out = mlsuperb_manifests(root, tmp_path / "eng", few_shot={"eng": ("mls_eng_000001", "mls_eng_000002")})
    assert ids(out["multilingual_10min"]["train"]) == ["fleurs_bos_000001", "fleurs_bos_000067", "fleurs_bos_000068",
                                                      "fleurs_bos_000078", "fleurs_bos_000080", "fleurs_bos_000088",
                                                      "fleurs_bos_000090", "fleurs_bos_000100", "fleurs_cmn_000001",
                                                      "mls_eng_000001"]
    # monolingual is never restricted (and keeps the 21 s row: no 20 s limit there)
    assert ids(out["monolingual_10min"]["eng1"]["train"]) == ["mls_eng_000001", "mls_eng_000002"]
    assert len(ids(out["monolingual_1h"]["eng1"]["train"])) == 3
