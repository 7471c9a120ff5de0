"""Markdown references generated from the code, so they cannot drift from it: every config key from the
pydantic models (with the components' own options), and every command and option from the CLI's argparse
parsers. The documentation site (docs/gen_pages.py) writes them as pages.

    config_reference() -> str     # docs page "Config reference"
    cli_reference() -> str        # docs page "CLI reference"
"""
from __future__ import annotations

import argparse
import ast
import enum
import inspect
import json
import re
import textwrap
import typing
from typing import Any, Callable, Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_NONE_TYPE = type(None)
_WORDS = {"str": "string", "int": "integer", "float": "number", "bool": "true | false", "None": "null"}


# ---------------------------------------------------------------------------------------------
# pydantic models -> rows (dotted key, type, default, description)
# ---------------------------------------------------------------------------------------------
def attribute_docstrings(cls: type) -> dict[str, str]:
    """The string literal right below each annotated attribute of `cls` and its bases (the way the config
    models document their fields); the subclass's text wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, BaseModel) or klass.__module__.startswith("pydantic"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside Optional[...]), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def type_name(annotation: Any) -> str:
    """`Optional[int]` -> `int | null`, `Literal['a', 'b']` -> `"a" | "b"`, as a YAML writer reads it."""
    if annotation is _NONE_TYPE or annotation is None:
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple, set):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        if issubclass(annotation, enum.Enum):
            return " | ".join(json.dumps(m.value) for m in annotation)
        return _WORDS.get(annotation.__name__, annotation.__name__)
    if annotation is Any:
        return "any"
    return str(annotation).replace("typing.", "")


def _constraints(field: FieldInfo) -> str:
    words = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "at least", "max_length": "at most"}
    out = []
    for meta in field.metadata:
        for attr, word in words.items():
            value = getattr(meta, attr, None)
            if value is not None:
                unit = (" item" if value == 1 else " items") if "length" in attr else ""
                out.append(f"{word} {value}{unit}")
    return ", ".join(out)


def format_value(value: Any) -> str:
    """A default as it would be written in YAML."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        return json.dumps(value).replace('"', "") if isinstance(value, str) else json.dumps(value)
    except TypeError:
        return repr(value)


