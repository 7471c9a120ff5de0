"""Interface registry: `build_interface(name, num_layers, hidden_size, num_models=1, output_dim=None, **options)`.

Every interface maps aligned list[HiddenStates] (N x [L,B,T,D]) to (features [B,T,D_out], lengths [B]).
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Interface
from .basic import ConcatProjection, GroupedWeightedSum, LastLayer, SingleLayer, WeightedSum
from .cls_pool import ClsPool
from .gumd import GumbelDimensionSelect
from .hconv import ConcatHConv, HConv, HConvStack, hconv_layer_sizes

_REGISTRY: dict[str, type[Interface]] = {
    cls.name: cls
    for cls in (LastLayer, SingleLayer, WeightedSum, HConv, ConcatHConv, ConcatProjection, GroupedWeightedSum,
                ClsPool, GumbelDimensionSelect)
}


def list_interfaces() -> list[str]:
    return list(_REGISTRY)


def interface_options(name: str) -> dict[str, Any]:
    """The options `name` accepts, with their defaults."""
    return dict(_get(name).OPTIONS)


def _get(name: str) -> type[Interface]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown interface {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build_interface(name: str, num_layers: int, hidden_size: int, num_models: int = 1,
                    output_dim: int | None = None, **options: Any) -> Interface:
    return _get(name)(num_layers, hidden_size, num_models, output_dim, **options)


__all__ = ["Interface", "build_interface", "list_interfaces", "interface_options", "HConvStack", "hconv_layer_sizes"]
