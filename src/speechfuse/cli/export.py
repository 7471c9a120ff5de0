"""`speechfuse export MODEL --format onnx --out FILE`: TorchScript or ONNX of a trained model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechfuse.errors import SpeechfuseError
from speechfuse.cli.common import add_model, add_out, load_trained_model, no_device, non_negative_number

HELP = "export a trained model (after the upstreams, or --whole) as TorchScript or ONNX"
ONNX_HINT = "pip install 'speechfuse[export]' (setup.sh installs it)"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", help=HELP, parents=[common],
                       description="Export aligner + interface + head of a trained model (a run folder or a model "
                                   "folder) as one graph over the upstreams' hidden states, with dynamic batch and "
                                   "time; writes OUT and OUT.json (inputs, upstream fingerprints, vocabulary or "
                                   "labels). The upstreams stay in PyTorch. With --whole: the whole model, "
                                   "waveforms in (wavs [B,S] zero-padded, wav_lengths [B]), for upstreams that "
                                   "trace (transformers models, whisper-tiny.en, resemblyzer; not speech-embedding); "
                                   "the written graph is first checked against the eager model on two inputs it was "
                                   "not traced on, and refused if it differs.")
    add_model(p)
    add_out(p, "file", "the graph, e.g. fusion.pt or fusion.onnx (and OUT.json beside it)", required=True)
    p.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"],
                   help=f"torchscript (default) or onnx (needs the onnx package: {ONNX_HINT})")
    p.add_argument("--whole", action="store_true",
                   help="export the whole model, audio in (dynamic batch and length; the input checks of the "
                        "upstreams are not in the graph: keep clips within OUT.json's min_samples / max_samples)")
    p.add_argument("--tolerance", type=non_negative_number, default=None,
                   help="--whole: largest max abs difference to the eager model accepted, relative to the output's "
                        "scale (at least 1; default 1e-4)")
    no_device(p, "the graph is traced and checked on the CPU, so the file is the same on every machine; load it "
                 "on any device")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from speechfuse.serving.export import export_fusion, export_whole

    if args.format == "onnx":  # before the model loads
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise SpeechfuseError(f"--format onnx needs the onnx package: {ONNX_HINT}")
    model = load_trained_model(args)
    if args.whole:
        options = {} if args.tolerance is None else {"tolerance": args.tolerance}
        path = export_whole(model, args.out, format=args.format, **options)
    else:
        path = export_fusion(model, args.out, format=args.format)
    summary = {"out": str(path), "sidecar": f"{path}.json", "format": args.format, "whole": args.whole}
    if args.whole:
        summary["checked"] = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))["checked"]
    print(json.dumps(summary, indent=2))
    return 0
