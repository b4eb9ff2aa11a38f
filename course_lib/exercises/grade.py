"""Grade submitted exercise notebooks: run each in a fresh kernel, score the checks it recorded.

For each submission the grader

1. finds its solution notebook (same name as the submission or contained in it, e.g.
   ``alice_00_audio_basics.ipynb`` → ``solutions/00_audio_basics.ipynb``) and takes the task list and
   points from the solution's nbgrader grade cells, never from the submission, so deleting a check cell
   cannot hide a task;
2. executes the submission with nbclient in a fresh kernel (cwd = the submission's folder, errors allowed,
   ``cell_timeout`` per cell, after which the cell is interrupted and the run goes on, and ``timeout`` for
   the whole run, after which the kernel is killed), with ``$COURSE_GRADER_RESULTS`` pointing to a
   temporary file that every check appends its result to;
3. if the kernel is still alive, runs the checks of the tasks that recorded nothing (their check cell was
   deleted or never reached) on the functions the notebook defined;
4. scores each task by its last recorded result: full points if it passed, 0 otherwise or if nothing was
   recorded (e.g. the kernel died first).

A time-out, a crash or an unreadable file is reported in the submission's ``status``, never raised.
The notebook file is read once before it runs, so a submission that rewrites its own file changes nothing.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from course_lib.exercises.checks import RESULTS_ENV
from course_lib.exercises.generate import NotebookError, read_notebook, repo_dirs, validate_solution

DEFAULT_TIMEOUT = 120.0  # seconds for a whole submission
DEFAULT_CELL_TIMEOUT = 60.0  # seconds for one cell


class GradeError(ValueError):
    """Grading could not start (no solution notebook to grade against, nothing to grade)."""


@dataclass
class TaskScore:
    """One task of one submission: points earned of ``max_points``, and the check's last message."""

    task: str
    points: float
    max_points: float
    passed: bool | None  # None: no result was recorded
    message: str


@dataclass
class GradeResult:
    """The grade of one submission: per-task scores, how the run went (``status``), and its duration in s."""

    submission: Path
    solution: Path | None
    status: str  # "completed", "errors", "cell timeout", "time limit", "kernel died", "not run"
    detail: str
    scores: list[TaskScore] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> float:
        """Points earned over all tasks."""
        return sum(s.points for s in self.scores)

    @property
    def max_total(self) -> float:
        """Points available over all tasks."""
        return sum(s.max_points for s in self.scores)


def solution_tasks(solution: str | Path | NotebookNode) -> dict[str, float]:
    """Task id → points, in notebook order, from a solution notebook's nbgrader grade cells."""
    nb = read_notebook(solution) if isinstance(solution, (str, Path)) else solution
    return {g.grade_id: g.points for g in validate_solution(nb, str(solution) if isinstance(solution, (str, Path))
                                                            else "solution")}


def find_solution(submission: Path, solutions_dir: Path, nb: NotebookNode | None = None) -> Path:
    """The solution notebook a submission answers: by file name, else by shared grade ids, else the only one."""
    candidates = sorted(solutions_dir.glob("*.ipynb"))
    if not candidates:
        raise GradeError(f"no solution notebooks in {solutions_dir}; pass --solution or --solutions")
    by_name = [c for c in candidates if c.stem in submission.stem]
    if by_name:
        return max(by_name, key=lambda c: len(c.stem))
    if nb is not None:
        ids = {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells}
        overlap = [(len(ids & set(solution_tasks(c))), c) for c in candidates]
        best = max(overlap, key=lambda pair: pair[0])
        if best[0] > 0:
            return best[1]
    if len(candidates) == 1:
        return candidates[0]
    raise GradeError(f"cannot tell which solution {submission.name} answers (none of "
                     f"{[c.name for c in candidates]} is in its name); pass --solution")


def _kernel_name(solution_nb: NotebookNode) -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    wanted = solution_nb.metadata.get("kernelspec", {}).get("name", "python3")
    return wanted if wanted in KernelSpecManager().find_kernel_specs() else "python3"


def _read_results(path: Path) -> list[dict]:
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("task"), str):
                records.append(record)
    return records


