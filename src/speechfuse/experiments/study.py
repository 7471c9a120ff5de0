"""`speechfuse study scaling`: how fusion scales with the number and the size of the fused models.

    rows = scaling_study(cfg, "runs/scaling", interfaces=["weighted_sum", "hconv"], seeds=[0, 1],
                         depths={"whisper-tiny.en": [3, 4, 5]})

Every run trains through speechfuse.experiments.sweep.run_sweep (seeds, `select`, resume and per-sweep results as
there), all on the config's feature cache (`auto`: the user's, $SPEECHFUSE_HOME/cache; see resolve_cache_dir).
Three axes; each row is one (upstreams, interface) over the seeds:
- models: every non-empty subset of the config's upstreams (1, 2, ... N models), in OUT/models/;
- size:   `sizes` {family: [spec, ...]}: each spec alone (real models of one family at several sizes,
          e.g. hub ids), in OUT/size-<family>/;
- depth:  `depths` {spec: [k, ...]}: the upstream cut to its first k hidden states (option max_layers=k),
          one sweep per k in OUT/depth-<spec>/k<k>/ (run names follow the spec, so two depths cannot share
          a sweep). A stand-in for model size where only one size is at hand, labelled DEPTH_NOTE in the
          table and the figure. A depth's cache entry is filled by slicing the full upstream's cached states
          where those exist (speechfuse.experiments.prune.seed_truncated_cache); the rest runs only the first k layers.
Each row counts its upstream parameters: Upstream.num_parameters() summed over the row's upstreams (a
truncated upstream holds only its first k layers). Every (upstreams, interface) is built once before
anything trains, so a combination that cannot be built fails first, with nothing lost.

Outputs, rewritten atomically after every sweep: OUT/scaling.md (the split's metrics as mean ± std over
the seeds), OUT/scaling.csv (every metric's mean and std, full precision) and OUT/scaling.png (the main
metric against the number of models and against upstream parameters; one line per interface; error
bars: std over the seeds).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from speechfuse.errors import ConfigError
from speechfuse.experiments.report import markdown_table, save_figure, write_table
from speechfuse.io import write_atomic
from speechfuse.experiments.sweep import SweepFailed, combo_config, run_sweep, summarise_seeds

DEPTH_NOTE = "depth-truncated stand-in, not a real smaller model"
TABLE_MD, TABLE_CSV, FIGURE = "scaling.md", "scaling.csv", "scaling.png"


# ---------------------------------------------------------------------------------------------
# command-line values
# ---------------------------------------------------------------------------------------------
def _key_values(item: str, option: str, example: str) -> tuple[str, list[str]]:
    key, sep, raw = item.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise ConfigError(f"{option} {item!r}: expected {example}")
    return key.strip(), values


def parse_depths(items: Iterable[str]) -> dict[str, list[int]]:
    """`whisper-tiny.en=3,4,5` -> {"whisper-tiny.en": [3, 4, 5]} (hidden states kept, distinct, >= 1)."""
    depths: dict[str, list[int]] = {}
    for item in items:
        spec, values = _key_values(item, "--depths", "UPSTREAM=K1,K2,... (e.g. whisper-tiny.en=3,4,5)")
        try:
            ks = [int(v) for v in values]
        except ValueError:
            raise ConfigError(f"--depths {item!r}: the depths must be whole numbers of hidden states to keep, "
                              f"e.g. {spec}=3,4,5") from None
        if min(ks) < 1 or len(set(ks)) != len(ks):
            raise ConfigError(f"--depths {item!r}: give distinct depths of at least 1 (hidden states to keep)")
        if spec in depths:
            raise ConfigError(f"--depths {spec!r} given twice; put all its depths in one --depths")
        depths[spec] = sorted(ks)
    return depths


def parse_sizes(items: Iterable[str]) -> dict[str, list[str]]:
    """`whisper=hf:openai/whisper-tiny,hf:openai/whisper-base` -> {"whisper": [...]} (one family per item)."""
    sizes: dict[str, list[str]] = {}
    for item in items:
        family, specs = _key_values(item, "--sizes", "FAMILY=SPEC1,SPEC2,... "
                                                     "(e.g. whisper=hf:openai/whisper-tiny,hf:openai/whisper-base)")
        if family in sizes:
            raise ConfigError(f"--sizes family {family!r} given twice; put all its models in one --sizes")
        if len(set(specs)) != len(specs):
            raise ConfigError(f"--sizes {item!r}: a model is listed twice")
        sizes[family] = specs
    return sizes


# ---------------------------------------------------------------------------------------------
# the plan: one run_sweep per series
# ---------------------------------------------------------------------------------------------
@dataclass
class Series:
    axis: str                 # models | size | depth
    label: str                # "subsets", the family, or the truncated spec
    folder: str               # under the study's out_dir
    upstream_sets: list[list[dict]]
    depth: int | None = None


def model_subsets(items: Sequence[Any]) -> list[list[Any]]:
    """Every non-empty subset of `items`, smallest first, each in the given order (2**N - 1 of them)."""
    return [list(c) for n in range(1, len(items) + 1) for c in itertools.combinations(items, n)]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text.replace("hf:", "")).strip("-") or "upstream"


def plan_series(cfg, sizes: dict[str, list[str]] | None = None,
                depths: dict[str, list[int]] | None = None) -> list[Series]:
    base = [{"spec": u.spec, "options": dict(u.options)} for u in cfg.upstreams]
    by_spec = {e["spec"]: e for e in base}

    def entry(spec: str, **extra: Any) -> dict:  # a spec of the config keeps the config's options
        options = dict(by_spec[spec]["options"]) if spec in by_spec else {}
        return {"spec": spec, "options": {**options, **extra}}

    series = [Series("models", "subsets", "models", model_subsets(base))]
    for family, specs in (sizes or {}).items():
        series.append(Series("size", family, f"size-{_safe(family)}", [[entry(s)] for s in specs]))
    for spec, ks in (depths or {}).items():
        for k in ks:
            series.append(Series("depth", spec, f"depth-{_safe(spec)}/k{k}", [[entry(spec, max_layers=k)]], k))
    return series


def _key(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def _where(s: Series, upstreams: list[dict], interface: str | None = None) -> str:
    names = "+".join(u["spec"] for u in upstreams)
    what = {"models": f"model subset {names}", "size": f"--sizes {s.label}={names}",
            "depth": f"--depths {s.label}={s.depth}"}[s.axis]
    return f"scaling study, {what}{f' with interface {interface}' if interface else ''}"


def _full(entry: dict) -> dict:
    """The entry without its max_layers option: the full upstream a depth is cut from."""
    return {**entry, "options": {k: v for k, v in entry["options"].items() if k != "max_layers"}}


def check_and_count(cfg, series: list[Series], interfaces: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Load every upstream once, count its parameters and build every (upstreams, interface) of the study
    (ConfigError naming the combination when one cannot be built). Returns ({entry key: parameters},
    {depth spec: hidden states of the full upstream})."""
    from speechfuse.fusion.frontend import FusionFrontend
    from speechfuse.fusion.upstream import load_upstream

    loaded: dict[str, Any] = {}
    params: dict[str, int] = {}
    for s in series:
        for ups in s.upstream_sets:
            for u in ups:
                key = _key(u)
                if key in loaded:
                    continue
                try:
                    loaded[key] = load_upstream(u["spec"], **u["options"])
                except TypeError as err:
                    raise ConfigError(f"{_where(s, [u])}: options {u['options']}: {err}") from err
                except ConfigError as err:
                    raise ConfigError(f"{_where(s, [u])}: {err}") from err
                params[key] = loaded[key].num_parameters()
            for name in interfaces:
                try:
                    FusionFrontend([loaded[_key(u)] for u in ups], interface=name,
                                   aligner_options=cfg.align.options(), interface_options=cfg.interface.options())
                except (ConfigError, TypeError) as err:
                    hint = "; drop that depth or interface" if s.axis == "depth" else ""
                    raise ConfigError(f"{_where(s, ups, name)}: {err}{hint}") from err
    full_layers = {s.label: load_upstream(s.label, **_full(s.upstream_sets[0][0])["options"]).num_layers
                   for s in series if s.axis == "depth"}
    return params, full_layers


