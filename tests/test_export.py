"""Export of aligner + interface + head, and of the whole model: TorchScript and ONNX (onnxruntime) against the eager model on real FSDD
clips, at batch sizes other than the traced one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import make_fsdd, run_config, save_tiny_model
from speechfuse.config import config_from_dict
from speechfuse.data import load_manifest
from speechfuse.cache.extract import load_audio_batch


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A classifier over hubert (800 Hz, 3 layers) + whisper (50 Hz, 4 layers): time and layer resampling; an ASR
    model over hubert (32 wide) + wav2vec2 (48 wide) under hconv: a projection and a packed BiLSTM head; the
    same ASR model with the Transformer CTC head (conv2d2 subsampling, masked attention). All saved as model folders."""
    from speechfuse.fusion.model import FusedModel, build_task

    root = tmp_path_factory.mktemp("export")
    manifests = make_fsdd(root)
    hubert = save_tiny_model("hubert", root / "hubert")
    # 4 layers each against hubert's 3: the aligner interpolates layers too
    whisper = save_tiny_model("whisper", root / "whisper", encoder_layers=3)
    wide = save_tiny_model("wav2vec2", root / "w2v", hidden_size=48, num_hidden_layers=3)
    utts = load_manifest(manifests["train"])
    specs = {"classify": ("classify", [hubert, whisper], "weighted_sum", {"hidden_dim": 16}),
             "asr": ("asr", [hubert, wide], "hconv", {"proj_dim": 16, "hidden_size": 16, "num_layers": 1,
                                                      "bidirectional": True}),
             "asr_transformer": ("asr", [hubert, wide], "hconv", {"head": "transformer", "proj_dim": 16,
                                                                  "attention_dim": 8, "attention_heads": 2,
                                                                  "ff_dim": 16, "transformer_layers": 1})}
    for folder, (task, ups, interface, head) in specs.items():
        cfg = config_from_dict(run_config(manifests, [{"spec": f"hf:{u}"} for u in ups], task=task,
                                          interface=interface, downstream=head))
        torch.manual_seed(0)
        FusedModel.from_config(cfg, build_task(cfg).fit(utts)).save_pretrained(root / folder)
    return root, manifests


def batches(manifests, model):
    """Real clips in batches of 1 and 4 (the export was traced on 3 clips), as upstream hidden states."""
    utts = load_manifest(manifests["test"]) + load_manifest(manifests["dev"])
    for group in (utts[1:5], utts[:1]):
        wavs, lengths = load_audio_batch(group, model.sample_rate)
        with torch.no_grad():
            yield model.frontend.extract(wavs, lengths)


@pytest.mark.parametrize("task", ["classify", "asr", "asr_transformer"])
def test_exports_match_the_eager_model(models, tmp_path, task, capsys):
    import onnxruntime

    import speechfuse as sf
    from speechfuse.cli import main
    from speechfuse.serving.export import graph_inputs

    root, manifests = models
    model = sf.load_model(root / task)
    assert main(["export", str(root / task), "--format", "onnx", "--out", str(tmp_path / "f.onnx")]) == 0
    assert main(["export", str(root / task), "--format", "torchscript", "--out", str(tmp_path / "f.pt")]) == 0
    capsys.readouterr()
    sidecar = json.loads((tmp_path / "f.onnx.json").read_text())
    assert sidecar["inputs"] == ["hidden_0", "lengths_0", "hidden_1", "lengths_1"]
    assert sidecar["task"] == model.task.state()
    scripted = torch.jit.load(str(tmp_path / "f.pt"))
    session = onnxruntime.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    worst = {"torchscript": 0.0, "onnx": 0.0}
    for states in batches(manifests, model):
        with torch.no_grad():
            expected, expected_lengths = model.fuse_hidden(states)
            inputs = graph_inputs(states)
            ts_out, ts_lengths = scripted(*inputs)
        onnx_out, onnx_lengths = session.run(None, {n: t.numpy() for n, t in zip(sidecar["inputs"], inputs)})
        assert ts_out.shape == expected.shape and onnx_out.shape == tuple(expected.shape)
        assert torch.equal(ts_lengths, expected_lengths)
        assert np.array_equal(onnx_lengths, expected_lengths.numpy())
        worst["torchscript"] = max(worst["torchscript"], float((ts_out - expected).abs().max()))
        worst["onnx"] = max(worst["onnx"], float(np.abs(onnx_out - expected.numpy()).max()))
        # the decoded predictions agree too
        assert model.task.predict(torch.from_numpy(onnx_out), expected_lengths) == \
            model.task.predict(expected, expected_lengths)
    print(task, "max abs difference vs eager:", worst)
    assert worst["torchscript"] < 1e-5 and worst["onnx"] < 1e-5, worst


