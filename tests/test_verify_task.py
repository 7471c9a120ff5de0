"""The verify task: x-vector head (valid frames only), margin softmax losses, cosine trial scoring, state."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechfuse.data.manifest import Utterance
from speechfuse.data.trials import TrialError, read_trials
from speechfuse.errors import ConfigError
from speechfuse.tasks import Task, get_task
from speechfuse.tasks.verify import margin_logits, stats_pool

SMALL = dict(channels=[8, 8], kernel_sizes=[3, 1], dilations=[2, 1], embed_dim=6)


def fitted(**options):
    utts = [Utterance(id=f"u{i}", path="", speaker=f"s{i % 3}") for i in range(6)]
    return get_task("verify", **{**SMALL, **options}).fit(utts)


def test_stats_pool_uses_valid_frames_only():
    x = torch.randn(2, 7, 3)
    lengths = torch.tensor([7, 4])
    x[1, 4:] = 1e6  # padding garbage must not leak in
    pooled = stats_pool(x, lengths, eps=0.0)
    for b, n in enumerate(lengths.tolist()):
        frames = x[b, :n]
        expected = torch.cat([frames.mean(0), frames.std(0, unbiased=False)])
        torch.testing.assert_close(pooled[b], expected)


def test_embedding_does_not_depend_on_batch_padding():
    torch.manual_seed(0)
    head = fitted().build_head(5).eval()
    short, long = torch.randn(1, 6, 5), torch.randn(1, 11, 5)
    batch = torch.zeros(2, 11, 5)
    batch[0, :6], batch[1] = short[0], long[0]
    batch[0, 6:] = 3.0  # whatever sits in the padding
    emb, cos = head(batch, torch.tensor([6, 11]))
    alone, _ = head(short, torch.tensor([6]))
    torch.testing.assert_close(emb[0], alone[0])
    assert emb.shape == (2, 6) and cos.shape == (2, 3) and cos.abs().max() <= 1 + 1e-6


def test_margin_logits_by_hand():
    cos = torch.tensor([[0.5, 0.2, -0.1]])
    y = torch.tensor([0])
    am = margin_logits(cos, y, "am", scale=10.0, margin=0.3)
    torch.testing.assert_close(am, torch.tensor([[10 * (0.5 - 0.3), 2.0, -1.0]]))
    aam = margin_logits(cos, y, "aam", scale=10.0, margin=0.3)
    torch.testing.assert_close(aam, torch.tensor([[10 * math.cos(math.acos(0.5) + 0.3), 2.0, -1.0]]))
    # past pi - m, cos(theta + m) would rise again: the target logit continues linearly instead
    far = margin_logits(torch.tensor([[-0.99, 0.0]]), y, "aam", scale=1.0, margin=0.3)
    assert far[0, 0].item() == pytest.approx(-0.99 - 0.3 * math.sin(0.3))


def test_loss_is_margin_cross_entropy_and_uses_superb_defaults():
    task = fitted()
    emb, cos = torch.randn(4, 6), torch.rand(4, 3) * 2 - 1
    y = torch.tensor([0, 1, 2, 1])
    expected = F.cross_entropy(30.0 * (cos - 0.4 * F.one_hot(y, 3)), y)  # AM-softmax, s 30, m 0.4
    torch.testing.assert_close(task.loss(emb, cos, y), expected)
    aam = fitted(loss="aam", scale=5.0, margin=0.1)
    assert aam.loss(emb, cos, y).item() == pytest.approx(
        F.cross_entropy(margin_logits(cos, y, "aam", 5.0, 0.1), y).item())


def test_unknown_speakers_encode_to_minus_one_and_cannot_train():
    task = fitted()
    y = task.encode([Utterance(id="a", path="", speaker="s1"), Utterance(id="b", path="", speaker="new")])
    assert y.tolist() == [1, -1]
    with pytest.raises(ConfigError, match="not one of the training speakers"):
        task.loss(torch.randn(2, 6), torch.rand(2, 3), y)


@pytest.mark.parametrize("options, needle", [
    (dict(channels=[8], kernel_sizes=[3, 1], dilations=[1, 1]), "one entry per TDNN layer"),
    (dict(kernel_sizes=[4, 1]), "must be odd"),
    (dict(loss="softmax"), "option loss"),
    (dict(scale=0), "option scale"),
])
def test_bad_options_name_the_key(options, needle):
    with pytest.raises(ConfigError, match=needle):
        get_task("verify", **{**SMALL, **options})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) hidden_dim"):
        get_task("verify", hidden_dim=3)


def test_state_round_trip():
    task = fitted(loss="aam", margin=0.2)
    back = Task.from_state(task.state())
    assert back.speakers == task.speakers and back.options == task.options


def records(task, embeddings, speakers):
    utts = [Utterance(id=f"u{i}", path="", speaker=s) for i, s in enumerate(speakers)]
    return task.collect(torch.tensor(embeddings, dtype=torch.float32), torch.zeros(len(utts), 3), utts)


def test_evaluate_generates_writes_and_scores_trials(tmp_path):
    task = fitted()
    # speakers a and b on orthogonal axes, a little noise: every target scores above every non-target
    recs = records(task, [[1, 0.1], [1, -0.1], [0.9, 0], [0.1, 1], [-0.1, 1], [0, 0.8]], list("aaabbb"))
    metrics = task.evaluate(recs, "test", tmp_path)
    assert metrics == {"eer": 0.0, "min_dcf_0.01": 0.0, "min_dcf_0.05": 0.0}
    trials = read_trials(tmp_path / "trials_test.txt")
    assert sum(t.label for t in trials) == 6 and len(trials) == 12  # 2 x C(3,2) targets + as many non-targets
    # the same embeddings with speakers that do not follow them: errors appear
    assert task.evaluate(records(task, [[1, 0.1], [1, -0.1], [0.9, 0], [0.1, 1], [-0.1, 1], [0, 0.8]],
                                 list("ababab")), "dev")["eer"] > 0.3


def test_evaluate_reads_a_given_trial_list(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 u0 u1\n0 u0 u2\n")
    task = fitted(test_trials=str(path))
    recs = records(task, [[1, 0], [1, 0.2], [0, 1]], list("aab"))
    assert task.evaluate(recs, "test", tmp_path)["eer"] == 0.0
    assert not (tmp_path / "trials_test.txt").exists()  # a given list is not copied
    path.write_text("1 u0 u1\n0 u0 u9\n")
    with pytest.raises(TrialError, match=r"line 2: 'u9' is not an utterance id"):
        fitted(test_trials=str(path)).evaluate(recs, "test")


def test_as_norm_against_numpy():
    from speechfuse.tasks.verify import as_norm

    rng = np.random.default_rng(0)
    cohort = rng.normal(size=(4, 7))
    scores = rng.normal(size=3)
    enrol, test = [0, 1, 2], [3, 3, 0]
    top = 3
    stats = [(np.sort(row)[-top:].mean(), np.sort(row)[-top:].std()) for row in cohort]
    expected = [((s - stats[e][0]) / stats[e][1] + (s - stats[t][0]) / stats[t][1]) / 2
                for s, e, t in zip(scores, enrol, test)]
    got = as_norm(torch.tensor(scores), torch.tensor(cohort), enrol, test, top)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_evaluate_with_as_norm_scores_normalised_cosines():
    from speechfuse.metrics import verification_metrics
    from speechfuse.tasks.verify import as_norm

    task = fitted(score_norm="asnorm", cohort="class_vectors", cohort_top=2)
    rng = np.random.default_rng(1)
    emb, cohort = torch.tensor(rng.normal(size=(6, 4))), torch.tensor(rng.uniform(-1, 1, size=(6, 3)))
    utts = [Utterance(id=f"u{i}", path="", speaker=s) for i, s in enumerate("aabbcc")]
    recs = task.collect(emb, cohort, utts)
    trials = task.trials_for("dev", recs)
    e = [int(t.enrol[1:]) for t in trials]
    t_ = [int(t.test[1:]) for t in trials]
    unit = F.normalize(emb.float(), dim=-1)
    raw = (unit[e] * unit[t_]).sum(-1)
    expected = verification_metrics(as_norm(raw, cohort.float(), e, t_, 2).numpy(), [t.label for t in trials])
    assert task.evaluate(recs, "dev") == pytest.approx(expected)
    assert fitted().evaluate(recs, "dev") == pytest.approx(verification_metrics(raw.numpy(), [t.label for t in trials]))


def _as_norm_by_hand(unit: np.ndarray, cohort: np.ndarray, enrol, test, top: int) -> np.ndarray:
    """AS-norm1 written out: each side's mean and (population) std of its `top` highest cohort cosines."""
    cos = unit @ (cohort / np.linalg.norm(cohort, axis=1, keepdims=True)).T
    best = -np.sort(-cos, axis=1)[:, :top]
    mean, std = best.mean(1), best.std(1)
    raw = (unit[enrol] * unit[test]).sum(1)
    return ((raw - mean[enrol]) / std[enrol] + (raw - mean[test]) / std[test]) / 2


