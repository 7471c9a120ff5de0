"""Multilingual character CTC ASR, ML-SUPERB style (task `multilingual_asr`).

The same head, vocabulary and text normalisation as `asr` (one character vocabulary over every script,
NFC, case and punctuation options: see tasks/asr.py), plus:

- Every manifest row needs a `language` (any code: `en`, `eng`, `zh-CN`, ...).
- Per-language metrics over the rows of each language in the evaluated split: `cer_<lang>`, and
  `wer_<lang>` where the language separates words by spaces. Whether it does is decided by its primary
  code (lower-cased, up to the first "-" or "_"): a language in `no_space_languages` has no WER (by
  default Chinese, Japanese, Thai, Lao, Khmer and Burmese, by their ISO 639-1 and -3 codes).
- `cer_macro`: the unweighted mean of the per-language CERs (the ML-SUPERB headline, and this task's
  main metric: the best checkpoint has the lowest dev `cer_macro`); `wer_macro` likewise over the
  languages with a WER. `cer` is over all rows together; `wer` over the rows of space-separated languages.
- `few_shot_languages` (ML-SUPERB's reserved languages; configs/paper/mlsuperb_multi.yaml lists ESPnet's 20):
  `cer_normal` and `cer_few_shot` pool the utterances of the other languages and of these (edits over
  reference characters summed over utterances, as ESPnet's sclite scoring of its two subsets does).
- `language_token: true`: joint ASR + language ID. The target is one language token (`[en]`, one
  vocabulary entry per training language) followed by the transcript's characters; predictions read
  `[en] hello`. The predicted language is the first language token the model emits (none: wrong), and
  `lid_accuracy` is the fraction of rows whose predicted language is the reference's. Language tokens
  are removed from the text before CER/WER. A test language never seen in training cannot be predicted.

Per-language metrics need each reference's language: `references(utts)` returns `Reference` strings
(a plain `str` that also carries `.language`), or pass `languages=` to `metrics` yourself.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import jiwer
import torch

from speechfuse.data.manifest import Utterance
from speechfuse.errors import ConfigError
from speechfuse.tasks.predictions import LanguageTranscription, Prediction, Transcription
from speechfuse.tasks import TableCell, register_task
from speechfuse.tasks.asr import AsrOptions, AsrTask, edit_counts

NO_SPACE_LANGUAGES = ["zh", "zho", "cmn", "yue", "ja", "jpn", "th", "tha", "lo", "lao", "km", "khm", "my", "mya"]


class Reference(str):
    """A reference transcript that knows its language; everywhere else it is the plain string."""

    language: Optional[str]

    def __new__(cls, text: str, language: Optional[str]) -> "Reference":
        obj = super().__new__(cls, text)
        obj.language = language
        return obj

    def __reduce__(self):
        return Reference, (str(self), self.language)


def primary_code(language: str) -> str:
    """`zh-CN` -> `zh`, `EN_us` -> `en`: the part that decides the word-separation rule."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]


def lid_token(language: str) -> str:
    return f"[{language}]"


class MultilingualAsrOptions(AsrOptions):
    language_token: bool = False
    """Prepend a language token to every target (joint ASR + LID); reports lid_accuracy."""
    no_space_languages: list[str] = list(NO_SPACE_LANGUAGES)
    """Languages (primary codes) that do not separate words by spaces: no WER for them."""
    few_shot_languages: list[str] = []
    """Languages scored apart from the others: `cer_few_shot` pools their utterances, `cer_normal` the rest's."""


