"""MkDocs hook (mkdocs.yml `hooks:`): pages generated from the code at build time, so they cannot drift.

- reference/config.md and reference/cli.md from speechfuse.reference;
- one API page per module of the speechfuse package (mkdocstrings renders its docstrings), listed in the
  nav under "API reference" in package order, so a module added, moved or renamed needs no edit here;
- failure_modes.md: a placeholder only while docs/failure_modes.md does not exist yet.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "speechfuse"
API_SECTION = "API reference"


def api_modules() -> list[str]:
    """Dotted names of the package's public modules, packages before their modules."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or parts[-1] == "__main__":
            continue
        names.append(".".join(parts))
    return sorted(names, key=lambda n: n.split("."))


def api_nav(modules: list[str]) -> list:
    """Nav entries: a package is a section holding its own page first, then its modules."""
    nav: list = []
    sections: dict[str, list] = {}
    for name in modules:
        parent = name.rpartition(".")[0]
        entry = {name: f"api/{name}.md"}
        if any(m.startswith(name + ".") for m in modules) and parent:  # a subpackage
            sections[name] = [entry]
            (sections.get(parent, nav)).append({name: sections[name]})
        else:
            sections.get(parent, nav).append(entry)
    return nav


def on_config(config):
    for item in config["nav"] or []:
        if isinstance(item, dict) and "Reference" in item:
            for entry in item["Reference"]:
                if isinstance(entry, dict) and API_SECTION in entry:
                    entry[API_SECTION] = api_nav(api_modules())
    return config


def on_files(files: Files, config) -> Files:
    from speechfuse.reference import cli_reference, config_reference

    pages = {"reference/config.md": config_reference(), "reference/cli.md": cli_reference()}
    for name in api_modules():
        pages[f"api/{name}.md"] = f"# `{name}`\n\n::: {name}\n"
    if files.get_file_from_path("failure_modes.md") is None:
        pages["failure_modes.md"] = ("# Failure modes\n\nThe catalogue of handled bad inputs and faults (issue 16) "
                                     "is not written yet.\n")
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files
