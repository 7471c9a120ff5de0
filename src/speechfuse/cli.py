"""The `speechfuse` command line: train, evaluate, compare, extract, sweep, study, predict, verify, export, prune,
prepare, table, demo.

    speechfuse train configs/fsdd_speaker.yaml --set train.max_steps=200 --out runs/speaker
    speechfuse evaluate runs/speaker --split test
    speechfuse compare runs/sweep/runs/a runs/sweep/runs/b --split test
    speechfuse extract configs/fsdd_speaker.yaml --out runs/speaker
    speechfuse sweep configs/fsdd_speaker.yaml --grid interface.name=weighted_sum,hconv \\
        --grid upstreams=whisper-tiny.en+resemblyzer,resemblyzer --out runs/sweep
    speechfuse predict runs/speaker recordings/ test.csv --out predictions.jsonl
    speechfuse verify runs/vox1 enrol.wav test.wav
    speechfuse verify runs/vox1 --trials veri_test2.txt --root wav/ --out scores.jsonl
    speechfuse export runs/speaker --format onnx --out fusion.onnx
    speechfuse export runs/speaker --whole --format onnx --out speaker.onnx
    speechfuse prune runs/speaker --budgets 0.25,0.5,0.75
    speechfuse demo --quick
    speechfuse prepare voxceleb1 /data/VoxCeleb1 --out data/voxceleb1
    speechfuse table runs/ls runs/mlsuperb_mono runs/mlsuperb_multi runs/vox1 runs/iemocap --out table.md
    speechfuse study scaling configs/fsdd_speaker.yaml --depths whisper-tiny.en=3,4,5 --out runs/scaling

Errors in the input (config, manifests, audio) print one clean message and exit with code 2. Ctrl-C exits
with code 130; during `train` it first saves a checkpoint to resume from.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import SpeechfuseError

EPILOG = "Every subcommand has its own --help."


def _default_out(config: str) -> Path:
    return Path("runs") / Path(config).stem


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/ for examples)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=5 interface.name=weighted_sum "
                        "(values are read as YAML; repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechfuse", description="Fuse the layers of several pretrained speech models through one "
                                       "trainable interface and train task heads.", epilog=EPILOG)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"speechfuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) a run from a config",
                       description="Train a run; a folder that already holds checkpoints/last.safetensors is "
                                   "resumed from it. Prints the dev/test metrics of the best checkpoint as JSON.")
    _add_config(p)
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--allow-changed-data", action="store_true",
                   help="resume even though a manifest's contents changed since the run started "
                        "(same as --set train.allow_changed_data=true)")

    p = sub.add_parser("evaluate", help="score a finished run on a split",
                       description="Rebuild a run's best checkpoint and print its metrics on a split as JSON.")
    p.add_argument("run_dir", help="a run folder written by `speechfuse train`")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="which manifest (default test)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")

    p = sub.add_parser("compare", help="paired bootstrap: is run A better than run B on the same utterances?",
                       description="Compare two finished runs on the same utterances (matched by id, from each "
                                   "run's utterances_<split>.jsonl): prints A minus B in the task's per-utterance "
                                   "metric (WER, pooled CER or accuracy) with its 95 %% bootstrap interval and a "
                                   "two-sided p-value, as JSON with a one-line summary.")
    p.add_argument("run_a", help="a run folder (its utterances_<split>.jsonl and task.json)")
    p.add_argument("run_b", help="the run folder to compare it with")
    p.add_argument("--split", default="test", choices=["dev", "test"], help="which split (default test)")

    p = sub.add_parser("extract", help="fill the feature cache ahead of training",
                       description="Run every upstream of the config over the train/dev/test manifests and store "
                                   "their hidden states in the feature cache that `speechfuse train` reads "
                                   "(config key `cache`). Under torchrun each rank extracts its own share.")
    _add_config(p)
    p.add_argument("--out", help="the run folder the cache belongs to; `cache: auto` puts it in OUT/../cache "
                                 "(default: runs/<config name>)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--batch-seconds", type=float, default=None,
                   help="seconds of audio per extraction batch (default: the config's train.batch_seconds)")

    p = sub.add_parser("sweep", help="train every combination of a grid, one results table",
                       description="Train one run per grid combination into OUT/runs/<name>, sharing one feature "
                                   "cache, and write OUT/results.md and OUT/results.csv.")
    _add_config(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values, e.g. interface.name=weighted_sum,hconv; for upstreams "
                        "join the specs of one combination with '+': upstreams=whisper-tiny.en+resemblyzer,"
                        "resemblyzer (repeatable)")
    p.add_argument("--select", action="append", default=[], metavar="KEY=V1,V2",
                   help="candidate values chosen on dev for every configuration, e.g. train.interface_lr=1e-4,3e-4,1e-3: "
                        "each candidate trains on the first seed, the best dev main metric wins, then the seeds run "
                        "at that choice; OUT/selection.md lists every candidate (repeatable)")
    p.add_argument("--seeds", default=None, metavar="S1,S2",
                   help="train every combination once per seed (e.g. 0,1,2); results.md then shows mean ± std "
                        "over the seeds, results.csv one row per run")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N runs at once, each in its own process with 1/N of the threads (default 1); on a "
                        "CPU, 2 jobs of 1 thread can train small heads faster than 1 job of 2")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per run (default: the threads divided by --jobs); fix it for numbers "
                        "that do not depend on the machine's core count")
    p.add_argument("--out", required=True, help="sweep folder")
    from .launcher_cli import add_launcher_arguments

    add_launcher_arguments(p)

    from .search_cli import add_parser as add_search_parser

    add_search_parser(sub, _add_config)

    p = sub.add_parser("study", help="paper-style studies over many sweeps (scaling)",
                       description="Studies made of several sweeps; `speechfuse study scaling CONFIG --out DIR`.")
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    p = studies.add_parser("scaling", help="metric vs number and size of the fused models",
                           description="Train every non-empty subset of the config's upstreams under each interface "
                                       "(and, with --sizes / --depths, one model at several sizes), each over the "
                                       "seeds, through `speechfuse sweep`; write OUT/scaling.md, OUT/scaling.csv and "
                                       "OUT/scaling.png (metric vs number of models and vs upstream parameters, one "
                                       "line per interface, error bars = std over seeds).")
    _add_config(p)
    p.add_argument("--interfaces", default="weighted_sum,hconv", metavar="I1,I2",
                   help="interfaces to compare (default weighted_sum,hconv)")
    p.add_argument("--seeds", default="0,1", metavar="S1,S2", help="seeds per configuration (default 0,1)")
    p.add_argument("--sizes", action="append", default=[], metavar="FAMILY=SPEC1,SPEC2",
                   help="real models of one family at several sizes, each trained alone, e.g. "
                        "whisper=hf:openai/whisper-tiny,hf:openai/whisper-base (repeatable)")
    p.add_argument("--depths", action="append", default=[], metavar="UPSTREAM=K1,K2",
                   help="the offline stand-in for size: UPSTREAM cut to its first K hidden states (max_layers=K), "
                        "e.g. whisper-tiny.en=3,4,5; labelled 'depth-truncated stand-in, not a real smaller model' "
                        "(repeatable)")
    p.add_argument("--select", action="append", default=[], metavar="KEY=V1,V2",
                   help="candidates chosen on dev for every configuration, as for `speechfuse sweep` (repeatable)")
    p.add_argument("--out", required=True, help="study folder")

    p = sub.add_parser("predict", help="predict with a trained model, streaming to a file",
                       description="Run a trained model (a run folder or a model folder) over audio files, folders "
                                   "and manifests. Results are appended to OUT batch by batch, so a killed run loses "
                                   "nothing written and a rerun skips the inputs already in OUT. Bad inputs are "
                                   "listed in OUT with the reason. Prints a JSON summary, with metrics when a "
                                   "manifest holds references.")
    p.add_argument("model", help="a run folder (uses its model/) or a model folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio file, folder of audio files, or manifest (.csv/.jsonl)")
    p.add_argument("--out", required=True, help="predictions file: .jsonl or .csv")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="seconds of padded audio per batch (default 60)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--allow-changed-upstreams", action="store_true",
                   help="load even if an upstream's weights differ from those the model was trained with")

    p = sub.add_parser("verify", help="score speaker verification trials with a trained model",
                       description="Score trials with a verification model (a run folder or a model folder). With "
                                   "two clips A B it prints the trial's score, threshold and decision as JSON. With "
                                   "--trials it scores a trial list: 'LABEL ENROL TEST' lines (VoxCeleb1's "
                                   "veri_test2.txt, label 1 = same speaker) or 'ENROL TEST' lines without labels, "
                                   "paths relative to --root (default: the list's folder). One row per trial is "
                                   "appended to OUT chunk by chunk, so a killed run loses nothing written and a "
                                   "rerun skips the trials already in OUT; a trial with a missing or unreadable "
                                   "file is written with its error. Prints a JSON summary, with EER, minDCF and the "
                                   "accuracy of the decisions at the model's threshold when the list has labels.")
    p.add_argument("model", help="a run folder (uses its model/) or a model folder")
    p.add_argument("clips", nargs="*", metavar="CLIP", help="two audio files, A (enrol) and B (test)")
    p.add_argument("--trials", help="a trial list to score instead of A B")
    p.add_argument("--root", help="folder the trial list's paths are relative to (default: the list's folder)")
    p.add_argument("--out", help="scores file for --trials: .jsonl or .csv")
    p.add_argument("--batch-seconds", type=float, default=60.0,
                   help="seconds of new audio embedded per chunk of trials (default 60)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--allow-changed-upstreams", action="store_true",
                   help="load even if an upstream's weights differ from those the model was trained with")

    p = sub.add_parser("export", help="export a trained model (after the upstreams, or --whole) as TorchScript or ONNX",
                       description="Export aligner + interface + head of a trained model (a run folder or a model "
                                   "folder) as one graph over the upstreams' hidden states, with dynamic batch and "
                                   "time; writes OUT and OUT.json (inputs, upstream fingerprints, vocabulary or "
                                   "labels). The upstreams stay in PyTorch. With --whole: the whole model, "
                                   "waveforms in (wavs [B,S] zero-padded, wav_lengths [B]), for upstreams that "
                                   "trace (transformers models, whisper-tiny.en, resemblyzer; not speech-embedding); "
                                   "the written graph is first checked against the eager model on two inputs it was "
                                   "not traced on, and refused if it differs.")
    p.add_argument("model", help="a run folder (uses its model/) or a model folder")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"],
                   help="torchscript (default) or onnx (needs the onnx package: pip install 'speechfuse[export]')")
    p.add_argument("--out", required=True, help="output file, e.g. fusion.pt or fusion.onnx")
    p.add_argument("--whole", action="store_true",
                   help="export the whole model, audio in (dynamic batch and length; the input checks of the "
                        "upstreams are not in the graph: keep clips within OUT.json's min_samples / max_samples)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="--whole: largest max abs difference to the eager model accepted, relative to the output's "
                        "scale (at least 1; default 1e-4)")
    p.add_argument("--allow-changed-upstreams", action="store_true",
                   help="load even if an upstream's weights differ from those the model was trained with")

    p = sub.add_parser("prune", help="keep the layers worth their upstream cost, retrain, report metric vs cost",
                       description="Prune a finished run to budgets of upstream inference cost: per-(model, layer) "
                                   "importance (drop-one-layer task-loss increase on dev), the cost of running each "
                                   "upstream to each depth (FLOPs counted, seconds measured on the first --clips dev "
                                   "clips), the depths with the most importance within budget x the full cost (a "
                                   "model with no kept layer is not run), each retrained from the feature cache into "
                                   "RUN/prune/budget=B/. Writes RUN/prune/results.md, results.csv and pareto.png; "
                                   "prints the rows as JSON.")
    p.add_argument("run_dir", help="a finished run folder written by `speechfuse train`")
    budgets = p.add_mutually_exclusive_group(required=True)
    budgets.add_argument("--budget", type=float, help="one budget, a fraction of the full upstream cost in (0, 1]")
    budgets.add_argument("--budgets", metavar="B1,B2", help="several budgets, e.g. 0.25,0.5,0.75")
    p.add_argument("--cost", default="flops", choices=["flops", "seconds"],
                   help="the cost the budget limits: counted FLOPs (default; reproducible) or measured seconds "
                        "(needed for models that run outside torch, such as speech-embedding)")
    p.add_argument("--importance", default="loss", choices=["loss", "feature"],
                   help="drop-one-layer importance as the increase of the task loss (default) or as the relative "
                        "change of the fused features")
    p.add_argument("--clips", type=int, default=8, help="dev clips in the reference batch the costs are measured on")
    p.add_argument("--repeat", type=int, default=5, help="timed forward passes per (model, depth); the median counts")

    from .data.corpora import CORPORA

    p = sub.add_parser("prepare", help="write a corpus's manifests (and trials / folds) by its official protocol",
                       description="Write train/dev/test manifests for a corpus on disk, following its protocol: "
                                   "iemocap (five leave-one-session-out folds, 4 classes), voxceleb1 "
                                   "(identification by iden_split.txt, verification by veri_test2.txt), mlsuperb "
                                   "(multilingual and monolingual, 10 min and 1 h training sets), fsdd, "
                                   "librispeech (one manifest per split folder). Prints the files written as JSON.")
    p.add_argument("corpus", choices=CORPORA, help="which corpus")
    p.add_argument("root", help="the corpus folder as released (e.g. IEMOCAP_full_release)")
    p.add_argument("--out", required=True, help="folder for the manifests")

    p = sub.add_parser("table", help="merge finished sweeps into the paper's table",
                       description="Merge finished sweeps into one table in the paper's layout: rows upstream set x "
                                   "interface, columns LibriSpeech WER, ML-SUPERB mono CER, multi CER, VoxCeleb1 EER, "
                                   "IEMOCAP accuracy (%, test split). Each run's column follows its task; IEMOCAP "
                                   "folds and ML-SUPERB monolingual languages are averaged. Writes OUT and OUT with "
                                   ".csv (full precision, counts); prints the rows as JSON.")
    p.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR", help="folders written by `speechfuse sweep`")
    p.add_argument("--out", required=True, help="Markdown table, e.g. table.md")

    p = sub.add_parser("demo", help="the bundled FSDD demo (no downloads)",
                       description="Train the bundled upstreams on the bundled FSDD subset and write a report.")
    p.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a few steps only, to check the installation")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="runs trained at once (default: the number of CPU cores, at most 4)")
    return parser


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SpeechfuseError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SpeechfuseError(f"--seeds {text!r}: give distinct integers, e.g. 0,1,2")
    return seeds


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SpeechfuseError(f"{option} {text!r}: expected numbers separated by commas, e.g. 0.25,0.5") from None


def _extract(args: argparse.Namespace) -> int:
    import torch

    from .config import load_config
    from .data.loader import resolve_cache_dir
    from .extract import fill_config_caches

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else _default_out(args.config)
    if resolve_cache_dir(cfg, out) is None:
        raise SpeechfuseError(f"{args.config}: cache is 'off'; set cache to auto or a folder to extract features")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    cache_dir, entries, count = fill_config_caches(cfg, out, device=device, batch_seconds=args.batch_seconds,
                                                   progress=True, rank=rank, world_size=world)
    print(json.dumps({"cache": str(cache_dir), "entries": [str(e.folder) for e in entries],
                      "utterances": count, "rank": rank, "world_size": world}, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    import torch

    from .inference import check_output_path
    from .model import load_model
    from .verify_trials import require_verification_model, verify_pair, verify_to_file

    if args.trials is None and len(args.clips) != 2:
        raise SpeechfuseError(f"give two clips (A B) or --trials FILE, got {len(args.clips)} clip(s)")
    if args.trials is not None:
        if args.clips:
            raise SpeechfuseError(f"give two clips (A B) or --trials FILE, not both (clips: {' '.join(args.clips)})")
        if args.out is None:
            raise SpeechfuseError("--trials needs --out scores.jsonl (or .csv)")
        check_output_path(args.out, "verify")  # before the model loads
    elif args.out is not None or args.root is not None:
        raise SpeechfuseError("--out and --root go with --trials; one pair A B prints its score")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device=device, allow_changed_upstreams=args.allow_changed_upstreams)
    require_verification_model(model, args.model)
    if args.trials is None:
        result = verify_pair(model, args.clips[0], args.clips[1], batch_seconds=args.batch_seconds)
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(json.dumps(verify_to_file(model, args.trials, args.out, root=args.root,
                                        batch_seconds=args.batch_seconds), indent=2))
    return 0


def _study(args: argparse.Namespace) -> int:
    if args.study != "scaling":
        raise SpeechfuseError("name the study to run: speechfuse study scaling CONFIG --out DIR")
    from .config import load_config
    from .study import parse_depths, parse_sizes, scaling_study
    from .sweep import parse_grid

    interfaces = [i.strip() for i in args.interfaces.split(",") if i.strip()]
    depths, sizes = parse_depths(args.depths), parse_sizes(args.sizes)  # before the config: cheap checks first
    cfg = load_config(args.config, args.overrides)
    rows = scaling_study(cfg, args.out, interfaces=interfaces, seeds=_seeds(args.seeds), sizes=sizes, depths=depths,
                         select=parse_grid(args.select) if args.select else None)
    out = Path(args.out)
    print((out / "scaling.md").read_text(encoding="utf-8"))
    print(f"{len(rows)} rows; table {out / 'scaling.md'} and {out / 'scaling.csv'}, figure {out / 'scaling.png'}")
    return 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "train":
        from .config import load_config
        from .train import train

        cfg = load_config(args.config, args.overrides)
        if args.allow_changed_data:
            cfg.train.allow_changed_data = True
        metrics = train(cfg, args.out or _default_out(args.config))
        print(json.dumps(metrics, indent=2))
        return 0
    if args.command == "evaluate":
        from .train import evaluate

        print(json.dumps(evaluate(args.run_dir, split=args.split, device=args.device), indent=2))
        return 0
    if args.command == "compare":
        from .compare import compare_runs, describe

        result = compare_runs(args.run_a, args.run_b, split=args.split)
        print(json.dumps({"summary": describe(result, args.run_a, args.run_b), **result}, indent=2))
        return 0
    if args.command == "extract":
        return _extract(args)
    if args.command == "sweep":
        from .config import load_config
        from .launcher_cli import launcher_from_args
        from .sweep import parse_grid, run_sweep

        if not args.grid:
            raise SpeechfuseError("sweep: give at least one --grid KEY=V1,V2")
        cfg = load_config(args.config, args.overrides)
        launcher = {"launcher": pool} if (pool := launcher_from_args(args, cfg)) is not None else {}
        rows = run_sweep(cfg, parse_grid(args.grid), args.out, seeds=_seeds(args.seeds),
                         select=parse_grid(args.select) if args.select else None, jobs=args.jobs,
                         threads=args.threads, **launcher)
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if args.command == "study":
        return _study(args)
    if args.command == "search":
        from .search_cli import run as run_search

        return run_search(args)
    if args.command == "predict":
        import torch

        from .inference import check_output_path, predict_to_file
        from .model import load_model

        check_output_path(args.out)  # before the model loads
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(args.model, device=device, allow_changed_upstreams=args.allow_changed_upstreams)
        print(json.dumps(predict_to_file(model, args.inputs, args.out, batch_seconds=args.batch_seconds), indent=2))
        return 0
    if args.command == "verify":
        return _verify(args)
    if args.command == "export":
        from .export import export_fusion, export_whole
        from .model import load_model

        model = load_model(args.model, allow_changed_upstreams=args.allow_changed_upstreams)
        if args.whole:
            options = {} if args.tolerance is None else {"tolerance": args.tolerance}
            path = export_whole(model, args.out, format=args.format, **options)
        else:
            path = export_fusion(model, args.out, format=args.format)
        summary = {"out": str(path), "sidecar": f"{path}.json", "format": args.format, "whole": args.whole}
        if args.whole:
            summary["checked"] = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))["checked"]
        print(json.dumps(summary, indent=2))
        return 0
    if args.command == "prune":
        from .prune import prune_run

        budgets = [args.budget] if args.budget is not None else _floats(args.budgets, "--budgets")
        print(json.dumps(prune_run(args.run_dir, budgets, cost=args.cost, importance=args.importance,
                                   clips=args.clips, repeat=args.repeat),
                         indent=2))
        return 0
    if args.command == "prepare":
        from .data.corpora import prepare

        print(json.dumps(prepare(args.corpus, args.root, args.out), indent=2, default=str))
        return 0
    if args.command == "table":
        from .table import paper_table

        print(json.dumps(paper_table(args.sweeps, args.out), indent=2, ensure_ascii=False))
        return 0
    if args.command == "demo":
        from .demo import run_demo

        print(run_demo(args.out, quick=args.quick, jobs=args.jobs))
        return 0
    parser.print_help()
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except SpeechfuseError as err:
        print(f"speechfuse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # train's TrainingInterrupted says what was saved
        print(f"speechfuse {args.command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
