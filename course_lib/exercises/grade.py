"""Grade submitted exercise notebooks: the grader, not the submission, owns the checks and the score.

For each submission the grader

1. reads it defensively (:func:`read_submission`): a file that is not a well-formed nbformat 4 notebook is
   reported ``not run`` with the reason (``cell 3's source is a list of int``), never raised;
2. finds its solution notebook (same name as the submission or contained in it, e.g.
   ``alice_00_audio_basics.ipynb`` → ``solutions/00_audio_basics.ipynb``) and takes the task list, the
   points and the **check cells** from the solution's nbgrader grade cells, as nbgrader's autograder does:
   a check cell the student edited gets the instructor's source back, a deleted one is re-inserted after
   the cell it followed in the solution (:func:`plan_run`);
3. runs two fresh processes side by side, each in its own **throw-away copy** of the submission's folder
   (:class:`Sandbox`: the notebook and its sibling files, other notebooks left out, 64 MB at most), with a
   minimal environment (not the instructor's) and a write guard (:func:`install_guard`):

   * the notebook in a Jupyter kernel with nbclient, as the student runs it (errors allowed, ``cell_timeout``
     per cell, after which the cell is interrupted, ``timeout`` for the whole run, after which the kernel is
     killed). This run decides the ``status`` (completed, errors, cell timeout, time limit, kernel died;
     ``empty notebook`` and ``not run`` when there is nothing to run); nothing the kernel prints or writes
     is scored;
   * the **scoring process** (:func:`score_main`), a plain Python process that imports the checks first,
     keeps its own references to them, then executes the student's code cells (not the check cells) in a
     fresh namespace and, at each check cell's place, puts back every module's globals as they were before
     the student's code ran and runs the task's check on the function the notebook defined. Each result
     goes to the grader on a pipe, prefixed with a secret made for this run; lines without it are ignored.
     Patching ``checks._run``, replacing ``checks.TASKS[...]`` or redefining ``check()`` in the notebook
     therefore changes nothing, and ``$COURSE_GRADER_RESULTS`` is not even set;
4. kills both processes' whole process groups, and every process that still carries the run's marker in
   its environment, then deletes the throw-away folders;
5. scores each task by the scoring process's result: full points if it passed, 0 otherwise or if the run
   stopped before that check (e.g. ``os._exit`` in an earlier cell).

A time-out, a crash or an unreadable file is reported in the submission's ``status``, never raised, and
:func:`grade_many` turns even a bug of the grader into one ``not run`` row, so a batch always finishes.

Why two runs: the kernel run is the notebook as the student sees it (magics, display, the course's kernel),
so its status is what the student would see; but everything in that kernel, the check module included, is
the student's to change, so no score can come from it. The scoring process never ran as a kernel, and the
grader's references into it are taken before any student code runs. Both run at the same time, so a
submission costs about one run of wall time on two cores.

This is not a security sandbox for hostile code: code that inspects the scoring process's memory or stack,
mutates third-party objects in place (a torch function's ``__code__``), or escapes through C (ctypes, a C
extension) can still cheat or write outside the folder. The README's instructor guide lists what is and is
not defended.
"""

from __future__ import annotations

import copy
import csv
import inspect
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from course_lib.exercises.generate import (
    NotebookError,
    clear_cell,
    is_grade_cell,
    read_notebook,
    repo_dirs,
    validate_solution,
)

DEFAULT_TIMEOUT = 120.0  # seconds for a whole submission
DEFAULT_CELL_TIMEOUT = 60.0  # seconds for one cell
MAX_NOTEBOOK_BYTES = 32 * 2**20  # a bigger .ipynb is not read
COPY_LIMIT_BYTES = 64 * 2**20  # sibling files copied into the throw-away folder, at most
COPY_LIMIT_FILES = 2000
ROOT_ENV = "COURSE_GRADER_ROOT"  # the throw-away folder the write guard allows
RUN_ENV = "COURSE_GRADER_RUN"  # a marker in the environment of every process of one run, to find and kill them
_REPO_ROOT = Path(__file__).resolve().parents[2]


class GradeError(ValueError):
    """Grading could not start (no solution notebook to grade against, nothing to grade)."""


@dataclass
class TaskScore:
    """One task of one submission: points earned of ``max_points``, and the check's message."""

    task: str
    points: float
    max_points: float
    passed: bool | None  # None: no result (the run stopped before the check)
    message: str


