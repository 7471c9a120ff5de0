"""Result tables (Markdown + CSV) and plots of what an interface learned.

    write_table(rows, md_path, csv_path, columns=None)
    plot_importance(describe, png_path) -> Path

`plot_importance` reads an interface's `describe()` dict. It looks for per-(model, layer) values under
the first key present of `importance`, `layer_importance`, `layer_weights`, `weights` (see
`_find_matrix` for the shapes it accepts). When none is there (e.g. `last`, `concat_proj`) it still
writes a figure whose title says that the interface reports no per-layer weights, so a sweep's plot
folder always has one image per run.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import SpeechfuseError

# keys of describe() that may hold per-(model, layer) numbers, in order of preference
MATRIX_KEYS = ("importance", "layer_importance", "layer_weights", "weights")


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _columns(rows: Sequence[dict], columns: Iterable[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    cols: list[str] = []
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    return cols


def format_value(value: Any) -> str:
    """A cell as text: floats with 4 decimals (1 above 1000), lists joined by '+', None as ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Iterable[str] | None = None) -> str:
    """Rows as a GitHub Markdown table (missing cells are blank)."""
    cols = _columns(rows, columns)
    if not cols:
        raise SpeechfuseError("markdown_table: no columns (empty rows and no `columns` given)")

    def cell(v: Any) -> str:
        return format_value(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict], md_path, csv_path, columns: Iterable[str] | None = None) -> list[str]:
    """Write `rows` (list of flat dicts) as Markdown to `md_path` and CSV to `csv_path`.

    Columns are `columns` if given, else every key in first-seen order. Missing cells are blank.
    CSV cells keep full precision (floats as repr); Markdown rounds for reading. Returns the columns.
    Both files are written to a temporary name then renamed, so a crash never leaves half a table.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SpeechfuseError(f"write_table: row {i} is a {type(row).__name__}, expected a dict")
    cols = _columns(rows, columns)
    if not cols:
        raise SpeechfuseError("write_table: nothing to write (no rows and no `columns`)")
    md_path, csv_path = Path(md_path), Path(csv_path)
    for p in (md_path, csv_path):
        p.parent.mkdir(parents=True, exist_ok=True)

    tmp_md = md_path.with_name(md_path.name + ".tmp")
    tmp_md.write_text(markdown_table(rows, cols), encoding="utf-8")
    tmp_md.replace(md_path)

    tmp_csv = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for row in rows:
            out = []
            for c in cols:
                v = row.get(c)
                if v is None:
                    out.append("")
                elif isinstance(v, (list, tuple)):
                    out.append("+".join(str(x) for x in v))
                else:
                    out.append(v)
            writer.writerow(out)
    tmp_csv.replace(csv_path)
    return cols


def read_csv_table(csv_path) -> list[dict]:
    """Read a table written by write_table back as a list of dicts of strings."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# importance plots
