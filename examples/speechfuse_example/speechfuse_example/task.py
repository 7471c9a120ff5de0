"""A task: utterance classification trained with label smoothing (a variant of the built-in `classify`)."""
from __future__ import annotations

import torch
from pydantic import Field
from torch.nn import functional as F

from speechfuse.tasks import register_task
from speechfuse.tasks.classify import ClassifyHead, ClassifyOptions, ClassifyTask


class SmoothedClassifyOptions(ClassifyOptions):  # hidden_dim and dropout come with ClassifyOptions
    label_smoothing: float = Field(0.1, ge=0, lt=1)


@register_task
class SmoothedClassifyTask(ClassifyTask):
    """`classify` whose cross-entropy spreads `label_smoothing` of each target's mass over all classes."""

    name = "example_smoothed_classify"
    Options = SmoothedClassifyOptions

    def build_head(self, input_dim: int) -> ClassifyHead:
        self._require_fitted("build_head")
        head = {k: v for k, v in self.options.items() if k != "label_smoothing"}
        return ClassifyHead(input_dim, len(self.labels), **head)

    def loss(self, out: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), targets.to(out.device), label_smoothing=self.options["label_smoothing"])
