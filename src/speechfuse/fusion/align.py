"""Aligner: bring N models' HiddenStates to one frame rate, length T, layer count L* and hidden size D*.

Rules (also tabulated in docs/align_interfaces.md):

* Time. Model m runs at rate r_m, the target rate is r*. An utterance with n valid frames gets
  ceil(n * r*/r_m) frames (exact rational arithmetic, so 12.5 Hz -> 50 Hz is exactly x4). Output
  frame j sits at time (j + 0.5)/r*, i.e. at source position x = (j + 0.5) * r_m/r* - 0.5 (frame
  centres). Each utterance is resampled over its own valid span only: x is clamped to [0, n-1], so
  padded frames can never leak into valid ones. "interpolate" blends the two neighbouring frames
  linearly, "nearest" takes the closest one.
* Length. Per utterance, "min" keeps the shortest of the N models' resampled lengths (every model is
  trimmed to it); "max" keeps the longest and zero-fills the models that end earlier. T is the
  longest resulting utterance length; frames past an utterance's length are zero.
* Layers. Target layer l sits at source position l * (L_m-1)/(L*-1), so the first and last layers
  are kept exactly. "interpolate" blends linearly, "nearest" rounds half up. L* = 1 takes the last
  layer.
* Dims. A per-model nn.Linear(D_m, D*) where D_m != D*; the only learned part.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, Literal, Sequence, Union

import torch
from pydantic import Field
from torch import nn

from speechfuse.errors import ConfigError, ShapeError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.options import StrictOptions, check_options, described_as

Choice = Union[str, int, float]
Layout = tuple[int, int, float]  # (num_layers, hidden_size, frame_rate)
Extreme = Literal["max", "min"]
Method = Literal["interpolate", "nearest"]
PositiveRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveCount = Annotated[int, Field(ge=1)]


class AlignerOptions(StrictOptions):
    """The Aligner's options (the config's `align` section); see the Aligner's docstring."""

    frame_rate: Annotated[Union[Extreme, PositiveRate], described_as("'max', 'min' or a positive number")] = "max"
    num_layers: Annotated[Union[Extreme, PositiveCount], described_as("'max', 'min' or a whole number >= 1")] = "max"
    hidden_size: Annotated[Union[Extreme, PositiveCount], described_as("'max', 'min' or a whole number >= 1")] = "max"
    time_method: Method = "interpolate"
    layer_method: Method = "interpolate"
    length: Extreme = "min"


def _pick(value: Choice, candidates: Sequence[float]) -> float:
    if value == "max":
        return max(candidates)
    if value == "min":
        return min(candidates)
    return value


def resampled_length(num_frames: int, source_rate: float, target_rate: float) -> int:
    """ceil(n * target/source) with exact rational arithmetic."""
    ratio = Fraction(target_rate) / Fraction(source_rate)
    return math.ceil(num_frames * ratio)


def _time_positions(num_out: int, source_rate: float, target_rate: float, device: torch.device) -> torch.Tensor:
    """Source positions (float64) of output frame centres; not yet clamped."""
    step = float(Fraction(source_rate) / Fraction(target_rate))
    j = torch.arange(num_out, dtype=torch.float64, device=device)
    return (j + 0.5) * step - 0.5


def _layer_index(num_in: int, num_out: int, method: str) -> tuple[list[int], list[int], list[float]]:
    """For each target layer: (lower source layer, upper source layer, weight of the upper one)."""
    low, high, weight = [], [], []
    for layer in range(num_out):
        if num_out == 1:
            numerator, denominator = num_in - 1, 1
        else:
            numerator, denominator = layer * (num_in - 1), num_out - 1
        base, rest = divmod(numerator, denominator)
        if method == "nearest":
            base, rest = (base + 1 if 2 * rest >= denominator else base), 0
        low.append(base)
        high.append(min(base + 1, num_in - 1))
        weight.append(rest / denominator)
    return low, high, weight


