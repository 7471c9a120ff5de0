"""Training curves of a run: RUN/curves.png from the CSV log every run writes (RUN/logs/csv/version_*/metrics.csv,
every part of a resumed run): the training loss, the dev metrics and the learning rate of each optimizer group,
each against the optimizer step. The same values are in TensorBoard (RUN/logs/tensorboard)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from speechfuse.training.runfolder import LOGS_DIR

CURVES_PNG = "curves.png"


def read_logged(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """metric name -> [(step, value)] over every CSV log version of the run, in step order (a step logged twice,
    after a resume, keeps its last value)."""
    series: dict[str, dict[int, float]] = {}
    for path in sorted(Path(run_dir, LOGS_DIR, "csv").glob("version_*/metrics.csv"),
                       key=lambda p: int(p.parent.name.split("_")[-1]) if p.parent.name.split("_")[-1].isdigit() else 0):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(float(row.get("step") or "nan"))
                except ValueError:
                    continue
                for key, raw in row.items():
                    if key in ("step", "epoch") or raw in ("", None):
                        continue
                    try:
                        value = float(raw)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        series.setdefault(key, {})[step] = value
    return {k: sorted(v.items()) for k, v in series.items()}


def plot_curves(run_dir: str | Path, title: str | None = None) -> Path | None:
    """Write RUN/curves.png (three panels: train loss, dev metrics, learning rates); None when nothing was logged."""
    from speechfuse.experiments.report import save_figure

    series = read_logged(run_dir)
    loss = {k: v for k, v in series.items() if k.startswith("train/")}
    dev = {k: v for k, v in series.items() if k.startswith("dev/")}
    rates = {k: v for k, v in series.items() if k.startswith("lr-")}
    if not (loss or dev or rates):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [(axes[0], loss, "training loss", False), (axes[1], dev, "dev metrics", False),
              (axes[2], rates, "learning rate", True)]
    for ax, curves, name, log_scale in panels:
        for key, points in sorted(curves.items()):
            steps, values = zip(*points)
            label = key.removeprefix("lr-AdamW/").removeprefix("lr-AdamW")
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label or "all")
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        if log_scale and curves and all(v > 0 for pts in curves.values() for _, v in pts):
            ax.set_yscale("log")
        if curves:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(run_dir) / CURVES_PNG
    save_figure(fig, out)
    plt.close(fig)
    return out


__all__ = ["plot_curves", "read_logged", "CURVES_PNG"]
