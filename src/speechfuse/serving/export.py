"""Export a FusedModel as TorchScript or ONNX: the part after the upstreams (aligner + interface + head), or
with --whole the whole model, waveform in.

    speechfuse export runs/speaker --format onnx --out fusion.onnx
    export_fusion(model, "fusion.pt", format="torchscript")
    speechfuse export runs/speaker --whole --format onnx --out speaker.onnx
    export_whole(model, "speaker.pt", format="torchscript")

The exported graph takes, per upstream m in the model's order, `hidden_m` [L_m, B, T_m, D_m] float32 (every
layer, as `Upstream.forward` returns it in HiddenStates.hidden) and `lengths_m` [B] int64 (valid frames), and
returns the outputs its task names (`Task.output_axes`, after `Task.serving_outputs`): `out` (CTC logits
[B, T, V] for asr and multilingual_asr, class logits [B, C] for classify) and `out_lengths` [B]; a
verification model returns `embedding` [B, E] (L2-normalised, as `predict` gives it: the cosine score of two
clips is the dot product) and `speaker_cosines` [B, S] (with the training speakers' class vectors). Batch size
and frame counts (a CTC output's frame axis included) are dynamic. The upstreams themselves stay in PyTorch (their own exports are the upstream
projects' business); `export_fusion` writes a JSON sidecar (FILE.json) with the input order, the upstream specs
and fingerprints, and the task state (vocabulary or labels) to decode `out`.

How: the module is traced (torch.jit.trace) on real-shaped hidden states and written as TorchScript, or
handed to the TorchScript-based ONNX exporter (needs the `onnx` package: pip install "speechfuse[export]").
The aligner's length arithmetic is tensor arithmetic, so one trace serves every batch shape;
tests/test_export.py checks that on batches of other sizes than the traced one.

Whole model (`export_whole`): inputs `wavs` [B, S] float32 audio at the model's sample_rate, zero-padded, and
`wav_lengths` [B] int64 (valid samples); outputs as above. Traced on a padded batch of three noise clips; the
upstreams' frame counts are tensor arithmetic (Upstream.frame_lengths), so batch size and length stay dynamic.
Not in the graph: the input checks of Upstream.forward (empty, NaN or over-long clips; the caller must keep
every clip within the sidecar's min_samples and max_samples) and the windowing of long clips (resemblyzer runs
the whole clip at once, which its windows equal). Before anything is written, the serialised graph is loaded
back and run on two inputs the trace never saw (a single clip of another length and a padded batch of two)
against the eager model; a larger difference than the tolerance is an ExportError and nothing is written.
An upstream that cannot be traced (Upstream.export_blocker: speech-embedding runs on onnxruntime) is refused
up front, pointing at the post-upstream export.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import nn

from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.io import write_atomic

if TYPE_CHECKING:
    from speechfuse.fusion.model import FusedModel

FORMATS = ("torchscript", "onnx")
WHOLE_TOLERANCE = 1e-4  # max abs difference to eager, relative to the output's scale (at least 1)


class ExportError(SpeechfuseError):
    """The model cannot be exported as asked, or the export does not reproduce the eager model."""


class FusionGraph(nn.Module):
    """aligner + interface + head over plain tensors: (hidden_0, lengths_0, hidden_1, lengths_1, ...) -> (out,
    out_lengths). Shares the model's modules (no copy)."""

    def __init__(self, model: "FusedModel") -> None:
        super().__init__()
        self.aligner, self.interface, self.head = model.frontend.aligner, model.frontend.interface, model.head
        self.layouts = [(up.frame_rate, up.name) for up in model.frontend.upstreams]
        self.task = model.task

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = [HiddenStates(inputs[2 * m], inputs[2 * m + 1], rate, name)
                  for m, (rate, name) in enumerate(self.layouts)]
        return self.task.serving_outputs(*self.head(*self.interface(self.aligner(states))))