@dataclass
class GradeResult:
    """The grade of one submission: per-task scores, how the run went (``status``), and its duration in s."""

    submission: Path
    solution: Path | None
    status: str  # "completed", "errors", "cell timeout", "time limit", "kernel died", "empty notebook", "not run"
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


# --------------------------------------------------------------------------------------------------------
# Solutions
# --------------------------------------------------------------------------------------------------------


def solution_tasks(solution: str | Path | NotebookNode) -> dict[str, float]:
    """Task id → points, in notebook order, from a solution notebook's nbgrader grade cells."""
    nb = read_notebook(solution) if isinstance(solution, (str, Path)) else solution
    name = str(solution) if isinstance(solution, (str, Path)) else "solution"
    return {g.grade_id: g.points for g in validate_solution(nb, name)}


def _grade_id(cell: NotebookNode) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader", {}) or {}
    grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
    return grade_id if isinstance(grade_id, str) else None


def find_solution(submission: Path, solutions_dir: Path, nb: NotebookNode | None = None) -> Path:
    """The solution notebook a submission answers: by file name, else by shared grade ids, else the only one."""
    candidates = sorted(solutions_dir.glob("*.ipynb"))
    if not candidates:
        raise GradeError(f"no solution notebooks in {solutions_dir}; pass --solution or --solutions")
    by_name = [c for c in candidates if c.stem in submission.stem]
    if by_name:
        return max(by_name, key=lambda c: len(c.stem))
    if nb is not None:
        ids = {_grade_id(c) for c in nb.cells}
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


# --------------------------------------------------------------------------------------------------------
# Reading a submission: never trust its shape
# --------------------------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    """'a str', 'an int', 'a list of int': what a JSON value is, for a message."""
    if isinstance(value, list):
        inner = sorted({type(v).__name__ for v in value})
        return f"a list of {' and '.join(inner)}" if inner else "an empty list"
    name = type(value).__name__ if value is not None else "null"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _shape_problem(raw: object) -> str | None:
    """What makes ``raw`` (parsed JSON) not an nbformat 4 notebook the grader can run, or None."""
    if not isinstance(raw, dict):
        return f"the file is {_kind(raw)} of JSON, not a notebook object"
    if raw.get("nbformat") != 4:
        return f"expected nbformat 4, got {raw.get('nbformat')!r}"
    minor = raw.get("nbformat_minor", 5)
    if not isinstance(minor, int) or isinstance(minor, bool):
        return f"nbformat_minor should be an int, got {minor!r}"
    if not isinstance(raw.get("metadata", {}), dict):
        return f"the notebook's metadata is {_kind(raw['metadata'])}, not an object"
    cells = raw.get("cells")
    if not isinstance(cells, list):
        return f"'cells' is {_kind(cells)}, not a list"
    for index, cell in enumerate(cells):
        where = f"cell {index}"
        if not isinstance(cell, dict):
            return f"{where} is {_kind(cell)}, not an object"
        if cell.get("cell_type") not in ("code", "markdown", "raw"):
            return f"{where} has cell_type {cell.get('cell_type')!r}"
        source = cell.get("source", "")
        if not isinstance(source, str) and not (isinstance(source, list) and all(isinstance(s, str) for s in source)):
            return f"{where}'s source is {_kind(source)}, not text"
        metadata = cell.get("metadata", {})
        if not isinstance(metadata, dict) or not isinstance(metadata.get("nbgrader", {}), dict):
            return f"{where}'s metadata is not an object"
        if not isinstance(cell.get("id", ""), str):
            return f"{where}'s id is {_kind(cell['id'])}, not a string"
        if cell["cell_type"] == "code":
            outputs = cell.get("outputs", [])
            if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
                return f"{where}'s outputs are {_kind(outputs)}, not a list of objects"
            count = cell.get("execution_count")
            if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
                return f"{where}'s execution_count is {_kind(count)}"
    return None


