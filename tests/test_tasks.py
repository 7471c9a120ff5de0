"""Tasks: registry, ASR (vocabulary, greedy CTC, loss, overfitting, metrics) and classification."""
from __future__ import annotations

import json

import pytest
import torch

from speechfuse.data import Utterance, load_manifest
from speechfuse.errors import ConfigError, ShapeError
from speechfuse.tasks import Task, get_task, list_tasks
from speechfuse.tasks.classify import macro_f1, masked_mean
from helpers import make_fsdd, run_config

SMALL_ASR = dict(proj_dim=16, hidden_size=16, num_layers=1, dropout=0.0)




def train_head(task, head, features, lengths, targets, lr: float, steps: int) -> list[float]:
    """Adam on one fixed batch; the loss after every step."""
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.loss(*head(features, lengths), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses

def utts_with(field: str, values: list[str]) -> list[Utterance]:
    return [Utterance(f"u{i}", f"/nowhere/u{i}.wav", **{field: v}) for i, v in enumerate(values)]


def test_registry():
    assert list_tasks() == ["asr", "classify", "multilingual_asr", "verify"]
    assert get_task("asr").target_field == "text" and get_task("classify").target_field == "label"
    assert (get_task("asr").main_metric, get_task("asr").higher_is_better) == ("wer", False)
    assert (get_task("classify").main_metric, get_task("classify").higher_is_better) == ("accuracy", True)
    assert (get_task("verify").main_metric, get_task("verify").higher_is_better) == ("eer", False)
    with pytest.raises(ConfigError, match="unknown task 'translate'"):
        get_task("translate")
    with pytest.raises(ConfigError, match="hidden_dims"):
        get_task("classify", hidden_dims=3)
    with pytest.raises(ConfigError, match="fit"):
        get_task("asr").build_head(8)


def test_asr_head_defaults_follow_superb():
    head = get_task("asr").fit(utts_with("text", ["ab"])).build_head(768)
    assert (head.proj.in_features, head.proj.out_features) == (768, 1024)
    rnn = head.rnn
    assert (rnn.hidden_size, rnn.num_layers, rnn.bidirectional, rnn.dropout) == (1024, 2, True, 0.2)
    assert (head.out.in_features, head.out.out_features) == (2048, 4)  # blank, unk, a, b


# -- ASR -----------------------------------------------------------------------------------------------

def test_asr_vocabulary_and_unknown_characters():
    task = get_task("asr").fit(utts_with("text", ["Ab  a", "b"]))
    assert task.vocab == ["<blank>", "<unk>", " ", "a", "b"]
    with pytest.warns(UserWarning, match=r"'z' in \['u1'\]"):
        targets, lengths = task.encode(utts_with("text", ["ba", "az b"]))
    assert lengths.tolist() == [2, 4]
    assert targets.tolist() == [[4, 3, 0, 0], [3, 1, 2, 4]]


def test_greedy_ctc_decoding_on_hand_made_logits():
    task = get_task("asr").fit(utts_with("text", ["ab a"]))
    blank, unk, space, a, b = range(5)
    paths = [[a, a, blank, b, b, space, a, blank, a, b, b],   # valid 9 frames, the last two are padding
             [blank, b, unk, b, b, blank, blank, blank, blank, a, a]]  # 5 valid frames
    logits = torch.full((2, 11, 5), -5.0)
    for row, path in enumerate(paths):
        for t, token in enumerate(path):
            logits[row, t, token] = 5.0
    assert task.predict(logits, torch.tensor([9, 5])) == ["ab aa", "bb"]


def test_asr_head_overfits_a_tiny_batch_and_decodes_it():
    torch.manual_seed(0)
    texts = ["one two", "three", "nine"]
    utts = utts_with("text", texts)
    task = get_task("asr", **SMALL_ASR).fit(utts)
    head = task.build_head(12)
    features = torch.randn(3, 30, 12)
    lengths = torch.tensor([30, 24, 18])
    targets = task.encode(utts)
    losses = train_head(task, head, features, lengths, targets, lr=0.02, steps=120)
    assert losses[-1] < 0.1 * losses[0]
    head.eval()
    predictions = task.predict(*head(features, lengths))
    assert predictions == texts
    assert task.metrics(predictions, task.references(utts)) == {"wer": 0.0, "cer": 0.0}


@pytest.mark.parametrize("name,options,values", [
    ("asr", SMALL_ASR | {"num_layers": 2}, ["one", "two"]),
    ("asr", SMALL_ASR | {"num_layers": 0}, ["one", "two"]),
    ("classify", {"hidden_dim": 8}, ["x", "y"]),
])
def test_heads_ignore_padded_frames(name, options, values):
    torch.manual_seed(0)
    task = get_task(name, **options).fit(utts_with(task_field(name), values))
    head = task.build_head(6).eval()
    alone = torch.randn(1, 7, 6)
    padded = torch.cat([alone, 100 * torch.randn(1, 5, 6)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 12, 6)])
    out_alone, _ = head(alone, torch.tensor([7]))
    out_batch, out_lengths = head(batch, torch.tensor([7, 12]))
    assert out_lengths.tolist() == [7, 12]
    if name == "asr":
        assert out_batch.shape == (2, 12, len(task.vocab))
        torch.testing.assert_close(out_batch[0, :7], out_alone[0], atol=1e-5, rtol=1e-5)
    else:
        assert out_batch.shape == (2, 2)
        torch.testing.assert_close(out_batch[0], out_alone[0], atol=1e-5, rtol=1e-5)


