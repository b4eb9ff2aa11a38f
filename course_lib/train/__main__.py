"""Command line of the training engine: ``python -m course_lib.train`` (installed as ``course-train``).

Usage::

    python -m course_lib.train --list
    python -m course_lib.train FAMILY [--config FILE|tiny|paper] [--resume | --no-resume] [--print-config]
                               [key.sub=value ...]

``--config`` defaults to the family's packaged ``tiny`` config. Overrides are parsed by the field's type
(``optim.lr=1e-3``, ``train.compile=true``, ``optim.betas=0.9,0.95``). Without ``--resume``/``--no-resume``
a run directory that already holds a checkpoint is continued (see :mod:`course_lib.train.engine`). Under
``torchrun`` the same command trains on every process with DDP. Mistakes end with one ``error:`` line and
exit status 2 (config: a bad value, NaN or infinity, a ``train.run_dir`` that is a file, an unknown
``eval.best_metric``, all found before anything is built) or 1 (training: a damaged checkpoint with nothing
to fall back to, a run folder in use by another run, unreadable data), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import yaml

from course_lib.train.config import config_to_dict
from course_lib.train.errors import ConfigError, TrainingError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.train",
        description="Train a course model family with the shared engine (one CPU, one GPU, or torchrun).")
    p.add_argument("family", nargs="?", help="model family to train (see --list)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3")
    p.add_argument("--config", default="tiny", help="YAML config file, or 'tiny'/'paper' (or another packaged "
                                                    "size, e.g. melgan's 'course') for the packaged ones (default: tiny)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_const", const="always",
                       help="continue from the newest checkpoint in train.run_dir (fail if there is none)")
    group.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                       help="start fresh (fail if train.run_dir already holds checkpoints)")
    p.add_argument("--list", action="store_true", help="list the model families and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(resume="auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 training error, 2 config/usage error, 130 interrupted)."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    from course_lib.train.families import get_family, list_families

    if args.list:
        for name in list_families():
            try:
                description = get_family(name).description
            except Exception as err:  # a broken family should not hide the others
                description = f"(cannot be imported: {err})"
            print(f"{name:24s} {description}")
        return 0
    if not args.family:
        parser.print_usage(sys.stderr)
        print("error: name a family to train (see --list)", file=sys.stderr)
        return 2
    try:
        family = get_family(args.family)
        cfg = family.load_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump({"family": family.name, **config_to_dict(cfg)}, sort_keys=False), end="")
            return 0
        from course_lib.runtime import configure_threads
        from course_lib.train.engine import Trainer

        configure_threads()  # the course's policy (1 thread, or $COURSE_NUM_THREADS); train.num_threads > 0 wins
        summary = Trainer(family, cfg, resume=args.resume).fit()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the file system refused (permissions, a full disk): say what and where
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, not one per process
        keys = ("steps", "steps_per_second", "final_train_loss", "eval", "last_checkpoint")
        print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
