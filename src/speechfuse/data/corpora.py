"""Manifests for the paper's corpora, following each corpus's official protocol.

    iemocap_manifests(root, out)    -> OUT/fold{1..5}/{train,dev,test}.csv
    voxceleb1_manifests(root, out)  -> OUT/identification/{train,dev,test}.csv,
                                       OUT/verification/{train,dev,test}.csv + {dev,test}_trials.txt
    mlsuperb_manifests(root, out)   -> OUT/multilingual_{10min,1h}/{train,dev,test}.csv,
                                       OUT/monolingual_{10min,1h}/<pair>/{train,dev,test}.csv
    prepare(corpus, root, out)      -> the above, or FSDD / LibriSpeech (speechfuse prepare CORPUS ROOT --out DIR)

IEMOCAP (IEMOCAP_full_release): `SessionN/dialog/EmoEvaluation/<dialog>.txt` label files, whose summary
lines read `[START - END]<TAB>TURN<TAB>EMOTION<TAB>[V, A, D]`, and the sentence wavs
`SessionN/sentences/wav/<dialog>/<TURN>.wav`. The SUPERB emotion protocol: four classes, neu, hap (with
exc merged into it), sad, ang; every other label (fru, sur, fea, dis, oth, xxx) is left out. Five folds,
leave one session out: fold k tests on session k; the other four sessions are split into train and a
seeded 20 % dev (SUPERB's `valid_ratio: 0.2`). The speaker is session + the turn's gender letter (Ses01F).

VoxCeleb1: the wavs as released, under ROOT/wav, or ROOT/{dev,test}/wav, or ROOT/vox1_{dev,test}_wav/wav
(the two zip files unpacked side by side), as `<speaker>/<video>/<clip>.wav`, plus the protocol lists in
ROOT (or ROOT/meta): `iden_split.txt` (`SET PATH`, 1 train, 2 dev, 3 test) for identification, and
`voxceleb1_test_v2.txt` (SUPERB's trial list, the default) or `veri_test2.txt` (the cleaned VoxCeleb1-O list),
`LABEL ENROL TEST`, for verification. Utterance ids are those relative paths, so the trial names are manifest
ids. Verification: test = every utterance the trial list names; train = the utterances of every other
speaker (SUPERB: all 1,211, dev = test); with `dev_speakers` > 0, that many speakers (seeded) are held out as
dev instead, scored on trials generated from them (as many target trials as the test list has).

ML-SUPERB: the released folder (ROOT) holds `<DATASET>/<LANG>/` folders (DATASET: ALFFA, commonvoice, fleurs,
mls, voxpopuli, ...; LANG: an ISO 639-3 code such as eng), each with `wav/<UTT>.wav` and the transcript files
`transcript_10min_train.txt`, `transcript_1h_train.txt`, `transcript_10min_dev.txt`, `transcript_10min_test.txt`,
one utterance a line: `UTT<whitespace>FIELD<whitespace>TRANSCRIPT`. Source of the layout: ESPnet's recipe
egs2/ml_superb/asr1 (local/data_prep.py for the multilingual setting, local/single_lang_data_prep.py for the
monolingual one; lhotse's recipes/ml_superb.py reads the same files). Followed from those scripts: dev and test
are always the 10-minute files (for both training durations). Multilingual (data_prep.py): training utterances
over 20 s are dropped ("the default setting in ml-superb benchmark"), and `[...]` tags (noise and event marks)
removed when the manifest is written (each `[...]` on its own: ESPnet's greedy pattern also drops the words
between two tags of one line). Monolingual (single_lang_data_prep.py): one (language, dataset) pair, with dev
from that dataset and test from every dataset of the language (MLSUPERB_MONOLINGUAL, ESPnet's SINGLE_LANG list,
e.g. eng1 = eng from mls); every training utterance is kept (no 20 s limit) and the text is written as it is:
that script only deletes punctuation, so the words inside `[...]` stay (the task's `punctuation: strip` drops
the brackets). ESPnet also removes punctuation and upper-cases at preparation time; here the task's
`punctuation` / `case` options do that. Not confirmed (no copy of the corpus here): what the middle FIELD holds (both scripts ignore it; one
third-party converter writes `A`, another a duration in seconds), and the exact folder names of every
dataset in the release.
Few-shot languages (multilingual setting only): ESPnet's data_prep.py reserves 20 languages (RESERVE_LANG) and
keeps, of their training rows, only the five hand-picked utterance ids listed per language in
FEW_SHOT_SELECTED_DATA, for both training durations; their dev and test rows are kept whole. MLSUPERB_FEW_SHOT
copies that list; `mlsuperb_manifests(..., few_shot=...)` takes another (or `{}` for none). A listed id that is
not in the training file (or is over 20 s) is reported with a warning. The monolingual pairs are not reserved.
"""
from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

