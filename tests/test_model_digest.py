"""A model folder is verified whole (issue 16, item 3): one digest covers config.json and model.safetensors.
Before: weights swapped after removing `weights_sha256`, or labels reordered in config.json, loaded silently;
an edited size in config.json ended in `RuntimeError: size mismatch`; an upstream pickle in a raw
UnpicklingError."""
from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from helpers import make_fsdd, save_tiny_model, save_untrained_classifier
from speechfuse.errors import UpstreamError
from speechfuse.fusion.model import DIGEST_KEY, ModelFileError, load_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two digit classifiers of the same architecture with different weights (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("digest")
    manifests = make_fsdd(root, takes=range(5))
    upstream = save_tiny_model("hubert", root / "hubert")
    folders = [save_untrained_classifier(manifests, upstream, root / f"model{seed}", seed=seed) for seed in (0, 1)]
    clip = sorted((root / "recordings").iterdir())[0]
    return folders, clip, upstream


def _copy(folder: Path, dest: Path) -> Path:
    return Path(shutil.copytree(folder, dest))


def _edit(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))


def _probabilities(folder: Path, clip: Path, **options) -> dict:
    return load_model(folder, **options).predict(str(clip))[0].probabilities


def test_an_intact_folder_loads_and_its_digest_is_saved(models):
    folders, clip, _ = models
    config = json.loads((folders[0] / "config.json").read_text())
    assert len(config[DIGEST_KEY]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "loaded anyway" warning for an intact folder
        assert set(_probabilities(folders[0], clip)) == {"0", "1"}


def test_other_weights_after_removing_weights_sha256_are_refused(models, tmp_path):
    folders, clip, _ = models
    folder = _copy(folders[0], tmp_path / "m")
    _edit(folder, lambda c: c.pop("weights_sha256"))
    shutil.copy(folders[1] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelFileError, match=rf"changed since the model was saved .*{DIGEST_KEY} does not match.*"
                                             r"trust_unverified=True \(CLI: --allow-unverified\)"):
        load_model(folder)
    with pytest.warns(UserWarning, match="loaded anyway"):
        swapped = _probabilities(folder, clip, trust_unverified=True)
    assert swapped == pytest.approx(_probabilities(folders[1], clip))  # it really holds the other weights
    assert swapped != pytest.approx(_probabilities(folders[0], clip))


def test_reordered_labels_are_refused(models, tmp_path):
    folders, clip, _ = models
    folder = _copy(folders[0], tmp_path / "m")
    _edit(folder, lambda c: c["task"].update(labels=c["task"]["labels"][::-1]))
    with pytest.raises(ModelFileError, match="an edited config.json or other weights"):
        load_model(folder)


def test_a_folder_without_a_digest_is_refused_unless_allowed(models, tmp_path, capsys):
    from speechfuse.cli import main

    folders, clip, _ = models
    folder = _copy(folders[0], tmp_path / "m")
    _edit(folder, lambda c: c.pop(DIGEST_KEY))
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(folder), str(clip), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"has no {DIGEST_KEY}" in err and "--allow-unverified" in err
    with pytest.warns(UserWarning, match=f"has no {DIGEST_KEY}.*loaded anyway"):
        assert main(["predict", str(folder), str(clip), "--out", str(out), "--allow-unverified"]) == 0
    assert json.loads(out.read_text())["label"] in ("0", "1")


@pytest.mark.parametrize("change, key", [
    (lambda c: c["align"].update(num_layers=5), r"align\.num_layers \(5\)"),
    (lambda c: c["task"]["options"].update(hidden_dim=20), r"task\.options\.hidden_dim \(20\)"),
    (lambda c: c["task"]["labels"].append("2"), r"task\.labels \(3\)"),
], ids=["align.num_layers", "hidden_dim", "label count"])
def test_an_edited_size_is_one_line_naming_the_key(models, tmp_path, change, key):
    folders, _, _ = models
    folder = _copy(folders[0], tmp_path / "m")
    _edit(folder, change)
    with pytest.warns(UserWarning, match="loaded anyway"), \
            pytest.raises(ModelFileError, match=rf"does not fit the model its config.json describes: .* in the "
                                                rf"weights but .* from config.json.*key.* giving that size: .*{key}") as err:
        load_model(folder, trust_unverified=True)
    assert "\n" not in str(err.value)


def test_an_upstream_folder_holding_a_pickle_is_one_line(models, tmp_path):
    """A pytorch_model.bin with objects other than tensors: torch's weights_only loader refuses it; the user
    gets a sentence naming the file instead of the raw UnpicklingError."""
    import speechfuse as sf
    from safetensors.torch import load_file

    _, _, upstream = models
    folder = _copy(Path(upstream), tmp_path / "pickled")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, "extra": argparse.Namespace(note="not a tensor")}, folder / "pytorch_model.bin")
    with pytest.raises(UpstreamError, match=r"holds its weights as a pickle \(pytorch_model.bin\).* does not "
                                            r"unpickle") as err:
        sf.load_upstream(f"hf:{folder}")
    assert "\n" not in str(err.value)
