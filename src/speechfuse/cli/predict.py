"""`speechfuse predict MODEL INPUT... [--out FILE]`: run a trained model over audio files, folders, manifests."""
from __future__ import annotations

import argparse
import json

from .common import add_device, torch_device

HELP = "predict with a trained model (prints results, or streams them to --out)"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", help=HELP, parents=[common],
                       description="Run a trained model (a run folder or a model folder) over audio files, folders "
                                   "and manifests. Without --out, prints one JSON result per input. With --out, "
                                   "results are appended to OUT batch by batch, so a killed run loses nothing "
                                   "written and a rerun skips the inputs already in OUT; bad inputs are listed in OUT "
                                   "with the reason; prints a JSON summary, with metrics when a manifest holds "
                                   "references.")
    p.add_argument("model", metavar="MODEL", help="a run folder (uses its model/) or a model folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio file, folder of audio files, or manifest (.csv/.jsonl)")
    p.add_argument("--out", help="predictions file: .jsonl or .csv (default: print the predictions)")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="seconds of padded audio per batch (default 60)")
    add_device(p)
    p.add_argument("--allow-changed-upstreams", action="store_true",
                   help="load even if an upstream's weights differ from those the model was trained with")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..inference import check_output_path, predict_to_file
    from ..model import load_model

    if args.out is not None:
        check_output_path(args.out)  # before the model loads
    device = torch_device(args)
    model = load_model(args.model, device=device, allow_changed_upstreams=args.allow_changed_upstreams)
    if args.out is not None:
        print(json.dumps(predict_to_file(model, args.inputs, args.out, batch_seconds=args.batch_seconds), indent=2))
        return 0
    return _print_predictions(model, args)


def _print_predictions(model, args: argparse.Namespace) -> int:
    """One JSON line per input on stdout, written through a temporary predictions file (same code path as --out)."""
    import tempfile
    from pathlib import Path

    from ..inference import predict_to_file

    with tempfile.TemporaryDirectory(prefix="speechfuse-predict-") as tmp:
        out = Path(tmp) / "predictions.jsonl"
        summary = predict_to_file(model, args.inputs, str(out), batch_seconds=args.batch_seconds)
        lines = out.read_text(encoding="utf-8").splitlines() if out.is_file() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if summary.get("failed"):
        import sys

        print(f"speechfuse predict: {summary['failed']} input(s) failed; their rows above say why", file=sys.stderr)
        return 2
    return 0