from speechfuse.errors import ConfigError
from speechfuse.data.audio import audio_info
from speechfuse.data.manifest import CORPUS_COLUMN, Utterance, load_manifest, with_corpus, write_manifest
from speechfuse.data.textfile import open_text
from speechfuse.data.trials import generate_trials, read_trials, write_trials

IEMOCAP_SESSIONS = (1, 2, 3, 4, 5)
IEMOCAP_CLASSES = {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang"}
IEMOCAP_DEV_RATIO = 0.2  # SUPERB emotion config: valid_ratio 0.2
_IEMOCAP_LINE = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\w+)\s+\[[^\]]*\]\s*$")
_MLSUPERB_TAG = re.compile(r"\[[^\]]*\]")
_IEMOCAP_TURN = re.compile(r"^Ses0([1-5])[FM]_\S*_([FM])\d+$")

VOX_WAV_DIRS = ("wav", "dev/wav", "test/wav", "vox1_dev_wav/wav", "vox1_test_wav/wav")
VOX_SPLITS = {"1": "train", "2": "dev", "3": "test"}
CORPORA = ("fsdd", "iemocap", "librispeech", "mlsuperb", "voxceleb1")

MLSUPERB_DURATIONS = ("10min", "1h")
MLSUPERB_MAX_TRAIN_SECONDS = 20.0  # ESPnet data_prep.py drops longer training utterances
# ESPnet local/single_lang_data_prep.py: monolingual pair name -> (language, dataset folder it trains on)
MLSUPERB_MONOLINGUAL = {
    "eng1": ("eng", "mls"), "eng2": ("eng", "nchlt"), "eng3": ("eng", "voxpopuli"), "fra1": ("fra", "voxforge"),
    "fra2": ("fra", "voxpopuli"), "deu1": ("deu", "swc"), "deu2": ("deu", "voxpopuli"), "rus": ("rus", "M-AILABS"),
    "swa": ("swa", "ALFFA"), "swe": ("swe", "NST"), "jpn": ("jpn", "commonvoice"), "cmn": ("cmn", "fleurs"),
    "xty": ("xty", "mexico-el"),
}
# ESPnet egs2/ml_superb/asr1/local/data_prep.py, RESERVE_LANG and FEW_SHOT_SELECTED_DATA: the few-shot languages
# of the multilingual setting and the only training utterances each keeps (ids as in the transcript files).
MLSUPERB_FEW_SHOT: dict[str, tuple[str, ...]] = {
    lang: tuple(f"{prefix}_{lang}_{num}" for prefix, num in (entry.split(":") for entry in ids.split()))
    for lang, ids in {
        "lit": "cv:000026 cv:000105 fleurs:000097 mls:000040 voxpopuli:001707",
        "dan": "NST:000007 NST:000072 cv:000158 fleurs:000058 fleurs:000071",
        "tur": "cv:000095 cv:000101 fleurs:000060 fleurs:000069 fleurs:000095",
        "srp": "cv:000078 cv:000145 fleurs:000068 fleurs:000093 fleurs:000105",
        "vie": "cv:000105 cv:000128 fleurs:000067 fleurs:000068 fleurs:000077",
        "kaz": "cv:000080 cv:000097 cv:000111 fleurs:000036 fleurs:000066",
        "zul": "fleurs:000049 fleurs:000057 nchlt:000027 nchlt:000090 nchlt:000104",
        "tsn": "googlei18n-tts:000026 googlei18n-tts:000044 googlei18n-tts:000108 nchlt:000001 nchlt:000032",
        "epo": "cv:000006 cv:000039 cv:000063 cv:000066 cv:000076",
        "frr": "cv:000023 cv:000086 cv:000095 cv:000102 cv:000104",
        "tok": "cv:000004 cv:000011 cv:000030 cv:000084 cv:000101",
        "umb": "fleurs:000028 fleurs:000029 fleurs:000033 fleurs:000040 fleurs:000047",
        "bos": "fleurs:000067 fleurs:000078 fleurs:000080 fleurs:000088 fleurs:000090",
        "ful": "fleurs:000055 fleurs:000059 fleurs:000067 fleurs:000076 fleurs:000081",
        "ceb": "fleurs:000054 fleurs:000064 fleurs:000069 fleurs:000071 fleurs:000080",
        "luo": "fleurs:000056 fleurs:000062 fleurs:000067 fleurs:000073 fleurs:000077",
        "kea": "fleurs:000052 fleurs:000070 fleurs:000078 fleurs:000083 fleurs:000085",
        "sun": "googlei18n-asr:000001 googlei18n-asr:000007 googlei18n-asr:000041 googlei18n-asr:000099 "
               "googlei18n-asr:000106",
        "tso": "nchlt:000035 nchlt:000040 nchlt:000089 nchlt:000104 nchlt:000125",
        "tos": "mexico-el:000006 mexico-el:000122 mexico-el:000152 mexico-el:000496 mexico-el:000563",
    }.items()
}