def task_field(name: str) -> str:
    return "text" if name == "asr" else "label"


SMALL_TRANSFORMER = dict(head="transformer", proj_dim=12, attention_dim=8, attention_heads=2, ff_dim=16,
                         transformer_layers=2, dropout=0.0)


def test_transformer_head_defaults_follow_ml_superb():
    """ESPnet egs2/ml_superb/asr1 conf/tuning/train_asr_s3prl_10min.yaml: 2 blocks, 256 dims, 8 heads, 1024 FF."""
    task = get_task("multilingual_asr", head="transformer", proj_dim=80).fit(
        [Utterance("u1", "a.wav", text="ab", language="eng")])
    head = task.build_head(768)
    assert (head.proj.in_features, head.proj.out_features) == (768, 80)
    assert (head.conv[0].out_channels, head.conv[0].stride, head.conv[2].stride) == (256, (2, 2), (1, 1))
    assert head.embed.in_features == 256 * 37  # 80 features -> (80 - 1) // 2 - 2 after the two convolutions
    assert len(head.blocks) == 2
    block = head.blocks[0]
    assert (block.qkv.in_features, block.heads, block.ff[0].out_features) == (256, 8, 1024)
    assert block.dropout.p == 0.2  # the task's dropout default (0.2, SUPERB's); the paper config sets 0.1


@pytest.mark.parametrize("subsample,frames,expected", [("conv2d2", (15, 24), (5, 9)), ("none", (7, 12), (7, 12))])
def test_transformer_head_ignores_padded_frames(subsample, frames, expected):
    torch.manual_seed(0)
    task = get_task("asr", **SMALL_TRANSFORMER, subsample=subsample).fit(utts_with("text", ["one", "two"]))
    head = task.build_head(6).eval()
    short, long = frames
    alone = torch.randn(1, short, 6)
    padded = torch.cat([alone, 100 * torch.randn(1, long - short, 6)], dim=1)
    batch = torch.cat([padded, torch.randn(1, long, 6)])
    out_alone, alone_lengths = head(alone, torch.tensor([short]))
    out_batch, out_lengths = head(batch, torch.tensor([short, long]))
    assert out_lengths.tolist() == list(expected) and alone_lengths.tolist() == [expected[0]]
    assert out_batch.shape == (2, expected[1], len(task.vocab))
    torch.testing.assert_close(out_batch[0, :expected[0]], out_alone[0], atol=1e-5, rtol=1e-5)
    if subsample == "conv2d2":  # (T - 1) // 2 - 2 output frames: fewer than 7 input frames leave none
        with pytest.raises(ShapeError, match=r"at least 7 frames per utterance, got lengths \[15, 6\]"):
            head(batch[:, :15], torch.tensor([15, 6]))


def test_transformer_head_overfits_a_tiny_batch_and_round_trips():
    torch.manual_seed(0)
    utts = utts_with("text", ["one two", "three", "nine"])
    task = get_task("asr", **SMALL_TRANSFORMER, subsample="none").fit(utts)
    head = task.build_head(12)
    features, lengths = torch.randn(3, 30, 12), torch.tensor([30, 24, 18])
    targets = task.encode(utts)
    losses = train_head(task, head, features, lengths, targets, lr=0.01, steps=150)
    assert losses[-1] < 0.1 * losses[0]
    rebuilt = Task.from_state(json.loads(json.dumps(task.state())))
    twin = rebuilt.build_head(12).eval()
    twin.load_state_dict(head.state_dict())
    head.eval()
    assert rebuilt.predict(*twin(features, lengths)) == task.predict(*head(features, lengths))