def read_submission(path: str | Path) -> NotebookNode:
    """Read a submitted notebook for grading, outputs dropped (it is re-run); raise :class:`NotebookError`.

    Unlike :func:`~course_lib.exercises.generate.read_notebook` (made for the course's own, trusted
    notebooks), every shape is checked first, so any file, however malformed, gives a ``NotebookError``
    whose message says what is wrong (``not a readable notebook: cell 3's source is a list of int``), and
    nothing else.
    """
    path = Path(path)

    def bad(reason: str) -> NotebookError:
        return NotebookError(f"not a readable notebook: {reason}")

    try:
        if not path.is_file():  # a folder, a FIFO or a device would never be read to the end
            raise bad("not a regular file")
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            raise bad(f"larger than {MAX_NOTEBOOK_BYTES // 2**20} MB")
        data = path.read_bytes()
    except OSError as err:
        raise bad(f"cannot read the file ({err.strerror or err})") from err
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("not UTF-8 text (a binary file?)") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise bad(f"not JSON ({err})") from None
    problem = _shape_problem(raw)
    if problem:
        raise bad(problem)
    for index, cell in enumerate(raw["cells"]):
        if not cell.get("id"):
            cell["id"] = f"cell-{index}"
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    raw["nbformat_minor"] = max(raw.get("nbformat_minor", 5), 5)
    try:
        return nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as err:  # noqa: BLE001 - whatever nbformat dislikes is a bad submission, not a crash
        raise bad(f"{type(err).__name__}: {err}") from None