class CorpusError(ConfigError):
    """A corpus folder does not have the layout or the file contents its protocol expects."""


# -- IEMOCAP -----------------------------------------------------------------------------------------

def read_emo_evaluation(path: Path) -> list[tuple[str, str]]:
    """(turn, emotion code) of every summary line of one EmoEvaluation file."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.startswith("["):
                continue  # the header (%), evaluator lines (C-E2:, A-E3:) and blanks
            match = _IEMOCAP_LINE.match(line.rstrip("\n"))
            if not match:
                raise CorpusError(f"IEMOCAP label file {path} line {line_no}: expected "
                                  f"'[START - END]<TAB>TURN<TAB>EMOTION<TAB>[V, A, D]', got {line.strip()[:120]!r}")
            turn, emotion = match.group(3), match.group(4)
            if not _IEMOCAP_TURN.match(turn):
                raise CorpusError(f"IEMOCAP label file {path} line {line_no}: turn name {turn!r} does not look like "
                                  "'Ses01F_impro01_F000' (session, dialog, speaker letter and number)")
            rows.append((turn, emotion))
    return rows


def iemocap_utterances(root: str | Path) -> list[Utterance]:
    """Every four-class sentence of the five sessions: label (neu/hap/sad/ang), speaker, session (extra)."""
    root = Path(root)
    utts: list[Utterance] = []
    missing: list[str] = []
    for session in IEMOCAP_SESSIONS:
        label_dir = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        if not label_dir.is_dir():
            raise CorpusError(f"IEMOCAP: {label_dir} not found; ROOT must be the IEMOCAP_full_release folder "
                              "holding Session1 ... Session5")
        files = sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith("."))  # skip macOS ._ files
        if not files:
            raise CorpusError(f"IEMOCAP: no <dialog>.txt label files in {label_dir}")
        for label_file in files:
            for turn, emotion in read_emo_evaluation(label_file):
                if emotion not in IEMOCAP_CLASSES:
                    continue
                wav = root / f"Session{session}" / "sentences" / "wav" / label_file.stem / f"{turn}.wav"
                if not wav.is_file():
                    missing.append(str(wav))
                    continue
                speaker = f"{turn[:5]}{_IEMOCAP_TURN.match(turn).group(2)}"
                utts.append(Utterance(id=turn, path=str(wav.resolve()), duration=audio_info(wav)[3],
                                      label=IEMOCAP_CLASSES[emotion], speaker=speaker,
                                      extra={"session": session}))
    if missing:
        raise CorpusError(f"IEMOCAP: {len(missing)} labelled sentence(s) have no wav, e.g. {missing[:3]}; the "
                          "sentences/wav folders are incomplete")
    if not utts:
        raise CorpusError(f"IEMOCAP: no neu/hap/exc/sad/ang sentences under {root}")
    return utts


def iemocap_manifests(root: str | Path, out_dir: str | Path, dev_ratio: float = IEMOCAP_DEV_RATIO,
                      seed: int = 0) -> dict[str, dict[str, Path]]:
    """Five leave-one-session-out folds: {"fold1": {"train": csv, "dev": csv, "test": csv}, ...}."""
    if not 0 < dev_ratio < 1:
        raise ConfigError(f"iemocap_manifests: dev_ratio must lie in (0, 1), got {dev_ratio}")
    utts = iemocap_utterances(root)
    out_dir = Path(out_dir)
    folds = {}
    for k in IEMOCAP_SESSIONS:
        rest = [u for u in utts if u.extra["session"] != k]
        shuffled = random.Random(seed + k).sample(rest, len(rest))
        n_dev = round(dev_ratio * len(rest))
        dev_ids = {u.id for u in shuffled[:n_dev]}
        splits = {"train": [u for u in rest if u.id not in dev_ids], "dev": [u for u in rest if u.id in dev_ids],
                  "test": [u for u in utts if u.extra["session"] == k]}
        folds[f"fold{k}"] = {name: write_manifest(with_corpus(part, "iemocap"), out_dir / f"fold{k}" / f"{name}.csv")
                             for name, part in splits.items()}
    return folds


# -- VoxCeleb1 ---------------------------------------------------------------------------------------

def _vox_meta(root: Path, name: str) -> Path:
    for candidate in (root / name, root / "meta" / name):
        if candidate.is_file():
            return candidate
    raise CorpusError(f"VoxCeleb1: {name} not found in {root} or {root / 'meta'}; download it from the VoxCeleb "
                      "site's meta folder (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/) into ROOT")


def _vox_wav_roots(root: Path) -> list[Path]:
    roots = [root / d for d in VOX_WAV_DIRS if (root / d).is_dir()]
    if not roots:
        raise CorpusError(f"VoxCeleb1: no wav folder under {root} (looked for {', '.join(VOX_WAV_DIRS)})")
    return roots


def _vox_utterance(name: str, roots: list[Path], where: str, missing: list[str]) -> Utterance | None:
    for r in roots:
        path = r / name
        if path.is_file():
            return Utterance(id=name, path=str(path.resolve()), duration=audio_info(path)[3],
                             label=name.split("/")[0], speaker=name.split("/")[0])
    missing.append(f"{name} ({where})")
    return None


def _raise_missing(missing: list[str], roots: list[Path]) -> None:
    if missing:
        raise CorpusError(f"VoxCeleb1: {len(missing)} listed file(s) are not under {[str(r) for r in roots]}, "
                          f"e.g. {missing[:3]}; the wav folders are incomplete")


def read_iden_split(path: Path) -> list[tuple[str, str, int]]:
    """(split, relative wav path, line) of every line of iden_split.txt."""
    rows = []
    with open_text(path, "VoxCeleb1 split file") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[0] not in VOX_SPLITS or fields[1].count("/") != 2:
                raise CorpusError(f"VoxCeleb1 {path} line {line_no}: expected 'SET SPEAKER/VIDEO/CLIP.wav' with SET 1 "
                                  f"(train), 2 (dev) or 3 (test), got {line.strip()[:120]!r}")
            rows.append((VOX_SPLITS[fields[0]], fields[1], line_no))
    return rows


VOX_TRIAL_LISTS = ("voxceleb1_test_v2", "veri_test2")


def voxceleb1_manifests(root: str | Path, out_dir: str | Path, dev_speakers: int = 0, seed: int = 0,
                        trials: str = "voxceleb1_test_v2", sox_effects: bool = False) -> dict[str, dict[str, Path]]:
    """{"identification": {split: csv}, "verification": {split: csv, "dev_trials": txt, "test_trials": txt}}.

    SUPERB's setting by default (s3prl sv_voxceleb1): the trial list `voxceleb1_test_v2.txt` (37,720 trials;
    trials="veri_test2" for the cleaned list, 37,611), training on every speaker outside it (1,211) and no
    held-out speakers: no dev files are written and "dev" / "dev_trials" are the test files, so a config that
    names them chooses checkpoints on test, as SUPERB reports the best test EER over its checkpoints
    (`dev_speakers=N` holds N training speakers out as a real dev set, dev.csv + dev_trials.txt, instead).
    sox_effects: the verification audio gets s3prl's sox chain and training clips not over 2 s after it are
    left out (speechfuse.data.sox_chain, written under OUT/verification/audio)."""
    if trials not in VOX_TRIAL_LISTS:
        raise CorpusError(f"VoxCeleb1: trials must be one of {', '.join(VOX_TRIAL_LISTS)}, got {trials!r}")
    if isinstance(dev_speakers, bool) or not isinstance(dev_speakers, int) or dev_speakers < 0:
        raise CorpusError(f"VoxCeleb1: dev_speakers must be a whole number >= 0, got {dev_speakers!r}")
    root, out_dir = Path(root), Path(out_dir)
    roots = _vox_wav_roots(root)
    missing: list[str] = []

    iden_path = _vox_meta(root, "iden_split.txt")
    iden: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    for split, name, line_no in read_iden_split(iden_path):
        utt = _vox_utterance(name, roots, f"{iden_path.name} line {line_no}", missing)
        if utt is not None:
            iden[split].append(utt)
    _raise_missing(missing, roots)
    result = {"identification": {s: write_manifest(with_corpus(u, "voxceleb1"), out_dir / "identification" / f"{s}.csv")
                                 for s, u in iden.items()}}

    trials_path = _vox_meta(root, f"{trials}.txt")
    trial_list = read_trials(trials_path)
    test_names = sorted({n for t in trial_list for n in (t.enrol, t.test)})
    test = [u for n in test_names
            if (u := _vox_utterance(n, roots, f"{trials_path.name}", missing)) is not None]
    _raise_missing(missing, roots)
    test_speakers = {u.speaker for u in test}
    others = [u for s in iden.values() for u in s if u.speaker not in test_speakers]
    speakers = sorted({u.speaker for u in others})
    if len(speakers) <= dev_speakers:
        raise CorpusError(f"VoxCeleb1: only {len(speakers)} speaker(s) outside the trial list, need more than "
                          f"dev_speakers={dev_speakers} to train on the rest")
    held = set(random.Random(seed).sample(speakers, dev_speakers))
    dev = [u for u in others if u.speaker in held]
    train = [u for u in others if u.speaker not in held]
    ver = out_dir / "verification"
    if sox_effects:
        from speechfuse.data.sox_chain import apply_s3prl_chain

        train = apply_s3prl_chain(train, ver / "audio", min_seconds=2.0)
        dev = apply_s3prl_chain(dev, ver / "audio")
        test = apply_s3prl_chain(test, ver / "audio")
    files = {"train": write_manifest(with_corpus(train, "voxceleb1"), ver / "train.csv"), "test": write_manifest(with_corpus(test, "voxceleb1"), ver / "test.csv"),
             "test_trials": write_trials(trial_list, ver / "test_trials.txt")}
    if dev_speakers:
        files["dev"] = write_manifest(with_corpus(dev, "voxceleb1"), ver / "dev.csv")
        files["dev_trials"] = write_trials(generate_trials(dev, "speaker", max_targets=sum(t.label for t in trial_list),
                                                           seed=seed), ver / "dev_trials.txt")
    else:  # no dev set: a config scores "dev" on the test files, so checkpoints are chosen on test, as SUPERB does
        files["dev"], files["dev_trials"] = files["test"], files["test_trials"]
    result["verification"] = files
    return result


# -- ML-SUPERB ---------------------------------------------------------------------------------------

def read_mlsuperb_transcript(path: Path, keep_tags: bool = False) -> list[tuple[str, str, int]]:
    """(utterance id, transcript, line) of every line of one ML-SUPERB transcript file; each `[...]` tag removed,
    or (keep_tags) kept as written, for the task's punctuation option to drop the brackets only."""
    rows = []
    with open_text(path, "ML-SUPERB transcript") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.strip().split(maxsplit=2)
            if len(fields) != 3:
                raise CorpusError(f"ML-SUPERB transcript {path} line {line_no}: expected 'UTT FIELD TRANSCRIPT' "
                                  f"(three whitespace-separated parts), got {line.strip()[:120]!r}")
            text = fields[2] if keep_tags else _MLSUPERB_TAG.sub(" ", fields[2])
            rows.append((fields[0], " ".join(text.split()), line_no))
    return rows