@pytest.mark.parametrize("kind", ["utterances", "speaker_means"])
def test_embedding_cohort_scores_equal_a_hand_computation(kind):
    rng = np.random.default_rng(2)
    emb, train = rng.normal(size=(5, 6)), rng.normal(size=(9, 6))
    speakers = [f"s{i % 4}" for i in range(9)]
    task = fitted(score_norm="asnorm", cohort=kind, cohort_top=3)
    assert task.needs_cohort
    task.fit_scoring([(f"c{i}", speakers[i], torch.tensor(train[i]), None) for i in range(9)])
    unit_train = train / np.linalg.norm(train, axis=1, keepdims=True)
    if kind == "utterances":
        cohort = unit_train
    else:  # the mean of each speaker's unit embeddings, speakers in sorted order
        cohort = np.stack([unit_train[[i for i in range(9) if speakers[i] == s]].mean(0) for s in sorted(set(speakers))])
    assert task.cohort.shape == cohort.shape
    enrol, test = [0, 1, 2, 3], [4, 4, 0, 1]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    got = task.trial_scores(torch.tensor(emb), task.cohort_scores(torch.tensor(emb)), enrol, test)
    np.testing.assert_allclose(got.numpy(), _as_norm_by_hand(unit, cohort, enrol, test, 3), rtol=1e-5, atol=1e-6)


