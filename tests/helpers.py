"""Builders shared by the test files: tiny random transformers models, FSDD corpora, run configs, a fake
upstream and a fake trainer. Test files import from here (and fixtures come from conftest.py); no test file
imports another (tests/test_layout.py checks it)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from speechfuse.config import config_from_dict, config_to_yaml
from speechfuse.experiments.sweep import run_sweep
from speechfuse.fusion.upstream.base import Upstream

REPO = Path(__file__).resolve().parents[1]
# real speech that ships with the checkout, so a fresh clone tests on its own:
# the FSDD FLAC subset inside the package (takes 0-24, 8 kHz) and five LibriVox sentences (tests/data)
FSDD = REPO / "src" / "speechfuse" / "assets" / "fsdd" / "recordings"
LIBRIVOX = REPO / "tests" / "data" / "librivox"
KILLED_RUN = REPO / "tests" / "killed_run.py"  # trains and SIGKILLs itself after a given step
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


# -- tiny random transformers models ---------------------------------------------------------------------------

FAMILIES = ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"]

_CNN = dict(
    conv_dim=(32, 32, 32),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def tiny_config(family: str, **overrides):
    """A tiny random config of one family: 2-3 layers, hidden 32."""
    import transformers as tf

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if family == "wav2vec2":
        cfg = tf.Wav2Vec2Config(**common, **_CNN, feat_extract_norm="layer", do_stable_layer_norm=True)
    elif family == "hubert":
        cfg = tf.HubertConfig(**common, **_CNN, feat_extract_norm="layer", do_stable_layer_norm=True)
    elif family == "wavlm":
        cfg = tf.WavLMConfig(**common, **_CNN, feat_extract_norm="layer", do_stable_layer_norm=True,
                             num_buckets=16, max_bucket_distance=64)
    elif family == "data2vec-audio":
        cfg = tf.Data2VecAudioConfig(**common, **{**_CNN, "num_conv_pos_embeddings": 5}, conv_pos_kernel_size=5)
    elif family == "whisper":
        cfg = tf.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                               decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
                               num_mel_bins=80, max_source_positions=1500, vocab_size=64,
                               pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def save_tiny_model(family: str, folder, seed: int = 0, **overrides) -> str:
    """Save a tiny random model (+ feature extractor) of `family` into `folder`; return the path."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(family, **overrides)
    if family == "whisper":
        model = tf.WhisperModel(cfg)
        fe = tf.WhisperFeatureExtractor(feature_size=80)
    else:
        cls = {"wav2vec2": tf.Wav2Vec2Model, "hubert": tf.HubertModel, "wavlm": tf.WavLMModel,
               "data2vec-audio": tf.Data2VecAudioModel}[family]
        model = cls(cfg)
        fe = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                          do_normalize=True, return_attention_mask=True)
    model.eval()
    model.save_pretrained(folder)
    fe.save_pretrained(folder)
    return str(folder)


# -- corpora and configs ---------------------------------------------------------------------------------------

def make_fsdd(root: Path, digits=(0, 1), speakers=("george", "jackson"), takes=range(6), dev_takes=(4,),
              test_takes=(5,)) -> dict[str, Path]:
    """Copy a few real FSDD clips (bundled FLAC) into root/recordings and write train/dev/test manifests
    split by take (by default dev = take 4, test = take 5)."""
    from speechfuse.data import fsdd_manifests

    rec = root / "recordings"
    rec.mkdir(parents=True, exist_ok=True)
    for d in digits:
        for spk in speakers:
            for take in takes:
                shutil.copy(FSDD / f"{d}_{spk}_{take}.flac", rec)
    return fsdd_manifests(rec, root / "manifests", dev_takes=list(dev_takes), test_takes=list(test_takes))


def fsdd_takes(folder: Path, takes: dict, digits: str = "0123456789") -> dict[str, Path]:
    """Manifests of the bundled FSDD clips (6 speakers) in place: split -> the takes it keeps (dev and test
    are other takes of the same speakers, for speaker ID), only the given digits."""
    from speechfuse.data import bundled_fsdd_dir, fsdd_manifests, load_manifest, write_manifest

    manifests = fsdd_manifests(bundled_fsdd_dir() / "recordings", folder)
    for split, keep in takes.items():
        write_manifest([u for u in load_manifest(manifests[split])
                        if int(u.id.rsplit("_", 1)[1]) in keep and u.id[0] in digits], manifests[split])
    return manifests


def run_config(manifests: dict, upstreams, *, task: str = "classify", interface: str = "weighted_sum",
               downstream: dict | None = None, cache="off", **train) -> dict:
    """A small run config over `manifests` (train/dev/test). `upstreams` is one spec ("hf:FOLDER",
    "whisper-tiny.en") or a list of specs and {"spec": ..., "options": ...} dicts. The head defaults to
    hidden_dim 16 with dropout 0.2 (so the RNG state matters on resume); `train` keys override the defaults."""
    if not isinstance(upstreams, list):
        upstreams = [upstreams]
    # copies throughout: a test may edit the config it gets without changing a shared constant
    return {
        "task": task,
        "data": {split: str(path) for split, path in manifests.items()},
        "upstreams": [copy.deepcopy(u) if isinstance(u, dict) else {"spec": str(u)} for u in upstreams],
        "interface": {"name": interface},
        "downstream": {"hidden_dim": 16, "dropout": 0.2} if downstream is None else copy.deepcopy(downstream),
        "train": {"max_steps": 8, "batch_seconds": 2.5, "val_every_steps": 3, "lr": 3e-3, "interface_lr": 3e-2,
                  "progress_bar": False, "seed": 0, **copy.deepcopy(train)},
        "cache": cache,
    }


