"""Prune a trained fused model to a budget of upstream inference cost, retrain it, and report metric against cost.

    speechfuse prune runs/fused --budgets 0.25,0.5,0.75        # or --budget 0.5
    rows = prune_run("runs/fused", [0.25, 0.5, 0.75])

From a finished run folder RUN (config.yaml, checkpoints, metrics.json):

1. Importance of every (upstream, layer): the drop-one-layer ablation of speechfuse.fusion.importance applied to the
   run's best model with that upstream layer replaced by zeros, averaged over every utterance of the dev split,
   in one of two measures (`importance`): "loss" (default), the increase of the task's own loss (the trained
   head included); or "feature", the relative change of the fused features. Negative increases count as 0.
   This is used rather than the interface's learned layer weights (`describe()["layer_matrix"]`)
   because those live in the aligned space (after the aligner interpolated each model to a common layer
   count), exist only for some interfaces (none for hconv / chconv), and do not say how much the task needs
   a layer; the ablation works on the upstreams' own layers for every interface.
2. Cost of every (upstream, depth k): the upstream loaded with `max_layers=k` (it never runs the layers above)
   on a reference batch, the first `clips` dev utterances:
   - FLOPs, counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention) plus
     2 x frames x weight-matrix size for LSTM layers (which that counter leaves out); elementwise
     work and feature extraction (STFT) are not counted. Models run outside torch (speech-embedding runs in
     onnxruntime) count 0 FLOPs: prune them with cost="seconds";
   - seconds, the median of `repeat` timed forward passes after one warm-up (wall clock, this machine).
   A model's cost is that of running it up to its deepest kept layer; a model with no kept layer is not run
   (cost 0). The full cost is every upstream at full depth.
3. Selection (`choose_depths`): the depths (k_1..k_N), k_m = 0 meaning model m is skipped, that maximise the
   summed importance of the kept layers among those whose cost is at most budget x the full cost (`cost`
   picks FLOPs or seconds); ties go to the cheaper choice. Found exactly by merging per-model
   (cost, importance) Pareto frontiers, not greedily. Every layer below a kept model's depth is kept and fed
   to the interface: running the model to depth k computes them anyway, so dropping them saves no upstream
   cost. Drop-one scores are summed as if they added up; they rank layers, they do not predict the retrained
   metric, which is why every budget is retrained and reported.
4. Each budget's configuration (the run's config with each kept upstream at `max_layers: k`, skipped
   upstreams removed, everything else the same: interface, aligner options, head, steps, seed) is trained
   from scratch into RUN/prune/budget=<b>/ by speechfuse.training.runner, reading the run's feature cache folder. A
   truncated upstream is a cache entry of its own, filled by slicing the full upstream's cached states
   (`seed_truncated_cache`: the first k hidden states are equal bit for bit), so no upstream runs again.
   Each is an ordinary run folder whose model/ saves, loads and predicts like any other; a skipped upstream
   is not part of it at all.
5. RUN/prune/results.md and results.csv (budget, kept depth per model, FLOPs and seconds fractions, dev / test
   main metric, difference to the full model) and pareto.png (test metric against each cost fraction).
   RUN/prune/measurements.json keeps the importance and costs; a second `prune` of the same run reuses them
   and does not train again the budgets whose run folder is finished.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from speechfuse.errors import ConfigError, SpeechfuseError
from speechfuse.io import write_atomic
from speechfuse.training.runfolder import RunFolder, check_same_config

PRUNE_DIR = "prune"
MEASUREMENTS = "measurements.json"
COSTS = ("flops", "seconds")
IMPORTANCES = ("loss", "feature")


class PruneError(SpeechfuseError):
    """A run cannot be pruned as asked (not finished, fine-tuned upstreams, budget below any layer's cost)."""


# ---------------------------------------------------------------------------------------------
# the selection rule
# ---------------------------------------------------------------------------------------------
def check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ConfigError(f"prune budget must be a fraction of the full upstream cost in (0, 1], got {budget!r}")
    return float(budget)


def choose_depths(scores: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], budget: float) -> list[int]:
    """The depth to run each model to (0: skipped) within budget x the full cost, maximising kept importance.

    `scores[m][l]`: importance of layer l of model m (negative counts as 0); `costs[m][k]`: cost of running model m
    to depth k, k = 0..L_m (`costs[m][0]` = 0, `costs[m][-1]` the full model). Keeping depth k keeps layers 0..k-1.
    Exact: every depth combination is covered by merging per-model Pareto frontiers of (cost, importance);
    among the best, the cheapest wins. PruneError if no layer with positive importance fits the budget.
    """
    budget = check_budget(budget)
    if len(scores) != len(costs) or any(len(c) != len(s) + 1 for s, c in zip(scores, costs)):
        raise ConfigError("choose_depths: costs[m] must have one entry per depth 0..L_m for every model of scores")
    full = sum(c[-1] for c in costs)
    limit = budget * full * (1 + 1e-9)  # a budget of 1 always fits the full model despite float sums
    frontier: list[tuple[float, float, tuple[int, ...]]] = [(0.0, 0.0, ())]
    for row, cost in zip(scores, costs):
        gains = [0.0]
        for value in row:
            gains.append(gains[-1] + max(float(value), 0.0))
        merged = [(c + cost[k], v + gains[k], depths + (k,)) for c, v, depths in frontier
                  for k in range(len(cost)) if c + cost[k] <= limit]
        frontier = _pareto(merged)
    cost_of, value, depths = max(frontier, key=lambda p: (p[1], -p[0]))
    if value <= 0:
        cheapest = min((c[1], m) for m, c in enumerate(costs))
        raise PruneError(f"budget {budget:g} keeps no layer that matters: the cheapest single layer (model {cheapest[1]}, "
                         f"layer 0) costs {cheapest[0] / full:.3g} of the full upstream cost, or no layer that fits has "
                         "positive importance; give a larger budget")
    return list(depths)


