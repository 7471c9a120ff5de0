"""What every command shares: the config positional with `--set`, `--device`, and the options of every command
(`--threads`, `--quiet`, `--verbose`, `--plugin`), applied by `apply_runtime` before the command runs."""
from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

from speechfuse.errors import SpeechfuseError

# Lightning's and its helpers' loggers: INFO lines ("GPU available", "Tip: litlogger", the model summary)
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")
# warnings about settings speechfuse makes on purpose; a user cannot act on them (--verbose shows them)
EXPECTED_WARNINGS = (
    ".*does not have many workers.*",          # num_workers=0 is the default: the features are cached
    ".*smaller than the logging interval.*",   # short runs log every step on purpose
    ".*LeafSpec.*",                            # torch's pytree deprecation, raised inside Lightning
    ".*deterministic.*",
    ".*litlogger.*",
    ".*dataloader is not resumable.*",
    ".*module\\(s\\) in eval mode.*",          # frozen upstreams are in eval mode on purpose
    ".*overridden `transfer_batch_to_device`.*",
    ".*clamping frac.*",                       # tqdm, on a bar whose total Lightning guessed
    ".*`srun` command is available.*",         # Lightning, on any machine with SLURM tools installed
    ".*is_gradient_checkpointing.*",           # transformers' deprecation, hit inside its own code when tracing
)


# the commands that give --threads to each run themselves (the caches are filled with every thread first)
PER_RUN_THREADS = ("sweep", "demo")


def _number(text: str, kind: type, accept, needs: str):
    """argparse type check: `text` read as `kind` and accepted by `accept`, refused while the arguments are read
    (before anything runs) saying what it `needs`."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"give {needs}, got {text!r}")
    return value


def whole_number(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1")


def positive_number(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number > 0")


def non_negative_number(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def default_out(config: str) -> Path:
    return Path("runs") / Path(config).stem


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("every command")
    g.add_argument("--threads", type=whole_number, default=None, metavar="N",
                   help="torch threads per process; for sweep, search and demo: per run (default: torch's own choice; "
                        "the demo: 1)")
    loud = g.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true",
                      help="no progress bars or notes on stderr; warnings and errors still show")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="also show the libraries' own logs and warnings (Lightning, transformers)")
    g.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so the upstreams, interfaces or tasks it registers can be named "
                        "(repeatable)")
    return p


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (`speechfuse init` writes one; see configs/ for examples)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.max_steps=5 (value read as YAML; repeat "
                        "--set for several keys)")


DEVICE_HELP = "where the models run: cpu, cuda or cuda:N"


def add_device(p: argparse.ArgumentParser, default: str = "cuda when available, else cpu") -> None:
    """--device, in one meaning on every command that runs a model."""
    p.add_argument("--device", default=None, metavar="DEVICE", help=f"{DEVICE_HELP} (default: {default})")


def no_device(p: argparse.ArgumentParser, why: str) -> None:
    """A command that runs no model says why in its help instead of taking --device."""
    p.description = f"{p.description} No --device: {why}."


def add_out(p: argparse.ArgumentParser, kind: str, what: str, required: bool = False) -> None:
    """--out, in one meaning on every command: where the command writes what it makes, a folder (DIR) or a
    file (FILE)."""
    metavar = {"folder": "DIR", "file": "FILE"}[kind]
    p.add_argument("--out", required=required, metavar=metavar, help=f"the {kind} it writes: {what}")


def add_model(p: argparse.ArgumentParser) -> None:
    """The MODEL positional of the commands that load a trained model (predict, verify, export), and the flags
    that load it (add it before the command's other positionals)."""
    p.add_argument("model", metavar="MODEL", help="a run folder (uses its model/) or a model folder")
    p.add_argument("--allow-changed-upstreams", action="store_true",
                   help="load even if an upstream's weights differ from those the model was trained with")
    p.add_argument("--allow-unverified", action="store_true",
                   help="load a model folder whose config.json and weights do not match their saved digest (or "
                        "have none), with a warning")


def add_run(p: argparse.ArgumentParser) -> None:
    """The RUN positional of the commands that read a finished run folder (evaluate, prune)."""
    p.add_argument("run_dir", metavar="RUN", help="a finished run folder written by `speechfuse train` (or a "
                                                  "sweep's OUT/runs/<name>)")


def load_trained_model(args: argparse.Namespace, device: str | None = None):
    """The model the command names, loaded with its --allow-* flags."""
    from speechfuse.fusion.model import load_model

    return load_model(args.model, device=device, allow_changed_upstreams=args.allow_changed_upstreams,
                      trust_unverified=args.allow_unverified)


def torch_device(args: argparse.Namespace) -> str:
    """--device, or cuda when available, else cpu."""
    import torch

    check_device(args.device)
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str | None) -> None:
    from speechfuse.config import device_train_options

    if device is not None:
        device_train_options(device)  # refuses anything but cpu, cuda, cuda:N


def device_overrides(device: str | None) -> list[str]:
    """--device as config overrides for the commands that train (train.accelerator / train.devices)."""
    from speechfuse.config import device_train_options

    if device is None:
        return []
    return [f"train.{key}='{value}'" for key, value in device_train_options(device).items()]


def load_command_config(args: argparse.Namespace):
    """The config with --set and --device applied (every error a ConfigError naming the key)."""
    from speechfuse.config import load_config

    return load_config(args.config, [*args.overrides, *device_overrides(getattr(args, "device", None))])


def seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SpeechfuseError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not values or len(set(values)) != len(values):
        raise SpeechfuseError(f"--seeds {text!r}: give distinct integers, e.g. 0,1,2")
    return values


def floats(text: str, option: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SpeechfuseError(f"{option} {text!r}: expected numbers separated by commas, e.g. 0.25,0.5") from None


def apply_runtime(args: argparse.Namespace) -> None:
    """--threads, --quiet / --verbose and --plugin, before the command does anything else."""
    threads = getattr(args, "threads", None)  # a whole number >= 1 (whole_number), or None
    if threads is not None and args.command not in PER_RUN_THREADS:
        import torch

        torch.set_num_threads(threads)
    quiet_libraries(verbose=getattr(args, "verbose", False))
    if getattr(args, "quiet", False):
        os.environ["SPEECHFUSE_QUIET"] = "1"  # read by the progress bars (speechfuse.training.progress)
    if getattr(args, "verbose", False):
        os.environ["SPEECHFUSE_VERBOSE"] = "1"
    plugins = getattr(args, "plugin", None) or []
    if plugins:
        from speechfuse.plugins import load_plugins

        load_plugins(plugins)


def quiet_libraries(verbose: bool = False) -> None:
    """Lightning's INFO logs and the warnings listed in EXPECTED_WARNINGS off (unless verbose)."""
    if verbose:
        return
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: set ours after)

    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    try:
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def write_result(result, out: str | None) -> str:
    """The result as indented JSON, also written to `out` when given (the text the command prints)."""
    import json

    from speechfuse.training.runfolder import write_atomic

    text = json.dumps(result, indent=2, default=str, ensure_ascii=False)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text + "\n")
    return text
