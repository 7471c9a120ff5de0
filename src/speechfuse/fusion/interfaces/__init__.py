"""Interface registry: `build_interface(name, num_layers, hidden_size, num_models=1, output_dim=None, **options)`.

Every interface maps aligned list[HiddenStates] (N x [L,B,T,D]) to (features [B,T,D_out], lengths [B]).
"""
from __future__ import annotations

from typing import Any

from speechfuse.errors import ConfigError
from speechfuse.registry import Registry
from speechfuse.fusion.interfaces.base import Interface, InterfaceOptions
from speechfuse.fusion.interfaces.basic import ConcatProjection, GroupedWeightedSum, LastLayer, SingleLayer, WeightedSum
from speechfuse.fusion.interfaces.cls_pool import ClsPool
from speechfuse.fusion.interfaces.gumd import GumbelDimensionSelect
from speechfuse.fusion.interfaces.hconv import ConcatHConv, HConv, HConvStack, hconv_layer_sizes

INTERFACES: Registry = Registry("interface", ConfigError)
register_interface = INTERFACES.register
for _cls in (LastLayer, SingleLayer, WeightedSum, HConv, ConcatHConv, ConcatProjection, GroupedWeightedSum, ClsPool,
             GumbelDimensionSelect):
    register_interface(_cls)


def list_interfaces() -> list[str]:
    return INTERFACES.names()


def interface_options(name: str) -> dict[str, Any]:
    """The options `name` accepts besides output_dim (which every interface takes), with their defaults."""
    fields = INTERFACES.get(name).Options.model_fields
    return {key: field.default for key, field in fields.items() if key != "output_dim"}


def build_interface(name: str, num_layers: int, hidden_size: int, num_models: int = 1,
                    output_dim: int | None = None, **options: Any) -> Interface:
    return INTERFACES.get(name)(num_layers, hidden_size, num_models, output_dim, **options)


__all__ = ["Interface", "InterfaceOptions", "build_interface", "list_interfaces", "register_interface", "interface_options", "HConvStack", "hconv_layer_sizes"]