def _pareto(points: list[tuple[float, float, tuple[int, ...]]]) -> list[tuple[float, float, tuple[int, ...]]]:
    """The points no other point beats on both cost (lower) and value (higher); equal value: the cheaper one."""
    kept: list[tuple[float, float, tuple[int, ...]]] = []
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if not kept or point[1] > kept[-1][1]:
            kept.append(point)
    return kept


# ---------------------------------------------------------------------------------------------
# measuring: cost per (model, depth) and importance per (model, layer)
# ---------------------------------------------------------------------------------------------
def recurrent_flops(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of a recurrent op (shapes in, as FlopCounterMode passes them): every weight matrix is applied once
    per frame (2 FLOPs per multiply-add). The input's leading dims are the frames ([B,T,*] either way round,
    [T,*] unbatched, [sum of T,*] packed). aten.lstm / gru / rnn_* and _cudnn_rnn hold their weight matrices in
    a list (the 2-D shapes in it; hidden states are 3-D); aten.mkldnn_rnn_layer, one LSTM layer on the CPU,
    takes W_ih and W_hh as its 2nd and 3rd arguments."""
    frames = math.prod(args[0][:-1])
    if isinstance(args[1], torch.Size) and len(args[1]) == 2:  # mkldnn_rnn_layer
        matrices = args[1:3]
    else:
        matrices = [s for arg in args[1:] if isinstance(arg, (list, tuple))
                    for s in arg if isinstance(s, torch.Size) and len(s) == 2]
    return 2 * frames * sum(math.prod(shape) for shape in matrices)


def count_flops(upstream: torch.nn.Module, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> int:
    """FLOPs of one forward pass (FlopCounterMode + recurrent_flops for the LSTM ops it leaves out)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {op: recurrent_flops for op in (aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu, aten._cudnn_rnn,
                                              aten.mkldnn_rnn_layer)}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.inference_mode():
        upstream(wavs, wav_lengths)
    return int(counter.get_total_flops())


