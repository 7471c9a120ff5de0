"""The demo, end to end on the real bundled models and real bundled FSDD speech (quick mode: few clips/steps)."""
from __future__ import annotations

import pytest
import csv
import math

from speechfuse.experiments.demo import CSV_COLUMNS, TASKS, combine, demo_grids, protocol, row_order, run_demo
from speechfuse.experiments.sweep import expand_grid


def test_full_plan_is_the_paper_style_comparison_under_one_protocol():
    combos = [("+".join(c["upstreams"]), c["interface.name"]) for c in expand_grid(demo_grids(quick=False))]
    singles = {(m, i) for m in ("whisper-tiny.en", "resemblyzer") for i in ("weighted_sum", "hconv")}
    pairs = set(combos) - singles
    assert singles <= set(combos) and len(combos) == len(set(combos)) == 7
    assert pairs == {("whisper-tiny.en+resemblyzer", i) for i in ("weighted_sum", "hconv", "chconv")}
    assert row_order(quick=False) == combos
    settings = protocol(quick=False)
    assert len(settings["seeds"]) >= 2 and len(settings["interface_lr"]) >= 2


def test_combine_merges_tasks_per_row_with_spread_and_marks():
    summaries = {
        "asr": [{"upstreams": "a", "interface": "hconv", "interface_params": "5", "train.interface_lr": "0.001",
                 "seeds": "2", "test_wer_mean": "0.2", "test_wer_std": "0.05", "test_cer_mean": "0.1",
                 "test_cer_std": "0.0", "tied_with_best": "yes"}],
        "speaker": [{"upstreams": "a", "interface": "hconv", "interface_params": "5", "train.interface_lr": "0.01",
                     "seeds": "2", "test_accuracy_mean": "0.9", "test_accuracy_std": "0.1",
                     "test_macro_f1_mean": "0.8", "test_macro_f1_std": "0.1", "tied_with_best": "no"},
                    {"upstreams": "b", "interface": "hconv", "interface_params": "7", "train.interface_lr": "0.01",
                     "seeds": "2", "test_accuracy_mean": "0.5", "test_accuracy_std": "nan", "tied_with_best": "best"}],
    }
    rows, numbers = combine(summaries)
    assert rows[0] == {"upstreams": "a", "interface": "hconv", "interface params": "5", "ASR lr": "0.001",
                       "ASR WER": "0.200 ± 0.050 *", "ASR CER": "0.100 ± 0.000", "speaker lr": "0.01",
                       "speaker acc": "0.900 ± 0.100", "speaker F1": "0.800 ± 0.100"}
    assert rows[1]["ASR WER"] == "" and rows[1]["speaker acc"] == "0.500 *"  # one seed: no std
    assert list(numbers[0]) == CSV_COLUMNS
    assert numbers[0]["ASR WER mean"] == 0.2 and numbers[0]["speaker acc std"] == 0.1
    assert numbers[0]["ASR tied with best"] == "yes" and numbers[1]["speaker tied with best"] == "best"


def test_demo_configs_train_on_the_device_asked_for_cpu_by_default(tmp_path):
    from speechfuse.experiments.demo import demo_config

    manifests = {split: tmp_path / f"{split}.csv" for split in ("train", "dev", "test")}
    for task in TASKS:
        assert demo_config(task, manifests, tmp_path / "cache", quick=True).train.accelerator == "cpu"
        train = demo_config(task, manifests, tmp_path / "cache", quick=True, device="cuda:1").train
        assert (train.accelerator, train.devices) == ("gpu", "1,")


@pytest.mark.slow
def test_quick_demo_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    md = run_demo(out, quick=True)
    printed, notes = capsys.readouterr()
    assert md == out / "demo_results.md" and md.is_file()
    with open(out / "demo_results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    expected = row_order(quick=True)
    assert expected == [("whisper-tiny.en", "weighted_sum"), ("whisper-tiny.en+resemblyzer", "chconv")]
    assert [(r["upstreams"], r["interface"]) for r in table] == expected
    assert list(table[0]) == CSV_COLUMNS
    settings = protocol(quick=True)
    for r in table:
        assert int(r["interface params"]) > 0 and int(r["seeds"]) == len(settings["seeds"])
        for prefix in ("ASR", "speaker"):  # every row's lr was chosen from the same grid
            assert float(r[f"{prefix} lr"]) in settings["interface_lr"]
            assert r[f"{prefix} tied with best"] in ("best", "yes", "no")
        for col in ("ASR WER mean", "ASR CER mean", "ASR WER std"):
            assert float(r[col]) >= 0 and math.isfinite(float(r[col]))
        for col in ("speaker acc mean", "speaker F1 mean"):
            assert 0.0 <= float(r[col]) <= 1.0
    # weighted_sum: one weight per layer; chconv: convolutions over 2 x 384 channels
    by = {(r["upstreams"], r["interface"]): int(r["interface params"]) for r in table}
    assert by[("whisper-tiny.en", "weighted_sum")] == 5
    assert by[("whisper-tiny.en+resemblyzer", "chconv")] > 100_000
    # each task's sweep chose among every candidate on the first seed, then ran the other seeds
    for task_key in TASKS:
        with open(out / task_key / "selection.csv", newline="") as f:
            selection = list(csv.DictReader(f))
        assert len(selection) == len(expected) * len(settings["interface_lr"])
        assert sum(r["chosen"] == "True" for r in selection) == len(expected)
    # outputs it says it wrote
    assert "| upstreams | interface |" in printed and str(md) in notes and str(md) not in printed  # result / note
    assert (out / "plots" / "demo_summary.png").stat().st_size > 1000
    assert len(list((out / "plots").glob("asr__*.png"))) == len(expected) * len(settings["seeds"])
    assert all((out / "plots" / f"{t}_comparison.png").stat().st_size > 1000 for t in ("asr", "speaker"))
    assert (out / "FSDD_NOTICE.md").read_text().count("CC BY-SA 4.0") >= 1
    assert "CC BY-SA 4.0" in md.read_text()
    # resume: a second call trains nothing (metrics files untouched) and gives the same table
    metrics = sorted(out.glob("*/runs/*/metrics.json"))
    runs_per_row = len(settings["interface_lr"]) + len(settings["seeds"]) - 1  # the chosen candidate is seed 0
    assert len(metrics) == len(expected) * len(TASKS) * runs_per_row
    mtimes = [p.stat().st_mtime_ns for p in metrics]
    run_demo(out, quick=True)
    assert [p.stat().st_mtime_ns for p in metrics] == mtimes
    with open(out / "demo_results.csv", newline="") as f:
        assert list(csv.DictReader(f)) == table