class Aligner(nn.Module):
    """Make N models' HiddenStates stackable: same L*, T, D* and frame rate, exact lengths.

    layouts:      one (num_layers, hidden_size, frame_rate) per model, in the order of forward's input
    frame_rate:   "max" (default) | "min" | Hz
    num_layers:   "max" (default) | "min" | int
    hidden_size:  "max" (default) | "min" | int
    time_method:  "interpolate" (default, linear over time) | "nearest"
    layer_method: "interpolate" (default, as in the paper) | "nearest"
    length:       "min" (default, trim to the shortest model per utterance) | "max" (zero-pad)
    """

    Options = AlignerOptions

    def __init__(
        self,
        layouts: Sequence[Layout],
        frame_rate: Choice = "max",
        num_layers: Choice = "max",
        hidden_size: Choice = "max",
        time_method: str = "interpolate",
        layer_method: str = "interpolate",
        length: str = "min",
    ) -> None:
        super().__init__()
        if len(layouts) == 0:
            raise ConfigError("Aligner: layouts is empty; give one (num_layers, hidden_size, frame_rate) per model")
        self.layouts: list[Layout] = []
        for i, layout in enumerate(layouts):
            if len(layout) != 3 or int(layout[0]) < 1 or int(layout[1]) < 1 or float(layout[2]) <= 0:
                raise ConfigError(
                    f"Aligner: layout {i} must be (num_layers>=1, hidden_size>=1, frame_rate>0), got {layout!r}"
                )
            self.layouts.append((int(layout[0]), int(layout[1]), float(layout[2])))
        o = check_options(self.Options, dict(frame_rate=frame_rate, num_layers=num_layers, hidden_size=hidden_size,
                                             time_method=time_method, layer_method=layer_method, length=length),
                          "Aligner")
        self.time_method, self.layer_method, self.length = o.time_method, o.layer_method, o.length
        self._frame_rate = float(_pick(o.frame_rate, [l[2] for l in self.layouts]))
        self._num_layers = int(_pick(o.num_layers, [l[0] for l in self.layouts]))
        self._hidden_size = int(_pick(o.hidden_size, [l[1] for l in self.layouts]))
        self.options = dict(frame_rate=frame_rate, num_layers=num_layers, hidden_size=hidden_size,
                            time_method=time_method, layer_method=layer_method, length=length)
        self.projections = nn.ModuleDict({
            str(m): nn.Linear(d, self._hidden_size) for m, (_, d, _) in enumerate(self.layouts) if d != self._hidden_size
        })

    @classmethod
    def from_upstreams(cls, upstreams: Sequence, **options) -> "Aligner":
        check_options(cls.Options, options, "Aligner")
        layouts = [(u.num_layers, u.hidden_size, u.frame_rate) for u in upstreams]
        return cls(layouts, **options)

    @property
    def num_models(self) -> int:
        return len(self.layouts)

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def frame_rate(self) -> float:
        return self._frame_rate

    def resampled_lengths(self, lengths: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N,B]: each model's own per-utterance lengths at the target rate.

        ceil(n * p/q) as integer tensor arithmetic (exact, and a trace of it stays valid for other lengths);
        rates whose exact ratio has huge terms (e.g. 49.9 Hz in binary) take the Python-integer path."""
        rows = []
        for lens, (_, _, rate) in zip(lengths, self.layouts):
            ratio = Fraction(self._frame_rate) / Fraction(rate)
            p, q = ratio.numerator, ratio.denominator
            if max(p, q) < 2 ** 31:
                rows.append((lens.long() * p + (q - 1)) // q)
            else:
                rows.append(torch.tensor([resampled_length(int(n), rate, self._frame_rate) for n in lens.tolist()],
                                         dtype=torch.long, device=lens.device))
        return torch.stack(rows)

    def _validate(self, states: Sequence[HiddenStates]) -> None:
        if len(states) != self.num_models:
            raise ShapeError(f"Aligner was built for {self.num_models} models but got {len(states)} HiddenStates")
        batch = states[0].batch_size
        for m, (s, (layers, dim, rate)) in enumerate(zip(states, self.layouts)):
            who = f"Aligner input {m} ('{s.name}')"
            if s.batch_size != batch:
                raise ShapeError(f"{who}: batch size {s.batch_size} != {batch} of input 0; feed one batch to all models")
            if s.num_layers != layers or s.hidden_size != dim:
                raise ShapeError(
                    f"{who}: got {s.num_layers} layers x {s.hidden_size} dims but the layout says {layers} x {dim}; "
                    "build the Aligner from the same upstreams, in the same order"
                )
            if not math.isclose(s.frame_rate, rate, rel_tol=1e-9):
                raise ShapeError(f"{who}: frame rate {s.frame_rate} Hz but the layout says {rate} Hz")
            if (s.lengths < 0).any() or (s.lengths > s.num_frames).any():
                raise ShapeError(f"{who}: lengths {s.lengths.tolist()} must lie in [0, T={s.num_frames}]")

    def _resample_time(self, hidden: torch.Tensor, lengths: torch.Tensor, rate: float,
                       num_out: torch.Tensor) -> torch.Tensor:
        """[L,B,T,D] at `rate` -> [L,B,num_out,D] at the target rate, each utterance over its valid span.
        num_out is a 0-dim tensor (so a trace keeps it dynamic)."""
        if rate == self._frame_rate and self.length == "min":
            return hidden[:, :, :num_out]  # "min": num_out <= this model's longest length <= T
        if rate == self._frame_rate and not torch.jit.is_tracing() and int(num_out) <= hidden.shape[2]:
            # eager, same rate: a slice, not a gather (frames past each utterance's end are zeroed by forward)
            return hidden[:, :, :int(num_out)]
        device = hidden.device
        pos = _time_positions(num_out, rate, self._frame_rate, device)[None, :]  # [1,T']
        last = (lengths.to(device).clamp(min=1) - 1).to(torch.float64)[:, None]  # [B,1]
        pos = torch.minimum(pos.clamp(min=0.0), last)  # [B,T']
        batch_index = torch.arange(hidden.shape[1], device=device)[:, None]
        if self.time_method == "nearest":
            index = torch.floor(pos + 0.5).long()
            return hidden[:, batch_index, index]
        low = torch.floor(pos)
        weight = (pos - low).to(hidden.dtype)[None, :, :, None]
        low = low.long()
        high = torch.minimum(low + 1, last.long())
        return hidden[:, batch_index, low] * (1 - weight) + hidden[:, batch_index, high] * weight

    def _resample_layers(self, hidden: torch.Tensor, num_in: int) -> torch.Tensor:
        """num_in: the layout's layer count (checked against hidden in _validate); a plain int even while
        tracing, where hidden.shape[0] would be a traced value."""
        if num_in == self._num_layers:
            return hidden
        low, high, weight = _layer_index(num_in, self._num_layers, self.layer_method)
        w = torch.tensor(weight, dtype=hidden.dtype, device=hidden.device)[:, None, None, None]
        return hidden[low] * (1 - w) + hidden[high] * w

    def forward(self, states: Sequence[HiddenStates]) -> list[HiddenStates]:
        self._validate(states)
        own_lengths = self.resampled_lengths([s.lengths for s in states])
        lengths = own_lengths.min(dim=0).values if self.length == "min" else own_lengths.max(dim=0).values
        num_frames = lengths.max() if lengths.numel() else torch.zeros((), dtype=torch.long)
        aligned = []
        for m, (s, (layers, _, rate)) in enumerate(zip(states, self.layouts)):
            hidden = self._resample_layers(s.hidden, layers)
            hidden = self._resample_time(hidden, s.lengths, rate, num_frames)
            if str(m) in self.projections:
                hidden = self.projections[str(m)](hidden)
            # zero every frame past this model's own (resampled) end and past the common length
            end = torch.minimum(own_lengths[m], lengths).to(hidden.device)
            valid = torch.arange(num_frames, device=hidden.device)[None, :] < end[:, None]
            hidden = torch.where(valid[None, :, :, None], hidden, hidden.new_zeros(()))
            aligned.append(HiddenStates(hidden, lengths.clone(), self._frame_rate, s.name))
        return aligned

    def extra_repr(self) -> str:
        return (f"models={self.num_models}, layouts={self.layouts} -> L*={self._num_layers}, "
                f"D*={self._hidden_size}, rate={self._frame_rate} Hz, time={self.time_method}, "
                f"layers={self.layer_method}, length={self.length}")
