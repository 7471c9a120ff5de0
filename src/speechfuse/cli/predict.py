"""`speechfuse predict MODEL INPUT... [--out FILE]`: run a trained model over audio files, folders, manifests."""
from __future__ import annotations

import argparse
import json
import sys

from speechfuse.cli.common import add_device, add_model, add_out, load_trained_model, positive_number, torch_device

HELP = "predict with a trained model (prints results, or streams them to --out)"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", help=HELP, parents=[common],
                       description="Run a trained model (a run folder or a model folder) over audio files, folders "
                                   "and manifests. Without --out, prints one JSON result per input. With --out, "
                                   "results are appended to OUT batch by batch, so a killed run loses nothing "
                                   "written and a rerun skips the inputs already in OUT; bad inputs are listed in OUT "
                                   "with the reason; prints a JSON summary, with metrics when a manifest holds "
                                   "references. Exit code: 0 every input predicted, 1 some failed, 3 all failed, 2 a "
                                   "usage or input error (bad --out, model, manifest). A second predict into the same "
                                   "OUT at once is refused (OUT.lock).")
    add_model(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio file, folder of audio files, or manifest (.csv/.jsonl)")
    add_out(p, "file", "the predictions, .jsonl or .csv (default: print them)")
    p.add_argument("--batch-seconds", type=positive_number, default=60.0,
                   help="seconds of padded audio per batch (default 60)")
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.serving.inference import check_output_path, predict_to_file

    if args.out is not None:
        check_output_path(args.out)  # before the model loads
    device = torch_device(args)
    model = load_trained_model(args, device)
    if args.out is not None:
        summary = predict_to_file(model, args.inputs, args.out, batch_seconds=args.batch_seconds)
        print(json.dumps(summary, indent=2))
        return exit_code(summary, f"their rows in {args.out} give the reason")
    return _print_predictions(model, args)


def exit_code(summary: dict, where: str) -> int:
    """0: every input has a prediction; 1: some inputs failed; 3: every input failed (the count on stderr)."""
    failed, total = summary["failed_inputs"], summary["inputs"]
    if not failed:
        return 0
    print(f"speechfuse predict: {failed} of {total} input(s) failed; {where}", file=sys.stderr)
    return 3 if failed == total else 1


def _print_predictions(model, args: argparse.Namespace) -> int:
    """One JSON line per input on stdout, written through a temporary predictions file (same code path as --out)."""
    import tempfile
    from pathlib import Path

    from speechfuse.serving.inference import predict_to_file

    with tempfile.TemporaryDirectory(prefix="speechfuse-predict-") as tmp:
        out = Path(tmp) / "predictions.jsonl"
        summary = predict_to_file(model, args.inputs, str(out), batch_seconds=args.batch_seconds)
        lines = out.read_text(encoding="utf-8").splitlines() if out.is_file() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    return exit_code(summary, "their rows above say why")
