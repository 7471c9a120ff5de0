"""Plug-ins: the example package under examples/ is installed (pip --target, entry point included) and trained
from its YAML through the CLI; --plugin, the config's `plugins:` key and the entry point each make a user's
own upstream, interface and task known by name."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import speechfuse
from speechfuse.config import load_config
from speechfuse.errors import ConfigError
from speechfuse.plugins import load_plugins
from speechfuse.data.manifest import load_manifest
from helpers import fsdd_takes

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "speechfuse_example"
SPEECHFUSE_SRC = Path(speechfuse.__file__).resolve().parents[1]
NAMES = {"upstream": "example-mfcc", "interface": "example_mean_linear", "task": "example_smoothed_classify"}


def run_python(args: list[str], path: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    """A fresh interpreter whose import path is `path` plus speechfuse's own (and nothing of this process's)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*path, SPEECHFUSE_SRC]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _strings(manifests: dict[str, Path]) -> dict[str, str]:
    return {split: str(path) for split, path in manifests.items()}


def example_config(tmp_path: Path, data: dict[str, str], **changes) -> Path:
    """The example's own YAML with the data (and `changes`) replaced."""
    cfg = yaml.safe_load((EXAMPLE / "fsdd_speaker.yaml").read_text(encoding="utf-8"))
    cfg = {**cfg, "data": {**cfg["data"], **data}, **changes}
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package pip-installed into a target folder (built from a copy: the checkout stays clean)."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, root / "source")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(root / "site"), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (root / "site" / "speechfuse_example" / "upstream.py").is_file()
    return root / "site"


@pytest.mark.slow
def test_the_installed_example_trains_from_its_yaml_through_the_cli(installed, tmp_path):
    data = _strings(fsdd_takes(tmp_path / "data", {"train": range(10, 15), "dev": range(5, 7),
                                                    "test": range(0, 2)}))
    config = example_config(tmp_path, {**data, "target": "speaker"}, plugins=[])
    run = tmp_path / "run"
    result = run_python(["-m", "speechfuse.cli", "train", str(config), "--plugin", "speechfuse_example",
                         "--set", "train.max_steps=60", "--set", "train.val_every_steps=30",
                         "--set", "train.progress_bar=false", "--set", "train.importance=false", "--out", str(run)], [installed], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    # 6 speakers, so chance is 1/6: the plug-in's features, interface and loss learned something
    assert metrics["test"]["accuracy"] >= 0.35 and metrics["dev"]["accuracy"] >= 0.35
    model = json.loads((run / "model" / "config.json").read_text())
    assert [u["spec"] for u in model["upstreams"]] == [NAMES["upstream"]]
    assert model["upstreams"][0]["identity"]["options"] == {"num_mels": 40}
    assert model["interface"]["name"] == NAMES["interface"]
    assert model["task"]["name"] == NAMES["task"] and model["task"]["options"]["label_smoothing"] == 0.1
    described = json.loads((run / "interface.json").read_text())["describe"]
    assert described["name"] == NAMES["interface"] and described["num_layers"] == 3 and described["hidden_size"] == 40
    # the run folder's config names the plug-in's modules, so `evaluate` / `prune` can reload it
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert sorted(saved["plugins"]) == ["speechfuse_example.interface", "speechfuse_example.task",
                                        "speechfuse_example.upstream"]

    # ... and it does: with the plug-in importable but neither installed (no entry point) nor named by a flag
    evaluated = run_python(["-m", "speechfuse.cli", "evaluate", str(run), "--split", "dev"], [EXAMPLE], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["dev"]["accuracy"] == metrics["dev"]["accuracy"]
    loaded = run_python(["-c", "import sys; from speechfuse.fusion.model import load_model; "
                               f"m = load_model({str(run)!r}); print(m.task.name, m.frontend.interface.name)"],
                        [EXAMPLE], tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == [NAMES["task"], NAMES["interface"]]  # the model folder names its plug-ins too


@pytest.mark.slow
def test_an_installed_plugin_is_found_through_its_entry_point(installed, tmp_path):
    script = ("import json, sys\n"
              "from speechfuse.fusion.interfaces import list_interfaces\n"
              "from speechfuse.tasks import list_tasks\n"
              "from speechfuse.fusion.upstream import list_upstreams\n"
              "imported_first = 'speechfuse_example' in sys.modules\n"
              "print(json.dumps([imported_first, list_upstreams(), list_interfaces(), list_tasks()]))\n")
    result = run_python(["-c", script], [installed], tmp_path)
    assert result.returncode == 0, result.stderr
    imported_first, upstreams, interfaces, tasks = json.loads(result.stdout)
    assert not imported_first  # nothing imported the plug-in before the first registry lookup
    assert NAMES["upstream"] in upstreams and NAMES["interface"] in interfaces and NAMES["task"] in tasks
    assert "resemblyzer" in upstreams and "hconv" in interfaces and "classify" in tasks  # built-ins still there


def test_a_plugin_module_that_does_not_import_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--plugin 'no_such_plugin': cannot import it .*PYTHONPATH"):
        load_plugins(["no_such_plugin"])
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"plugins": ["speechfuse", "no_such_plugin"], "task": "asr"}))
    with pytest.raises(ConfigError, match=r"cfg.yaml: plugins\[1\] 'no_such_plugin': cannot import it"):
        load_config(tmp_path / "cfg.yaml")


