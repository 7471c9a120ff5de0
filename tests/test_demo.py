"""The demo, end to end on the real bundled models and real bundled FSDD speech (quick mode: few clips/steps)."""
from __future__ import annotations

import csv
import math

from speechfuse.demo import COLUMNS, TASKS, combine, demo_plan, row_order, run_demo
from speechfuse.sweep import expand_grid


def test_full_plan_is_the_paper_style_comparison():
    combos = {("+".join(c["upstreams"]), c["interface.name"]) for _, g in demo_plan(quick=False)
              for c in expand_grid(g)}
    singles = {(m, i) for m in ("whisper-tiny.en", "resemblyzer", "speech-embedding") for i in ("weighted_sum", "hconv")}
    pairs = combos - singles
    assert singles <= combos
    assert len(pairs) == 6 and {i for _, i in pairs} == {"weighted_sum", "hconv", "chconv"}
    assert all("+" in u for u, _ in pairs)
    assert set(row_order(quick=False)) == combos and len(row_order(quick=False)) == len(combos)


def test_combine_merges_tasks_per_row():
    rows = combine({
        "asr": [{"upstreams": "a", "interface": "hconv", "interface_params": 5, "test_wer": 0.2, "test_cer": 0.1}],
        "speaker": [{"upstreams": "a", "interface": "hconv", "interface_params": 5, "test_accuracy": 0.9,
                     "test_macro_f1": 0.8},
                    {"upstreams": "b", "interface": "hconv", "interface_params": 7, "test_accuracy": 0.5}],
    })
    assert rows[0] == {"upstreams": "a", "interface": "hconv", "interface params": 5, "ASR WER": 0.2,
                       "ASR CER": 0.1, "speaker acc": 0.9, "speaker F1": 0.8}
    assert rows[1]["ASR WER"] is None and rows[1]["speaker acc"] == 0.5


def test_quick_demo_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    md = run_demo(out, quick=True)
    printed = capsys.readouterr().out
    assert md == out / "demo_results.md" and md.is_file()
    with open(out / "demo_results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    expected = row_order(quick=True)
    assert expected == [("whisper-tiny.en", "weighted_sum"), ("speech-embedding", "weighted_sum"),
                        ("whisper-tiny.en+resemblyzer", "chconv")]
    assert [(r["upstreams"], r["interface"]) for r in table] == expected
    assert list(table[0]) == COLUMNS
    for r in table:
        assert int(r["interface params"]) > 0
        for col in ("ASR WER", "ASR CER"):
            assert float(r[col]) >= 0 and math.isfinite(float(r[col]))
        for col in ("speaker acc", "speaker F1"):
            assert 0.0 <= float(r[col]) <= 1.0
    # weighted_sum: one weight per layer; chconv: convolutions over 2 x 384 channels
    by = {(r["upstreams"], r["interface"]): int(r["interface params"]) for r in table}
    assert by[("whisper-tiny.en", "weighted_sum")] == 5 and by[("speech-embedding", "weighted_sum")] == 10
    assert by[("whisper-tiny.en+resemblyzer", "chconv")] > 100_000
    # outputs it says it wrote
    assert "| upstreams | interface |" in printed and str(md) in printed
    assert (out / "plots" / "demo_summary.png").stat().st_size > 1000
    assert len(list((out / "plots").glob("asr__*.png"))) == len(expected)
    assert (out / "FSDD_NOTICE.md").read_text().count("CC BY-SA 4.0") >= 1
    assert "CC BY-SA 4.0" in md.read_text()
    # resume: a second call trains nothing (metrics files untouched) and gives the same table
    metrics = sorted(out.glob("*/*/runs/*/metrics.json"))
    assert len(metrics) == len(expected) * len(TASKS)
    mtimes = [p.stat().st_mtime_ns for p in metrics]
    run_demo(out, quick=True)
    assert [p.stat().st_mtime_ns for p in metrics] == mtimes
    with open(out / "demo_results.csv", newline="") as f:
        assert list(csv.DictReader(f)) == table
