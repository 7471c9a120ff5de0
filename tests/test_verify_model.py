"""A trained verification model as a product, on real FSDD clips: typed embeddings from predict, exact
save/load round trip (embeddings and the dev EER threshold), verify() trials and decisions, the predict
CLI's jsonl/csv rows, `speechfuse verify` (one pair, trial lists with failures, resume, metrics), and clear
errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import make_fsdd, run_config, save_tiny_model, SPEAKERS, verify_config
from speechfuse.cli import main
from speechfuse.data import load_manifest
from speechfuse.errors import ConfigError
from speechfuse.serving.inference import SpeakerEmbedding, Verification


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny hubert verify model trained 4 steps through the CLI (3 speakers, digits 0-1)."""
    root = tmp_path_factory.mktemp("verify_model")
    manifests = make_fsdd(root, speakers=SPEAKERS[:3])
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
    one = model.verify(pairs[0][0], wav, sample_rate=model.sample_rate)
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
    from speechfuse.fusion.model import FusedModel, build_task

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
    """With score_norm asnorm and cohort class_vectors, verify() normalises against the cosines the head
    gives (its training speakers' vectors), the cohort that scoring dev used."""
    import speechfuse as sf
    from speechfuse.data import read_audio
    from speechfuse.tasks.verify import as_norm

    root, manifests = run
    model = sf.load_model(root / "run")
    model.task.options.update(score_norm="asnorm", cohort="class_vectors", cohort_top=2)
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


# ---------------------------------------------------------------------------------------------
# speechfuse verify: one pair, and trial lists streamed to a file
# ---------------------------------------------------------------------------------------------
def _speaker(path) -> str:
    return Path(path).name.split("_")[1]  # FSDD files are {digit}_{speaker}_{take}.flac


def _trial_list(clips, missing: str, broken: str) -> tuple[list[tuple[str, str, int]], str]:
    """Every pair of the clips (names relative to their folder), labelled by speaker, with `missing` as the
    test side of the third trial and `broken` as the enrol side of the fifth; and the file's text."""
    names = [Path(c).name for c in clips]
    trials = [(a, b, int(_speaker(a) == _speaker(b))) for i, a in enumerate(names) for b in names[i + 1:]]
    trials.insert(2, (names[0], missing, 1))
    trials.insert(4, (broken, names[1], 0))
    return trials, "".join(f"{y} {a} {b}\n" for a, b, y in trials)


def _rows(path):
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [{**r, "score": float(r["score"]) if r["score"] else None} for r in csv.DictReader(f)]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_verify_cli_one_pair_equals_model_verify(run, capsys):
    import speechfuse as sf

    root, manifests = run
    clips = [u.path for u in load_manifest(manifests["test"])]
    expected = sf.load_model(root / "run").verify(clips[0], clips[3])
    capsys.readouterr()
    assert main(["verify", str(root / "run"), clips[0], clips[3], "--device", "cpu"]) == 0  # as the model above
    printed = json.loads(capsys.readouterr().out)
    assert printed == expected.to_dict()
    assert printed["decision"] == (printed["score"] >= printed["threshold"])