INTERFACES = {"last": {}, "layer": {"index": 1}, "weighted_sum": {}, "hconv": {}, "chconv": {}, "concat_proj": {},
              "group_ws": {"groups": 3}, "cls_pool": {}, "gumd": {}}


@pytest.mark.slow
def test_every_interface_exports(models, tmp_path):
    """Each interface in a hubert + whisper classifier: ONNX against eager on 4 real clips."""
    import onnxruntime

    from speechfuse.serving.export import export_fusion, graph_inputs
    from speechfuse.fusion.interfaces import list_interfaces
    from speechfuse.fusion.model import FusedModel, build_task

    assert set(INTERFACES) == set(list_interfaces())
    root, manifests = models
    specs = [{"spec": f"hf:{root / 'hubert'}"}, {"spec": f"hf:{root / 'whisper'}"}]
    task = None
    for name, options in INTERFACES.items():
        config = run_config(manifests, specs, interface=name)
        config["interface"].update(options)
        cfg = config_from_dict(config)
        task = task or build_task(cfg).fit(load_manifest(manifests["train"]))
        torch.manual_seed(0)
        model = FusedModel.from_config(cfg, task).eval()
        states = next(iter(batches(manifests, model)))
        with torch.no_grad():
            expected, _ = model.fuse_hidden(states)
        inputs = graph_inputs(states)
        # ONNX only: it goes through the same trace as TorchScript, then must also map every op
        session = onnxruntime.InferenceSession(str(export_fusion(model, tmp_path / f"{name}.onnx", format="onnx")),
                                               providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})[0]
        assert float(np.abs(onnx_out - expected.numpy()).max()) < 1e-5, name