def test_transformer_options_are_typed_and_checked():
    with pytest.raises(ConfigError, match=r"task 'asr': option head: Input should be 'bilstm' or 'transformer'"):
        get_task("asr", head="conformer")
    with pytest.raises(ConfigError, match=r"option attention_heads: attention_dim \(10\) must be a multiple of attention_heads \(4\)"):
        get_task("asr", head="transformer", attention_dim=10, attention_heads=4)
    with pytest.raises(ConfigError, match=r"option transformer_layers: Input should be greater than or equal to 1"):
        get_task("multilingual_asr", head="transformer", transformer_layers=0)
    assert get_task("asr", head="transformer", attention_dim="64", ff_dim="128").options["attention_dim"] == 64
    with pytest.raises(ConfigError, match="at least 7 input features"):
        get_task("asr", **(SMALL_TRANSFORMER | {"proj_dim": 6})).fit(utts_with("text", ["a"])).build_head(4)


def test_ctc_loss_refuses_too_few_frames():
    task = get_task("asr", **SMALL_ASR).fit(utts_with("text", ["hello"]))
    head = task.build_head(4)
    out, lengths = head(torch.randn(2, 6, 4), torch.tensor([6, 5]))
    # "hello" needs 6 CTC steps (5 letters + a blank between the two l's)
    with pytest.raises(ShapeError, match=r"position\(s\) \[1\]"):
        task.loss(out, lengths, task.encode(utts_with("text", ["hello", "hello"])))
    assert torch.isfinite(task.loss(out[:1], lengths[:1], task.encode(utts_with("text", ["hello"]))))


def test_asr_metrics_and_state_round_trip():
    task = get_task("asr", **SMALL_ASR).fit(utts_with("text", ["one two", "three"]))
    scores = task.metrics(["one too", "three"], ["One  Two", "three"])
    assert scores["wer"] == pytest.approx(1 / 3)
    assert scores["cer"] == pytest.approx(1 / 12)
    with pytest.raises(ConfigError, match="2 predictions but 1"):
        task.metrics(["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="empty"):
        task.metrics(["a"], ["  "])
    rebuilt = Task.from_state(json.loads(json.dumps(task.state())))
    assert rebuilt.vocab == task.vocab and rebuilt.options == task.options
    head, twin = task.build_head(5).eval(), rebuilt.build_head(5).eval()
    twin.load_state_dict(head.state_dict())
    x, lens = torch.randn(2, 9, 5), torch.tensor([9, 4])
    assert task.predict(*head(x, lens)) == rebuilt.predict(*twin(x, lens))


def test_head_rejects_bad_lengths():
    head = get_task("asr", **SMALL_ASR).fit(utts_with("text", ["a"])).build_head(4)
    with pytest.raises(ShapeError, match="1..6"):
        head(torch.randn(2, 6, 4), torch.tensor([6, 0]))
    with pytest.raises(ShapeError, match=r"\[B,T,D\]"):
        head(torch.randn(6, 4), torch.tensor([6]))


# -- classification ------------------------------------------------------------------------------------

def test_classify_labels_loss_and_unknown_label():
    task = get_task("classify").fit(utts_with("label", ["b", "a", "b", "c"]))
    assert task.labels == ["a", "b", "c"]
    assert task.encode(utts_with("label", ["c", "a"])).tolist() == [2, 0]
    with pytest.raises(ConfigError, match=r"'zebra' \(utterance 'u1'\)"):
        task.encode(utts_with("label", ["a", "zebra"]))
    with pytest.raises(ConfigError, match="at least 2"):
        get_task("classify").fit(utts_with("label", ["a", "a"]))
    logits = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]])
    assert task.predict(logits, torch.tensor([3, 3])) == ["b", "a"]
    assert task.loss(logits, torch.tensor([3, 3]), torch.tensor([1, 0])).item() < 0.01
    assert task.loss(logits, torch.tensor([3, 3]), torch.tensor([0, 1])).item() > 5


