"""`--launcher slurm|local` and its options, for sweep, search, study and prune."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from speechfuse.experiments.launcher import LAUNCHERS


def add_launcher_arguments(p: Any) -> None:
    g = p.add_argument_group("cluster", "submit every run as a job (or set these in the config's launcher: section)")
    g.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="slurm: one SLURM job per run, through submitit; local: the same jobs as local processes")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--account", default=None, help="SLURM account")
    g.add_argument("--gpus", type=int, default=None, metavar="N", help="GPUs per job")
    g.add_argument("--cpus", type=int, default=None, metavar="N", help="CPUs per job (also its torch threads)")
    g.add_argument("--time", type=int, default=None, metavar="MIN", help="time limit per job, minutes (default 60)")


def read_launcher_section(config_path: str | Path) -> Any:
    """The `launcher:` section of a config file (None when it has none); not part of any run's config."""
    import yaml

    try:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None  # load_config reports an unreadable config
    return data.get("launcher") if isinstance(data, dict) else None


def launcher_options_from_args(args: Any) -> Any:
    """LauncherOptions from the options and the config's launcher: section (commands without a config, such as
    prune, take the options only); None: run here."""
    config = getattr(args, "config", None)
    section = read_launcher_section(config) if config is not None else None
    if args.launcher is None and section is None:
        return None
    from speechfuse.experiments.launcher import launcher_options

    cli = {"name": args.launcher, "partition": args.partition, "account": args.account, "gpus": args.gpus,
           "cpus": args.cpus, "time": args.time}
    return launcher_options(section, cli, f"{config}: launcher" if config is not None else "--launcher")


def launcher_from_args(args: Any, cfg: Any) -> Callable | None:
    """run_sweep's `launcher=` from the options and the config's launcher: section; None: train here."""
    options = launcher_options_from_args(args)
    if options is None:
        return None
    from speechfuse.experiments.launcher import cluster_pool_factory

    return cluster_pool_factory(options, cfg, args.out)