# --------------------------------------------------------------------------------------------------------
# What runs: the submission's cells with the instructor's check cells
# --------------------------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """The notebook as graded, and the scoring process's program.

    ``notebook``: the submission's cells with each task's check cell taken from the solution (restored or
    re-inserted). ``origin[i]``: the submission's index of graded cell ``i`` (None: a check cell the grader
    inserted). ``steps``: ``("cell", i, source)`` for a code cell of the student, ``("check", task)`` where a
    check cell is. ``restored``: tasks whose check cell was missing from the submission.
    """

    notebook: NotebookNode
    origin: list[int | None]
    steps: list[tuple]
    restored: set[str]


def plan_run(nb: NotebookNode, solution_nb: NotebookNode, tasks: list[str]) -> RunPlan:
    """Put the solution's check cells into a copy of ``nb`` (see :class:`RunPlan`).

    A submission cell with a task's ``grade_id`` gets the instructor's source (as the exercise shows it: hidden
    tests removed, so a failed check prints its hint and the notebook runs on); only its first such cell
    counts as the check. A task without one gets the solution's check cell right after the nearest solution
    cell before it that the submission still has (matched by cell id or grade id), else at the end.
    """
    check_cells = {}
    for index, cell in enumerate(solution_nb.cells):
        if is_grade_cell(cell) and _grade_id(cell) in tasks:
            check_cells[_grade_id(cell)] = (index, cell)
    cells = [copy.deepcopy(c) for c in nb.cells]
    origin: list[int | None] = list(range(len(cells)))
    check_at: dict[str, int] = {}
    restored: set[str] = set()
    used_ids = {c.get("id") for c in cells}

    def keys(cell: NotebookNode) -> set:
        return {k for k in (cell.get("id"), _grade_id(cell)) if k}

    for task in tasks:
        sol_index, sol_cell = check_cells[task]
        grader_cell = clear_cell(sol_cell, f"solution check cell {task!r}")
        found = next((i for i, c in enumerate(cells) if _grade_id(c) == task), None)
        if found is not None:
            grader_cell.id = cells[found].get("id") or grader_cell.id
            cells[found] = grader_cell
            check_at[task] = found
            continue
        restored.add(task)
        at = len(cells)
        for before in reversed(solution_nb.cells[:sol_index]):
            match = next((i for i, c in enumerate(cells) if keys(c) & keys(before)), None)
            if match is not None:
                at = match + 1
                break
        if grader_cell.id in used_ids:
            grader_cell.id = f"grader-check-{task}"
        used_ids.add(grader_cell.id)
        cells.insert(at, grader_cell)
        origin.insert(at, None)
        check_at = {t: i + (i >= at) for t, i in check_at.items()}
        check_at[task] = at
    by_index = {i: t for t, i in check_at.items()}
    steps: list[tuple] = []
    for index, cell in enumerate(cells):
        if index in by_index:
            steps.append(("check", by_index[index]))
        elif cell.cell_type == "code":
            steps.append(("cell", index, cell.source))
    graded = copy.deepcopy(nb)
    graded.cells = cells
    return RunPlan(graded, origin, steps, restored)


# --------------------------------------------------------------------------------------------------------
# Isolation: a throw-away folder, a minimal environment, a write guard, and killing what was started
# --------------------------------------------------------------------------------------------------------


def install_guard(root: str) -> None:
    """Refuse, in this Python process, writes outside ``root`` and starting other processes (best effort).

    The grader copies this function's source into a ``sitecustomize.py`` that every Python process of a
    graded run imports at start-up, before any student code. It adds an audit hook (PEP 578), which Python
    code cannot remove, that raises ``PermissionError`` for: opening a file for writing, creating, removing,
    renaming, linking, truncating or changing the mode, owner or times of a path outside ``root`` (the
    throw-away folder; ``os.devnull`` is allowed); and starting a process (``subprocess``, ``os.system``,
    ``os.exec*``, ``os.fork``, ``os.posix_spawn``). Audit hooks do not see what C code does by itself (a C
    extension, a libc function called through ctypes) nor calls relative to a directory descriptor
    (``dir_fd``): the grader's process-group kill and its throw-away folder are the backstop.
    """
    import os
    import sys

    root = os.path.realpath(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    path_args = {"os.mkdir": (0,), "os.rmdir": (0,), "os.remove": (0,), "os.rename": (0, 1), "os.link": (0, 1),
                 "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
                 "os.chflags": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
    spawning = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                "os.forkpty", "pty.spawn"}

    def outside(path: object) -> bool:
        if isinstance(path, int):  # a file descriptor: checked when it was opened
            return False
        try:
            full = os.path.realpath(os.fsdecode(os.fspath(path)))
        except (TypeError, ValueError):
            return False
        return full != os.devnull and full != root and not full.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            if len(args) >= 3 and isinstance(args[2], int) and args[2] & write_flags and outside(args[0]):
                raise PermissionError(f"the grader refuses writing outside the notebook's throw-away folder: "
                                      f"{args[0]!r}")
        elif event in path_args:
            for i in path_args[event]:
                if i < len(args) and outside(args[i]):
                    raise PermissionError(f"the grader refuses {event} outside the notebook's throw-away "
                                          f"folder: {args[i]!r}")
        elif event in spawning:
            raise PermissionError(f"the grader does not let a graded notebook start other processes ({event})")

    sys.addaudithook(hook)


class Sandbox:
    """A throw-away folder for one process of one graded run: ``work`` (a copy of the submission's folder, the
    cwd), ``home`` (``$HOME``) and ``tmp`` (``$TMPDIR``), all under ``root``, which the write guard allows.

    The copy holds the submission and the files beside it (subfolders included) but no other notebook (other
    students' submissions stay out of reach), no symbolic link, and at most :data:`COPY_LIMIT_BYTES` /
    :data:`COPY_LIMIT_FILES`; ``skipped`` counts what was left out.
    """

    def __init__(self, root: Path, submission: Path) -> None:
        self.root = root
        self.work, self.home, self.tmp = root / "work", root / "home", root / "tmp"
        for folder in (self.work, self.home, self.tmp):
            folder.mkdir(parents=True)
        self.notebook = self.work / submission.name
        self.skipped = self._copy(submission)

    def _copy(self, submission: Path) -> int:
        source = submission.resolve().parent
        shutil.copyfile(submission, self.notebook)
        budget, files, skipped = COPY_LIMIT_BYTES - self.notebook.stat().st_size, 1, 0
        for folder, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if d not in (".ipynb_checkpoints", "__pycache__", ".git")
                             and not os.path.islink(os.path.join(folder, d)))
            if files >= COPY_LIMIT_FILES:  # a notebook graded in a big folder (a home folder): stop looking
                return skipped + len(names)
            for name in sorted(names):
                path = Path(folder) / name
                if path == submission.resolve() or path.suffix == ".ipynb" or path.is_symlink() or not path.is_file():
                    continue
                size = path.stat().st_size
                if size > budget or files >= COPY_LIMIT_FILES:
                    skipped += 1
                    continue
                target = self.work / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(path, target)
                except OSError:
                    skipped += 1
                    continue
                budget, files = budget - size, files + 1
        return skipped

    def env(self, guard_dir: Path, marker: str) -> dict[str, str]:
        """The whole environment of a graded process: no variable of the instructor's beyond these."""
        python_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": os.pathsep.join([python_bin, os.environ.get("PATH", os.defpath)]),
            "HOME": str(self.home), "TMPDIR": str(self.tmp), "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONPATH": os.pathsep.join([str(guard_dir), str(_REPO_ROOT)]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            ROOT_ENV: str(self.root), RUN_ENV: marker,
        }
        for name in ("COURSE_RUN_SIZE", "COURSE_NUM_THREADS", "LC_ALL", "LC_CTYPE", "TZ"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env


def write_guard(folder: Path) -> Path:
    """Write ``folder/sitecustomize.py``, which installs :func:`install_guard` for ``$COURSE_GRADER_ROOT``."""
    folder.mkdir(parents=True, exist_ok=True)
    source = inspect.getsource(install_guard)
    (folder / "sitecustomize.py").write_text(
        "# Written by course_lib.exercises.grade for one graded run: see install_guard there.\n"
        f"import os\n\n\n{source}\n\nif os.environ.get({ROOT_ENV!r}):\n"
        f"    install_guard(os.environ[{ROOT_ENV!r}])\n", encoding="utf-8")
    return folder


def kill_run(pgid: int | None, marker: str) -> None:
    """Kill a run's process group ``pgid`` and every process whose environment carries ``marker``.

    Both processes of a run are started in a new session, so everything they start is in their process
    group unless it calls ``setsid``; such a process still inherits the environment, whose
    ``COURSE_GRADER_RUN=<marker>`` the scan of ``/proc`` finds (Linux; it misses a process that also
    replaced its environment).
    """
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc = Path("/proc")
    if not proc.is_dir():
        return
    tag = f"{RUN_ENV}={marker}".encode()
    for _ in range(2):  # a second pass catches a child forked during the first
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if tag in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue


# --------------------------------------------------------------------------------------------------------
# The kernel run: the notebook as the student runs it, for the status
# --------------------------------------------------------------------------------------------------------


def _run_kernel(plan: RunPlan, box: Sandbox, env: dict[str, str], kernel: str, timeout: float,
                cell_timeout: float, marker: str) -> tuple[str, str]:
    """Execute the graded notebook in a fresh kernel in ``box``; return (status, detail)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = plan.notebook
    deadline = time.monotonic() + timeout
    errors: list[tuple[int, str]] = []
    client = NotebookClient(
        nb, timeout=max(1, round(cell_timeout)), kernel_name=kernel, allow_errors=True,
        interrupt_on_timeout=True, startup_timeout=max(1, round(min(60.0, timeout))),
        error_on_timeout={"ename": "CellTimeout", "evalue": f"ran longer than {cell_timeout:g} s", "traceback": []},
        resources={"metadata": {"path": str(box.work)}}, record_timing=False, shutdown_kernel="immediate",
    )
    client.on_cell_error = lambda cell, cell_index, execute_reply: errors.append(
        (cell_index, execute_reply["content"].get("ename", "error")))
    killed = threading.Event()
    pgid: list[int] = []

    def kill() -> None:
        killed.set()
        kill_run(pgid[0] if pgid else None, marker)

    watchdog = threading.Timer(timeout, kill)
    watchdog.daemon = True
    watchdog.start()
    index = -1
    try:
        # the kernel process's own stdout/stderr (not the cells' output) would only add noise to the report
        with client.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            provisioner = getattr(client.km, "provisioner", None)
            if getattr(provisioner, "pgid", None):
                pgid.append(provisioner.pgid)
            for index, cell in enumerate(nb.cells):
                if killed.is_set() or time.monotonic() > deadline:
                    return "time limit", f"stopped at {_where(plan, index)} after the {timeout:g} s limit"
                client.execute_cell(cell, index)
    except DeadKernelError:
        if killed.is_set():
            return "time limit", f"killed at {_where(plan, index)} after the {timeout:g} s limit"
        return "kernel died", f"the kernel died at {_where(plan, index)}; later cells did not run"
    except Exception as err:  # noqa: BLE001 - a submission must never crash the grader
        if killed.is_set():
            return "time limit", f"stopped after the {timeout:g} s limit"
        text = str(err).strip()
        return "not run", f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
    finally:
        watchdog.cancel()
        kill_run(pgid[0] if pgid else None, marker)
    timeouts = [_where(plan, i) for i, name in errors if name == "CellTimeout"]
    raised = [f"{_where(plan, i)}: {name}" for i, name in errors if name != "CellTimeout"]
    if timeouts:
        return "cell timeout", f"{', '.join(timeouts)} ran longer than {cell_timeout:g} s and were interrupted"
    if raised:
        return "errors", f"raised an error in {'; '.join(raised)} (cells counted from 0)"
    return "completed", ""


def _where(plan: RunPlan, index: int) -> str:
    """'cell 7' (numbered as in the submission) or "the grader's check cell for n_frames"."""
    if 0 <= index < len(plan.origin) and plan.origin[index] is None:
        return f"the grader's check cell for {_grade_id(plan.notebook.cells[index])}"
    return f"cell {plan.origin[index] if 0 <= index < len(plan.origin) else index}"


# --------------------------------------------------------------------------------------------------------
# The scoring process: the grader's own checks on the student's functions, in a process of its own
# --------------------------------------------------------------------------------------------------------


def score_main() -> None:
    """The scoring process: run the student's code cells, and the grader's checks where the check cells are.

    The grader runs this function's source as ``python -c`` (so the process imports neither nbformat nor
    this module: half a second less per submission, and nothing of the grader's but this function). It reads
    one JSON line on stdin (the run's secret, the steps of :class:`RunPlan`, the tasks, the cell time limit)
    and answers ``<secret> {"task": ..., "passed": ..., "message": ...}`` per check, then ``<secret> {"done":
    true}``, on its original stdout, which the student's code never gets: fds 0, 1 and 2 point to
    ``/dev/null`` before it runs. Before the student's code runs it keeps its own references to the check
    function, to a copy of each task, to every loaded module's globals and to the code of the course's own
    classes and functions; before each check and before each result is written, all of it is put back, so
    what a notebook patches (``checks._run`` or its ``__code__``, ``checks.TASKS``, ``CheckContext.call``,
    ``check``, ``json.dumps``...) does not reach the score. A cell runs at most ``cell_timeout`` s (a
    SIGUSR1 from a timer thread, which leaves the checks' own SIGALRM alone). It ends with ``os._exit``, so
    that nothing the student registered runs afterwards.
    """
    import builtins
    import dataclasses
    import json
    import os
    import signal
    import sys
    import threading
    import types
    from contextlib import contextmanager

    payload = json.loads(sys.stdin.readline())
    secret, write, exit_now = payload["secret"], os.write, os._exit
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def emit(record: dict) -> None:
        write(out, (secret + " " + json.dumps(record) + "\n").encode())

    class CellTimeout(BaseException):
        """A cell ran past the time limit (a BaseException: a student's ``except Exception`` can't swallow it)."""

    def on_signal(signum: int, frame: object) -> None:
        raise CellTimeout()

    @contextmanager
    def limited(seconds: float):
        signal.signal(signal.SIGUSR1, on_signal)
        done, main = threading.Event(), threading.main_thread().ident

        def watchdog() -> None:
            wait = seconds
            while not done.wait(wait):  # again every 0.5 s, in case the student's code caught it
                signal.pthread_kill(main, signal.SIGUSR1)
                wait = 0.5

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            yield
        finally:
            done.set()

    try:
        from IPython.core.inputtransformer2 import TransformerManager
        from IPython.display import display

        import course_lib.exercises  # noqa: F401 - registers every lesson's tasks
        from course_lib.exercises import checks

        run_check, time_limit = checks._run, checks.DEFAULT_TIME_LIMIT
        tasks = {t: dataclasses.replace(checks.TASKS[t]) for t in payload["tasks"]}
        transform = TransformerManager().transform_cell
        main_module = types.ModuleType("__main__")  # the student's namespace, as the kernel's user module
        sys.modules["__main__"] = main_module

        def get_ipython():  # as in the kernel, for cells with magics (%timeit, !ls)
            from IPython.core.interactiveshell import InteractiveShell

            return InteractiveShell.instance()

        main_module.__dict__.update(__builtins__=builtins, display=display, get_ipython=get_ipython)
        saved = {name: (m, dict(vars(m))) for name, m in list(sys.modules.items())
                 if isinstance(m, types.ModuleType) and name != "__main__"}
        # the course's own classes and functions, which a notebook could change in place rather than replace
        classes = {c: dict(vars(c)) for name, (m, namespace) in saved.items() if name.startswith("course_lib")
                   for c in namespace.values() if isinstance(c, type) and c.__module__ == name}
        functions = [(f, f.__code__, f.__defaults__, f.__kwdefaults__)
                     for namespace in [ns for name, (m, ns) in saved.items() if name.startswith("course_lib")]
                     + list(classes.values())
                     for f in namespace.values() if isinstance(f, types.FunctionType)]
    except BaseException as err:  # noqa: BLE001 - report the grader's own failure instead of dying silently
        emit({"error": f"{type(err).__name__}: {err}"})
        exit_now(1)

    def restore() -> None:
        sys.settrace(None)
        sys.setprofile(None)
        for name, (module, namespace) in saved.items():
            sys.modules[name] = module
            vars(module).update(namespace)
        for cls, attributes in classes.items():
            for key in set(vars(cls)) | set(attributes):
                if vars(cls).get(key) is not attributes.get(key):
                    try:
                        if key in attributes:
                            setattr(cls, key, attributes[key])
                        else:
                            delattr(cls, key)
                    except (AttributeError, TypeError):  # a slot the student could not change either
                        pass
        for function, code, defaults, kwdefaults in functions:
            function.__code__, function.__defaults__, function.__kwdefaults__ = code, defaults, kwdefaults

    cell_timeout = float(payload["cell_timeout"])
    for step in payload["steps"]:
        if step[0] == "cell":
            try:
                with limited(cell_timeout):
                    exec(compile(transform(step[2]), f"<cell {step[1]}>", "exec"), main_module.__dict__)
            except BaseException:  # noqa: BLE001 - a failing cell fails in the notebook too; go on
                pass
            continue
        task = step[1]
        restore()
        try:
            with limited(cell_timeout):
                passed, message = run_check(tasks[task], main_module.__dict__.get(task), time_limit)
        except BaseException as err:  # noqa: BLE001
            passed, message = False, f"the check was stopped ({type(err).__name__})"
        restore()
        emit({"task": task, "passed": bool(passed), "message": str(message)})
    emit({"done": True})
    exit_now(0)


class _Scorer:
    """The grader's side of the scoring process: start it, feed it, collect its authenticated results."""

    def __init__(self, plan: RunPlan, tasks: list[str], box: Sandbox, env: dict[str, str], timeout: float,
                 cell_timeout: float, marker: str, log: Path) -> None:
        self.secret, self.marker, self.timeout = secrets.token_hex(16), marker, timeout
        payload = {"secret": self.secret, "tasks": tasks, "steps": plan.steps, "cell_timeout": cell_timeout}
        command = inspect.getsource(score_main) + "\n\nscore_main()\n"
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", command], cwd=box.work, env={**env, "MPLBACKEND": "Agg"},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        self.log, self.output, self.timed_out = log, b"", False
        self.thread = threading.Thread(target=self._collect, args=((json.dumps(payload) + "\n").encode(),),
                                       daemon=True)
        self.thread.start()

    def _collect(self, payload: bytes) -> None:
        try:
            self.output, _ = self.process.communicate(payload, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            kill_run(self.process.pid, self.marker)
            self.output, _ = self.process.communicate()
        except OSError:  # it died before reading its input
            self.process.wait()

    def results(self) -> tuple[dict[str, dict], str]:
        """Task → its result record, and what went wrong with the scoring run ('' if nothing)."""
        self.thread.join()
        kill_run(self.process.pid, self.marker)
        records: dict[str, dict] = {}
        done, error = False, ""
        for line in self.output.decode("utf-8", errors="replace").splitlines():
            head, _, body = line.partition(" ")
            if head != self.secret:
                continue
            try:
                record = json.loads(body)
            except json.JSONDecodeError:
                continue
            if record.get("done"):
                done = True
            elif "error" in record:
                error = f"the grader could not score it: {record['error']}"
            elif isinstance(record.get("task"), str):
                records[record["task"]] = record
        if error or done:
            return records, error
        if self.timed_out:
            return records, f"the scoring run stopped at the {self.timeout:g} s limit"
        log = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        if log and not records:
            return records, f"the scoring run failed: {log[-1]}"
        return records, f"the scoring run stopped early (exit status {self.process.returncode})"


# --------------------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------------------


def grade_notebook(submission: str | Path, solution: str | Path | None = None,
                   solutions_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT,
                   cell_timeout: float = DEFAULT_CELL_TIMEOUT, kernel_name: str | None = None) -> GradeResult:
    """Run one submitted notebook (kernel run and scoring run) and score it against its solution's checks.

    ``solution`` defaults to :func:`find_solution` in ``solutions_dir`` (default: the repository's
    ``solutions/``). ``timeout`` (s) bounds each of the two runs, ``cell_timeout`` (s) each cell. Never raises
    for a bad submission: problems are reported in the result's ``status`` and ``detail``. (A broken
    solution notebook is the instructor's problem and raises :class:`NotebookError`.)
    """
    submission = Path(submission)
    start = time.monotonic()
    if timeout <= 0 or cell_timeout <= 0:
        raise ValueError(f"timeouts must be positive seconds, got timeout={timeout}, cell_timeout={cell_timeout}")
    try:
        nb: NotebookNode | None = read_submission(submission)
        unreadable = ""
    except NotebookError as err:
        nb, unreadable = None, str(err)
    if solution:
        solution_path = Path(solution)
    else:
        try:
            solution_path = find_solution(submission, Path(solutions_dir or repo_dirs()[0]), nb)
        except GradeError as err:
            return GradeResult(submission, None, "not run", str(err), [], time.monotonic() - start)
    solution_nb = read_notebook(solution_path)
    tasks = solution_tasks(solution_nb)

    def result(status: str, detail: str, records: dict[str, dict], missing: str, restored=frozenset()):
        scores = []
        for name, points in tasks.items():
            record = records.get(name)
            passed = bool(record["passed"]) if record else None
            message = str(record.get("message", "")) if record else missing
            if record and name in restored:
                message += " [the notebook's check cell was missing: restored and checked by the grader]"
            scores.append(TaskScore(name, points if passed else 0.0, points, passed, message))
        return GradeResult(submission, solution_path, status, detail, scores, time.monotonic() - start)

    if nb is None:
        return result("not run", unreadable, {}, "not graded: the file is not a readable notebook")
    if not any(c.cell_type == "code" for c in nb.cells):
        return result("empty notebook", "the notebook has no code cells: nothing to run", {},
                      "no code: the notebook has no code cells")
    plan = plan_run(nb, solution_nb, list(tasks))
    marker = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="course-grade-", ignore_cleanup_errors=True) as tmp:
        tmp_path = Path(tmp)
        guard = write_guard(tmp_path / "guard")
        kernel_box = Sandbox(tmp_path / "kernel", submission)
        score_box = Sandbox(tmp_path / "score", submission)
        try:
            scorer = _Scorer(plan, list(tasks), score_box, score_box.env(guard, marker + "-score"), timeout,
                             cell_timeout, marker + "-score", tmp_path / "scorer.log")
            status, detail = _run_kernel(plan, kernel_box, kernel_box.env(guard, marker + "-kernel"),
                                         kernel_name or _kernel_name(solution_nb), timeout, cell_timeout,
                                         marker + "-kernel")
            records, problem = scorer.results()
        finally:
            for which in ("-score", "-kernel"):
                kill_run(None, marker + which)
    notes = [d for d in (detail, problem) if d]
    if kernel_box.skipped:
        notes.append(f"{kernel_box.skipped} file(s) beside the notebook were not copied (over "
                     f"{COPY_LIMIT_BYTES // 2**20} MB or {COPY_LIMIT_FILES} files)")
    return result(status, "; ".join(notes), records, "no result recorded: the run stopped before this check "
                  "(see the status)", plan.restored)


def _grade_or_report(path: Path, kwargs: dict) -> GradeResult:
    """:func:`grade_notebook`, with any failure turned into a ``not run`` result, so a batch goes on."""
    start = time.monotonic()
    try:
        return grade_notebook(path, **kwargs)
    except Exception as err:  # noqa: BLE001 - one submission (or a grader bug it triggers) never stops a batch
        text = str(err).strip()
        return GradeResult(Path(path), None, "not run", f"the grader failed on this submission: "
                           f"{type(err).__name__}: {text.splitlines()[0] if text else ''}", [],
                           time.monotonic() - start)


def grade_many(submissions: list[Path], jobs: int = 1, on_result=None, **kwargs) -> list[GradeResult]:
    """Grade several submissions with :func:`grade_notebook` (``kwargs``), ``jobs`` at a time.

    Results come back in the order of ``submissions``, and ``on_result(result)`` (if given) is called with
    each as soon as it and those before it are done. A submission that makes the grader fail becomes a
    ``not run`` result: one bad file never stops the batch.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    timeout, cell_timeout = kwargs.get("timeout", DEFAULT_TIMEOUT), kwargs.get("cell_timeout", DEFAULT_CELL_TIMEOUT)
    if timeout <= 0 or cell_timeout <= 0:
        raise ValueError(f"timeouts must be positive seconds, got timeout={timeout}, cell_timeout={cell_timeout}")
    results: list[GradeResult] = []
    if jobs == 1 or len(submissions) < 2:
        iterator = (_grade_or_report(Path(p), kwargs) for p in submissions)
        for result in iterator:
            results.append(result)
            if on_result:
                on_result(result)
        return results
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(lambda p: _grade_or_report(Path(p), kwargs), submissions):
            results.append(result)
            if on_result:
                on_result(result)
    return results


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
