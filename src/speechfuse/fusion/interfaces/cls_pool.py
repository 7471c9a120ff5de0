"""CLS pooling along the layer axis (paper 2): per frame, a Transformer layer over [CLS, N*L layer vectors]."""
from __future__ import annotations

from typing import Any, Optional

import torch
from pydantic import Field
from torch import nn

from speechfuse.errors import ConfigError
from speechfuse.fusion.interfaces.base import Interface, InterfaceOptions, output_projection


class ClsPool(Interface):
    """Each frame's N*L layer vectors plus a learnable CLS token, with a learnable position embedding per
    slot (attention alone cannot tell layers apart), go through one nn.TransformerEncoderLayer; the CLS
    output is the feature. Options: num_heads (default: the largest of 8, 4, 2, 1 dividing D),
    ffn_dim (default 4*D), dropout (default 0.0)."""

    name = "cls_pool"

    class Options(InterfaceOptions):
        num_heads: Optional[int] = Field(None, ge=1)
        ffn_dim: Optional[int] = Field(None, ge=1)
        dropout: float = Field(0.0, ge=0, lt=1)

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        d = self.hidden_size
        heads = self.options["num_heads"]
        if heads is None:
            heads = next(h for h in (8, 4, 2, 1) if d % h == 0)
            self.options["num_heads"] = heads
        if d % heads:
            raise ConfigError(f"interface 'cls_pool': num_heads must be a positive divisor of hidden size {d}, "
                              f"got {heads!r}")
        ffn = self.options["ffn_dim"]
        if ffn is None:
            ffn = 4 * d
            self.options["ffn_dim"] = ffn
        dropout = self.options["dropout"]
        self.cls_token = nn.Parameter(torch.randn(d) * 0.02)
        self.slot_embedding = nn.Parameter(torch.randn(1 + self.num_models * self.num_layers, d) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(d, heads, dim_feedforward=ffn, dropout=float(dropout),
                                                  batch_first=True)
        self.projection = output_projection(d, self.output_dim)

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        n, l, b, t, d = stack.shape
        slots = stack.permute(2, 3, 0, 1, 4).reshape(b * t, n * l, d)
        cls = self.cls_token.to(stack.dtype).expand(b * t, 1, d)
        tokens = torch.cat([cls, slots], dim=1) + self.slot_embedding.to(stack.dtype)
        return self.project(self.encoder(tokens)[:, 0].reshape(b, t, d))
