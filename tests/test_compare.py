"""Per-utterance results (utterances_<split>.jsonl), the test metric's bootstrap interval, and
`speechfuse compare` (a paired bootstrap over the same utterances)."""
from __future__ import annotations

import json

import pytest

from helpers import make_fsdd, run_config, save_tiny_model
from speechfuse.cli import main
from speechfuse.experiments.compare import compare_runs
from speechfuse.config import config_from_dict
from speechfuse.data.manifest import Utterance
from speechfuse.errors import ConfigError
from speechfuse.tasks import get_task
from speechfuse.training.utterances import metric_ci, read_utterances, utterances_path, write_utterances

REFS = ["the cat sat", "on the mat", "a b c d", "hello", "one two three four five"]
HYPS = ["the cat sat down", "on mat", "", "hullo world", "one two tree four five"]


@pytest.mark.parametrize("name", ["asr", "classify"])
def test_per_utterance_counts_sum_to_the_reported_metric(name):
    task = get_task(name)
    if name == "classify":
        task.fit([Utterance(f"u{i}", "/x.wav", label=label) for i, label in enumerate("ab")])
        refs, hyps = ["a", "b", "a", "a", "b"], ["a", "a", "a", "b", "b"]
    else:
        refs, hyps = REFS, HYPS
    errors, totals = task.utterance_errors(hyps, refs)
    ratio = sum(errors) / sum(totals)
    reported = task.metrics(hyps, refs)[task.utterance_metric]
    assert (1 - ratio if task.higher_is_better else ratio) == reported
    if name == "asr":  # hand-counted: +1 insertion, 1 deletion, 4 deletions, 1 sub + 1 ins, 1 sub
        assert errors == [1, 1, 4, 2, 1] and totals == [3, 3, 4, 1, 5]