def time_forward(upstream: torch.nn.Module, wavs: torch.Tensor, wav_lengths: torch.Tensor, repeat: int) -> float:
    """Median wall-clock seconds of `repeat` forward passes after one warm-up."""
    times = []
    with torch.inference_mode():
        upstream(wavs, wav_lengths)
        for _ in range(repeat):
            start = time.perf_counter()
            upstream(wavs, wav_lengths)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_costs(upstreams: Sequence[dict[str, Any]], wavs: torch.Tensor, wav_lengths: torch.Tensor,
                  repeat: int = 5, device: str = "cpu") -> dict[str, list[list[float]]]:
    """{"flops": [[0, f(1), ..., f(L_m)] per model], "seconds": [...]}: each upstream ({"spec", "options"})
    loaded at every depth k with max_layers=k, one copy at a time (a large model need not fit L times), run on
    `device`."""
    from speechfuse.fusion.upstream import load_upstream

    wavs, wav_lengths = wavs.to(device), wav_lengths.to(device)
    flops: list[list[float]] = []
    seconds: list[list[float]] = []
    for u in upstreams:
        depth = load_upstream(u["spec"], **u["options"]).num_layers
        flops.append([0])
        seconds.append([0.0])
        for k in range(1, depth + 1):
            up = load_upstream(u["spec"], **{**u["options"], "max_layers": k}).to(device)
            flops[-1].append(count_flops(up, wavs, wav_lengths))
            seconds[-1].append(time_forward(up, wavs, wav_lengths, repeat))
            del up
    return {"flops": flops, "seconds": seconds}


def layer_scores(model, loader) -> dict[str, list[list[float]]]:
    """Drop-one-layer importance of every upstream layer, `[N][L_m]`, averaged per utterance over `loader`'s batches
    (a FusionTask and its dev loader; speechfuse.fusion.importance.layer_importance), in both measures:
    "loss": the increase of the task's loss (the trained head included) when the layer is zeroed;
    "feature": the relative change of the fused features, ||f' - f|| / ||f|| (what interface.json reports)."""
    from speechfuse.fusion.importance import layer_importance

    model.eval()
    totals: dict[str, list[list[float]]] = {}
    count = 0
    for batch in loader:
        batch = model.transfer_batch_to_device(batch, model.device, 0)
        states = batch.states if batch.states is not None else model.frontend.extract(batch.wavs, batch.wav_lengths)

        def loss(feats: torch.Tensor, lengths: torch.Tensor, targets=batch.targets) -> torch.Tensor:
            return model.task.loss(*model.head(feats, lengths), targets)

        n = len(batch.utts)
        for kind, loss_fn in (("loss", loss), ("feature", None)):
            result = layer_importance(model.frontend, states, loss_fn=loss_fn, store=False)["importance"]
            total = totals.setdefault(kind, [[0.0] * len(row) for row in result])
            totals[kind] = [[t + n * v for t, v in zip(trow, row)] for trow, row in zip(total, result)]
        count += n
    if not count:
        raise PruneError("the run's dev split is empty; importance needs dev utterances")
    return {kind: [[v / count for v in row] for row in total] for kind, total in totals.items()}


# ---------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------
def finished_run(run_dir: str | os.PathLike) -> RunFolder:
    try:
        return RunFolder(run_dir).require_finished("prune")
    except ConfigError as err:
        raise PruneError(str(err)) from None