def test_a_verification_model_exports_its_normalised_embedding(models, tmp_path, capsys):
    """hubert + whisper verify model: the export returns the L2-normalised embedding predict() gives and the
    cosines with the training speakers; TorchScript and ONNX against eager on real clips, batches of 4 and 1."""
    import onnxruntime
    import torch.nn.functional as F

    import speechfuse as sf
    from speechfuse.cli import main
    from speechfuse.serving.export import graph_inputs
    from speechfuse.fusion.model import FusedModel, build_task

    root, manifests = models
    specs = [{"spec": f"hf:{root / 'hubert'}"}, {"spec": f"hf:{root / 'whisper'}"}]
    cfg = config_from_dict(run_config(manifests, specs, task="verify", downstream={
        "channels": [16, 16], "kernel_sizes": [3, 1], "dilations": [2, 1], "embed_dim": 8}))
    torch.manual_seed(0)
    FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"]))).save_pretrained(root / "verify")
    model = sf.load_model(root / "verify")
    for fmt, name in (("onnx", "v.onnx"), ("torchscript", "v.pt")):
        assert main(["export", str(root / "verify"), "--format", fmt, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    sidecar = json.loads((tmp_path / "v.onnx.json").read_text())
    assert sidecar["outputs"] == ["embedding", "speaker_cosines"] and sidecar["task"] == model.task.state()
    scripted = torch.jit.load(str(tmp_path / "v.pt"))
    session = onnxruntime.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"])
    worst = {"torchscript": 0.0, "onnx": 0.0}
    for states in batches(manifests, model):
        with torch.no_grad():
            raw, cosines = model.fuse_hidden(states)
            inputs = graph_inputs(states)
            ts_emb, ts_cos = scripted(*inputs)
        expected = F.normalize(raw, dim=-1)
        onnx_emb, onnx_cos = session.run(None, {n: t.numpy() for n, t in zip(sidecar["inputs"], inputs)})
        assert ts_emb.shape == expected.shape and onnx_emb.shape == tuple(expected.shape)
        assert onnx_cos.shape == tuple(cosines.shape) == (len(expected), len(model.task.speakers))
        worst["torchscript"] = max(worst["torchscript"], float((ts_emb - expected).abs().max()),
                                   float((ts_cos - cosines).abs().max()))
        worst["onnx"] = max(worst["onnx"], float(np.abs(onnx_emb - expected.numpy()).max()),
                            float(np.abs(onnx_cos - cosines.numpy()).max()))
    # the last batch is the first test clip alone: the exported embedding is the one predict() returns for it
    predicted = model.predict(load_manifest(manifests["test"])[0].path)[0].embedding
    assert float((ts_emb[0] - predicted).abs().max()) < 1e-5
    print("verify max abs difference vs eager:", worst)
    assert worst["torchscript"] < 1e-5 and worst["onnx"] < 1e-5, worst


def real_batches(manifests, model):
    """Real FSDD clips of different lengths, none of them the traced noise: three alone, then a padded batch of 4."""
    utts = load_manifest(manifests["test"]) + load_manifest(manifests["dev"])
    for group in ([utts[0]], [utts[2]], [utts[5]], utts[1:5]):
        yield load_audio_batch(group, model.sample_rate)


@pytest.fixture(scope="module")
def whole_asr_model(models):
    """An ASR model over whisper (50 Hz, log-mel STFT in the graph) + wav2vec2 (800 Hz, 48 wide: a projection),
    hconv, BiLSTM CTC head."""
    from speechfuse.fusion.model import FusedModel, build_task

    root, manifests = models
    specs = [{"spec": f"hf:{root / 'whisper'}"}, {"spec": f"hf:{root / 'w2v'}"}]
    cfg = config_from_dict(run_config(manifests, specs, task="asr", interface="hconv", downstream={
        "proj_dim": 16, "hidden_size": 16, "num_layers": 1, "bidirectional": True}))
    torch.manual_seed(0)
    FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"]))).save_pretrained(root / "whole")
    return root / "whole"


@pytest.mark.slow
def test_whole_model_exports_match_the_eager_model(models, whole_asr_model, tmp_path, capsys):
    """`export --whole`, waveforms in, CTC logits per frame out: TorchScript and ONNX against eager on real clips
    of other lengths than the trace, alone and padded."""
    import onnxruntime

    import speechfuse as sf
    from speechfuse.cli import main

    _, manifests = models
    model = sf.load_model(whole_asr_model)
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.pt")):
        assert main(["export", str(whole_asr_model), "--whole", "--format", fmt, "--out", str(tmp_path / name)]) == 0
    printed = json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "\n}")
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sidecar["whole"] and sidecar["inputs"] == ["wavs", "wav_lengths"] and sidecar["task"] == model.task.state()
    assert printed["checked"]["max_abs_diff"] == json.loads((tmp_path / "m.pt.json").read_text())["checked"]["max_abs_diff"]
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    one_thread = onnxruntime.SessionOptions()
    one_thread.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), one_thread, providers=["CPUExecutionProvider"])
    worst = {"torchscript": 0.0, "onnx": 0.0}
    lengths_seen = set()
    for wavs, lengths in real_batches(manifests, model):
        lengths_seen.update(lengths.tolist())
        with torch.no_grad():
            expected, expected_lengths = model(wavs, lengths)
            ts_out, ts_lengths = scripted(wavs, lengths)
        onnx_out, onnx_lengths = session.run(None, {"wavs": wavs.numpy(), "wav_lengths": lengths.numpy()})
        assert ts_out.shape == expected.shape and onnx_out.shape == tuple(expected.shape)
        assert torch.equal(ts_lengths, expected_lengths) and np.array_equal(onnx_lengths, expected_lengths.numpy())
        worst["torchscript"] = max(worst["torchscript"], float((ts_out - expected).abs().max()))
        worst["onnx"] = max(worst["onnx"], float(np.abs(onnx_out - expected.numpy()).max()))
        assert model.task.predict(torch.from_numpy(onnx_out), expected_lengths) == \
            model.task.predict(expected, expected_lengths)
    assert len(lengths_seen) >= 4  # the graph served several lengths, none traced
    print("whole model, max abs difference vs eager:", worst)
    assert worst["torchscript"] < 1e-5 and worst["onnx"] < 1e-5, worst


