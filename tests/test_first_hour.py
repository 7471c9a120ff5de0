"""The first hour of a new user: own data in three commands (prepare folder, init, train) then predict, with
results alone on stdout; the folder preparation on its own; the CLI grammar."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import FSDD
from speechfuse.cli import build_parser, main
from speechfuse.errors import ConfigError

SPEAKERS = ("george", "jackson", "lucas")


def clip_folder(root: Path, digits=range(4), takes=(0, 1), wav: bool = False) -> Path:
    """root/<speaker>/<clip>.flac (or .wav, as a user's recorder writes them): real FSDD recordings, labelled by
    the sub-folder (the speaker)."""
    import soundfile

    for speaker in SPEAKERS:
        (root / speaker).mkdir(parents=True, exist_ok=True)
        for d in digits:
            for t in takes:
                source = FSDD / f"{d}_{speaker}_{t}.flac"
                if wav:
                    soundfile.write(root / speaker / f"{source.stem}.wav", *soundfile.read(source), subtype="PCM_16")
                else:
                    shutil.copy(source, root / speaker)
    return root


@pytest.mark.slow
def test_prepare_init_train_predict_on_a_folder_of_recordings(tmp_path, capsys, monkeypatch):
    import numpy as np
    from matplotlib.image import imread

    monkeypatch.chdir(tmp_path)
    clip_folder(tmp_path / "clips", wav=True)
    assert main(["prepare", "folder", "clips", "--out", "data/"]) == 0
    prepared = json.loads(capsys.readouterr().out)
    assert prepared["labels"] == list(SPEAKERS) and sum(prepared["utterances"].values()) == 24
    assert main(["init", "--task", "classify", "--data", "data/", "--out", "my.yaml", "--steps", "20"]) == 0
    capsys.readouterr()
    text = Path("my.yaml").read_text()
    config = yaml.safe_load(text)
    assert "#" in text and config["upstreams"] == ["whisper-tiny.en", "resemblyzer"]  # commented, bundled models
    assert config["train"]["interface_lr_scaling"] == "fan_in" and config["train"]["grad_clip"] == 1.0
    assert config["data"]["train"] == "data/train.csv"  # relative to the config file

    # train in its own process, as a user runs it: stdout must be the JSON alone
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "speechfuse.cli", "train", "my.yaml", "--out", "runs/mine",
                           "--threads", "1"], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(done.stdout)
    assert set(metrics) == {"dev", "test"}
    for noise in ("Tip:", "litlogger", "Warning", "deprecated", "log_every_n_steps", "Total FLOPs", "-0:", "srun"):
        assert noise not in done.stderr, noise
    assert "train: 100%" in done.stderr and "20/20" in done.stderr  # one bar, optimizer steps out of max_steps
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", done.stderr)  # elapsed<ETA, never a negative one
    assert "dev/accuracy=" in done.stderr  # the last dev metric on the bar (init validates every 5 of 20 steps)
    run = Path("runs/mine")
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents*"))
    curves = imread(run / "curves.png")  # this run's curves: a real picture, not an empty canvas
    assert curves.shape[0] >= 300 and curves.shape[1] >= 1000 and float(np.std(curves[..., :3])) > 0.05
    card = (run / "model" / "README.md").read_text()
    assert str(tmp_path) not in card and "/tmp/" not in card  # no local absolute path
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "speechfuse" and meta["pipeline_tag"] == "audio-classification"
    results = {r["dataset"]["split"]: r for r in meta["model-index"][0]["results"]}
    test_accuracy = next(m for m in results["test"]["metrics"] if m["type"] == "accuracy")
    assert test_accuracy["value"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    low, high = test_accuracy["args"]["interval_95"]
    assert low <= test_accuracy["value"] <= high
    assert results["test"]["dataset"]["name"] == "test.csv" and results["test"]["dataset"]["revision"].startswith("sha256:")
    assert "`train.csv` (sha256 " in card

    assert main(["predict", "runs/mine/model", "clips", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 24 and all(r["path"].endswith(".wav") for r in rows) and all(set(r["probabilities"]) == set(SPEAKERS) for r in rows)
    right = sum(r["label"] == Path(r["path"]).parent.name for r in rows)
    assert right >= 18, f"{right}/24 clips attributed to their speaker (chance 8)"  # it learned the speakers


def test_card_front_matter_names_hub_models_and_hides_local_folders(tmp_path):
    from speechfuse.fusion.model_card import base_models, front_matter

    local = tmp_path / "my_model"
    local.mkdir()
    ups = [{"spec": "hf:microsoft/wavlm-base-plus"}, {"spec": f"hf:{local}"}, {"spec": "resemblyzer"}]
    assert base_models(ups) == ["microsoft/wavlm-base-plus"]
    text = front_matter({"task": {"name": "asr"}, "interface": {"name": "hconv"}, "upstreams": ups,
                         "training": {"metrics": {"dev": {"wer": 0.25}}}})
    meta = yaml.safe_load(text.split("---\n")[1])
    assert str(tmp_path) not in text and "upstream:hf:my_model (local folder)" in meta["tags"]
    assert meta["pipeline_tag"] == "automatic-speech-recognition" and meta["base_model"] == ["microsoft/wavlm-base-plus"]
    assert meta["model-index"][0]["results"][0]["metrics"] == [{"type": "wer", "name": "wer (dev)", "value": 0.25}]


def test_curves_png_is_a_real_picture(tmp_path):
    """The training-curves figure from a CSV log: three panels, not blank."""
    import numpy as np
    from matplotlib.image import imread

    from speechfuse.training.curves import plot_curves

    log = tmp_path / "logs" / "csv" / "version_0"
    log.mkdir(parents=True)
    lines = ["epoch,step,train/loss,dev/accuracy,lr-AdamW/head"]
    lines += [f"0,{s},{2.0 / (s + 1)},{'' if s % 5 else s / 20},0.005" for s in range(20)]
    (log / "metrics.csv").write_text("\n".join(lines) + "\n")
    png = plot_curves(tmp_path)
    image = imread(png)
    assert image.shape[0] >= 300 and image.shape[1] >= 1000
    assert float(np.std(image[..., :3])) > 0.05  # not one flat colour


def _csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_prepare_folder_speaker_disjoint_and_seeded(tmp_path):
    from speechfuse.data.folder import prepare_folder
    from speechfuse.data.manifest import load_manifest

    clips = clip_folder(tmp_path / "clips")
    for speaker in ("nicolas", "theo"):  # five speakers in all
        (clips / speaker).mkdir()
        for d in range(4):
            for t in (0, 1):
                shutil.copy(FSDD / f"{d}_{speaker}_{t}.flac", clips / speaker)
    rows = [{"path": p.relative_to(clips).as_posix(), "label": p.name[0], "speaker": p.parent.name}
            for p in sorted(clips.rglob("*.flac"))]
    labels = _csv(tmp_path / "labels.csv", rows)
    a = prepare_folder(clips, tmp_path / "a", labels=labels, dev=0.2, test=0.2, seed=3)
    b = prepare_folder(clips, tmp_path / "b", labels=labels, dev=0.2, test=0.2, seed=3)
    assert a["speaker_disjoint"] and a["utterances"] == b["utterances"]
    speakers = {split: {u.speaker for u in load_manifest(tmp_path / "a" / f"{split}.csv")} for split in
                ("train", "dev", "test")}
    assert all(speakers.values())
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                or speakers["dev"] & speakers["test"])
    assert (tmp_path / "a" / "test.csv").read_text() == (tmp_path / "b" / "test.csv").read_text()  # seeded
    # the speaker from the file name instead of a CSV column gives the same kind of split
    by_name = prepare_folder(clips, tmp_path / "c", speaker_pattern=r"^\d+_([a-z]+)_", seed=3)
    assert by_name["speaker_disjoint"] and by_name["labels"] == ["george", "jackson", "lucas", "nicolas", "theo"]


def test_prepare_folder_errors_name_the_problem(tmp_path, capsys):
    clips = clip_folder(tmp_path / "clips", digits=[0], takes=[0])
    shutil.copy(FSDD / "1_george_0.flac", clips)  # a file with no label folder
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "1_george_0.flac" in err and "sub-folder" in err and "Traceback" not in err
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "d"), "--labels", "nope.csv"]) == 2
    assert "nope.csv" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_init_refuses_missing_data_and_unknown_names(tmp_path, capsys):
    assert main(["init", "--task", "classify", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x.yaml")]) == 2
    assert "speechfuse prepare folder" in capsys.readouterr().err
    clips = clip_folder(tmp_path / "clips", digits=range(2))
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "data")]) == 0
    capsys.readouterr()
    assert main(["init", "--task", "classify", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "x.yaml"),
                 "--interface", "hconvv"]) == 2
    assert "hconvv" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()
    assert main(["init", "--task", "asr", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "x.yaml")]) == 2
    assert "`text`" in capsys.readouterr().err  # folder labels are no transcripts


def test_set_takes_one_value_so_the_config_may_follow(tmp_path):
    args = build_parser().parse_args(["train", "--set", "train.max_steps=5", "my.yaml", "--set", "train.lr=1e-3"])
    assert args.config == "my.yaml" and args.overrides == ["train.max_steps=5", "train.lr=1e-3"]


# the commands that run a model take --device; the others say in their help why they do not
RUN_A_MODEL = {"train", "predict", "evaluate", "sweep", "search", "extract", "verify", "prune", "study scaling", "demo"}
RUN_NO_MODEL = {"prepare", "init", "compare", "export", "table"}


def test_every_command_shares_one_grammar_of_options():
    from speechfuse.cli.common import DEVICE_HELP, common_options
    from speechfuse.reference import walk_commands

    shared = {a.option_strings[-1]: a for a in common_options()._actions}
    commands = {path.removeprefix("speechfuse "): sub for path, sub, _ in walk_commands(build_parser())
                if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)}  # the ones that run
    assert set(commands) == RUN_A_MODEL | RUN_NO_MODEL  # a new command is classified here
    for name, sub in commands.items():
        options = {a.option_strings[-1]: a for a in sub._actions if a.option_strings}
        for flag in ("--threads", "--quiet", "--verbose", "--plugin"):  # the same option, not one of the same name
            mine, theirs = options[flag], shared[flag]
            assert (mine.dest, mine.type, mine.default, mine.help) == (theirs.dest, theirs.type, theirs.default,
                                                                       theirs.help), (name, flag)
        if name in RUN_A_MODEL:
            assert options["--device"].metavar == "DEVICE" and options["--device"].help.startswith(DEVICE_HELP), name
        else:
            assert "--device" not in options, name
            why = sub.description.split("No --device: ", 1)[1]
            assert len(why) > 20, (name, why)
        if "--out" in options:  # always where the command writes what it makes: a folder (DIR) or a file (FILE)
            out = options["--out"]
            kind = {"DIR": "folder", "FILE": "file"}[out.metavar]
            assert out.help.startswith(f"the {kind} it writes: "), (name, out.help)


@pytest.mark.parametrize("command", ["train", "sweep", "search", "study scaling"])
def test_device_reaches_the_config_of_every_command_that_trains(command, tmp_path, capsys):
    from speechfuse.cli.common import load_command_config

    clips = clip_folder(tmp_path / "clips", digits=range(1))
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "data")]) == 0
    assert main(["init", "--task", "classify", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c.yaml")]) == 0
    capsys.readouterr()
    extra = {"train": [], "sweep": ["--seeds", "0"], "search": ["--space", "s.yaml"], "study scaling": []}[command]
    args = build_parser().parse_args([*command.split(), str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"),
                                      "--device", "cuda:1", *extra])
    train = load_command_config(args).train
    assert (train.accelerator, str(train.devices)) == ("gpu", "1,")
    args.device = "cpu"
    assert load_command_config(args).train.accelerator == "cpu"
    args.device = "gpu0"
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
        load_command_config(args)


def test_prune_takes_the_device_to_its_measurements_and_retraining(tmp_path, monkeypatch, capsys):
    import speechfuse.experiments.prune as prune

    seen = {}
    monkeypatch.setattr(prune, "prune_run", lambda run, budgets, **options: seen.update(options) or [])
    assert main(["prune", str(tmp_path), "--budget", "0.5", "--device", "cpu"]) == 0
    assert seen["device"] == "cpu"
    assert main(["prune", str(tmp_path), "--budget", "0.5", "--device", "tpu"]) == 2
    assert "cpu, cuda or cuda:N" in capsys.readouterr().err
    # measurements taken on another device are not reused for this one
    (tmp_path / "prune").mkdir()
    (tmp_path / "prune" / "measurements.json").write_text(json.dumps({"clips": 8, "repeat": 5, "device": "cuda"}))
    with pytest.raises(prune.PruneError, match="device=cuda"):
        prune.measure(tmp_path, 8, 5, "cpu")
    assert prune.measure(tmp_path, 8, 5, "cuda")["device"] == "cuda"
    assert prune.measured_device(tmp_path) == "cuda"  # what a prune without --device measures on (and reuses)
    (tmp_path / "prune" / "measurements.json").write_text(json.dumps({"clips": 8, "repeat": 5}))
    assert prune.measured_device(tmp_path) == "cpu"  # measured before devices were recorded: on the CPU


def test_compare_help_has_no_doubled_percent(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "95 %" in out and "%%" not in out


def test_a_bad_interface_is_refused_before_a_folder_or_a_model(tmp_path, capsys, monkeypatch):
    from speechfuse.fusion.upstream import base

    def no_load(*args, **kwargs):
        raise AssertionError("an upstream loaded although the config was bad")

    monkeypatch.setattr(base.Upstream, "__init__", no_load)
    clips = clip_folder(tmp_path / "clips", digits=range(2))
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "data")]) == 0
    assert main(["init", "--task", "classify", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c.yaml")]) == 0
    capsys.readouterr()
    out = tmp_path / "runs" / "r"
    assert main(["train", str(tmp_path / "c.yaml"), "--set", "interface.name=hconvv", "--out", str(out)]) == 2
    assert "hconvv" in capsys.readouterr().err and not out.exists()
    assert main(["train", str(tmp_path / "c.yaml"), "--set", "interface.kernel=3", "--out", str(out)]) == 2
    assert "interface.kernel" in capsys.readouterr().err and not out.exists()
    sweep = tmp_path / "runs" / "sweep"  # a typo in the second grid value: refused before the first run
    assert main(["sweep", str(tmp_path / "c.yaml"), "--grid", "interface.name=hconv,hconvv", "--out", str(sweep)]) == 2
    assert "hconvv" in capsys.readouterr().err and not sweep.exists()


def test_p_values_below_the_bootstrap_resolution_read_as_bounds():
    from speechfuse.experiments.compare import describe
    from speechfuse.experiments.stats import format_p

    assert format_p(0.0, 1000) == "p < 0.001" and format_p(0.0123, 1000) == "p = 0.0123"
    result = {"metric": "wer", "a": 0.1, "b": 0.3, "difference": -0.2, "low": -0.25, "high": -0.15, "p_value": 0.0,
              "resamples": 1000, "utterances": 300, "split": "test"}
    line = describe(result, "A", "B")
    assert "p < 0.001" in line and "p = 0" not in line


def test_quiet_and_verbose_reach_the_command_and_end_with_it(tmp_path, monkeypatch, capsys):
    import speechfuse.training.runner as runner
    from speechfuse.training import progress

    clips = clip_folder(tmp_path / "clips", digits=range(1))
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "data")]) == 0
    assert main(["init", "--task", "classify", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c.yaml")]) == 0
    monkeypatch.delenv(progress.QUIET, raising=False)
    monkeypatch.delenv(progress.VERBOSE, raising=False)
    seen = []
    monkeypatch.setattr(runner, "train", lambda cfg, out: seen.append((progress.quiet(), progress.verbose())) or {})
    for flag, expected in (("--quiet", (True, False)), ("--verbose", (False, True)), (None, (False, False))):
        assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), *([flag] if flag else [])]) == 0
        assert seen[-1] == expected, flag
        assert not (progress.quiet() or progress.verbose())  # the next command in this process starts plain
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args(["train", "c.yaml", "--quiet", "--verbose"])


def test_onnx_export_without_the_extra_says_how_to_install_it_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import importlib.util

    import speechfuse.cli.export as export

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    monkeypatch.setattr(export, "load_trained_model", lambda *a, **k: pytest.fail("the model loaded first"))
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'speechfuse[export]'" in err


@pytest.mark.parametrize("argv", [
    ["predict", "MODEL", "a.wav", "--batch-seconds", "-1"],
    ["verify", "MODEL", "a.wav", "b.wav", "--batch-seconds", "0"],
    ["extract", "c.yaml", "--batch-seconds", "x"],
    ["export", "MODEL", "--out", "m.pt", "--whole", "--tolerance", "-1"],
    ["prune", "RUN", "--budget", "0.5", "--clips", "0"],
    ["sweep", "c.yaml", "--seeds", "0", "--out", "OUT", "--jobs", "0"],
    ["search", "c.yaml", "--space", "s.yaml", "--out", "OUT", "--workers", "-2"],
    ["demo", "--out", "OUT", "--jobs", "0"],
    ["init", "--task", "classify", "--data", "d", "--out", "OUT", "--steps", "1.5"],
    ["train", "c.yaml", "--out", "OUT", "--threads", "0"],
])
def test_a_bad_number_is_refused_while_the_arguments_are_read(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and f"argument {argv[-2]}" in err and argv[-1] in err.splitlines()[-1]
    assert not list(tmp_path.iterdir())  # nothing was written, no model or config was read


def test_a_logger_whose_package_is_missing_is_refused_before_a_folder_exists(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow")
                        else find_spec(name, *a))
    clips = clip_folder(tmp_path / "clips", digits=range(1))
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "data")]) == 0
    assert main(["init", "--task", "classify", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c.yaml")]) == 0
    capsys.readouterr()
    out = tmp_path / "runs" / "r"
    for logger in ("wandb", "[tensorboard, mlflow]"):
        assert main(["train", str(tmp_path / "c.yaml"), "--set", f"train.logger={logger}", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "pip install" in err and not out.exists()


def test_init_prints_json_whatever_the_config_path_holds(tmp_path, capsys):
    clips = clip_folder(tmp_path / "clips", digits=range(1))
    assert main(["prepare", "folder", str(clips), "--out", str(tmp_path / "data")]) == 0
    capsys.readouterr()
    out = tmp_path / 'my "quoted" \\ config.yaml'
    assert main(["init", "--task", "classify", "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"config": str(out)}