def _mlsuperb_split(folder: Path, file_name: str, max_seconds: float | None, keep_tags: bool = False
                    ) -> list[Utterance]:
    path = folder / file_name
    if not path.is_file():
        raise CorpusError(f"ML-SUPERB: {path} not found; every <DATASET>/<LANG> folder holds the "
                          f"transcript_{{10min,1h}}_train.txt, transcript_10min_dev.txt and _test.txt files")
    utts, empty = [], []
    for utt_id, text, line_no in read_mlsuperb_transcript(path, keep_tags):
        if not text:  # only tags: no characters to recognise (a CTC target must not be empty)
            empty.append(line_no)
            continue
        wav = folder / "wav" / f"{utt_id}.wav"
        if not wav.is_file():
            raise CorpusError(f"ML-SUPERB transcript {path} line {line_no}: {wav} not found; the wav folder is "
                              "incomplete")
        duration = audio_info(wav)[3]
        if max_seconds is None or duration <= max_seconds:
            utts.append(Utterance(id=utt_id, path=str(wav.resolve()), duration=duration, text=text,
                                  language=folder.name, extra={"dataset": folder.parent.name, CORPUS_COLUMN: "mlsuperb"}))
    if empty:
        warnings.warn(f"ML-SUPERB transcript {path}: {len(empty)} line(s) hold only [...] tags and are left out "
                      f"(lines {empty[:10]})", stacklevel=2)
    return utts


