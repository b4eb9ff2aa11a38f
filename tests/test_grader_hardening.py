"""The grader against hostile and broken submissions (issue #18): real notebooks graded by the real grader.

One module-scoped fixture grades a batch of exercise-00 submissions once (two at a time, short time
limits): the untouched exercise, the solution, an infinite loop, ``os._exit``, a first cell that raises,
five cheats (the results file, the scoring pipe, ``checks._run``, ``checks.TASKS``, ``check()``), a cheat
with its check cells deleted, an honest notebook without check cells, a notebook writing outside its
folder, one leaving background processes behind, four malformed notebook shapes, a notebook without cells
and two files that are no notebook at all. Each case is asserted by status and points, the CSV gets a row
each, and the folder around the submissions is compared, file by file, before and after.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from course_lib.exercises.cli import main
from course_lib.exercises.generate import NotebookError, notebook_text, read_notebook
from course_lib.exercises.grade import grade_many, plan_run, read_submission, write_csv

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_audio_basics.ipynb"
EXERCISE = ROOT / "exercises" / "00_audio_basics.ipynb"
TASKS = ["n_frames", "mel_filterbank", "to_db", "count_onsets"]
CELL_TIMEOUT = 20  # seconds: the first cell imports torch, which takes seconds on a busy 2-core machine
SLEEP = 10  # seconds the background processes wait before writing their file
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


def _is_check(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade"))


def _edit(source: Path, edit) -> nbformat.NotebookNode:
    nb = read_notebook(source)
    nb.cells = edit([copy.deepcopy(c) for c in nb.cells])
    return nb


def _after(cell_id: str, *sources: str):
    """An edit inserting code cells right after the cell ``cell_id``."""
    def edit(cells):
        at = next(i for i, c in enumerate(cells) if c.id == cell_id) + 1
        cells[at:at] = [nbformat.v4.new_code_cell(s) for s in sources]
        return cells
    return edit


def _raw(source: Path) -> dict:
    return json.loads(source.read_text(encoding="utf-8"))


# each line alone would pass checks: the function's code changed in place, a method of the check context
# returning the reference answer to n_frames' checker, the function replaced
PATCH_RUN = ("import course_lib.exercises.checks as checks\n"
             "from course_lib.audio import num_frames\n"
             "checks._run.__code__ = (lambda task, fn, seconds: (True, 'passed')).__code__\n"
             "checks.CheckContext.call = lambda self, fn, t, hop, n_fft, center: num_frames(t, hop, center=center, "
             "n_fft=n_fft)\n"
             "checks._run = lambda *args, **kwargs: (True, 'passed')")
PATCH_TASKS = ("from course_lib.exercises import checks\n"
               "for name, task in list(checks.TASKS.items()):\n"
               "    checks.TASKS[name] = checks.Task(name, task.lesson, lambda ctx, fn: None)")
REDEFINE_CHECK = ("import course_lib.exercises.checks as checks\n"
                  "def check(task_id, *answers, **kwargs):\n"
                  "    print(f'✅ {task_id}: passed')\n"
                  "    checks._record(task_id, True, 'passed')\n"
                  "    return True")
APPEND_RESULTS = ("import json, os\n"
                  "path = os.environ.get('COURSE_GRADER_RESULTS') or 'results.jsonl'\n"
                  "with open(path, 'a') as f:\n"
                  f"    for task in {TASKS!r}:\n"
                  "        f.write(json.dumps({'task': task, 'passed': True, 'message': 'passed'}) + '\\n')")

# prints result lines (without the run's secret) on every descriptor of the scoring process, its result pipe too
FORGE_LINES = ("import json, os, sys\n"
               "if 'ipykernel' not in sys.modules:  # the kernel's descriptors are its ZeroMQ sockets: leave them\n"
               "    for fd in range(1, 20):\n"
               f"        for task in {TASKS!r}:\n"
               "            line = json.dumps({'task': task, 'passed': True, 'message': 'passed'})\n"
               "            try:\n"
               "                os.write(fd, (line + '\\n' + 'x ' + line + '\\n').encode())\n"
               "            except OSError:\n"
               "                pass")


def _background_cells(outside: Path) -> list[str]:
    """Cells leaving processes behind: through subprocess, through libc (the guard does not see it), with setsid."""
    cells = [f"import subprocess\nsubprocess.Popen(['sh', '-c', 'sleep {SLEEP}; touch {outside / 'bg_popen'}'])",
             "import ctypes\n"
             f"ctypes.CDLL(None).system(b'(sleep {SLEEP}; touch {outside / 'bg_group'}) >/dev/null 2>&1 &')"]
    if shutil.which("setsid"):
        cells.append("import ctypes\nctypes.CDLL(None).system("
                     f"b\"setsid sh -c 'sleep {SLEEP}; touch {outside / 'bg_session'}' >/dev/null 2>&1 &\")")
    return cells


def _outside_cells(base: Path, folder: Path, victim: Path) -> list[str]:
    """Cells writing outside the submission's folder: relative, deep relative, absolute, delete, rename, rmtree."""
    deep = "../" * 40 + str(base / "outside" / "deep.txt").lstrip("/")
    return [
        "open('../relative.txt', 'w').write('escaped?')",
        "open('../../../relative3.txt', 'w').write('escaped?')",
        f"open({deep!r}, 'w').write('escaped?')",
        f"open({str(base / 'outside' / 'absolute.txt')!r}, 'w').write('escaped?')",
        f"import pathlib\npathlib.Path({str(base / 'outside' / 'keep.txt')!r}).write_text('overwritten')",
        f"import os\nos.remove({str(base / 'outside' / 'keep.txt')!r})",
        f"import os\nos.rename({str(folder / 'data.txt')!r}, {str(folder / 'stolen.txt')!r})",
        f"open({str(victim)!r}, 'w').write('{{}}')",
        f"import shutil\nshutil.rmtree({str(folder)!r})",
        "open('data.txt', 'a').write('a change inside the throw-away copy is fine')",
        "import os\nassert 'COURSE_TEST_SECRET' not in os.environ and os.getcwd().endswith('work'), sorted(os.environ)",
    ]


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash (files)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            stat = path.lstat()
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            out[str(path.relative_to(root))] = (stat.st_mode, stat.st_size, stat.st_mtime_ns, hash(content))
    return out


