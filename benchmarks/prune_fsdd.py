"""Pruning on FSDD: whisper-tiny.en + resemblyzer under weighted_sum, digit ASR and speaker ID, pruned to budgets
of upstream FLOPs; is the metric within 1 % absolute of the full fused model at half its upstream cost or less?

Each task trains the full fused model with the demo's settings (speechfuse.experiments.demo.demo_config: bundled FSDD, takes
10-24 train / 5-9 dev / 0-4 test, the demo's heads, learning rates and steps, one seed), then runs
`speechfuse.experiments.prune.prune_run` on it once per importance measure (loss, feature; on dev), costs on 8 dev clips,
each budget retrained the same way, and prints the Pareto table and the verdict. Re-running with the same --out resumes (finished runs are reused).

    python benchmarks/prune_fsdd.py --out /tmp/prune_fsdd [--budgets 0.25,0.5,0.75] [--tasks asr,speaker]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine_info  # noqa: E402

UPSTREAMS = ["whisper-tiny.en", "resemblyzer"]
GOAL = 0.01  # absolute difference in the main metric allowed at half the cost or less


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/prune_fsdd")
    parser.add_argument("--budgets", default="0.25,0.5,0.75")
    parser.add_argument("--tasks", default="asr,speaker")
    parser.add_argument("--interface", default="weighted_sum")
    parser.add_argument("--importance", default="loss,feature", help="the importance measures to select by")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these small models lose more to thread hand-offs than they "
                             "gain on a shared 2-core machine)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from speechfuse.config import config_from_dict, config_to_dict
    from speechfuse.experiments.demo import _quiet, demo_config, write_demo_manifests
    from speechfuse.experiments.prune import prune_run
    from speechfuse.experiments.report import markdown_table
    from speechfuse.tasks import Task
    from speechfuse.training.runner import train

    print_machine_info("cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifests = write_demo_manifests(out)
    budgets = [float(b) for b in args.budgets.split(",")]
    verdicts = []
    for task_key in args.tasks.split(","):
        data = config_to_dict(demo_config(task_key, manifests, out / "cache"))
        data["upstreams"] = [{"spec": s, "options": {}} for s in UPSTREAMS]
        data["interface"]["name"] = args.interface
        cfg = config_from_dict(data, source=f"(prune_fsdd {task_key})")
        run = out / task_key / "full"
        start = time.perf_counter()
        rows = []
        with _quiet():
            if not (run / "metrics.json").is_file():
                train(cfg, run)
            for importance in args.importance.split(","):
                rows += prune_run(run, budgets, importance=importance)[0 if not rows else 1:]
        print(f"\n## {task_key}: {' + '.join(UPSTREAMS)}, {args.interface} ({time.perf_counter() - start:.0f} s)\n")
        print(markdown_table(rows))
        task = Task.from_state(json.loads((run / "task.json").read_text()))
        metric, sign = f"test_{task.main_metric}", (1 if task.higher_is_better else -1)
        full = rows[0][metric]
        ok = [r for r in rows[1:] if r["flops_fraction"] <= 0.5 and sign * (full - r[metric]) <= GOAL]
        cheapest = min(ok, key=lambda r: r["flops_fraction"]) if ok else None
        verdicts.append(f"{task_key}: full {metric} {full:.4f}; " + (
            f"goal met at budget {cheapest['budget']}, importance {cheapest['importance']} ({cheapest['kept']}, "
            f"{cheapest['flops_fraction']:.3f} of the FLOPs, {cheapest['seconds_fraction']:.3f} of the seconds): "
            f"{metric} {cheapest[metric]:.4f}"
            if cheapest else "goal NOT met: no pruned model at <= 0.5 of the FLOPs is worse than the full model by "
                             f"{GOAL} or less"))
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
