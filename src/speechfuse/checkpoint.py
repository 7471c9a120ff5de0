"""Checkpoints as safetensors + JSON, never pickles.

Lightning builds a nested checkpoint dict (model state_dict, optimizer and scheduler states, loop
progress, callback states). `SafetensorsCheckpointIO` stores every tensor in it as a safetensors tensor
and the rest of the structure (dicts, lists, tuples, ints, floats, strings, bools, None) as JSON in the
safetensors header, in ONE file written atomically (temp file + rename, so a kill never leaves a torn
checkpoint). Anything else (an arbitrary object) raises CheckpointError naming its key: nothing is ever
pickled, and loading never unpickles.

    trainer = Trainer(plugins=[SafetensorsCheckpointIO()], ...)
    state = load_checkpoint_file("run/checkpoints/best.safetensors")   # the same nested dict
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import SpeechfuseError

FORMAT = "speechfuse-checkpoint-v1"
_META_KEY = "speechfuse"


class CheckpointError(SpeechfuseError):
    """A checkpoint cannot be written (unrepresentable value) or read (missing / not ours / torn)."""


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return {"__float__": repr(obj)}
        return obj
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        # a private contiguous CPU copy: safetensors refuses tensors that share storage
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise CheckpointError(f"checkpoint key {key}: dict key {k!r} of type {type(k).__name__} cannot be "
                                      "stored without pickling")
            items.append([k, _encode(v, f"{key}[{k!r}]", tensors)])
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}[{i}]", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}[{i}]", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise CheckpointError(
        f"checkpoint key {key or '(root)'} holds a {type(obj).__module__}.{type(obj).__qualname__}, which "
        "cannot be stored as safetensors + JSON (speechfuse never pickles). Store tensors, numbers, strings, "
        "lists or dicts there instead."
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    """Write a nested dict as one safetensors file (tensors) with the structure as JSON metadata."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(checkpoint, "", tensors)
    meta = {"format": FORMAT, _META_KEY: json.dumps(structure)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a file written by save_checkpoint_file. Tensors only, no unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}. It is not a speechfuse safetensors "
                              "checkpoint or it is damaged; delete it to train from the previous one.") from err
    if meta.get("format") != FORMAT or _META_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a speechfuse checkpoint "
                              f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    return _decode(json.loads(meta[_META_KEY]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO plugin: safetensors + JSON instead of torch.save (pickle)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options:
            raise CheckpointError(f"SafetensorsCheckpointIO takes no storage_options, got {storage_options!r}")
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint_file(path, map_location or "cpu")

    def remove_checkpoint(self, path) -> None:
        p = Path(path)
        if p.is_file():
            p.unlink()


__all__ = ["SafetensorsCheckpointIO", "CheckpointError", "save_checkpoint_file", "load_checkpoint_file"]