def test_multilingual_counts_are_the_pooled_cer():
    task = get_task("multilingual_asr")
    languages = ["en", "en", "fr", "fr", "zh"]
    refs, hyps = REFS[:4] + ["你好世界"], HYPS[:4] + ["你好"]
    errors, totals = task.utterance_errors(hyps, refs)
    assert sum(errors) / sum(totals) == task.metrics(hyps, refs, languages=languages)["cer"]
    assert get_task("verify").utterance_metric is None  # EER is over trials, not a sum over utterances


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny classify run on real FSDD clips (trained for 3 steps)."""
    from speechfuse.training.runner import train

    root = tmp_path_factory.mktemp("compare")
    manifests = make_fsdd(root)
    upstream = save_tiny_model("hubert", root / "hubert")
    run = root / "run"
    metrics = train(config_from_dict(run_config(manifests, f"hf:{upstream}", max_steps=3)), run)
    return run, metrics, manifests


def test_training_writes_per_utterance_results_that_reproduce_the_metrics(trained):
    run, metrics, manifests = trained
    test_ids = [line.split(",")[0] for line in manifests["test"].read_text().splitlines()[1:]]
    for split in ("dev", "test"):
        rows = read_utterances(utterances_path(run, split))
        errors, totals = [r["errors"] for r in rows], [r["totals"] for r in rows]
        assert 1 - sum(errors) / sum(totals) == metrics[split]["accuracy"]
        assert all((r["prediction"] != r["reference"]) == bool(r["errors"]) for r in rows)
    rows = read_utterances(utterances_path(run, "test"))
    assert sorted(r["id"] for r in rows) == sorted(test_ids)
    low, high = metrics["test"]["ci_low_accuracy"], metrics["test"]["ci_high_accuracy"]
    assert [low, high] == list(metric_ci([r["errors"] for r in rows], [r["totals"] for r in rows], True))
    assert low <= metrics["test"]["accuracy"] <= high
    assert "ci_low_accuracy" not in metrics["dev"]
    assert json.loads((run / "metrics.json").read_text())["test"] == metrics["test"]


def test_an_asr_run_saves_word_counts_that_reproduce_its_wer(trained, tmp_path):
    from speechfuse.training.runner import train

    _, _, manifests = trained
    cfg = run_config(manifests, f"hf:{save_tiny_model('hubert', tmp_path / 'hubert')}", max_steps=2)
    cfg.update(task="asr", downstream={"proj_dim": 0, "hidden_size": 8, "num_layers": 1})
    cfg["data"]["target"] = "text"
    metrics = train(config_from_dict(cfg), tmp_path / "asr")
    rows = read_utterances(utterances_path(tmp_path / "asr", "test"))
    errors, totals = [r["errors"] for r in rows], [r["totals"] for r in rows]
    assert sum(errors) / sum(totals) == metrics["test"]["wer"] and all(t == 1 for t in totals)  # one digit word
    assert [metrics["test"]["ci_low_wer"], metrics["test"]["ci_high_wer"]] == list(metric_ci(errors, totals, False))


def test_evaluate_rewrites_the_file_and_a_run_equals_itself(trained, capsys):
    run, metrics, _ = trained
    before = utterances_path(run, "test").read_text()
    utterances_path(run, "test").unlink()
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    printed = json.loads(capsys.readouterr().out)["test"]
    assert utterances_path(run, "test").read_text() == before
    assert printed == metrics["test"]
    assert main(["compare", str(run), str(run)]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["difference"] == 0 and same["p_value"] == 1 and same["metric"] == "accuracy"


# -- compare on constructed run folders ----------------------------------------------------------------------

def make_run(folder, task: str, errors: list[int], totals: list[int] | None = None, ids=None):
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps({"name": task}))
    totals = totals or [1] * len(errors)
    ids = ids or [f"u{i}" for i in range(len(errors))]
    write_utterances(folder, "test", ids, ["p"] * len(ids), [f"ref {i}" for i in ids], errors, totals)
    return folder


def test_compare_finds_the_run_that_errs_on_a_superset(tmp_path):
    a_wrong, b_wrong = set(range(20)), set(range(60))  # B errs wherever A does, and on 40 more
    a = make_run(tmp_path / "a", "classify", [int(i in a_wrong) for i in range(200)])
    b = make_run(tmp_path / "b", "classify", [int(i in b_wrong) for i in range(200)])
    result = compare_runs(a, b)
    assert result["a"] == pytest.approx(0.9) and result["b"] == pytest.approx(0.7)
    assert result["difference"] == pytest.approx(0.2)
    assert 0 < result["low"] <= 0.2 <= result["high"] and result["p_value"] < 0.01
    back = compare_runs(b, a)
    assert back["difference"] == pytest.approx(-0.2) and back["low"] == pytest.approx(-result["high"])


def test_compare_asr_weighs_utterances_by_their_words(tmp_path):
    totals = [10] * 50 + [1] * 50
    # B adds one error on each of the 50 one-word utterances: 50 more errors over 550 words
    a = make_run(tmp_path / "a", "asr", [1] * 50 + [0] * 50, totals)
    b = make_run(tmp_path / "b", "asr", [1] * 50 + [1] * 50, totals)
    result = compare_runs(a, b)
    assert result["metric"] == "wer" and result["difference"] == pytest.approx(-50 / 550)
    assert result["low"] <= result["difference"] <= result["high"] < 0 and result["p_value"] < 0.01


def test_compare_refuses_different_utterances(tmp_path, capsys):
    a = make_run(tmp_path / "a", "classify", [0, 1, 0], ids=["x", "y", "z"])
    b = make_run(tmp_path / "b", "classify", [0, 1, 0], ids=["x", "y", "w"])
    with pytest.raises(ConfigError, match=r"1 only in .*a.*'z'.*1 only in .*b.*'w'"):
        compare_runs(a, b)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different test utterances" in err
    c = make_run(tmp_path / "c", "classify", [0, 1, 0], ids=["x", "y", "z"])
    (c / "utterances_test.jsonl").write_text(
        (c / "utterances_test.jsonl").read_text().replace('"ref z"', '"other"'))
    with pytest.raises(ConfigError, match="different references.*'z'"):
        compare_runs(a, c)
    with pytest.raises(ConfigError, match="utterances_dev.jsonl not found.*evaluate"):
        compare_runs(a, c, split="dev")
    v = make_run(tmp_path / "v", "classify", [0, 1, 0])
    (v / "task.json").write_text(json.dumps({"name": "verify"}))
    with pytest.raises(ConfigError, match="no per-utterance metric"):
        compare_runs(v, a)


def test_each_test_set_has_its_own_best(tmp_path):
    from speechfuse.experiments.compare import rank_against_best

    fold1 = {k: make_run(tmp_path / k, "asr", errors, [5] * 100, ids=[f"f1_{i}" for i in range(100)])
             for k, errors in (("good", [0] * 100), ("bad", [3] * 100))}
    fold2 = make_run(tmp_path / "other", "asr", [4] * 100, [5] * 100, ids=[f"f2_{i}" for i in range(100)])
    marks = rank_against_best({"good": [fold1["good"]], "bad": [fold1["bad"]], "other": [fold2]})
    assert {k: m["tied_with_best"] for k, m in marks.items()} == {"good": "best", "bad": "no", "other": "best"}
    assert marks["bad"]["ci_low"] == marks["bad"]["ci_high"] == pytest.approx(0.6)  # every utterance at 3/5
    assert rank_against_best({"x": [tmp_path / "missing"]}) == {}  # no per-utterance results: no marks


def _seed_runs(root, name: str, wrong_by_seed: dict[int, int], count: int = 250) -> dict[int, object]:
    """One configuration's runs by seed: seed s errs on the first wrong_by_seed[s] of `count` utterances."""
    return {seed: make_run(root / f"{name}__seed={seed}", "classify", [int(i < wrong) for i in range(count)])
            for seed, wrong in wrong_by_seed.items()}