# the speaker-verification head and training the verify tests use (with task="verify", cache="auto")
VERIFY_HEAD = {"channels": [64, 64, 64], "kernel_sizes": [5, 3, 1], "dilations": [1, 2, 1], "embed_dim": 64}
VERIFY_TRAIN = {"batch_seconds": 8, "lr": 1e-3, "interface_lr": 1e-2, "importance": False}


def verify_config(manifests: dict, spec: str, **train) -> dict:
    """run_config for task verify with VERIFY_HEAD and VERIFY_TRAIN."""
    return run_config(manifests, spec, task="verify", downstream=VERIFY_HEAD, cache="auto",
                      **{**VERIFY_TRAIN, **train})


def real_batch(manifest: Path, sample_rate: int = 16000, count: int = 6):
    """The first `count` clips of a manifest as a padded waveform batch."""
    from speechfuse.cache.extract import load_audio_batch
    from speechfuse.data import load_manifest

    return load_audio_batch(load_manifest(manifest)[:count], sample_rate)


def save_untrained_classifier(manifests: dict, upstream: str, folder: Path, seed: int = 0) -> Path:
    """A digit classifier built from run_config (head fitted to the train labels, weights drawn with `seed`,
    not trained), saved to `folder`."""
    from speechfuse.config import config_from_dict
    from speechfuse.data import load_manifest
    from speechfuse.fusion.model import FusedModel, build_task

    cfg = config_from_dict(run_config(manifests, f"hf:{upstream}"))
    torch.manual_seed(seed)
    model = FusedModel.from_config(cfg, build_task(cfg).fit(load_manifest(manifests["train"])))
    return model.save_pretrained(folder)


# -- a fake upstream ---------------------------------------------------------------------------------------------

class FakeUpstream(Upstream):
    """Frame-wise random projection: frame t sees only samples [t*hop, t*hop + window) with hop =
    sample_rate / frame_rate, so its features do not depend on how utterances are batched or padded. `scale`
    and `offset` are output-changing options; `utterances_seen` counts what it ran on."""

    def __init__(self, frame_rate: float = 50.0, num_layers: int = 3, hidden_size: int = 8, *, window: int = 400,
                 init_scale: float = 0.3, scale: float = 1.0, offset: float = 0.0, seed: int = 0,
                 sample_rate: int = 16000, trainable: bool = False, name: str = "fake") -> None:
        super().__init__(trainable=trainable)
        self.name, self.frame_rate, self.num_layers, self.hidden_size = name, frame_rate, num_layers, hidden_size
        self.sample_rate = sample_rate
        self.hop, self.window, self.min_samples = int(sample_rate / frame_rate), window, window
        self.scale, self.offset = scale, offset
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(num_layers, window, hidden_size, generator=g) * init_scale)
        self.utterances_seen = 0
        self._finish_init()

    @classmethod
    def framewise(cls, frame_rate: float, num_layers: int, hidden_size: int, seed: int = 0,
                  sample_rate: int = 16000) -> "FakeUpstream":
        """Non-overlapping frames (window = hop), weights scaled by 1/sqrt(hop), named after the rate."""
        hop = int(sample_rate / frame_rate)
        return cls(frame_rate, num_layers, hidden_size, window=hop, init_scale=hop ** -0.5, seed=seed,
                   sample_rate=sample_rate, name=f"fake{frame_rate}")

    def options(self):
        return {"scale": self.scale, "offset": self.offset}

    def num_frames(self, num_samples: int) -> int:
        return (num_samples - self.window) // self.hop + 1

    def _hidden(self, wavs, wav_lengths):
        self.utterances_seen += wavs.shape[0]
        frames = wavs.unfold(1, self.window, self.hop)  # [B, T, window]
        return torch.tanh(torch.einsum("btw,lwd->lbtd", frames, self.proj) * self.scale) + self.offset


# -- a fake trainer for sweeps -----------------------------------------------------------------------------------

SWEEP_BASE = {
    "task": {"name": "classify"},
    "upstreams": [{"spec": "a", "options": {"x": 1}}],
    "interface": {"name": "weighted_sum"},
    "train": {"max_steps": 3, "lr": 0.001},
    "cache": "auto",
}


