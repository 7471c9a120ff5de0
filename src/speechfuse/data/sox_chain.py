"""s3prl's sox chain for speaker verification, run by libsox itself (through `cysox`, which bundles it).

s3prl downstream/sv_voxceleb1/dataset.py applies, to every training and test clip, the sox effects
`channels 1`, `rate 16000`, `gain -3.0`, `silence 1 0.1 0.1% -1 0.1 0.1%` (remove silence over 0.1 s below
0.1 % of full scale, at the start and anywhere after), and trains only on clips longer than
`vad_config.min_sec: 32000` samples (2 s) after them. `apply_s3prl_chain` writes each processed clip once
as a 16 kHz float WAV (so the feature cache and every later read see the processed audio) and returns the
utterances pointing at them.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from speechfuse.errors import ConfigError
from speechfuse.data.audio import audio_info
from speechfuse.data.manifest import Utterance

S3PRL_EFFECTS = (("channels", "1"), ("rate", "16000"), ("gain", "-3.0"),
                 ("silence", "1", "0.1", "0.1%", "-1", "0.1", "0.1%"))
SOX_HINT = "pip install cysox==0.3.0 (it bundles libsox)"


def sox_process(source: str | os.PathLike, target: str | os.PathLike,
                effects: tuple[tuple[str, ...], ...] = S3PRL_EFFECTS) -> None:
    """Run `effects` (sox effect name + its arguments, as on the sox command line) on `source` into `target`
    (mono float WAV at 16 kHz), written to a temporary name and renamed, so a crash leaves no half file."""
    try:
        import cysox
        from cysox import fx
    except ImportError as err:
        raise ConfigError(f"the sox chain needs the cysox package: {SOX_HINT}") from err
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial.wav")
    cysox.convert(str(source), str(partial), [fx.Raw(*effect) for effect in effects], sample_rate=16000,
                  channels=1, encoding="float")
    partial.replace(target)


def apply_s3prl_chain(utts: list[Utterance], out_dir: str | os.PathLike,
                      min_seconds: float | None = None) -> list[Utterance]:
    """Each utterance's audio through S3PRL_EFFECTS into OUT_DIR/<id> (an id is a relative path such as
    id10001/vid/00001.wav); with min_seconds, clips not longer than that after the chain are left out
    (s3prl keeps `length > min_sec`). A clip already processed is not processed again."""
    out_dir = Path(out_dir)
    kept = []
    for utt in utts:
        if utt.is_segment:
            raise ConfigError(f"sox chain: utterance {utt.id!r} is a start/end span; the chain runs on whole files")
        target = out_dir / utt.id
        if not target.is_file():
            sox_process(utt.path, target)
        seconds = audio_info(target)[3]
        if min_seconds is None or seconds > min_seconds:
            kept.append(replace(utt, path=str(target), duration=seconds))
    return kept
