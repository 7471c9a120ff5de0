"""The generated config and CLI references (the docs site's pages) list every key, command and option."""
import argparse
from typing import Optional

from pydantic import BaseModel

from speechfuse.cli import build_parser
from speechfuse.config import Config
from speechfuse.fusion.interfaces import INTERFACES
from speechfuse.reference import cli_reference, config_reference, model_rows
from speechfuse.tasks import list_tasks, task_options


def _model_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                keys += _model_keys(candidate, f"{key}[]." if name == "upstreams" else f"{key}.")
    return keys


def _section(page: str, heading: str) -> str:
    start = page.index(heading)
    end = page.find("\n#", start + len(heading))
    return page[start:end if end > 0 else None]


def _row(page: str, key: str) -> str:
    return next(line for line in page.splitlines() if line.startswith(f"| `{key}` |"))


def test_every_config_key_is_in_the_config_reference():
    page = config_reference()
    keys = _model_keys(Config)
    assert len(keys) > 40  # the walk reached the nested sections
    missing = [key for key in keys if f"| `{key}` |" not in page]
    assert not missing, missing
    # the keys a user could not find before (issue 19), with the text their models document them by
    for key in ("train.progress_bar", "train.deterministic", "train.max_epochs", "train.specaug.time_warp"):
        assert f"| `{key}` |" in page
    assert "drop-one-layer importance" in _row(page, "train.importance")
    assert "`sample`" in _row(page, "cache.key") and "cp -p" in _row(page, "cache.key")


def test_every_task_head_option_and_interface_option_is_in_the_config_reference():
    page = config_reference()
    for task in list_tasks():
        section = _section(page, f"### `task: {task}`")
        missing = [key for key in task_options(task).model_fields if f"| `downstream.{key}` |" not in section]
        assert not missing, (task, missing)
    for name in INTERFACES.names():
        entry = INTERFACES.get(name)
        options = entry.Options.model_fields if hasattr(entry, "Options") else entry.OPTIONS
        section = _section(page, f"### `{name}`")
        missing = [key for key in options if f"| `interface.{key}` |" not in section]
        assert not missing, (name, missing)


class _Example(BaseModel):
    rate: Optional[float] = None
    """Frames per second; null: the model's own."""
    mode: str = "trim"


def test_model_rows_read_attribute_docstrings_types_and_defaults():
    rows = {key: (kind, default, doc) for key, kind, default, doc in model_rows(_Example, "x.")}
    assert rows["x.rate"] == ("number | null", "null", "Frames per second; null: the model's own.")
    assert rows["x.mode"] == ("string", "trim", "")


def test_every_command_and_option_is_in_the_cli_reference():
    parser = build_parser()
    page = cli_reference(parser)
    seen = 0
    stack = [("speechfuse", parser)]
    while stack:
        path, p = stack.pop()
        assert f"`{path}`" in page, path
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack += [(f"{path} {name}", sub) for name, sub in action.choices.items()]
            if isinstance(action, argparse._HelpAction):  # every command has -h; the page does not repeat it
                continue
            for option in action.option_strings:
                assert f"`{option}`" in _section(page, f"`{path}`\n"), (path, option)
                seen += 1
    assert seen > 30
    assert "`speechfuse study scaling`" in page


def test_cli_reference_prints_help_as_argparse_does():
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run it")
    run.add_argument("--steps", type=int, default=3, help="at most %(default)s steps (100 %% of them)")
    page = cli_reference(parser)
    assert "| `--steps` `STEPS` | `3` | at most 3 steps (100 % of them) |" in page
    assert "## `tool run`" in page and "Run it." in page


def test_docs_hook_gives_every_module_an_api_page_in_the_nav():
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_pages", repo / "docs" / "gen_pages.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    modules = hook.api_modules()
    sources = [p for p in (repo / "src" / "speechfuse").rglob("*.py") if not p.name.startswith("_")]
    assert len(modules) >= len(sources)  # every public module, plus each package
    assert {"speechfuse", "speechfuse.config", "speechfuse.tasks", "speechfuse.tasks.asr"} <= set(modules)
    nav = [{"Home": "index.md"}, {"Reference": [{"CLI reference": "reference/cli.md"}, {"API reference": []}]}]
    hook.on_config({"nav": nav})
    pages, stack = [], list(nav[1]["Reference"][1]["API reference"])
    while stack:  # flatten the package sections
        ((title, target),) = stack.pop(0).items()
        if isinstance(target, list):
            stack = target + stack
        else:
            pages.append((title, target))
    assert pages == [(name, f"api/{name}.md") for name in modules]
    assert any("speechfuse.data" in entry  # a subpackage is a section and isinstance(entry["speechfuse.data"], list)
               for entry in nav[1]["Reference"][1]["API reference"])
