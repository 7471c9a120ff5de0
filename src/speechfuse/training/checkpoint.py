"""Checkpoints as safetensors + JSON, never pickles.

Lightning builds a nested checkpoint dict (model state_dict, optimizer and scheduler states, loop
progress, callback states). `SafetensorsCheckpointIO` stores every tensor in it as a safetensors tensor
and the rest of the structure (dicts, lists, tuples, ints, floats, strings, bools, None) as JSON in the
safetensors header, in ONE file written atomically (speechfuse.io.write_atomic: a kill never leaves a
torn checkpoint). Anything else (an arbitrary object) raises CheckpointError naming its key: nothing is ever
pickled, and loading never unpickles.

The header also holds a CRC32 of the structure and of every tensor's bytes; loading verifies them, so
damaged bytes are a CheckpointError naming the file, never silently loaded weights or RNG states.

    trainer = Trainer(plugins=[SafetensorsCheckpointIO()], ...)
    state = load_checkpoint_file("run/checkpoints/best.safetensors")   # the same nested dict
    resume_checkpoint(run_dir)   # checkpoints/last.safetensors, or `best` when `last` is damaged
"""
from __future__ import annotations

import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors import safe_open
from safetensors.torch import save

from speechfuse.errors import SpeechfuseError
from speechfuse.io import write_atomic
from speechfuse.training.runfolder import BEST, CKPT_DIR, EXT, LAST

FORMAT = "speechfuse-checkpoint-v1"
_META_KEY = "speechfuse"
_CRC_KEY = "crc32"  # {"structure": crc of the JSON, "<tensor name>": crc of its bytes}; absent in older files


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


def _crc(tensor: torch.Tensor) -> int:
    return zlib.crc32(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def _tensor_keys(structure: Any, key: str = "") -> dict[str, str]:
    """Tensor name -> its key in the checkpoint (for error messages)."""
    if isinstance(structure, dict) and "__tensor__" in structure:
        return {structure["__tensor__"]: key or "(root)"}
    if isinstance(structure, dict) and "__tuple__" in structure:
        structure = structure["__tuple__"]
    if isinstance(structure, list):
        children = [(f"{key}[{i}]", v) for i, v in enumerate(structure)]
    elif isinstance(structure, dict) and "__items__" in structure:
        children = [(f"{key}[{k!r}]", v) for k, v in structure["__items__"]]
    elif isinstance(structure, dict):
        children = [(f"{key}.{k}" if key else k, v) for k, v in structure.items()]
    else:
        return {}
    return {name: where for child_key, v in children for name, where in _tensor_keys(v, child_key).items()}


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    """Write a nested dict as one safetensors file (tensors) with the structure and checksums as JSON metadata."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(checkpoint, "", tensors))
    crcs = {"structure": zlib.crc32(structure.encode("utf-8")), **{name: _crc(t) for name, t in tensors.items()}}
    meta = {"format": FORMAT, _META_KEY: structure, _CRC_KEY: json.dumps(crcs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, save(tensors, metadata=meta))


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a file written by save_checkpoint_file. Tensors only, no unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # checksums are computed on the host
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}. It is not a speechfuse safetensors "
                              "checkpoint or it is damaged; delete it to train from the previous one.") from err
    if meta.get("format") != FORMAT or _META_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a speechfuse checkpoint "
                              f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    _verify(path, meta, tensors)
    if device != "cpu":
        tensors = {k: t.to(device) for k, t in tensors.items()}
    return _decode(json.loads(meta[_META_KEY]), tensors)


def _verify(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    if _CRC_KEY not in meta:  # written before checksums existed
        return
    damage = ("; it cannot be used. Restore it from a copy, or delete it: `speechfuse train` then resumes from the "
              "run's other checkpoint, or starts over.")
    try:
        crcs = json.loads(meta[_CRC_KEY])
        structure_ok = crcs["structure"] == zlib.crc32(meta[_META_KEY].encode("utf-8"))
    except (ValueError, KeyError, TypeError):
        structure_ok = False
    if not structure_ok:
        raise CheckpointError(f"checkpoint {path} is damaged: its header does not match its checksum{damage}")
    bad = sorted(name for name, t in tensors.items() if crcs.get(name) != _crc(t))
    if bad or set(crcs) - {"structure"} != set(tensors):
        keys = _tensor_keys(json.loads(meta[_META_KEY]))
        names = ", ".join(keys.get(n, n) for n in bad[:3]) or "tensors missing"
        raise CheckpointError(f"checkpoint {path} is damaged: {len(bad)} tensor(s) do not match their checksum "
                              f"({names}{', ...' if len(bad) > 3 else ''}){damage}")


def resume_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: `last`, or `best` with a warning when `last` is damaged; None for a new run."""
    last, best = run_dir / CKPT_DIR / f"{LAST}{EXT}", run_dir / CKPT_DIR / f"{BEST}{EXT}"
    if not last.is_file():
        return None
    try:
        load_checkpoint_file(last)
        return last
    except CheckpointError as err:
        damaged = err
    if not best.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: {damaged}")
    try:
        step = load_checkpoint_file(best).get("global_step")
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume {run_dir}: both checkpoints are damaged. {damaged} {err}") from err
    warnings.warn(f"cannot resume from {last}, it is damaged ({str(damaged).split('; ')[0]}); resuming from {best} "
                  f"(step {step}) instead", stacklevel=3)
    return best


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


__all__ = ["SafetensorsCheckpointIO", "CheckpointError", "save_checkpoint_file", "load_checkpoint_file",
           "resume_checkpoint"]