def measure(run_dir: Path, clips: int = 8, repeat: int = 5, device: str = "cpu") -> dict[str, Any]:
    """Importance and costs of a finished run on `device` (see the module docstring); written to
    RUN/prune/measurements.json and read back from there on a second call with the same clips / repeat / device
    (a file from before devices were recorded counts as cpu)."""
    from speechfuse.data.loader import FusionData, load_splits, resolve_cache_dir
    from speechfuse.data.manifest import clip_limit
    from speechfuse.serving.evaluate import load_run
    from speechfuse.cache.extract import load_audio_batch

    path = run_dir / PRUNE_DIR / MEASUREMENTS
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if (stored["clips"], stored["repeat"], stored.get("device", "cpu")) != (clips, repeat, device):
            raise PruneError(f"{path} was measured with clips={stored['clips']}, repeat={stored['repeat']}, "
                             f"device={stored.get('device', 'cpu')}; prune again with those, or delete the file to "
                             "measure again")
        return stored
    model, cfg = load_run(run_dir)
    model.to(device)
    prune_dir = run_dir / PRUNE_DIR
    prune_dir.mkdir(parents=True, exist_ok=True)
    dev = load_splits(cfg, prune_dir, model.task.target_field, which=("dev",),
                      max_clip=clip_limit(model.frontend.upstreams))["dev"]
    data = FusionData(cfg, model.task, {"dev": dev}, model.frontend, resolve_cache_dir(cfg))
    data.setup("validate")
    with torch.no_grad():
        scores = layer_scores(model, data.loader("dev"))
    reference = dev[:clips]
    wavs, wav_lengths = load_audio_batch(reference, model.frontend.sample_rate)
    upstreams = [{"spec": u.spec, "options": dict(u.options)} for u in cfg.upstreams]
    result = {"clips": clips, "repeat": repeat, "device": device, "reference": [u.id for u in reference],
              "reference_seconds": float(wav_lengths.sum()) / model.frontend.sample_rate,
              "torch_threads": torch.get_num_threads(), "models": [_short(u.name) for u in model.frontend.upstreams],
              "upstreams": upstreams, "importance": scores,
              **measure_costs(upstreams, wavs, wav_lengths, repeat, device)}
    write_atomic(path, json.dumps(result, indent=2))
    return result


def measured_device(run_dir: Path) -> str | None:
    """The device RUN/prune/measurements.json was measured on (cpu for a file from before devices were
    recorded); None when nothing was measured yet."""
    path = run_dir / PRUNE_DIR / MEASUREMENTS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("device", "cpu")
    except (ValueError, AttributeError):
        return None  # measure() reports the damaged file


def _short(name: str) -> str:
    """A model's name for tables: the last part of a hub id or folder (hf:/models/wavlm-base-plus -> wavlm-base-plus)."""
    return name.rstrip("/").rsplit("/", 1)[-1].removeprefix("hf:")


def pruned_config(cfg, depths: Sequence[int], full_depths: Sequence[int], cache_dir: Path | None,
                  device: str | None = None):
    """The run's config with upstream m at max_layers=depths[m] (left out when 0; options unchanged at full
    depth), reading the feature cache in `cache_dir` (None: off), trained on `device` (None: as the run was)."""
    from speechfuse.config import config_from_dict, config_to_dict, device_train_options

    data = config_to_dict(cfg)
    upstreams = []
    for u, k, full in zip(data["upstreams"], depths, full_depths):
        if k > 0:
            upstreams.append(u if k == full else {**u, "options": {**u["options"], "max_layers": k}})
    data["upstreams"] = upstreams
    data["cache"]["dir"] = str(cache_dir) if cache_dir is not None else "off"
    if device is not None:
        data["train"].update(device_train_options(device))
    return config_from_dict(data, source="(pruned config)")