def write_batch(base: Path) -> list[Path]:
    """Write the batch's submissions into ``base/submissions`` (and ``base/outside``); return them, the
    submission leaving processes behind first."""
    folder, outside = base / "submissions", base / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("the instructor's file")
    (folder / "data.txt").write_text("a file beside the submissions")
    name = "{}_00_audio_basics.ipynb".format
    victim = folder / name("writes_outside")
    no_checks = lambda cells: [c for c in cells if not _is_check(c)]  # noqa: E731
    notebooks = {
        name("background"): _edit(SOLUTION, _after("setup", *_background_cells(outside))),
        name("untouched"): read_notebook(EXERCISE),
        name("solution"): read_notebook(SOLUTION),
        # a loop that sleeps: interrupted like a busy one, without taking a core from the rest of the batch
        name("loops"): _edit(SOLUTION, _after("n-frames-check", "import time\nwhile True:\n    time.sleep(0.1)")),
        name("exits"): _edit(SOLUTION, _after("n-frames-check", "import os\nos._exit(1)")),
        name("cheat_results"): _edit(EXERCISE, _after("summary", APPEND_RESULTS)),
        name("cheat_run"): _edit(EXERCISE, _after("setup", PATCH_RUN)),
        name("cheat_tasks"): _edit(EXERCISE, _after("setup", PATCH_TASKS)),
        name("cheat_check"): _edit(EXERCISE, _after("setup", REDEFINE_CHECK)),
        name("cheat_forge"): _edit(EXERCISE, _after("setup", FORGE_LINES)),
        name("cheat_no_checks"): _edit(EXERCISE, lambda cells: no_checks(
            _after("setup", PATCH_RUN, PATCH_TASKS, REDEFINE_CHECK)(cells)) + [nbformat.v4.new_code_cell(
                APPEND_RESULTS)]),
        name("no_checks"): _edit(SOLUTION, no_checks),
        name("writes_outside"): _edit(SOLUTION, _after("setup", *_outside_cells(base, folder, victim))),
    }
    first_raises = read_notebook(SOLUTION)
    first_raises.cells[1].source = "raise RuntimeError('the first code cell fails')\n" + first_raises.cells[1].source
    notebooks[name("raises_first")] = first_raises
    for file, nb in notebooks.items():
        (folder / file).write_text(notebook_text(nb), encoding="utf-8")
    malformed = {
        "source_ints": lambda raw: raw["cells"][3].update(source=[1, 2, 3]),
        "cell_string": lambda raw: raw["cells"].insert(2, "print('a cell that is a string')"),
        "outputs_string": lambda raw: raw["cells"][1].update(outputs="oops"),
        "minor_x": lambda raw: raw.update(nbformat_minor="x"),
        "no_cells": lambda raw: raw.update(cells=[]),
    }
    for kind, spoil in malformed.items():
        raw = _raw(SOLUTION)
        spoil(raw)
        (folder / name(kind)).write_text(json.dumps(raw), encoding="utf-8")
    (folder / name("png")).write_bytes(PNG)
    (folder / name("text")).write_text("my answers: n_frames = 63\n", encoding="utf-8")
    return [folder / name("background")] + sorted(p for p in folder.glob("*.ipynb") if "background" not in p.name)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Grade the batch once; return results by name, the CSV rows, the trees before and after, the base folder."""
    base = tmp_path_factory.mktemp("grader_batch")
    paths = write_batch(base)
    folder = base / "submissions"
    before = _tree(base)
    start = time.monotonic()
    os.environ["COURSE_TEST_SECRET"] = "the instructor's token"  # must not reach the graded notebooks
    try:
        results = grade_many(paths, jobs=2, solutions_dir=ROOT / "solutions", timeout=90,
                             cell_timeout=CELL_TIMEOUT)
    finally:
        del os.environ["COURSE_TEST_SECRET"]
    seconds = time.monotonic() - start
    by_name = {p.name.removesuffix("_00_audio_basics.ipynb"): r for p, r in zip(paths, results)}
    # the background processes sleep SLEEP s, started at the latest when that submission finished grading
    time.sleep(max(0.0, start + by_name["background"].seconds + SLEEP + 1.5 - time.monotonic()))
    after = _tree(base)
    csv_path = write_csv(results, tmp_path_factory.mktemp("grades") / "grades.csv", root=folder)
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    print(f"graded {len(paths)} submissions in {seconds:.1f} s")
    return by_name, rows, before, after, base


def _points(result) -> dict:
    return {s.task: s.points for s in result.scores}


FULL = {"n_frames": 1, "mel_filterbank": 3, "to_db": 2, "count_onsets": 2}
ZERO = dict.fromkeys(TASKS, 0)


def test_the_batch_completes_with_a_status_and_a_csv_row_for_every_submission(batch):
    results, rows, *_ = batch
    assert len(results) == 21 and len(rows) == 21
    assert all(r["status"] and r["total"] != "" and r["max"] == "8" for r in rows)
    expected = {
        "background": ("errors", 8), "untouched": ("completed", 0), "solution": ("completed", 8),
        "loops": ("cell timeout", 8), "exits": ("kernel died", 1), "raises_first": ("errors", 1),
        "cheat_results": ("completed", 0), "cheat_run": ("completed", 0), "cheat_tasks": ("completed", 0),
        "cheat_check": ("completed", 0), "cheat_forge": ("completed", 0), "cheat_no_checks": ("completed", 0), "no_checks": ("completed", 8),
        "writes_outside": ("errors", 8), "source_ints": ("not run", 0), "cell_string": ("not run", 0),
        "outputs_string": ("not run", 0), "minor_x": ("not run", 0), "no_cells": ("empty notebook", 0),
        "png": ("not run", 0), "text": ("not run", 0),
    }
    got = {name: (r.status, r.total) for name, r in results.items()}
    assert got == expected, {n: (r.status, r.detail) for n, r in results.items() if got[n] != expected[n]}
    by_file = {r["file"].removesuffix("_00_audio_basics.ipynb"): r for r in rows}
    assert {n: (r["status"], float(r["total"])) for n, r in by_file.items()} == expected


def test_cheats_on_the_results_file_and_the_check_module_score_zero(batch):
    results = batch[0]
    for name in ("cheat_results", "cheat_run", "cheat_tasks", "cheat_check", "cheat_forge", "cheat_no_checks"):
        assert _points(results[name]) == ZERO, name
        assert all("not implemented yet" in s.message for s in results[name].scores), name
    assert all("restored and checked by the grader" in s.message for s in results["cheat_no_checks"].scores)


def test_deleted_check_cells_are_restored_and_an_honest_notebook_gets_full_marks(batch):
    result = batch[0]["no_checks"]
    assert result.status == "completed" and result.detail == "" and _points(result) == FULL
    assert all(s.passed and "restored and checked by the grader" in s.message for s in result.scores)


def test_statuses_of_a_raising_first_cell_a_loop_an_exit_and_an_empty_notebook(batch):
    results = batch[0]
    first = results["raises_first"]
    assert first.status == "errors" and "cell 1: RuntimeError" in first.detail and "IndexError" not in first.detail
    assert _points(first) == {**ZERO, "n_frames": 1}  # n_frames needs no import; the others need torch
    assert f"cell 5 ran longer than {CELL_TIMEOUT} s" in results["loops"].detail
    exits = results["exits"]
    assert "kernel died at cell 5" in exits.detail and _points(exits) == {**ZERO, "n_frames": 1}
    assert "no result recorded" in exits.scores[1].message
    empty = results["no_cells"]
    assert empty.status == "empty notebook" and empty.max_total == 8 and "IndexError" not in empty.detail


def test_malformed_and_non_notebook_files_are_reported_not_raised(batch):
    results = batch[0]
    details = {name: results[name].detail for name in ("source_ints", "cell_string", "outputs_string", "minor_x",
                                                       "png", "text")}
    assert details == {
        "source_ints": "not a readable notebook: cell 3's source is a list of int, not text",
        "cell_string": "not a readable notebook: cell 2 is a str, not an object",
        "outputs_string": "not a readable notebook: cell 1's outputs are a str, not a list of objects",
        "minor_x": "not a readable notebook: nbformat_minor should be an int, got 'x'",
        "png": "not a readable notebook: not UTF-8 text (a binary file?)",
        "text": "not a readable notebook: not JSON (Expecting value: line 1 column 1 (char 0))",
    }


def test_nothing_outside_the_throw_away_folder_changes(batch):
    results, _, before, after, base = batch
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}
    assert (base / "outside" / "keep.txt").read_text() == "the instructor's file"
    writes = results["writes_outside"]
    # each write outside was refused in its own cell; the notebook went on and earned its points
    assert writes.detail.count("PermissionError") == 8 and "cell 2:" not in writes.detail
    assert "AssertionError" not in writes.detail  # cell 12: the instructor's variables did not reach it
    assert "cell 10: PermissionError" in writes.detail  # rmtree of the submissions folder


def test_processes_left_behind_are_killed_with_the_run(batch):
    results, *_, base = batch
    background = results["background"]
    assert "cell 2: PermissionError" in background.detail  # subprocess.Popen is refused by the guard
    # started through libc (same process group) or with setsid (new session): killed, their files never written
    assert sorted(p.name for p in (base / "outside").iterdir()) == ["keep.txt"]


def test_read_submission_and_plan_run_on_small_notebooks(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "source": "x", "metadata": {}, "outputs": [], "execution_count": "1"}]}))
    with pytest.raises(NotebookError, match="cell 0's execution_count is a str"):
        read_submission(bad)
    solution = read_notebook(SOLUTION)
    # checks moved and edited: the first cell with a task's grade id becomes the instructor's check
    nb = read_notebook(EXERCISE)
    check = next(c for c in nb.cells if c.id == "mel-check")
    check.source = "passed = True"
    nb.cells = [c for c in nb.cells if c.id != "to-db-check"]
    plan = plan_run(nb, solution, TASKS)
    sources = {c.id: c.source for c in plan.notebook.cells}
    assert sources["mel-check"] == 'passed = check("mel_filterbank")'
    assert [c.id for c in plan.notebook.cells].index("to-db-check") == \
        [c.id for c in plan.notebook.cells].index("to-db-solution") + 1
    assert plan.restored == {"to_db"} and plan.origin.count(None) == 1
    assert [s[1] for s in plan.steps if s[0] == "check"] == TASKS


def test_cli_writes_its_csv_even_when_the_grader_fails_on_a_submission(tmp_path, monkeypatch, capsys):
    """Malformed files and a grader crash on one file: every file still gets its row, the exit status is 0."""
    raw = _raw(SOLUTION)
    raw["cells"][3]["source"] = [1, 2, 3]
    (tmp_path / "a_00_audio_basics.ipynb").write_text(json.dumps(raw))
    (tmp_path / "b_00_audio_basics.ipynb").write_text("not json")
    (tmp_path / "c_00_audio_basics.ipynb").write_text("{}")
    import course_lib.exercises.grade as grade

    real = grade.grade_notebook

    def crashing(path, **kwargs):
        if Path(path).name.startswith("c_"):
            raise RuntimeError("a bug in the grader")
        return real(path, **kwargs)

    monkeypatch.setattr(grade, "grade_notebook", crashing)
    assert main(["grade", str(tmp_path), "--csv", str(tmp_path / "g.csv"), "--solutions",
                 str(ROOT / "solutions")]) == 0
    rows = {r["file"]: r for r in csv.DictReader((tmp_path / "g.csv").open(encoding="utf-8"))}
    assert [(f, r["status"]) for f, r in rows.items()] == [
        ("a_00_audio_basics.ipynb", "not run"), ("b_00_audio_basics.ipynb", "not run"),
        ("c_00_audio_basics.ipynb", "not run")]
    assert "cell 3's source is a list of int" in rows["a_00_audio_basics.ipynb"]["detail"]
    assert "RuntimeError: a bug in the grader" in rows["c_00_audio_basics.ipynb"]["detail"]
    assert "wrote " in capsys.readouterr().out
