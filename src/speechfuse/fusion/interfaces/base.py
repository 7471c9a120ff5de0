"""The Interface contract: aligned list[HiddenStates] (N x [L,B,T,D]) -> (features [B,T,D_out], lengths [B])."""
from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import torch
from pydantic import Field
from torch import nn

from speechfuse.errors import ShapeError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.options import StrictOptions, check_options


class InterfaceOptions(StrictOptions):
    """Options every interface takes; a subclass's `Options` adds its own."""

    output_dim: Optional[int] = Field(None, ge=1)
    """D_out; default: the aligned hidden size."""


class _Layout(StrictOptions):
    """The aligned stack an interface is built for (given by the aligner, not an option)."""

    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_models: int = Field(ge=1)


def output_projection(in_dim: int, output_dim: int) -> nn.Linear | None:
    """A Linear to output_dim only where the interface's natural size differs."""
    return None if in_dim == output_dim else nn.Linear(in_dim, output_dim)


class Interface(nn.Module):
    """Base class. Subclasses set `name`, `Options` (an InterfaceOptions model) and implement `fuse(stack)`.

    `fuse` gets the aligned stacks as one tensor [N,L,B,T,D] and returns [B,T,D_out]. Every
    interface here is per-frame, so padded frames cannot reach valid ones; forward zeroes the
    padded frames of the output.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[InterfaceOptions]] = InterfaceOptions

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__()
        owner = f"interface '{self.name}'"
        layout = check_options(_Layout, dict(num_layers=num_layers, hidden_size=hidden_size, num_models=num_models),
                               owner)
        self.num_layers, self.hidden_size, self.num_models = layout.num_layers, layout.hidden_size, layout.num_models
        checked = check_options(self.Options, {**options, "output_dim": output_dim}, owner).model_dump()
        self.output_dim = checked.pop("output_dim") or self.hidden_size
        self.options: dict[str, Any] = checked  # every option but output_dim, defaults filled in
        self.projection: nn.Linear | None = None
        self.importance: dict | None = None  # set by speechfuse.fusion.importance.layer_importance(store=True)

    # -- subclass hooks ---------------------------------------------------------------------------
    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_matrix(self) -> tuple[str, torch.Tensor] | None:
        """What the interface learned per (model, layer): (what the numbers are, an [N, L] tensor), or None."""
        return None

    def describe_extra(self) -> dict[str, Any]:
        """Interface-specific details for describe()["details"]."""
        return {}

    # -- shared behaviour -------------------------------------------------------------------------
    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.projection is None else self.projection(features)

    def validate(self, states: Sequence[HiddenStates]) -> None:
        if len(states) != self.num_models:
            raise ShapeError(f"interface '{self.name}' was built for {self.num_models} model(s) but got {len(states)}")
        first = states[0]
        for m, s in enumerate(states):
            who = f"interface '{self.name}', model {m} ('{s.name}')"
            if s.num_layers != self.num_layers or s.hidden_size != self.hidden_size:
                raise ShapeError(
                    f"{who}: got {s.num_layers} layers x {s.hidden_size} dims, expected {self.num_layers} x "
                    f"{self.hidden_size}; align the models with speechfuse.Aligner first"
                )
            if s.batch_size != first.batch_size or s.num_frames != first.num_frames:
                raise ShapeError(f"{who}: batch/time {s.batch_size}x{s.num_frames} differ from model 0's "
                                 f"{first.batch_size}x{first.num_frames}; align the models first")
            if not torch.equal(s.lengths.cpu(), first.lengths.cpu()):
                raise ShapeError(f"{who}: lengths {s.lengths.tolist()} differ from model 0's {first.lengths.tolist()}; "
                                 "align the models first")

    def forward(self, states: Sequence[HiddenStates]) -> tuple[torch.Tensor, torch.Tensor]:
        self.validate(states)
        stack = torch.stack([s.hidden for s in states])  # [N,L,B,T,D]
        features = self.fuse(stack)
        valid = states[0].padding_mask()[:, :, None]
        return torch.where(valid, features, features.new_zeros(())), states[0].lengths

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary with the same keys for every interface.

        `layer_matrix` is `[N][L]` numbers the interface learned per (model, layer) (e.g. softmax layer
        weights) with `layer_matrix_kind` saying what they are, both None for interfaces without such
        numbers; `importance` is the stored drop-one-layer result (speechfuse.fusion.importance) or None;
        `details` holds the interface's own extras.
        """
        matrix = self.layer_matrix()
        return {
            "name": self.name,
            "options": dict(self.options),
            "num_models": self.num_models,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "output_dim": self.output_dim,
            "num_parameters": self.num_parameters(),
            "output_projection": None if self.projection is None else
            {"from": self.projection.in_features, "to": self.projection.out_features},
            "layer_matrix": None if matrix is None else matrix[1].detach().float().cpu().tolist(),
            "layer_matrix_kind": None if matrix is None else matrix[0],
            "importance": self.importance,
            "details": self.describe_extra(),
        }

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, models={self.num_models}, layers={self.num_layers}, "
                f"hidden={self.hidden_size}, out={self.output_dim}, options={self.options}")