def seed_truncated_cache(cfg, depths: Sequence[int], full_depths: Sequence[int], cache_dir: Path | None,
                         utts: Sequence[Any], accelerator: str | None = None) -> int:
    """Fill the cache entries of the truncated upstreams (0 < depth < full) from the full upstreams' entries,
    for a pruned run trained on `accelerator` (None: the run's own train.accelerator).

    An upstream run to depth k returns the full model's first k hidden states bit for bit (tests/
    test_upstream_truncate.py), so slicing the cached states stores exactly what extracting them again would;
    the pruned runs then train without running any upstream. Utterances the full entry lacks are left to the
    ordinary extraction. Returns how many (utterance, upstream) results were copied."""
    from speechfuse.cache.store import FeatureCache, utterance_key
    from speechfuse.cache.extract import _store, duration_batches, resolve_amp
    from speechfuse.fusion.hidden import HiddenStates
    from speechfuse.fusion.upstream import load_upstream

    if cache_dir is None:
        return 0
    cache = FeatureCache.from_config(cache_dir, cfg.cache)
    # the autocast a training run extracts under is part of the entries' keys: slicing stores what extracting
    # would only when the full run's and the pruned run's are the same
    def run_autocast(accelerator: str):
        return resolve_amp("auto", torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available()
                                                else "cpu"))

    autocast = run_autocast(cfg.train.accelerator)
    if accelerator is not None and run_autocast(accelerator) != autocast:
        return 0
    storage = {"float16": torch.float16, "bfloat16": torch.bfloat16}[cache.dtype]
    copied = 0
    for u, k, full in zip(cfg.upstreams, depths, full_depths):
        if not 0 < k < full:
            continue
        source = cache.entry(load_upstream(u.spec, **u.options), autocast=autocast)
        target = cache.entry(load_upstream(u.spec, **{**u.options, "max_layers": k}), autocast=autocast)
        with target.writing(0):
            todo = target.missing(utts)
            absent = {id(x) for x in source.missing(todo)}
            todo = [x for x in todo if id(x) not in absent]
            writer = target.writer(0, cache.shard_bytes, cache.shard_seconds)
            try:
                for batch in duration_batches([x.duration for x in todo], cfg.train.batch_seconds):
                    chunk = [todo[i] for i in batch]
                    states = source.read(chunk)
                    _store(writer, target, HiddenStates(states.hidden[:k], states.lengths, states.frame_rate, states.name),
                           [utterance_key(x, cache.audio_key) for x in chunk], None, storage)
            finally:
                writer.finalise()
        copied += len(todo)
    return copied