def test_verify_cli_trial_list_lists_a_missing_file_and_scores_the_rest(run, tmp_path, capsys):
    import speechfuse as sf
    from speechfuse.metrics.verification import equal_error_rate, min_dcf

    root, manifests = run
    clips = [u.path for u in load_manifest(manifests["test"])]
    model = sf.load_model(root / "run")
    broken = tmp_path / "broken.flac"  # an absolute name: --root does not apply to it
    broken.write_bytes(b"not audio at all" * 64)
    trials, text = _trial_list(clips, missing="gone.flac", broken=str(broken))
    (tmp_path / "veri.txt").write_text(text)
    good = [(a, b, y) for a, b, y in trials if b != "gone.flac" and a != str(broken)]
    recordings = str(root / "recordings")
    expected = model.verify([(f"{recordings}/{a}", f"{recordings}/{b}") for a, b, _ in good])
    for suffix in ("jsonl", "csv"):
        out = tmp_path / f"scores.{suffix}"
        capsys.readouterr()
        assert main(["verify", str(root / "run"), "--trials", str(tmp_path / "veri.txt"), "--root", recordings,
                     "--out", str(out), "--batch-seconds", "2", "--device", "cpu"]) == 0  # several chunks
        summary = json.loads(capsys.readouterr().out)
        rows = _rows(out)
        assert [(r["enrol"], r["test"]) for r in rows] == [(a, b) for a, b, _ in trials]
        missing, unreadable = rows[2], rows[4]
        assert missing["score"] is None and missing["error"].startswith("test: audio file not found")
        assert "gone.flac" in missing["error"]
        assert unreadable["score"] is None and unreadable["error"].startswith("enrol: cannot read")
        assert str(broken) in unreadable["error"]
        scored = [r for r in rows if r["score"] is not None]
        assert all(r["error"] in (None, "") for r in scored)
        assert [r["score"] for r in scored] == pytest.approx([t.score for t in expected], abs=1e-5)
        assert summary["scored"] == len(good) and summary["failed"] == 2 and summary["skipped"] == 0
        # the printed metrics are those of the written scores
        scores, labels = [r["score"] for r in scored], [y for _, _, y in good]
        assert summary["metrics"]["eer"] == pytest.approx(equal_error_rate(scores, labels), abs=1e-12)
        assert summary["metrics"]["min_dcf_0.01"] == pytest.approx(min_dcf(scores, labels, 0.01), abs=1e-12)
        decisions = [s >= model.task.threshold for s in scores]
        assert summary["metrics"]["accuracy"] == pytest.approx(
            sum(d == bool(y) for d, y in zip(decisions, labels)) / len(labels))
        if suffix == "jsonl":
            assert [r["decision"] for r in scored] == decisions and all(r["label"] in (0, 1) for r in rows)