def test_classify_metrics_by_hand():
    # per class F1: a = 2/3, b = 2/3, c = 1
    scores = get_task("classify").metrics(["a", "b", "b", "c"], ["a", "a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx(7 / 9)
    assert macro_f1(["x", "x"], ["y", "y"]) == 0.0


def test_masked_mean_uses_valid_frames_only():
    features = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    assert masked_mean(features, torch.tensor([2, 3])).flatten().tolist() == [2.0, 4.0]


def test_classify_head_learns_a_separable_problem_and_round_trips():
    torch.manual_seed(0)
    labels = ["up", "down"] * 8
    task = get_task("classify").fit(utts_with("label", labels))
    head = task.build_head(4)
    features = torch.randn(16, 10, 4)
    features[:, :, 0] += torch.tensor([3.0 if l == "up" else -3.0 for l in labels])[:, None]
    lengths = torch.randint(3, 11, (16,))
    targets = task.encode(utts_with("label", labels))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(60):
        loss = task.loss(*head(features, lengths), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert task.metrics(task.predict(*head(features, lengths)), labels)["accuracy"] == 1.0
    rebuilt = Task.from_state(json.loads(json.dumps(task.state())))
    assert rebuilt.labels == task.labels and rebuilt.main_metric == "accuracy"


def test_head_options_are_typed_by_each_task():
    from speechfuse.tasks import task_options

    assert list(task_options("classify").model_fields) == ["hidden_dim", "dropout"]
    assert list(task_options("asr").model_fields) == ["proj_dim", "hidden_size", "num_layers", "bidirectional",
                                                      "dropout", "case", "punctuation", "head", "subsample",
                                                      "attention_dim", "attention_heads", "ff_dim",
                                                      "transformer_layers", "normalize", "normalize_vars",
                                                      "token_type", "ctc_normalize", "ctc_too_short"]
    assert get_task("classify", hidden_dim="128").options == {"hidden_dim": 128, "dropout": 0.0}
    with pytest.raises(ConfigError, match=r"task 'classify': option hidden_dim: Input should be a valid integer.*\(got 'wide'\)"):
        get_task("classify", hidden_dim="wide")
    with pytest.raises(ConfigError, match=r"task 'asr': option dropout: Input should be less than 1"):
        get_task("asr", dropout=1.0)
    with pytest.raises(ConfigError, match=r"option num_layers: Input should be greater than or equal to 0"):
        get_task("asr", num_layers=-1)


def test_labels_seen_only_in_dev_or_test_are_named_with_their_manifest():
    from speechfuse.tasks import check_targets_known

    task = get_task("classify").fit(utts_with("label", ["a", "b", "a"]))
    splits = {"train": utts_with("label", ["a", "b"]), "dev": utts_with("label", ["a", "c"]),
              "test": utts_with("label", ["z", "b", "z"])}
    with pytest.raises(ConfigError) as err:
        check_targets_known(task, splits, {"train": "tr.csv", "dev": "dev.csv", "test": "test.csv"})
    message = str(err.value)
    assert "data.dev (dev.csv): label(s) never seen in training: 'c' (1 row(s), e.g. id 'u1')" in message
    assert "data.test (test.csv): label(s) never seen in training: 'z' (2 row(s), e.g. id 'u0')" in message
    check_targets_known(task, {"dev": utts_with("label", ["b"])}, {"dev": "dev.csv"})  # all known: no error
    asr = get_task("asr").fit(utts_with("text", ["ab"]))
    check_targets_known(asr, {"test": utts_with("text", ["xyz"])}, {"test": "t.csv"})  # ASR maps them to <unk>


def test_a_test_label_unseen_in_training_stops_the_run_before_training(tmp_path, tiny_model_dir):
    """It used to be found only when the test set was scored, after training had finished."""
    from speechfuse.config import config_from_dict
    from speechfuse.data import write_manifest
    from speechfuse.training.runner import train

    manifests = make_fsdd(tmp_path, speakers=("george",))
    test_utts = load_manifest(manifests["test"])
    test_utts[0].label = "7"
    write_manifest(test_utts, manifests["test"])
    with pytest.raises(ConfigError) as err:
        train(config_from_dict(run_config(manifests, f"hf:{tiny_model_dir('hubert')}", max_steps=1)), tmp_path / "run")
    message = str(err.value)
    assert f"data.test ({manifests['test']}): label(s) never seen in training: '7'" in message
    assert "nothing was trained" in message and not (tmp_path / "run" / "checkpoints").exists()