def few_shot_rows(train: list[Utterance], few_shot: dict[str, tuple[str, ...]], source: str) -> list[Utterance]:
    """`train` less the rows of a few-shot language whose id is not on that language's list (warns about
    listed ids that are not among the rows)."""
    kept = [u for u in train if u.language not in few_shot or u.id in few_shot[u.language]]
    present = {u.id for u in kept}
    for lang in sorted({u.language for u in train} & set(few_shot)):
        absent = [i for i in few_shot[lang] if i not in present]
        if absent:
            warnings.warn(f"ML-SUPERB {source}: few-shot language {lang!r} keeps {len(few_shot[lang]) - len(absent)} "
                          f"of its {len(few_shot[lang])} listed training utterances; not among the training rows "
                          f"(absent or over {MLSUPERB_MAX_TRAIN_SECONDS:g} s): {absent}", stacklevel=3)
    return kept


def mlsuperb_manifests(root: str | Path, out_dir: str | Path,
                       few_shot: dict[str, tuple[str, ...]] | None = None) -> dict[str, dict]:
    """Multilingual and monolingual manifests for the 10-minute and 1-hour training sets (see module doc):
    {"multilingual_10min": {split: csv}, ..., "monolingual_10min": {pair: {split: csv}}, ...}.
    Monolingual pairs whose language or dataset folder is absent from ROOT are left out. `few_shot`
    (language -> the training ids it keeps in the multilingual sets): MLSUPERB_FEW_SHOT when None."""
    root, out_dir = Path(root), Path(out_dir)
    few_shot = MLSUPERB_FEW_SHOT if few_shot is None else few_shot
    if not isinstance(few_shot, dict) or not all(isinstance(v, (list, tuple)) for v in few_shot.values()):
        raise ConfigError("mlsuperb_manifests: few_shot must map a language code to a list of training utterance ids")
    folders = sorted(p for p in root.glob("*/*") if p.is_dir() and (p / "wav").is_dir())
    if not folders:
        raise CorpusError(f"ML-SUPERB: no <DATASET>/<LANG>/wav folders under {root}; ROOT must be the released "
                          "folder holding e.g. fleurs/eng/wav and fleurs/eng/transcript_10min_train.txt")
    dev = {f: _mlsuperb_split(f, "transcript_10min_dev.txt", None) for f in folders}
    test = {f: _mlsuperb_split(f, "transcript_10min_test.txt", None) for f in folders}
    result: dict[str, dict] = {}
    for duration in MLSUPERB_DURATIONS:
        train = {f: _mlsuperb_split(f, f"transcript_{duration}_train.txt", MLSUPERB_MAX_TRAIN_SECONDS)
                 for f in folders}
        multi = out_dir / f"multilingual_{duration}"
        rows = {name: [u for f in folders for u in part[f]] for name, part in (("train", train), ("dev", dev),
                                                                                ("test", test))}
        rows["train"] = few_shot_rows(rows["train"], few_shot, f"multilingual_{duration}")
        result[f"multilingual_{duration}"] = {name: write_manifest(part, multi / f"{name}.csv")
                                              for name, part in rows.items()}
        mono = {}
        for pair, (language, dataset) in MLSUPERB_MONOLINGUAL.items():
            chosen = root / dataset / language
            if chosen not in train:
                continue
            # single_lang_data_prep.py: every training row (no 20 s limit), words inside [...] kept
            same_language = [f for f in folders if f.name == language]
            splits = {"train": _mlsuperb_split(chosen, f"transcript_{duration}_train.txt", None, keep_tags=True),
                      "dev": _mlsuperb_split(chosen, "transcript_10min_dev.txt", None, keep_tags=True),
                      "test": [u for f in same_language
                               for u in _mlsuperb_split(f, "transcript_10min_test.txt", None, keep_tags=True)]}
            mono[pair] = {name: write_manifest(part, out_dir / f"monolingual_{duration}" / pair / f"{name}.csv")
                          for name, part in splits.items()}
        result[f"monolingual_{duration}"] = mono
    return result