def test_verify_cli_rerun_after_a_partial_output_writes_no_duplicates(run, tmp_path, capsys):
    root, manifests = run
    clips = [u.path for u in load_manifest(manifests["test"])]
    trials, text = _trial_list(clips, missing="gone.flac", broken=str(tmp_path / "gone-too.wav"))
    (tmp_path / "veri.txt").write_text(text)
    args = ["verify", str(root / "run"), "--trials", str(tmp_path / "veri.txt"), "--root", str(root / "recordings"),
            "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "full.jsonl")]) == 0
    full = (tmp_path / "full.jsonl").read_text().splitlines()
    # what a kill leaves: 5 whole rows and half of the sixth
    (tmp_path / "part.jsonl").write_text("\n".join(full[:5]) + "\n" + full[5][: len(full[5]) // 2])
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "part.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 5 and summary["scored"] + summary["failed"] == len(trials) - 5
    rows, reference = _rows(tmp_path / "part.jsonl"), [json.loads(line) for line in full]
    assert len({(r["enrol"], r["test"]) for r in rows}) == len(rows) == len(trials)
    assert sorted((r["enrol"], r["test"]) for r in rows) == sorted((r["enrol"], r["test"]) for r in reference)
    by_pair = {(r["enrol"], r["test"]): r["score"] for r in reference}
    for row in rows:
        assert row["score"] == pytest.approx(by_pair[row["enrol"], row["test"]], abs=1e-5)
    # a predictions file is not a scores file: refused, and left as it was
    (tmp_path / "p.jsonl").write_text('{"id": "a.wav", "path": "a.wav", "error": "x"}\n')
    assert main(args + ["--out", str(tmp_path / "p.jsonl")]) == 2
    assert "its rows are not `speechfuse verify` rows (KeyError('enrol'))" in capsys.readouterr().err
    assert (tmp_path / "p.jsonl").read_text() == '{"id": "a.wav", "path": "a.wav", "error": "x"}\n'
    # a third run has nothing left to do
    assert main(args + ["--out", str(tmp_path / "part.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == len(trials)
    assert len(_rows(tmp_path / "part.jsonl")) == len(trials)


def test_verify_cli_unlabelled_list_relative_to_its_folder_repeats_scored_once(run, tmp_path, capsys):
    import shutil

    root, manifests = run
    clips = [u.path for u in load_manifest(manifests["test"])][:3]
    (tmp_path / "lists" / "wav").mkdir(parents=True)
    for c in clips:
        shutil.copy(c, tmp_path / "lists" / "wav")
    names = [f"wav/{Path(c).name}" for c in clips]
    # the third line repeats the first: scored once; the fourth names the same file another way: its own trial
    lines = [f"{names[0]} {names[1]}", f"{names[0]} {names[2]}", f"{names[0]} {names[1]}", f"./{names[0]} {names[1]}"]
    (tmp_path / "lists" / "pairs.txt").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["verify", str(root / "run"), "--trials", str(tmp_path / "lists" / "pairs.txt"),
                 "--out", str(tmp_path / "s.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scored"] == 3 and summary["skipped"] == 1 and "metrics" not in summary  # no labels, no EER
    rows = _rows(tmp_path / "s.jsonl")
    assert [r["label"] for r in rows] == [None] * 3 and all(r["error"] is None for r in rows)
    assert rows[2]["score"] == pytest.approx(rows[0]["score"], abs=1e-6)


def test_verify_cli_errors_are_one_line(run, tmp_path, capsys):
    from speechfuse.config import config_from_dict
    from speechfuse.fusion.model import FusedModel, build_task

    root, manifests = run
    clips = [u.path for u in load_manifest(manifests["test"])]
    cfg = config_from_dict(run_config(manifests, [{"spec": f"hf:{root / 'hubert'}"}], task="classify"))
    classifier = FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"])))
    folder = classifier.save_pretrained(tmp_path / "digits")
    for argv, needle in [
        (["verify", str(folder), clips[0], clips[1]], "is a 'classify' model; verify needs a speaker verification"),
        (["verify", str(root / "run"), clips[0]], "give two clips (A B) or --trials FILE, got 1"),
        (["verify", str(root / "run"), clips[0], str(tmp_path / "gone.wav")],
         f"B (test): audio file not found: {tmp_path / 'gone.wav'}"),
        (["verify", str(root / "run"), str(root / "recordings"), clips[0]], "A (enrol): "),
        (["verify", str(root / "run"), "--trials", "t.txt"], "--trials needs --out"),
        (["verify", str(root / "run"), "--trials", "t.txt", "--out", "s.txt"], "must end in .jsonl or .csv"),
        (["verify", str(root / "run"), "--trials", str(tmp_path / "none.txt"), "--out", str(tmp_path / "s.csv")],
         "trial list not found"),  # before the model loads (test_verify_checks_its_trial_list_before_the_model_loads)
    ]:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err  # (transformers may draw its weight-loading bar above)
        assert "Traceback" not in err and needle in err.splitlines()[-1], err
        assert err.splitlines()[-1].startswith("speechfuse verify: error: "), err


@pytest.mark.parametrize("cohort", ["class_vectors", "utterances"])
def test_verify_to_file_applies_as_norm_like_verify(run, tmp_path, cohort):
    """With score_norm asnorm the streamed scores are verify()'s AS-normalised ones, for either cohort kind."""
    import speechfuse as sf
    from speechfuse.serving.verify_trials import verify_to_file

    root, manifests = run
    model = sf.load_model(root / "run")
    model.task.options.update(score_norm="asnorm", cohort=cohort, cohort_top=2)
    if cohort == "utterances":  # the training clips' embeddings as the cohort, all of them as the top
        train = [r.embedding for r in model.predict([u.path for u in load_manifest(manifests["train"])])]
        model.task.cohort = torch.stack(train)
        model.task.options["cohort_top"] = len(train)  # (the top 2 of near-twins: a tiny std amplifies noise)
    clips = [u.path for u in load_manifest(manifests["test"])]
    pairs = [(a, b) for i, a in enumerate(clips) for b in clips[i + 1:]]
    (tmp_path / "t.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))  # absolute paths
    summary = verify_to_file(model, tmp_path / "t.txt", tmp_path / "s.jsonl", batch_seconds=2, progress=False)
    assert summary["scored"] == len(pairs)
    expected = [t.score for t in model.verify(pairs)]
    # (the two embed in different batches: float noise of ~1e-6, divided by the cohort's small std)
    assert [r["score"] for r in _rows(tmp_path / "s.jsonl")] == pytest.approx(expected, abs=1e-3)
    model.task.options["score_norm"] = "none"
    raw = [t.score for t in model.verify(pairs)]
    assert not expected == pytest.approx(raw, abs=1e-3)  # normalised, not the raw cosines


def test_verify_checks_its_trial_list_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import speechfuse.cli.verify as verify

    monkeypatch.setattr(verify, "load_trained_model", lambda *a, **k: pytest.fail("the model loaded first"))
    argv = ["verify", str(tmp_path / "model"), "--trials", str(tmp_path / "none.txt"), "--out", str(tmp_path / "s.csv")]
    assert main(argv) == 2
    assert "trial list not found" in capsys.readouterr().err and not (tmp_path / "s.csv").exists()
