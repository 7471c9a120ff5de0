"""Score one finished `task: verify` run's best checkpoint four ways, side by side: raw cosines, and AS-norm
against each cohort (class_vectors, speaker_means, utterances). Prints dev and test EER / minDCF as a table.

    speechfuse train configs/fsdd_verify.yaml --out runs/fsdd_verify      # score_norm none (the default)
    python scripts/asnorm_compare.py runs/fsdd_verify [--cohort-top 200]

Every setting scores the same embeddings of the same checkpoint (the one chosen by raw dev EER, which is
also what a run with an embedding cohort keeps: see speechfuse.tasks.verify) on the run's own trial lists;
the embedding cohorts are built from the training split as the runner builds them (`scoring_utterances`,
`fit_scoring`). A run trained with `cohort: class_vectors` picks its checkpoint by normalised dev EER
instead, so it may keep another one.
"""
from __future__ import annotations

import argparse
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from speechfuse.data.loader import FusionData, load_splits, resolve_cache_dir
from speechfuse.data.manifest import clip_limit
from speechfuse.serving.evaluate import collect_records, load_run
from speechfuse.tasks import Task

SETTINGS = [("none", "speaker_means"), ("asnorm", "class_vectors"), ("asnorm", "speaker_means"),
            ("asnorm", "utterances")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished verify run folder")
    parser.add_argument("--cohort-top", type=int, default=None, help="AS-norm top-k (default: the run's, 200)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model, cfg = load_run(args.run)
    if model.task.name != "verify":
        raise SystemExit(f"{args.run} is a {model.task.name!r} run; this script compares verify scoring")
    splits = load_splits(cfg, args.run / "eval", model.task.target_field,
                         max_clip=clip_limit(model.frontend.upstreams))
    frozen = all(not u.trainable for u in model.frontend.upstreams)
    data = FusionData(cfg, model.task, splits, model.frontend, resolve_cache_dir(cfg, args.run) if frozen else None)
    data.setup("test")
    records = {split: collect_records(model, data.loader(split))[0] for split in ("train", "dev", "test")
               if split in splits}
    by_id = {r[0]: r for r in records["train"]}

    rows = []
    for norm, cohort in SETTINGS:
        options = {**model.task.options, "score_norm": norm, "cohort": cohort}
        if args.cohort_top is not None:
            options["cohort_top"] = args.cohort_top
        task = Task.from_state({**model.task.state(), "options": options})
        size = "-"
        if task.needs_cohort:
            task.fit_scoring([by_id[u.id] for u in task.scoring_utterances(splits["train"])])
            size = str(task.cohort.shape[0])
        elif norm == "asnorm":
            size = str(len(task.speakers))
        cells = [norm if norm == "none" else f"asnorm / {cohort}", size]
        for split in ("dev", "test"):
            if split in records:
                m = task.evaluate(records[split], split)
                cells += [f"{m['eer']:.4f}", f"{m['min_dcf_0.01']:.4f}", f"{m['min_dcf_0.05']:.4f}"]
        rows.append(cells)

    top = args.cohort_top or model.task.options["cohort_top"]
    print(f"run {args.run} (best checkpoint), cohort_top {top}; {platform.processor() or platform.machine()}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d}")
    header = ["scoring", "cohort size", "dev EER", "dev minDCF 0.01", "dev minDCF 0.05", "test EER",
              "test minDCF 0.01", "test minDCF 0.05"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
