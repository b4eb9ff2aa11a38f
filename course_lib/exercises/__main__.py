"""``python -m course_lib.exercises``: the exercise command line (see :mod:`course_lib.exercises.cli`)."""

from course_lib.exercises.cli import main

raise SystemExit(main())