_SWEEP = """import course_lib.exercises as _course_exercises
for _task_id in {tasks!r}:
    try:
        _course_exercises.check(_task_id)
    except Exception as _error:
        print(_task_id, 'could not be checked:', _error)
"""


def _run(nb: NotebookNode, tasks: list[str], cwd: Path, env: dict[str, str], kernel: str, timeout: float,
         cell_timeout: float, results: Path) -> tuple[str, str, int]:
    """Execute ``nb`` (and the sweep); return (status, detail, number of records made before the sweep)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    deadline = time.monotonic() + timeout
    errors: list[tuple[int, str]] = []
    client = NotebookClient(
        nb, timeout=max(1, round(cell_timeout)), kernel_name=kernel, allow_errors=True,
        interrupt_on_timeout=True, startup_timeout=max(1, round(min(60.0, timeout))),
        error_on_timeout={"ename": "CellTimeout", "evalue": f"ran longer than {cell_timeout:g} s", "traceback": []},
        resources={"metadata": {"path": str(cwd)}}, record_timing=False,
    )
    client.on_cell_error = lambda cell, cell_index, execute_reply: errors.append(
        (cell_index, execute_reply["content"].get("ename", "error")))
    killed = threading.Event()

    def kill() -> None:
        process = getattr(getattr(client.km, "provisioner", None), "process", None)
        killed.set()
        if process is not None:
            process.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.daemon = True
    watchdog.start()
    index = -1
    before_sweep: int | None = None  # set when the sweep starts: later records came from the grader's checks
    try:
        # the kernel process's own stdout/stderr (not the cells' output) would only add noise to the report
        with client.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            for index, cell in enumerate(nb.cells):
                if killed.is_set() or time.monotonic() > deadline:
                    return "time limit", f"stopped at cell {index} after the {timeout:g} s limit", len(_read_results(results))
                client.execute_cell(cell, index)
            records = _read_results(results)
            before_sweep = len(records)
            missing = [t for t in tasks if t not in {r["task"] for r in records}]
            if missing and not killed.is_set():
                sweep = nbformat.v4.new_code_cell(_SWEEP.format(tasks=missing))
                client.execute_cell(sweep, len(nb.cells))
    except DeadKernelError:
        made = len(_read_results(results)) if before_sweep is None else before_sweep
        if killed.is_set():
            return "time limit", f"killed at cell {index} after the {timeout:g} s limit", made
        return "kernel died", f"the kernel died at cell {index}; later cells did not run", made
    except Exception as err:  # noqa: BLE001 - a submission must never crash the grader
        made = len(_read_results(results)) if before_sweep is None else before_sweep
        if killed.is_set():
            return "time limit", f"stopped after the {timeout:g} s limit", made
        return "not run", f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}", made
    finally:
        watchdog.cancel()
    before_sweep = len(_read_results(results)) if before_sweep is None else before_sweep
    timeouts = [i for i, name in errors if name == "CellTimeout" and i < len(nb.cells)]
    raised = [f"cell {i}: {name}" for i, name in errors if name != "CellTimeout" and i < len(nb.cells)]
    if timeouts:
        return ("cell timeout", f"cell(s) {', '.join(map(str, timeouts))} ran longer than {cell_timeout:g} s and "
                "were interrupted", before_sweep)
    if raised:
        return "errors", f"raised an error in {'; '.join(raised)} (cells counted from 0)", before_sweep
    return "completed", "", before_sweep


def grade_notebook(submission: str | Path, solution: str | Path | None = None,
                   solutions_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                   cell_timeout: float = DEFAULT_CELL_TIMEOUT, kernel_name: str | None = None) -> GradeResult:
    """Run one submitted notebook in a fresh kernel and score it against its solution's grade cells.

    ``solution`` defaults to :func:`find_solution` in ``solutions_dir`` (default: the repository's
    ``solutions/``). ``timeout`` (s) bounds the whole run, ``cell_timeout`` (s) each cell. Never raises for
    a bad submission: problems are reported in the result's ``status`` and ``detail``.
    """
    submission = Path(submission)
    start = time.monotonic()
    if timeout <= 0 or cell_timeout <= 0:
        raise ValueError(f"timeouts must be positive seconds, got timeout={timeout}, cell_timeout={cell_timeout}")
    try:
        nb: NotebookNode | None = read_notebook(submission)
    except NotebookError:
        nb = None
    if solution:
        solution_path = Path(solution)
    else:
        try:
            solution_path = find_solution(submission, Path(solutions_dir or repo_dirs()[0]), nb)
        except GradeError as err:
            return GradeResult(submission, None, "not run", str(err), [], time.monotonic() - start)
    solution_nb = read_notebook(solution_path)
    tasks = solution_tasks(solution_nb)

    def result(status: str, detail: str, records: list[dict], swept_from: int) -> GradeResult:
        last: dict[str, tuple[dict, bool]] = {}
        for i, record in enumerate(records):
            last[record["task"]] = (record, i >= swept_from)
        scores = []
        for name, points in tasks.items():
            record, swept = last.get(name, ({}, False))
            passed = bool(record.get("passed")) if record else None
            message = str(record.get("message", "")) if record else "no result recorded (its check never ran)"
            if swept:
                message += " [checked by the grader: the notebook's check cell did not run]"
            scores.append(TaskScore(name, points if passed else 0.0, points, passed, message))
        return GradeResult(submission, solution_path, status, detail, scores, time.monotonic() - start)

    if nb is None:
        return result("not run", "not a readable notebook", [], 0)
    env = dict(os.environ)
    repo_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    env.pop("NBGRADER_EXECUTION", None)
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        results_file = Path(tmp) / "results.jsonl"
        env[RESULTS_ENV] = str(results_file)
        status, detail, swept_from = _run(nb, list(tasks), submission.resolve().parent, env,
                                          kernel_name or _kernel_name(solution_nb), timeout, cell_timeout,
                                          results_file)
        records = _read_results(results_file)
    return result(status, detail, records, swept_from)


def grade_many(submissions: list[Path], jobs: int = 1, **kwargs) -> list[GradeResult]:
    """Grade several submissions with :func:`grade_notebook` (``kwargs``), ``jobs`` kernels at a time.

    Results come back in the order of ``submissions``. Each submission still gets its own fresh kernel.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(submissions) < 2:
        return [grade_notebook(path, **kwargs) for path in submissions]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda path: grade_notebook(path, **kwargs), submissions))


