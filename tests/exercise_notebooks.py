"""What every exercise notebook's tests check, written once (imported by tests/test_exNN.py).

An exercise notebook is right when: the committed exercise is exactly what the generator makes from the
solution; its tasks are the lesson's registered tasks, in order; the nbgrader metadata is what nbgrader
expects; each check passes the solution in under 5 s; each check says "not implemented" for the untouched
stub. The lesson-specific tests (known answers, wrong answers rejected with the right hint) stay in each file.
"""

from __future__ import annotations

import time
from pathlib import Path

from course_lib.exercises import TASKS, check
from course_lib.exercises.generate import read_notebook, render_exercise
from course_lib.exercises.grade import solution_tasks

ROOT = Path(__file__).resolve().parents[1]
NOT_IMPLEMENTED = "not implemented yet (replace `raise NotImplementedError()` with your code)"


def notebook_functions(path: Path, namespace: dict | None = None) -> dict:
    """Execute a notebook's nbgrader solution cells (only) in ``namespace`` (the imports those cells assume)
    and return it, holding the functions they define."""
    namespace = dict(namespace or {})
    for cell in read_notebook(path).cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            exec(compile(cell.source, f"{path.name}:{cell.id}", "exec"), namespace)
    return namespace


def assert_generated_and_registered(solution: Path, exercise: Path, lesson: str, task_ids: list[str]) -> None:
    """The exercise is the generator's output, the tasks match the registry, and the nbgrader cells are well formed."""
    assert render_exercise(solution) == exercise.read_text(encoding="utf-8"), "run `make exercises`"
    assert list(solution_tasks(solution)) == task_ids == [t for t, v in TASKS.items() if v.lesson == lesson]
    nb = read_notebook(solution)
    assert nb.metadata.kernelspec["name"] == "audio-course"
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta and meta["solution"]:
            assert meta == {"solution": True, "grade": False, "locked": False, "grade_id": meta["grade_id"],
                            "schema_version": 3, "task": False}
        elif meta:
            assert meta["grade"] and meta["locked"] and meta["points"] > 0
            assert cell.source.startswith(f'passed = check("{meta["grade_id"]}")')


def assert_check_passes_quickly(task_id: str, functions: dict, capsys) -> None:
    """``check`` accepts the solution's function, in under 5 s, and prints the pass line."""
    start = time.monotonic()
    assert check(task_id, functions[task_id]) is True
    assert time.monotonic() - start < 5.0
    assert capsys.readouterr().out.strip() == f"✅ {task_id}: passed"


def assert_stubs_not_implemented(exercise: Path, task_ids: list[str], capsys, namespace: dict | None = None) -> None:
    """Every check on the untouched exercise's stubs says "not implemented", not a traceback."""
    stubs = notebook_functions(exercise, namespace)
    for task_id in task_ids:
        assert check(task_id, stubs[task_id]) is False
        assert capsys.readouterr().out.strip() == f"❌ {task_id}: {NOT_IMPLEMENTED}"
