"""Multilingual ASR: text normalisation over scripts, per-language metrics, the language-ID token."""
from __future__ import annotations

import pickle
import unicodedata

import pytest
import torch

from speechfuse.data import Utterance
from speechfuse.errors import ConfigError
from speechfuse.tasks import Task, check_targets_known, get_task
from speechfuse.tasks.asr import normalize_text
from speechfuse.tasks.multilingual import Reference


def rows(pairs: list[tuple[str, str]]) -> list[Utterance]:
    return [Utterance(f"u{i}", f"/nowhere/u{i}.wav", text=text, language=lang) for i, (lang, text) in enumerate(pairs)]


# -- normalisation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["asr", "multilingual_asr"])
def test_composed_and_decomposed_text_give_the_same_ids(name):
    composed = "café über ελληνικά"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed and len(decomposed) > len(composed)
    task = get_task(name).fit(rows([("fr", composed)]))
    a, b = task.encode(rows([("fr", composed), ("fr", decomposed)]))[0]
    assert a.tolist() == b.tolist()
    assert "\u0301" not in task.vocab and "é" in task.vocab  # one vocabulary entry per composed character


def test_only_letters_with_case_are_lower_cased_and_case_can_be_kept():
    text = "Привет ΣΟΦΙΑ 東京 नमस्ते Hello"
    assert normalize_text(text) == "привет σοφια 東京 नमस्ते hello"  # final capital sigma -> ς
    assert normalize_text(text, case="keep") == text
    task = get_task("asr", case="keep").fit(rows([("ru", "Привет")]))
    assert "П" in task.vocab and "п" not in task.vocab


def test_punctuation_keep_or_strip():
    text = "¿Qué tal?  «Très bien», dit-il. 你好。"
    assert normalize_text(text) == "¿qué tal? «très bien», dit-il. 你好。"
    assert normalize_text(text, punctuation="strip") == "qué tal très bien ditil 你好"
    task = get_task("asr", punctuation="strip").fit(rows([("es", text)]))
    assert not {"¿", "?", "«", "»", ",", "-", ".", "。"} & set(task.vocab)
    # ESPnet's ML-SUPERB process_text: text.translate(str.maketrans("", "", string.punctuation)), ASCII only
    assert normalize_text(text, punctuation="strip_ascii") == "¿qué tal «très bien» ditil 你好。"
    assert normalize_text("[laughter] it's 5$ (so-so)_~", punctuation="strip_ascii") == "laughter its 5 soso"


def test_text_options_are_typed():
    with pytest.raises(ConfigError, match="punctuation"):
        get_task("asr", punctuation="remove")
    with pytest.raises(ConfigError, match="case"):
        get_task("multilingual_asr", case="upper")


# -- per-language metrics ----------------------------------------------------------------------------