class FakeTrainer:
    """Stands in for speechfuse.training.runner.train: records calls, writes what the runner writes."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, cfg, run_dir):
        name = run_dir.name
        if self.fail_on and self.fail_on in name:
            raise RuntimeError("boom")
        self.calls.append(name)
        params = {"weighted_sum": 3, "hconv": 1000}[cfg["interface"]["name"]]
        n = len(cfg["upstreams"])
        (run_dir / "interface.json").write_text(json.dumps(
            {"num_parameters": params * n, "describe": {"name": cfg["interface"]["name"],
                                                         "layer_matrix": [[0.5, 0.5]] * n, "num_models": n}}))
        metrics = {"dev": {"accuracy": 0.5 + 0.1 * n}, "test": {"accuracy": 0.4 + 0.1 * n, "macro_f1": 0.3}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        self.cache = cfg["cache"]
        return metrics


# -- file system -----------------------------------------------------------------------------------------------

@contextmanager
def read_only(folder: Path):
    """Make `folder` unwritable: permissions for a normal user; root ignores those, so the immutable flag."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"running as root without a way to make a folder read-only (chattr: {done.stderr.strip()})")
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    try:
        yield
    finally:
        undo()


# finished sweeps for `speechfuse table` (the real sweep code with a stand-in trainer)
A, AB = ["whisper-tiny.en"], ["whisper-tiny.en", "resemblyzer"]
TARGET = {"asr": "text", "multilingual_asr": "text", "verify": "speaker", "classify": "label"}


def base(task: str):
    return config_from_dict({"task": task, "data": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv",
                                                    "target": TARGET[task]},
                             "upstreams": [{"spec": "whisper-tiny.en"}], "interface": {"name": "hconv"}},
                            ".", "test")


def sweep(tmp_path: Path, name: str, task: str, grid: dict, metrics_of, seeds=None) -> Path:
    """Run the real sweep with a trainer that writes config.yaml (as `train` does) and returns `metrics_of(cfg)`."""
    def fake_train(cfg, run_dir):
        (Path(run_dir) / "config.yaml").write_text(config_to_yaml(cfg))
        return {"dev": {}, "test": metrics_of(cfg)}

    out = tmp_path / name
    run_sweep(base(task), grid, out, seeds=seeds, train_fn=fake_train, progress=False, plots=False)
    return out


def folds(tmp_path: Path, names: list[str], corpus: str | None = None) -> list[str]:
    """Manifest folders whose row records `corpus` (as `speechfuse prepare` writes them), or none."""
    for n in names:
        (tmp_path / n).mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev", "test"):
            (tmp_path / n / f"{split}.csv").write_text("id,path,corpus\nu1,u1.wav,%s\n" % (corpus or ""))
    return [str(tmp_path / n) for n in names]


# a stand-in trainer for `speechfuse study` (known accuracies per model count, interface, depth and seed)
def study_accuracy(models: int, interface: str, depth: int | None, seed: int) -> float:
    """The study fake trainer's test accuracy: known, and different for every seed."""
    return 0.2 * models + (0.1 if interface == "hconv" else 0.0) + 0.05 * (depth or 0) + 0.01 * seed ** 2


class StudyFakeTrainer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, cfg, run_dir):
        self.calls.append(f"{run_dir.parent.parent.relative_to(self.root)}/{run_dir.name}")
        ups = cfg.upstreams
        depth = ups[0].options.get("max_layers") if len(ups) == 1 else None
        value = study_accuracy(len(ups), cfg.interface.name, depth, cfg.train.seed)
        # on dev, weighted_sum does best at interface lr 1e-2 and hconv at 1e-3 (what --select should pick)
        best_lr = 1e-2 if cfg.interface.name == "weighted_sum" else 1e-3
        dev = value + (0.05 if cfg.train.interface_lr == best_lr else 0.0)
        metrics = {"dev": {"accuracy": dev}, "test": {"accuracy": value, "macro_f1": value / 2}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


class GatedStudyTrainer(StudyFakeTrainer):
    """A StudyFakeTrainer whose runs of the `models` series go on only once a run of a `depth-*` series has
    started (a file per started run in `root`); after 60 s without one they fail."""

    def __call__(self, cfg, run_dir):
        import time

        series = run_dir.relative_to(self.root).parts[0]
        (self.root / f"started-{series}-{run_dir.name}").touch()
        deadline = time.monotonic() + 60
        while series == "models" and not any(p.name.startswith("started-depth") for p in self.root.iterdir()):
            if time.monotonic() > deadline:
                raise TimeoutError("no run of the depth series started within 60 s of this one")
            time.sleep(0.2)
        return super().__call__(cfg, run_dir)


def csv_rows(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrainFailingIn:
    """speechfuse's `train`, but the run whose folder is named `name` fails (pickled by value into launcher jobs,
    where it imports the real `train`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, cfg, run_dir):
        if Path(run_dir).name == self.name:
            raise RuntimeError(f"planned failure of {self.name}")
        from speechfuse.training.runner import train

        return train(cfg, run_dir)


def train_and_sigkill(data: dict, run_dir: Path, after_step: int) -> None:
    """Train the config dict `data` into `run_dir` in a child process that SIGKILLs itself after `after_step`
    (tests/killed_run.py), and check that it really was killed."""
    import sys

    import yaml

    config = Path(run_dir).parent / f"{Path(run_dir).name}.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, str(KILLED_RUN), str(config), str(run_dir), str(after_step)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
