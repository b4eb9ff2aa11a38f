"""The check harness: run a student's function safely, compare it with a reference, print a pass or a hint.

Every exercise task has one *checker*, a function ``checker(ctx, fn)`` registered with
:func:`register_task`. The checker calls the student's function through ``ctx.call`` and raises
:class:`WrongAnswer` with a hint the student can act on when an answer is wrong. :func:`check` does the rest, the same way for every task:

* it finds the student's function (passed explicitly, or looked up by name in the notebook's namespace);
* it runs the checker under a time limit, so a function that loops forever costs seconds, not the session;
* it turns every outcome into one printed line, ``✅ <task>: passed`` or ``❌ <task>: <hint>``, never a
  traceback: a ``NotImplementedError`` reads "not implemented yet", any other exception is shown as its type,
  message and line, followed by a hint;
* it returns ``True``/``False`` and, if ``$COURSE_GRADER_RESULTS`` names a file, appends one JSON line
  ``{"task": ..., "passed": ..., "message": ...}`` to it, for tools that want a log of the checks. The
  course's grader does not read it (a notebook can write it too): it runs the checks itself, in a process
  of its own (see :mod:`course_lib.exercises.grade`).

Under nbgrader (``$NBGRADER_EXECUTION`` is ``autograde`` or ``validate``) a failed check also raises
``AssertionError``, because nbgrader awards a grade cell's points when the cell runs without error.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS_ENV = "COURSE_GRADER_RESULTS"
DEFAULT_TIME_LIMIT = 4.0  # seconds for a whole check; the course's budget for a check is 5 s
PASS_MARK, FAIL_MARK = "✅", "❌"


class PlainSGD:
    """Plain SGD (``p ← p − lr·grad``, no momentum) with the interface a training step uses: ``zero_grad()``,
    ``step()``, ``param_groups``. Checks hand it to a student's training step instead of ``torch.optim.SGD``,
    which computes the same update (``tests/test_ex01.py`` shows it): creating the first ``torch.optim``
    optimizer in a process imports torch's compiler stack, several seconds that a check's time limit cannot
    spare."""

    def __init__(self, params, lr: float) -> None:
        self.param_groups = [{"params": list(params), "lr": lr}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        for p in group["params"]:
            if p.grad is not None:
                p.add_(p.grad, alpha=-group["lr"])


class WrongAnswer(Exception):
    """Raised by a checker when the student's answer is wrong; the message is the hint shown to them."""


def seeded(seed: int) -> torch.Generator:
    """A fresh CPU generator: check inputs are reproducible, so a hint refers to the same numbers each run."""
    return torch.Generator().manual_seed(seed)


def expect_tensor(value: object, fn_name: str, what: str = "a torch.Tensor") -> torch.Tensor:
    """The student's return value as a tensor, or a :class:`WrongAnswer` saying what came back instead."""
    if value is None:
        raise WrongAnswer(f"{fn_name} returned None: did you forget the `return` statement?")
    if not isinstance(value, torch.Tensor):
        raise WrongAnswer(f"{fn_name} should return {what}, got {type(value).__name__}")
    return value


class _StudentRaised(Exception):
    """The student's function raised; carries the exception and a description of the call."""

    def __init__(self, error: BaseException, call: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.call = call


class CheckTimeout(BaseException):
    """Raised inside a check when its time limit runs out.

    It derives from ``BaseException`` so that a student's ``except Exception:`` cannot swallow it.
    """


@dataclass(frozen=True)
class Task:
    """One exercise task: its id (also the name of the function the student writes), lesson and checker."""

    id: str
    lesson: str
    checker: Callable[[CheckContext, Callable], None]
    hint_on_error: str = "read the message above and fix your function."


TASKS: dict[str, Task] = {}


def register_task(task_id: str, lesson: str,
                  hint_on_error: str = "read the message above and fix your function.") -> Callable:
    """Decorator registering ``checker(ctx, fn)`` as the check of exercise task ``task_id``.

    ``task_id`` is also the name of the function the student defines, so ``check("n_frames")`` finds
    ``n_frames`` in the notebook. Ids are global across lessons and must be unique.
    """
    if not task_id.isidentifier():
        raise ValueError(f"task id must be a Python identifier (the student's function name), got {task_id!r}")

    def register(checker: Callable[[CheckContext, Callable], None]) -> Callable[[CheckContext, Callable], None]:
        if task_id in TASKS:
            raise ValueError(f"exercise task {task_id!r} is already registered (lesson {TASKS[task_id].lesson})")
        TASKS[task_id] = Task(task_id, lesson, checker, hint_on_error)
        return checker

    return register


class CheckContext:
    """What a checker gets besides the student's function: ``call`` runs it and converts its failures."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call the student's ``fn(*args, **kwargs)``; an exception it raises is reported, not propagated raw."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any student error becomes a one-line message
            raise _StudentRaised(err, _describe_call(fn, args, kwargs)) from err


def _short(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"<{type(value).__name__} of shape {tuple(shape)}>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe_call(fn: Callable, args: tuple, kwargs: Mapping[str, Any]) -> str:
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return f"{getattr(fn, '__name__', 'your function')}({', '.join(parts)})"


def _where(error: BaseException) -> str:
    """' (line N of your_fn)' for the innermost traceback frame outside course_lib.exercises, if any."""
    here = str(Path(__file__).resolve().parent)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not str(Path(f.filename).resolve()).startswith(here)]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at line {frame.lineno} of {frame.name}"


# --------------------------------------------------------------------------------------------------------
# Time limit
# --------------------------------------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CheckTimeout` in the current code if it runs longer than ``seconds``.

    In the main thread (a notebook kernel, pytest) this uses ``SIGALRM``, which interrupts pure-Python
    loops and ``time.sleep``. Elsewhere (other threads, Windows) a watchdog thread injects the exception
    with ``PyThreadState_SetAsyncExc``, which interrupts Python code at the next bytecode.
    """
    if seconds <= 0:
        raise ValueError(f"time limit must be positive seconds, got {seconds}")
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():

        def on_alarm(signum: int, frame: Any) -> None:
            raise CheckTimeout(seconds)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return

    target = threading.get_ident()
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(seconds):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(CheckTimeout))

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


