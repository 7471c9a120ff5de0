"""Dimension-wise Gumbel-softmax selection over the concatenated features of all models (paper-1 baseline)."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from speechfuse.fusion.interfaces.base import Interface, InterfaceOptions


class GumbelDimensionSelect(Interface):
    """Concatenate all N*L layers (N*L*D features), keep or drop each feature dimension, project to output_dim.

    Each dimension has one keep logit a (initialised to `init_keep_logit`). A two-way Gumbel-softmax
    over (keep, drop) with logits (a, 0) equals sigmoid((a + logistic noise)/tau); training uses its
    straight-through hard mask (forward 0/1, gradient of the soft value). One mask is drawn per forward
    and shared by every frame, so selection is per dimension. tau anneals exponentially from tau_start
    to tau_end over anneal_steps training forwards and then stays at tau_end. At eval the mask is
    deterministic: keep where a >= 0.
    """

    name = "gumd"

    class Options(InterfaceOptions):
        tau_start: float = Field(1.0, gt=0)
        tau_end: float = Field(0.1, gt=0)
        anneal_steps: int = Field(10000, ge=1)
        init_keep_logit: float = 1.0

    def __init__(self, num_layers: int, hidden_size: int, num_models: int = 1, output_dim: int | None = None,
                 **options: Any) -> None:
        super().__init__(num_layers, hidden_size, num_models, output_dim, **options)
        o = self.options
        width = self.num_models * self.num_layers * self.hidden_size
        self.keep_logits = nn.Parameter(torch.full((width,), float(o["init_keep_logit"])))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.projection = nn.Linear(width, self.output_dim)

    def temperature(self) -> float:
        o = self.options
        progress = min(int(self.step), o["anneal_steps"]) / o["anneal_steps"]
        return float(o["tau_start"]) * (float(o["tau_end"]) / float(o["tau_start"])) ** progress

    def mask(self) -> torch.Tensor:
        """[N*L*D] 0/1 mask; straight-through in training, deterministic at eval."""
        hard_eval = (self.keep_logits >= 0).to(self.keep_logits.dtype)
        if not self.training:
            return hard_eval
        uniform = torch.rand_like(self.keep_logits).clamp(1e-6, 1 - 1e-6)
        logistic = torch.log(uniform) - torch.log1p(-uniform)
        soft = torch.sigmoid((self.keep_logits + logistic) / self.temperature())
        hard = (soft >= 0.5).to(soft.dtype)
        self.step += 1
        return hard + soft - soft.detach()

    def fuse(self, stack: torch.Tensor) -> torch.Tensor:
        n, l, b, t, d = stack.shape
        features = stack.permute(2, 3, 0, 1, 4).reshape(b, t, n * l * d)
        return self.project(features * self.mask().to(stack.dtype))

    def kept(self) -> torch.Tensor:
        """[N, L, D] 0/1: the dimensions the eval-time mask keeps."""
        return (self.keep_logits.detach() >= 0).float().view(self.num_models, self.num_layers, self.hidden_size)

    def layer_matrix(self) -> tuple[str, torch.Tensor]:
        return "fraction of dimensions kept", self.kept().mean(dim=2)

    def describe_extra(self) -> dict[str, Any]:
        return {"kept_fraction": float(self.kept().mean()), "temperature": self.temperature(), "step": int(self.step)}
