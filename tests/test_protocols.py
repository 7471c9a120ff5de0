"""docs/protocols.md: every key of each configs/paper/*.yaml has a row in that config's protocol card."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted((REPO / "configs" / "paper").glob("*.yaml"))


def config_keys(mapping: dict, prefix: str = "") -> list[str]:
    """Dotted keys down to the leaves (a list, such as `upstreams`, is one leaf)."""
    keys = []
    for key, value in mapping.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        keys += config_keys(value, dotted) if isinstance(value, dict) and value else [dotted]
    return keys


def card_rows(name: str) -> dict[str, list[str]]:
    """The card of configs/paper/<name>: {setting: the other cells of its row}."""
    text = (REPO / "docs" / "protocols.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)
    card = [s for s in sections if s.startswith(f"configs/paper/{name}\n")]
    assert len(card) == 1, f"docs/protocols.md has {len(card)} card(s) headed 'configs/paper/{name}'"
    rows = {}
    for line in card[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_every_paper_config_key_has_a_row_with_value_and_source(path):
    rows = card_rows(path.name)
    keys = config_keys(yaml.safe_load(path.read_text(encoding="utf-8")))
    missing = [k for k in keys if k not in rows]
    assert not missing, f"docs/protocols.md, card {path.name}: no row for {missing}"
    for key in keys:
        value, source, _note = rows[key]
        assert value and source, f"card {path.name}, row {key}: value and source must be filled"
    stale = [k for k in rows if k not in keys]
    assert not stale, f"docs/protocols.md, card {path.name}: rows for keys the config does not have: {stale}"


def test_key_flattening_and_card_parsing():
    """The checker's own pieces: nested keys flatten to dotted leaves; a card's rows are found by key."""
    assert config_keys({"a": 1, "b": {"c": [1, 2], "d": {}}}) == ["a", "b.c", "b.d"]
    assert set(card_rows("voxceleb1_sv.yaml")) >= {"train.crop_seconds", "downstream.input_norm"}