# --------------------------------------------------------------------------------------------------------
# Running a check
# --------------------------------------------------------------------------------------------------------

_SESSION: dict[str, bool] = {}  # task id -> last result in this Python session, for summary()


def _record(task_id: str, passed: bool, message: str) -> None:
    _SESSION[task_id] = passed
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"task": task_id, "passed": passed, "message": message}) + "\n")


def _run(task: Task, fn: Any, seconds: float) -> tuple[bool, str]:
    """Run ``task``'s checker on ``fn``; return (passed, one-line message without the task prefix)."""
    if fn is None:
        return False, (f"no function called `{task.id}` is defined yet: run the cell where you write it "
                       "(did that cell raise an error?)")
    if not callable(fn):
        return False, f"`{task.id}` should be a function (def {task.id}(...)), got a {type(fn).__name__}"
    try:
        with time_limit(seconds):
            task.checker(CheckContext(task), fn)
    except CheckTimeout:
        return False, (f"did not finish within {seconds:g} s: is there a loop that never ends "
                       "(a while-condition that never changes)?")
    except WrongAnswer as err:
        return False, str(err)
    except _StudentRaised as err:
        if isinstance(err.error, NotImplementedError):
            return False, "not implemented yet (replace `raise NotImplementedError()` with your code)"
        kind = type(err.error).__name__
        detail = str(err.error).strip().splitlines()[0] if str(err.error).strip() else ""
        return False, (f"{err.call} raised {kind}{': ' + detail if detail else ''}{_where(err.error)}; "
                       f"{task.hint_on_error}")
    except Exception as err:  # noqa: BLE001 - a bug in the checker must not become a student's traceback
        return False, (f"the check itself failed ({type(err).__name__}: {err}) on your answer; this looks like "
                       "a bug in the course, please report it with your function")
    return True, "passed"


def check(task_id: str, *answers: Any, time_limit: float = DEFAULT_TIME_LIMIT,
          namespace: Mapping[str, Any] | None = None) -> bool:
    """Check exercise task ``task_id``; print ``✅ <task>: passed`` or ``❌ <task>: <hint>``; return the result.

    ``answers`` is the student's function; if omitted, the function named ``task_id`` is looked up in
    ``namespace`` (default: the caller's globals, i.e. the notebook), so a solution cell that failed to run
    gives a hint instead of a ``NameError`` (an unknown ``task_id`` prints the known ones and returns
    ``False``). The check runs under ``time_limit`` seconds; its result is
    appended to ``$COURSE_GRADER_RESULTS`` when that is set. Under nbgrader a failure raises
    ``AssertionError`` after printing.
    """
    if task_id not in TASKS:
        print(f"{FAIL_MARK} {task_id}: unknown exercise task; known tasks: {', '.join(sorted(TASKS)) or 'none'}")
        return False
    task = TASKS[task_id]
    if len(answers) > 1:
        raise TypeError(f"check({task_id!r}, ...) takes one answer (your function), got {len(answers)}")
    if answers:
        fn = answers[0]
    else:
        if namespace is None:
            caller = inspect.currentframe().f_back  # type: ignore[union-attr]
            namespace = caller.f_globals if caller is not None else {}
        fn = namespace.get(task_id)
    passed, message = _run(task, fn, time_limit)
    print(f"{PASS_MARK if passed else FAIL_MARK} {task_id}: {message}", flush=True)
    _record(task_id, passed, message)
    if not passed and os.environ.get("NBGRADER_EXECUTION", "").lower() in ("autograde", "validate"):
        raise AssertionError(f"{task_id}: {message}")
    return passed


def summary(lesson: str | None = None) -> dict[str, bool | None]:
    """Print and return this session's result per task (``None``: not checked yet), e.g. at a notebook's end.

    ``lesson`` restricts the list to one lesson's tasks (e.g. ``"00_audio_basics"``).
    """
    tasks = [t for t in TASKS.values() if lesson is None or t.lesson == lesson]
    if lesson is not None and not tasks:
        raise ValueError(f"no exercise tasks for lesson {lesson!r}; lessons: {sorted({t.lesson for t in TASKS.values()})}")
    results = {t.id: _SESSION.get(t.id) for t in tasks}
    done = sum(1 for v in results.values() if v)
    for name, value in results.items():
        mark = {True: PASS_MARK, False: FAIL_MARK, None: "·"}[value]
        print(f"{mark} {name}{'' if value is not None else ': not checked yet'}")
    print(f"{done}/{len(results)} tasks passed")
    return results
