"""Shared helpers for the benchmark scripts: timing, a markdown table, machine info, a --device flag.

Scripts import it as `from _common import ...` (run them from anywhere: `python benchmarks/x.py`).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# real speech: the FSDD subset bundled in the package (FLAC, takes 0-24); FSDD_DIR overrides it
FSDD_DIR = Path(os.environ.get("FSDD_DIR", Path(__file__).resolve().parents[1] / "src" / "speechfuse" / "assets" / "fsdd" / "recordings"))


@dataclass
class Timing:
    times: list[float]  # seconds, one per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def __str__(self) -> str:
        return f"median {self.median * 1e3:.2f} ms (best {self.best * 1e3:.2f} ms, n={len(self.times)})"


def _sync(sync_cuda: bool) -> None:
    if sync_cuda and torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, sync_cuda: bool = False) -> Timing:
    """Call fn `warmup` times untimed, then `repeat` times timed (wall clock, CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(sync_cuda)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(sync_cuda)
        times.append(time.perf_counter() - start)
    return Timing(times)


def timeit_interleaved(fns: dict[str, Callable[[], object]], repeat: int = 5, warmup: int = 1,
                       sync_cuda: bool = False) -> dict[str, Timing]:
    """Time several functions in alternation (A B A B ...), so a noisy neighbour hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            _sync(sync_cuda)
            start = time.perf_counter()
            fn()
            _sync(sync_cuda)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(t) for name, t in times.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict[str, str]:
    device = torch.device(device)
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "device": "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    return info


def print_machine_info(device: str | torch.device = "cpu") -> None:
    print("  ".join(f"{k}: {v}" for k, v in machine_info(device).items()))


def print_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    """A markdown table; floats get 3 significant decimals."""
    def fmt(x: object) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    cells = [[fmt(x) for x in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def add_device_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds --device (cpu | cuda | cuda:N) and --threads (torch CPU threads; 0 = torch's default)."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N); default cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice). On a shared, oversubscribed machine "
                             "--threads 1 avoids threads waiting on each other")
    return parser


def get_device(args: argparse.Namespace) -> torch.device:
    """The --device value, checked: a clear message instead of a CUDA stack trace. Applies --threads."""
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available in this torch build / machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {args.device!r}")
    return device


def random_hubert(folder: Path, **config) -> str:
    """Save a HuBERT with random weights (transformers' HubertConfig defaults are HuBERT Base, overridden
    by `config`) plus a normalising feature extractor into `folder`; return it for `hf:` loading."""
    import transformers as tf

    torch.manual_seed(0)
    tf.HubertModel(tf.HubertConfig(**config)).eval().save_pretrained(folder)
    tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                return_attention_mask=True).save_pretrained(folder)
    return str(folder)
