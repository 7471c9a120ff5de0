"""Speaker verification: an x-vector head trained as speaker classification with a margin softmax,
scored by the cosine similarity of embeddings over a trial list (EER, minDCF).

Head (features [B,T,D], lengths [B] -> embeddings [B,E], cosines [B,S]):
  input norm   a LayerNorm over D on every frame (option `input_norm`, on by default);
  frame level  TDNN layers: dilated Conv1d + ReLU (+ dropout), each keeping the frame count ("same"
               padding) and re-zeroing the frames past each utterance's length, so an utterance's
               embedding does not depend on what it was batched with;
  pooling      statistics pooling: mean and standard deviation over the VALID frames only;
  embedding    one Linear layer (the x-vector is this layer's output, before any non-linearity);
  classifier   cosines between the L2-normalised embedding and one learned vector per training speaker.
The second head output is those cosines (not frame lengths: the embedding is one vector per utterance).

Loss: AM-softmax (additive margin on the cosine, `s * (cos θ_y - m)`) or AAM-softmax (additive angular
margin, `s * cos(θ_y + m)`), cross-entropy over the training speakers.

Defaults and where they come from (s3prl `downstream/sv_voxceleb1/configs/amsoftmax.yaml` and `model.py`,
SUPERB's ASV head):
  kernel_sizes (5, 3, 3, 1, 1), dilations (1, 2, 3, 1, 1)  SUPERB's XVector TDNN stack (context sizes / dilations)
  channels (512, 512, 512, 512, 1500)                     SUPERB: 512 (`input_dim`) and `agg_dim: 1500`;
                                                          (SMALL_CHANNELS below is speechfuse's CPU default)
  embed_dim 512                                            SUPERB's utterance layer width (`input_dim`)
  loss "am", scale 30, margin 0.4                          SUPERB's `ObjectiveLoss: AMSoftmaxLoss`, s 30, m 0.4
  loss "aam": scale 15, margin 0.3                         SUPERB's AAMSoftmaxLoss config
  dropout 0.0                                              SUPERB's `dropout_p: 0.0`
  SUPERB trains with AdamW at lr 1e-4 (set train.lr in the config; not a head option).
Differences from SUPERB, on purpose: SUPERB's TDNN has no padding (it drops 14 frames) and its connector
Linear(D -> 512) sits before the first TDNN (here the first TDNN maps D directly: the two linear maps
compose to one); SUPERB trains through an extra Linear+ReLU after the embedding and scores the ReLU of
the embedding layer, while here the margin softmax sees the embedding that is scored. SUPERB has no
input normalisation; speechfuse adds a LayerNorm by default because without it the margin softmax
collapsed on FSDD (every embedding the same, loss stuck at s*m + log S) on Whisper tiny.en features.
The speechfuse default (`VerifyTask()`) is a small CPU head: channels (128, 128, 128, 128, 384) and
embed_dim 128; give the SUPERB sizes in `downstream:` for paper-comparable runs.

Trials: `dev_trials` / `test_trials` name a trial list in the VoxCeleb1 format (speechfuse.data.trials;
in a config, relative paths resolve against the config file's folder, like data paths), whose names are
the manifest's ids. A split
without one is scored on trials generated from its own utterances and speakers (every target pair, or
`max_target_trials` of them, plus as many non-target pairs, seeded by `trial_seed`), written to
RUN_DIR/trials_<split>.txt when the runner scores the split.
Score normalisation (`score_norm: asnorm`, off by default): adaptive symmetric s-norm (AS-norm1 of
Matejka et al. 2017): each side's score is standardised by the mean and std of its `cohort_top` (default
200) highest cosines with a cohort. The cohort (`cohort`):
  speaker_means  (default) one vector per training speaker: the mean of that speaker's L2-normalised
                 training embeddings, re-normalised. WeSpeaker's VoxCeleb recipe does this (the speaker-mean
                 x-vectors of the training set, vox2_dev, top 300);
  utterances     the training utterances' own embeddings (what SpeechBrain's VoxCeleb cosine-scoring
                 recipe normalises against);
  class_vectors  the margin softmax's learned class vectors, one per training speaker (no extra pass).
For the two embedding cohorts, at most `cohort_size` training utterances (default 10000; null: all) are
embedded: a sample seeded by `trial_seed`, spread evenly over the training speakers. They are embedded once,
by the runner, with the best checkpoint after training (`scoring_utterances` / `fit_scoring`), and the
cohort [C, E] is saved with that checkpoint and in the model folder's model.safetensors (`task.cohort`), so
`evaluate`, `FusedModel.verify` and `speechfuse verify` all normalise against the same cohort. While training,
an embedding cohort does not exist yet: dev scoring (and so the choice of the best checkpoint) uses raw
cosines; the final dev and test scores, and the dev threshold, are normalised. With `class_vectors` every
dev scoring is normalised.
Metrics: eer (the main metric, lower is better), min_dcf_0.01, min_dcf_0.05 (C_miss = C_fa = 1), fractions.

Decision threshold: every scoring of the dev split records the score at its EER (`eer_threshold`) as
`task.threshold`; the runner's last dev scoring is of the best checkpoint, so the saved model's task state
carries that checkpoint's dev EER threshold, on the same (normalised, with asnorm) score scale that
`FusedModel.verify` computes. A task that never scored dev has threshold None.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from speechfuse.data.manifest import Utterance
from speechfuse.data.trials import check_trials, generate_trials, read_trials, unique_trials, write_trials
from speechfuse.errors import ConfigError, ShapeError
from speechfuse.metrics.verification import eer_threshold, verification_metrics
from speechfuse.tasks.predictions import Prediction, SpeakerEmbedding
from speechfuse.tasks import Task, TaskOptions, register_task
from speechfuse.tasks.asr import check_lengths

SMALL_CHANNELS = (128, 128, 128, 128, 384)
MARGIN_DEFAULTS = {"am": (30.0, 0.4), "aam": (15.0, 0.3)}  # loss -> (scale, margin), SUPERB's configs


class VerifyOptions(TaskOptions):
    """The head's options (the config's `downstream` section); see the module doc for the defaults."""

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("dev_trials", "test_trials")  # resolved like data paths

    channels: list[int] = Field(default_factory=lambda: list(SMALL_CHANNELS), min_length=1)
    kernel_sizes: list[int] = Field(default_factory=lambda: [5, 3, 3, 1, 1], min_length=1)
    dilations: list[int] = Field(default_factory=lambda: [1, 2, 3, 1, 1], min_length=1)
    embed_dim: int = Field(128, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    input_norm: bool = True
    """LayerNorm over the feature dimension before the first TDNN layer (not in SUPERB, see above)."""
    loss: Literal["am", "aam"] = "am"
    scale: Optional[float] = Field(None, gt=0)
    """null: the loss's SUPERB default (am 30, aam 15)."""
    margin: Optional[float] = Field(None, ge=0)
    """null: the loss's SUPERB default (am 0.4, aam 0.3)."""
    dev_trials: Optional[str] = None
    test_trials: Optional[str] = None
    max_target_trials: Optional[int] = Field(None, ge=1)
    trial_seed: int = 0
    score_norm: Literal["none", "asnorm"] = "none"
    """asnorm: adaptive symmetric normalisation against `cohort`."""
    cohort: Literal["speaker_means", "utterances", "class_vectors"] = "speaker_means"
    """AS-norm's cohort: training speakers' mean embeddings, training utterance embeddings, or class vectors."""
    cohort_size: Optional[int] = Field(10000, ge=1)
    """Training utterances embedded for an embedding cohort (seeded, spread over speakers); null: all."""
    cohort_top: int = Field(200, ge=2)
    """AS-norm's adaptive cohort: the this-many highest cohort scores of each side (capped at the cohort)."""

    @model_validator(mode="after")
    def _same_layer_count(self) -> "VerifyOptions":
        if not len(self.channels) == len(self.kernel_sizes) == len(self.dilations):
            raise ValueError(f"channels, kernel_sizes and dilations need one entry per TDNN layer; got "
                             f"{len(self.channels)}, {len(self.kernel_sizes)}, {len(self.dilations)}")
        if min(self.channels) < 1 or min(self.dilations) < 1:
            raise ValueError("channels and dilations must all be >= 1")
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd (centred context keeps the frame count), got {self.kernel_sizes}")
        if self.loss == "aam" and self.margin is not None and self.margin >= math.pi / 2:
            raise ValueError(f"an angular margin must be below pi/2, got {self.margin}")
        return self


