"""Command line for instructors: ``course-exercises generate|grade`` (or ``python -m course_lib.exercises``).

``generate [--check]`` rewrites ``exercises/`` from ``solutions/`` (``--check`` writes nothing and exits 1
listing the stale files). ``grade NOTEBOOK_OR_FOLDER [--timeout 120] [--csv grades.csv]`` runs each
submission in a fresh kernel and scores it with the grader's own checks in a separate process, each in a
throw-away copy of its folder (see :mod:`course_lib.exercises.grade`), prints a table of points per task
and optionally writes one CSV row per submission (always: a submission that cannot be graded is a row too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib.exercises.generate import NotebookError, repo_dirs, sync_exercises
from course_lib.exercises.grade import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_TIMEOUT,
    GradeError,
    collect_submissions,
    format_result,
    grade_many,
    solution_tasks,
    write_csv,
)


def _parser() -> argparse.ArgumentParser:
    solutions, exercises = repo_dirs()
    parser = argparse.ArgumentParser(prog="course-exercises", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="regenerate exercises/ from solutions/ (nbgrader-style)")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if any exercise is stale")
    gen.add_argument("--solutions", type=Path, default=solutions, help=f"default: {solutions}")
    gen.add_argument("--exercises", type=Path, default=exercises, help=f"default: {exercises}")
    grade = sub.add_parser("grade", help="run and score submitted notebooks")
    grade.add_argument("path", type=Path, help="a submitted notebook, or a folder searched for *.ipynb")
    grade.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                       help=f"seconds for a whole submission (default {DEFAULT_TIMEOUT:g})")
    grade.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT,
                       help=f"seconds for one cell before it is interrupted (default {DEFAULT_CELL_TIMEOUT:g})")
    grade.add_argument("--csv", type=Path, help="write one row per submission to this CSV file")
    grade.add_argument("--solution", type=Path, help="grade against this solution notebook")
    grade.add_argument("--solutions", type=Path, default=solutions, help=f"folder of solutions (default {solutions})")
    grade.add_argument("--kernel", help="kernel name (default: the solution's, if installed, else python3)")
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 stale exercises, 2 bad usage or input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            stale = sync_exercises(args.solutions, args.exercises, check_only=args.check)
            if args.check:
                for path in stale:
                    print(f"stale: {path} (run `course-exercises generate`)")
                print("exercises are up to date" if not stale else f"{len(stale)} stale exercise notebook(s)")
                return 1 if stale else 0
            for path in stale:
                print(f"{'removed' if not path.exists() else 'wrote'} {path}")
            print(f"{len(stale)} exercise notebook(s) updated" if stale else "exercises are up to date")
            return 0
        if args.timeout <= 0 or args.cell_timeout <= 0 or args.jobs < 1:
            print("error: --timeout and --cell-timeout must be positive seconds, --jobs at least 1", file=sys.stderr)
            return 2
        submissions = collect_submissions(args.path)
        if args.solution:  # a broken solution is the instructor's to fix before grading, not one row per student
            solution_tasks(args.solution)
        kwargs = dict(solution=args.solution, solutions_dir=args.solutions, timeout=args.timeout,
                      cell_timeout=args.cell_timeout, kernel_name=args.kernel)
        # each table is printed as soon as it is ready; a submission that fails becomes a "not run" row
        results = grade_many(submissions, jobs=args.jobs, on_result=lambda r: print(format_result(r), flush=True),
                             **kwargs)
        if args.csv:
            root = args.path if args.path.is_dir() else args.path.parent
            print(f"wrote {write_csv(results, args.csv, root)}")
        return 0
    except (NotebookError, GradeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