def test_the_best_is_decided_on_rates_not_on_summed_errors(tmp_path):
    """The issue's case: a configuration with 1 finished seed at 0.664 accuracy next to one with 3 seeds
    at 0.767 on average. Summed errors (84 against 175) made the 1-seed row the best."""
    from speechfuse.experiments.compare import rank_against_best

    one = _seed_runs(tmp_path, "one", {0: 84})  # 166 / 250 = 0.664
    three = _seed_runs(tmp_path, "three", {0: 38, 1: 58, 2: 79})  # 0.848, 0.768, 0.684
    marks = rank_against_best({"one": list(one.values()), "three": list(three.values())})  # a list: runs by seed
    assert marks["three"]["tied_with_best"] == "best" and marks["three"]["vs_best_p"] is None
    # compared on seed 0 only, the seed both have: 84 against 38 errors
    assert marks["one"]["tied_with_best"] == "no" and marks["one"]["vs_best_seeds"] == [0]
    assert marks["one"]["vs_best_p"] < 0.05
    # each row's interval is over its own seeds: the 3-seed row's holds its mean accuracy 1 - 175/750
    assert marks["three"]["ci_low"] < 1 - 175 / 750 < marks["three"]["ci_high"]
    assert marks["one"]["ci_low"] < 0.664 < marks["one"]["ci_high"] < marks["three"]["ci_low"] + 0.1


def test_a_row_with_missing_seeds_is_compared_on_the_seeds_it_shares(tmp_path):
    from speechfuse.experiments.compare import rank_against_best

    three = _seed_runs(tmp_path, "three", {0: 60, 1: 62, 2: 64})
    lucky = _seed_runs(tmp_path, "lucky", {1: 20})  # a lower rate, but on one seed: not picked as the best
    close = _seed_runs(tmp_path, "close", {0: 61, 2: 63})
    alone = _seed_runs(tmp_path, "alone", {7: 10})  # no seed in common with the best
    marks = rank_against_best({"three": three, "lucky": lucky, "close": close, "alone": alone})
    assert {k: m["tied_with_best"] for k, m in marks.items()} == {
        "three": "best", "lucky": "better", "close": "yes", "alone": "not comparable"}
    assert marks["lucky"]["vs_best_seeds"] == [1] and marks["close"]["vs_best_seeds"] == [0, 2]
    assert marks["lucky"]["vs_best_p"] < 0.05 and marks["close"]["vs_best_p"] >= 0.05
    assert marks["alone"]["vs_best_p"] is None and marks["alone"]["vs_best_seeds"] == []
    # equal seed counts: the lower rate is the best, whichever order the rows come in
    swapped = rank_against_best({"close": close, "three": {0: three[0], 2: three[2]}})
    assert swapped["close"]["tied_with_best"] == "best" and swapped["three"]["tied_with_best"] == "yes"
