"""The paper's table from finished sweeps (`speechfuse table SWEEP_DIR... --out table.md`).

    rows = paper_table(["runs/ls", "runs/mlsuperb_mono", "runs/vox1", "runs/iemocap"], "table.md")

Rows: upstream set x interface (the `upstreams` and `interface` columns of each sweep's results.csv).
Columns (values in %, test split of each run's best checkpoint), each filled only by runs whose test manifest
records that corpus (the `corpus` column `speechfuse prepare` writes in every row), each computed as its source does:

    LibriSpeech WER         task asr               corpus librispeech  test_wer
    ML-SUPERB mono CER      task multilingual_asr  corpus mlsuperb     runs whose test split holds one language: that
                            language's test_cer_<lang> (test_wer_<lang> for a run trained on word tokens, as ESPnet
                            trains and scores cmn and jpn); ESPnet's mono_superb_score.py: the datasets of a
                            language averaged first (eng1-3, fra1-2, deu1-2), then the languages
    ML-SUPERB multi CER     task multilingual_asr  corpus mlsuperb     runs whose test split holds several languages:
                            test_cer_normal, the CER pooled over the utterances (sclite) of every language not in
                            the run's downstream.few_shot_languages (test_cer, all of them, when it lists none)
    ML-SUPERB few-shot CER  the same runs: test_cer_few_shot, pooled over the few-shot languages' utterances
    VoxCeleb1 EER           task verify            corpus voxceleb1    test_eer
    IEMOCAP accuracy        task classify          corpus iemocap      test_accuracy, mean over folds

The column of a run is its task's answer (`Task.table_cells`), from the `task` of its own config.yaml
(SWEEP/runs/<run>/config.yaml), the corpus its test manifest records and, for multilingual ASR, how many
per-language CERs (`test_cer_<lang>`) its metrics hold. A run on data of no paper corpus (or whose manifest
records none) goes to a column of its own after the paper's, named after the task, its main metric and the
data: the recorded corpus, or else the training manifest's folder, with `_<target>` when data.target is not
the task's own field (e.g. "classify accuracy on fsdd_speaker"); the table never guesses a corpus. Averaging: runs that
share an upstream set, interface and column are grouped by their data (the config's data.train and
data.languages: one IEMOCAP fold, one ML-SUPERB monolingual dataset); seeds of one data are averaged first,
then the data of one group (a monolingual language; otherwise each data is its own group), then the groups
with equal weight. A cell averaged over fewer data than the most any row of its column has is marked `(n/N)`;
a cell with a run whose dev split is its test split (SUPERB's VoxCeleb1 rule: the best test score over
checkpoints) is marked †. A run trained with train.report_test_chosen also fills "<column>, chosen on test" (right
after the column) with its best test value over its step checkpoints (metrics.json's test_chosen_on_test), averaged
as the column is and always marked †; the column itself keeps the dev-chosen value.
Below the table, a line per column states the rule it used (`TableCell.rule`, from the task). Next to
table.md, table.csv keeps the full-precision values and the data / run counts of every cell.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

from speechfuse.data.manifest import recorded_corpus
from speechfuse.errors import ConfigError
from speechfuse.experiments.report import write_table
from speechfuse.io import write_atomic
from speechfuse.training.runfolder import TEST_CHOSEN, RunFolder
from speechfuse.experiments.sweep import RESULTS_CSV
from speechfuse.tasks import TableCell, get_task

# the paper's columns, in its order; any other column a task names follows them
COLUMNS = ("LibriSpeech WER", "ML-SUPERB mono CER", "ML-SUPERB multi CER", "ML-SUPERB few-shot CER", "VoxCeleb1 EER",
           "IEMOCAP accuracy")

ON_TEST_SUFFIX = ", chosen on test"  # the column of a run's best test value over its checkpoints
ON_TEST_RULE = ("per run the best test value over its step checkpoints (train.report_test_chosen: SUPERB's VoxCeleb1 "
                "rule, s3prl test_expdir.sh), chosen on test, not a held-out estimate")


class TableError(ConfigError):
    """A sweep folder cannot be read into the paper's table."""


