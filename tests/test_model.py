"""FusedModel: save_pretrained / from_pretrained on real FSDD clips (classification from a training run, ASR
with an aligner projection and a fine-tuned upstream), the run folder's model/, and refusing changed upstreams."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from helpers import real_batch, run_config, save_tiny_model
from speechfuse.config import config_from_dict
from speechfuse.data import load_manifest


def stored_keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_training_run_writes_its_model_and_the_reload_predicts_exactly(corpus, tmp_path):
    import speechfuse as sf
    from speechfuse.training.runner import load_run, train

    _, manifests, upstream = corpus
    cfg = config_from_dict(run_config(manifests, f"hf:{upstream}", downstream={"hidden_dim": 16}, max_steps=6,
                                      importance=False))
    metrics = train(cfg, tmp_path / "run")
    folder = tmp_path / "run" / "model"
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["metrics"] == metrics and config["task"]["labels"] == ["0", "1"]
    assert config["upstreams"][0]["identity"]["fingerprint"] == sf.load_upstream(f"hf:{upstream}").fingerprint()
    keys = stored_keys(folder)
    assert not any(k.startswith("frontend.upstreams.") for k in keys)  # frozen: not stored
    assert any(k.startswith("head.") for k in keys) and any(k.startswith("frontend.interface.") for k in keys)
    assert f"{metrics['test']['accuracy']:.4f}" in (folder / "README.md").read_text()

    reference, _ = load_run(tmp_path / "run")  # the runner's own rebuild of the best checkpoint
    reference.eval()
    model = sf.load_model(tmp_path / "run")  # the run folder resolves to its model/
    assert isinstance(model, sf.FusedModel) and not model.training
    wavs, lengths = real_batch(manifests["test"])
    with torch.no_grad():
        expected = reference.head(*reference.frontend(wavs, lengths))[0]
        got = model(wavs, lengths)[0]
    assert torch.equal(got, expected)
    assert model.task.predict(got, lengths) == reference.task.predict(expected, lengths)
    # predicting the test manifest with the loaded model scores what the trainer scored
    from speechfuse.serving.inference import predict_to_file

    summary = predict_to_file(model, manifests["test"], tmp_path / "test.jsonl", progress=False)
    assert summary["scored"] == len(load_manifest(manifests["test"]))
    # the run also reports the bootstrap interval of its test accuracy (`ci_low_`/`ci_high_` keys), which predict does not
    assert summary["metrics"] == pytest.approx({k: v for k, v in metrics["test"].items() if not k.startswith("ci_")})


def test_asr_model_with_projection_and_finetuned_upstream_round_trips_exactly(corpus, tmp_path):
    from speechfuse.fusion.model import FusedModel, build_task

    root, manifests, upstream = corpus
    wide = save_tiny_model("wav2vec2", tmp_path / "w2v", hidden_size=48)  # 48: hubert (32) gets a projection
    cfg = config_from_dict(run_config(manifests, [{"spec": f"hf:{upstream}", "options": {"trainable": True}},
                                                  {"spec": f"hf:{wide}"}], task="asr", interface="hconv",
                                      downstream={"proj_dim": 16, "hidden_size": 16, "num_layers": 1}))
    task = build_task(cfg).fit(load_manifest(manifests["train"]))
    torch.manual_seed(0)
    model = FusedModel.from_config(cfg, task).eval()
    with torch.no_grad():  # the fine-tuned upstream now differs from its checkpoint folder
        next(model.frontend.upstreams[0].parameters()).add_(0.05)
    model.save_pretrained(tmp_path / "asr")
    keys = stored_keys(tmp_path / "asr")
    assert any(k.startswith("frontend.aligner.projections.0.") for k in keys)
    assert any(k.startswith("frontend.upstreams.0.") for k in keys)  # trained: stored
    assert not any(k.startswith("frontend.upstreams.1.") for k in keys)  # frozen: from its spec

    loaded = FusedModel.from_pretrained(tmp_path / "asr")
    wavs, lengths = real_batch(manifests["test"])
    with torch.no_grad():
        expected, out_lengths = model(wavs, lengths)
        got, got_lengths = loaded(wavs, lengths)
    assert torch.equal(got, expected) and torch.equal(got_lengths, out_lengths)
    assert loaded.task.vocab == task.vocab
    assert loaded.task.predict(got, got_lengths) == task.predict(expected, out_lengths)


def test_a_changed_upstream_is_refused_naming_both_fingerprints(corpus, tmp_path):
    import speechfuse as sf
    from speechfuse.fusion.model import FusedModel, ModelFileError, UpstreamChangedError, build_task

    _, manifests, _ = corpus
    upstream = save_tiny_model("hubert", tmp_path / "hubert", seed=0)
    cfg = config_from_dict(run_config(manifests, [{"spec": f"hf:{upstream}"}]))
    task = build_task(cfg).fit(load_manifest(manifests["train"]))
    FusedModel.from_config(cfg, task).save_pretrained(tmp_path / "m")
    saved = sf.load_upstream(f"hf:{upstream}").fingerprint()

    save_tiny_model("hubert", tmp_path / "hubert", seed=1)  # same architecture, other weights
    changed = sf.load_upstream(f"hf:{upstream}").fingerprint()
    assert changed != saved
    with pytest.raises(UpstreamChangedError) as err:
        sf.load_model(tmp_path / "m")
    message = str(err.value)
    assert "upstream 0 (" in message and saved in message and changed in message
    assert "allow_changed_upstreams" in message
    with pytest.warns(UserWarning, match=changed):
        model = sf.load_model(tmp_path / "m", allow_changed_upstreams=True)
    assert model.frontend.upstreams[0].fingerprint() == changed

    # a damaged weights file is refused too, not silently loaded
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256"):
        sf.load_model(tmp_path / "m", allow_changed_upstreams=True)
    with pytest.raises(ModelFileError, match="neither a speechfuse model folder"):
        sf.load_model(tmp_path)