def collect_submissions(path: str | Path) -> list[Path]:
    """The notebooks to grade: ``path`` itself, or every ``*.ipynb`` under the folder (checkpoints skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise GradeError(f"no such notebook or folder: {path}")
    found = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not found:
        raise GradeError(f"no .ipynb files under {path}")
    return found


def _fmt(points: float) -> str:
    return f"{points:g}"


def format_result(result: GradeResult) -> str:
    """A plain-text table for one submission: task, points, and the check's message."""
    head = f"{result.submission}: {result.status}{' (' + result.detail + ')' if result.detail else ''}, " \
           f"{result.seconds:.1f} s"
    width = max([len("total")] + [len(s.task) for s in result.scores])
    lines = [head]
    for s in result.scores:
        mark = {True: "✅", False: "❌", None: "·"}[s.passed]
        lines.append(f"  {s.task:<{width}}  {_fmt(s.points):>4}/{_fmt(s.max_points):<4} {mark} {s.message}")
    lines.append(f"  {'total':<{width}}  {_fmt(result.total):>4}/{_fmt(result.max_total)}")
    return "\n".join(lines)


def write_csv(results: list[GradeResult], path: str | Path, root: str | Path | None = None) -> Path:
    """One row per submission: file (relative to ``root``), status, detail, points per task, total, max."""
    tasks: list[str] = []
    for r in results:
        tasks += [s.task for s in r.scores if s.task not in tasks]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "status", "detail", *tasks, "total", "max"])
        for r in results:
            name = r.submission
            if root is not None:
                try:
                    name = r.submission.resolve().relative_to(Path(root).resolve())
                except ValueError:
                    pass
            points = {s.task: _fmt(s.points) for s in r.scores}
            writer.writerow([str(name), r.status, r.detail, *(points.get(t, "") for t in tasks),
                             _fmt(r.total), _fmt(r.max_total)])
    return path
