"""The paper's table from finished sweeps (`speechfuse table SWEEP_DIR... --out table.md`).

    rows = paper_table(["runs/ls", "runs/mlsuperb_mono", "runs/vox1", "runs/iemocap"], "table.md")

Rows: upstream set x interface (the `upstreams` and `interface` columns of each sweep's results.csv).
Columns (values in %, test split of each run's best checkpoint), each filled only by runs whose test manifest
records that corpus (the `corpus` column `speechfuse prepare` writes in every row):

    LibriSpeech WER      task asr               corpus librispeech  test_wer
    ML-SUPERB mono CER   task multilingual_asr  corpus mlsuperb     test_cer_macro, test split of one language
    ML-SUPERB multi CER  task multilingual_asr  corpus mlsuperb     test_cer_macro, test split of several
    VoxCeleb1 EER        task verify            corpus voxceleb1    test_eer
    IEMOCAP accuracy     task classify          corpus iemocap      test_accuracy

The column of a run is its task's answer (`Task.table_column`), from the `task` of its own config.yaml
(SWEEP/runs/<run>/config.yaml), the corpus its test manifest records and, for multilingual ASR, how many
per-language CERs (`test_cer_<lang>`) its metrics hold. A run on data of no paper corpus (or whose manifest
records none) goes to a column of its own after the paper's, named after the task, its main metric and the
data: the recorded corpus, or else the training manifest's folder, with `_<target>` when data.target is not
the task's own field (e.g. "classify accuracy on fsdd_speaker"); the table never guesses a corpus. Averaging: runs that
share an upstream set, interface and column are grouped by their data (the config's data.train and
data.languages: one IEMOCAP fold, one ML-SUPERB monolingual language); seeds of one data are averaged first,
then the data are averaged with equal weight. So the IEMOCAP cell is the mean accuracy over folds and the
mono cell the mean CER over languages (ML-SUPERB's monolingual score), whatever the seeds per fold.
A cell averaged over fewer data than the most any row of its column has is marked `(n/N)`.
Next to table.md, table.csv keeps the full-precision values and the data / run counts of every cell.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import yaml

from .data.corpora import recorded_corpus
from .errors import ConfigError
from .report import write_table
from .runfolder import write_atomic
from .sweep import RESULTS_CSV
from .tasks import get_task

COLUMNS = ("LibriSpeech WER", "ML-SUPERB mono CER", "ML-SUPERB multi CER", "VoxCeleb1 EER", "IEMOCAP accuracy")


class TableError(ConfigError):
    """A sweep folder cannot be read into the paper's table."""


def _run_config(sweep: Path, run: str, where: str) -> dict:
    path = sweep / "runs" / run / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise TableError(f"{where}: cannot read the run's config {path} ({err}); the table needs each run's "
                         "config.yaml to know its task") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("task"), str):
        raise TableError(f"{where}: {path} has no `task`")
    return cfg


def column_of(cfg: dict, metrics: dict[str, str], where: str, corpora: dict | None = None) -> tuple[str, str]:
    """(column, test metric key) of one run, asked of its task (see the module doc). `corpora` caches the
    corpus recorded by each test manifest across runs."""
    try:
        task = get_task(cfg["task"])
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
    return task.table_column(corpus, name, metrics)


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
        column, metric = column_of(cfg, row, where, corpora)
        try:
            value = float(row[metric])
        except (KeyError, TypeError, ValueError):
            raise TableError(f"{where}: run {row['run']!r} has no {metric} (task {cfg['task']}); the table uses "
                             "each run's test metrics, so its config needs a data.test manifest") from None
        data = cfg.get("data") or {}
        languages = data.get("languages")
        records.append({"upstreams": row["upstreams"], "interface": row["interface"], "column": column,
                        "data": f"{data.get('train')}" + (f" {sorted(languages)}" if languages else ""),
                        "value": value, "source": where})
    return records


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def merge(records: list[dict]) -> list[dict]:
    """Cells: {upstreams, interface, column, value, data, runs}, seeds averaged within a data, then data."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        cells.setdefault((r["upstreams"], r["interface"], r["column"]), {}).setdefault(r["data"], []).append(r["value"])
    return [{"upstreams": u, "interface": i, "column": c, "value": _mean(_mean(v) for v in by_data.values()),
             "data": len(by_data), "runs": sum(len(v) for v in by_data.values())}
            for (u, i, c), by_data in cells.items()]


def paper_table(sweeps: Iterable[str | Path], out: str | Path) -> list[dict]:
    """Write the paper's table (Markdown at `out`, numbers at `out` with .csv) and return its display rows."""
    sweeps, out = list(sweeps), Path(out)
    if not sweeps:
        raise TableError("table: give at least one sweep folder")
    if out.suffix.lower() == ".csv":
        raise TableError(f"table: --out {out} is the Markdown table; its numbers go to the .csv beside it, so give "
                         "e.g. table.md")
    cells = merge([r for s in sweeps for r in read_sweep(s)])
    columns = [*COLUMNS, *dict.fromkeys(c["column"] for c in cells if c["column"] not in COLUMNS)]
    most = {c: max((x["data"] for x in cells if x["column"] == c), default=0) for c in columns}
    display: dict[tuple, dict] = {}
    for cell in cells:
        row = display.setdefault((cell["upstreams"], cell["interface"]),
                                 {"upstreams": cell["upstreams"], "interface": cell["interface"],
                                  **{c: "–" for c in columns}})
        text = f"{100 * cell['value']:.2f}"
        if cell["data"] < most[cell["column"]]:
            text += f" ({cell['data']}/{most[cell['column']]})"
        row[cell["column"]] = text
    header = [f"{c} (%)" for c in columns]
    rows = [{"upstreams": r["upstreams"], "interface": r["interface"], **{h: r[c] for h, c in zip(header, columns)}}
            for r in display.values()]
    write_table(rows, out, None, columns=["upstreams", "interface", *header])
    note = ("\nTest split, best checkpoint by dev. Mono CER: mean over ML-SUPERB monolingual languages; IEMOCAP: "
            "mean over folds; seeds are averaged within each language / fold first. (n/N): averaged over n of the "
            f"N folds or languages other rows have. Sweeps: {', '.join(str(s) for s in sweeps)}.\n")
    write_atomic(out, out.read_text(encoding="utf-8") + note)
    write_table(sorted(cells, key=lambda c: (c["upstreams"], c["interface"], columns.index(c["column"]))),
                None, out.with_suffix(".csv"), columns=["upstreams", "interface", "column", "value", "data", "runs"])
    return rows


__all__ = ["paper_table", "read_sweep", "merge", "column_of", "COLUMNS", "TableError"]