def _run_config(sweep: Path, run: str, where: str) -> dict:
    run_folder = RunFolder(sweep / "runs" / run)
    path = run_folder.config_path
    try:
        cfg = run_folder.read_config_dict()
    except ConfigError as err:
        raise TableError(f"{where}: cannot read the run's config ({err}); the table needs each run's "
                         "config.yaml to know its task") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("task"), str):
        raise TableError(f"{where}: {path} has no `task`")
    return cfg


def cells_of(cfg: dict, metrics: dict[str, str], where: str, corpora: dict | None = None) -> list[TableCell]:
    """The table cells of one run, asked of its task (see the module doc). `corpora` caches the corpus recorded
    by each test manifest across runs."""
    try:
        task = get_task(cfg["task"], **(cfg.get("downstream") or {}))
    except ConfigError as err:
        raise TableError(f"{where}: {err}") from None
    data = cfg.get("data") or {}
    corpora = {} if corpora is None else corpora
    if data.get("test") not in corpora:
        corpora[data.get("test")] = recorded_corpus(data.get("test"))
    corpus = corpora[data.get("test")]
    name = corpus or Path(str(data.get("train") or "data")).parent.name or "data"
    target = data.get("target")
    if target and target != task.target_field:
        name += f"_{target}"
    return task.table_cells(corpus, name, metrics)


def run_values(cfg: dict, row: dict[str, str], where: str,
               corpora: dict | None = None) -> list[tuple[TableCell, float]]:
    """Each cell one run adds to the table, with its value."""
    out = []
    for cell in cells_of(cfg, row, where, corpora):
        try:
            out.append((cell, float(row[cell.metric])))
        except (KeyError, TypeError, ValueError):
            raise TableError(f"{where}: run {row['run']!r} has no {cell.metric} (task {cfg['task']}); the table uses "
                             "each run's test metrics, so its config needs a data.test manifest (and a finished "
                             "evaluation)") from None
    return out


def read_sweep(sweep: str | Path) -> list[dict]:
    """One record per run of a finished sweep: upstreams, interface, column, data (the averaging unit), value."""
    sweep = Path(sweep)
    path = sweep / RESULTS_CSV
    if not path.is_file():
        raise TableError(f"table: {path} not found; give folders written by `speechfuse sweep`")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise TableError(f"table: {path} has no runs yet")
    records: list[dict] = []
    corpora: dict = {}
    for line_no, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path} line {line_no}"
        missing = [k for k in ("run", "upstreams", "interface") if not row.get(k)]
        if missing:
            raise TableError(f"{where}: no {', '.join(missing)} column value; is this a speechfuse sweep's results.csv?")
        cfg = _run_config(sweep, row["run"], where)
        data = cfg.get("data") or {}
        languages = data.get("languages")
        unit = f"{data.get('train')}" + (f" {sorted(languages)}" if languages else "")
        for cell, value in run_values(cfg, row, where, corpora):
            base = {"upstreams": row["upstreams"], "interface": row["interface"], "group": cell.group, "data": unit,
                    "source": where}
            records.append({**base, "column": cell.column, "metric": cell.metric, "rule": cell.rule, "value": value,
                            "chosen_on_test": bool(data.get("test")) and data.get("dev") == data.get("test")})
            chosen = test_chosen_value(row, cell.metric)
            if chosen is not None:
                records.append({**base, "column": f"{cell.column}{ON_TEST_SUFFIX}",
                                "metric": f"{TEST_CHOSEN}_{cell.metric[len('test_'):]}", "value": chosen,
                                "rule": f"{ON_TEST_RULE}; averaged as the {cell.column} column", "chosen_on_test": True})
    return records