def test_embedding_cohort_missing_is_raw_in_training_and_an_error_elsewhere():
    from speechfuse.metrics import verification_metrics

    task = fitted(score_norm="asnorm", cohort_top=2)  # default cohort: speaker_means
    rng = np.random.default_rng(3)
    emb = torch.tensor(rng.normal(size=(6, 4)))
    recs = task.collect(emb, torch.zeros(6, 3), [Utterance(id=f"u{i}", path="", speaker=s) for i, s in enumerate("aabbcc")])
    trials = task.trials_for("dev", recs)
    unit = F.normalize(emb.float(), dim=-1)
    raw = [float(unit[int(t.enrol[1:])] @ unit[int(t.test[1:])]) for t in trials]
    # while training (no cohort yet) dev is scored on raw cosines
    assert task.evaluate(recs, "dev") == pytest.approx(verification_metrics(raw, [t.label for t in trials]))
    with pytest.raises(ConfigError, match="cohort"):
        task.cohort_scores(emb)  # verify() and `speechfuse verify` refuse
    with pytest.raises(ConfigError, match="model.safetensors has no AS-norm cohort"):
        task.load_tensors({}, "model.safetensors")  # so does loading a model or run without one
    with pytest.raises(ConfigError, match="damaged"):
        task.load_tensors({"cohort": torch.zeros(3, 5)}, "x")  # embed_dim is 6
    task.load_tensors({"cohort": F.normalize(torch.randn(3, 6), dim=-1)}, "x")
    assert task.tensors()["cohort"].shape == (3, 6)
    plain = fitted()
    assert plain.scoring_utterances([Utterance(id="u", path="", speaker="a")]) == [] and plain.tensors() == {}


def test_cohort_utterances_are_a_seeded_sample_spread_over_speakers():
    utts = [Utterance(id=f"{s}{i}", path="", speaker=s) for s, n in (("a", 6), ("b", 1), ("c", 4)) for i in range(n)]
    task = fitted(score_norm="asnorm", cohort_size=6)
    chosen = task.scoring_utterances(utts)
    assert len(chosen) == 6 and len({u.id for u in chosen}) == 6
    counts = {s: sum(u.speaker == s for u in chosen) for s in "abc"}
    assert counts == {"a": 3, "b": 1, "c": 2}  # speakers taken in turn, in sorted order
    assert [u.id for u in task.scoring_utterances(list(reversed(utts)))] == [u.id for u in chosen]  # seeded
    others = {tuple(u.id for u in fitted(score_norm="asnorm", cohort_size=6, trial_seed=k).scoring_utterances(utts))
              for k in range(1, 6)}
    assert len(others | {tuple(u.id for u in chosen)}) > 1  # the seed picks the sample
    assert len(fitted(score_norm="asnorm", cohort_size=None).scoring_utterances(utts)) == len(utts)
    assert fitted(score_norm="asnorm", cohort="class_vectors").scoring_utterances(utts) == []


def test_trial_paths_in_a_config_resolve_against_its_folder(tmp_path):
    from speechfuse.config import config_from_dict

    cfg = config_from_dict({"task": "verify", "data": {"train": "tr.csv", "dev": "dv.csv"},
                            "upstreams": [{"spec": "resemblyzer"}],
                            "downstream": {"test_trials": "lists/test.txt", "dev_trials": "/abs/dev.txt"}}, tmp_path)
    assert cfg.downstream["test_trials"] == str(tmp_path.resolve() / "lists" / "test.txt")
    assert cfg.downstream["dev_trials"] == "/abs/dev.txt"


def test_dev_scoring_records_the_eer_threshold_and_the_state_keeps_it(tmp_path):
    from speechfuse.metrics import eer_threshold

    task = fitted()
    assert task.threshold is None and "threshold" not in task.state()  # task.json before training: unchanged
    rng = np.random.default_rng(2)
    emb = torch.tensor(rng.normal(size=(8, 4)), dtype=torch.float32)
    recs = records(task, emb.tolist(), list("aabbccdd"))
    task.evaluate(recs, "test")
    assert task.threshold is None  # only dev sets it
    task.evaluate(recs, "dev")
    trials = task.trials_for("dev", recs)
    unit = F.normalize(emb, dim=-1)
    raw = [float(unit[int(t.enrol[1:])] @ unit[int(t.test[1:])]) for t in trials]
    assert task.threshold == pytest.approx(eer_threshold(raw, [t.label for t in trials]), abs=1e-6)
    back = Task.from_state(json.loads(json.dumps(task.state())))
    assert back.threshold == task.threshold
    with pytest.raises(ConfigError, match="'threshold' must be a finite number"):
        Task.from_state({**task.state(), "threshold": "high"})
