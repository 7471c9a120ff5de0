"""Runs per second of a sweep trained one run at a time (all threads) vs `jobs` runs at once (threads split).

The demo's digit-ASR setting (its config, head and 50 Hz alignment) on real FSDD speech with the bundled
upstreams: {weighted_sum, hconv} x seeds {0, 1} over whisper-tiny.en, `--steps` steps each. The feature
cache is filled first, untimed, so both sweeps train heads only; each sweep writes into a fresh folder.
Worker start-up (spawning processes, importing torch) is inside the jobs > 1 time.
Prints the wall time of each, their ratio, and each run's dev WER (the two should agree closely: a
different thread count may change the last digits of a sum).

It also times what K candidates trained together on one pass over the cache could share: reading and
collating the cached batches (the `--steps` training batches of one run, through the runner's own loader).
If a run takes R seconds and its batches F of them, K models stepped on each batch would take at best
F + K (R - F) instead of K R: that upper bound is printed for K = 3 (the demo's learning-rate grid).

    python benchmarks/sweep_jobs.py [--jobs 2] [--steps 150] [--upstreams whisper-tiny.en] [--seeds 0,1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine_info, print_table  # noqa: E402

import torch  # noqa: E402

from speechfuse.data.loader import FusionData, load_splits, resolve_cache_dir  # noqa: E402
from speechfuse.experiments.demo import _quiet, demo_config, write_demo_manifests  # noqa: E402
from speechfuse.fusion.model import build_frontend, build_task  # noqa: E402
from speechfuse.cache.fill import fill_config_caches  # noqa: E402
from speechfuse.experiments.sweep import combo_config, run_sweep  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--upstreams", default="whisper-tiny.en")
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args(argv)
    if args.jobs < 2:
        ap.error("--jobs: compare 1 job with 2 or more")
    ups = args.upstreams.split("+")
    grid = {"upstreams": [ups], "interface.name": ["weighted_sum", "hconv"]}
    seeds = [int(s) for s in args.seeds.split(",")]

    print(f"# sweep_jobs: digit ASR (demo settings) on real FSDD, {ups} x {grid['interface.name']} x seeds {seeds}, "
          f"{args.steps} steps per run; 1 job of {torch.get_num_threads()} threads vs {args.jobs} jobs")
    print_machine_info("cpu")
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        root = Path(tmp)
        manifests = write_demo_manifests(root)
        cfg = demo_config("asr", manifests, root / "cache")
        cfg = combo_config(cfg, {"train.max_steps": args.steps, "train.val_every_steps": args.steps,
                                 "upstreams": ups}, str(root / "cache"))
        fill_config_caches(cfg, root / "fill", progress=False)
        fetch = batch_read_seconds(cfg, root / "fetch", args.steps)
        walls, rows = {}, {}
        for jobs in (1, args.jobs):
            start = time.perf_counter()
            rows[jobs] = run_sweep(cfg, grid, root / f"jobs{jobs}", seeds=seeds, progress=False, plots=False,
                                   jobs=jobs)
            walls[jobs] = time.perf_counter() - start
            print(f"  jobs={jobs}: {walls[jobs]:.1f} s", file=sys.stderr, flush=True)

    runs = len(rows[1])
    print("\n| jobs | threads per run | wall s | runs | runs per minute |\n|---|---|---|---|---|")
    for jobs in (1, args.jobs):
        threads = max(1, torch.get_num_threads() // jobs)
        print(f"| {jobs} | {threads} | {walls[jobs]:.1f} | {runs} | {60 * runs / walls[jobs]:.2f} |")
    print(f"\njobs=1 / jobs={args.jobs} wall-time ratio: {walls[1] / walls[args.jobs]:.2f}x\n")
    print_table([(a["run"], a.get("dev_wer"), b.get("dev_wer")) for a, b in zip(rows[1], rows[args.jobs])],
                ["run", "dev WER (jobs=1)", f"dev WER (jobs={args.jobs})"])
    per_run = walls[1] / runs
    k = 3
    print(f"\nreading and collating one run's {args.steps} cached training batches: {fetch:.2f} s of a run's "
          f"{per_run:.1f} s ({100 * fetch / per_run:.1f} %); K={k} models stepped on one pass could at best take "
          f"{fetch + k * (per_run - fetch):.1f} s instead of {k * per_run:.1f} s: "
          f"{k * per_run / (fetch + k * (per_run - fetch)):.2f}x")


def batch_read_seconds(cfg, run_dir: Path, steps: int) -> float:
    """Seconds to read and collate `steps` training batches from the cache through the runner's loader."""
    task = build_task(cfg)
    frontend = build_frontend(cfg)
    splits = load_splits(cfg, run_dir, task.target_field)
    task.fit(splits["train"])
    data = FusionData(cfg, task, splits, frontend, resolve_cache_dir(cfg, run_dir), None)
    data.setup()
    start, seen = time.perf_counter(), 0
    while seen < steps:
        for _ in data.train_dataloader():
            seen += 1
            if seen == steps:
                break
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
