"""The paper's table from finished sweeps (`speechfuse table SWEEP_DIR... --out table.md`).

    rows = paper_table(["runs/ls", "runs/mlsuperb_mono", "runs/mlsuperb_multi", "runs/vox1", "runs/iemocap"], "table.md")

Rows: upstream set x interface (the `upstreams` and `interface` columns of each sweep's results.csv).
Columns (values in %, test split of each run's best checkpoint), each computed as its source does:

    LibriSpeech WER         task asr               test_wer
    ML-SUPERB mono CER      task multilingual_asr  runs whose test split holds one language: that language's
                            test_cer_<lang> (test_wer_<lang> for a run trained on word tokens, as ESPnet
                            trains and scores cmn and jpn); ESPnet's mono_superb_score.py: the datasets of a
                            language averaged first (eng1-3, fra1-2, deu1-2), then the languages
    ML-SUPERB multi CER     task multilingual_asr  runs whose test split holds several languages: test_cer_normal,
                            the CER pooled over the utterances (sclite) of every language not in the run's
                            downstream.few_shot_languages (test_cer, all of them, when it lists none)
    ML-SUPERB few-shot CER  the same runs: test_cer_few_shot, pooled over the few-shot languages' utterances
    VoxCeleb1 EER           task verify            test_eer
    IEMOCAP accuracy        task classify          test_accuracy, mean over folds

The column of a run is decided by the `task` of its own config.yaml (SWEEP/runs/<run>/config.yaml) and, for
multilingual ASR, by how many per-language CERs (`test_cer_<lang>`) its metrics hold. Averaging: runs that
share an upstream set, interface and column are grouped by their data (the config's data.train and
data.languages: one IEMOCAP fold, one ML-SUPERB monolingual dataset); seeds of one data are averaged first,
then the data of one group (a monolingual language; otherwise each data is its own group), then the groups
with equal weight. A cell averaged over fewer data than the most any row of its column has is marked `(n/N)`.
Below the table, a line per column states the rule it used. Next to table.md, table.csv keeps the
full-precision values and the data / run counts of every cell.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import yaml

from .errors import ConfigError
from .report import write_table
from .runfolder import write_atomic
from .sweep import RESULTS_CSV

COLUMNS = ("LibriSpeech WER", "ML-SUPERB mono CER", "ML-SUPERB multi CER", "ML-SUPERB few-shot CER", "VoxCeleb1 EER",
           "IEMOCAP accuracy")
TASK_COLUMN = {"asr": "LibriSpeech WER", "verify": "VoxCeleb1 EER", "classify": "IEMOCAP accuracy"}
TASK_METRIC = {"asr": "test_wer", "verify": "test_eer", "classify": "test_accuracy"}
SUBSET_CERS = ("test_cer_macro", "test_cer_normal", "test_cer_few_shot")  # test_cer_<x> keys that are no language
RULES = {
    "LibriSpeech WER": "test WER (word edits / reference words over the utterances), mean over seeds",
    "ML-SUPERB mono CER": "per run its language's pooled test CER (WER for runs trained on word tokens: cmn, jpn "
                          "in ESPnet); mean over seeds, then over the datasets of a language, then over the "
                          "languages (ESPnet mono_superb_score.py)",
    "ML-SUPERB multi CER": "test CER pooled over the utterances of the normal languages (sclite, as ESPnet's "
                           "few-shot split scores them; all languages when a run lists no few_shot_languages), "
                           "mean over seeds",
    "ML-SUPERB few-shot CER": "test CER pooled over the utterances of the run's downstream.few_shot_languages, "
                              "mean over seeds",
    "VoxCeleb1 EER": "test EER over the trial list, mean over seeds",
    "IEMOCAP accuracy": "test accuracy, mean over seeds, then over folds",
}


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


def _languages(metrics: dict[str, str]) -> list[str]:
    return [k[len("test_cer_"):] for k in metrics
            if k.startswith("test_cer_") and k not in SUBSET_CERS and metrics[k] not in ("", None)]


def column_of(task: str, metrics: dict[str, str], where: str) -> str:
    """The paper column of one run (for multilingual ASR tested on several languages: the normal-language column),
    from its task and, multilingual ASR, how many languages it was tested on."""
    if task == "multilingual_asr":
        return "ML-SUPERB mono CER" if len(_languages(metrics)) == 1 else "ML-SUPERB multi CER"
    if task not in TASK_COLUMN:
        raise TableError(f"{where}: task {task!r} has no column in the paper's table (asr, multilingual_asr, "
                         "verify, classify)")
    return TASK_COLUMN[task]


def _number(row: dict[str, str], metric: str) -> float | None:
    try:
        return float(row[metric])
    except (KeyError, TypeError, ValueError):
        return None


def run_values(cfg: dict, row: dict[str, str], where: str) -> list[tuple[str, str, str, float]]:
    """(column, metric, group, value) of one run: what it adds to the table. The group is the unit averaged
    before the columns' last mean: a monolingual ML-SUPERB run's language; "" for the other columns."""
    task = cfg["task"]
    column = column_of(task, row, where)
    if column == "ML-SUPERB mono CER":
        language = _languages(row)[0]
        word = ((cfg.get("downstream") or {}).get("token_type") == "word")
        wanted = [(column, f"test_{'wer' if word else 'cer'}_{language}", language)]
    elif column == "ML-SUPERB multi CER":
        few_shot = (cfg.get("downstream") or {}).get("few_shot_languages") or []
        wanted = [(column, "test_cer_normal" if few_shot else "test_cer", "")]
        if few_shot:
            wanted.append(("ML-SUPERB few-shot CER", "test_cer_few_shot", ""))
        # a test split holding only one of the two subsets fills one column
        wanted = [w for w in wanted if _number(row, w[1]) is not None] or wanted[:1]
    else:
        wanted = [(column, TASK_METRIC[task], "")]
    out = []
    for col, metric, group in wanted:
        value = _number(row, metric)
        if value is None:
            raise TableError(f"{where}: run {row['run']!r} has no {metric} (task {task}); the table uses each run's "
                             "test metrics, so its config needs a data.test manifest (and a finished evaluation)")
        out.append((col, metric, group, value))
    return out


def read_sweep(sweep: str | Path) -> list[dict]:
    """One record per run and column of a finished sweep: upstreams, interface, column, metric, group, data
    (the averaging unit), value."""
    sweep = Path(sweep)
    path = sweep / RESULTS_CSV
    if not path.is_file():
        raise TableError(f"table: {path} not found; give folders written by `speechfuse sweep`")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise TableError(f"table: {path} has no runs yet")
    records = []
    for line_no, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path} line {line_no}"
        missing = [k for k in ("run", "upstreams", "interface") if not row.get(k)]
        if missing:
            raise TableError(f"{where}: no {', '.join(missing)} column value; is this a speechfuse sweep's results.csv?")
        cfg = _run_config(sweep, row["run"], where)
        data = cfg.get("data") or {}
        languages = data.get("languages")
        unit = f"{data.get('train')}" + (f" {sorted(languages)}" if languages else "")
        for column, metric, group, value in run_values(cfg, row, where):
            records.append({"upstreams": row["upstreams"], "interface": row["interface"], "column": column,
                            "metric": metric, "group": group, "data": unit, "value": value, "source": where})
    return records


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
    cells = merge([r for s in sweeps for r in read_sweep(s)])
    most = {c: max((x["data"] for x in cells if x["column"] == c), default=0) for c in COLUMNS}
    display: dict[tuple, dict] = {}
    for cell in cells:
        row = display.setdefault((cell["upstreams"], cell["interface"]),
                                 {"upstreams": cell["upstreams"], "interface": cell["interface"],
                                  **{c: "–" for c in COLUMNS}})
        text = f"{100 * cell['value']:.2f}"
        if cell["data"] < most[cell["column"]]:
            text += f" ({cell['data']}/{most[cell['column']]})"
        row[cell["column"]] = text
    header = [f"{c} (%)" for c in COLUMNS]
    rows = [{"upstreams": r["upstreams"], "interface": r["interface"], **{h: r[c] for h, c in zip(header, COLUMNS)}}
            for r in display.values()]
    write_table(rows, out, None, columns=["upstreams", "interface", *header])
    used = [c for c in COLUMNS if any(x["column"] == c for x in cells)]
    note = ("\nTest split, best checkpoint by dev. (n/N): averaged over n of the N folds or datasets other rows "
            f"have. Sweeps: {', '.join(str(s) for s in sweeps)}.\n\nRules:\n"
            + "".join(f"- {c}: {RULES[c]}\n" for c in used))
    write_atomic(out, out.read_text(encoding="utf-8") + note)
    write_table(sorted(cells, key=lambda c: (c["upstreams"], c["interface"], COLUMNS.index(c["column"]))),
                None, out.with_suffix(".csv"), columns=["upstreams", "interface", "column", "value", "data", "runs"])
    return rows


__all__ = ["paper_table", "read_sweep", "merge", "column_of", "run_values", "COLUMNS", "RULES", "TableError"]
