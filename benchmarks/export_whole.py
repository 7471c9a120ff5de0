"""Whole-model export (`speechfuse export --whole`): eager vs TorchScript vs onnxruntime, latency and parity.

For each bundled upstream that traces (whisper-tiny.en in trim and pad30 mode, resemblyzer), a digit classifier
(hconv + a linear head; untrained: latency and parity do not depend on the trained weights) is exported whole
as TorchScript and ONNX (`export_whole`, which itself checks two noise inputs). Then, on real FSDD clips one at
a time (batch 1, each its own length), the three run interleaved in one process: the table gives the median
latency per clip, each export's ratio to eager, and the max abs difference of the class logits to eager over
those clips. speech-embedding is listed as refused (it runs on onnxruntime outside PyTorch). CPU only: the
export is traced and checked on the CPU.

    python benchmarks/export_whole.py [--clips 12] [--repeat 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FSDD_DIR, add_device_arg, get_device, print_machine_info, print_table, timeit_interleaved  # noqa: E402

UPSTREAMS = [("whisper-tiny.en", {"whisper_mode": "trim"}), ("whisper-tiny.en", {"whisper_mode": "pad30"}),
             ("resemblyzer", {}), ("speech-embedding", {})]


def digit_classifier(spec: str, options: dict, utts: list):
    from speechfuse.config import config_from_dict
    from speechfuse.fusion.model import FusedModel, build_task

    cfg = config_from_dict({"task": "classify", "data": {"train": "x.csv", "dev": "x.csv"},
                            "upstreams": [{"spec": spec, "options": options}], "interface": {"name": "hconv"}})
    torch.manual_seed(0)
    return FusedModel.from_config(cfg, build_task(cfg).fit(utts)).eval()


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if get_device(args).type != "cpu":
        raise SystemExit("export_whole.py measures the CPU export only (the graph is traced and checked on the CPU)")

    import onnxruntime

    from speechfuse.data import Utterance
    from speechfuse.serving.export import ExportError, export_whole
    from speechfuse.cache.extract import load_audio_batch

    every = sorted(FSDD_DIR.glob("*.flac"))
    paths = every[:: max(1, len(every) // args.clips)][:args.clips]
    utts = [Utterance(id=str(i), path=str(p), label=p.name[0]) for i, p in enumerate(paths)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, options in UPSTREAMS:
            name = spec + "".join(f" {v}" for v in options.values())
            model = digit_classifier(spec, options, utts)
            clips = [load_audio_batch([u], model.sample_rate) for u in utts]
            try:
                scripted = torch.jit.load(str(export_whole(model, Path(tmp) / "m.pt")))
                session_options = onnxruntime.SessionOptions()
                session_options.intra_op_num_threads = torch.get_num_threads()
                session = onnxruntime.InferenceSession(str(export_whole(model, Path(tmp) / "m.onnx", format="onnx")),
                                                       session_options, providers=["CPUExecutionProvider"])
            except ExportError as err:
                why = model.frontend.upstreams[0].export_blocker() or str(err)
                rows.append([name, "refused", "", "", "", "", "", why.split(",")[0]])
                continue
            runs = {"eager": lambda w, n: model(w, n)[0].numpy(),
                    "torchscript": lambda w, n: scripted(w, n)[0].numpy(),
                    "onnx": lambda w, n: session.run(None, {"wavs": w.numpy(), "wav_lengths": n.numpy()})[0]}
            with torch.no_grad():
                outputs = {k: [run(w, n) for w, n in clips] for k, run in runs.items()}
                times = timeit_interleaved({k: (lambda run=run: [run(w, n) for w, n in clips])
                                            for k, run in runs.items()}, repeat=args.repeat)
            diff = {k: max(float(np.abs(a - e).max()) for a, e in zip(outputs[k], outputs["eager"]))
                    for k in ("torchscript", "onnx")}
            per_clip = {k: t.median / len(clips) * 1e3 for k, t in times.items()}
            rows.append([name, per_clip["eager"], per_clip["torchscript"], per_clip["torchscript"] / per_clip["eager"],
                         per_clip["onnx"], per_clip["onnx"] / per_clip["eager"],
                         f"{diff['torchscript']:.2g} / {diff['onnx']:.2g}", ""])
    print_machine_info("cpu")
    print(f"{len(paths)} real FSDD clips, batch 1, median of {args.repeat} interleaved repeats")
    print_table(rows, ["upstream", "eager ms/clip", "torchscript ms/clip", "ts / eager", "onnxruntime ms/clip",
                       "ort / eager", "max abs diff ts / ort", "note"])


if __name__ == "__main__":
    main()
