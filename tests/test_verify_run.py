"""`task: verify` end to end through the CLI on real FSDD speech: run folder contents, best checkpoint by
dev EER (lower is better), evaluate, a given trial list; and a run on the bundled Whisper encoder whose
test EER is far from chance, and whose saved model's verify() separates same- from different-speaker pairs."""
from __future__ import annotations

import csv
import json
from math import comb

import pytest
import yaml

from helpers import make_fsdd, save_tiny_model, SPEAKERS, verify_config
from speechfuse.cli import main
from speechfuse.data.trials import read_trials

@pytest.mark.slow
def test_verify_run_folder_best_by_dev_eer_and_evaluate(tmp_path, capsys):
    manifests = make_fsdd(tmp_path, speakers=SPEAKERS[:3])
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    cfg = tmp_path / "verify.yaml"
    cfg.write_text(yaml.safe_dump(verify_config(manifests, f"hf:{upstream}", max_steps=6, val_every_steps=2)))
    run = tmp_path / "runs" / "verify"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["test"]) == {"eer", "min_dcf_0.01", "min_dcf_0.05"}

    # generated trials are in the run folder: 3 speakers x C(2 clips, 2) targets + as many non-targets
    for split in ("dev", "test"):
        trials = read_trials(run / f"trials_{split}.txt")
        assert sum(t.label for t in trials) == 3 * comb(2, 2) and len(trials) == 6

    # the kept checkpoint is the one with the lowest dev EER of the three evaluations
    with open(next((run / "logs" / "csv").glob("version_*/metrics.csv"))) as f:
        dev_eers = [float(r["dev/eer"]) for r in csv.DictReader(f) if r.get("dev/eer")]
    assert len(dev_eers) == 3
    assert metrics["dev"]["eer"] == pytest.approx(min(dev_eers), abs=1e-6)

    assert main(["evaluate", str(run), "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(metrics["test"])

    # a given trial list is used as is: its names are manifest ids
    given = tmp_path / "given.txt"
    given.write_text("1 0_george_5 1_george_5\n0 0_george_5 0_lucas_5\n0 1_george_5 1_jackson_5\n")
    cfg2 = tmp_path / "given.yaml"
    data = verify_config(manifests, f"hf:{upstream}", max_steps=2, val_every_steps=2)
    data["downstream"]["test_trials"] = str(given)
    cfg2.write_text(yaml.safe_dump(data))
    assert main(["train", str(cfg2), "--out", str(tmp_path / "runs" / "given")]) == 0
    capsys.readouterr()
    assert not (tmp_path / "runs" / "given" / "trials_test.txt").exists()

    # a trial naming an utterance the test manifest lacks: one clean error naming the file and line
    given.write_text("1 0_george_5 1_george_5\n0 0_george_5 9_nobody_5\n")
    assert main(["evaluate", str(tmp_path / "runs" / "given"), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert f"{given} line 2" in err and "9_nobody_5" in err and "Traceback" not in err


@pytest.mark.slow
def test_fsdd_verification_eer_is_far_from_chance(tmp_path, capsys):
    # 6 speakers, digits 0-3; takes 2-9 train, take 1 dev, take 0 test (the same speakers, unseen takes)
    manifests = make_fsdd(tmp_path, digits=range(4), speakers=SPEAKERS, takes=range(10), dev_takes=[1], test_takes=[0])
    cfg = tmp_path / "verify.yaml"
    cfg.write_text(yaml.safe_dump(verify_config(manifests, "whisper-tiny.en", max_steps=200, val_every_steps=100)))
    assert main(["train", str(cfg), "--out", str(tmp_path / "runs" / "verify")]) == 0
    test = json.loads(capsys.readouterr().out)["test"]
    print("FSDD verification, whisper-tiny.en + weighted_sum, test:", test)
    # chance is 0.5; the same run stopped after 1 step scored EER 0.44 (minDCF 1.0) when this bound was set
    assert test["eer"] < 0.15
    assert test["min_dcf_0.05"] < 1.0

    # the saved model scores trials: per speaker, its same-speaker pairs (its 4 test clips, different digits)
    # score higher on average than its pairs with each other speaker's clips
    import speechfuse as sf

    model = sf.load_model(tmp_path / "runs" / "verify")
    rec = tmp_path / "recordings"
    clip = {(spk, d): str(rec / f"{d}_{spk}_0.flac") for spk in SPEAKERS for d in range(4)}
    same = [(clip[s, a], clip[s, b]) for s in SPEAKERS for a in range(4) for b in range(a + 1, 4)]
    other = [(clip[s, a], clip[t, a]) for s in SPEAKERS for t in SPEAKERS if s < t for a in range(4)]
    trials = model.verify(same + other)
    score = {(t.enrol, t.test): t.score for t in trials}
    speaker_of = {path: spk for (spk, _), path in clip.items()}
    for spk in SPEAKERS:
        mine = [score[p] for p in same if speaker_of[p[0]] == spk]
        for rival in SPEAKERS:
            if rival != spk:
                theirs = [score[p] for p in other if {speaker_of[p[0]], speaker_of[p[1]]} == {spk, rival}]
                assert sum(mine) / len(mine) > sum(theirs) / len(theirs), (spk, rival)
    # decisions at the dev EER threshold: most test trials are decided right (chance: half)
    right = sum(t.decision == (speaker_of[t.enrol] == speaker_of[t.test]) for t in trials)
    print(f"verify() on {len(trials)} test trials at dev threshold {model.task.threshold:.3f}: {right} right")
    assert right / len(trials) > 0.75


@pytest.mark.slow
def test_asnorm_cohort_of_training_embeddings_is_saved_and_shared_by_evaluate_and_verify(tmp_path, capsys):
    """score_norm asnorm with the default cohort (training speakers' mean embeddings): the runner embeds the
    training set with the best checkpoint, stores the cohort in that checkpoint and in model.safetensors, and
    `evaluate`, model.verify and `speechfuse verify` normalise against it."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    import speechfuse as sf
    from speechfuse.training.checkpoint import load_checkpoint_file
    from speechfuse.data import load_manifest
    from speechfuse.serving.verify_trials import verify_to_file

    manifests = make_fsdd(tmp_path, speakers=SPEAKERS[:3])
    upstream = save_tiny_model("hubert", tmp_path / "hubert")
    data = verify_config(manifests, f"hf:{upstream}", max_steps=4, val_every_steps=2)
    data["downstream"].update(score_norm="asnorm", cohort_top=3)
    data["cache"] = "off"  # evaluate and verify then both embed the audio itself
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "v.yaml"), "--out", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)

    stored = load_checkpoint_file(run / "checkpoints" / "best.safetensors")["speechfuse"]["task_tensors"]["cohort"]
    assert stored.shape == (3, 64)  # one mean embedding per training speaker
    torch.testing.assert_close(stored.norm(dim=-1), torch.ones(3))
    assert torch.equal(load_file(str(run / "model" / "model.safetensors"))["task.cohort"], stored)
    assert "task_tensors" not in load_checkpoint_file(run / "checkpoints" / "last.safetensors")["speechfuse"] \
        or (run / "checkpoints" / "best.safetensors").samefile(run / "checkpoints" / "last.safetensors")

    assert main(["evaluate", str(run), "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(metrics["test"])

    # the saved model: the same cohort, verify() = the AS-norm formula over its embeddings, by hand
    model = sf.load_model(run)
    assert torch.equal(model.task.cohort, stored)
    path = {u.id: str(u.path) for u in load_manifest(manifests["test"])}
    trials = read_trials(run / "trials_test.txt")
    pairs = [(path[t.enrol], path[t.test]) for t in trials]
    scores = [v.score for v in model.verify(pairs)]
    clips = list(dict.fromkeys(c for pair in pairs for c in pair))  # verify()'s own order: the same batch
    unit = torch.stack([r.embedding for r in model.predict(clips)]).double().numpy()
    cos = unit @ stored.double().numpy().T
    top = -np.sort(-cos, axis=1)[:, :3]
    mean, std = top.mean(1), top.std(1)
    e, t = [clips.index(a) for a, _ in pairs], [clips.index(b) for _, b in pairs]
    raw = (unit[e] * unit[t]).sum(1)
    by_hand = ((raw - mean[e]) / std[e] + (raw - mean[t]) / std[t]) / 2
    # this barely trained model's cosines are all ~0.999 and a side's cohort std ~1e-4, so float32 rounding
    # (6e-8) of the cosines moves a normalised score by up to ~1e-3 of its size; raw cosines would be ~0.999
    np.testing.assert_allclose(scores, by_hand, rtol=3e-3, atol=1e-3)

    # save / load round trip: identical scores
    again = sf.load_model(model.save_pretrained(tmp_path / "copy"))
    assert [v.score for v in again.verify(pairs)] == scores

    # `speechfuse verify` over the run's own test trials gives evaluate's EER
    (tmp_path / "trials.txt").write_text("".join(f"{t.label} {path[t.enrol]} {path[t.test]}\n" for t in trials))
    summary = verify_to_file(model, tmp_path / "trials.txt", tmp_path / "scores.jsonl", progress=False)
    assert summary["metrics"]["eer"] == pytest.approx(metrics["test"]["eer"], abs=1e-9)
    assert summary["metrics"]["min_dcf_0.05"] == pytest.approx(metrics["test"]["min_dcf_0.05"], abs=1e-9)