def valid_mask(lengths: torch.Tensor, frames: int, device: torch.device) -> torch.Tensor:
    """[B,T] True on each utterance's valid frames."""
    return torch.arange(frames, device=device)[None, :] < lengths.to(device)[:, None]


def stats_pool(features: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """[B,T,C], [B] -> [B,2C]: mean and (population) standard deviation over the valid frames only."""
    mask = valid_mask(lengths, features.shape[1], features.device)[..., None].to(features.dtype)
    count = lengths.to(features.device, features.dtype)[:, None]
    mean = (features * mask).sum(1) / count
    var = (((features - mean[:, None]) ** 2) * mask).sum(1) / count
    return torch.cat([mean, torch.sqrt(var + eps)], dim=-1)


class VerifyHead(nn.Module):
    """features [B,T,D], lengths [B] -> (embeddings [B,E], cosines with the speaker vectors [B,S])."""

    def __init__(self, input_dim: int, num_speakers: int, channels: Sequence[int], kernel_sizes: Sequence[int],
                 dilations: Sequence[int], embed_dim: int, dropout: float = 0.0, input_norm: bool = True) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(input_dim) if input_norm else nn.Identity()
        sizes = [input_dim, *channels]
        self.tdnn = nn.ModuleList(
            nn.Conv1d(sizes[i], sizes[i + 1], k, dilation=d, padding=d * (k - 1) // 2)
            for i, (k, d) in enumerate(zip(kernel_sizes, dilations)))
        self.dropout = nn.Dropout(dropout)
        self.embedding = nn.Linear(2 * sizes[-1], embed_dim)
        self.speakers = nn.Parameter(torch.empty(num_speakers, embed_dim))
        nn.init.xavier_normal_(self.speakers)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3:
            raise ShapeError(f"VerifyHead: features must be [B,T,D], got shape {tuple(features.shape)}")
        check_lengths(lengths, features.shape[0], features.shape[1], "VerifyHead")
        keep = valid_mask(lengths, features.shape[1], features.device)[:, None, :].to(features.dtype)
        x = self.input_norm(features).transpose(1, 2) * keep  # [B,C,T]
        for conv in self.tdnn:
            x = self.dropout(F.relu(conv(x))) * keep
        return self.embedding(stats_pool(x.transpose(1, 2), lengths))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed(features, lengths)
        cosines = F.normalize(embeddings, dim=-1) @ F.normalize(self.speakers, dim=-1).T
        return embeddings, cosines


def margin_logits(cosines: torch.Tensor, targets: torch.Tensor, loss: str, scale: float, margin: float
                  ) -> torch.Tensor:
    """Scaled logits with the margin applied to each row's target class.

    am:  s * (cos θ_y - m)                  (Wang et al. 2018, "Additive Margin Softmax")
    aam: s * cos(θ_y + m), for θ_y + m <= π  (Deng et al. 2019, ArcFace); past π, where cos(θ + m) would
         rise again, the common linear continuation cos θ - m sin m keeps the target logit decreasing."""
    cosines = cosines.float().clamp(-1.0, 1.0)
    target = cosines.gather(1, targets[:, None])
    if loss == "am":
        shifted = target - margin
    else:
        theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
        shifted = torch.where(theta + margin <= math.pi, torch.cos(theta + margin), target - margin * math.sin(margin))
    return scale * cosines.scatter(1, targets[:, None], shifted)


def as_norm(scores: torch.Tensor, cohort: torch.Tensor, enrol_rows: list[int], test_rows: list[int], top: int
            ) -> torch.Tensor:
    """Adaptive symmetric score normalisation (AS-norm1 of Matejka et al., Interspeech 2017):
        s' = ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2
    where mu_x, sd_x are the mean and standard deviation of the `top` highest cohort scores of side x.
    `cohort` [N, C] holds each utterance's scores against the cohort (here: the training speakers' vectors)."""
    best = cohort.topk(min(top, cohort.shape[1]), dim=1).values
    mean, std = best.mean(1), best.std(1, unbiased=False).clamp_min(1e-6)
    e, t = torch.tensor(enrol_rows), torch.tensor(test_rows)
    return ((scores - mean[e]) / std[e] + (scores - mean[t]) / std[t]) / 2


@register_task
class VerifyTask(Task):
    name = "verify"
    target_field = "speaker"
    main_metric = "eer"
    higher_is_better = False

    Options = VerifyOptions
    prediction_type = SpeakerEmbedding
    scores_trials = True
    output_axes = {"embedding": {0: "batch"}, "speaker_cosines": {0: "batch"}}
    paper_columns = {"voxceleb1": ("VoxCeleb1 EER", "test EER over the trial list, mean over seeds")}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.speakers: list[str] = []
        self.threshold: Optional[float] = None  # the dev EER threshold, set by evaluate(..., "dev")
        self.cohort: Optional[torch.Tensor] = None  # [C,E] L2-normalised embedding cohort (fit_scoring)
        self._trials: dict[tuple, list] = {}  # (split, utterance ids) -> trials, made once and kept

    # -- serving: embeddings per clip; trials are scored by `verify` -----------------------------------
    def serving_outputs(self, out: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The L2-normalised embedding (the cosine score of two clips is then a dot product) and the
        cosines with the training speakers' vectors."""
        return F.normalize(out, dim=-1), second

    def predictions(self, out: torch.Tensor, out_lengths: torch.Tensor,
                    clips: list[dict[str, Any]]) -> list[Prediction]:
        embeddings = self.serving_outputs(out.float(), out_lengths)[0].cpu()
        return [SpeakerEmbedding(**clip, embedding=e.clone()) for clip, e in zip(clips, embeddings)]

    def prediction_columns(self) -> list[str]:
        return [f"emb_{i}" for i in range(self.options["embed_dim"])]

    def scored_prediction(self, row: dict[str, Any]) -> Optional[str]:
        """None: an embedding has no per-clip reference; verification is scored over trials."""
        return None

    def describe(self, target: Optional[str] = None) -> str:
        threshold = (f"decision threshold {self.threshold:.4f}, the dev EER point" if self.threshold is not None
                     else "no decision threshold")
        return (f"speaker verification (cosine scores of {self.options['embed_dim']}-dim embeddings, trained on "
                f"{len(self.speakers)} speakers; {threshold})")

    @property
    def is_fitted(self) -> bool:
        return bool(self.speakers)

    def fit(self, train_utts: list[Utterance]) -> "VerifyTask":
        speakers = sorted({self._target_of(u) for u in train_utts})
        if len(speakers) < 2:
            raise ConfigError(f"verify task: the training set has {len(speakers)} speaker(s) {speakers}; "
                              "training speaker classification needs at least 2")
        self.speakers = speakers
        return self

    def encode(self, utts: list[Utterance]) -> torch.Tensor:
        """[B] int64 training-speaker indices; -1 for a speaker not in training (dev/test speakers may be
        new: they are only scored through trials, never through the classification loss)."""
        self._require_fitted("encode")
        index = {s: i for i, s in enumerate(self.speakers)}
        return torch.tensor([index.get(str(u.speaker), -1) if u.speaker else -1 for u in utts], dtype=torch.int64)

    def build_head(self, input_dim: int) -> VerifyHead:
        self._require_fitted("build_head")
        o = self.options
        return VerifyHead(input_dim, len(self.speakers), o["channels"], o["kernel_sizes"], o["dilations"],
                          o["embed_dim"], o["dropout"], o["input_norm"])

    def loss(self, out: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(out_lengths.device)
        if bool((targets < 0).any()):
            raise ConfigError("verify task: a training utterance's speaker is not one of the training speakers")
        default_scale, default_margin = MARGIN_DEFAULTS[self.options["loss"]]
        scale = self.options["scale"] if self.options["scale"] is not None else default_scale
        margin = self.options["margin"] if self.options["margin"] is not None else default_margin
        return F.cross_entropy(margin_logits(out_lengths, targets, self.options["loss"], scale, margin), targets)

    def predict(self, out: torch.Tensor, out_lengths: torch.Tensor) -> list[str]:
        """Closed-set identification: the training speaker whose vector is closest to each embedding."""
        self._require_fitted("predict")
        return [self.speakers[i] for i in out_lengths.argmax(-1).cpu().tolist()]

    def metrics(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Closed-set identification accuracy (verification is scored by `evaluate`)."""
        self._check_pairs(predictions, references)
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}

    # -- verification over a whole split -----------------------------------------------------------
    def collect(self, out: torch.Tensor, out_lengths: torch.Tensor, utts: list[Utterance]) -> list[Any]:
        """(id, speaker, embedding, cosines with the training speakers' vectors) per utterance."""
        embeddings, cohort = out.detach().float().cpu(), out_lengths.detach().float().cpu()
        return [(u.id, u.speaker, embeddings[i], cohort[i]) for i, u in enumerate(utts)]

    def trials_for(self, split: str, records: list[Any]) -> list:
        """The split's trial list (read, or generated from the records' ids and speakers), kept per split."""
        key = (split, tuple(sorted(r[0] for r in records)))
        if key not in self._trials:
            path = self.options.get(f"{split}_trials")
            if path:
                trials = unique_trials(read_trials(path), str(path))  # a repeated line counts once
                check_trials(trials, [r[0] for r in records], str(path))
            else:
                utts = [Utterance(id=r[0], path="", speaker=r[1]) for r in records]
                trials = generate_trials(utts, "speaker", self.options["max_target_trials"],
                                         self.options["trial_seed"])
            self._trials[key] = trials
        return self._trials[key]

    def evaluate(self, records: list[Any], split: str, run_dir: Optional[Path] = None) -> dict[str, float]:
        """Cosine scores of the split's trials -> eer, min_dcf_0.01, min_dcf_0.05; generated trials are
        written to RUN_DIR/trials_<split>.txt when `run_dir` is given."""
        trials = self.trials_for(split, records)
        if run_dir is not None and not self.options.get(f"{split}_trials"):
            write_trials(trials, Path(run_dir) / f"trials_{split}.txt")
        index = {r[0]: i for i, r in enumerate(records)}
        embeddings = torch.stack([r[2] for r in records])
        if self.options["cohort"] == "class_vectors" and self.options["score_norm"] == "asnorm":
            cohort = torch.stack([r[3] for r in records])  # the head's cosines with the class vectors
        else:  # None while training with an embedding cohort: raw cosines (see the module doc)
            cohort = self.cohort_scores(embeddings, required=False)
        scores = self.trial_scores(embeddings, cohort, [index[t.enrol] for t in trials],
                                   [index[t.test] for t in trials]).numpy()
        labels = [t.label for t in trials]
        if split == "dev":
            self.threshold = eer_threshold(scores, labels)
        return verification_metrics(scores, labels)

    def trial_scores(self, embeddings: torch.Tensor, cohort: Optional[torch.Tensor], enrol_rows: list[int],
                     test_rows: list[int]) -> torch.Tensor:
        """Cosine score of each (enrol_rows[k], test_rows[k]) pair of `embeddings` [N,E], AS-normalised
        against `cohort` [N,C] (each row's scores with the cohort: `cohort_scores`) unless it is None."""
        embeddings = F.normalize(embeddings.float(), dim=-1)
        scores = (embeddings[enrol_rows] * embeddings[test_rows]).sum(-1)
        if cohort is not None:
            scores = as_norm(scores, cohort.float(), enrol_rows, test_rows, self.options["cohort_top"])
        return scores

    def cohort_scores(self, embeddings: torch.Tensor, class_vectors: Optional[torch.Tensor] = None,
                      required: bool = True) -> Optional[torch.Tensor]:
        """[N,C] cosines of `embeddings` [N,E] with the AS-norm cohort (`class_vectors` [S,E], the head's
        `speakers`, for cohort class_vectors); None without score normalisation. An embedding cohort not
        built yet is an error, or None (raw scores) with required=False: what dev scoring does in training."""
        if self.options["score_norm"] != "asnorm":
            return None
        unit = F.normalize(embeddings.float(), dim=-1)
        if self.options["cohort"] == "class_vectors":
            if class_vectors is None:
                raise ConfigError("verify task: cohort class_vectors needs the head's speaker vectors")
            return unit @ F.normalize(class_vectors.detach().float().to(unit.device), dim=-1).T
        if self.cohort is None:
            if required:
                raise ConfigError(f"verify task: score_norm asnorm with cohort {self.options['cohort']} needs the "
                                  "cohort of training embeddings, which is built when training finishes; this model "
                                  "has none. Finish its run (`speechfuse train` on the same folder), or set "
                                  "downstream.cohort: class_vectors")
            return None
        return unit @ self.cohort.to(unit.device).T

    # -- the embedding cohort: chosen from the training set, embedded with the best checkpoint ----------
    @property
    def needs_cohort(self) -> bool:
        """AS-norm against training embeddings (speaker_means / utterances), built after training."""
        return self.options["score_norm"] == "asnorm" and self.options["cohort"] != "class_vectors"

    def scoring_utterances(self, train_utts: list[Utterance]) -> list[Utterance]:
        """The training utterances whose embeddings make the AS-norm cohort (none without an embedding
        cohort): at most `cohort_size`, a `trial_seed`-seeded sample taking speakers in turn."""
        if not self.needs_cohort:
            return []
        rng = random.Random(self.options["trial_seed"])
        by_speaker: dict[str, list[Utterance]] = {}
        for u in sorted(train_utts, key=lambda u: u.id):
            by_speaker.setdefault(self._target_of(u), []).append(u)
        queues = []
        for speaker in sorted(by_speaker):
            rng.shuffle(by_speaker[speaker])
            queues.append(by_speaker[speaker])
        size = self.options["cohort_size"] or len(train_utts)
        chosen: list[Utterance] = []
        depth = 0
        while len(chosen) < size and any(depth < len(q) for q in queues):
            chosen += [q[depth] for q in queues if depth < len(q)][: size - len(chosen)]
            depth += 1
        return sorted(chosen, key=lambda u: u.id)

    def fit_scoring(self, records: list[Any]) -> None:
        """The cohort from `collect` records of `scoring_utterances`: speaker means or the utterances."""
        if not records:
            return
        unit = F.normalize(torch.stack([r[2] for r in records]).float(), dim=-1)
        if self.options["cohort"] == "speaker_means":
            speakers = sorted({str(r[1]) for r in records})
            rows = {s: [i for i, r in enumerate(records) if str(r[1]) == s] for s in speakers}
            unit = F.normalize(torch.stack([unit[rows[s]].mean(0) for s in speakers]), dim=-1)
        self.cohort = unit.contiguous()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.cohort is None else {"cohort": self.cohort}

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        unknown = sorted(set(tensors) - {"cohort"})
        cohort = tensors.get("cohort")
        if unknown or (cohort is not None and (cohort.dim() != 2 or cohort.shape[1] != self.options["embed_dim"]
                                               or not bool(torch.isfinite(cohort).all()))):
            raise ConfigError(f"{source}: the verify task's saved tensors are damaged (unknown {unknown}, cohort "
                              f"{None if cohort is None else tuple(cohort.shape)}; expected [C, "
                              f"{self.options['embed_dim']}]); save the model again from its run folder")
        self.cohort = None if cohort is None else cohort.float()
        if self.needs_cohort and self.cohort is None:
            raise ConfigError(f"{source} has no AS-norm cohort (downstream.cohort: {self.options['cohort']}): it is "
                              "built from the training set when training finishes. Finish the run (`speechfuse "
                              "train` on the same folder again), or set downstream.cohort: class_vectors")

    def state(self) -> dict[str, Any]:
        state = {"name": self.name, "options": dict(self.options), "speakers": list(self.speakers)}
        if self.threshold is not None:  # absent before dev was scored (task.json is written before training)
            state["threshold"] = self.threshold
        return state

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "VerifyTask":
        task = cls(**state.get("options", {}))
        speakers = state.get("speakers")
        if not isinstance(speakers, list) or len(speakers) < 2:
            raise ConfigError("verify task state: 'speakers' must be a list of at least 2 speakers; the run "
                              "folder's task.json is damaged")
        task.speakers = [str(s) for s in speakers]
        threshold = state.get("threshold")
        if threshold is not None and (not isinstance(threshold, (int, float)) or not math.isfinite(threshold)):
            raise ConfigError(f"verify task state: 'threshold' must be a finite number or absent, got {threshold!r}; "
                              "the model's config.json is damaged")
        task.threshold = None if threshold is None else float(threshold)
        return task
