"""`speechfuse prepare CORPUS ROOT --out DIR`: manifests for a corpus, or for a folder of your own recordings."""
from __future__ import annotations

import argparse

from speechfuse.errors import SpeechfuseError
from speechfuse.cli.common import add_out, no_device, write_result

HELP = "write train/dev/test manifests: your own folder of audio, or a corpus by its official protocol"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    from speechfuse.data.corpora import CORPORA

    p = sub.add_parser("prepare", help=HELP, parents=[common],
                       description="Write train/dev/test manifests. `folder`: your own recordings, labelled by "
                                   "sub-folder names (DIR/<label>/*.wav) or by a CSV (--labels: columns path and "
                                   "label or text, optionally speaker); speaker-disjoint splits when speakers are "
                                   "given; seeded. A corpus on disk, by its protocol: iemocap (five "
                                   "leave-one-session-out folds, 4 classes), voxceleb1 (identification by "
                                   "iden_split.txt, verification by veri_test2.txt), mlsuperb (multilingual and "
                                   "monolingual, 10 min and 1 h training sets), fsdd, librispeech (one manifest per "
                                   "split folder). Prints the files written as JSON.")
    p.add_argument("corpus", choices=("folder", *CORPORA), metavar="CORPUS",
                   help=f"folder (your own recordings) or one of: {', '.join(CORPORA)}")
    p.add_argument("root", metavar="DIR", help="the folder of recordings, or the corpus folder as released")
    add_out(p, "folder", "the manifests (train.csv, dev.csv, test.csv for a folder)", required=True)
    no_device(p, "it reads audio files and writes manifests; no model runs")
    g = p.add_argument_group("folder only")
    g.add_argument("--labels", metavar="CSV", help="labels or transcripts: a CSV with columns path (relative to "
                                                   "DIR) and label or text, optionally speaker")
    g.add_argument("--speaker-pattern", metavar="REGEX",
                   help="the speaker as the first group of REGEX in each file name, e.g. '^\\d+_([a-z]+)_' "
                        "(speaker-disjoint splits)")
    g.add_argument("--dev", type=float, default=0.1, help="share of the recordings for dev (default 0.1)")
    g.add_argument("--test", type=float, default=0.1, help="share of the recordings for test (default 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    g = p.add_argument_group("voxceleb1 only")
    g.add_argument("--trials", default=None, help="voxceleb1_test_v2 (SUPERB's, default) or veri_test2")
    g.add_argument("--dev-speakers", type=int, default=None,
                   help="hold this many training speakers out as dev (default 0: all train, dev = test)")
    g.add_argument("--sox-effects", action="store_true",
                   help="s3prl's sox chain (gain -3, silence trimming) and its 2 s training filter")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.corpus == "folder":
        from speechfuse.data.folder import prepare_folder

        result = prepare_folder(args.root, args.out, labels=args.labels, speaker_pattern=args.speaker_pattern,
                                dev=args.dev, test=args.test, seed=args.seed)
    else:
        given = [f"--{k.replace('_', '-')}" for k in ("labels", "speaker_pattern") if getattr(args, k)]
        if given:
            raise SpeechfuseError(f"{' and '.join(given)} go with `prepare folder`; {args.corpus} follows its own "
                                  "protocol")
        from speechfuse.data.corpora import prepare

        options = {k: v for k, v in (("trials", args.trials), ("dev_speakers", args.dev_speakers)) if v is not None}
        if args.sox_effects:
            options["sox_effects"] = True
        result = prepare(args.corpus, args.root, args.out, **options)
    print(write_result(result, None))
    return 0