def seed_depth_cache(cfg, s: Series, full_layers: int, out_dir: Path) -> int:
    """Fill a depth's cache entry by slicing the full upstream's cached states (prune.seed_truncated_cache:
    the first k hidden states are equal bit for bit), so the truncated upstream runs only on utterances the
    full one has not cached. Returns how many utterances were copied."""
    from speechfuse.data.loader import load_splits, resolve_cache_dir
    from speechfuse.fusion.model import build_task
    from speechfuse.experiments.prune import seed_truncated_cache

    cache_dir = resolve_cache_dir(cfg)
    if cache_dir is None or s.depth >= full_layers:
        return 0
    one = combo_config(cfg, {"upstreams": [_full(s.upstream_sets[0][0])]}, None)
    utts = [u for split in load_splits(one, out_dir / s.folder, build_task(one).target_field).values() for u in split]
    return seed_truncated_cache(one, [s.depth], [full_layers], cache_dir, utts)


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
def main_metric(cfg) -> tuple[str, bool]:
    """(`<split>_<metric>`, higher is better): the task's main metric on test (dev when there is no test set)."""
    from speechfuse.tasks import TASKS

    cls = TASKS.get(cfg.task)
    return f"{'test' if cfg.data.test else 'dev'}_{cls.main_metric}", cls.higher_is_better


