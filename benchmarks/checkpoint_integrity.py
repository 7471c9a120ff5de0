"""Cost of checkpoint checksums: saving and loading with CRC32s vs the same file format without them.

A checkpoint as training writes it: the stored (trained) weights plus AdamW's two moments per weight, for
- `hconv 13x768 + head`: the 4.4 M-parameter HConv of two 13x768 upstreams and a 256-unit classify head;
- `25 M trainable`: e.g. a fine-tuned small upstream.
Measured in this process, interleaved where two sides are compared, on the same state:
- save: `save_checkpoint_file` (encode, CRC32s, safetensors serialisation, write_atomic with fsync), and the
  CRC32s alone (what the checks add to a save);
- load: safetensors read + decode (plain) vs `load_checkpoint_file` (the same plus verifying every CRC32). Both
  copy every tensor once, as restoring a model and optimizer does: safetensors maps the file lazily, so an
  untouched plain load would read nothing from disk while the checked one reads everything.
A checkpoint is written every `train.val_every_steps` steps (default 100), so the last column is the checks'
cost per training step, to compare with a step's time (`interface_cost.py`).

    python benchmarks/checkpoint_integrity.py [--repeat 5] [--threads 1] [--val-every-steps 100]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_device_arg, get_device, print_machine_info, print_table, timeit_interleaved  # noqa: E402


def training_checkpoint(params: dict[str, tuple[int, ...]]) -> dict:
    weights = {name: torch.randn(shape) for name, shape in params.items()}
    state = {i: {"step": torch.tensor(100.0), "exp_avg": torch.randn_like(w), "exp_avg_sq": torch.rand_like(w)}
             for i, w in enumerate(weights.values())}
    return {"state_dict": weights, "global_step": 100,
            "optimizer_states": [{"state": state, "param_groups": [{"lr": 1e-3, "params": list(state)}]}]}


def plain_load(path: Path) -> dict:
    from safetensors import safe_open

    from speechfuse.training.checkpoint import _decode

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return _decode(json.loads(meta["speechfuse"]), tensors)


def copied(checkpoint: dict) -> int:
    """Copy every tensor once, as restoring a model and optimizer does."""
    stack, count = [checkpoint], 0
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            item.clone()
            count += 1
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def main() -> None:
    from speechfuse.training.checkpoint import _crc, _encode, load_checkpoint_file, save_checkpoint_file

    parser = add_device_arg(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--val-every-steps", type=int, default=100, help="steps between checkpoints (default 100)")
    args = parser.parse_args()
    get_device(args)  # applies --threads; checkpoints are written from the host
    print_machine_info("cpu")
    cases = {
        "hconv 13x768 + head": {"conv0": (768, 1536, 5), "conv1": (768, 768, 5), "conv2": (384, 768, 5),
                                "head.0": (256, 768), "head.1": (10, 256)},
        "25 M trainable": {f"layer{i}": (1024, 1024) for i in range(24)},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.safetensors"
        for name, params in cases.items():
            checkpoint = training_checkpoint(params)
            tensors: dict = {}
            _encode(checkpoint, "", tensors)
            save = timeit_interleaved({"save": lambda: save_checkpoint_file(checkpoint, path),
                                       "crc": lambda: [_crc(t) for t in tensors.values()]}, repeat=args.repeat)
            load = timeit_interleaved({"plain": lambda: copied(plain_load(path)),
                                       "checked": lambda: copied(load_checkpoint_file(path))}, repeat=args.repeat)
            crc_ms = save["crc"].median * 1e3
            rows.append([name, f"{path.stat().st_size / 2**20:.0f} MiB", save["save"].median * 1e3, crc_ms,
                         load["plain"].median * 1e3, load["checked"].median * 1e3,
                         load["checked"].median / load["plain"].median, crc_ms / args.val_every_steps])
    print_table(rows, ["checkpoint", "size", "save ms", "of which CRC32s ms", "load plain ms", "load checked ms",
                       "load ratio", f"CRC32s ms per step (a save every {args.val_every_steps} steps)"])


if __name__ == "__main__":
    main()