class WholeGraph(nn.Module):
    """The whole model over plain tensors: (wavs [B,S], wav_lengths [B]) -> the same outputs as FusionGraph."""

    def __init__(self, model: "FusedModel") -> None:
        super().__init__()
        self.model = model

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.task.serving_outputs(*self.model(wavs, wav_lengths))


def output_names(model: "FusedModel") -> list[str]:
    return list(model.task.output_axes)


def input_names(model: "FusedModel") -> list[str]:
    return [name for m in range(len(model.frontend.upstreams)) for name in (f"hidden_{m}", f"lengths_{m}")]


def graph_inputs(states: Sequence[HiddenStates]) -> tuple[torch.Tensor, ...]:
    """HiddenStates of every upstream -> the exported graph's flat input tuple."""
    return tuple(t for s in states for t in (s.hidden.float(), s.lengths.long()))


def sample_limits(model: "FusedModel") -> tuple[int, Optional[int]]:
    """(shortest, longest) clip in samples that every upstream takes as it is (longest None: no limit)."""
    ups = model.frontend.upstreams
    return (max(up.min_samples for up in ups),
            min((up.max_samples for up in ups if up.max_samples is not None), default=None))


def noise_batch(model: "FusedModel", seconds: Sequence[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded batch of noise clips, each within sample_limits."""
    shortest, longest = sample_limits(model)
    sizes = [max(int(model.sample_rate * s), shortest) for s in seconds]
    lengths = torch.tensor([min(n, longest) if longest else n for n in sizes])
    gen = torch.Generator().manual_seed(seed)
    wavs = torch.randn(len(seconds), int(lengths.max()), generator=gen) * 0.1
    wavs = wavs * (torch.arange(wavs.shape[1])[None, :] < lengths[:, None])
    return wavs, lengths


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
    if format == "onnx":
        _require("onnx")
    dynamic = {}
    for m in range(len(model.frontend.upstreams)):
        dynamic[f"hidden_{m}"] = {1: "batch", 2: f"frames_{m}"}
        dynamic[f"lengths_{m}"] = {0: "batch"}
    image = _serialise(model, graph, example, format, input_names(model), dynamic)
    write_atomic(out, image)
    write_atomic(Path(f"{out}.json"), json.dumps(_sidecar(model, format, input_names(model)), indent=2) + "\n")
    return out


def export_whole(model: "FusedModel", out: str | os.PathLike, format: str = "torchscript",
                 tolerance: float = WHOLE_TOLERANCE) -> Path:
    """Write the whole model (waveform in) to `out` (+ `out`.json) once the written graph is shown to match the
    eager model on two inputs other than the traced one (see the module doc); returns the path."""
    if format not in FORMATS:
        raise ConfigError(f"export: format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not tolerance >= 0:
        raise ConfigError(f"export --whole: tolerance must be a number >= 0, got {tolerance!r}")
    for up in model.frontend.upstreams:
        why = up.export_blocker()
        if why:
            raise ExportError(f"export --whole: upstream {up.name} cannot be exported: {why}. Export the part after "
                              "the upstreams instead (speechfuse export MODEL without --whole, or export_fusion) "
                              "and run the upstreams in PyTorch")
    if model.device.type != "cpu":
        raise ConfigError(f"export --whole: the model is on {model.device}; export it from the CPU (model.cpu()), "
                          "where the graph is traced and checked")
    if format == "onnx":
        _require("onnx")
        _require("onnxruntime")  # to check the export
    out = Path(out)
    model = model.eval()
    graph = WholeGraph(model).eval()
    names = ["wavs", "wav_lengths"]
    image = _serialise(model, graph, noise_batch(model, (1.2007, 0.9011, 0.6013), seed=0), format, names,
                       {"wavs": {0: "batch", 1: "samples"}, "wav_lengths": {0: "batch"}})
    # two inputs the trace never saw: one clip alone, and a padded batch of two, at other lengths
    # (lengths off every round number of samples, so that frame counts rounded the wrong way show)
    checks = [noise_batch(model, (1.5031,), seed=1), noise_batch(model, (0.7019, 1.0023), seed=2)]
    report = _check_against_eager(graph, image, format, names, checks, tolerance)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, image)
    shortest, longest = sample_limits(model)
    sidecar = {**_sidecar(model, format, names), "whole": True, "min_samples": shortest, "max_samples": longest,
               "checked": {**report, "tolerance": tolerance}}
    write_atomic(Path(f"{out}.json"), json.dumps(sidecar, indent=2) + "\n")
    return out


def _check_against_eager(graph: WholeGraph, image: bytes, format: str, names: list[str],
                         checks: list[tuple[torch.Tensor, torch.Tensor]], tolerance: float) -> dict:
    """Run the serialised graph on `checks` and compare with eager; ExportError when it does not match."""
    if format == "torchscript":
        loaded = torch.jit.load(io.BytesIO(image))
        run = lambda wavs, lengths: [t.numpy() for t in loaded(wavs, lengths)]  # noqa: E731
    else:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as eager runs, and no spinning extra threads
        session = onnxruntime.InferenceSession(image, options, providers=["CPUExecutionProvider"])
        run = lambda wavs, lengths: session.run(None, {names[0]: wavs.numpy(), names[1]: lengths.numpy()})  # noqa: E731
    report = {"lengths": [], "max_abs_diff": []}
    for wavs, lengths in checks:
        where = f"input lengths {lengths.tolist()} samples"
        with torch.no_grad():
            expected = [t.numpy() for t in graph(wavs, lengths)]
            try:
                got = run(wavs, lengths)
            except Exception as err:  # the trace froze a shape of the example: any failure means the same
                raise ExportError(f"export --whole: the {format} graph fails on {where} (it was traced on other "
                                  f"lengths), so it does not generalise; nothing was written. "
                                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
        problem, diff = None, 0.0
        for got_t, expected_t in zip(got, expected):
            if got_t.shape != expected_t.shape:
                problem = f"output shape {got_t.shape} instead of {expected_t.shape}"
            elif not np.issubdtype(expected_t.dtype, np.floating):  # frame counts: exactly
                if not np.array_equal(got_t, expected_t):
                    problem = f"output lengths {got_t.tolist()} instead of {expected_t.tolist()}"
            elif expected_t.size:
                this = float(np.abs(got_t.astype(np.float64) - expected_t).max())
                diff = max(diff, this)
                scale = max(1.0, float(np.abs(expected_t).max()))
                if not this <= tolerance * scale:
                    problem = f"max abs difference {this:.3g} (tolerance {tolerance:g} x {scale:.3g})"
            if problem:
                raise ExportError(f"export --whole: the {format} graph differs from the eager model on {where}: "
                                  f"{problem}; the trace does not generalise beyond its example, so nothing was "
                                  "written. Export the part after the upstreams instead (without --whole)")
        report["lengths"].append(lengths.tolist())
        report["max_abs_diff"].append(diff)
    return report


def _serialise(model: "FusedModel", graph: nn.Module, example: tuple[torch.Tensor, ...], format: str,
               names: list[str], dynamic: dict[str, dict[int, str]]) -> bytes:
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
            torch.onnx.export(graph, example, image, input_names=names, output_names=output_names(model),
                              dynamic_axes={**dynamic, **model.task.output_axes}, dynamo=False, opset_version=17)
    return image.getvalue()


def _sidecar(model: "FusedModel", format: str, inputs: list[str]) -> dict:
    return {"format": format, "inputs": inputs, "outputs": output_names(model),
            "upstreams": model.config_dict()["upstreams"], "task": model.task.state(),
            "sample_rate": model.sample_rate}


def _require(package: str) -> None:
    try:
        __import__(package)
    except ImportError as err:
        raise SpeechfuseError(f"export --format onnx needs the {package} package: pip install 'speechfuse[export]' "
                              "(or use --format torchscript)") from err


__all__ = ["export_fusion", "export_whole", "FusionGraph", "WholeGraph", "ExportError", "graph_inputs",
           "example_states", "output_names", "FORMATS"]
