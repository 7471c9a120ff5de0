"""Utterance classification: mean over valid frames, optional MLP, linear to classes.

Labels are strings; the label map is the sorted set of training labels. A label unseen in training
cannot be scored as a class the head has: `unseen_targets` lists them (the runner checks dev/test with it
before training) and `encode` raises ConfigError. Accuracy and macro-F1
(the unweighted mean of per-class F1 over every label seen in references or predictions) are fractions.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from speechfuse.data.manifest import Utterance
from speechfuse.errors import ConfigError, ShapeError
from speechfuse.tasks.predictions import Classification, Prediction
from speechfuse.tasks import Task, TaskOptions, register_task
from speechfuse.tasks.asr import check_lengths


def masked_mean(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B,T,D], [B] -> [B,D]: the mean over each utterance's valid frames only."""
    valid = torch.arange(features.shape[1], device=features.device)[None, :] < lengths.to(features.device)[:, None]
    summed = features.masked_fill(~valid[..., None], 0.0).sum(1)
    return summed / lengths.to(features.device, features.dtype)[:, None]


class ClassifyHead(nn.Module):
    """features [B,T,D], lengths [B] -> logits [B,C], lengths [B] (the pooled frame counts)."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden_dim:
            layers += [nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden_dim or input_dim, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if features.dim() != 3:
            raise ShapeError(f"ClassifyHead: features must be [B,T,D], got shape {tuple(features.shape)}")
        check_lengths(lengths, features.shape[0], features.shape[1], "ClassifyHead")
        return self.classifier(masked_mean(features, lengths)), lengths


def macro_f1(predictions: list[str], references: list[str]) -> float:
    labels = sorted(set(references) | set(predictions))
    scores = []
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        fp = sum(p == label and r != label for p, r in zip(predictions, references))
        fn = sum(p != label and r == label for p, r in zip(predictions, references))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


class ClassifyOptions(TaskOptions):
    """The head's options (the config's `downstream` section)."""

    hidden_dim: Optional[int] = Field(None, ge=1)
    """Width of one hidden ReLU layer after pooling; null: a linear classifier."""
    dropout: float = Field(0.0, ge=0, lt=1)


@register_task
class ClassifyTask(Task):
    name = "classify"
    hub_pipeline_tag = "audio-classification"  # the model card's pipeline_tag
    target_field = "label"
    main_metric = "accuracy"
    higher_is_better = True
    utterance_metric = "accuracy"  # 1 - sum(errors)/sum(totals), the default 0/1 errors
    Options = ClassifyOptions
    prediction_type = Classification
    prediction_field = "label"
    paper_columns = {"iemocap": ("IEMOCAP accuracy", "test accuracy, mean over seeds, then over folds")}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.labels: list[str] = []

    def predictions(self, out: torch.Tensor, out_lengths: torch.Tensor,
                    clips: list[dict[str, Any]]) -> list[Prediction]:
        probabilities = out.float().softmax(-1).cpu()
        return [Classification(**clip, label=label, probabilities=dict(zip(self.labels, row.tolist())))
                for clip, label, row in zip(clips, self.predict(out, out_lengths), probabilities)]

    def prediction_columns(self) -> list[str]:
        return [f"prob_{label}" for label in self.labels]

    def describe(self, target: Optional[str] = None) -> str:
        return f"utterance classification of `{target or self.target_field}` into {len(self.labels)} classes"

    @property
    def is_fitted(self) -> bool:
        return bool(self.labels)

    def fit(self, train_utts: list[Utterance]) -> "ClassifyTask":
        labels = sorted({self._target_of(u) for u in train_utts})
        if len(labels) < 2:
            raise ConfigError(f"classify task: the training set has {len(labels)} distinct label(s) {labels}; "
                              "classification needs at least 2")
        self.labels = labels
        return self

    def unseen_targets(self, utts: list[Utterance]) -> dict[str, list[Utterance]]:
        self._require_fitted("unseen_targets")
        known = set(self.labels)
        unseen: dict[str, list[Utterance]] = {}
        for u in utts:
            label = self._target_of(u)
            if label not in known:
                unseen.setdefault(label, []).append(u)
        return unseen

    def encode(self, utts: list[Utterance]) -> torch.Tensor:
        """[B] int64 class indices."""
        self._require_fitted("encode")
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = [(u.id, self._target_of(u)) for u in utts if self._target_of(u) not in index]
        if unknown:
            raise ConfigError(f"classify task: label(s) not seen in training: "
                              f"{', '.join(f'{lab!r} (utterance {uid!r})' for uid, lab in unknown[:10])}; "
                              f"known labels: {self.labels}. Add examples to the training manifest or remove "
                              "these rows")
        return torch.tensor([index[self._target_of(u)] for u in utts], dtype=torch.int64)

    def build_head(self, input_dim: int) -> ClassifyHead:
        self._require_fitted("build_head")
        return ClassifyHead(input_dim, len(self.labels), **self.options)

    def loss(self, out: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), targets.to(out.device))

    def predict(self, out: torch.Tensor, out_lengths: torch.Tensor) -> list[str]:
        self._require_fitted("predict")
        return [self.labels[i] for i in out.argmax(-1).cpu().tolist()]

    def metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        self._check_pairs(predictions, references)
        preds, refs = [str(p) for p in predictions], [str(r) for r in references]
        accuracy = sum(p == r for p, r in zip(preds, refs)) / len(refs)
        return {"accuracy": accuracy, "macro_f1": macro_f1(preds, refs)}

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "labels": list(self.labels)}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "ClassifyTask":
        task = cls(**state.get("options", {}))
        labels = state.get("labels")
        if not isinstance(labels, list) or len(labels) < 2:
            raise ConfigError("classify task state: 'labels' must be a list of at least 2 labels; the run "
                              "folder's task.json is damaged")
        task.labels = [str(x) for x in labels]
        return task
