"""Hierarchical Convolution over the layer axis (paper 2) and its multi-model forms (paper 1)."""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from speechfuse.errors import ConfigError
from speechfuse.fusion.interfaces.base import Interface, output_projection
from speechfuse.fusion.interfaces.basic import LayerNormOptions

KERNEL, STRIDE, PADDING = 5, 3, 2


def hconv_layer_sizes(num_layers: int) -> list[int]:
    """Layer-axis size after each conv; there are floor(log_3 L) convs (integer loop, no float log)."""
    sizes, size, power = [], num_layers, STRIDE
    while power <= num_layers:
        size = (size + 2 * PADDING - KERNEL) // STRIDE + 1
        sizes.append(size)
        power *= STRIDE
    return sizes


class HConvStack(nn.Module):
    """Conv1d blocks along the layer axis, D as channels, ReLU after each (the last included).

    The convs live in `transforms` (an nn.Sequential of Conv1d, ReLU, ...), the same layout as the
    reference implementation, so its state dict loads into this one.
    """

    def __init__(self, in_channels: int, channels: int, num_layers: int, owner: str) -> None:
        super().__init__()
        self.layer_sizes = hconv_layer_sizes(num_layers)
        if not self.layer_sizes:
            raise ConfigError(f"{owner}: hierarchical convolution needs at least {STRIDE} layers, got {num_layers}; "
                              "use weighted_sum / concat_proj, or raise the Aligner's num_layers")
        final = self.layer_sizes[-1]
        if channels // final < 1:
            raise ConfigError(f"{owner}: hidden size {channels} is smaller than the final layer count {final}")
        self.transforms = nn.Sequential()
        for i, _ in enumerate(self.layer_sizes):
            last = i == len(self.layer_sizes) - 1
            self.transforms.append(nn.Conv1d(in_channels if i == 0 else channels,
                                             channels // final if last else channels,
                                             KERNEL, stride=STRIDE, padding=PADDING))
            self.transforms.append(nn.ReLU())
        self.flat_dim = (channels // final) * final

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """[L,B,T,C] -> [B,T,flat_dim]; each frame is convolved on its own."""
        l, b, t, c = stack.shape
        frames = stack.permute(1, 2, 3, 0).reshape(b * t, c, l)
        return self.transforms(frames).reshape(b, t, self.flat_dim)


class HConv(Interface):
    """HConv; N models are summed elementwise first (same parameter count as one model)."""

    name = "hconv"
    Options = LayerNormOptions

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        self.layer_norm = self.options["layer_norm"]
        self.hconv = self._build_stack()
        self.projection = output_projection(self.hconv.flat_dim, self.output_dim)

    def _build_stack(self) -> HConvStack:
        return HConvStack(self.hidden_size, self.hidden_size, self.num_layers, f"interface '{self.name}'")

    def _merge(self, stack: torch.Tensor) -> torch.Tensor:
        return stack.sum(dim=0)

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        if self.layer_norm:
            stack = F.layer_norm(stack, (self.hidden_size,))  # a constant: traces to ONNX with dynamic shapes
        return self.project(self.hconv(self._merge(stack)))

    def describe_extra(self) -> dict[str, Any]:
        return {"conv_layer_sizes": [self.num_layers] + self.hconv.layer_sizes,
                "flattened_dim": self.hconv.flat_dim}


class ConcatHConv(HConv):
    """Concatenate the N stacks on the feature axis (N*D), project back to D, then HConv.

    projection="first_conv" (default): the first conv maps N*D -> D.
    projection="per_layer_linear": one Linear(N*D -> D), shared by all layers, before a plain HConv.
    """

    name = "chconv"

    class Options(LayerNormOptions):
        projection: Literal["first_conv", "per_layer_linear"] = "first_conv"

    def _build_stack(self) -> HConvStack:
        where = self.options["projection"]
        wide = self.num_models * self.hidden_size
        self.layer_projection = nn.Linear(wide, self.hidden_size) if where == "per_layer_linear" else None
        in_channels = wide if where == "first_conv" else self.hidden_size
        return HConvStack(in_channels, self.hidden_size, self.num_layers, f"interface '{self.name}'")

    def _merge(self, stack: torch.Tensor) -> torch.Tensor:
        merged = torch.cat(list(stack), dim=-1)  # [L,B,T,N*D]
        return merged if self.layer_projection is None else self.layer_projection(merged)
