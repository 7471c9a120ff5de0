"""Typed options of every component kind: each component class carries an `Options` pydantic model.

    class MyInterface(Interface):
        name = "mine"
        class Options(InterfaceOptions):
            width: int = Field(64, ge=1)

`check_options(MyInterface.Options, {"width": 32}, "interface 'mine'")` returns the validated model or
raises one ConfigError naming each bad option; `load_config` validates the same models, so a typo is
found when the config loads (and a sweep checks every grid combination before its first run).
"""
from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from speechfuse.errors import ConfigError


class ComponentOptions(BaseModel):
    """Base of every component's options: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class StrictOptions(ComponentOptions):
    """Options whose values are taken as given, never converted: an integer option refuses `true` and `2.5`,
    a flag refuses `1` and `"yes"` (a number option takes an integer). Upstreams, the aligner and the
    interfaces use these; task heads take their options leniently (`hidden_dim: "128"` is 128)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def described_as(what: str) -> WrapValidator:
    """`Annotated[Union[...], described_as("'max', 'min' or a positive number")]`: one error saying what the
    value must be, instead of one error per member of the union."""
    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("value_error", "must be {what}", {"what": what}) from None

    return WrapValidator(check)


def option_fields(options: type[BaseModel]) -> list[str]:
    return list(options.model_fields)


def check_options(options: type[BaseModel], values: Mapping[str, Any], owner: str) -> BaseModel:
    """`values` validated by `options`; a ConfigError naming `owner`, every unknown option (with the valid
    ones) and every bad value otherwise."""
    try:
        return options.model_validate(dict(values))
    except ValidationError as err:
        unknown, problems = [], []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(options)"
            if e["type"] == "extra_forbidden":
                unknown.append(key)
            else:
                problems.append(f"option {key}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
        if unknown:
            valid = ", ".join(sorted(option_fields(options))) or "(none)"
            problems.insert(0, f"unknown option(s) {', '.join(unknown)}; valid options: {valid}")
        raise ConfigError(f"{owner}: " + "; ".join(problems)) from None


__all__ = ["ComponentOptions", "StrictOptions", "check_options", "described_as", "option_fields"]