def test_per_language_cer_wer_and_macro_on_hand_made_predictions():
    task = get_task("multilingual_asr").fit(rows([("en", "abc"), ("de", "über"), ("zh", "你好")]))
    refs = ["abcd", "hello", "über", "你好世界"]
    preds = ["abxd", "hello", "uber", "你好"]
    languages = ["en", "en", "de", "zh"]
    m = task.metrics(preds, refs, languages=languages)
    # by hand: en 1 substitution in 4 + 5 characters, 1 wrong word of 2; de 1 of 4 (ü -> u), 1 word of 1;
    # zh 2 deletions in 4 characters, and no WER (written without spaces)
    assert m["cer_en"] == pytest.approx(1 / 9) and m["wer_en"] == pytest.approx(1 / 2)
    assert m["cer_de"] == pytest.approx(1 / 4) and m["wer_de"] == pytest.approx(1.0)
    assert m["cer_zh"] == pytest.approx(2 / 4) and "wer_zh" not in m
    assert m["cer_macro"] == pytest.approx((1 / 9 + 1 / 4 + 2 / 4) / 3)
    assert m["wer_macro"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["cer"] == pytest.approx(4 / 17)                     # all rows together
    assert m["wer"] == pytest.approx(2 / 3)                      # the space-separated rows only
    assert "lid_accuracy" not in m
    # the references the task builds carry their language, so the trainer needs no languages argument
    built = task.references(rows(list(zip(languages, refs))))
    assert all(isinstance(r, Reference) for r in built) and [r.language for r in built] == languages
    assert task.metrics(preds, built) == m
    assert pickle.loads(pickle.dumps(built[3])).language == "zh"  # survives a trip between processes


def test_no_space_rule_uses_the_primary_code_and_is_configurable():
    task = get_task("multilingual_asr").fit(rows([("en", "a")]))
    assert [task.has_spaces(x) for x in ["zh-CN", "cmn", "JA_jp", "th", "en-US", "ru"]] == \
        [False, False, False, False, True, True]
    custom = get_task("multilingual_asr", no_space_languages=["xx"]).fit(rows([("en", "a")]))
    m = custom.metrics(["ab"], ["ab"], languages=["zh"])
    assert m["wer_zh"] == 0.0 and custom.has_spaces("zh") and not custom.has_spaces("xx-YY")


def test_rows_without_a_language_are_named_before_training():
    task = get_task("multilingual_asr")
    with pytest.raises(ConfigError, match="'u1'.*has no 'language'"):
        task.fit(rows([("en", "a"), ("", "b")]))
    task.fit(rows([("en", "a")]))
    dev = [Utterance("d7", "/nowhere/d7.wav", text="a")]
    with pytest.raises(ConfigError, match="'d7'.*has no 'language'"):
        check_targets_known(task, {"train": rows([("en", "a")]), "dev": dev}, {"dev": "dev.csv"})
    with pytest.raises(ConfigError, match="no language"):
        task.metrics(["a"], ["a"])  # a plain string reference has no language


# -- the language-ID token ---------------------------------------------------------------------------

def test_language_token_round_trip_and_lid_accuracy():
    train = rows([("en", "hallo"), ("de", "hallo"), ("fr", "allo")])
    task = get_task("multilingual_asr", language_token=True).fit(train)
    assert task.languages == ["de", "en", "fr"] and task.vocab[-3:] == ["[de]", "[en]", "[fr]"]
    targets, lengths = task.encode(train)
    de, en, fr = (task.vocab.index(t) for t in ["[de]", "[en]", "[fr]"])
    assert targets[:, 0].tolist() == [en, de, fr] and lengths.tolist() == [6, 6, 5]
    chars = [task.vocab[i] for i in targets[0, 1:6].tolist()]
    assert "".join(chars) == "hallo"
    # greedy decoding of hand-made logits: the token path spells "[de] hallo", "[fr] allo" and a row with
    # no language token at all
    blank = 0
    h, a, l, o = (task.vocab.index(c) for c in "halo")
    paths = [[de, h, a, l, blank, l, o], [fr, fr, a, l, blank, l, o], [h, a, l, blank, l, o, blank]]
    logits = torch.full((3, 7, len(task.vocab)), -5.0)
    for row, path in enumerate(paths):
        for t, token in enumerate(path):
            logits[row, t, token] = 5.0
    preds = task.predict(logits, torch.tensor([7, 7, 7]))
    assert preds == ["[de] hallo", "[fr] allo", "hallo"]
    assert task.split_language(preds[0]) == ("de", "hallo")
    refs = task.references(rows([("de", "hallo"), ("en", "allo"), ("en", "hallo")]))
    m = task.metrics(preds, refs)
    assert m["lid_accuracy"] == pytest.approx(1 / 3)  # de right, fr for en wrong, no token wrong
    assert m["cer"] == 0.0  # the tokens are not part of the text that is scored
    restored = Task.from_state(task.state())
    assert restored.languages == task.languages and restored.vocab == task.vocab
    assert restored.predict(logits, torch.tensor([7, 7, 7])) == preds


def test_language_token_needs_a_training_language():
    task = get_task("multilingual_asr", language_token=True).fit(rows([("en", "a")]))
    with pytest.raises(ConfigError, match="'it'.*no language token"):
        task.encode(rows([("it", "a")]))


# -- the bundled espeak-ng set (synthetic speech) -------------------------------------------------------

def test_bundled_espeak_set_is_complete_and_readable():
    from speechfuse.data import bundled_espeak_multilingual_dir, read_audio, validate_manifest

    folder = bundled_espeak_multilingual_dir()
    assert "SYNTHETIC" in (folder / "README.md").read_text()
    splits = {s: validate_manifest(folder / f"{s}.csv", "text") for s in ("train", "dev", "test")}
    assert [len(u) for u in splits.values()] == [7 * 16, 7 * 3, 7 * 5]
    for utts in splits.values():
        assert sorted({u.language for u in utts}) == ["de", "el", "en", "es", "fr", "it", "ru"]
    voices = {s: {u.speaker.split("/")[0] for u in utts} for s, utts in splits.items()}
    assert not voices["train"] & voices["test"] and not voices["train"] & voices["dev"]
    # non-Latin scripts are there and every clip is non-silent 16 kHz audio
    assert any("\u0400" <= c <= "\u04ff" for u in splits["train"] for c in u.text)   # Cyrillic
    assert any("\u0370" <= c <= "\u03ff" for u in splits["train"] for c in u.text)   # Greek
    for u in splits["test"]:
        wav = read_audio(u.path, 16000)
        assert 0.3 < wav.shape[0] / 16000 < 2.0 and wav.abs().max() > 0.1, u.id


# -- end to end through the CLI ------------------------------------------------------------------------

CER_BOUND = 0.7  # the test's macro CER must be below this; a constant prediction is not (checked below)


@pytest.mark.slow
def test_multilingual_run_through_the_cli_beats_any_constant_prediction(tmp_path, capsys):
    """Bundled Whisper tiny.en + a linear CTC head on the synthetic espeak-ng set, 300 steps. Costs the
    Whisper feature extraction of 168 short clips plus the head's training (CPU, one thread)."""
    import json
    from pathlib import Path

    from speechfuse.cli import main
    from speechfuse.data import bundled_espeak_multilingual_dir, load_manifest

    config = Path(__file__).resolve().parents[1] / "configs" / "espeak_multilingual_asr.yaml"
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--set", "train.progress_bar=false",
                 "--set", "train.importance=false", "--set", "train.val_every_steps=300"]) == 0
    metrics = json.loads(capsys.readouterr().out)["test"]
    languages = ["de", "el", "en", "es", "fr", "it", "ru"]
    assert sorted(k[4:] for k in metrics if k.startswith("cer_") and k != "cer_macro") == languages
    assert "wer_el" in metrics and "wer_ru" in metrics  # all seven separate words by spaces
    print({k: round(v, 3) for k, v in metrics.items()})
    assert metrics["cer_macro"] < CER_BOUND
    assert metrics["lid_accuracy"] > 2 / 7  # chance is 1/7

    # what a constant prediction scores on the same test rows: the empty string, and every training
    # transcript (with its language token) repeated for every row
    folder = bundled_espeak_multilingual_dir()
    task = Task.from_state(json.loads((out / "task.json").read_text()))
    test_rows = load_manifest(folder / "test.csv")
    refs = task.references(test_rows)
    constants = [""] + [f"[{u.language}] {u.text}" for u in load_manifest(folder / "train.csv")]
    best_constant = min(task.metrics([c] * len(refs), refs)["cer_macro"] for c in constants)
    assert best_constant >= CER_BOUND


