"""The budgeted search (`speechfuse search`) against the full grid: training steps spent and the winner's score.

The demo's settings (its config, heads, alignment) on real FSDD speech with the bundled upstreams; or
(`--task multilingual`) configs/espeak_multilingual_asr.yaml on the bundled synthetic 7-language set, every
model aligned to 50 Hz as in the demo. The grid:
the model sets of whisper-tiny.en and resemblyzer ({w}, {r}, {w, r}) x {weighted_sum, hconv, chconv} x 3
interface learning rates = 27 candidates (speech-embedding is left out, as in the demo: at 12.5 Hz it gives
too few frames to spell a digit word with CTC).

- grid: every candidate trains `--steps` steps on the first seed; the best dev metric wins; it then trains
  on the other seeds.
- search: the same candidates as the space, Optuna's grid sampler (each candidate one trial, random order)
  with successive halving on the dev metric every `--val-every` steps (`--reduction-factor`); the best finished
  trial then trains on the other seeds (speechfuse.experiments.search, survivors: 1).
- both winners are compared on the test utterances with the paired bootstrap, their seeds pooled
  (speechfuse.experiments.compare.rank_against_best): "tied" means not distinguishable (p >= 0.05).
Each search writes its own folder (search_<prune-on>_rf<reduction>_s<sampler seed>), so that with `--out` the
grid's finished runs are reused by every search setting. Steps are the selection's: the grid's candidates x steps against the steps the search's trials trained (the
retraining on the other seeds costs the same on both sides). The goal: tied at <= 35 % of the grid's steps.

    python benchmarks/search_vs_grid.py [--task asr|speaker|multilingual] [--steps 600] [--val-every 50] [--seeds 0,1,2]
    python benchmarks/search_vs_grid.py --quick     # speaker ID on 60-clip splits, 8 candidates, 40 steps
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine_info, print_table  # noqa: E402

from speechfuse.config import load_config  # noqa: E402
from speechfuse.experiments.compare import rank_against_best  # noqa: E402
from speechfuse.experiments.demo import _quiet, demo_config, write_demo_manifests  # noqa: E402
from speechfuse.experiments.search import for_task, search, space_from_dict  # noqa: E402
from speechfuse.experiments.sweep import _selection_metric, combo_config, expand_grid, run_name, run_sweep  # noqa: E402
from speechfuse.training.runfolder import RunFolder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_SETS = [["whisper-tiny.en"], ["resemblyzer"], ["whisper-tiny.en", "resemblyzer"]]
INTERFACES = ["weighted_sum", "hconv", "chconv"]
INTERFACE_LRS = [3e-3, 1e-2, 3e-2]
QUICK = {"upstreams": [["whisper-tiny.en"], ["resemblyzer"]], "interface.name": ["weighted_sum", "hconv"],
         "train.interface_lr": [1e-2, 3e-2]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="speaker ID, 60-clip splits, 8 candidates, 40 steps")
    ap.add_argument("--task", choices=["asr", "speaker", "multilingual"], default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--val-every", type=int, default=None)
    ap.add_argument("--reduction-factor", type=int, default=3)
    ap.add_argument("--prune-on", choices=["auto", "metric", "metric_then_loss", "dev_loss"], default="auto",
                    help="what the pruner compares at each dev evaluation (auto: the task's choice, metric_then_loss "
                         "for the CTC tasks; the winner is chosen on the metric)")
    ap.add_argument("--sampler-seed", type=int, default=0, help="the order in which the grid sampler draws the "
                    "candidates")
    ap.add_argument("--seeds", default=None, help="e.g. 0,1,2 (quick: 0,1)")
    ap.add_argument("--workers", type=int, default=1, help="search workers and grid jobs")
    ap.add_argument("--out", default=None, help="keep the folders here (default: a temporary folder)")
    args = ap.parse_args(argv)
    task = args.task or ("speaker" if args.quick else "asr")
    steps = args.steps or (40 if args.quick else 600)
    val_every = args.val_every or (5 if args.quick else 50)
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2")).split(",")]
    grid = dict(QUICK) if args.quick else {"upstreams": UPSTREAM_SETS, "interface.name": INTERFACES,
                                           "train.interface_lr": INTERFACE_LRS}
    candidates = expand_grid(grid)
    print(f"# search_vs_grid: {task} on {'the espeak set' if task == 'multilingual' else 'real FSDD'}{' (quick splits)' if args.quick else ''}, {len(candidates)} "
          f"candidates x {steps} steps, dev every {val_every}, successive halving (reduction {args.reduction_factor}, on the dev {args.prune_on})"
          f", seeds {seeds}")
    print_machine_info("cpu")
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        root = Path(args.out) if args.out else Path(tmp)
        if task == "multilingual":
            cfg = combo_config(load_config(REPO / "configs" / "espeak_multilingual_asr.yaml"),
                               {"align.frame_rate": 50, "align.length": "max"}, str(root / "cache"))
        else:
            cfg = demo_config(task, write_demo_manifests(root, quick=args.quick), root / "cache", quick=args.quick)
        cfg = combo_config(cfg, {"train.max_steps": steps, "train.val_every_steps": val_every,
                                 "train.importance": False}, str(root / "cache"))
        metric, higher = _selection_metric(cfg)

        start = time.perf_counter()
        run_sweep(cfg, grid, root / "grid", seeds=seeds[:1], progress=False, plots=False, jobs=args.workers,
                  threads=1)
        dev = {}
        for combo in candidates:
            name = run_name({**combo, "train.seed": seeds[0]})
            dev[run_name(combo)] = (RunFolder(root / "grid" / "runs" / name).read_metrics().get("dev") or {})[metric]
        grid_best = (max if higher else min)(candidates, key=lambda c: dev[run_name(c)])
        run_sweep(cfg, {k: [v] for k, v in grid_best.items()}, root / "grid", seeds=seeds, progress=False,
                  plots=False, jobs=args.workers, threads=1)
        grid_seconds = time.perf_counter() - start

        start = time.perf_counter()
        space = space_from_dict({"space": grid, "trials": len(candidates), "sampler": "grid", "seeds": seeds,
                                 "survivors": 1, "pruner": "successive_halving", "min_steps": val_every,
                                 "reduction_factor": args.reduction_factor, "prune_on": args.prune_on,
                                 "sampler_seed": args.sampler_seed})
        found = root / f"search_{args.prune_on}_rf{args.reduction_factor}_s{args.sampler_seed}"
        summary = search(cfg, space, found, workers=args.workers, threads=1, progress=False)
        search_seconds = time.perf_counter() - start

        groups = {"grid": [root / "grid" / "runs" / run_name({**grid_best, "train.seed": s}) for s in seeds],
                  "search": [found / "runs" / f"{summary['survivors'][0]}__seed={s}" for s in seeds]}
        marks = rank_against_best(groups)
        test = {k: _pooled_mean(dirs, metric) for k, dirs in groups.items()}

    grid_steps = len(candidates) * steps
    rows = [["grid", run_name(grid_best), f"{test['grid']:.4f}", marks["grid"]["tied_with_best"],
             _p(marks["grid"]), grid_steps, "1.00", f"{grid_seconds:.0f}"],
            ["search", summary["survivors"][0], f"{test['search']:.4f}", marks["search"]["tied_with_best"],
             _p(marks["search"]), summary["trial_steps"], f"{summary['trial_steps'] / grid_steps:.2f}",
             f"{search_seconds:.0f}"]]
    print_table(rows, ["selection", "winner", f"test {metric} (mean over seeds)", "tied with best",
                       "p vs best", "selection steps", "steps / grid", "wall s (incl. seeds)"])
    print(f"search trials: {summary['states']}; pruned on {for_task(space, cfg).prune_on}; sampler seed "
          f"{args.sampler_seed}; folders in {root if args.out else 'a temporary folder'} (grid/, {found.name}/)")


def _pooled_mean(run_dirs: list[Path], metric: str) -> float:
    values = [(RunFolder(d).read_metrics().get("test") or {})[metric] for d in run_dirs]
    return sum(values) / len(values)


def _p(mark: dict) -> str:
    return "" if mark.get("vs_best_p") is None else f"{mark['vs_best_p']:.3f}"


if __name__ == "__main__":
    main()
