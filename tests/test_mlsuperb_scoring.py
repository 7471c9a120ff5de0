"""ML-SUPERB as ESPnet scores and trains it: pooled CER for normal and few-shot languages, word tokens (cmn, jpn),
per-utterance mean normalisation, ESPnet's CTC normalisation (hand-made numbers throughout)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speechfuse.data import Utterance
from speechfuse.tasks import get_task
from speechfuse.tasks.asr import utterance_mvn


def rows(pairs: list[tuple[str, str]]) -> list[Utterance]:
    return [Utterance(f"u{i}", f"/nowhere/u{i}.wav", text=text, language=lang) for i, (lang, text) in enumerate(pairs)]


def test_few_shot_and_normal_cers_pool_utterances_where_the_macro_averages_languages():
    task = get_task("multilingual_asr", few_shot_languages=["lit"])
    # eng: 1 substitution in 20 characters; fra: 2 of 4; lit (few-shot): 3 of 6 and 0 of 4
    refs = ["a" * 20, "bbbb", "cccccc", "dddd"]
    preds = ["a" * 19 + "x", "bbxx", "cccxxx", "dddd"]
    languages = ["eng", "fra", "lit", "lit"]
    m = task.metrics(preds, refs, languages=languages)
    assert m["cer_normal"] == pytest.approx(3 / 24)              # (1 + 2) / (20 + 4), as sclite sums them
    assert m["cer_few_shot"] == pytest.approx(3 / 10)            # (3 + 0) / (6 + 4)
    assert m["cer_macro"] == pytest.approx((1 / 20 + 2 / 4 + 3 / 10) / 3)  # the unweighted mean: 0.2833
    assert m["cer"] == pytest.approx(6 / 34)
    without = get_task("multilingual_asr").metrics(preds, refs, languages=languages)
    assert "cer_normal" not in without and "cer_few_shot" not in without


def test_word_tokens_give_a_word_vocabulary_and_a_wer_for_every_language():
    task = get_task("multilingual_asr", token_type="word").fit(rows([("cmn", "你好 世界"), ("cmn", "世界 和平")]))
    assert task.vocab[2:] == sorted(["你好", "世界", "和平"])
    targets, lengths = task.encode(rows([("cmn", "世界 你好 世界")]))
    index = {w: i for i, w in enumerate(task.vocab)}
    assert lengths.tolist() == [3] and targets[0].tolist() == [index["世界"], index["你好"], index["世界"]]
    # greedy CTC over words: repeats collapse, blanks (0) separate; words are joined by spaces
    path = torch.tensor([[index["你好"], index["你好"], 0, index["和平"], index["和平"]]])
    logits = F.one_hot(path, len(task.vocab)).float()
    assert task.predict(logits, torch.tensor([5])) == ["你好 和平"]
    m = task.metrics(["你好 和平"], ["你好 世界"], languages=["cmn"])
    assert m["wer_cmn"] == pytest.approx(1 / 2)  # cmn has no WER with characters; with word tokens it does
    assert "wer_cmn" not in get_task("multilingual_asr").metrics(["你好 和平"], ["你好 世界"], languages=["cmn"])


def test_utterance_mvn_normalises_over_the_valid_frames_only():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])  # the first utterance has 2 valid frames
    out = utterance_mvn(x, torch.tensor([2, 3]))
    assert out[:, :, 0].tolist() == [[-1.0, 1.0, 0.0], [-2.0, 0.0, 2.0]]
    scaled = utterance_mvn(x, torch.tensor([2, 3]), norm_vars=True)
    assert scaled[0, :2, 0].tolist() == pytest.approx([-1.0, 1.0])
    assert scaled[1, :, 0].tolist() == pytest.approx([-2 / (8 / 3) ** 0.5, 0.0, 2 / (8 / 3) ** 0.5])
    task = get_task("asr", normalize="utterance_mvn", head="transformer", proj_dim=8, attention_dim=8,
                    attention_heads=2, ff_dim=8, transformer_layers=1).fit(rows([("en", "ab")]))
    head = task.build_head(4).eval()
    feats = torch.randn(1, 20, 4)
    # a constant offset per utterance is removed before the head sees the features
    assert torch.allclose(head(feats, torch.tensor([20]))[0], head(feats + 5.0, torch.tensor([20]))[0], atol=1e-5)


def test_ctc_batch_normalisation_is_the_sum_over_the_batch_divided_by_its_size():
    task = get_task("asr").fit(rows([("en", "ab ba")]))
    batch = rows([("en", "ab"), ("en", "abba")])
    targets = task.encode(batch)
    out = torch.randn(2, 12, len(task.vocab))
    lengths = torch.tensor([12, 10])
    per_utt = F.ctc_loss(out.log_softmax(-1).transpose(0, 1), targets[0], lengths, targets[1], reduction="none")
    assert task.loss(out, lengths, targets).item() == pytest.approx((per_utt / targets[1]).mean().item(), rel=1e-5)
    espnet = get_task("asr", ctc_normalize="batch")
    espnet.vocab = task.vocab
    assert espnet.loss(out, lengths, targets).item() == pytest.approx(per_utt.sum().item() / 2, rel=1e-5)


def test_ctc_too_short_zero_drops_an_impossible_utterance_as_espnet_and_error_names_it():
    """ESPnet's CTC (zero_infinity=True, espnet2/asr/ctc.py L29, L42): an utterance with fewer frames than its
    transcript needs adds 0 to the sum, which is still divided by the whole batch; the default stops instead."""
    from speechfuse.errors import ShapeError

    task = get_task("asr", ctc_normalize="batch", ctc_too_short="zero").fit(rows([("en", "ab ba")]))
    targets = task.encode(rows([("en", "ab"), ("en", "abba")]))
    out = torch.randn(2, 12, len(task.vocab), requires_grad=True)
    lengths = torch.tensor([12, 3])  # "abba" needs 5 frames (4 labels + 1 between the repeated b's)
    alone = F.ctc_loss(out[:1].log_softmax(-1).transpose(0, 1), targets[0][:1], lengths[:1], targets[1][:1],
                       reduction="sum")
    loss = task.loss(out, lengths, targets)
    assert loss.item() == pytest.approx(alone.item() / 2, rel=1e-5)
    loss.backward()
    assert bool(torch.isfinite(out.grad).all()) and float(out.grad[1].abs().sum()) == 0.0
    strict = get_task("asr", ctc_normalize="batch")
    strict.vocab = task.vocab
    with pytest.raises(ShapeError, match=r"batch position\(s\) \[1\].*\[3\].*\[5\]"):
        strict.loss(out, lengths, targets)


def test_the_mlsuperb_configs_score_and_train_as_espnet():
    from pathlib import Path

    from speechfuse.config import load_config
    from speechfuse.data.corpora import MLSUPERB_FEW_SHOT

    paper = Path(__file__).resolve().parents[1] / "configs" / "paper"
    multi, mono = load_config(paper / "mlsuperb_multi.yaml"), load_config(paper / "mlsuperb_mono.yaml")
    # the languages scored as few-shot are the ones whose training rows `prepare mlsuperb` restricts
    assert sorted(multi.downstream["few_shot_languages"]) == sorted(MLSUPERB_FEW_SHOT)
    assert "few_shot_languages" not in mono.downstream
    for cfg in (multi, mono):
        task = get_task(cfg.task, **cfg.downstream)
        assert (task.options["normalize"], task.options["ctc_normalize"]) == ("utterance_mvn", "batch")
        assert (cfg.train.grad_clip, cfg.train.average_best) == (5.0, 5)
        # ESPnet's process_text strips string.punctuation only; its mask_along_axis draws over the padded batch
        assert task.options["punctuation"] == "strip_ascii" and cfg.train.specaug.span == "batch"
        assert task.options["ctc_too_short"] == "zero"
