"""`speechfuse init`: a commented config for a folder of manifests that runs on the machine it is written on.

    text = init_config("classify", "data/", "my.yaml")                       # the bundled models
    text = init_config("asr", "data/", "my.yaml", upstreams=["hf:microsoft/wavlm-base-plus"])

The config spells out the training protocol that works for every interface (the defaults, written out so
they can be changed): interface lr scaled by fan-in, gradient clipping at 1, the demo's head lr, per-layer
layer norm (docs/plateau.md). Data paths are written relative to the config file. The text is validated as a
config before it is written, so a bad task, target or upstream name is refused and nothing is written.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Optional, Sequence

import yaml

from speechfuse.errors import ConfigError

BUNDLED_UPSTREAMS = ("whisper-tiny.en", "resemblyzer")
TARGETS = {"asr": "text", "classify": "label", "verify": "speaker", "multilingual_asr": "text"}
# small heads that train in minutes on a CPU (the demo's); other tasks keep their own defaults
HEADS = {"asr": {"proj_dim": 128, "hidden_size": 128, "num_layers": 1, "dropout": 0.1},
         "classify": {"hidden_dim": 128, "dropout": 0.1}}


def _manifests(data_dir: Path) -> dict[str, Path]:
    found = {}
    for split in ("train", "dev", "test"):
        for suffix in (".csv", ".jsonl"):
            if (data_dir / f"{split}{suffix}").is_file():
                found[split] = data_dir / f"{split}{suffix}"
                break
    missing = [s for s in ("train", "dev") if s not in found]
    if missing:
        raise ConfigError(f"init: {data_dir} has no {' or '.join(m + '.csv' for m in missing)}; write the manifests "
                          "first: speechfuse prepare folder DIR --out " + str(data_dir))
    return found


def _check_target(manifest: Path, target: str, task: str) -> None:
    from speechfuse.data.manifest import load_manifest

    utts = load_manifest(manifest)
    if not any(getattr(u, target, None) for u in utts):
        raise ConfigError(f"init: {manifest} has no `{target}` values, which task {task} trains on; pass --target "
                          "with the column that holds them, or prepare the data with labels / transcripts")


def _commented(text: str, comment: str) -> str:
    return f"{text:<34} # {comment}"


def _relative(path: Path, config_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), config_dir.resolve())).as_posix()


def init_config(task: str, data_dir: str | os.PathLike, out: str | os.PathLike,
                upstreams: Optional[Sequence[str]] = None, interface: str = "hconv", target: Optional[str] = None,
                steps: int = 300) -> str:
    """The commented YAML text of a config (module doc), validated; the caller writes it to `out`."""
    from speechfuse.config import config_from_dict
    from speechfuse.tasks import list_tasks

    if task not in list_tasks():
        raise ConfigError(f"init: unknown task {task!r}; known: {', '.join(list_tasks())}")
    if steps < 1:
        raise ConfigError(f"init: --steps {steps}: give a whole number >= 1")
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise ConfigError(f"init: data folder not found: {data_dir}; write it with speechfuse prepare folder DIR "
                          f"--out {data_dir}")
    manifests = _manifests(data_dir)
    target = target or TARGETS.get(task, "label")
    _check_target(manifests["train"], target, task)
    specs = list(upstreams or BUNDLED_UPSTREAMS)
    val_every = max(1, min(100, steps // 4))
    lines = [
        f"# speechfuse config for task {task}, written by `speechfuse init` on {datetime.date.today()}.",
        f"# Train it:  speechfuse train {out.name} --out runs/{out.stem}",
        "# Every key: docs/configuration.md (or speechfuse.config); override one with --set KEY=VALUE.",
        f"task: {task}",
        "data:                              # manifests: id, path, and the target column",
        *[f"  {split}: {_relative(path, out.parent)}" for split, path in manifests.items()],
        _commented(f"  target: {target}", "the manifest column the task learns"),
        "upstreams:                         # frozen pretrained models whose layers are fused",
        *["  " + yaml.safe_dump([s]).strip() for s in specs],
        "  # bundled (no download): whisper-tiny.en, resemblyzer, speech-embedding;"
        " a hub model: hf:microsoft/wavlm-base-plus",
        "interface:",
        _commented(f"  name: {interface}", "weighted_sum | hconv | chconv | concat_proj | group_ws | cls_pool | gumd | last"),
        "  # layer_norm: true               # default for weighted_sum/hconv/chconv; false = the papers' plain form",
        *(["downstream:                        # the task head", *[f"  {k}: {v}" for k, v in HEADS[task].items()]]
          if task in HEADS else ["downstream: {}                     # the task head (its defaults)"]),
        "train:",
        f"  max_steps: {steps}",
        "  batch_seconds: 30                # seconds of padded audio per batch",
        _commented(f"  val_every_steps: {val_every}", "dev evaluation and checkpoints"),
        "  lr: 5.0e-3                       # the head",
        "  interface_lr: 1.0e-2             # the interface; choose it on dev: speechfuse sweep --select",
        "  interface_lr_scaling: fan_in     # conv/linear weights at interface_lr / sqrt(fan_in); none = old behaviour",
        "  grad_clip: 1.0                   # gradient norm clip; null = none",
        "  seed: 0",
        "  # logger: tensorboard            # extra logger: tensorboard | csv | wandb | mlflow",
        "cache: auto                        # features are extracted once and reused by every run",
    ]
    text = "\n".join(lines) + "\n"
    from speechfuse.training.preflight import check_components

    check_components(config_from_dict(yaml.safe_load(text), out.parent, str(out)))  # refuse before writing
    return text


__all__ = ["init_config", "BUNDLED_UPSTREAMS"]
