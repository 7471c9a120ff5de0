"""Per-(model, layer) importance by drop-one-layer ablation, one method for every interface.

For each model m and layer l, layer l of model m is replaced (by zeros, or by that layer's mean
vector over the batch's valid frames) and the fuser is run again. The score is the relative change
of the fused features over valid frames, ||f' - f|| / ||f||, or, when `loss_fn(feats, lengths)` is
given, the increase of that loss.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from speechfuse.errors import ConfigError, ShapeError
from speechfuse.fusion.hidden import HiddenStates
from speechfuse.fusion.interfaces import Interface

Fused = tuple[torch.Tensor, torch.Tensor]
_REPLACEMENTS = ("zero", "mean")


def _fuse_and_target(fuser: nn.Module) -> tuple[Callable[[list[HiddenStates]], Fused], Interface | None, str]:
    """(states -> (feats, lengths), the interface to store the result on, which layers are ablated)."""
    if isinstance(fuser, Interface):
        return fuser, fuser, "aligned layers"
    if hasattr(fuser, "fuse") and isinstance(getattr(fuser, "interface", None), Interface):
        return fuser.fuse, fuser.interface, "upstream layers (before alignment)"
    raise ConfigError(f"layer_importance: fuser must be an Interface or a FusionFrontend, got {type(fuser).__name__}")


def _replacement(layer: torch.Tensor, valid: torch.Tensor, replace: str) -> torch.Tensor:
    """layer [B,T,D], valid [B,T] -> the ablated layer; padded frames keep their values."""
    if replace == "zero":
        fill = torch.zeros_like(layer)
    else:
        weights = valid[:, :, None].to(layer.dtype)
        mean = (layer * weights).sum(dim=(0, 1)) / weights.sum().clamp(min=1)
        fill = mean.expand_as(layer)
    return torch.where(valid[:, :, None], fill, layer)


@torch.no_grad()
def layer_importance(
    fuser: nn.Module,
    states: Sequence[HiddenStates],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    replace: str = "zero",
    store: bool = True,
) -> dict[str, Any]:
    """Drop-one-layer importance, `[N][L]` floats plus metadata (JSON-serialisable).

    fuser:   an Interface (states already aligned) or a FusionFrontend (raw upstream states).
    loss_fn: optional (feats, lengths) -> scalar; then the score is loss increase, else relative change.
    replace: "zero" (default) or "mean" (the layer's mean vector over valid frames of the batch).
    store:   keep the result on the interface so its describe() reports it.
    Runs in eval mode (restored afterwards) so dropout / Gumbel noise do not blur the scores.
    """
    if replace not in _REPLACEMENTS:
        raise ConfigError(f"layer_importance: unknown replace {replace!r}; valid: {', '.join(_REPLACEMENTS)}")
    if len(states) == 0:
        raise ShapeError("layer_importance: got no HiddenStates")
    fuse, interface, space = _fuse_and_target(fuser)
    was_training = fuser.training
    fuser.eval()
    try:
        base, lengths = fuse(list(states))
        frame_mask = (torch.arange(base.shape[1], device=base.device)[None, :] < lengths.to(base.device)[:, None])
        base_valid = base[frame_mask]
        base_norm = base_valid.norm().clamp(min=1e-12)
        base_loss = float(loss_fn(base, lengths)) if loss_fn is not None else None
        scores: list[list[float]] = []
        for m, s in enumerate(states):
            hidden = s.hidden.clone()
            mask = s.padding_mask()
            row = []
            for layer in range(s.num_layers):
                original = hidden[layer].clone()
                hidden[layer] = _replacement(original, mask, replace)
                trial = list(states)
                trial[m] = HiddenStates(hidden, s.lengths, s.frame_rate, s.name)
                feats, _ = fuse(trial)
                if loss_fn is None:
                    row.append(float((feats[frame_mask] - base_valid).norm() / base_norm))
                else:
                    row.append(float(loss_fn(feats, lengths)) - base_loss)
                hidden[layer] = original
            scores.append(row)
    finally:
        fuser.train(was_training)
    total = sum(max(v, 0.0) for row in scores for v in row)
    result = {
        "method": "drop_one_layer",
        "replace": replace,
        "measure": "loss_increase" if loss_fn is not None else "relative_feature_change",
        "layers": space,
        "models": [s.name for s in states],
        "num_layers": [s.num_layers for s in states],
        "baseline_loss": base_loss,
        "importance": scores,
        "share": [[max(v, 0.0) / total if total > 0 else 0.0 for v in row] for row in scores],
    }
    if store and interface is not None:
        interface.importance = result
    return result
