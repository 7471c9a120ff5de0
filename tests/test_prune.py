"""Pruning a fused model: the selection rule on hand-made matrices (against brute force), FLOPs of recurrent
layers, and `prune_run` end to end on two tiny random upstreams over real FSDD clips: a skipped upstream is
never run by the pruned run's training nor by its saved model, which saves, loads and predicts."""
from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from torch import nn

from helpers import real_batch
from speechfuse.errors import ConfigError
from speechfuse.experiments.prune import PruneError, check_budget, choose_depths, count_flops, recurrent_flops

# two models: A has layers worth 0.1, 0, 0.5 at depth costs 1, 2, 3; B worth 0.3, 0.2 at costs 2, 4 (full: 7)
SCORES = [[0.1, 0.0, 0.5], [0.3, 0.2]]
COSTS = [[0, 1, 2, 3], [0, 2, 4]]


@pytest.mark.parametrize("budget, depths", [
    (1.0, [3, 2]),   # everything fits
    (0.5, [3, 0]),   # 3.5 of 7: A in full (0.6) beats A:1 + B:1 (0.4, cost 3); B is skipped
    (0.3, [0, 1]),   # 2.1 of 7: B's first layer (0.3) beats A to depth 2 (0.1) at the same cost
])
def test_choose_depths_keeps_the_most_importance_within_the_budget(budget, depths):
    assert choose_depths(SCORES, COSTS, budget) == depths
    assert sum(c[k] for c, k in zip(COSTS, depths)) <= budget * 7


def test_choose_depths_prefers_the_cheaper_of_equal_importance_and_ignores_harmful_layers():
    # the top layer adds nothing (0) or hurts (negative, counted as 0): running it only costs
    assert choose_depths([[0.5, 0.0]], [[0, 1, 2]], 1.0) == [1]
    assert choose_depths([[0.5, -0.2, 0.1]], [[0, 1, 2, 3]], 1.0) == [3]
    assert choose_depths([[0.5, -0.2, 0.0]], [[0, 1, 2, 3]], 1.0) == [1]


def test_choose_depths_is_the_exact_optimum():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 3)
        scores = [[rng.choice([0.0, rng.random()]) for _ in range(rng.randint(1, 4))] for _ in range(n)]
        costs = [[0.0] + sorted(rng.uniform(0.1, 5) for _ in row) for row in scores]
        budget = rng.uniform(0.05, 1.0)
        limit = budget * sum(c[-1] for c in costs)
        best = max(((sum(sum(max(v, 0) for v in row[:k]) for row, k in zip(scores, ks)),
                     -sum(c[k] for c, k in zip(costs, ks)), ks)
                    for ks in itertools.product(*(range(len(c)) for c in costs))
                    if sum(c[k] for c, k in zip(costs, ks)) <= limit), key=lambda t: (t[0], t[1]))
        if best[0] <= 0:
            with pytest.raises(PruneError, match="budget"):
                choose_depths(scores, costs, budget)
            continue
        got = choose_depths(scores, costs, budget)
        value = sum(sum(max(v, 0) for v in row[:k]) for row, k in zip(scores, got))
        cost = sum(c[k] for c, k in zip(costs, got))
        assert cost <= limit * (1 + 1e-9)
        assert value == pytest.approx(best[0]) and cost == pytest.approx(-best[1])


def test_a_budget_below_every_layer_or_outside_0_1_is_refused():
    with pytest.raises(PruneError, match="budget 0.1 keeps no layer"):
        choose_depths(SCORES, COSTS, 0.1)  # 0.7 of 7: the cheapest layer costs 1
    for bad in (0, -0.5, 1.5, "half", True, float("nan")):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            check_budget(bad)


def test_recurrent_layers_count_their_weight_matmuls():
    class Lstm(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(40, 16, num_layers=2, batch_first=True)

        def forward(self, wavs, lengths):
            return self.lstm(wavs.view(wavs.shape[0], -1, 40))[0]

    wavs = torch.randn(3, 400)  # 3 clips x 10 frames x 40
    expected = 2 * 3 * 10 * (4 * 16 * 40 + 4 * 16 * 16 + 4 * 16 * 16 + 4 * 16 * 16)  # W_ih, W_hh of 2 layers
    assert count_flops(Lstm(), wavs, torch.tensor([400, 400, 400])) == expected
    # aten.lstm's argument layout (weights in a list; hidden states 3-D, biases 1-D are not matmuls)
    assert recurrent_flops(torch.Size([3, 10, 40]), [torch.Size([1, 3, 16])] * 2,
                           [torch.Size([64, 40]), torch.Size([64, 16]), torch.Size([64])], True) == 2 * 30 * 64 * 56


# ---------------------------------------------------------------------------------------------
# end to end on tiny upstreams and real clips
# ---------------------------------------------------------------------------------------------
def _spy(monkeypatch, cls) -> list:
    calls = []
    forward = cls.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counted)
    return calls