# -- one entry point for the CLI ---------------------------------------------------------------------

def _librispeech(root: Path, out_dir: Path) -> dict[str, Path]:
    from speechfuse.data.adapters import librispeech_manifest

    splits = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*/*/*.trans.txt")))
    if not splits:
        raise CorpusError(f"LibriSpeech: no split folders (e.g. dev-clean/<speaker>/<chapter>/*.trans.txt) in {root}")
    return {p.name: librispeech_manifest(p, out_dir / f"{p.name}.csv") for p in splits}


def prepare(corpus: str, root: str | Path, out_dir: str | Path, **options: Any) -> dict:
    """Write the manifests (and trials / folds) of `corpus` in `root` into `out_dir`; returns their paths.
    `options` go to voxceleb1_manifests (trials, dev_speakers, sox_effects); other corpora take none."""
    from speechfuse.data.adapters import fsdd_manifests

    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise CorpusError(f"prepare {corpus}: folder not found: {root}")
    # every maker records its corpus in each manifest row (`corpus`), which `speechfuse table` reads
    makers = {
        "iemocap": lambda: iemocap_manifests(root, out_dir),
        "voxceleb1": lambda: voxceleb1_manifests(root, out_dir, **options),
        "mlsuperb": lambda: mlsuperb_manifests(root, out_dir),
        "fsdd": lambda: fsdd_manifests(root / "recordings" if (root / "recordings").is_dir() else root, out_dir),
        "librispeech": lambda: _librispeech(root, out_dir),  # its adapter records "librispeech"
    }
    if corpus not in makers:
        raise CorpusError(f"prepare: unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
    if options and corpus != "voxceleb1":
        raise CorpusError(f"prepare {corpus}: takes no options (got {', '.join(sorted(options))}); "
                          "--trials, --dev-speakers and --sox-effects are for voxceleb1")
    return makers[corpus]()