def prune_run(run_dir: str | os.PathLike, budgets: Sequence[float], cost: str = "flops", importance: str = "loss",
              clips: int = 8, repeat: int = 5, device: str | None = None,
              launcher: Any = None) -> list[dict[str, Any]]:
    """Measure, select, retrain and report (see the module docstring); returns the table's rows, full model first.
    `device` (cpu, cuda, cuda:N) runs the importance pass, the timed upstreams and the retraining; None: the device
    of the stored measurements, else cuda when available, else cpu.
    A non-default cost or importance is part of the run folders' and the report files' names
    (budget=0.5,cost=seconds,importance=feature/, results_seconds_feature.md).

    launcher (speechfuse.experiments.launcher.LauncherOptions): the measurement runs as one job (so that
    `seconds` are measured where the runs will run) and the retrainings as a job array, through the sweep's
    launcher pool (jobs recorded in RUN/prune/launcher/jobs.json; a rerun collects the finished ones). A
    retraining that fails there does not stop the others: the table is written from the finished budgets and a
    PruneError names the failed ones."""
    from speechfuse.data.loader import load_splits, resolve_cache_dir
    from speechfuse.experiments.report import write_table
    from speechfuse.training.runner import train

    budgets = [check_budget(b) for b in budgets]
    if not budgets:
        raise ConfigError("prune: give at least one budget, e.g. --budget 0.5")
    if cost not in COSTS:
        raise ConfigError(f"prune: cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if importance not in IMPORTANCES:
        raise ConfigError(f"prune: importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if clips < 1 or repeat < 1:
        raise ConfigError(f"prune: clips and repeat must be at least 1, got {clips} and {repeat}")
    from speechfuse.config import device_train_options

    if device is not None:
        device_train_options(device)  # refuses anything but cpu, cuda, cuda:N before any work
    run = finished_run(run_dir)
    run_dir = run.path
    cfg = run.read_config()
    tuned = [u.spec for u in cfg.upstreams if u.options.get("trainable")]
    if tuned:
        raise PruneError(f"{run_dir}: upstream(s) {tuned} were fine-tuned; pruning retrains from frozen upstreams "
                         "(and their feature cache) only")
    where = device or measured_device(run_dir) or ("cuda" if torch.cuda.is_available() else "cpu")
    if launcher is not None and not (run_dir / PRUNE_DIR / MEASUREMENTS).is_file():
        from speechfuse.experiments.launcher import run_jobs

        run_jobs(launcher, run_dir / PRUNE_DIR, "speechfuse-prune-measure",
                 [(measure, (run_dir, clips, repeat, where))])
    measured = measure(run_dir, clips, repeat, where)
    if cost == "flops":
        uncounted = [m for m, row in zip(measured["models"], measured["flops"]) if row[-1] == 0]
        if uncounted:
            raise PruneError(f"no FLOPs could be counted for {uncounted} (it runs outside torch); prune with "
                             "--cost seconds")
    task = run.read_task()
    metric = task.main_metric
    cache_dir = resolve_cache_dir(cfg)
    scores = measured["importance"][importance]
    # the non-default choices name the run folders and report files, so that several selections sit side by side
    choices = [f"{key}={value}" for key, value, default in (("cost", cost, "flops"), ("importance", importance, "loss"))
               if value != default]
    full_depths = [len(row) for row in scores]
    utts = [u for split in load_splits(cfg, run_dir / PRUNE_DIR, task.target_field).values() for u in split]
    rows = [_row("full", "", full_depths, full_depths, measured, metric,
                 run.read_metrics(), run_dir.name)]
    planned: dict[tuple[int, ...], tuple[Path, Any]] = {}  # two budgets that keep the same layers share one run
    chosen = []
    for budget in budgets:
        depths = choose_depths(scores, measured[cost], budget)
        chosen.append((budget, depths))
        if tuple(depths) not in planned:
            folder = run_dir / PRUNE_DIR / f"budget={budget:g}{''.join(',' + c for c in choices)}"
            pruned = pruned_config(cfg, depths, full_depths, cache_dir, device)
            try:
                check_same_config(pruned, folder)
            except ConfigError as err:
                raise PruneError(f"{folder} was trained with other upstream layers than budget {budget:g} selects now "
                                 f"({err}); delete it to train it again") from None
            planned[tuple(depths)] = (folder, pruned)
    trained: dict[tuple[int, ...], dict] = {}
    for depths, (folder, pruned) in planned.items():
        if RunFolder(folder).is_finished:
            trained[depths] = RunFolder(folder).read_metrics()
            continue
        seed_truncated_cache(cfg, list(depths), full_depths, cache_dir, utts, pruned.train.accelerator)
        if launcher is None:
            trained[depths] = train(pruned, folder)
    failed: dict[str, str] = {}
    if launcher is not None and len(trained) < len(planned):
        failed = _train_as_jobs(launcher, run_dir, planned, trained, train)
    for budget, depths in chosen:
        if tuple(depths) in trained:
            rows.append(_row(f"{budget:g}", importance, depths, full_depths, measured, metric, trained[tuple(depths)],
                             f"{PRUNE_DIR}/{planned[tuple(depths)][0].name}"))
    for row in rows:
        row[f"test_{metric}_minus_full"] = _minus(row.get(f"test_{metric}"), rows[0].get(f"test_{metric}"))
    out, suffix = run_dir / PRUNE_DIR, "".join("_" + c.split("=")[1] for c in choices)
    write_table(rows, out / f"results{suffix}.md", out / f"results{suffix}.csv")
    plot_pareto(rows, out / f"pareto{suffix}.png", metric, task.higher_is_better, title=" + ".join(measured["models"]))
    if failed:
        raise PruneError(f"prune: {len(failed)} retraining(s) failed (the others are in {out / f'results{suffix}.md'}; "
                         "run the same command again to resubmit the failed ones): " + "; ".join(failed.values()))
    return rows


def _train_as_jobs(launcher: Any, run_dir: Path, planned: dict[tuple[int, ...], tuple[Path, Any]],
                   trained: dict[tuple[int, ...], dict], train_fn: Any) -> dict[str, str]:
    """Train the planned runs not in `trained` as jobs through the sweep's launcher pool; fills `trained` and returns
    {folder name: what failed} for the others."""
    from speechfuse.experiments.launcher import ClusterPool

    by_name = {folder.name: (depths, folder, pruned) for depths, (folder, pruned) in planned.items()
               if depths not in trained}
    failed: dict[str, str] = {}

    def run_of(combo: dict) -> tuple[str, Any, Path]:
        _, folder, pruned = by_name[combo["run"]]
        return combo["run"], pruned, folder

    def finished(name: str, folder: Path, metrics: dict | None) -> None:
        trained[by_name[name][0]] = metrics if metrics is not None else RunFolder(folder).read_metrics()

    def failure(combo: dict, name: str, folder: Path, err: Exception) -> None:
        failed[name] = f"{folder}: {err}"
        print(f"speechfuse prune: {failed[name]}; the other budgets go on", file=sys.stderr, flush=True)

    # no extraction jobs: seed_truncated_cache filled the truncated entries from the full run's cache already, and a
    # job extracts what it still lacks itself
    pool = ClusterPool(launcher, run_dir / PRUNE_DIR, None, run_of, train_fn, finished, failure, command="prune")
    pool.train([{"run": name} for name in by_name])
    return failed


def _row(budget: str, importance: str, depths: Sequence[int], full: Sequence[int], measured: dict, metric: str,
         metrics: dict, run: str) -> dict[str, Any]:
    row: dict[str, Any] = {"budget": budget, "importance": importance, "kept": " ".join(f"{name}:{k}/{n}" for name, k, n in
                                                              zip(measured["models"], depths, full))}
    for cost in COSTS:
        whole = sum(c[-1] for c in measured[cost])
        row[f"{cost}_fraction"] = sum(c[k] for c, k in zip(measured[cost], depths)) / whole if whole else None
    for split in ("dev", "test"):
        if metric in metrics.get(split, {}):
            row[f"{split}_{metric}"] = metrics[split][metric]
    row[f"test_{metric}_minus_full"] = None  # filled in once the full row is known
    row["run"] = run
    return row


def _minus(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def plot_pareto(rows: Sequence[dict[str, Any]], png_path: Path, metric: str, higher_is_better: bool,
                title: str = "") -> Path:
    """Test (else dev) metric against the FLOPs fraction and the seconds fraction, one point per row, the
    non-dominated points joined (the Pareto front)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from speechfuse.experiments.report import save_figure

    split = "test" if any(f"test_{metric}" in r for r in rows) else "dev"
    key = f"{split}_{metric}"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, cost in zip(axes, COSTS):
        points = [(r[f"{cost}_fraction"], r[key], r["budget"]) for r in rows
                  if r.get(f"{cost}_fraction") is not None and r.get(key) is not None]
        for x, y, label in points:
            ax.scatter(x, y, color="tab:red" if label == "full" else "tab:blue", zorder=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front, best = [], None
        for x, y, _ in sorted(points, key=lambda p: (p[0], -p[1] if higher_is_better else p[1])):
            if best is None or (y > best if higher_is_better else y < best):
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.plot(*zip(*front), color="tab:blue", alpha=0.5)
        ax.set_xlabel(f"upstream {'FLOPs (counted)' if cost == 'flops' else 'seconds (measured)'}, fraction of full")
        ax.set_ylabel(f"{split} {metric} ({'higher' if higher_is_better else 'lower'} is better)")
        ax.set_xlim(0, 1.05)
        ax.grid(alpha=0.3)
    fig.suptitle(f"pruned {title}: metric against upstream cost (labels: budget)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, png_path)
    return png_path


__all__ = ["prune_run", "choose_depths", "seed_truncated_cache", "check_budget", "measure", "measure_costs", "layer_scores", "count_flops",
           "recurrent_flops", "pruned_config", "plot_pareto", "PruneError"]
