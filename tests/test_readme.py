"""The README's config reference is a real, valid config."""
import re
from pathlib import Path

import pytest
import yaml

from speechfuse.config import config_from_dict
from speechfuse.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def _config_block() -> dict:
    match = re.search(r"```yaml\n(task: .*?)```", README.read_text(), re.S)
    assert match, "README lost its config reference block"
    return yaml.safe_load(match.group(1))


def test_readme_config_reference_validates(tmp_path):
    cfg = config_from_dict(_config_block(), tmp_path)
    assert cfg.task == "classify"
    assert [u.spec for u in cfg.upstreams] == ["whisper-tiny.en", "hf:microsoft/wavlm-base-plus"]
    assert cfg.train.batch_seconds == 60


def test_readme_config_reference_with_a_typo_is_rejected(tmp_path):
    data = _config_block()
    data["train"]["max_step"] = data["train"].pop("max_steps")
    with pytest.raises(ConfigError, match="max_step"):
        config_from_dict(data, tmp_path)
