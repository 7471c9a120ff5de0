"""`speechfuse table`: finished sweeps (written by the real sweep code with a stand-in trainer) merged into the
paper's table; IEMOCAP folds and ML-SUPERB mono languages averaged with seeds averaged first."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from helpers import A, AB, base, folds, sweep
from speechfuse.cli import main
from speechfuse.config import config_from_dict, config_to_yaml
from speechfuse.experiments.sweep import run_sweep
from speechfuse.experiments.table import TableError, paper_table



def key(cfg) -> tuple[int, str]:
    return len(cfg.upstreams), cfg.interface.name


def test_table_merges_sweeps_into_the_paper_layout(tmp_path):
    wer = {(1, "weighted_sum"): 0.08, (1, "hconv"): 0.07, (2, "weighted_sum"): 0.06, (2, "hconv"): 0.05}
    ls = sweep(tmp_path, "ls", "asr", {"upstreams": [A, AB], "interface.name": ["weighted_sum", "hconv"],
                                       "data": folds(tmp_path, ["ls"], "librispeech")},
               lambda cfg: {"wer": wer[key(cfg)]})
    # IEMOCAP: folds 1-2 with two seeds in one sweep, fold 3 with one seed in another (AB, hconv only)
    acc = {("fold1", 0): 0.60, ("fold1", 1): 0.62, ("fold2", 0): 0.70, ("fold2", 1): 0.70, ("fold3", 0): 0.50}

    def accuracy(cfg):
        return {"accuracy": acc[(Path(cfg.data.train).parent.name, cfg.train.seed)]}

    er12 = sweep(tmp_path, "er12", "classify", {"upstreams": [AB], "data": folds(tmp_path, ["fold1", "fold2"], "iemocap")},
                 accuracy, seeds=[0, 1])
    er3 = sweep(tmp_path, "er3", "classify", {"upstreams": [AB], "data": folds(tmp_path, ["fold3"], "iemocap")},
                accuracy)
    mono_cer = {"eng1": 0.20, "cmn": 0.40}
    mono = sweep(tmp_path, "mono", "multilingual_asr", {"upstreams": [AB], "data": folds(tmp_path, ["eng1", "cmn"], "mlsuperb")},
                 lambda cfg: {"cer_macro": 0.99, f"cer_{Path(cfg.data.train).parent.name[:3]}":
                              mono_cer[Path(cfg.data.train).parent.name]})
    multi = sweep(tmp_path, "multi", "multilingual_asr", {"upstreams": [AB], "data": folds(tmp_path, ["ml"], "mlsuperb")},  # no few-shot languages
                  lambda cfg: {"cer_macro": 0.35, "cer": 0.30, "cer_eng": 0.2, "cer_cmn": 0.5})
    vox = sweep(tmp_path, "vox", "verify", {"upstreams": [A, AB], "data": folds(tmp_path, ["vox1"], "voxceleb1")},
                lambda cfg: {"eer": 0.04 / len(cfg.upstreams)})

    out = tmp_path / "table.md"
    assert main(["table", str(ls), str(er12), str(er3), str(mono), str(multi), str(vox), "--out", str(out)]) == 0
    with open(out.with_suffix(".csv"), newline="") as f:
        cells = {(r["upstreams"], r["interface"], r["column"]): r for r in csv.DictReader(f)}
    ab = "whisper-tiny.en+resemblyzer"
    assert float(cells[(ab, "hconv", "IEMOCAP accuracy")]["value"]) == pytest.approx((0.61 + 0.70 + 0.50) / 3)
    assert cells[(ab, "hconv", "IEMOCAP accuracy")]["data"] == "3" and cells[(ab, "hconv", "IEMOCAP accuracy")]["runs"] == "5"
    assert float(cells[(ab, "hconv", "ML-SUPERB mono CER")]["value"]) == pytest.approx(0.30)
    assert float(cells[(ab, "hconv", "ML-SUPERB multi CER")]["value"]) == pytest.approx(0.30)
    assert float(cells[("whisper-tiny.en", "weighted_sum", "LibriSpeech WER")]["value"]) == pytest.approx(0.08)
    assert float(cells[("whisper-tiny.en", "hconv", "VoxCeleb1 EER")]["value"]) == pytest.approx(0.04)

    lines = out.read_text().splitlines()
    assert lines[0] == ("| upstreams | interface | LibriSpeech WER (%) | ML-SUPERB mono CER (%) | ML-SUPERB multi CER (%) "
                        "| ML-SUPERB few-shot CER (%) | VoxCeleb1 EER (%) | IEMOCAP accuracy (%) |")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")[2:]]
            for line in lines[2:6]}
    assert rows[(ab, "hconv")] == ["5.00", "30.00", "30.00", "–", "2.00", "60.33"]
    assert rows[("whisper-tiny.en", "weighted_sum")] == ["8.00", "–", "–", "–", "–", "–"]
    assert rows[("whisper-tiny.en", "hconv")] == ["7.00", "–", "–", "–", "4.00", "–"]
    text = out.read_text()
    assert "- ML-SUPERB mono CER: per run its language's pooled test CER" in text
    assert "- ML-SUPERB multi CER: test CER pooled over the utterances of the normal languages" in text


def test_table_marks_cells_with_fewer_folds(tmp_path):
    acc = {"fold1": 0.5, "fold2": 0.7}
    full = sweep(tmp_path, "full", "classify", {"interface.name": ["hconv"],
                                                "data": folds(tmp_path, ["fold1", "fold2"], "iemocap")},
                 lambda cfg: {"accuracy": acc[Path(cfg.data.train).parent.name]})
    part = sweep(tmp_path, "part", "classify", {"interface.name": ["weighted_sum"],
                                                "data": folds(tmp_path, ["fold1"], "iemocap")},
                 lambda cfg: {"accuracy": acc[Path(cfg.data.train).parent.name]})
    rows = paper_table([full, part], tmp_path / "t.md")
    by_interface = {r["interface"]: r["IEMOCAP accuracy (%)"] for r in rows}
    assert by_interface == {"hconv": "60.00", "weighted_sum": "50.00 (1/2)"}


def test_table_errors_name_the_file(tmp_path, capsys):
    assert main(["table", str(tmp_path / "nothing"), "--out", str(tmp_path / "t.md")]) == 2
    assert "results.csv not found" in capsys.readouterr().err
    assert main(["table", str(tmp_path), "--out", str(tmp_path / "t.csv")]) == 2
    assert "give e.g. table.md" in capsys.readouterr().err
    vox = sweep(tmp_path, "vox", "verify", {"interface.name": ["hconv"]}, lambda cfg: {"accuracy": 0.9})
    with pytest.raises(TableError, match=r"results.csv line 2: run 'hconv' has no test_eer"):
        paper_table([vox], tmp_path / "t.md")
    (vox / "runs" / "hconv" / "config.yaml").unlink()
    with pytest.raises(TableError, match=r"line 2: cannot read the run's config .*config.yaml"):
        paper_table([vox], tmp_path / "t.md")


def test_data_of_no_paper_corpus_gets_a_column_named_after_task_and_data(tmp_path):
    """A classify sweep on FSDD speakers, or on a manifest that records no corpus, never fills a paper column."""
    fsdd = sweep(tmp_path, "fsdd", "classify", {"interface.name": ["hconv"], "data": folds(tmp_path, ["spk"], "fsdd"),
                                                "data.target": ["speaker"]},
                 lambda cfg: {"accuracy": 0.9883})
    asr = sweep(tmp_path, "own", "asr", {"interface.name": ["hconv"], "data": folds(tmp_path, ["mine"])},
                lambda cfg: {"wer": 0.25})
    rows = paper_table([fsdd, asr], tmp_path / "t.md")
    (row,) = rows
    assert row["classify accuracy on fsdd_speaker (%)"] == "98.83"
    assert row["asr wer on mine (%)"] == "25.00"
    assert row["IEMOCAP accuracy (%)"] == "–" and row["LibriSpeech WER (%)"] == "–"
    header = (tmp_path / "t.md").read_text().splitlines()[0]
    assert "IEMOCAP accuracy (%) | classify accuracy on fsdd_speaker (%) | asr wer on mine (%)" in header


def test_mono_column_averages_datasets_within_a_language_first(tmp_path):
    """ESPnet's mono_superb_score.py: eng1-3 averaged into eng, fra1-2 into fra, then the languages. A plain
    mean over the 6 pairs would give (0.1 + 0.2 + 0.3 + 0.4 + 0.6 + 0.5) / 6 = 0.35."""
    cer = {"eng1": 0.1, "eng2": 0.2, "eng3": 0.3, "fra1": 0.4, "fra2": 0.6, "swa": 0.5}
    mono = sweep(tmp_path, "mono", "multilingual_asr", {"data": folds(tmp_path, list(cer), "mlsuperb")},
                 lambda cfg: {"cer_macro": 0.99, f"cer_{Path(cfg.data.train).parent.name[:3]}":
                              cer[Path(cfg.data.train).parent.name]}, seeds=[0, 1])
    paper_table([mono], tmp_path / "t.md")
    with open(tmp_path / "t.csv", newline="") as f:
        (cell,) = list(csv.DictReader(f))
    assert float(cell["value"]) == pytest.approx((0.2 + 0.5 + 0.5) / 3)  # eng 0.2, fra 0.5, swa 0.5
    assert cell["data"] == "6" and cell["runs"] == "12"


def test_mono_column_takes_the_wer_of_runs_trained_on_word_tokens(tmp_path):
    """cmn and jpn: ESPnet trains them on word tokens and scores them by WER."""
    metrics = {"eng1": {"cer_eng": 0.10, "wer_eng": 0.30}, "cmn": {"cer_cmn": 0.20, "wer_cmn": 0.60}}

    def train_of(cfg):
        return Path(cfg.data.train).parent.name

    chars = sweep(tmp_path, "chars", "multilingual_asr", {"data": folds(tmp_path, ["eng1"], "mlsuperb")},
                  lambda cfg: metrics[train_of(cfg)])
    words_base = base("multilingual_asr")
    words_base.downstream = {**dict(words_base.downstream or {}), "token_type": "word"}
    words = tmp_path / "words"

    def fake_train(cfg, run_dir):
        (Path(run_dir) / "config.yaml").write_text(config_to_yaml(cfg))
        return {"dev": {}, "test": metrics[train_of(cfg)]}

    run_sweep(words_base, {"data": folds(tmp_path, ["cmn"], "mlsuperb")}, words, train_fn=fake_train, progress=False, plots=False)
    paper_table([chars, words], tmp_path / "t.md")
    with open(tmp_path / "t.csv", newline="") as f:
        (cell,) = list(csv.DictReader(f))
    assert float(cell["value"]) == pytest.approx((0.10 + 0.60) / 2)


def test_multi_columns_are_pooled_normal_and_few_shot_cers(tmp_path):
    multi_base = base("multilingual_asr")
    multi_base.downstream = {**dict(multi_base.downstream or {}), "few_shot_languages": ["lit", "dan"]}
    out = tmp_path / "multi"

    def fake_train(cfg, run_dir):
        (Path(run_dir) / "config.yaml").write_text(config_to_yaml(cfg))
        return {"dev": {}, "test": {"cer_macro": 0.4, "cer": 0.2, "cer_normal": 0.138, "cer_few_shot": 0.5,
                                    "cer_eng": 0.1, "cer_lit": 0.5}}

    run_sweep(multi_base, {"interface.name": ["hconv"], "data": folds(tmp_path, ["ml"], "mlsuperb")}, out, train_fn=fake_train, progress=False, plots=False)
    rows = paper_table([out], tmp_path / "t.md")
    assert rows[0]["ML-SUPERB multi CER (%)"] == "13.80" and rows[0]["ML-SUPERB few-shot CER (%)"] == "50.00"


def test_table_marks_cells_whose_checkpoint_was_chosen_on_test(tmp_path):
    """SUPERB's VoxCeleb1 rule (dev = test: the best test EER over checkpoints) is labelled in the cell and the note;
    a run with a held-out dev is not."""
    (vox,) = folds(tmp_path, ["vox"], "voxceleb1")
    on_test = config_from_dict({"task": "verify", "data": {"train": f"{vox}/train.csv", "dev": f"{vox}/test.csv",
                                                            "test": f"{vox}/test.csv", "target": "speaker"},
                                "upstreams": [{"spec": "whisper-tiny.en"}], "interface": {"name": "hconv"}}, ".", "test")

    def fake_train(cfg, run_dir):
        (Path(run_dir) / "config.yaml").write_text(config_to_yaml(cfg))
        return {"dev": {}, "test": {"eer": 0.05}}

    superb = tmp_path / "superb"
    run_sweep(on_test, {"upstreams": [A]}, superb, train_fn=fake_train, progress=False, plots=False)
    held_out = sweep(tmp_path, "held", "verify", {"upstreams": [AB], "data": folds(tmp_path, ["vox1"], "voxceleb1")},
                     lambda cfg: {"eer": 0.04})
    rows = paper_table([superb, held_out], tmp_path / "t.md")
    cells = {r["upstreams"]: r["VoxCeleb1 EER (%)"] for r in rows}
    assert cells == {"whisper-tiny.en": "5.00 †", "whisper-tiny.en+resemblyzer": "4.00"}
    assert "†: checkpoint chosen on test" in (tmp_path / "t.md").read_text()
