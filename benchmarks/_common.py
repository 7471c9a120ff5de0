"""Shared helpers for the benchmark scripts: timing, a markdown table, machine info, a --device flag, the bundled
FSDD clips, peak memory of one forward, a subprocess that prints JSON, a cached training step.

Scripts import it as `from _common import ...` (run them from anywhere: `python benchmarks/x.py`).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

# real speech: the FSDD subset bundled in the package (FLAC, takes 0-24); FSDD_DIR overrides it
FSDD_DIR = Path(os.environ.get("FSDD_DIR", Path(__file__).resolve().parents[1] / "src" / "speechfuse" / "assets" / "fsdd" / "recordings"))
FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
# the demo's head sizes (speechfuse.experiments.demo)
DEMO_HEADS = {"asr": dict(proj_dim=128, hidden_size=128, num_layers=1, dropout=0.1), "classify": dict(hidden_dim=128)}


def fsdd_clips(count: int) -> list[Path]:
    """`count` bundled FSDD recordings, clip i saying digit i % 10, the speakers taken in turn (takes 0-24)."""
    return [FSDD_DIR / f"{i % 10}_{FSDD_SPEAKERS[i % len(FSDD_SPEAKERS)]}_{i // 10 % 25}.flac" for i in range(count)]


def scratch_dir(prefix: str) -> Path:
    """A temporary folder, removed when the script exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def long_speech(seconds: float) -> np.ndarray:
    """`seconds` of real speech: the bundled FSDD recordings, 8 -> 16 kHz, concatenated (repeated as needed)."""
    import soundfile as sf
    import soxr

    files = sorted(FSDD_DIR.glob("*.flac"))
    need, pieces, total = int(seconds * 16000), [], 0
    while total < need:
        wav, rate = sf.read(files[len(pieces) % len(files)], dtype="float32")
        pieces.append(soxr.resample(wav, rate, 16000))
        total += len(pieces[-1])
    return np.concatenate(pieces)[:need].astype(np.float32)


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def forward_peak_memory(upstream: torch.nn.Module, wav: torch.Tensor, device: torch.device) -> tuple[Any, dict]:
    """One forward of `upstream` over the clip `wav` under inference_mode; returns its output and the memory:
    RSS before it, peak RSS during it (VmHWM, reset to the current RSS through /proc/self/clear_refs first),
    seconds, and on CUDA the peak allocation. Run it in a fresh process so that the peak is this forward's."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    before = proc_status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    with torch.inference_mode():
        out = upstream(wav[None], torch.tensor([len(wav)]))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return out, {"before_kb": before, "peak_kb": proc_status_kb("VmHWM"), "seconds": seconds,
                 "output_bytes": out.hidden.numel() * out.hidden.element_size(),
                 "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}


def child_json(cmd: Sequence[str], what: str) -> dict:
    """Run `cmd` (a script's --child mode) and read the JSON of its last stdout line; SystemExit naming `what`."""
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{what} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def to_device(x: Any, device: torch.device) -> Any:
    """A tensor, or a tuple / list of them (nested), on `device`; anything else as it is."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(t, device) for t in x)
    return x


def training_step(frontend: torch.nn.Module, head: torch.nn.Module, task: Any, targets: Any,
                  read_states: Callable[[], list]) -> Callable[[], None]:
    """One training step as `speechfuse train` takes it on frozen upstreams: states (from `read_states`), aligner +
    interface + head forward, loss, backward, AdamW step."""
    params = [p for p in list(frontend.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    frontend.train()
    head.train()

    def step() -> None:
        feats, lengths = frontend.fuse(read_states())
        out, out_lengths = head(feats, lengths)
        loss = task.loss(out, out_lengths, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


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
