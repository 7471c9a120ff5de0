"""A trained verification model as a product, on real FSDD clips: typed embeddings from predict, exact
save/load round trip (embeddings and the dev EER threshold), verify() trials and decisions, the predict
CLI's jsonl/csv rows, and clear errors."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from conftest import save_tiny_model
from test_verify_run import SPEAKERS, fsdd, verify_config
from speechfuse.cli import main
from speechfuse.data import load_manifest
from speechfuse.errors import ConfigError
from speechfuse.inference import SpeakerEmbedding, Verification


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny hubert verify model trained 4 steps through the CLI (3 speakers, digits 0-1)."""
    root = tmp_path_factory.mktemp("verify_model")
    manifests = fsdd(root, digits=(0, 1), speakers=SPEAKERS[:3], takes=range(6), dev_takes=[4], test_takes=[5])
    upstream = save_tiny_model("hubert", root / "hubert")
    cfg = root / "verify.yaml"
    cfg.write_text(yaml.safe_dump(verify_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=2)))
    assert main(["train", str(cfg), "--out", str(root / "run")]) == 0
    return root, manifests


def test_embeddings_and_threshold_round_trip_exactly(run, tmp_path, capsys):
    import speechfuse as sf

    root, manifests = run
    capsys.readouterr()
    model = sf.load_model(root / "run")
    assert model.task.threshold is not None  # recorded when the best checkpoint's dev trials were scored
    assert "decision threshold" in (root / "run" / "model" / "README.md").read_text()
    clips = [u.path for u in load_manifest(manifests["test"])]
    first = model.predict(clips)
    assert all(isinstance(r, SpeakerEmbedding) for r in first) and [r.path for r in first] == clips
    norms = torch.stack([r.embedding for r in first]).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(len(clips)))

    again = sf.load_model(model.save_pretrained(tmp_path / "copy"))
    assert again.task.threshold == model.task.threshold
    for a, b in zip(first, again.predict(clips)):
        assert torch.equal(a.embedding, b.embedding)

    # a model whose task never scored dev has no threshold: scores, no decision
    again.task.threshold = None
    bare = sf.load_model(again.save_pretrained(tmp_path / "bare"))
    assert bare.task.threshold is None
    trial = bare.verify(clips[0], clips[1])
    assert trial.decision is None and trial.threshold is None
    assert trial.score == pytest.approx(float(first[0].embedding @ first[1].embedding), abs=1e-6)


def test_verify_scores_pairs_and_decides_at_the_dev_threshold(run):
    import speechfuse as sf
    from speechfuse.data import read_audio

    root, manifests = run
    model = sf.load_model(root / "run")
    clips = [u.path for u in load_manifest(manifests["test"])]
    embedding = {r.path: r.embedding for r in model.predict(clips)}
    pairs = [(clips[i], clips[j]) for i in range(len(clips)) for j in range(i + 1, len(clips))]
    trials = model.verify(pairs)
    assert len(trials) == len(pairs) and all(isinstance(t, Verification) for t in trials)
    for (a, b), trial in zip(pairs, trials):
        assert (trial.enrol, trial.test) == (a, b)
        assert trial.score == pytest.approx(float(embedding[a] @ embedding[b]), abs=1e-5)
        assert trial.threshold == model.task.threshold
        assert trial.decision == (trial.score >= model.task.threshold)
    # the same trials given as two lists, and one of them as waveforms
    lists = model.verify([a for a, _ in pairs], [b for _, b in pairs])
    assert [t.score for t in lists] == pytest.approx([t.score for t in trials], abs=1e-6)
    wav = read_audio(pairs[0][1], model.sample_rate)
    one = model.verify(pairs[0][0], wav)
    assert one.test == "waveform-1" and one.score == pytest.approx(trials[0].score, abs=1e-5)


def test_predict_cli_writes_embeddings_as_jsonl_lists_and_csv_columns(run, tmp_path, capsys):
    root, manifests = run
    capsys.readouterr()
    assert main(["predict", str(root / "run"), str(manifests["test"]), "--out", str(tmp_path / "p.jsonl")]) == 0
    assert main(["predict", str(root / "run"), str(manifests["test"]), "--out", str(tmp_path / "p.csv")]) == 0
    summary = capsys.readouterr().out
    assert "metrics" not in summary  # speakers are references for trials, not for each file
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.DictReader(f))
    embed_dim = 64
    assert len(rows) == len(table) == len(load_manifest(manifests["test"]))
    for row, line in zip(rows, table):
        assert set(row) == {"id", "path", "duration", "embedding"} and len(row["embedding"]) == embed_dim
        assert row["id"] == line["id"] and line["prediction"] == "" and line["error"] == ""
        assert [float(line[f"emb_{i}"]) for i in range(embed_dim)] == row["embedding"]


def test_verify_is_refused_for_other_tasks_and_bad_arguments(run, tmp_path):
    import speechfuse as sf
    from speechfuse.config import config_from_dict
    from speechfuse.model import FusedModel, build_task
    from test_model import run_config

    root, manifests = run
    clips = [u.path for u in load_manifest(manifests["test"])]
    cfg = config_from_dict(run_config(manifests, [{"spec": f"hf:{root / 'hubert'}"}], task="classify"))
    classifier = FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"])))  # digits
    with pytest.raises(ConfigError, match="task is 'classify', which predicts but does not score trials"):
        classifier.verify(clips[0], clips[1])

    model = sf.load_model(root / "run")
    with pytest.raises(ConfigError, match="same length"):
        model.verify(clips[:2], clips[:1])
    with pytest.raises(ConfigError, match="one clip"):
        model.verify([(clips[0], root / "run")])  # a folder is not one clip
    with pytest.raises(ConfigError, match="pairs"):
        model.verify(clips)


def test_verify_applies_as_norm_like_dev_scoring(run):
    """With score_norm asnorm, verify() normalises against the cosines the head gives (its training
    speakers' vectors), the cohort that scoring dev used."""
    import speechfuse as sf
    from speechfuse.data import read_audio
    from speechfuse.tasks.verify import as_norm

    root, manifests = run
    model = sf.load_model(root / "run")
    model.task.options["score_norm"], model.task.options["cohort_top"] = "asnorm", 2
    clips = [u.path for u in load_manifest(manifests["test"])][:4]
    pairs = [(clips[0], clips[1]), (clips[2], clips[3]), (clips[0], clips[3])]
    cohort, unit = [], []
    with torch.no_grad():
        for path in clips:  # one clip at a time through the whole model: the head's own cosines
            wav = read_audio(path, model.sample_rate)
            embedding, cosines = model(wav[None], torch.tensor([wav.numel()]))
            unit.append(torch.nn.functional.normalize(embedding[0], dim=-1))
            cohort.append(cosines[0])
    unit, cohort = torch.stack(unit), torch.stack(cohort)
    e, t = [clips.index(a) for a, _ in pairs], [clips.index(b) for _, b in pairs]
    expected = as_norm((unit[e] * unit[t]).sum(-1), cohort, e, t, 2)
    got = [trial.score for trial in model.verify(pairs)]
    assert got == pytest.approx(expected.tolist(), abs=1e-4)
    raw = (unit[e] * unit[t]).sum(-1)
    assert not torch.allclose(torch.tensor(got), raw, atol=1e-3)  # normalised, not the raw cosines