def test_chosen_value(row: dict[str, str], metric: str) -> float | None:
    """The run's best test value over its step checkpoints (train.report_test_chosen), if it has one."""
    if not metric.startswith("test_"):
        return None
    text = row.get(f"{TEST_CHOSEN}_{metric[len('test_'):]}")
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def merge(records: list[dict]) -> list[dict]:
    """Cells: {upstreams, interface, column, value, data, runs}: seeds averaged within a data, then the data of a
    group (a monolingual language), then the groups."""
    cells: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    for r in records:
        groups = cells.setdefault((r["upstreams"], r["interface"], r["column"]), {})
        groups.setdefault(r["group"] or r["data"], {}).setdefault(r["data"], []).append(r["value"])
    return [{"upstreams": u, "interface": i, "column": c,
             "value": _mean(_mean(_mean(v) for v in by_data.values()) for by_data in groups.values()),
             "data": sum(len(by_data) for by_data in groups.values()),
             "runs": sum(len(v) for by_data in groups.values() for v in by_data.values())}
            for (u, i, c), groups in cells.items()]


def paper_table(sweeps: Iterable[str | Path], out: str | Path) -> list[dict]:
    """Write the paper's table (Markdown at `out`, numbers at `out` with .csv) and return its display rows."""
    sweeps, out = list(sweeps), Path(out)
    if not sweeps:
        raise TableError("table: give at least one sweep folder")
    if out.suffix.lower() == ".csv":
        raise TableError(f"table: --out {out} is the Markdown table; its numbers go to the .csv beside it, so give "
                         "e.g. table.md")
    records = [r for s in sweeps for r in read_sweep(s)]
    cells = merge(records)
    named = [*COLUMNS, *dict.fromkeys(c["column"] for c in cells if c["column"] not in COLUMNS)]
    # each column's chosen-on-test twin right after it
    present = {c["column"] for c in cells}
    columns = [c for base in named if not base.endswith(ON_TEST_SUFFIX)
               for c in (base, base + ON_TEST_SUFFIX) if c == base or c in present]
    most = {c: max((x["data"] for x in cells if x["column"] == c), default=0) for c in columns}
    on_test = {(r["upstreams"], r["interface"], r["column"]) for r in records if r["chosen_on_test"]}
    display: dict[tuple, dict] = {}
    for cell in cells:
        row = display.setdefault((cell["upstreams"], cell["interface"]),
                                 {"upstreams": cell["upstreams"], "interface": cell["interface"],
                                  **{c: "–" for c in columns}})
        text = f"{100 * cell['value']:.2f}"
        if cell["data"] < most[cell["column"]]:
            text += f" ({cell['data']}/{most[cell['column']]})"
        if (cell["upstreams"], cell["interface"], cell["column"]) in on_test:
            text += " †"
        row[cell["column"]] = text
    header = [f"{c} (%)" for c in columns]
    rows = [{"upstreams": r["upstreams"], "interface": r["interface"], **{h: r[c] for h, c in zip(header, columns)}}
            for r in display.values()]
    write_table(rows, out, None, columns=["upstreams", "interface", *header])
    rules = {r["column"]: r["rule"] for r in records}
    twins = " (but in the columns ending 'chosen on test')" if any(c.endswith(ON_TEST_SUFFIX) for c in columns) else ""
    note = (f"\nTest split, best checkpoint by dev{twins}. (n/N): averaged over n of the N folds or datasets other "
            f"rows have. Sweeps: {', '.join(str(s) for s in sweeps)}.\n\nRules:\n"
            + "".join(f"- {c}: {rules[c]}\n" for c in columns if c in rules))
    if on_test:
        note += ("†: checkpoint chosen on test (a column ending 'chosen on test', or a run whose dev split is its "
                 "test split), SUPERB's VoxCeleb1 rule: the best test score over the checkpoints, not a held-out "
                 "estimate.\n")
    write_atomic(out, out.read_text(encoding="utf-8") + note)
    write_table(sorted(cells, key=lambda c: (c["upstreams"], c["interface"], columns.index(c["column"]))),
                None, out.with_suffix(".csv"), columns=["upstreams", "interface", "column", "value", "data", "runs"])
    return rows


__all__ = ["paper_table", "read_sweep", "merge", "cells_of", "run_values", "COLUMNS", "TableError"]
