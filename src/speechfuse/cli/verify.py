"""`speechfuse verify MODEL A B` or `speechfuse verify MODEL --trials LIST --out FILE`: score verification trials."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechfuse.errors import SpeechfuseError
from speechfuse.cli.common import add_device, add_model, add_out, load_trained_model, positive_number, torch_device

HELP = "score speaker verification trials with a trained model"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("verify", help=HELP, parents=[common],
                       description="Score trials with a verification model (a run folder or a model folder). With "
                                   "two clips A B it prints the trial's score, threshold and decision as JSON. With "
                                   "--trials it scores a trial list: 'LABEL ENROL TEST' lines (VoxCeleb1's "
                                   "veri_test2.txt, label 1 = same speaker) or 'ENROL TEST' lines without labels, "
                                   "paths relative to --root (default: the list's folder). One row per trial is "
                                   "appended to OUT chunk by chunk, so a killed run loses nothing written and a "
                                   "rerun skips the trials already in OUT; a trial with a missing or unreadable "
                                   "file is written with its error. Prints a JSON summary, with EER, minDCF and the "
                                   "accuracy of the decisions at the model's threshold when the list has labels.")
    add_model(p)
    p.add_argument("clips", nargs="*", metavar="CLIP", help="two audio files, A (enrol) and B (test)")
    p.add_argument("--trials", help="a trial list to score instead of A B")
    p.add_argument("--root", help="folder the trial list's paths are relative to (default: the list's folder)")
    add_out(p, "file", "the scores of --trials, .jsonl or .csv")
    p.add_argument("--batch-seconds", type=positive_number, default=60.0,
                   help="seconds of new audio embedded per chunk of trials (default 60)")
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.serving.inference import check_output_path
    from speechfuse.serving.verify_trials import require_verification_model, verify_pair, verify_to_file

    if args.trials is None and len(args.clips) != 2:
        raise SpeechfuseError(f"give two clips (A B) or --trials FILE, got {len(args.clips)} clip(s)")
    if args.trials is not None:
        if args.clips:
            raise SpeechfuseError(f"give two clips (A B) or --trials FILE, not both (clips: {' '.join(args.clips)})")
        if args.out is None:
            raise SpeechfuseError("--trials needs --out scores.jsonl (or .csv)")
        check_output_path(args.out, "verify")  # before the model loads
        if not Path(args.trials).is_file():
            raise SpeechfuseError(f"--trials {args.trials}: trial list not found; give one ('LABEL ENROL TEST' or "
                                  "'ENROL TEST' lines)")
    elif args.out is not None or args.root is not None:
        raise SpeechfuseError("--out and --root go with --trials; one pair A B prints its score")
    device = torch_device(args)
    model = load_trained_model(args, device)
    require_verification_model(model, args.model)
    if args.trials is None:
        result = verify_pair(model, args.clips[0], args.clips[1], batch_seconds=args.batch_seconds)
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(json.dumps(verify_to_file(model, args.trials, args.out, root=args.root,
                                        batch_seconds=args.batch_seconds), indent=2))
    return 0
