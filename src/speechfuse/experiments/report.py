"""Result tables (Markdown + CSV) and plots of what an interface learned.

    write_table(rows, md_path, csv_path, columns=None)
    plot_importance(describe, png_path) -> Path

`plot_importance` reads an interface's `describe()` dict (one schema for every interface): the
drop-one-layer `importance` when it was measured, else the learned `layer_matrix`. When neither is there
(e.g. `last`, `concat_proj`) it still writes a figure whose title says that the interface reports no
per-layer numbers, so a sweep's plot folder always has one image per run.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from speechfuse.errors import SpeechfuseError
from speechfuse.io import write_atomic

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
    """Write `rows` (list of flat dicts) as Markdown to `md_path` and CSV to `csv_path` (either may be None).

    Columns are `columns` if given, else every key in first-seen order. Missing cells are blank.
    CSV cells keep full precision (floats as repr); Markdown rounds for reading. Returns the columns.
    Both files are written atomically (io.write_atomic), so a crash never leaves half a table.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SpeechfuseError(f"write_table: row {i} is a {type(row).__name__}, expected a dict")
    cols = _columns(rows, columns)
    if not cols:
        raise SpeechfuseError("write_table: nothing to write (no rows and no `columns`)")
    if md_path is not None:
        md_path = Path(md_path)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(md_path, markdown_table(rows, cols))
    if csv_path is None:
        return cols
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
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
    write_atomic(csv_path, text.getvalue())
    return cols


def read_csv_table(csv_path) -> list[dict]:
    """Read a table written by write_table back as a list of dicts of strings."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# importance plots
# ---------------------------------------------------------------------------------------------
def _find_matrix(describe: dict) -> tuple[str, list[str], list[list[float]]] | None:
    """(what the numbers are, model names, [N][L] rows) from a describe() dict, or None.

    Measured importance wins over learned weights: it is comparable across interfaces."""
    importance = describe.get("importance")
    if isinstance(importance, dict) and importance.get("importance"):
        rows = importance["importance"]
        names = importance.get("models") or [f"model {i}" for i in range(len(rows))]
        return f"importance ({importance.get('method', 'measured')})", [str(n) for n in names], rows
    if describe.get("layer_matrix"):
        rows = describe["layer_matrix"]
        return describe.get("layer_matrix_kind") or "layer weight", [f"model {i}" for i in range(len(rows))], rows
    return None


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
        save_figure(fig, png_path, bbox_inches="tight")
        return png_path

    label, names, rows = found
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
    ax.set_title(f"{title or iface}: {label} per layer", fontsize=10)
    save_figure(fig, png_path, bbox_inches="tight")
    return png_path


def save_figure(fig, path, **options) -> None:
    """Render a matplotlib figure (100 dpi, the format of the file's suffix) and write it atomically; closes it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    image = io.BytesIO()
    fig.savefig(image, dpi=100, format=path.suffix.lstrip(".") or "png", **options)
    plt.close(fig)
    write_atomic(path, image.getvalue())


__all__ = ["write_table", "markdown_table", "read_csv_table", "plot_importance", "format_value",
           "save_figure"]
