"""Tasks: targets, head, loss, decoding and metrics for one kind of problem.

    task = get_task("asr")            # or "classify"; head options: get_task("asr", hidden_size=256)
    task.fit(train_utts)              # vocabulary / label map from the training rows
    head = task.build_head(input_dim) # forward(features [B,T,D], lengths [B]) -> (out, out_lengths)
    loss = task.loss(*head(feats, lens), task.encode(batch.utts))
    preds = task.predict(*head(feats, lens))
    task.metrics(preds, task.references(utts))
    records = task.collect(*head(feats, lens), utts)   # per batch; then, over a whole split:
    task.evaluate(records, "dev", run_dir)             # default: metrics(predictions, references)
    task.utterance_errors(predictions, references)     # per-utterance (errors, totals) of utterance_metric
    Task.from_state(task.state())     # JSON round trip for a run folder
    task.fit_scoring(records of task.scoring_utterances(train_utts))   # after training (verify: AS-norm cohort)
    task.tensors() / task.load_tensors(tensors, source)                # safetensors beside the weights

What a trained model of the task serves (every consumer asks the task; none compares its name):
    task.prediction_type                # the record `predict` returns per clip (speechfuse.tasks.predictions); None: none
    task.predictions(out, out_lengths, clips)   # raw head outputs -> one record per clip (clips: id/path/duration)
    task.prediction_columns()           # CSV columns of `predict --out x.csv` beyond id,path,duration,prediction,error
    task.scored_prediction(row)         # the string `metrics` scores from a written output row (None: not scored)
    task.scores_trials                  # True: a model can serve `verify` (trial_scores, cohort_scores, threshold)
    task.output_axes                    # export: output names -> dynamic axes (CTC logits have a frame axis)
    task.serving_outputs(out, second)   # what predict and export hand out (verify: the L2-normalised embedding)
    task.describe(target)               # one line for the model card
    task.main_metric, task.higher_is_better, task.average(values)   # model selection; per-language / per-fold
                                        # values are averaged with `average` (unweighted mean by default)
    task.table_cells(corpus, data, test_metrics)    # [TableCell] of the paper table: a paper column only
                                        # for a corpus the data name (`paper_columns`), else "<task> <metric> on <data>"

Each task declares its head options as a pydantic model (`Task.Options`, see `task_options(name)`); the
config's `downstream` section is validated against it, so a wrong key or type names the key.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from speechfuse.errors import ConfigError
from speechfuse.options import ComponentOptions, check_options
from speechfuse.registry import Registry
from speechfuse.data.manifest import Utterance
from speechfuse.tasks.predictions import Prediction

TASKS: Registry = Registry("task", ConfigError, ["speechfuse.tasks.asr", "speechfuse.tasks.classify",
                                                "speechfuse.tasks.multilingual", "speechfuse.tasks.verify"])
register_task = TASKS.register


class TableCell(NamedTuple):
    """One value a run adds to the paper table: its column, the test metric key, the group averaged before the
    column's last mean ("" for none; an ML-SUPERB monolingual language), and the rule stated under the table."""

    column: str
    metric: str
    group: str
    rule: str


class TaskOptions(ComponentOptions):
    """A task's head options: every subclass forbids unknown keys and types its values (leniently: a quoted
    number is read as a number)."""


