"""The README is short and its links resolve; the config shown in the docs is a real, valid config."""
import re
from pathlib import Path

import pytest
import yaml

from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONFIG_PAGE = REPO / "docs" / "configuration.md"


def _config_block() -> dict:
    match = re.search(r"```yaml\n(task: .*?)```", CONFIG_PAGE.read_text(), re.S)
    assert match, "docs/configuration.md lost its config example block"
    return yaml.safe_load(match.group(1))


def test_docs_config_example_validates(tmp_path):
    cfg = config_from_dict(_config_block(), tmp_path)
    assert cfg.task == "classify"
    assert [u.spec for u in cfg.upstreams] == ["whisper-tiny.en", "hf:microsoft/wavlm-base-plus"]
    assert cfg.train.batch_seconds == 60


def test_docs_config_example_with_a_typo_is_rejected(tmp_path):
    data = _config_block()
    data["train"]["max_step"] = data["train"].pop("max_steps")
    with pytest.raises(ConfigError, match="max_step"):
        config_from_dict(data, tmp_path)


def test_readme_is_short_and_shows_the_own_data_path_on_its_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) < 150
    first = "\n".join(lines[:40])
    for command in ("speechfuse demo", "speechfuse prepare folder", "speechfuse init --task",
                    "speechfuse train my.yaml", "speechfuse predict runs/mine/model"):
        assert command in first, command


def test_readme_relative_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    relative = [link for link in links if "://" not in link]
    assert relative, "README links to no docs page"
    missing = [link for link in relative if not (REPO / link).exists()]
    assert not missing, missing


def test_no_file_points_outside_the_repository_to_shared():
    # a fresh clone has nothing beside it, so no file may name the sibling folder of the build machines. This
    # test reads only files inside the clone; the folder's name is assembled so this file does not match itself.
    sibling = "".join(["sha", "red"])
    needles = (f"../{sibling}", f"/work/{sibling}")
    folders = ["src", "docs", "tests", "scripts", "benchmarks", "configs", ".ci"]
    files = [p for folder in folders for p in (REPO / folder).rglob("*") if p.is_file()]
    files += [p for p in REPO.iterdir() if p.is_file()]
    offenders = []
    for path in files:
        if path.suffix in (".flac", ".wav", ".png", ".pyc", ".bin", ".safetensors"):
            continue
        text = path.read_bytes().decode("utf-8", "ignore")
        offenders += [f"{path.relative_to(REPO)}: {n}" for n in needles if n in text]
    assert len(files) > 100 and not offenders, offenders
