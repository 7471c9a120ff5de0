"""`speechfuse table SWEEP... --out table.md`: merge finished sweeps into the paper's table."""
from __future__ import annotations

import argparse
import json

from speechfuse.cli.common import add_out, no_device

HELP = "merge finished sweeps into the paper's table"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("table", help=HELP, parents=[common],
                       description="Merge finished sweeps into one table in the paper's layout: rows upstream set x "
                                   "interface, columns LibriSpeech WER, ML-SUPERB mono CER, multi CER, VoxCeleb1 EER, "
                                   "IEMOCAP accuracy (%, test split). Each run's column follows its task; IEMOCAP "
                                   "folds and ML-SUPERB monolingual languages are averaged. Writes OUT and OUT with "
                                   ".csv (full precision, counts); prints the rows as JSON.")
    p.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR", help="folders written by `speechfuse sweep`")
    add_out(p, "file", "the Markdown table, e.g. table.md (and OUT with .csv)", required=True)
    no_device(p, "it reads the sweeps' result files; no model runs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.experiments.table import paper_table

    print(json.dumps(paper_table(args.sweeps, args.out), indent=2, ensure_ascii=False))
    return 0