@pytest.mark.slow
def test_monolingual_sweep_over_languages_is_one_command(tmp_path, capsys):
    """ML-SUPERB monolingual: `sweep --grid data.languages=...` trains one model per language on that
    language's rows only (a tiny random HuBERT, 2 steps: this checks the plumbing, not accuracy)."""
    import csv
    import json

    import yaml

    from helpers import save_tiny_model
    from speechfuse.cli import main
    from speechfuse.data import bundled_espeak_multilingual_dir

    folder = bundled_espeak_multilingual_dir()
    config = {
        "task": "multilingual_asr",
        "data": {split: str(folder / f"{split}.csv") for split in ("train", "dev", "test")},
        "upstreams": [{"spec": f"hf:{save_tiny_model('hubert', tmp_path / 'hubert')}"}],
        "interface": {"name": "weighted_sum"},
        "downstream": {"proj_dim": 16, "num_layers": 0, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_seconds": 4, "val_every_steps": 2, "progress_bar": False,
                  "importance": False},
        "cache": "off",
    }
    path = tmp_path / "mono.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep", str(path), "--grid", "data.languages=ru,el", "--out", str(tmp_path / "sweep")]) == 0
    with open(tmp_path / "sweep" / "results.csv", newline="", encoding="utf-8") as f:
        results = list(csv.DictReader(f))
    assert [r["data.languages"] for r in results] == ["ru", "el"]
    for run in (tmp_path / "sweep" / "runs").iterdir():
        lang = "ru" if "ru" in run.name else "el"
        metrics = json.loads((run / "metrics.json").read_text())["test"]
        assert sorted(k for k in metrics if k.startswith("cer_")) == sorted([f"cer_{lang}", "cer_macro"])
        assert json.loads((run / "task.json").read_text())["languages"] == [lang]
        vocab = set(json.loads((run / "task.json").read_text())["vocab"])
        assert ("д" in vocab) == (lang == "ru") and ("ε" in vocab) == (lang == "el")


def test_data_languages_config():
    from speechfuse.config import config_from_dict

    base = {"task": "multilingual_asr", "data": {"train": "t.csv", "dev": "d.csv"}, "upstreams": ["whisper-tiny.en"]}
    assert config_from_dict({**base, "data": {**base["data"], "languages": "en+de"}}).data.languages == ["en", "de"]
    assert config_from_dict({**base, "data": {**base["data"], "languages": ["fr"]}}).data.languages == ["fr"]
    with pytest.raises(ConfigError, match="data.languages"):
        config_from_dict({**base, "data": {**base["data"], "languages": []}})


def test_predict_inputs_from_a_manifest_carry_each_rows_language():
    from speechfuse.data import bundled_espeak_multilingual_dir
    from speechfuse.serving.inference import collect_inputs

    items = collect_inputs(bundled_espeak_multilingual_dir() / "test.csv", 16000)
    task = get_task("multilingual_asr").fit(rows([("en", "a")]))
    refs = [it.reference for it in items]
    assert {r.language for r in refs} == {"de", "el", "en", "es", "fr", "it", "ru"}
    # so `speechfuse predict` on a manifest scores per language like the trainer does
    assert "cer_ru" in task.metrics(refs, refs) and task.metrics(refs, refs)["cer_macro"] == 0.0