def scaling_study(cfg, out_dir, interfaces: Sequence[str] = ("weighted_sum", "hconv"),
                  seeds: Sequence[int] = (0, 1), sizes: dict[str, list[str]] | None = None,
                  depths: dict[str, list[int]] | None = None, select: dict[str, list] | None = None,
                  train_fn: Callable | None = None, progress: bool = True, launcher: Any = None) -> list[dict]:
    """Run the study (see the module doc) into `out_dir`; return one row per (series, upstreams, interface)
    with `<metric>_mean` / `<metric>_std` over the seeds (the rows of scaling.csv).

    launcher (speechfuse.experiments.launcher.LauncherOptions): each series' sweep submits its runs as jobs
    (run_sweep's launcher; the sweep folder OUT/<series> keeps its jobs in OUT/<series>/launcher), every series
    at once, so the scheduler sees the whole study.
    A run that fails does not stop the study: the other runs and series go on, and a SweepFailed at the end
    names every failed run, after the tables were written from the finished ones."""
    from speechfuse.config import Config
    from speechfuse.fusion.interfaces import list_interfaces

    if not isinstance(cfg, Config):
        raise ConfigError(f"scaling_study: cfg must be a speechfuse Config (load_config), got {type(cfg).__name__}")
    interfaces = list(dict.fromkeys(interfaces))
    unknown = [i for i in interfaces if i not in list_interfaces()]
    if not interfaces or unknown:
        what = f"unknown interface(s) {', '.join(unknown)}" if unknown else "no interface given"
        raise ConfigError(f"scaling study: {what}; choose from {', '.join(list_interfaces())}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("scaling study: give at least one seed (two or more for error bars)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series = plan_series(cfg, sizes, depths)
    params, full_layers = check_and_count(cfg, series, interfaces)
    metric, higher_is_better = main_metric(cfg)

    per_seed: list[dict] = []
    numbers: list[dict] = []
    failures: list[tuple[str, SweepFailed]] = []

    def sweep_of(s: Series) -> tuple[list[dict], SweepFailed | None]:
        if s.axis == "depth" and train_fn is None:  # a stand-in trainer reads no features
            seed_depth_cache(cfg, s, full_layers[s.label], out_dir)
        jobs = {}
        if launcher is not None:
            from speechfuse.experiments.launcher import cluster_pool_factory

            jobs["launcher"] = cluster_pool_factory(launcher, cfg, out_dir / s.folder, "study")
        try:
            return run_sweep(cfg, {"upstreams": s.upstream_sets, "interface.name": interfaces}, out_dir / s.folder,
                             seeds=seeds, select=select, train_fn=train_fn, progress=progress, **jobs), None
        except SweepFailed as failed:  # the other series go on; named again at the end
            return failed.rows, failed

    if launcher is not None and len(series) > 1:  # every series' jobs go in at once; each sweep waits in a thread
        from speechfuse.experiments.launcher import concurrently

        outcomes: Iterable = concurrently([functools.partial(sweep_of, s) for s in series])
    else:
        outcomes = map(sweep_of, series)
    for s, (rows, failed) in zip(series, outcomes):
        if failed is not None:
            failures.append((s.folder, failed))
        sets = {"+".join(u["spec"] for u in ups): ups for ups in s.upstream_sets}
        for row in rows:
            ups = sets[row["upstreams"]]
            per_seed.append({"axis": s.axis, "series": s.label, "config": f"{s.folder}/{row['config']}",
                             "upstreams": row["upstreams"], "layers": s.depth, "interface": row["interface"],
                             "models": len(ups), "upstream_params": sum(params[_key(u)] for u in ups),
                             "note": DEPTH_NOTE if s.axis == "depth" else "",
                             **{k: v for k, v in row.items() if k not in ("config", "upstreams", "interface")}})
        if per_seed:
            numbers, display = summarise_seeds(per_seed)
            write_study_outputs(numbers, display, out_dir, metric, higher_is_better, seeds, list(select or {}))
    if failures:
        failed = [f"{folder}/{name}" for folder, err in failures for name in err.failed]
        raise SweepFailed(f"scaling study: {len(failed)} run(s) failed"
                          + (f" (the finished rows are in {out_dir / TABLE_MD})" if per_seed else "") + ": "
                          + "; ".join(str(err) for _, err in failures), numbers, failed)
    return numbers


def write_study_outputs(numbers: list[dict], display: list[dict], out_dir: Path, metric: str,
                        higher_is_better: bool, seeds: Sequence[int], selected: Sequence[str] = ()) -> None:
    """scaling.csv (numbers), scaling.md (the metric split's columns as mean ± std, and the values chosen on
    dev for the `selected` keys) and scaling.png."""
    split = metric.split("_", 1)[0]
    metric_columns = [k for k in display[0] if k.startswith(f"{split}_") and isinstance(display[0][k], str)]
    md_rows = [{"axis": d["axis"], "upstreams": d["upstreams"],
                "layers": d["layers"] if d["layers"] is not None else "all", "interface": d["interface"],
                "models": d["models"], "upstream params": d["upstream_params"], "seeds": d["seeds"],
                **{f"{k} (chosen on dev)": d.get(k) for k in selected},
                **{k: d.get(k) for k in metric_columns}, "note": d["note"]} for d in display]
    write_table(numbers, None, out_dir / TABLE_CSV)
    direction = "higher" if higher_is_better else "lower"
    text = (markdown_table(md_rows) +
            f"\nMetric columns: mean ± sample std over the seeds {', '.join(map(str, seeds))} ({split} split; "
            f"{metric} {direction} is better). upstream params: the upstreams' weights their hidden states are "
            "computed with (Upstream.num_parameters()), summed over the row's upstreams; layers: hidden states "
            f"kept. Rows of axis `depth` are a {DEPTH_NOTE}: the first k hidden states of one model, which was "
            f"trained at full depth. Figure: {FIGURE}.\n")
    write_atomic(out_dir / TABLE_MD, text)
    plot_scaling(numbers, metric, out_dir / FIGURE, higher_is_better)


# ---------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------
def _mean_std(row: dict, metric: str) -> tuple[float, float]:
    mean, std = row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan)
    return float(mean), 0.0 if std is None or math.isnan(std) else float(std)