@pytest.mark.slow
def test_plugin_flag_and_config_key_reach_a_module_on_the_path(tmp_path):
    """The example's source folder on PYTHONPATH (no install, so no entry point): names are unknown until
    --plugin or `plugins:` imports the module."""
    data = _strings(fsdd_takes(tmp_path / "data", {"train": range(10, 11), "dev": range(5, 6),
                                                    "test": range(0, 1)}))
    bare = example_config(tmp_path, {**data, "target": "speaker"}, plugins=[], cache=str(tmp_path / "cache"))
    path = [EXAMPLE]

    assert "speechfuse_example" not in sys.modules  # this process never imports it: the subprocesses below do
    with pytest.raises(ConfigError) as unknown:
        load_config(bare)
    for kind in ("task", "upstream", "interface"):
        assert f"unknown {kind} '{NAMES[kind]}'" in str(unknown.value)
    assert "--plugin MODULE" in str(unknown.value)

    by_flag = run_python(["-m", "speechfuse.cli", "extract", str(bare), "--plugin", "speechfuse_example",
                          "--out", str(tmp_path / "a")], path, tmp_path)
    assert by_flag.returncode == 0, by_flag.stderr[-3000:]
    rows = sum(len(load_manifest(data[split])) for split in ("train", "dev", "test"))
    assert json.loads(by_flag.stdout)["utterances"] == rows  # the plug-in upstream computed every clip's features
    entry = json.loads(by_flag.stdout)["entries"]
    assert len(entry) == 1 and Path(entry[0]).name.startswith(NAMES["upstream"])

    keyed = example_config(tmp_path, {**data, "target": "speaker"}, cache=str(tmp_path / "cache"))  # plugins: [...]
    by_key = run_python(["-m", "speechfuse.cli", "extract", str(keyed), "--out", str(tmp_path / "b")], path, tmp_path)
    assert by_key.returncode == 0, by_key.stderr[-3000:]
    assert json.loads(by_key.stdout)["entries"] == entry  # the same upstream and options: the same cache entry


def test_a_sweep_worker_imports_the_configs_plugins_before_training(tmp_path, monkeypatch):
    """Parallel sweeps train in spawned processes, which start without the parent's --plugin imports."""
    from speechfuse.experiments.sweep import _train_in_worker

    (tmp_path / "my_sweep_plugin.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_sweep_plugin", raising=False)
    seen = []
    _train_in_worker(lambda cfg, run_dir: seen.append("my_sweep_plugin" in sys.modules), {"plugins": ["my_sweep_plugin"]},
                     tmp_path)
    assert seen == [True]
