"""Export the part of a FusedModel after the upstreams (aligner + interface + head) as TorchScript or ONNX.

    speechfuse export runs/speaker --format onnx --out fusion.onnx
    export_fusion(model, "fusion.pt", format="torchscript")

The exported graph takes, per upstream m in the model's order, `hidden_m` [L_m, B, T_m, D_m] float32 (every
layer, as `Upstream.forward` returns it in HiddenStates.hidden) and `lengths_m` [B] int64 (valid frames), and
returns `out` (CTC logits [B, T, V] for asr, class logits [B, C] for classify) and `out_lengths` [B]; a
verification model returns `embedding` [B, E] (L2-normalised, as `predict` gives it: the cosine score of two
clips is the dot product) and `speaker_cosines` [B, S] (with the training speakers, AS-norm's cohort). Batch size
and frame counts are dynamic. The upstreams themselves stay in PyTorch (their own exports are the upstream
projects' business); `export_fusion` writes a JSON sidecar (FILE.json) with the input order, the upstream specs
and fingerprints, and the task state (vocabulary or labels) to decode `out`.

How: the module is traced (torch.jit.trace) on real-shaped hidden states and written as TorchScript, or
handed to the TorchScript-based ONNX exporter (needs the `onnx` package: pip install "speechfuse[export]").
The aligner's length arithmetic is tensor arithmetic, so one trace serves every batch shape;
tests/test_export.py checks that on batches of other sizes than the traced one.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, SpeechfuseError
from .hidden import HiddenStates
from .runfolder import write_atomic

if TYPE_CHECKING:
    from .model import FusedModel

FORMATS = ("torchscript", "onnx")


class FusionGraph(nn.Module):
    """aligner + interface + head over plain tensors: (hidden_0, lengths_0, hidden_1, lengths_1, ...) -> (out,
    out_lengths). Shares the model's modules (no copy)."""

    def __init__(self, model: "FusedModel") -> None:
        super().__init__()
        self.aligner, self.interface, self.head = model.frontend.aligner, model.frontend.interface, model.head
        self.layouts = [(up.frame_rate, up.name) for up in model.frontend.upstreams]
        self.normalize_embedding = model.task.name == "verify"

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = [HiddenStates(inputs[2 * m], inputs[2 * m + 1], rate, name)
                  for m, (rate, name) in enumerate(self.layouts)]
        out, second = self.head(*self.interface(self.aligner(states)))
        if self.normalize_embedding:
            out = F.normalize(out, dim=-1)
        return out, second


def output_names(model: "FusedModel") -> list[str]:
    return ["embedding", "speaker_cosines"] if model.task.name == "verify" else ["out", "out_lengths"]


def input_names(model: "FusedModel") -> list[str]:
    return [name for m in range(len(model.frontend.upstreams)) for name in (f"hidden_{m}", f"lengths_{m}")]


def graph_inputs(states: Sequence[HiddenStates]) -> tuple[torch.Tensor, ...]:
    """HiddenStates of every upstream -> the exported graph's flat input tuple."""
    return tuple(t for s in states for t in (s.hidden.float(), s.lengths.long()))


def example_states(model: "FusedModel", clips: Optional[Sequence[torch.Tensor]] = None) -> list[HiddenStates]:
    """Upstream outputs of a small padded batch to trace with (default: three noise clips of 0.6-1.2 s)."""
    if clips is None:
        gen = torch.Generator().manual_seed(0)
        rate = model.sample_rate
        clips = [torch.randn(int(rate * s), generator=gen) * 0.1 for s in (1.2, 0.9, 0.6)]
    lengths = torch.tensor([c.numel() for c in clips])
    wavs = torch.zeros(len(clips), int(lengths.max()))
    for row, c in enumerate(clips):
        wavs[row, : c.numel()] = c
    with torch.no_grad():
        return model.frontend.extract(wavs.to(model.device), lengths)


def export_fusion(model: "FusedModel", out: str | os.PathLike, format: str = "torchscript",
                  clips: Optional[Sequence[torch.Tensor]] = None) -> Path:
    """Write the post-upstream graph to `out` (+ `out`.json); returns the path."""
    if format not in FORMATS:
        raise ConfigError(f"export: format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    graph = FusionGraph(model).eval()
    example = graph_inputs(example_states(model, clips))
    image = io.BytesIO()
    # grad mode stays on: under no_grad, nn.TransformerEncoderLayer (cls_pool) takes a fused fast path that
    # has no ONNX equivalent; the trace records the same maths either way
    with warnings.catch_warnings():
        # the shape checks inside the modules turn into constants of the trace (they passed); the graph
        # itself keeps batch and time dynamic
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        # the exporter's generic cautions: our gather indices are clamped to >= 0, and the LSTM's initial
        # states are zeros sized from the input (tests/test_export.py runs other batch sizes than traced)
        warnings.filterwarnings("ignore", message=".*(aten::index operator|batch_size other than 1).*")
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(graph, example, check_trace=False), image)
        else:
            _export_onnx(model, graph, example, image)
    write_atomic(out, image.getvalue())
    sidecar = {"format": format, "inputs": input_names(model), "outputs": output_names(model),
               "upstreams": model.config_dict()["upstreams"], "task": model.task.state(),
               "sample_rate": model.sample_rate}
    write_atomic(Path(f"{out}.json"), json.dumps(sidecar, indent=2) + "\n")
    return out


def _export_onnx(model: "FusedModel", graph: FusionGraph, example: tuple[torch.Tensor, ...],
                 image: io.BytesIO) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so plainly)
    except ImportError as err:
        raise SpeechfuseError("export --format onnx needs the onnx package: pip install 'speechfuse[export]' "
                              "(or use --format torchscript)") from err
    names = input_names(model)
    dynamic = {}
    for m in range(len(model.frontend.upstreams)):
        dynamic[f"hidden_{m}"] = {1: "batch", 2: f"frames_{m}"}
        dynamic[f"lengths_{m}"] = {0: "batch"}
    out, second = output_names(model)
    dynamic[out] = {0: "batch", 1: "frames"} if model.task.name == "asr" else {0: "batch"}
    dynamic[second] = {0: "batch"}
    torch.onnx.export(graph, example, image, input_names=names, output_names=[out, second],
                      dynamic_axes=dynamic, dynamo=False, opset_version=17)


__all__ = ["export_fusion", "FusionGraph", "graph_inputs", "example_states", "output_names", "FORMATS"]