def plot_scaling(numbers: list[dict], metric: str, png_path, higher_is_better: bool = True) -> Path:
    """Left: metric against the number of fused models (a marker per subset with its seed std, a line through
    the mean over the subsets of each size). Right: metric against upstream parameters (log scale): the size
    and depth series as lines, depth ones dashed and labelled DEPTH_NOTE; model subsets as unjoined markers."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    interfaces = list(dict.fromkeys(r["interface"] for r in numbers))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(interfaces)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 6))
    for i, name in enumerate(interfaces):
        colour = colours[name]
        subsets = [r for r in numbers if r["axis"] == "models" and r["interface"] == name]
        if subsets:
            shift = (i - (len(interfaces) - 1) / 2) * 0.06  # interfaces side by side at each model count
            for r in subsets:
                mean, std = _mean_std(r, metric)
                left.errorbar(r["models"] + shift, mean, yerr=std, fmt="o", color=colour, alpha=0.5, capsize=3)
                right.errorbar(r["upstream_params"], mean, yerr=std, fmt="x", color=colour, alpha=0.5, capsize=3)
            counts = sorted({r["models"] for r in subsets})
            averages = [sum(_mean_std(r, metric)[0] for r in subsets if r["models"] == n)
                        / sum(1 for r in subsets if r["models"] == n) for n in counts]
            left.plot([n + shift for n in counts], averages, "-", color=colour, label=f"{name} (mean over subsets)")
            right.plot([], [], "x", color=colour, label=f"{name}: model subsets")
        for axis in ("size", "depth"):
            for label in dict.fromkeys(r["series"] for r in numbers if r["axis"] == axis):
                line = sorted((r for r in numbers if r["axis"] == axis and r["series"] == label
                               and r["interface"] == name), key=lambda r: r["upstream_params"])
                if not line:
                    continue
                xs = [r["upstream_params"] for r in line]
                means, stds = zip(*(_mean_std(r, metric) for r in line))
                text = f"{name}: {label}" + (f", first k layers ({DEPTH_NOTE})" if axis == "depth" else " sizes")
                right.errorbar(xs, means, yerr=stds, fmt="s-" if axis == "size" else "^--", color=colour,
                               capsize=3, label=text)
    best = "higher" if higher_is_better else "lower"
    left.set_xlabel("number of fused models")
    left.set_xticks(sorted({r["models"] for r in numbers if r["axis"] == "models"}) or [1])
    right.set_xlabel("upstream parameters")
    right.set_xscale("log")
    for ax in (left, right):
        ax.set_ylabel(f"{metric} ({best} is better; bars: std over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # below the plot, so it never hides a point
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    left.set_title("metric vs number of models", fontsize=10)
    right.set_title("metric vs upstream parameters", fontsize=10)
    fig.suptitle("speechfuse scaling study", fontsize=11)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png_path)
    return png_path


__all__ = ["scaling_study", "parse_depths", "parse_sizes", "plan_series", "model_subsets", "check_and_count",
           "plot_scaling", "DEPTH_NOTE"]
