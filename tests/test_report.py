"""report.write_table / plot_importance."""
from __future__ import annotations

import csv

import pytest

from speechfuse.errors import SpeechfuseError
from speechfuse.report import _find_matrix, markdown_table, plot_importance, write_table


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


@pytest.mark.parametrize(
    "describe, names, rows",
    [
        ({"name": "weighted_sum", "layer_weights": [0.2, 0.3, 0.5]}, ["layers"], [[0.2, 0.3, 0.5]]),
        ({"layer_weights": [0.1, 0.2, 0.3, 0.4], "num_models": 2, "models": ["a", "b"]}, ["a", "b"],
         [[0.1, 0.2], [0.3, 0.4]]),
        ({"weights": {"a": [1, 2], "b": [3]}}, ["a", "b"], [[1.0, 2.0], [3.0]]),
        ({"importance": {"a": {"layer_1": 0.5, "layer_0": 0.25}}}, ["a"], [[0.25, 0.5]]),
        ({"importance": {"a/0": 1.0, "a/1": 2.0, "b/0": 3.0}}, ["a", "b"], [[1.0, 2.0], [3.0]]),
        ({"layer_weights": [[1, 2], [3, 4]], "models": ["x", "y"]}, ["x", "y"], [[1.0, 2.0], [3.0, 4.0]]),
    ],
)
def test_find_matrix_shapes(describe, names, rows):
    key, got_names, got_rows = _find_matrix(describe)
    assert got_names == names and got_rows == rows


def test_importance_preferred_over_weights():
    key, _, rows = _find_matrix({"weights": [1.0, 2.0], "importance": [3.0, 4.0]})
    assert key == "importance" and rows == [[3.0, 4.0]]


@pytest.mark.parametrize(
    "describe",
    [
        {"name": "weighted_sum", "layer_weights": [0.2, 0.3, 0.5]},
        {"name": "hconv", "importance": {"whisper": [0.1, 0.2, 0.3], "resemblyzer": [0.4, 0.5]}},
        {"name": "last"},  # nothing per layer: still a figure, with a title saying so
        {"name": "odd", "weights": "not numbers"},
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
    """describe()["importance"] holds speechfuse.importance.layer_importance's dict: use its [N][L] matrix."""
    desc = {"name": "hconv", "importance": {"method": "drop_one_layer", "models": ["w", "r"],
                                            "importance": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],
                                            "share": [[0.0] * 3, [0.0] * 3]}}
    key, names, rows = _find_matrix(desc)
    assert key == "importance.importance" and names == ["w", "r"] and rows[1] == [0.4, 0.5, 0.6]