@pytest.fixture(scope="module")
def speech_embedding_model(models):
    from speechfuse.fusion.model import FusedModel, build_task

    root, manifests = models
    cfg = config_from_dict(run_config(manifests, [{"spec": "speech-embedding"}]))
    torch.manual_seed(0)
    FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"]))).save_pretrained(root / "se")
    return root / "se"


def test_whole_export_refuses_an_upstream_that_does_not_trace(speech_embedding_model, tmp_path, capsys):
    from speechfuse.cli import main

    out = tmp_path / "se.onnx"
    assert main(["export", str(speech_embedding_model), "--whole", "--format", "onnx", "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "speech-embedding cannot be exported" in message
    assert "onnxruntime" in message and "without --whole" in message
    assert not out.exists()
    # the export of the part after the upstreams still works for it
    assert main(["export", str(speech_embedding_model), "--format", "onnx", "--out", str(out)]) == 0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_trace_that_does_not_generalise_is_refused_and_not_written(speech_embedding_model, tmp_path, monkeypatch,
                                                                     fmt):
    """Without its blocker, speech-embedding traces (onnxruntime's outputs become constants of the example's
    shape): the check on other lengths must catch it."""
    import speechfuse as sf
    from speechfuse.serving.export import ExportError, export_whole
    from speechfuse.fusion.upstream.bundled import SpeechEmbeddingUpstream

    monkeypatch.setattr(SpeechEmbeddingUpstream, "export_blocker", lambda self: None)
    model = sf.load_model(speech_embedding_model)
    out = tmp_path / f"se.{fmt}"
    with pytest.raises(ExportError, match="does not generalise") as err:
        export_whole(model, out, format=fmt)
    assert "nothing was written" in str(err.value)
    assert not out.exists() and not (tmp_path / f"se.{fmt}.json").exists()


@pytest.mark.slow
def test_every_traceable_family_exports_whole_in_one_model(models, tmp_path):
    """hubert, wavlm, data2vec-audio, whisper in pad30 mode and the bundled resemblyzer fused in one classifier
    (800, 100 and 50 Hz): the ONNX export passes its own check against eager, and matches eager on a real clip."""
    import onnxruntime

    from speechfuse.serving.export import export_whole
    from speechfuse.fusion.model import FusedModel, build_task

    root, manifests = models
    specs = [{"spec": f"hf:{root / 'hubert'}"}, {"spec": f"hf:{save_tiny_model('wavlm', tmp_path / 'wavlm')}"},
             {"spec": f"hf:{save_tiny_model('data2vec-audio', tmp_path / 'd2v')}"},
             {"spec": f"hf:{root / 'whisper'}", "options": {"whisper_mode": "pad30"}}, {"spec": "resemblyzer"}]
    cfg = config_from_dict(run_config(manifests, specs))
    torch.manual_seed(0)
    model = FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"]))).eval()
    path = export_whole(model, tmp_path / "all.onnx", format="onnx")
    checked = json.loads((tmp_path / "all.onnx.json").read_text())["checked"]
    assert len(checked["max_abs_diff"]) == 2 and max(checked["max_abs_diff"]) < 1e-5, checked
    wavs, lengths = next(real_batches(manifests, model))
    one_thread = onnxruntime.SessionOptions()
    one_thread.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), one_thread, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected, _ = model(wavs, lengths)
    got = session.run(None, {"wavs": wavs.numpy(), "wav_lengths": lengths.numpy()})[0]
    assert float(np.abs(got - expected.numpy()).max()) < 1e-5
