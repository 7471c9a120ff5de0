"""An interface: the mean over every aligned layer of every model, then dropout and a Linear."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from speechfuse.fusion.interfaces import Interface, InterfaceOptions, register_interface


class MeanLinearOptions(InterfaceOptions):  # output_dim comes with InterfaceOptions
    dropout: float = Field(0.0, ge=0, lt=1)


@register_interface
class MeanLinear(Interface):
    """[N, L, B, T, D] -> mean over N and L -> dropout -> Linear(D -> output_dim)."""

    name = "example_mean_linear"
    Options = MeanLinearOptions

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)  # validates the options
        self.dropout = nn.Dropout(self.options["dropout"])
        self.projection = nn.Linear(self.hidden_size, self.output_dim)

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        return self.project(self.dropout(stack.mean(dim=(0, 1))))

    def layer_matrix(self) -> tuple[str, torch.Tensor]:
        weights = torch.full((self.num_models, self.num_layers), 1.0 / (self.num_models * self.num_layers))
        return "fixed layer weight (a plain mean)", weights
