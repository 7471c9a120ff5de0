"""Single-layer, concatenation and weighted-sum interfaces (SUPERB featurizer and paper-2 baselines)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from speechfuse.errors import ConfigError
from speechfuse.fusion.interfaces.base import Interface, InterfaceOptions, output_projection


class LayerNormOptions(InterfaceOptions):
    layer_norm: bool = False
    """A non-affine layer norm over D on every layer first."""


class LastLayer(Interface):
    """The last layer. With N models their last layers are concatenated (N*D) and projected to output_dim."""

    name = "last"

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        self.projection = output_projection(self.num_models * self.hidden_size, self.output_dim)

    def layer_index(self) -> int:
        return self.num_layers - 1

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        chosen = stack[:, self.layer_index()]  # [N,B,T,D]
        return self.project(torch.cat(list(chosen), dim=-1))


class SingleLayer(LastLayer):
    """Layer `index` (python indexing, negatives allowed); N models as for `last`."""

    name = "layer"

    class Options(InterfaceOptions):
        index: Optional[int] = None
        """The layer (required; negatives count from the last)."""

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        index = self.options["index"]
        if index is None or not -num_layers <= index < num_layers:
            raise ConfigError(f"interface 'layer': option index must be an integer in [{-num_layers}, "
                              f"{num_layers - 1}] for {num_layers} layers, got {index!r}")

    def layer_index(self) -> int:
        return self.options["index"] % self.num_layers


class ConcatProjection(Interface):
    """Concatenate all N*L layers on the feature axis, then Linear(N*L*D -> output_dim)."""

    name = "concat_proj"

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        self.projection = nn.Linear(self.num_models * self.num_layers * self.hidden_size, self.output_dim)

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        n, l, b, t, d = stack.shape
        return self.project(stack.permute(2, 3, 0, 1, 4).reshape(b, t, n * l * d))


class WeightedSum(Interface):
    """softmax(w) over all N*L layers (one scalar each, initialised to 0); optional non-affine layer norm."""

    name = "weighted_sum"
    Options = LayerNormOptions

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        self.layer_norm = self.options["layer_norm"]
        self.weights = nn.Parameter(torch.zeros(self.num_models * self.num_layers))
        self.projection = output_projection(self.hidden_size, self.output_dim)

    def layer_weights(self) -> torch.Tensor:
        """[N, L] softmax weights."""
        return F.softmax(self.weights, dim=0).view(self.num_models, self.num_layers)

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        if self.layer_norm:
            stack = F.layer_norm(stack, (self.hidden_size,))  # a constant: traces to ONNX with dynamic shapes
        weights = self.layer_weights().to(stack.dtype)
        return self.project(torch.einsum("nl,nlbtd->btd", weights, stack))

    def layer_matrix(self) -> tuple[str, torch.Tensor]:
        return "softmax layer weight", self.layer_weights()


def contiguous_groups(num_layers: int, groups: int) -> list[tuple[int, int]]:
    """Split layers 0..L-1 into `groups` contiguous [start, end) runs; earlier groups take the remainder."""
    base, extra = divmod(num_layers, groups)
    bounds, start = [], 0
    for g in range(groups):
        end = start + base + (1 if g < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class GroupedWeightedSum(Interface):
    """Per model: G contiguous layer groups, a softmax-weighted sum in each, all N*G concatenated, Linear -> output_dim."""

    name = "group_ws"

    class Options(InterfaceOptions):
        groups: int = Field(4, ge=1)
        """Contiguous layer groups, at most the number of layers."""

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        groups = self.options["groups"]
        if groups > num_layers:
            raise ConfigError(f"interface 'group_ws': option groups must be an integer in [1, {num_layers}] "
                              f"(the number of layers), got {groups!r}")
        self.groups = contiguous_groups(num_layers, groups)
        self.weights = nn.Parameter(torch.zeros(self.num_models, self.num_layers))
        self.projection = nn.Linear(self.num_models * groups * self.hidden_size, self.output_dim)

    def layer_weights(self) -> torch.Tensor:
        """[N, L]: softmax weights within each group (each group's weights sum to 1)."""
        return torch.cat([F.softmax(self.weights[:, s:e], dim=1) for s, e in self.groups], dim=1)

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        weights = self.layer_weights().to(stack.dtype)
        pooled = [torch.einsum("nl,nlbtd->nbtd", weights[:, s:e], stack[:, s:e]) for s, e in self.groups]
        pooled = torch.stack(pooled, dim=1)  # [N,G,B,T,D]
        n, g, b, t, d = pooled.shape
        return self.project(pooled.permute(2, 3, 0, 1, 4).reshape(b, t, n * g * d))

    def layer_matrix(self) -> tuple[str, torch.Tensor]:
        return "softmax layer weight within its group", self.layer_weights()

    def describe_extra(self) -> dict[str, Any]:
        return {"groups": [list(g) for g in self.groups]}
