"""Exercises: checks with actionable hints, the exercise generator and the grader.

In a notebook::

    from course_lib.exercises import check
    check("n_frames")          # prints "✅ n_frames: passed" or "❌ n_frames: <hint>", returns a bool

Instructors use the command line (``python -m course_lib.exercises`` or ``course-exercises``)::

    course-exercises generate [--check]         # solutions/*.ipynb -> exercises/*.ipynb (nbgrader-style)
    course-exercises grade SUBMISSION_OR_FOLDER [--timeout 120] [--csv grades.csv]

The generator and grader live in :mod:`course_lib.exercises.generate` and :mod:`course_lib.exercises.grade`;
they are imported lazily so that a notebook's check cell only pays for the checks.
"""

from course_lib.exercises.checks import DEFAULT_TIME_LIMIT, RESULTS_ENV, TASKS, WrongAnswer, check, summary
from course_lib.exercises.ex00 import (
    Event,
    check_count_onsets,
    check_mel_filterbank,
    check_n_frames,
    check_to_db,
    make_event_clip,
)
from course_lib.exercises.ex01 import LESSON as LESSON_01  # noqa: F401  (registers lesson 01's checks)
from course_lib.exercises.ex02 import LESSON as LESSON_02  # noqa: F401  (registers lesson 02's checks)
from course_lib.exercises.ex03 import LESSON as LESSON_03  # noqa: F401  (registers lesson 03's checks)
from course_lib.exercises.ex04 import LESSON as LESSON_04  # noqa: F401  (registers lesson 04's checks)
from course_lib.exercises.ex05 import LESSON as LESSON_05  # noqa: F401  (registers lesson 05's checks)
from course_lib.exercises.ex06 import LESSON as LESSON_06  # noqa: F401  (registers lesson 06's checks)
from course_lib.exercises.ex07 import LESSON as LESSON_07  # noqa: F401  (registers lesson 07's checks)
from course_lib.exercises.ex08 import LESSON as LESSON_08  # noqa: F401  (registers lesson 08's checks)

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "Event",
    "RESULTS_ENV",
    "TASKS",
    "WrongAnswer",
    "check",
    "check_count_onsets",
    "check_mel_filterbank",
    "check_n_frames",
    "check_to_db",
    "make_event_clip",
    "summary",
]