def field_default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return format_value(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return format_value(field.default)


def model_rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every field of `model`, nested sections included
    (a nested section's own row comes first, then its keys)."""
    docs = attribute_docstrings(model)
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _nested_model(field.annotation)
        doc = field.description or docs.get(name, "") or (_first_line(nested) if nested is not None else "")
        kind = type_name(field.annotation)
        limits = _constraints(field)
        default = field_default(field)
        if nested is not None and default.startswith("{"):
            default = "see below"
        yield key, f"{kind} ({limits})" if limits else kind, default, doc
        if nested is not None:
            yield from model_rows(nested, f"{key}.")


def component_rows(entry: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    """The options of a registered component (upstream, interface, task), whichever way it declares them:
    a typed `Options` model, an `OPTIONS` dict of defaults, or keyword parameters with defaults."""
    options = getattr(entry, "Options", None)
    if isinstance(options, type) and issubclass(options, BaseModel):
        return list(model_rows(options, prefix))
    defaults = getattr(entry, "OPTIONS", None)
    if isinstance(defaults, dict):
        return [(f"{prefix}{name}", "any" if value is None else type_name(type(value)), format_value(value), "")
                for name, value in defaults.items()]
    rows = []
    try:
        params = inspect.signature(entry).parameters.values()
    except (TypeError, ValueError):
        return rows
    for p in params:
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty:
            if p.annotation is p.empty:
                kind = ""
            elif isinstance(p.annotation, str):  # postponed annotations: the source text
                kind = re.sub(r"\b(str|int|float|bool|None)\b", lambda m: _WORDS[m.group(1)], p.annotation)
            else:
                kind = type_name(p.annotation)
            rows.append((f"{prefix}{p.name}", kind, format_value(p.default), ""))
    return rows


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


def _default_cell(default: str) -> str:
    return default if default in ("required", "see below") else f"`{_cell(default)}`"


def rows_table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {_cell(kind)} | {_default_cell(default)} | {_cell(doc)} |" for key, kind, default, doc in rows]
    return "\n".join(lines)


def _first_line(obj: Any) -> str:
    """The first paragraph of `obj`'s own docstring, on one line."""
    if isinstance(obj, type) and not vars(obj).get("__doc__"):  # not a docstring inherited from a base
        return ""
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def config_reference() -> str:
    """The config reference page: every key of `speechfuse.config.Config`, then the options of every
    registered upstream, interface and task head."""
    from speechfuse.config import Config
    from speechfuse.fusion.interfaces import INTERFACES
    from speechfuse.tasks import TASKS, task_options
    from speechfuse.fusion.upstream import UPSTREAMS
    from speechfuse.fusion.upstream.hf import HFSSLUpstream, HFWhisperUpstream

    out = ["# Config reference", "",
           "Generated from the pydantic models in `speechfuse.config` and the components' own options by "
           "`speechfuse.reference.config_reference()`, so every key a config accepts is listed here. Unknown "
           "keys are an error naming the dotted key. Types are as YAML reads them; `null` means unset.", ""]
    sections = [name for name, field in Config.model_fields.items() if _nested_model(field.annotation)]
    top = [row for row in model_rows(Config) if "." not in row[0]]
    out += ["## Top level", "", rows_table(top), ""]
    for name in sections:
        field = Config.model_fields[name]
        model = _nested_model(field.annotation)
        out += [f"## `{name}`", ""]
        if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
            out += [inspect.cleandoc(model.__doc__), ""]
        out += [rows_table(list(model_rows(model, f"{name}[]." if name == "upstreams" else f"{name}."))), ""]

    out += ["## Upstream options (`upstreams[].options`)", "",
            "Each upstream family takes its own options; `speechfuse.fusion.upstream.load_upstream(spec, **options)` "
            "checks them when the upstream loads.", ""]
    # an hf: checkpoint is typed by its family's class, which its config.json names
    families: list[tuple[str, Callable]] = [("hf:<wav2vec2, HuBERT, WavLM or data2vec-audio>", HFSSLUpstream),
                                            ("hf:<Whisper>", HFWhisperUpstream)]
    families += [(name, UPSTREAMS.get(name)) for name in sorted(UPSTREAMS.names())]
    for spec, entry in families:
        rows = component_rows(entry, "upstreams[].options.")
        out += [f"### `{spec}`", ""]
        desc = _first_line(entry)
        out += [desc, ""] if desc else []
        out += [rows_table(rows) if rows else "Its loader does not declare its options; see "
                "[Upstreams](../concepts/upstreams.md#options) and [Bundled models](../bundled_models.md).", ""]

    out += ["## Interface options (`interface.<option>`)", "",
            "`interface.name` picks the interface; its options sit beside the name "
            "(`interface: {name: chconv, projection: per_layer_linear}`).", ""]
    for name in sorted(INTERFACES.names()):
        entry = INTERFACES.get(name)
        rows = component_rows(entry, "interface.")
        out += [f"### `{name}`", "", _first_line(entry), ""]
        out += [rows_table(rows) if rows else "No options.", ""]

    out += ["## Head options per task (`downstream.<option>`)", "",
            "`downstream` is validated against the task's own options model (`speechfuse.tasks.task_options`).", ""]
    for name in sorted(TASKS.names()):
        out += [f"### `task: {name}`", "", _first_line(TASKS.get(name)) or _first_line(task_options(name)), ""]
        rows = list(model_rows(task_options(name), "downstream."))
        out += [rows_table(rows) if rows else "No options.", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# argparse -> CLI reference
# ---------------------------------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, help) of each subcommand of `parser`, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases point at the same parser
                    seen.add(id(sub))
                    out.append((name, sub, helps.get(name, "")))
    return out


def walk_commands(parser: argparse.ArgumentParser, path: str = "",
                  help_text: str = "") -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """Every (command path, parser, help), the root first, nested subcommands (`study scaling`) included."""
    path = path or parser.prog
    yield path, parser, help_text
    for name, sub, sub_help in _subcommands(parser):
        yield from walk_commands(sub, f"{path} {name}", sub_help)


def expand_help(action: argparse.Action, prog: str) -> str:
    """The help text as `--help` prints it (`%(default)s` filled in, `%%` as `%`)."""
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    try:
        return text % params
    except (KeyError, TypeError, ValueError):
        return text


def _argument_row(action: argparse.Action, prog: str) -> str:
    if action.option_strings:
        names = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
    else:
        names = f"`{action.metavar or action.dest}`"
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        names += " (" + " \\| ".join(f"`{c}`" for c in action.choices) + ")"
    default = action.default
    shown = "" if default in (None, argparse.SUPPRESS, False, []) or action.nargs == 0 else f"`{_cell(default)}`"
    return f"| {names} | {shown or ' '} | {_cell(expand_help(action, prog))} |"


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line(s) without "usage: ", continuation lines dedented to match."""
    lines = parser.format_usage().strip().split("\n")
    indent = len("usage: ")
    return "\n".join([lines[0][indent:]] + [line[indent:] if line[:indent].isspace() else line for line in lines[1:]])


def _as_argparse_prints(text: str, prog: str) -> str:
    # argparse fills in a description or epilog only when it names %(prog)
    return text % {"prog": prog} if "%(prog)" in text else text


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The CLI reference page: usage, description and every argument of every (sub)command."""
    if parser is None:
        from speechfuse.cli import build_parser

        parser = build_parser()
    out = ["# CLI reference", "",
           "Generated from `speechfuse.cli.build_parser()` by `speechfuse.reference.cli_reference()`: the same "
           "text as each command's `--help`.", ""]
    for path, sub, help_text in walk_commands(parser):
        level = "#" * (2 + max(path.count(" ") - 1, 0))
        out += [f"{level} `{path}`", ""]
        if help_text:
            out += [help_text[0].upper() + help_text[1:] + ("" if help_text[-1] in ".?!" else "."), ""]
        out += ["```text", _usage(sub), "```", ""]
        if sub.description and sub.description != help_text:
            out += [_as_argparse_prints(sub.description, sub.prog), ""]
        actions = [a for a in sub._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if actions:
            out += ["| argument | default | description |", "|---|---|---|"]
            out += [_argument_row(a, sub.prog) for a in actions]
            out.append("")
        commands = _subcommands(sub)
        if commands:
            out += ["| command | what it does |", "|---|---|"]
            out += [f"| `{path} {name}` | {_cell(h)} |" for name, _, h in commands]
            out.append("")
        if sub.epilog:
            out += [_as_argparse_prints(sub.epilog, sub.prog), ""]
    return "\n".join(out).rstrip() + "\n"


__all__ = ["config_reference", "cli_reference", "model_rows", "component_rows", "attribute_docstrings",
           "walk_commands", "expand_help"]
