"""A 6-interface sweep on real FSDD speech with the bundled upstreams, feature cache on vs off.

Both sweeps run the same configs (speaker ID, the three bundled upstreams fused, the same steps and
seed) one after the other in this process, each into a fresh folder, after an untimed 1-step warm-up
run that pays the one-time costs (imports, first model loads) for both:
- cache on:  every upstream runs once over the clips (timed, included), then 6 runs read the cache;
- cache off: every training / evaluation batch runs the upstreams again.
Prints the wall time of each, the ratio (goal >= 4x), and each run's dev accuracy for a sanity check
(the cache stores float16, so the numbers may differ slightly).

    python benchmarks/sweep_cache.py [--device cpu|cuda] [--threads N] [--steps 200] [--train-takes 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_device_arg, get_device, print_machine_info, print_table  # noqa: E402

from speechfuse.config import config_from_dict  # noqa: E402
from speechfuse.experiments.demo import _quiet  # noqa: E402
from speechfuse.data.adapters import bundled_fsdd_dir, fsdd_manifests  # noqa: E402
from speechfuse.data.manifest import load_manifest, write_manifest  # noqa: E402
from speechfuse.experiments.sweep import run_sweep  # noqa: E402

INTERFACES = ["last", "weighted_sum", "hconv", "chconv", "concat_proj", "group_ws"]
UPSTREAMS = ["whisper-tiny.en", "resemblyzer", "speech-embedding"]


def subset_manifests(out: Path, train_takes: int) -> dict[str, Path]:
    """FSDD bundled subset: train takes 10..10+train_takes-1, dev take 5, test take 0 (60 clips per take)."""
    manifests = fsdd_manifests(bundled_fsdd_dir() / "recordings", out)
    keep = {"train": set(range(10, 10 + train_takes)), "dev": {5}, "test": {0}}
    for split, takes in keep.items():
        utts = [u for u in load_manifest(manifests[split]) if int(u.id.rsplit("_", 1)[1]) in takes]
        write_manifest(utts, manifests[split])
    return manifests


def main(argv=None) -> None:
    ap = add_device_arg(argparse.ArgumentParser(description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--steps", type=int, default=200, help="training steps per run")
    ap.add_argument("--batch-seconds", type=float, default=8.0)
    ap.add_argument("--train-takes", type=int, default=3, help="FSDD takes in train (60 clips each)")
    ap.add_argument("--upstreams", default="+".join(UPSTREAMS))
    ap.add_argument("--keep", help="keep the run folders here instead of a temporary folder")
    args = ap.parse_args(argv)
    device = get_device(args)
    accelerator = "gpu" if device.type == "cuda" else "cpu"

    print(f"# sweep_cache: {len(INTERFACES)} interfaces x upstreams {args.upstreams}, speaker ID on real FSDD "
          f"({60 * args.train_takes} train / 60 dev / 60 test clips), {args.steps} steps of "
          f"{args.batch_seconds:g} s batches per run")
    print_machine_info(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        manifests = subset_manifests(root / "data", args.train_takes)
        walls, rows = {}, {}
        for mode in ("warm-up", "off", "on"):
            cfg = config_from_dict({
                "task": "classify",
                "data": {"train": str(manifests["train"]), "dev": str(manifests["dev"]),
                         "test": str(manifests["test"]), "target": "speaker"},
                "upstreams": [{"spec": s} for s in args.upstreams.split("+")],
                "interface": {"name": "weighted_sum"},
                "downstream": {"hidden_dim": 128},
                "train": {"max_steps": 1 if mode == "warm-up" else args.steps, "batch_seconds": args.batch_seconds,
                          "val_every_steps": args.steps, "seed": 0, "progress_bar": False,
                          "importance": False, "accelerator": accelerator},
                "cache": str(root / f"cache-{mode}") if mode == "on" else "off",
            })
            grid = {"interface.name": INTERFACES[:1] if mode == "warm-up" else INTERFACES}
            start = time.perf_counter()
            with _quiet():
                rows[mode] = run_sweep(cfg, grid, root / f"sweep-{mode}", progress=False, plots=False)
            walls[mode] = time.perf_counter() - start
            print(f"  cache {mode}: {walls[mode]:.1f} s", file=sys.stderr, flush=True)

        print("\n| sweep | wall s | runs |\n|---|---|---|")
        for mode in ("on", "off"):
            print(f"| cache {mode} | {walls[mode]:.1f} | {len(rows[mode])} |")
        print(f"\ncache off / cache on wall-time ratio: {walls['off'] / walls['on']:.2f}x (goal >= 4x)\n")
        print_table([(a["interface"], a.get("dev_accuracy"), b.get("dev_accuracy"))
                     for a, b in zip(rows["on"], rows["off"])],
                    ["interface", "dev acc (cache on)", "dev acc (cache off)"])


if __name__ == "__main__":
    main()
