"""Command line for the course datasets.

    python -m course_lib.data export --kind sound_events --out data/sound_events --train 1000 --valid 100 --test 100
    python -m course_lib.data export --kind music --generator-version 2 --out data/music_v2
    python -m course_lib.data export --kind sound_events --generator-version 2 --out data/sound_events_v2 \
        --test-heldout 100
    python -m course_lib.data probes --version 2 --n 500     # the probes on 500 fresh clips per domain

writes ``data/sound_events/{train,valid,test}/`` (and ``test_heldout/``: the test clips captioned by the
held-out part of the version 2 caption grammar) in the Hugging Face audiofolder layout (16-bit wav files
plus ``metadata.jsonl``), with a progress bar per split. Read it back with
``course_lib.data.loaders.load_captioned("data/sound_events", split="valid")``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from course_lib.data.export import (
    COURSE_KINDS,
    DEFAULT_SIZES,
    HELDOUT_SPLIT,
    check_out_dir,
    export_course_dataset,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m course_lib.data`` argument parser (sub-commands ``export`` and ``probes``)."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="generate a course dataset and write it to disk")
    export.add_argument("--kind", required=True, choices=COURSE_KINDS, help="which course dataset")
    export.add_argument("--out", required=True, help="output folder (one sub-folder per split)")
    for split, n in DEFAULT_SIZES.items():
        export.add_argument(f"--{split}", type=int, default=n, metavar="N",
                            help=f"number of {split} clips (default {n}; 0 skips the split)")
    export.add_argument("--test-heldout", dest=HELDOUT_SPLIT, type=int, default=0, metavar="N",
                        help="number of test clips captioned by the held-out caption grammar (default 0; "
                             "needs --generator-version 2)")
    export.add_argument("--clip-seconds", type=float, default=4.0, help="clip length in seconds (default 4)")
    export.add_argument("--sample-rate", type=int, default=16_000, help="sample rate in Hz (default 16000)")
    export.add_argument("--overwrite", action="store_true", help="replace splits that were exported before")
    export.add_argument("--generator-version", type=int, default=None, metavar="N",
                        help="generator version (1, the default; music 2: SoundFont instruments; "
                             "sound_events 2: several recipes per class, a room, varied backgrounds)")
    check = commands.add_parser("probes", help="how well the course's probes read fresh real clips' labels")
    check.add_argument("--version", type=int, default=2, help="data version (default 2)")
    check.add_argument("--n", type=int, default=500, help="fresh test clips per domain (default 500)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 1 on a reported error, 2 on usage).

    Every error is one ``error: ...`` line on stderr, never a traceback: ``--out`` that is (or lies under) a
    file exits with 2 before anything is generated; an existing split without ``--overwrite``, or a split
    folder the course did not write (which ``--overwrite`` never deletes), exits with 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "probes":
        return _probes(args)
    sizes = {split: getattr(args, split) for split in DEFAULT_SIZES}
    sizes[HELDOUT_SPLIT] = getattr(args, HELDOUT_SPLIT)
    if any(n < 0 for n in sizes.values()):
        parser.error(f"split sizes must be >= 0, got {sizes}")
    sizes = {split: n for split, n in sizes.items() if n > 0}
    if not sizes:
        parser.error("all split sizes are 0: nothing to export")
    try:
        check_out_dir(args.out)
    except NotADirectoryError as err:
        print(f"error: --out: {err}", file=sys.stderr)
        return 2
    try:
        out = export_course_dataset(args.kind, args.out, sizes, clip_seconds=args.clip_seconds,
                                    sample_rate=args.sample_rate, overwrite=args.overwrite, progress=True,
                                    version=args.generator_version)
    except (ValueError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {sum(sizes.values())} clips to {out} ({', '.join(f'{k}: {v}' for k, v in sizes.items())})")
    return 0



def _probes(args: argparse.Namespace) -> int:
    import json

    from course_lib.data.probe_check import probe_accuracy
    from course_lib.runtime import configure_threads

    configure_threads()
    try:
        result = probe_accuracy(version=args.version, n=args.n)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