class Task:
    name: str
    target_field: str
    main_metric: str
    higher_is_better: bool
    # the metric that per-utterance (errors, totals) reproduce as sum(errors) / sum(totals) (or 1 minus it,
    # when higher is better); None: the task's metric is not a sum over utterances (verify: EER over trials)
    utterance_metric: str | None = None
    # what a budgeted search's pruner compares at each dev evaluation (`prune_on: auto`): the main metric, or
    # "metric_then_loss" (ties broken by the dev loss) where the metric stays flat early in training (CTC's WER on
    # its all-blank plateau), or "dev_loss"
    early_signal: str = "metric"
    Options: type[TaskOptions] = TaskOptions
    prediction_type: type[Prediction] | None = None
    prediction_field: str = "prediction"  # the JSONL key of the scored prediction in a `predict` output row
    scores_trials: bool = False
    output_axes: dict[str, dict[int, str]] = {"out": {0: "batch"}, "out_lengths": {0: "batch"}}
    # corpus recorded in the data (the `corpus` manifest column the corpus adapters write) -> its paper column
    # corpus -> (paper table column, the rule it is computed by)
    paper_columns: dict[str, tuple[str, str]] = {}

    def __init__(self, **options: Any) -> None:
        self.options = check_options(self.Options, options, f"task {self.name!r}").model_dump()

    def unseen_targets(self, utts: list[Utterance]) -> dict[str, list[Utterance]]:
        """Targets of `utts` the fitted task cannot score, each with its utterances (none by default:
        ASR maps unseen characters to <unk>)."""
        return {}

    def fit(self, train_utts: list[Utterance]) -> "Task":
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    def encode(self, utts: list[Utterance]) -> Any:
        raise NotImplementedError

    def build_head(self, input_dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, out_lengths: torch.Tensor, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, out: torch.Tensor, out_lengths: torch.Tensor) -> list[str]:
        raise NotImplementedError

    def metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        raise NotImplementedError

    # -- evaluation of a whole split: per-batch records, then one score ------------------------------
    def collect(self, out: torch.Tensor, out_lengths: torch.Tensor, utts: list[Utterance]) -> list[Any]:
        """What evaluation keeps of one batch, one record per utterance: (prediction, reference) here;
        a task that scores pairs of utterances (verify) keeps embeddings instead."""
        return list(zip(self.predict(out, out_lengths), self.references(utts)))

    def evaluate(self, records: list[Any], split: str, run_dir: Any = None) -> dict[str, float]:
        """Metrics of a split from every record `collect` returned for it. `run_dir`, when given, is where
        a task may write what it scored with (verify: generated trial lists)."""
        return self.metrics([p for p, _ in records], [r for _, r in records])

    def utterance_errors(self, predictions: list[str], references: list[str]) -> tuple[list[int], list[int]]:
        """Per utterance: errors and totals of `utterance_metric` (here: 1 when the prediction differs from
        the reference, out of 1)."""
        self._check_pairs(predictions, references)
        return [int(str(p) != str(r)) for p, r in zip(predictions, references)], [1] * len(references)

    # -- scoring state fitted after training, with the best checkpoint (verify: the AS-norm cohort) ----
    def scoring_utterances(self, train_utts: list[Utterance]) -> list[Utterance]:
        """Training utterances the runner scores with the best checkpoint after training and hands to
        `fit_scoring` as `collect` records (none by default)."""
        return []

    def fit_scoring(self, records: list[Any]) -> None:
        """Fit what scoring needs from the `collect` records of `scoring_utterances` (nothing by default)."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """Fitted state too large for JSON, saved as safetensors with the weights (checkpoint and model
        folder); none by default."""
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Take back what `tensors` saved; `source` (the file) names it in errors."""
        if tensors:
            raise ConfigError(f"{source}: task {self.name!r} stores no tensors, found {sorted(tensors)}")

    # -- serving a trained model: predict, verify, export, model card, paper table --------------------
    def require_predictions(self, command: str) -> None:
        """One ConfigError, before any input is read, when this task has no per-clip prediction."""
        if self.prediction_type is None:
            raise ConfigError(f"{command}: task {self.name!r} has no per-clip prediction type; this model cannot "
                              "be used with predict")

    def predictions(self, out: torch.Tensor, out_lengths: torch.Tensor,
                    clips: list[dict[str, Any]]) -> list[Prediction]:
        """One `prediction_type` record per clip from the head's raw outputs; `clips` holds each clip's
        id, path and duration (the record's first fields)."""
        self.require_predictions("predict")
        raise NotImplementedError

    def prediction_columns(self) -> list[str]:
        """CSV columns of a `predict` output beyond id, path, duration, prediction and error (none here)."""
        return []

    def scored_prediction(self, row: dict[str, Any]) -> str | None:
        """The prediction `metrics` compares with a reference, from a written output row (JSONL: the
        `prediction_field` key; CSV: the `prediction` cell); None for a failure."""
        if row.get("error") not in (None, ""):
            return None
        value = row.get(self.prediction_field)
        return str(value if value is not None else row.get("prediction") or "")

    def serving_outputs(self, out: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's outputs as predict and export hand them out (traced into exports: tensor ops only)."""
        return out, second

    def describe(self, target: str | None = None) -> str:
        """One line for the model card: what the model does (`target`: the manifest field it was trained on)."""
        return f"task {self.name}"

    def average(self, values: list[float]) -> float:
        """How per-language or per-fold values of the main metric combine: the unweighted mean (ML-SUPERB's
        macro CER over languages, SUPERB's IEMOCAP accuracy over folds)."""
        if not values:
            raise ConfigError(f"task {self.name!r}: no values to average")
        return sum(values) / len(values)

    def table_cells(self, corpus: str | None, data: str, metrics: dict[str, Any]) -> list["TableCell"]:
        """What a run of this task adds to the paper table: the paper's column when the data record one of
        `paper_columns`' corpora; otherwise a column named after the task and `data`."""
        metric = f"test_{self.main_metric}"
        if corpus in self.paper_columns:
            column, rule = self.paper_columns[corpus]
            return [TableCell(column, metric, "", rule)]
        return [TableCell(f"{self.name} {self.main_metric} on {data}", metric, "",
                          f"test {self.main_metric}, mean over seeds, then over the data")]

    def references(self, utts: list[Utterance]) -> list[str]:
        """The reference strings `metrics` compares predictions with, one per utterance."""
        return [self._target_of(u) for u in utts]

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def from_state(state: dict[str, Any]) -> "Task":
        if not isinstance(state, dict) or "name" not in state:
            raise ConfigError(f"Task.from_state: expected a dict with a 'name' key, got {state!r:.200}")
        cls = TASKS.get(state["name"])
        return cls._from_state({**state, "options": get_task(state["name"], **state.get("options", {})).options})

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "Task":
        raise NotImplementedError

    # -- shared helpers ---------------------------------------------------------------------------
    def _require_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise ConfigError(f"task {self.name!r}: call fit(train_utts) before {what}")

    def _target_of(self, utt: Utterance) -> str:
        value = getattr(utt, self.target_field)
        if value is None or not str(value).strip():
            raise ConfigError(f"task {self.name!r}: utterance {utt.id!r} ({utt.path}) has no "
                              f"{self.target_field!r}; validate the manifest with target={self.target_field!r}")
        return str(value)

    @staticmethod
    def _check_pairs(predictions: list[str], references: list[str]) -> None:
        if len(predictions) != len(references):
            raise ConfigError(f"metrics: {len(predictions)} predictions but {len(references)} references")
        if not references:
            raise ConfigError("metrics: no predictions to score")


def get_task(name: str, **options: Any) -> Task:
    """A new, unfitted task by name ('asr', 'classify', 'verify'); options are validated by its Options model."""
    return TASKS.get(name)(**options)


def task_options(name: str) -> type[TaskOptions]:
    """The pydantic model of a task's head options (what the config's `downstream` section may hold)."""
    return TASKS.get(name).Options


def check_targets_known(task: Task, splits: dict[str, list[Utterance]], manifests: dict[str, Any]) -> None:
    """Before any training: every dev/test target must be one the fitted task can score.

    Raises ConfigError naming each split's manifest, the unseen targets and a few of their utterances."""
    problems = []
    for split, utts in splits.items():
        if split == "train":
            continue
        unseen = task.unseen_targets(utts)
        if unseen:
            listing = ", ".join(f"{target!r} ({len(us)} row(s), e.g. id {us[0].id!r})"
                                for target, us in sorted(unseen.items()))
            problems.append(f"data.{split} ({manifests.get(split)}): {task.target_field}(s) never seen in "
                            f"training: {listing}")
    if problems:
        raise ConfigError(f"task {task.name!r} cannot score these rows, nothing was trained:\n  " +
                          "\n  ".join(problems) + "\nAdd training examples of these "
                          f"{task.target_field}s to data.train, or remove the rows from that split")


def list_tasks() -> list[str]:
    return sorted(TASKS.names())


__all__ = ["Task", "TaskOptions", "TableCell", "get_task", "list_tasks", "register_task", "task_options",
           "check_targets_known"]