# ---------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _find_matrix(describe: dict) -> tuple[str, list[str], list[list[float]]] | None:
    """Find per-(model, layer) numbers in a describe() dict.

    Accepted shapes for the value under one of MATRIX_KEYS:
      - {model_name: [per-layer numbers]}                       one row per model
      - {model_name: {layer: number}}                           one row per model
      - [[per-layer numbers], ...]                              one row per model (names from describe["models"])
      - [per-layer numbers]                                     one row, or split into describe["num_models"] rows
      - {"<model>/<layer>" or "(model, layer)": number}         flat mapping, parsed into rows
      - a dict holding one of MATRIX_KEYS itself (layer_importance()'s result), searched the same way
    Returns (key, row names, rows) or None.
    """
    names = describe.get("models") or describe.get("upstreams") or describe.get("model_names")
    if isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    else:
        names = None
    for key in MATRIX_KEYS:
        if key not in describe or describe[key] is None:
            continue
        val = describe[key]
        if isinstance(val, dict) and any(k in val for k in MATRIX_KEYS):
            # e.g. describe()["importance"] = speechfuse.importance.layer_importance(...) result
            inner = _find_matrix(val)
            if inner is not None:
                return f"{key}.{inner[0]}", inner[1], inner[2]
            continue
        if isinstance(val, dict) and val:
            if all(isinstance(v, (list, tuple)) for v in val.values()):
                rows = [[float(x) for x in v] for v in val.values()]
                if all(all(_is_number(x) for x in v) for v in val.values()):
                    return key, [str(k) for k in val], rows
            if all(isinstance(v, dict) for v in val.values()):
                rows, row_names = [], []
                for k, v in val.items():
                    if all(_is_number(x) for x in v.values()):
                        items = sorted(v.items(), key=lambda kv: _layer_index(kv[0]))
                        rows.append([float(x) for _, x in items])
                        row_names.append(str(k))
                if rows:
                    return key, row_names, rows
            if all(_is_number(v) for v in val.values()):
                grouped: dict[str, list[tuple[int, float]]] = {}
                for k, v in val.items():
                    model, layer = _split_flat_key(str(k))
                    grouped.setdefault(model, []).append((layer, float(v)))
                return key, list(grouped), [[v for _, v in sorted(pairs)] for pairs in grouped.values()]
        if isinstance(val, (list, tuple)) and val:
            if all(isinstance(v, (list, tuple)) for v in val) and all(all(_is_number(x) for x in v) for v in val):
                rows = [[float(x) for x in v] for v in val]
                row_names = names if names and len(names) == len(rows) else [f"model {i}" for i in range(len(rows))]
                return key, row_names, rows
            if all(_is_number(v) for v in val):
                flat = [float(x) for x in val]
                n = describe.get("num_models") or (len(names) if names else 1)
                if isinstance(n, int) and n > 1 and len(flat) % n == 0:
                    per = len(flat) // n
                    rows = [flat[i * per:(i + 1) * per] for i in range(n)]
                    row_names = names if names and len(names) == n else [f"model {i}" for i in range(n)]
                    return key, row_names, rows
                return key, [names[0] if names and len(names) == 1 else "layers"], [flat]
    return None


def _layer_index(k: Any) -> int:
    digits = "".join(ch for ch in str(k) if ch.isdigit())
    return int(digits) if digits else 0


def _split_flat_key(k: str) -> tuple[str, int]:
    s = k.strip("()[] ")
    for sep in ("/", ",", ":"):
        if sep in s:
            model, layer = s.rsplit(sep, 1)
            return model.strip(" '\""), _layer_index(layer)
    return "layers", _layer_index(s)


def plot_importance(describe: dict, png_path, title: str | None = None):
    """Plot per-(model, layer) weights or importance from an interface's describe() dict to a PNG.

    `title` names the figure (default: the interface name in describe()); what is plotted is appended.
    One model: a bar chart over layers. Several: a heat map (rows = models, columns = layers; rows of
    different lengths are padded with blanks). If describe() holds no per-layer numbers, the figure says
    so in its title. Returns the PNG path.
    """
    if not isinstance(describe, dict):
        raise SpeechfuseError(f"plot_importance: describe must be a dict (interface.describe()), got {type(describe).__name__}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    iface = describe.get("name") or describe.get("interface") or "interface"
    found = _find_matrix(describe)
    if found is None:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.set_title(f"{title or iface}: no per-layer weights or importance reported", fontsize=10)
        fig.savefig(png_path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return png_path

    key, names, rows = found
    label = "importance" if "importance" in key else "layer weight"
    width = max(len(r) for r in rows)
    if len(rows) == 1:
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * width + 1.5), 3))
        ax.bar(range(len(rows[0])), rows[0], color="tab:blue")
        ax.set_xticks(range(len(rows[0])))
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
    else:
        mat = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            mat[i, : len(r)] = r
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * width + 2), 0.6 * len(rows) + 1.6))
        im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names)
        ax.set_xticks(range(width))
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, label=label)
    ax.set_title(f"{title or iface}: {label} per layer ({key})", fontsize=10)
    fig.savefig(png_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png_path


__all__ = ["write_table", "markdown_table", "read_csv_table", "plot_importance", "format_value"]
