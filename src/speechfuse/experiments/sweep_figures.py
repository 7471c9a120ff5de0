"""The figures of a sweep, redrawn whenever its results table is: OUT/plots/comparison.png (the main test metric
per configuration with its 95 % bootstrap interval; the best configuration and those tied with it marked) and
OUT/plots/layers.png (each configuration's per-(model, layer) weights or importance, side by side)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COMPARISON_PNG, LAYERS_PNG = "comparison.png", "layers.png"
MARKERS = {"best": ("*", "tab:red", "best"), "yes": ("o", "tab:orange", "tied with best (p >= 0.05)"),
           "no": ("o", "tab:gray", "worse than best (p < 0.05)")}


def plot_comparison(points: list[dict[str, Any]], metric: str, png: str | Path) -> Path | None:
    """points: {label, value, low, high, tied} per configuration (tied: best | yes | no | None)."""
    points = [p for p in points if isinstance(p.get("value"), (int, float)) and not math.isnan(p["value"])]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from speechfuse.experiments.report import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(points) + 1.6))
    shown = set()
    for y, p in enumerate(points):
        low, high = p.get("low"), p.get("high")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)):
            ax.plot([low, high], [y, y], color="black", linewidth=1.2)
        marker, colour, label = MARKERS.get(p.get("tied"), ("o", "tab:blue", "no interval"))
        ax.plot([p["value"]], [y], marker=marker, color=colour, markersize=11 if marker == "*" else 7,
                linestyle="none", label=None if label in shown else label)
        shown.add(label)
    ax.set_yticks(range(len(points)))
    ax.set_yticklabels([p["label"] for p in points], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"test {metric} (95 % bootstrap interval over utterances)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png)
    return png


def plot_layer_weights(describes: list[tuple[str, dict]], png: str | Path) -> Path | None:
    """One panel per configuration: its interface's per-layer weights / importance (a heat map, models x layers)."""
    from speechfuse.experiments.report import _find_matrix

    panels = [(label, found) for label, desc in describes if (found := _find_matrix(desc or {})) is not None]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from speechfuse.experiments.report import save_figure

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (label, (kind, names, matrix)) in zip(axes.flat, panels):
        width = max(len(r) for r in matrix)
        mat = np.full((len(matrix), width), np.nan)
        for i, r in enumerate(matrix):
            mat[i, :len(r)] = r
        im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_xticks(range(width))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(f"{label}\n{kind}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png)
    return png


__all__ = ["plot_comparison", "plot_layer_weights", "COMPARISON_PNG", "LAYERS_PNG"]
