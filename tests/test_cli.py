"""The `speechfuse` command line: --help everywhere, train / evaluate end to end, extract, sweep grid
parsing, clean errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import make_fsdd, run_config, save_tiny_model
from speechfuse.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    manifests = make_fsdd(root)
    upstream = save_tiny_model("hubert", root / "hubert")
    data = run_config(manifests, f"hf:{upstream}", max_steps=4)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return root, cfg, manifests


@pytest.mark.slow
def test_console_script_help():
    exe = Path(sys.executable).parent / "speechfuse"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "evaluate" in out.stdout


@pytest.mark.parametrize("command", ["train", "evaluate", "compare", "extract", "sweep", "prepare", "demo"])
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: speechfuse {command}" in capsys.readouterr().out


def test_train_then_evaluate(setup, tmp_path, capsys):
    root, cfg, _ = setup
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--set", "train.max_steps=3", "--set", "interface.name=hconv", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((out / "metrics.json").read_text()) == printed
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 3 and resolved["interface"]["name"] == "hconv"
    assert json.loads((out / "interface.json").read_text())["describe"]
    assert main(["evaluate", str(out), "--split", "dev"]) == 0
    assert json.loads(capsys.readouterr().out)["dev"] == pytest.approx(printed["dev"])


def test_bad_rows_are_listed_before_training(setup, tmp_path, capsys):
    root, cfg, manifests = setup
    lines = manifests["train"].read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], "x1," + str(tmp_path / "gone.wav") + ",,one,1,a",
                              lines[2], "x2," + str(tmp_path / "gone2.wav") + ",,one,1,a"]) + "\n")
    out = tmp_path / "run"
    code = main(["train", str(cfg), "--set", f"data.train={bad}", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "row 2 " in err and "row 4 " in err and "audio file not found" in err
    assert "Traceback" not in err and not (out / "checkpoints").exists()


def test_unknown_config_key_is_a_clean_error(setup, capsys):
    _, cfg, _ = setup
    assert main(["train", str(cfg), "--set", "train.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.learning_rate'" in err and "Traceback" not in err


def test_evaluate_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a finished speechfuse run folder" in capsys.readouterr().err


def test_extract_fills_the_cache_then_train_reads_it(setup, tmp_path, capsys, monkeypatch, speechfuse_home):
    _, cfg, _ = setup
    out = tmp_path / "runs" / "a"
    assert main(["extract", str(cfg), "--set", "cache=auto", "--out", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert Path(report["cache"]) == speechfuse_home / "cache" and report["utterances"] == 24  # auto: the user's cache
    assert "s of audio per second" in captured.err  # throughput line of fill_caches
    assert main(["extract", str(cfg), "--set", "cache=auto", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert json.loads(quiet.out)["utterances"] == 24 and "feature cache" not in quiet.err  # --quiet: no notes
    assert main(["extract", str(cfg), "--set", "cache=off", "--out", str(out)]) == 2
    assert "cache is 'off'" in capsys.readouterr().err

    from speechfuse.fusion.upstream.base import Upstream

    def boom(*args, **kwargs):
        raise AssertionError("the upstream ran although `speechfuse extract` cached every utterance")

    monkeypatch.setattr(Upstream, "forward", boom)
    assert main(["train", str(cfg), "--set", "cache=auto", "--set", "train.max_steps=2", "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file()


def test_sweep_grid_reaches_run_sweep(setup, tmp_path, monkeypatch):
    import speechfuse.experiments.sweep as sweep

    _, cfg, _ = setup
    seen = {}

    def fake_run_sweep(config, grid, out_dir, seeds=None, select=None, jobs=1, threads=None, progress=True,
                       keep_going=True):
        seen.update(config=config, grid=grid, out=out_dir, seeds=seeds, select=select, jobs=jobs, threads=threads,
                    keep_going=keep_going)
        return []

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    assert main(["sweep", str(cfg), "--grid", "interface.name=weighted_sum,hconv,chconv",
                 "--grid", "upstreams=whisper-tiny.en+resemblyzer,resemblyzer", "--out", str(tmp_path)]) == 0
    assert seen["grid"] == {"interface.name": ["weighted_sum", "hconv", "chconv"],
                            "upstreams": [["whisper-tiny.en", "resemblyzer"], ["resemblyzer"]]}
    assert seen["seeds"] is None and seen["select"] is None and seen["jobs"] == 1 and seen["keep_going"]
    assert main(["sweep", str(cfg), "--grid", "interface.name=hconv", "--seeds", "0,1", "--fail-fast",
                 "--select", "train.interface_lr=1e-4,1e-3", "--jobs", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert seen["keep_going"] is False
    assert seen["seeds"] == [0, 1] and seen["select"] == {"train.interface_lr": [1e-4, 1e-3]} and seen["jobs"] == 2
    assert seen["threads"] == 1
    assert seen["config"].task == "classify" and seen["out"] == str(tmp_path)
    assert main(["sweep", str(cfg), "--seeds", "0,1", "--out", str(tmp_path)]) == 0  # seeds alone: no grid needed
    assert seen["grid"] == {} and seen["seeds"] == [0, 1]
    assert main(["sweep", str(cfg), "--select", "train.lr=1e-3,1e-2", "--out", str(tmp_path)]) == 0  # select alone
    assert seen["grid"] == {} and seen["seeds"] is None and seen["select"] == {"train.lr": [1e-3, 1e-2]}
    assert main(["sweep", str(cfg), "--out", str(tmp_path)]) == 2


def test_demo_subcommand_calls_run_demo(tmp_path, monkeypatch, capsys):
    import speechfuse.experiments.demo as demo

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, quick=False, jobs=None, threads=None, device="cpu":
                        calls.append((out, quick, threads, device)) or Path(out) / "x.md")
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    assert calls == [(str(tmp_path), True, None, "cpu")] and capsys.readouterr().out == ""  # run_demo prints
    assert main(["demo", "--out", str(tmp_path), "--threads", "2", "--device", "cuda:1"]) == 0
    assert calls[-1] == (str(tmp_path), False, 2, "cuda:1")  # both reach every run of the demo
    assert main(["demo", "--device", "tpu"]) == 2 and "--device 'tpu'" in capsys.readouterr().err


def test_sweep_seeds_flag_is_checked(tmp_path, capsys):
    cfg = Path(__file__).resolve().parents[1] / "configs" / "fsdd_speaker.yaml"
    for bad in ("0,x", "1,1"):
        assert main(["sweep", str(cfg), "--grid", "interface.name=weighted_sum", "--seeds", bad,
                     "--out", str(tmp_path)]) == 2
        assert "--seeds" in capsys.readouterr().err
