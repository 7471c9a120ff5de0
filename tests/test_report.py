"""report.write_table / plot_importance."""
from __future__ import annotations

import csv

import pytest

from speechfuse.errors import SpeechfuseError
from speechfuse.experiments.report import _find_matrix, markdown_table, plot_importance, write_table


def test_write_table_markdown_and_csv(tmp_path):
    rows = [
        {"run": "a", "upstreams": ["m1", "m2"], "wer": 0.123456, "params": 10},
        {"run": "b|x", "wer": 0.5, "extra": "only here"},
    ]
    cols = write_table(rows, tmp_path / "r.md", tmp_path / "sub" / "r.csv")
    assert cols == ["run", "upstreams", "wer", "params", "extra"]
    md = (tmp_path / "r.md").read_text().splitlines()
    assert md[0] == "| run | upstreams | wer | params | extra |"
    assert md[1] == "|---|---|---|---|---|"
    assert md[2] == "| a | m1+m2 | 0.1235 | 10 |  |"
    assert md[3] == "| b\\|x |  | 0.5000 |  | only here |"
    with open(tmp_path / "sub" / "r.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert got[0]["upstreams"] == "m1+m2"
    assert float(got[0]["wer"]) == pytest.approx(0.123456)  # csv keeps full precision
    assert got[1]["params"] == ""
    assert not list(tmp_path.glob("*.tmp"))


def test_write_table_explicit_columns_and_errors(tmp_path):
    write_table([{"a": 1, "b": 2}], tmp_path / "t.md", tmp_path / "t.csv", columns=["b"])
    assert (tmp_path / "t.csv").read_text().split() == ["b", "2"]
    with pytest.raises(SpeechfuseError, match="nothing to write"):
        write_table([], tmp_path / "e.md", tmp_path / "e.csv")
    with pytest.raises(SpeechfuseError, match="row 0"):
        write_table(["not a dict"], tmp_path / "e.md", tmp_path / "e.csv")
    # no rows but columns: header only
    write_table([], tmp_path / "h.md", tmp_path / "h.csv", columns=["x", "y"])
    assert markdown_table([], ["x", "y"]).splitlines()[0] == "| x | y |"


def test_find_matrix_reads_the_learned_layer_matrix():
    desc = {"name": "weighted_sum", "layer_matrix": [[0.1, 0.2], [0.3, 0.4]], "layer_matrix_kind": "softmax layer weight",
            "importance": None}
    assert _find_matrix(desc) == ("softmax layer weight", ["model 0", "model 1"], [[0.1, 0.2], [0.3, 0.4]])


def test_measured_importance_preferred_over_learned_weights():
    desc = {"layer_matrix": [[1.0, 2.0]], "layer_matrix_kind": "softmax layer weight",
            "importance": {"method": "drop_one_layer", "models": ["w"], "importance": [[3.0, 4.0]]}}
    assert _find_matrix(desc) == ("importance (drop_one_layer)", ["w"], [[3.0, 4.0]])


@pytest.mark.parametrize(
    "describe",
    [
        {"name": "weighted_sum", "layer_matrix": [[0.2, 0.3, 0.5]], "layer_matrix_kind": "softmax layer weight"},
        {"name": "hconv", "importance": {"models": ["whisper", "resemblyzer"], "importance": [[0.1, 0.2, 0.3], [0.4, 0.5]]}},
        {"name": "last", "layer_matrix": None, "importance": None},  # nothing per layer: a figure saying so
    ],
)
def test_plot_importance_writes_png(tmp_path, describe):
    out = plot_importance(describe, tmp_path / "plots" / "x.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 500
    assert _find_matrix(describe) is None or describe["name"] in ("weighted_sum", "hconv")


def test_plot_importance_rejects_non_dict(tmp_path):
    with pytest.raises(SpeechfuseError, match="describe must be a dict"):
        plot_importance([1, 2], tmp_path / "x.png")


def test_find_matrix_reads_layer_importance_result():
    """describe()["importance"] holds speechfuse.fusion.importance.layer_importance's dict: use its [N][L] matrix."""
    desc = {"name": "hconv", "importance": {"method": "drop_one_layer", "models": ["w", "r"],
                                            "importance": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],
                                            "share": [[0.0] * 3, [0.0] * 3]}}
    label, names, rows = _find_matrix(desc)
    assert label == "importance (drop_one_layer)" and names == ["w", "r"] and rows[1] == [0.4, 0.5, 0.6]
