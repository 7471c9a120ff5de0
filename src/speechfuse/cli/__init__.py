"""The `speechfuse` command line, one module per command (each with its arguments and its `run`).

    speechfuse prepare folder my_recordings/ --out data/        # your own audio: labels from sub-folder names
    speechfuse init --task classify --data data/ --out my.yaml  # a commented config that runs here
    speechfuse train my.yaml --out runs/mine                    # metrics as JSON on stdout
    speechfuse predict runs/mine/model clip.wav                 # one JSON line per input
    speechfuse evaluate runs/mine --split test
    speechfuse compare runs/sweep/runs/a runs/sweep/runs/b --split test
    speechfuse extract configs/fsdd_speaker.yaml --out runs/speaker
    speechfuse sweep configs/fsdd_speaker.yaml --grid interface.name=weighted_sum,hconv --out runs/sweep
    speechfuse sweep configs/fsdd_speaker.yaml --seeds 0,1,2 --out runs/seeds
    speechfuse sweep configs/fsdd_speaker.yaml --seeds 0,1,2 --out runs/seeds --launcher slurm --partition gpu
    speechfuse search configs/fsdd_speaker.yaml --space space.yaml --out runs/search --workers 2
    speechfuse verify runs/vox1 enrol.wav test.wav
    speechfuse export runs/speaker --whole --format onnx --out speaker.onnx
    speechfuse prune runs/speaker --budgets 0.25,0.5,0.75
    speechfuse demo --quick
    speechfuse prepare voxceleb1 /data/VoxCeleb1 --out data/voxceleb1
    speechfuse table runs/ls runs/vox1 runs/iemocap --out table.md
    speechfuse study scaling configs/fsdd_speaker.yaml --depths whisper-tiny.en=3,4,5 --out runs/scaling

One grammar: the config, run or model first, then options; `--set KEY=VALUE` once per key; every command takes
`--threads`, `--quiet`, `--verbose` and `--plugin`; every command that runs a model takes `--device` (the others
say why not in their help); `--out` is always the folder (DIR) or file (FILE) the command writes. Results go to stdout
(JSON, or the table asked for); logs, warnings and progress bars to stderr. Errors in the input print one
clean message and exit with code 2. `predict` exits 0 when every input has a prediction, 1 when some failed
and 3 when all failed. Ctrl-C, SIGTERM and SIGUSR1 exit with 128 + the signal (130, 143, 138) and say how to
resume; during `train` (and each run of a `sweep`) they first finish the step and save a checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys

from speechfuse.errors import SpeechfuseError
from speechfuse.training.interrupt import stop_signals
from speechfuse.cli import (compare, demo, evaluate, export, extract, init, predict, prepare, prune, search, study, sweep,
               table, train, verify)
from speechfuse.cli.common import apply_runtime, common_options

# in the order `speechfuse --help` lists them: the first-hour path first
COMMANDS = (prepare, init, train, predict, evaluate, compare, sweep, search, extract, verify, export, prune, table,
            study, demo)
EPILOG = ("Every command has its own --help. Own data in three commands: speechfuse prepare folder DIR --out data/; "
          "speechfuse init --task classify --data data/ --out my.yaml; speechfuse train my.yaml --out runs/mine")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every command included (the CLI reference of the docs is generated from it)."""
    from speechfuse import __version__

    parser = argparse.ArgumentParser(
        prog="speechfuse", description="Fuse the layers of several pretrained speech models through one "
                                       "trainable interface and train task heads.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"speechfuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for command in COMMANDS:
        command.add_parser(sub, common)
    return parser


# what an interrupted command keeps, and how to go on (train's TrainingInterrupted says it itself)
RESUME_HINTS = {
    "train": "run the same command again to resume from the last checkpoint, if any",
    "sweep": "finished runs are kept and an interrupted run resumes from its last checkpoint: run the same "
             "command again to go on",
    "search": "finished and stopped trials are kept in the study: run the same command again to go on",
    "extract": "the features stored so far are kept: run the same command again to extract the rest",
    "predict": "the rows already written to --out are kept: run the same command again to predict the rest",
    "verify": "the rows already written to --out are kept: run the same command again to score the rest",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 1
    flags_before = {name: os.environ.get(name) for name in ("SPEECHFUSE_QUIET", "SPEECHFUSE_VERBOSE")}
    try:
        apply_runtime(args)
        with stop_signals():  # SIGTERM and SIGUSR1 stop as Ctrl-C does (speechfuse.training.interrupt)
            return args.run(args)
    except SpeechfuseError as err:
        print(f"speechfuse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # train's TrainingInterrupted says what was saved
        message = str(err)
        if not getattr(err, "says_how_to_resume", False) and args.command in RESUME_HINTS:
            message = "; ".join(m for m in (message, RESUME_HINTS[args.command]) if m)
        print(f"speechfuse {args.command}: interrupted" + (f": {message}" if message else ""), file=sys.stderr)
        return getattr(err, "exit_code", 130)
    finally:  # main() may run several times in one process (the tests)
        for name, value in flags_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


__all__ = ["build_parser", "main", "COMMANDS"]
