"""Generate exercise notebooks from solution notebooks, the way nbgrader's ``generate_assignment`` does.

A solution notebook (``solutions/NN_name.ipynb``) marks its answers with nbgrader's delimiters::

    def n_frames(num_samples, hop_length, n_fft, center):
        ### BEGIN SOLUTION
        return ...
        ### END SOLUTION

and its cells carry nbgrader metadata (``"nbgrader": {"solution": true, "grade_id": ..., ...}``). The
exercise (``exercises/NN_name.ipynb``) is derived from it by the same rules as nbgrader's preprocessors:

* ``ClearSolutions``: in a code cell, each region between a line containing ``BEGIN SOLUTION`` and one
  containing ``END SOLUTION`` becomes ``# YOUR CODE HERE`` / ``raise NotImplementedError()``, indented like
  the ``BEGIN`` line; in a markdown cell it becomes ``YOUR ANSWER HERE``; the marker lines go. A solution
  cell without markers is replaced by the stub entirely. Markers in a cell not marked as a solution are an
  error (nbgrader's ``enforce_metadata``).
* ``ClearHiddenTests``: lines between ``BEGIN HIDDEN TESTS`` and ``END HIDDEN TESTS`` (grade cells only)
  are removed with their markers.
* ``ClearOutput`` and ``LockCells``: outputs and execution counts are stripped; grade and locked cells
  become non-editable and non-deletable, solution cells non-deletable.

The output is written with :func:`notebook_text` (nbformat's JSON layout, fixed cell ids), so generating
twice gives byte-identical files and a test can compare the committed exercises with fresh ones.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN_TESTS, END_HIDDEN_TESTS = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
_TRANSIENT_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")


class NotebookError(ValueError):
    """A solution notebook that cannot be turned into an exercise; the message names the notebook and cell."""


def _nbgrader(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_solution_cell(cell: NotebookNode) -> bool:
    """True for a cell with nbgrader metadata ``"solution": true`` (where the student writes)."""
    return bool(_nbgrader(cell).get("solution", False))


def is_grade_cell(cell: NotebookNode) -> bool:
    """True for a cell with nbgrader metadata ``"grade": true`` (a check cell worth ``points``)."""
    return bool(_nbgrader(cell).get("grade", False))


def _replace_regions(source: str, begin: str, end: str, stub: list[str] | None, where: str) -> tuple[str, bool]:
    """Replace (``stub``) or remove (``None``) each begin/end-delimited region; return (source, found)."""
    out: list[str] = []
    inside = found = False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise NotebookError(f"{where}: nested '{begin}' markers")
            inside = found = True
            if stub is not None:
                indent = re.match(r"\s*", line).group(0)  # type: ignore[union-attr]
                out.extend(indent + s for s in stub)
        elif end in line:
            if not inside:
                raise NotebookError(f"{where}: '{end}' without a matching '{begin}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise NotebookError(f"{where}: '{begin}' without a matching '{end}'")
    return "\n".join(out), found


def clear_cell(cell: NotebookNode, where: str = "cell") -> NotebookNode:
    """Return the student version of one cell (solutions stubbed, hidden tests removed, outputs stripped)."""
    cell = copy.deepcopy(cell)
    stub = (CODE_STUB if cell.cell_type == "code" else TEXT_STUB).split("\n")
    source, replaced = _replace_regions(cell.source, BEGIN_SOLUTION, END_SOLUTION, stub, where)
    if replaced and not is_solution_cell(cell):
        raise NotebookError(f"{where}: solution markers in a cell not marked as an nbgrader solution cell")
    if is_solution_cell(cell) and not replaced:
        source = "\n".join(stub)
    source, removed = _replace_regions(source, BEGIN_HIDDEN_TESTS, END_HIDDEN_TESTS, None, where)
    if removed and not is_grade_cell(cell):
        raise NotebookError(f"{where}: hidden tests in a cell not marked as an nbgrader grade cell")
    cell.source = source
    for key in _TRANSIENT_CELL_METADATA:
        cell.metadata.pop(key, None)
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    if is_grade_cell(cell) or _nbgrader(cell).get("locked", False):
        cell.metadata["editable"] = False
        cell.metadata["deletable"] = False
    elif is_solution_cell(cell):
        cell.metadata["deletable"] = False
    return cell


@dataclass
class GradeCell:
    """A check cell of a solution notebook: its nbgrader ``grade_id`` (= the task id) and ``points``."""

    grade_id: str
    points: float
    index: int = field(default=-1)


def validate_solution(nb: NotebookNode, name: str = "notebook") -> list[GradeCell]:
    """Check a solution notebook's nbgrader metadata; return its grade cells in order.

    Raises :class:`NotebookError` naming the notebook and cell for a missing or duplicate ``grade_id``, a
    grade cell without non-negative ``points``, or unbalanced markers.
    """
    seen: dict[str, int] = {}
    grades: list[GradeCell] = []
    for index, cell in enumerate(nb.cells):
        meta = _nbgrader(cell)
        where = f"{name}, cell {index}"
        if not meta:
            continue
        grade_id = meta.get("grade_id")
        if not isinstance(grade_id, str) or not grade_id:
            raise NotebookError(f"{where}: nbgrader cells need a non-empty 'grade_id'")
        if grade_id in seen:
            raise NotebookError(f"{where}: grade_id {grade_id!r} already used by cell {seen[grade_id]}")
        seen[grade_id] = index
        if meta.get("grade", False):
            points = meta.get("points")
            if not isinstance(points, (int, float)) or isinstance(points, bool) or points < 0:
                raise NotebookError(f"{where}: grade cell {grade_id!r} needs non-negative 'points', got {points!r}")
            grades.append(GradeCell(grade_id, float(points), index))
    return grades


def read_notebook(path: str | Path) -> NotebookNode:
    """Read a notebook (nbformat 4) keeping its cell ids as written; cells without one get ``cell-<index>``.

    (nbformat itself would invent random ids for such cells, which would make generation non-reproducible.)
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotebookError(f"{path}: not a readable notebook ({err})") from err
    if not isinstance(raw, dict) or raw.get("nbformat") != 4 or not isinstance(raw.get("cells"), list):
        raise NotebookError(f"{path}: expected an nbformat 4 notebook (a JSON object with 'cells')")
    for index, cell in enumerate(raw["cells"]):
        if isinstance(cell, dict) and not cell.get("id"):
            cell["id"] = f"cell-{index}"
    raw["nbformat_minor"] = max(int(raw.get("nbformat_minor", 5)), 5)
    return nbformat.reads(json.dumps(raw), as_version=4)  # joins multi-line sources; ids are all set


