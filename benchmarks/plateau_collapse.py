"""Why conv interfaces stall on CTC's all-blank plateau or collapse to one class, measured over seeds.

Trains heads (and interfaces) from the feature cache with `speechfuse.training.runner`, on the FSDD subset bundled
in the package, with the bundled upstreams (default: whisper-tiny.en + resemblyzer), for each
(setting, task, interface, seed), and records at every training step:

- `nonblank`: the share of the training batch's utterances whose greedy CTC decoding is not empty (asr);
- `dead`: the share of the interface's last ReLU units (channel x layer position) that are zero on every
  valid frame of the batch (conv interfaces only), and `zeros`: the share of zero outputs;
- `feat_std`: the standard deviation of the interface's output over valid frames;
- `upd`: ||W_after - W_before|| / ||W_before|| of the interface's (and aligner's) weight matrices for the step.

Definitions in the table:
- plateau exit (asr): the batch enters CTC's plateau at the first step where at most 10 % of it decodes to
  a non-empty string, and leaves it at the first later step where at least half does ("-": not within the
  step budget; 0: it never entered);
- collapse (classify): at least 90 % of the test predictions are one class.

Settings (every run: the demo's heads, aligner, 6 s batches, cache; only the keys below differ):
- newdefault: the config defaults since issue 19, untouched (train.lr 5e-3, interface_lr 1e-2, fan_in, grad_clip
  1.0, layer_norm where the interface takes it): the setting to rerun docs/plateau.md's tables under;
- default: the config defaults before issue 19 (train.lr 1e-3, train.interface_lr 1e-2, no layer norm, no fix);
- demo: the demo's former hand-tuned values (train.lr 5e-3, layer_norm on, interface lr 1e-2 for
  weighted_sum, 3e-4 for the conv interfaces, 1e-4 for conv interfaces over pairs under asr);
- uniform: the demo's values but one interface lr, 1e-2, for every interface;
- X+fanin: setting X plus `train.interface_lr_scaling=fan_in`; X+clip: plus train.grad_clip 1;
  X+warmup: plus 50 warmup steps; X+ilr3e-3: interface_lr 3e-3 (any number).

    PYTHONPATH=src python benchmarks/plateau_collapse.py --threads 1            # the full measurement
    PYTHONPATH=src python benchmarks/plateau_collapse.py --seeds 0 --settings default --tasks asr
    PYTHONPATH=src python benchmarks/plateau_collapse.py --threads 1 --settings newdefault --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_device_arg, get_device, print_machine_info, print_table  # noqa: E402

from speechfuse.experiments import demo  # noqa: E402
from speechfuse.data.adapters import bundled_fsdd_dir, fsdd_manifests  # noqa: E402
from speechfuse.experiments.sweep import combo_config  # noqa: E402
from speechfuse.training.runner import train  # noqa: E402
from speechfuse.training.utterances import read_utterances, utterances_path  # noqa: E402

# the demo's hand-tuned interface learning rates before it chose them on dev (speechfuse 0f733d0, demo.py)
HANDTUNED_INTERFACE_LR = {"weighted_sum": 1e-2, "hconv": 3e-4, "chconv": 3e-4}
HANDTUNED_PAIR_CONV_ASR_LR = 1e-4
TASK_KEYS = {"asr": "asr", "speaker": "speaker", "digit": "speaker"}  # digit: the speaker config, target label
COLLAPSE_SHARE = 0.9
PLATEAU_NONBLANK = 0.5


def setting_overrides(setting: str, task: str, interface: str, pair: bool) -> dict:
    """The config keys a setting sets (the rest: the demo's heads, aligner, 6 s batches)."""
    base, *fixes = setting.split("+")
    if not all(f in ("fanin", "clip", "warmup") or f.startswith("ilr") for f in fixes):
        raise SystemExit(f"unknown setting {setting!r}: a base (newdefault, default, demo, uniform), optionally +fanin")
    if base == "newdefault":  # the config defaults since issue 19: the protocol below, untouched
        from speechfuse.config import TrainConfig

        fields = TrainConfig.model_fields
        return {"interface": {"name": interface}, **{f"train.{k}": fields[k].default for k in
                                                      ("lr", "interface_lr", "interface_lr_scaling", "grad_clip")}}
    # the bases below are the settings as first measured: no fix unless +fanin / +clip (the demo's base config
    # now carries both, and the config defaults do too, so they are switched off here explicitly)
    if base == "default":  # the config defaults before issue 19
        over = {"train.lr": 1e-3, "train.interface_lr": 1e-2, "interface": {"name": interface, "layer_norm": False}}
    elif base == "uniform":
        over = {"train.lr": demo.LR, "train.interface_lr": 1e-2,
                "interface": {"name": interface, **demo.DEMO_INTERFACE_OPTIONS}}
    elif base == "demo":
        lr = HANDTUNED_PAIR_CONV_ASR_LR if task == "asr" and pair and interface != "weighted_sum" \
            else HANDTUNED_INTERFACE_LR[interface]
        over = {"train.lr": demo.LR, "train.interface_lr": lr,
                "interface": {"name": interface, **demo.DEMO_INTERFACE_OPTIONS}}
    else:
        raise SystemExit(f"unknown setting {setting!r}: a base (newdefault, default, demo, uniform), optionally +fanin")
    over.update({"train.interface_lr_scaling": "none", "train.grad_clip": None})
    if "fanin" in fixes:
        over["train.interface_lr_scaling"] = "fan_in"
    if "clip" in fixes:
        over["train.grad_clip"] = 1.0
    if "warmup" in fixes:
        over["train.warmup_steps"] = 50
    for f in fixes:
        if f.startswith("ilr"):  # ilr3e-3: that train.interface_lr
            over["train.interface_lr"] = float(f[3:])
    return over


class Probe(Callback):
    """Per-step diagnostics of the interface and the head, read from the training forward through hooks."""

    def __init__(self, asr: bool) -> None:
        self.asr, self.rows, self._seen = asr, [], {}

    def on_fit_start(self, trainer, module) -> None:
        iface = module.frontend.interface
        self._weights = [p for m in (iface, module.frontend.aligner) for p in m.parameters() if p.dim() >= 2]
        relus = [m for m in iface.modules() if isinstance(m, torch.nn.ReLU)]
        keep = self._seen

        def grab(name):
            def hook(mod, args, out):
                if mod.training:
                    keep[name] = (args, out)
            return hook

        iface.register_forward_hook(grab("iface"))
        module.head.register_forward_hook(grab("head"))
        if relus:
            relus[-1].register_forward_hook(grab("relu"))

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._before = [w.detach().clone() for w in self._weights]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        (states,), (feats, lengths) = self._seen["iface"]
        valid = states[0].padding_mask()  # [B,T]
        row = {"step": trainer.global_step, "loss": float(outputs["loss"]) if outputs else float("nan"),
               "feat_std": float(feats[valid].std())}
        num = sum(float((w - b).norm() ** 2) for w, b in zip(self._weights, self._before)) ** 0.5
        den = sum(float(b.norm() ** 2) for b in self._before) ** 0.5
        row["upd"] = num / den if den else float("nan")
        if "relu" in self._seen:
            out = self._seen["relu"][1]  # [B*T, C, L']
            on = out[valid.reshape(-1)] > 0
            row["dead"] = float((~on.any(0)).float().mean())
            row["zeros"] = float((~on).float().mean())
        if self.asr:
            out, out_lengths = self._seen["head"][1]
            row["nonblank"] = sum(bool(t) for t in module.task.predict(out, out_lengths)) / len(out_lengths)
        self.rows.append(row)


def plateau_exit(rows: list[dict]):
    """(entered, left): the first step at which at most 10 % of the batch decodes non-empty (CTC's all-blank
    plateau), and the first later step at which at least half does (None: never, within the budget)."""
    entered = next((r["step"] for r in rows if r["nonblank"] <= 0.1), None)
    if entered is None:
        return None, None
    return entered, next((r["step"] for r in rows if r["step"] > entered and r["nonblank"] >= PLATEAU_NONBLANK), None)


def run_one(args, manifests, setting, task, interface, seed) -> dict:
    pair = len(args.upstreams) > 1
    cfg = demo.demo_config(TASK_KEYS[task], manifests, args.out / "cache")
    steps = args.asr_steps if task == "asr" else args.cls_steps
    over = {"upstreams": args.upstreams, "train.seed": seed, "train.max_steps": steps,
            "train.val_every_steps": steps, "train.importance": False,
            "train.accelerator": args.device.type, **setting_overrides(setting, task, interface, pair)}
    if task == "digit":
        over["data.target"] = "label"
    cfg = combo_config(cfg, over, str(args.out / "cache"))
    run_dir = args.out / "runs" / f"{setting}-{task}-{'+'.join(args.upstreams)}-{interface}-s{seed}"
    record = run_dir / "probe.json"
    if record.is_file():  # resumable: a finished run is read back, not trained again
        return json.loads(record.read_text())
    probe = Probe(task == "asr")
    start = time.perf_counter()
    metrics = train(cfg, run_dir, callbacks=[probe])
    rows = probe.rows
    result = {"setting": setting, "task": task, "upstreams": "+".join(args.upstreams), "interface": interface, "seed": seed,
              "seconds": time.perf_counter() - start, "test": metrics["test"], "steps": steps,
              "trace": rows}
    if task == "asr":
        result["entered"], result["exit_step"] = plateau_exit(rows)
    else:
        preds = Counter(r["prediction"] for r in read_utterances(utterances_path(run_dir, "test")))
        result["top_share"] = preds.most_common(1)[0][1] / sum(preds.values())
    record.write_text(json.dumps(result))
    return result


def _at(rows, key, step):
    vals = [r[key] for r in rows if key in r and r["step"] <= step]
    return vals[-1] if vals else None


def _fmt_list(values):
    return "/".join("-" if v is None else f"{v:.2g}" if isinstance(v, float) else str(v) for v in values)


def summarise(results: list[dict]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["task"], r["setting"])):
        groups.setdefault((r["upstreams"], r["setting"], r["task"], r["interface"]), []).append(r)
    rows = []
    for (ups, setting, task, iface), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        tr = [r["trace"] for r in rs]
        if task == "asr":
            exits = [r["exit_step"] if r["entered"] is not None else 0 for r in rs]
            outcome = f"left at {_fmt_list(exits)} (never: {exits.count(None)}/{len(rs)})"
            values, mname = [r["test"]["wer"] for r in rs], "WER"
        else:
            shares = [r["top_share"] for r in rs]
            outcome = f"collapsed {sum(s >= COLLAPSE_SHARE for s in shares)}/{len(rs)} (top share {_fmt_list(shares)})"
            values, mname = [r["test"]["accuracy"] for r in rs], "acc"
        dead = [_at(t, "dead", s) for t in tr for s in (1, 10, 10**9)]
        dead_txt = "-" if dead[0] is None else "/".join(
            f"{statistics.mean(dead[i::3]):.2f}" for i in range(3))
        upd1 = statistics.mean(_at(t, "upd", 1) for t in tr)
        upd_late = statistics.mean(statistics.mean(r["upd"] for r in t[-20:]) for t in tr)
        std = "/".join(f"{statistics.mean(_at(t, 'feat_std', s) for t in tr):.3g}" for s in (1, 10**9))
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        metric = f"{mname} {statistics.mean(values):.3f}{spread} ({_fmt_list(values)})"
        rows.append([ups, setting, task, iface, outcome, metric, dead_txt, f"{upd1:.3g}",
                     f"{upd_late:.3g}", std])
    print_table(rows, ["upstreams", "setting", "task", "interface", "outcome per seed", "test: mean ± std (per seed)",
                       "dead ReLU units step 1/10/end", "upd/w step 1", "upd/w last 20", "feat std step 1/end"])