@register_task
class MultilingualAsrTask(AsrTask):
    name = "multilingual_asr"
    main_metric = "cer_macro"
    higher_is_better = False
    # the pooled CER over all rows: a macro average over languages is not a sum over utterances
    utterance_metric = "cer"
    Options = MultilingualAsrOptions
    paper_columns: dict[str, tuple[str, str]] = {}  # ML-SUPERB's columns depend on the test languages: table_cells

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.languages: list[str] = []  # training languages, in the order of their tokens

    def predictions(self, out: torch.Tensor, out_lengths: torch.Tensor,
                    clips: list[dict[str, Any]]) -> list[Prediction]:
        """Transcriptions; with a language token, LanguageTranscription: the text without the token and
        the language it names (None when the model emitted none)."""
        texts = self.predict(out, out_lengths)
        if not self.options["language_token"]:
            return [Transcription(**clip, text=text) for clip, text in zip(clips, texts)]
        return [LanguageTranscription(**clip, text=text, language=language)
                for clip, (language, text) in zip(clips, map(self.split_language, texts))]

    def prediction_columns(self) -> list[str]:
        return ["language"] if self.options["language_token"] else []

    def scored_prediction(self, row: dict[str, Any]) -> Optional[str]:
        text = super().scored_prediction(row)
        language = row.get("language")
        return f"{lid_token(language)} {text}".rstrip() if text is not None and language else text

    def describe(self, target: Optional[str] = None) -> str:
        languages = f"{len(self.languages)} language(s): {', '.join(self.languages[:10])}" + \
            (", ..." if len(self.languages) > 10 else "")
        joint = "; predicts the language with a language token" if self.options["language_token"] else ""
        return f"multilingual character CTC speech recognition ({len(self.vocab)} symbols, {languages}{joint})"

    def table_cells(self, corpus: Optional[str], data: str, metrics: dict[str, Any]) -> list[TableCell]:
        """ML-SUPERB's columns, each as ESPnet computes it; a generic column for data of another corpus.
        A run tested on one language fills the mono column with that language's pooled CER (WER when trained on
        word tokens, as ESPnet trains and scores cmn and jpn), grouped by language so a language's datasets are
        averaged before the languages (mono_superb_score.py). A run tested on several fills the multi column
        with the CER pooled over the normal languages' utterances and, when it lists few-shot languages, the
        few-shot column with theirs (run_multi.sh's split scoring)."""
        if corpus != "mlsuperb":
            return super().table_cells(corpus, data, metrics)
        languages = [k[len("test_cer_"):] for k in metrics if k.startswith("test_cer_")
                     and k not in ("test_cer_macro", "test_cer_normal", "test_cer_few_shot")
                     and metrics[k] not in (None, "")]
        if len(languages) == 1:
            unit = "wer" if self.options["token_type"] == "word" else "cer"
            return [TableCell("ML-SUPERB mono CER", f"test_{unit}_{languages[0]}", languages[0],
                              "per run its language's pooled test CER (WER for runs trained on word tokens: cmn, "
                              "jpn in ESPnet); mean over seeds, then over the datasets of a language, then over "
                              "the languages (ESPnet mono_superb_score.py)")]
        multi_rule = ("test CER pooled over the utterances of the normal languages (sclite, as ESPnet's few-shot "
                      "split scores them; all languages when a run lists no few_shot_languages), mean over seeds")
        if not self.options["few_shot_languages"]:
            return [TableCell("ML-SUPERB multi CER", "test_cer", "", multi_rule)]
        cells = [TableCell("ML-SUPERB multi CER", "test_cer_normal", "", multi_rule),
                 TableCell("ML-SUPERB few-shot CER", "test_cer_few_shot", "",
                           "test CER pooled over the utterances of the run's downstream.few_shot_languages, "
                           "mean over seeds")]
        # a test split holding only one of the two subsets fills one column
        return [c for c in cells if metrics.get(c.metric) not in (None, "")] or cells[:1]

    def _language_of(self, utt: Utterance) -> str:
        if utt.language is None or not str(utt.language).strip():
            raise ConfigError(f"task {self.name!r}: utterance {utt.id!r} ({utt.path}) has no 'language'; every "
                              "row of a multilingual manifest needs one (e.g. en, de, cmn)")
        return str(utt.language).strip()

    def unseen_targets(self, utts: list[Utterance]) -> dict[str, list[Utterance]]:
        """Called on dev/test before any training: a row without a language stops the run there (its
        metrics could not be computed) rather than at the first dev evaluation."""
        for u in utts:
            self._language_of(u)
        return {}

    def fit(self, train_utts: list[Utterance]) -> "MultilingualAsrTask":
        self.languages = sorted({self._language_of(u) for u in train_utts})
        super().fit(train_utts)
        if self.options["language_token"]:
            self.vocab += [lid_token(lang) for lang in self.languages]
        return self

    @property
    def _first_lid(self) -> int:
        return len(self.vocab) - len(self.languages) if self.options["language_token"] else len(self.vocab)

    def encode(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        targets, lengths = super().encode(utts)
        if not self.options["language_token"]:
            return targets, lengths
        index = {lang: self._first_lid + i for i, lang in enumerate(self.languages)}
        tokens = []
        for u in utts:
            lang = self._language_of(u)
            if lang not in index:
                raise ConfigError(f"task {self.name!r}: utterance {u.id!r} has language {lang!r}, which has no "
                                  f"language token (training languages: {', '.join(self.languages)})")
            tokens.append(index[lang])
        with_token = torch.cat([torch.tensor(tokens, dtype=torch.int64)[:, None], targets], dim=1)
        return with_token, lengths + 1

    def predict(self, out: torch.Tensor, out_lengths: torch.Tensor) -> list[str]:
        """Greedy CTC; with language tokens, `[lang] text` (the first language token emitted; the text
        without any language token)."""
        self._require_fitted("predict")
        if not self.options["language_token"]:
            return super().predict(out, out_lengths)
        best = out.argmax(-1).cpu()
        first_lid = self._first_lid
        texts = []
        for row, length in enumerate(out_lengths.cpu().tolist()):
            path = best[row, :length].tolist()
            ids = [t for i, t in enumerate(path) if (i == 0 or t != path[i - 1]) and t > 1]
            langs = [self.languages[t - first_lid] for t in ids if t >= first_lid]
            text = self.join([self.vocab[t] for t in ids if t < first_lid])
            texts.append(f"{lid_token(langs[0])} {text}".rstrip() if langs else text)
        return texts

    def references(self, utts: list[Utterance]) -> list[str]:
        return [Reference(self.normalize(self._target_of(u)), self._language_of(u)) for u in utts]

    def split_language(self, prediction: str) -> tuple[Optional[str], str]:
        """`[en] hello` -> ("en", "hello") for a training language's token; otherwise (None, prediction)."""
        for lang in self.languages:
            token = lid_token(lang)
            if prediction == token or prediction.startswith(token + " "):
                return lang, prediction[len(token):].strip()
        return None, prediction

    def has_spaces(self, language: str) -> bool:
        """Whether the language has a WER: it separates words by spaces, or the model outputs words."""
        if self.options["token_type"] == "word":
            return True
        return primary_code(language) not in {primary_code(x) for x in self.options["no_space_languages"]}

    def metrics(self, predictions: list[str], references: list[str],
                languages: Optional[list[str]] = None) -> dict[str, float]:
        self._check_pairs(predictions, references)
        if languages is None:
            languages = [getattr(r, "language", None) for r in references]
        if len(languages) != len(references):
            raise ConfigError(f"metrics: {len(languages)} languages for {len(references)} references")
        missing = [i for i, lang in enumerate(languages) if not lang]
        if missing:
            raise ConfigError(f"{self.name} metrics: reference(s) at position(s) {missing[:10]} have no language; "
                              "pass languages=[...] or score references from task.references(utts)")
        refs = [self.normalize(r) for r in references]
        empty = [i for i, r in enumerate(refs) if not r]
        if empty:
            raise ConfigError(f"asr metrics: reference(s) at position(s) {empty[:10]} are empty; CER is undefined "
                              "for them, remove those utterances from the evaluation set")
        split = [self.split_language(p) for p in predictions]
        hyps = [self.normalize(text) for _, text in split]
        out: dict[str, float] = {"cer": float(jiwer.cer(refs, hyps))}
        spaced = [i for i, lang in enumerate(languages) if self.has_spaces(lang)]
        if spaced:
            out["wer"] = float(jiwer.wer([refs[i] for i in spaced], [hyps[i] for i in spaced]))
        cers, wers = [], []
        for lang in sorted(set(languages)):
            rows = [i for i, x in enumerate(languages) if x == lang]
            lang_refs, lang_hyps = [refs[i] for i in rows], [hyps[i] for i in rows]
            out[f"cer_{lang}"] = float(jiwer.cer(lang_refs, lang_hyps))
            cers.append(out[f"cer_{lang}"])
            if self.has_spaces(lang):
                out[f"wer_{lang}"] = float(jiwer.wer(lang_refs, lang_hyps))
                wers.append(out[f"wer_{lang}"])
        out["cer_macro"] = self.average(cers)
        few_shot = set(self.options["few_shot_languages"])
        if few_shot:  # pooled over each subset's utterances, not averaged over its languages
            for name, keep in (("cer_normal", False), ("cer_few_shot", True)):
                rows = [i for i, lang in enumerate(languages) if (lang in few_shot) == keep]
                if rows:
                    out[name] = float(jiwer.cer([refs[i] for i in rows], [hyps[i] for i in rows]))
        if wers:
            out["wer_macro"] = self.average(wers)
        if self.options["language_token"]:
            out["lid_accuracy"] = sum(pred == lang for (pred, _), lang in zip(split, languages)) / len(languages)
        return out

    def utterance_errors(self, predictions: list[str], references: list[str]) -> tuple[list[int], list[int]]:
        """Character edit errors and reference characters per utterance (the language token is not scored)."""
        self._check_pairs(predictions, references)
        return edit_counts([self.normalize(r) for r in references],
                           [self.normalize(self.split_language(p)[1]) for p in predictions], jiwer.process_characters)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "languages": list(self.languages)}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "MultilingualAsrTask":
        task = super()._from_state(state)
        languages = state.get("languages")
        if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
            raise ConfigError("multilingual_asr task state: 'languages' must be a list of language codes; the run "
                              "folder's task.json is damaged")
        task.languages = languages
        if task.options["language_token"] and task.vocab[-len(languages):] != [lid_token(x) for x in languages]:
            raise ConfigError("multilingual_asr task state: the vocabulary does not end with the language tokens; "
                              "the run folder's task.json is damaged")
        return task


__all__ = ["MultilingualAsrTask", "Reference", "NO_SPACE_LANGUAGES", "primary_code"]