def notebook_text(nb: NotebookNode) -> str:
    """Serialise a notebook as nbformat/Jupyter do (1-space indent, sorted keys) plus a final newline."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def make_exercise(solution: NotebookNode, name: str = "notebook") -> NotebookNode:
    """Return the exercise version of a solution notebook (see the module docstring for the rules)."""
    language = solution.metadata.get("kernelspec", {}).get("language", "python")
    if language != "python":
        raise NotebookError(f"{name}: only Python notebooks are supported, kernelspec language is {language!r}")
    validate_solution(solution, name)
    exercise = copy.deepcopy(solution)
    exercise.metadata.pop("celltoolbar", None)
    exercise.cells = [clear_cell(cell, f"{name}, cell {i}") for i, cell in enumerate(solution.cells)]
    return exercise


def render_exercise(solution_path: str | Path) -> str:
    """The exercise notebook's file content for ``solution_path``, byte-for-byte reproducible."""
    solution_path = Path(solution_path)
    return notebook_text(make_exercise(read_notebook(solution_path), str(solution_path)))


def repo_dirs() -> tuple[Path, Path]:
    """Default ``(solutions, exercises)`` folders: under the current directory if it has ``solutions/``,
    else under the repository that holds this package."""
    root = Path.cwd()
    if not (root / "solutions").is_dir():
        root = Path(__file__).resolve().parents[2]
    return root / "solutions", root / "exercises"


def sync_exercises(solutions_dir: str | Path | None = None, exercises_dir: str | Path | None = None,
                   check_only: bool = False) -> list[Path]:
    """Regenerate ``exercises_dir/*.ipynb`` from ``solutions_dir/*.ipynb``; return the files that were stale.

    Stale means missing, different from a fresh generation, or an exercise without a solution. With
    ``check_only`` nothing is written (``generate --check``); otherwise stale files are rewritten and
    exercises without a solution are deleted.
    """
    default_solutions, default_exercises = repo_dirs()
    solutions_dir = Path(solutions_dir or default_solutions)
    exercises_dir = Path(exercises_dir or default_exercises)
    if not solutions_dir.is_dir():
        raise NotebookError(f"solutions folder not found: {solutions_dir}")
    stale: list[Path] = []
    for solution in sorted(solutions_dir.glob("*.ipynb")):
        text = render_exercise(solution).encode("utf-8")
        target = exercises_dir / solution.name
        if not target.is_file() or target.read_bytes() != text:
            stale.append(target)
            if not check_only:
                exercises_dir.mkdir(parents=True, exist_ok=True)
                target.write_bytes(text)
    if exercises_dir.is_dir():
        for orphan in sorted(exercises_dir.glob("*.ipynb")):
            if not (solutions_dir / orphan.name).is_file():
                stale.append(orphan)
                if not check_only:
                    orphan.unlink()
    return stale