def main() -> None:
    parser = add_device_arg(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--out", type=Path, default=Path("/tmp/speechfuse_plateau"))
    parser.add_argument("--upstreams", default="whisper-tiny.en,resemblyzer")
    parser.add_argument("--settings", default="default,default+fanin,demo,uniform,uniform+fanin")
    parser.add_argument("--skip", default="", help="SETTING:INTERFACE pairs not to run, e.g. demo:weighted_sum")
    parser.add_argument("--summary", action="store_true", help="only print the table of the runs in --out")
    parser.add_argument("--tasks", default="asr,speaker,digit")
    parser.add_argument("--interfaces", default="weighted_sum,hconv,chconv")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--asr-steps", type=int, default=300)
    parser.add_argument("--cls-steps", type=int, default=100)
    args = parser.parse_args()
    args.device = get_device(args)
    args.upstreams = args.upstreams.split(",")
    ifaces = [i for i in args.interfaces.split(",") if len(args.upstreams) > 1 or i != "chconv"]
    args.out.mkdir(parents=True, exist_ok=True)
    manifests = fsdd_manifests(bundled_fsdd_dir() / "recordings", args.out / "data")
    print_machine_info(args.device)
    print(f"upstreams {'+'.join(args.upstreams)}; asr {args.asr_steps} steps, classify {args.cls_steps} steps; "
          f"plateau exit: >= {PLATEAU_NONBLANK:.0%} of the batch decodes non-empty; "
          f"collapse: >= {COLLAPSE_SHARE:.0%} of test predictions one class", flush=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    results = []
    if args.summary:
        results = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*/probe.json"))]
        args.settings = args.tasks = ""
    skip = set(filter(None, args.skip.split(",")))
    plan = [(seed, setting, task, iface) for seed in (int(s) for s in args.seeds.split(","))
            for setting in filter(None, args.settings.split(",")) for task in filter(None, args.tasks.split(","))
            for iface in ifaces if f"{setting}:{iface}" not in skip]
    for seed, setting, task, iface in plan:  # seeds outermost: a cut-short run still compares every setting
        r = run_one(args, manifests, setting, task, iface, seed)
        print(f"  {setting} {task} {iface} seed {seed}: {r.get('exit_step', r.get('top_share'))} "
              f"test {r['test']} ({r['seconds']:.0f} s)", flush=True)
        results.append(r)
    summarise(results)


if __name__ == "__main__":
    main()
