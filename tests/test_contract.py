"""The task contract: every task (asr, classify, verify, multilingual_asr, and the example plug-in's
label-smoothed classify) through every consumer (train and sweep, evaluate, predict API and CLI, verify,
whole-model export to TorchScript and ONNX, the model card, table, compare), on tiny models trained for 4 steps
on real FSDD clips. Each consumer gives the task's own kind of output, or refuses the task in one line with a
non-zero exit; none compares a task's name."""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import make_fsdd, REPO, save_tiny_model, SPEAKERS
from speechfuse.cli import main
from speechfuse.data import load_manifest, write_manifest

pytestmark = pytest.mark.slow  # every test here trains or launches processes

# the example plug-in's task (examples/speechfuse_example): a user's own task, reached by --plugin
PLUGIN_FOLDER = REPO / "examples" / "speechfuse_example"
PLUGIN_MODULE, PLUGIN_TASK = "speechfuse_example", "example_smoothed_classify"
TASKS = ["asr", "classify", "verify", "multilingual_asr", PLUGIN_TASK]
CLASSIFIERS = ("classify", PLUGIN_TASK)  # tasks whose records are labels with probabilities
HEADS = {
    "asr": {"proj_dim": 16, "hidden_size": 16, "num_layers": 1},
    "classify": {"hidden_dim": 16},
    "verify": {"channels": [32, 32, 32], "kernel_sizes": [5, 3, 1], "dilations": [1, 2, 1], "embed_dim": 16},
    "multilingual_asr": {"proj_dim": 16, "hidden_size": 16, "num_layers": 1, "language_token": True},
    PLUGIN_TASK: {"hidden_dim": 16, "label_smoothing": 0.1},
}
LANGUAGE = {"george": "en", "jackson": "de", "lucas": "fr"}  # a stand-in language per FSDD speaker
CARD_WORDS = {"asr": "character CTC speech recognition", "classify": "utterance classification of `label`",
              "verify": "speaker verification", "multilingual_asr": "multilingual character CTC speech recognition",
              PLUGIN_TASK: "utterance classification of `label`"}


@pytest.fixture(scope="module")
def example_plugin():
    """The example plug-in's source folder on the import path (no install, so no entry point): its names
    are known once `--plugin` imports it. Afterwards this process forgets the module and its components
    again, as test_plugins.py expects of a process that never imported it."""
    from speechfuse.fusion.interfaces import INTERFACES
    from speechfuse.fusion.upstream import UPSTREAMS
    from speechfuse.tasks import TASKS as TASK_REGISTRY

    registries = (UPSTREAMS, INTERFACES, TASK_REGISTRY)
    known = [set(registry.names()) for registry in registries]  # built-ins loaded before the plug-in
    assert PLUGIN_TASK not in known[2]
    sys.path.insert(0, str(PLUGIN_FOLDER))
    yield
    sys.path.remove(str(PLUGIN_FOLDER))
    for registry, names in zip(registries, known):
        for name in set(registry.names()) - names:
            del registry._entries[name]  # no public way to unregister: only tests need it
    for module in [m for m in sys.modules if m == PLUGIN_MODULE or m.startswith(f"{PLUGIN_MODULE}.")]:
        del sys.modules[module]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, example_plugin):
    """Per task: a sweep of two seeds (one tiny HuBERT, weighted sum, 4 steps) -> (sweep folder, its runs)."""
    root = tmp_path_factory.mktemp("contract")
    manifests = make_fsdd(root, speakers=SPEAKERS[:3])
    multilingual = {}
    for split, path in manifests.items():
        utts = load_manifest(path)
        for u in utts:
            u.language = LANGUAGE[u.speaker]
        multilingual[split] = write_manifest(utts, root / "multilingual" / f"{split}.csv")
    upstream = save_tiny_model("hubert", root / "hubert")
    out = {}
    for task in TASKS:
        data = multilingual if task == "multilingual_asr" else manifests
        config = {"task": task, "data": {k: str(v) for k, v in data.items()},
                  "upstreams": [{"spec": f"hf:{upstream}"}], "interface": {"name": "weighted_sum"},
                  "downstream": HEADS[task],
                  "train": {"max_steps": 4, "val_every_steps": 2, "batch_seconds": 4, "lr": 3e-3,
                            "progress_bar": False, "importance": False}}
        path = root / f"{task}.yaml"
        path.write_text(yaml.safe_dump(config))
        sweep = root / f"sweep_{task}"
        plugin = ["--plugin", PLUGIN_MODULE] if task == PLUGIN_TASK else []
        assert main(["sweep", str(path), "--grid", "interface.name=weighted_sum", "--seeds", "0,1",
                     "--out", str(sweep), *plugin]) == 0
        out[task] = (sweep, sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()))
    return manifests, multilingual, out


