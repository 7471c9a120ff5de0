"""Trial scoring speed of a verification model: `model.verify` over a trial list in one call, beside
`verify_to_file` (what `speechfuse verify --trials` runs: chunks of new audio, rows flushed + fsynced per chunk).

A speaker model (weighted_sum + x-vector head, untrained: speed does not depend on the weights) over one bundled
upstream scores every pair of N bundled FSDD clips (each clip embedded once by both paths), interleaved in one
process; the ratio is the streaming writer's cost.

    python benchmarks/verify_throughput.py [--upstream resemblyzer] [--clips 40] [--batch-seconds 20] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (FSDD_DIR, add_device_arg, fsdd_clips, get_device, print_machine_info, print_table,  # noqa: E402
                     timeit_interleaved)


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--upstream", default="resemblyzer")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--batch-seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = get_device(args)

    from speechfuse.config import config_from_dict
    from speechfuse.data import Utterance, audio_info
    from speechfuse.fusion.model import FusedModel, build_task
    from speechfuse.serving.verify_trials import verify_to_file

    clips = fsdd_clips(args.clips)
    rec, names = FSDD_DIR, [c.name for c in clips]
    utts = [Utterance(id=n, path=str(rec / n), duration=audio_info(rec / n)[3], speaker=n.split("_")[1])
            for n in names]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    cfg = config_from_dict({"task": "verify", "data": {"train": "x.csv", "dev": "x.csv"},
                            "upstreams": [args.upstream], "interface": {"name": "weighted_sum"}})
    model = FusedModel.from_config(cfg, build_task(cfg).fit(utts)).to(device).eval()
    print_machine_info(device)
    print(f"{args.upstream}: {len(pairs)} trials over {len(names)} bundled FSDD clips "
          f"({sum(u.duration for u in utts):.1f} s of audio), batches of <= {args.batch_seconds:g} s; "
          f"medians of {args.repeat} interleaved runs after 1 warm-up")

    with tempfile.TemporaryDirectory() as tmp:
        trials = Path(tmp) / "pairs.txt"
        trials.write_text("".join(f"{a} {b}\n" for a, b in pairs))
        out = Path(tmp) / "scores.jsonl"

        def in_memory() -> None:
            model.verify([(str(rec / a), str(rec / b)) for a, b in pairs], batch_seconds=args.batch_seconds)

        def to_file() -> None:
            out.unlink(missing_ok=True)
            verify_to_file(model, trials, out, root=rec, batch_seconds=args.batch_seconds, progress=False)

        t = timeit_interleaved({"verify": in_memory, "file": to_file}, repeat=args.repeat)
    print_table([[args.upstream, f"{len(pairs) / t['verify'].median:.0f}", f"{len(pairs) / t['file'].median:.0f}",
                  f"{t['file'].median / t['verify'].median:.2f}"]],
                ["upstream", "model.verify (trials/s)", "verify_to_file (trials/s)", "to_file / verify time"])


if __name__ == "__main__":
    main()
