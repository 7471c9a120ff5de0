"""What `predict` returns for one clip, one record type per kind of task (each Task names its own through
`Task.prediction_type` and builds them in `Task.predictions`).

Every record has `to_dict()` (a JSONL row) and `csv_cells()` (the cells of a CSV row beyond id / path /
duration; the `prediction` cell is what `Task.scored_prediction` reads back to score against a reference).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch


@dataclass
class Prediction:
    id: str
    path: Optional[str]
    duration: float  # seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def csv_cells(self) -> dict[str, Any]:
        return {}


@dataclass
class Transcription(Prediction):
    text: str = ""

    def csv_cells(self) -> dict[str, Any]:
        return {"prediction": self.text}


@dataclass
class LanguageTranscription(Transcription):
    """A multilingual transcript; `language` is the language the model named (None: the model has no
    language token, or it emitted none)."""
    language: Optional[str] = None

    def csv_cells(self) -> dict[str, Any]:
        return {"prediction": self.text, "language": self.language or ""}


@dataclass
class Classification(Prediction):
    label: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)

    def csv_cells(self) -> dict[str, Any]:
        return {"prediction": self.label, **{f"prob_{k}": v for k, v in self.probabilities.items()}}


@dataclass(eq=False)  # a tensor field: dataclass equality would compare it elementwise
class SpeakerEmbedding(Prediction):
    """A verification model's utterance embedding: the x-vector, L2-normalised ([E] float32), so the cosine
    score of two utterances is the dot product of their embeddings."""
    embedding: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "duration": self.duration, "embedding": self.embedding.tolist()}

    def csv_cells(self) -> dict[str, Any]:
        return {f"emb_{i}": v for i, v in enumerate(self.embedding.tolist())}


__all__ = ["Prediction", "Transcription", "LanguageTranscription", "Classification", "SpeakerEmbedding"]