def _model(trained, task):
    import speechfuse as sf

    return sf.load_model(trained[2][task][1][0] / "model", device="cpu")


def _test_manifest(trained, task) -> Path:
    return trained[1 if task == "multilingual_asr" else 0]["test"]


def _one_line_error(capsys) -> str:
    """The CLI's error: one line, its last on stderr (transformers may draw its weight-loading bar above)."""
    err = capsys.readouterr().err.strip()
    assert err and "Traceback" not in err and re.match(r"speechfuse \w+: error: ", err.splitlines()[-1]), err
    return err.splitlines()[-1]


# -- train and sweep, evaluate --------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_train_and_sweep_record_the_task_main_metric(trained, task, capsys):
    from speechfuse.tasks import get_task

    sweep, runs = trained[2][task]
    main_metric = get_task(task).main_metric
    with open(sweep / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 == len(runs)
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        value = metrics["test"][main_metric]
        # accuracy and EER are rates; WER / CER also count insertions, so after 4 steps they may pass 1
        assert 0 <= value <= 1 if task in (*CLASSIFIERS, "verify") else 0 <= value < float("inf")
        assert (run / "model" / "config.json").is_file()
    assert all(float(r[f"test_{main_metric}"]) >= 0 for r in rows)

    # evaluate rebuilds the best checkpoint and scores the same test set to the same numbers
    capsys.readouterr()
    assert main(["evaluate", str(runs[0]), "--split", "test", "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)["test"]
    recorded = json.loads((runs[0] / "metrics.json").read_text())["test"]
    assert again[main_metric] == pytest.approx(recorded[main_metric], abs=1e-6)


# -- predict: the API and the CLI -----------------------------------------------------------------------
def _check_record(task, model, record):
    from speechfuse.tasks import predictions as p

    assert isinstance(record, model.task.prediction_type)
    if task == "asr":
        assert type(record) is p.Transcription and set(record.text) <= set(model.task.vocab[2:]) | {" "}
    elif task == "multilingual_asr":
        assert isinstance(record, p.LanguageTranscription)
        assert record.language in (None, *model.task.languages) and "[" not in record.text
        assert set(record.text) <= set(model.task.vocab[2:]) | {" "}
    elif task in CLASSIFIERS:
        assert type(record) is p.Classification and list(record.probabilities) == model.task.labels
        assert sum(record.probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert record.label == max(record.probabilities, key=record.probabilities.get)
    else:
        assert type(record) is p.SpeakerEmbedding and record.embedding.shape == (16,)
        assert float(record.embedding.norm()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("task", TASKS)
def test_predict_api_returns_the_task_record_for_every_clip(trained, task):
    model = _model(trained, task)
    clips = [u.path for u in load_manifest(_test_manifest(trained, task))]
    results = model.predict(clips, batch_seconds=2.0)
    assert [r.path for r in results] == clips
    for record in results:
        _check_record(task, model, record)


@pytest.mark.parametrize("task", TASKS)
def test_predict_cli_writes_a_prediction_per_clip_and_scores_references(trained, task, tmp_path, capsys):
    from speechfuse.tasks import get_task

    model_dir = trained[2][task][1][0] / "model"
    manifest = _test_manifest(trained, task)
    n = len(load_manifest(manifest))
    summaries = {}
    for fmt in ("jsonl", "csv"):
        capsys.readouterr()
        out = tmp_path / f"p.{fmt}"
        assert main(["predict", str(model_dir), str(manifest), "--out", str(out), "--device", "cpu"]) == 0
        summaries[fmt] = summary = json.loads(capsys.readouterr().out)
        assert summary["predicted"] == n and summary["failed"] == 0
        if fmt == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert len(rows) == n and not any(r.get("error") for r in rows)
            key = {"asr": "text", "multilingual_asr": "text", "classify": "label", "verify": "embedding",
                   PLUGIN_TASK: "label"}[task]
            assert all(key in r for r in rows)
        else:
            with open(out, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == n and not any(r["error"] for r in rows)
            if task == "multilingual_asr":
                assert "language" in rows[0]
    if task == "verify":  # an embedding has no per-clip reference: scored over trials by evaluate / verify
        assert "metrics" not in summaries["jsonl"] and "metrics" not in summaries["csv"]
    else:
        assert get_task(task).main_metric in summaries["jsonl"]["metrics"]
        # the CSV's prediction cells score exactly like the JSONL records (language token included)
        assert summaries["csv"]["metrics"] == pytest.approx(summaries["jsonl"]["metrics"])
        if task == "multilingual_asr":
            assert "lid_accuracy" in summaries["jsonl"]["metrics"]


@pytest.mark.parametrize("language_token", [True, False])
def test_multilingual_records_carry_the_language_only_with_a_language_token(language_token):
    from speechfuse.data.manifest import Utterance
    from speechfuse.tasks.predictions import LanguageTranscription, Transcription
    from speechfuse.tasks import get_task

    task = get_task("multilingual_asr", language_token=language_token).fit(
        [Utterance("a", "a.wav", text="hi", language="en"), Utterance("b", "b.wav", text="ha", language="de")])
    spelled = (["[en]"] if language_token else []) + ["h", "<blank>", "i"]
    out = torch.full((1, len(spelled), len(task.vocab)), -10.0)
    for frame, symbol in enumerate(spelled):
        out[0, frame, task.vocab.index(symbol)] = 10.0
    (record,) = task.predictions(out, torch.tensor([len(spelled)]), [{"id": "x", "path": None, "duration": 1.0}])
    if language_token:
        assert isinstance(record, LanguageTranscription) and (record.text, record.language) == ("hi", "en")
        assert task.prediction_columns() == ["language"]
        assert record.csv_cells() == {"prediction": "hi", "language": "en"}
    else:
        assert type(record) is Transcription and record.text == "hi" and task.prediction_columns() == []
    # what predict --out writes is scored as the task's own prediction string, language token included
    assert task.scored_prediction(record.to_dict()) == task.predict(out, torch.tensor([len(spelled)]))[0]
    assert task.scored_prediction({"id": "x", "error": "unreadable"}) is None


def test_a_task_without_a_prediction_type_is_refused_in_one_line(trained, tmp_path, capsys, monkeypatch):
    from speechfuse.tasks.classify import ClassifyTask

    monkeypatch.setattr(ClassifyTask, "prediction_type", None)
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(trained[2]["classify"][1][0] / "model"), str(trained[0]["test"]),
                 "--out", str(out), "--device", "cpu"]) == 2
    assert "no per-clip prediction type" in _one_line_error(capsys)
    assert not out.exists()


# -- verify -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_verify_serves_verification_models_and_refuses_the_rest_in_one_line(trained, task, capsys):
    from speechfuse.errors import ConfigError

    model = _model(trained, task)
    a, b = [u.path for u in load_manifest(_test_manifest(trained, task))][:2]
    capsys.readouterr()
    code = main(["verify", str(trained[2][task][1][0] / "model"), a, b, "--device", "cpu"])
    if model.task.scores_trials:
        assert code == 0
        result = json.loads(capsys.readouterr().out)
        assert -1 <= result["score"] <= 1 and result["score"] == pytest.approx(model.verify(a, b).score, abs=1e-5)
        assert result["decision"] == (result["score"] >= result["threshold"])
    else:
        assert code == 2 and "verify needs a speaker verification model" in _one_line_error(capsys)
        with pytest.raises(ConfigError, match="does not score trials"):
            model.verify(a, b)


def test_verify_counts_a_pair_listed_twice_once_and_refuses_it_relabelled(trained, tmp_path, capsys):
    utts = load_manifest(trained[0]["test"])
    pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]]
    lines = [f"{int(a.speaker == b.speaker)} {a.path} {b.path}" for a, b in pairs]
    model = str(trained[2]["verify"][1][0] / "model")
    summaries = []
    for name, listed in (("once", lines), ("twice", lines + lines[:3])):
        (tmp_path / f"{name}.txt").write_text("\n".join(listed) + "\n")
        capsys.readouterr()
        assert main(["verify", model, "--trials", str(tmp_path / f"{name}.txt"), "--out",
                     str(tmp_path / f"{name}.jsonl"), "--device", "cpu"]) == 0
        summaries.append(json.loads(capsys.readouterr().out))
        assert len((tmp_path / f"{name}.jsonl").read_text().splitlines()) == len(lines)  # one row per pair
    once, twice = summaries
    assert twice["skipped"] == 3 and twice["metrics_trials"] == once["metrics_trials"] == len(lines)
    assert twice["metrics"] == pytest.approx(once["metrics"])
    flipped = lines + [f"{1 - int(lines[0][0])}{lines[0][1:]}"]
    (tmp_path / "flipped.txt").write_text("\n".join(flipped) + "\n")
    assert main(["verify", model, "--trials", str(tmp_path / "flipped.txt"), "--out", str(tmp_path / "f.jsonl"),
                 "--device", "cpu"]) == 2
    assert f"line {len(flipped)}: the pair" in _one_line_error(capsys)


# -- whole-model export ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("task", TASKS)
def test_whole_export_has_the_task_outputs_and_matches_eager_on_several_lengths(trained, task, fmt, tmp_path):
    from speechfuse.data import read_audio
    from speechfuse.serving.export import export_whole

    model = _model(trained, task).eval()
    path = export_whole(model, tmp_path / f"m.{fmt}", format=fmt)
    names = list(model.task.output_axes)
    assert json.loads(Path(f"{path}.json").read_text())["outputs"] == names
    if fmt == "torchscript":
        graph = torch.jit.load(str(path))
        run = lambda w, n: [t.detach().numpy() for t in graph(w, n)]  # noqa: E731
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == names
        run = lambda w, n: session.run(None, {"wavs": w.numpy(), "wav_lengths": n.numpy()})  # noqa: E731
    clips = [read_audio(u.path, model.sample_rate) for u in load_manifest(_test_manifest(trained, task))]
    clips = sorted(clips, key=len)
    picked = [clips[0], clips[len(clips) // 2], clips[-1]]
    assert len({c.numel() for c in picked}) == 3
    frames = set()
    for batch in ([picked[0]], [picked[1]], [picked[2]], [picked[2], picked[0]]):
        lengths = torch.tensor([c.numel() for c in batch])
        wavs = torch.zeros(len(batch), int(lengths.max()))
        for i, c in enumerate(batch):
            wavs[i, : c.numel()] = c
        with torch.no_grad():
            expected = [t.numpy() for t in model.task.serving_outputs(*model(wavs, lengths))]
        got = run(wavs, lengths)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, atol=1e-4 * max(1.0, float(np.abs(e).max())))
        frames.add(got[0].shape[1] if got[0].ndim == 3 else None)
    if 1 in model.task.output_axes[names[0]]:  # CTC logits: the frame axis follows the clip's length
        assert len(frames) == 3
    else:
        assert frames == {None}


# -- the model card ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_model_card_says_what_the_model_is_and_its_rows_match_the_header(trained, task):
    run = trained[2][task][1][0]
    lines = (run / "model" / "README.md").read_text().splitlines()
    assert lines[0] == "---"  # the hub metadata (front matter) comes first
    card = lines[lines.index("---", 1) + 1:]
    title = next(line for line in card if line.strip())
    assert CARD_WORDS[task] in title and (task == "multilingual_asr") == ("multilingual" in title)
    metrics = json.loads((run / "metrics.json").read_text())
    start = next(i for i, line in enumerate(card) if line.startswith("| split |"))
    header = [c.strip() for c in card[start].strip("|").split("|")][1:]
    from speechfuse.tasks import get_task

    assert header[0] == get_task(task).main_metric
    assert set(header) == {k for values in metrics.values() for k in values}
    rows = card[start + 2: start + 2 + len(metrics)]
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        split, values = cells[0], cells[1:]
        assert len(values) == len(header)
        for name, value in zip(header, values):
            expected = metrics[split].get(name)
            assert value == ("–" if expected is None else f"{expected:.4f}"), (split, name)


# -- table and compare ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_table_gives_fsdd_runs_a_column_named_after_task_and_data(trained, task, tmp_path):
    from speechfuse.experiments.table import COLUMNS, paper_table
    from speechfuse.tasks import get_task

    sweep, runs = trained[2][task]
    metric = get_task(task).main_metric
    (row,) = paper_table([sweep], tmp_path / "t.md")
    mean = np.mean([json.loads((r / "metrics.json").read_text())["test"][metric] for r in runs])
    assert row[f"{task} {metric} on fsdd (%)"] == f"{100 * mean:.2f}"
    assert all(row[f"{c} (%)"] == "–" for c in COLUMNS)  # FSDD is none of the paper's corpora


@pytest.mark.parametrize("task", TASKS)
def test_compare_pairs_two_runs_or_refuses_a_task_without_utterance_metric(trained, task, capsys):
    from speechfuse.tasks import get_task

    runs = trained[2][task][1]
    capsys.readouterr()
    code = main(["compare", str(runs[0]), str(runs[1])])
    metric = get_task(task).utterance_metric
    if metric is None:
        assert code == 2 and "cannot be compared utterance by utterance" in _one_line_error(capsys)
        return
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    recorded = [json.loads((r / "metrics.json").read_text())["test"][metric] for r in runs]
    assert result["metric"] == metric and [result["a"], result["b"]] == pytest.approx(recorded)


# -- no task-name comparison outside tasks/ -------------------------------------------------------------
NAME_COMPARISON = re.compile(r"""(task\w*(\.name|\[["']name["']\])?|\.name)\s*(==|!=|\bin\b|\bnot in\b)\s*"""
                             r"""[\(\[\{]?\s*["'](asr|classify|verify|multilingual_asr)["']""")


def test_no_module_outside_tasks_compares_a_task_name():
    src = Path(__file__).resolve().parents[1] / "src" / "speechfuse"
    tasks = src / "tasks"
    hits = [f"{path.relative_to(src)}:{n}: {line.strip()}"
            for path in sorted(src.rglob("*.py")) if tasks not in path.parents
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if NAME_COMPARISON.search(line)]
    assert hits == []
    # the pattern does catch the comparisons this test exists to keep out
    for line in ['if task.name == "asr":', "if model.task.name != 'verify':", 'if task["name"] == "verify":',
                 'if task == "multilingual_asr":', 'x = cfg.task in ("asr", "classify")']:
        assert NAME_COMPARISON.search(line), line
