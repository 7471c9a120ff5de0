"""Shared fixtures (the plain builders they use are in tests/helpers.py): a temp speechfuse home per test, one
torch thread, tiny random transformers models saved into temp folders (never the network)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import make_fsdd, run_config, save_tiny_model, save_untrained_classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def session_speechfuse_home(tmp_path_factory):
    """The tests never write into the real ~/.cache/speechfuse: module fixtures get one home for the session..."""
    before = os.environ.get("SPEECHFUSE_HOME")
    os.environ["SPEECHFUSE_HOME"] = str(tmp_path_factory.mktemp("session_speechfuse_home"))
    yield
    if before is None:
        os.environ.pop("SPEECHFUSE_HOME", None)
    else:
        os.environ["SPEECHFUSE_HOME"] = before


@pytest.fixture(autouse=True)
def speechfuse_home(tmp_path_factory, monkeypatch) -> Path:
    """...and every test its own (so no test finds features another one cached): the `cache: auto` folder is
    speechfuse_home / "cache"."""
    home = tmp_path_factory.mktemp("speechfuse_home")
    monkeypatch.setenv("SPEECHFUSE_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every model in the suite is small: on a shared CPU, intra-op thread hand-offs cost more than the
    maths (measured 5-20x slower with 2 threads on this 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Factory fixture: tiny_model_dir("hubert") -> path of a saved tiny model."""

    def make(family: str, **overrides) -> str:
        return save_tiny_model(family, tmp_path / family, **overrides)

    return make


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Per test module: (folder, train/dev/test manifests of 24 FSDD clips from make_fsdd, a tiny HuBERT)."""
    root = tmp_path_factory.mktemp("corpus")
    return root, make_fsdd(root), save_tiny_model("hubert", root / "hubert")


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    """A saved (untrained) digit classifier and six real FSDD clips (8 kHz FLAC)."""
    root = tmp_path_factory.mktemp("saved_classifier")
    manifests = make_fsdd(root, takes=range(5))
    folder = save_untrained_classifier(manifests, save_tiny_model("hubert", root / "hubert"), root / "model")
    return folder, sorted((root / "recordings").iterdir())[:6]


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    """A finished 2-upstream run (tiny random wav2vec2 + hubert, speaker-independent digits 0/1)."""

    from speechfuse.config import config_from_dict
    from speechfuse.training.runner import train

    root = tmp_path_factory.mktemp("prune")
    manifests = make_fsdd(root)
    a, b = save_tiny_model("wav2vec2", root / "a"), save_tiny_model("hubert", root / "b", seed=1)
    data = run_config(manifests, [f"hf:{a}", f"hf:{b}"], downstream={"hidden_dim": 16}, max_steps=6,
                      importance=False)
    data["cache"] = str(root / "cache")
    train(config_from_dict(data), root / "runs" / "full")
    return root / "runs" / "full", manifests