@pytest.mark.slow
def test_pruned_model_never_runs_a_skipped_upstream_and_saves_loads_predicts(fused_run, monkeypatch, tmp_path,
                                                                              capsys):
    import transformers as tf

    import speechfuse as sf
    from speechfuse.cache.store import FeatureCache
    from speechfuse.data import load_manifest
    from speechfuse.experiments.prune import measure, prune_run

    run, manifests = fused_run
    measured = measure(run, clips=4, repeat=1)
    for kind in ("loss", "feature"):
        assert [len(row) for row in measured["importance"][kind]] == [3, 3]  # CNN output + 2 layers each
    assert all(v >= 0 for row in measured["importance"]["feature"] for v in row)
    for flops in measured["flops"]:  # deeper costs more, every depth counted
        assert flops[0] == 0 and all(x < y for x, y in zip(flops, flops[1:]))
    # hand-set importance (prune reads it back from the file): only A's first hidden state matters, B not at all
    measured["importance"]["loss"] = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    (run / "prune" / "measurements.json").write_text(json.dumps(measured))

    calls_a, calls_b = _spy(monkeypatch, tf.Wav2Vec2Model), _spy(monkeypatch, tf.HubertModel)
    rows = prune_run(run, [0.5], clips=4, repeat=1)
    # training the pruned run ran no upstream: A's depth-1 entry was sliced from the full run's cache
    assert calls_a == [] and calls_b == []
    full, pruned = rows
    assert full["budget"] == "full" and full["flops_fraction"] == 1.0
    assert pruned["kept"] == "a:1/3 b:0/3"  # the cheapest depth holding all the importance; B skipped
    assert pruned["flops_fraction"] == pytest.approx(measured["flops"][0][1] / sum(f[-1] for f in measured["flops"]))
    for name in ("results.md", "results.csv", "pareto.png"):
        assert (run / "prune" / name).is_file()

    # the sliced entry holds the full entry's first hidden state exactly, i.e. what A at depth 1 computes
    a_spec = json.loads((run / "prune" / "budget=0.5" / "model" / "config.json").read_text())["upstreams"][0]["spec"]
    truncated = sf.load_upstream(a_spec, max_layers=1)
    test = load_manifest(manifests["test"])[:4]
    cache = FeatureCache(run.parent.parent / "cache")
    cached = cache.entry(truncated).read(test)
    assert torch.equal(cached.hidden, cache.entry(sf.load_upstream(a_spec)).read(test).hidden[:1])
    wavs, lengths = real_batch(manifests["test"], count=4)
    with torch.no_grad():
        fresh = truncated(wavs, lengths)  # another batch composition than the cache's, stored as float16
    assert torch.equal(cached.lengths, fresh.lengths)
    assert torch.allclose(cached.hidden, fresh.hidden[:, :, :cached.hidden.shape[2]], atol=2e-3, rtol=1e-2)

    folder = run / "prune" / "budget=0.5"
    config = json.loads((folder / "model" / "config.json").read_text())
    assert len(config["upstreams"]) == 1 and config["upstreams"][0]["spec"].endswith("/a")
    assert config["upstreams"][0]["options"]["max_layers"] == 1
    calls_a.clear()
    model = sf.load_model(folder)
    with torch.no_grad():
        out = model(wavs, lengths)[0]
    predictions = model.predict([load_manifest(manifests["test"])[0].path])
    assert calls_b == [] and calls_a  # loading and predicting ran A only (the spies do see calls)
    assert len(predictions) == 1 and predictions[0].label in ("0", "1")
    model.save_pretrained(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(sf.load_model(tmp_path / "copy")(wavs, lengths)[0], out)

    # a second prune (through the CLI) reuses the measurements and the finished run: nothing is trained again
    from speechfuse.cli import main

    monkeypatch.setattr("speechfuse.training.runner.train", lambda *a, **k: pytest.fail("trained again"))
    capsys.readouterr()
    assert main(["prune", str(run), "--budget", "0.5", "--clips", "4", "--repeat", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    # a finished budget folder holding other layers than the selection (here: changed importance) is refused
    measured["importance"]["loss"] = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    (run / "prune" / "measurements.json").write_text(json.dumps(measured))
    with pytest.raises(PruneError, match="budget=0.5 was trained with other upstream layers"):
        prune_run(run, [0.5], clips=4, repeat=1)
    with pytest.raises(PruneError, match="clips=4"):
        prune_run(run, [0.5], clips=8, repeat=1)


def test_prune_cli_errors_are_one_line(tmp_path, capsys):
    from speechfuse.cli import main

    assert main(["prune", str(tmp_path / "nope"), "--budget", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run folder not found" in err and "\n" not in err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("task: classify\n")
    assert main(["prune", str(tmp_path / "half"), "--budget", "0.5"]) == 2
    assert "not a finished speechfuse run (task.json is missing)" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "half"), "--budgets", "0.5,2"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "half"), "--budgets", "0.5,x"]) == 2
    assert "expected numbers" in capsys.readouterr().err


def test_a_run_with_a_fine_tuned_upstream_is_refused(tmp_path):
    import yaml

    from speechfuse.experiments.prune import prune_run

    run = tmp_path / "tuned"
    run.mkdir()
    config = {"task": "classify", "data": {"train": "train.csv", "dev": "dev.csv"},
              "upstreams": [{"spec": "resemblyzer", "options": {"trainable": True}}]}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "task.json").write_text("{}")
    (run / "metrics.json").write_text("{}")
    with pytest.raises(PruneError, match=r"\['resemblyzer'\] were fine-tuned"):
        prune_run(run, [0.5])

