"""Exercise tooling: generator (nbgrader rules, reproducible), checks (pass, hints, time limit), grader."""

from __future__ import annotations

import copy
import csv
import json
import math
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from course_lib.exercises import DEFAULT_TIME_LIMIT, RESULTS_ENV, TASKS, check, make_event_clip, summary
from course_lib.exercises.cli import main
from course_lib.exercises.ex00 import LESSON, ONSET_CASES, Event
from course_lib.exercises.generate import (
    CODE_STUB,
    TEXT_STUB,
    NotebookError,
    make_exercise,
    notebook_text,
    read_notebook,
    render_exercise,
    sync_exercises,
)
from course_lib.exercises.grade import find_solution, grade_many, solution_tasks, write_csv

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_audio_basics.ipynb"
EXERCISE = ROOT / "exercises" / "00_audio_basics.ipynb"
TASK_IDS = ["n_frames", "mel_filterbank", "to_db", "count_onsets"]


def _functions(path: Path) -> dict:
    """Execute a notebook's nbgrader solution cells (only) and return the namespace they define."""
    namespace: dict = {"math": math, "np": np, "torch": torch}
    for cell in read_notebook(path).cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            exec(compile(cell.source, f"{path.name}:{cell.id}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def solution_fns() -> dict:
    return _functions(SOLUTION)


# --------------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------------


def test_committed_exercises_match_a_fresh_generation():
    stale = sync_exercises(ROOT / "solutions", ROOT / "exercises", check_only=True)
    assert stale == [], f"run `python -m course_lib.exercises generate`; stale: {stale}"


def test_generation_is_byte_identical_and_has_no_outputs():
    first, second = render_exercise(SOLUTION), render_exercise(SOLUTION)
    assert first == second == EXERCISE.read_text(encoding="utf-8")
    nb = json.loads(first)
    assert "BEGIN SOLUTION" not in first and "HIDDEN TESTS" not in first
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def _cell(kind: str, source: str, **nbgrader) -> nbformat.NotebookNode:
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(source, metadata={"nbgrader": {"schema_version": 3, **nbgrader}} if nbgrader else {})
    if kind == "code":
        cell.outputs = [nbformat.v4.new_output("stream", text="old output")]
        cell.execution_count = 7
    return cell


def test_generator_follows_nbgrader_clear_solutions_rules():
    nb = nbformat.v4.new_notebook(cells=[
        _cell("code", "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n\ny = 1",
              solution=True, grade=False, locked=False, grade_id="f_sol"),
        _cell("markdown", "Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", solution=True, grade=False,
              locked=False, grade_id="why"),
        _cell("code", "z = 3", solution=True, grade=False, locked=False, grade_id="whole"),
        _cell("code", "check('f')\n### BEGIN HIDDEN TESTS\nassert f(2) == 4\n### END HIDDEN TESTS\nprint('done')",
              solution=False, grade=True, locked=True, points=2, grade_id="f"),
        _cell("code", "plain = 1"),
    ])
    out = make_exercise(nb)
    sources = [c.source for c in out.cells]
    assert sources[0] == "def f(x):\n    '''doc'''\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\ny = 1"
    assert sources[1] == f"Why?\n\n{TEXT_STUB}"
    assert sources[2] == CODE_STUB  # a solution cell without markers is replaced entirely
    assert sources[3] == "check('f')\nprint('done')"
    assert sources[4] == "plain = 1"
    assert all(c.outputs == [] and c.execution_count is None for c in out.cells if c.cell_type == "code")
    assert out.cells[3].metadata["editable"] is False and out.cells[3].metadata["deletable"] is False
    assert out.cells[0].metadata["deletable"] is False and "editable" not in out.cells[0].metadata
    assert nb.cells[0].source.count("BEGIN SOLUTION") == 1  # the input is not modified
    assert notebook_text(out) == notebook_text(make_exercise(nb))


@pytest.mark.parametrize("source, nbgrader, match", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", {}, "not marked as an nbgrader solution"),
    ("### BEGIN SOLUTION\nx = 1", {"solution": True, "grade_id": "a"}, "without a matching"),
    ("### BEGIN HIDDEN TESTS\nassert 1\n### END HIDDEN TESTS", {}, "not marked as an nbgrader grade cell"),
    ("check('a')", {"grade": True, "grade_id": "a"}, "points"),
])
def test_generator_rejects_malformed_solutions(source, nbgrader, match):
    nb = nbformat.v4.new_notebook(cells=[_cell("code", source, **nbgrader)])
    with pytest.raises(NotebookError, match=match):
        make_exercise(nb, "bad.ipynb")


def test_solution_notebook_metadata_matches_the_registered_tasks():
    nb = read_notebook(SOLUTION)
    assert nb.metadata.kernelspec == {"name": "audio-course", "display_name": "Python (audio course)",
                                      "language": "python"}
    assert list(solution_tasks(SOLUTION)) == TASK_IDS == [t for t, v in TASKS.items() if v.lesson == LESSON]
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader")
        if meta and meta["solution"]:
            assert meta == {"solution": True, "grade": False, "locked": False, "grade_id": meta["grade_id"],
                            "schema_version": 3, "task": False}
        elif meta:
            assert meta["grade"] and meta["locked"] and meta["points"] > 0
            assert cell.source.startswith(f'passed = check("{meta["grade_id"]}")')


# --------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.float_path
def test_every_check_passes_the_solution_quickly(task_id, solution_fns, capsys):
    start = time.monotonic()
    assert check(task_id, solution_fns[task_id]) is True
    assert time.monotonic() - start < 5.0
    assert capsys.readouterr().out.strip() == f"✅ {task_id}: passed"


def test_an_independent_numpy_filter_bank_passes(capsys):
    assert check("mel_filterbank", _mel_np) is True


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    assert solution_fns["n_frames"](16000, 256, 1024, True) == 63
    assert solution_fns["n_frames"](16000, 256, 1024, False) == 59
    fb = solution_fns["mel_filterbank"](16000, 512, 40, 0.0, 8000.0)
    assert tuple(fb.shape) == (257, 40)
    freqs = np.arange(257) * 16000 / 512
    area = (fb.numpy() * (freqs[1] - freqs[0])).sum(axis=0)  # Slaney norm: each triangle has unit area
    assert np.allclose(area[2:-2], 1.0, atol=0.1)
    db = solution_fns["to_db"](torch.tensor([0.0, 1e-3, 1.0, 10.0]), 1e-5, 50.0)
    assert torch.allclose(db, torch.tensor([-30.0, -60.0, 0.0, 20.0]).clamp_min(-30.0))


def test_check_on_the_untouched_exercise_says_not_implemented(capsys):
    stubs = _functions(EXERCISE)
    for task_id in TASK_IDS:
        assert check(task_id, stubs[task_id]) is False
        assert capsys.readouterr().out.strip() == (f"❌ {task_id}: not implemented yet (replace "
                                                    "`raise NotImplementedError()` with your code)")


def _wrong_n_frames(num_samples, hop_length, n_fft, center):
    return 0 if num_samples < n_fft else 1 + (num_samples - n_fft) // hop_length  # ignores center


def _mel_np(sample_rate, n_fft, n_mels, f_min, f_max, htk=False, area_norm=True):
    """An independent NumPy filter bank, right (Slaney, area norm) or wrong in one chosen way."""
    if htk:
        to_mel, to_hz = (lambda f: 2595 * np.log10(1 + f / 700)), (lambda m: 700 * (10 ** (m / 2595) - 1))
    else:
        to_mel = lambda f: np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))  # noqa: E731
        to_hz = lambda m: np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))  # noqa: E731
    edges = to_hz(np.linspace(to_mel(np.float64(f_min)), to_mel(np.float64(f_max)), n_mels + 2))
    f = np.arange(n_fft // 2 + 1)[:, None] * sample_rate / n_fft
    lo, c, hi = edges[:-2], edges[1:-1], edges[2:]
    triangles = np.maximum(0, np.minimum((f - lo) / (c - lo), (hi - f) / (hi - c)))
    return triangles * 2 / (hi - lo) if area_norm else triangles


def _power_db(magnitude, amin, top_db):
    db = 10 * torch.log10(magnitude.clamp(min=amin))
    return db if top_db is None else torch.maximum(db, db.max() - top_db)


def _unclipped_db(magnitude, amin, top_db):
    return 20 * torch.log10(magnitude.clamp(min=amin))


def _per_sample_onsets(audio, sample_rate):
    loud = audio.abs() > 0.01
    return int(loud[0]) + int((loud[1:] & ~loud[:-1]).sum())


def _half_max_onsets(audio, sample_rate):  # threshold at half the peak: misses quiet events
    hop = sample_rate // 100
    level = audio[: len(audio) // hop * hop].reshape(-1, hop).abs().max(dim=1).values
    active = level > 0.5 * level.max()
    return int(active[0]) + int((active[1:] & ~active[:-1]).sum())


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("n_frames", _wrong_n_frames, "for 16000 samples with hop 256, n_fft 1024 and center=True expected 63 frames, "
                                  "got 59: did you forget the padding?"),
    ("n_frames", lambda t, h, n, c: t / h, "should return an int, got float"),
    ("mel_filterbank", lambda *a: _mel_np(*a, htk=True), "you used the HTK mel scale"),
    ("mel_filterbank", lambda *a: _mel_np(*a, area_norm=False), "you forgot the area normalisation"),
    ("mel_filterbank", lambda *a: _mel_np(*a).T, "transpose your result"),
    ("to_db", _power_db, "that is 10·log10"),
    ("to_db", _unclipped_db, "you did not apply top_db"),
    ("to_db", lambda x, amin, top_db: x.clamp_(min=amin).log10() * 20, "changed its input in place"),
    ("count_onsets", _per_sample_onsets, "are you counting samples"),
    ("count_onsets", _half_max_onsets, "you missed events"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out


def test_a_raising_function_gets_one_line_with_type_line_and_hint(capsys):
    def to_db(magnitude, amin, top_db):
        db = magnitude.clamp(min=amin).log10() * 20
        return torch.maximum(db, db.max() - top_db)  # TypeError when top_db is None

    assert check("to_db", to_db) is False
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and "Traceback" not in out
    assert "raised TypeError" in out and "at line" in out and "top_db may be None" in out


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_a_function_that_loops_forever_fails_within_the_time_limit(task_id, capsys):
    def forever(*args):
        while True:
            try:
                time.sleep(0.01)
            except Exception:  # a student's broad except must not swallow the time limit
                pass

    start = time.monotonic()
    assert check(task_id, forever, time_limit=0.5) is False
    assert time.monotonic() - start < 1.5
    assert "did not finish within 0.5 s" in capsys.readouterr().out
    assert DEFAULT_TIME_LIMIT < 5.0


def test_time_limit_also_works_outside_the_main_thread(capsys):
    def forever(*args):
        while True:
            pass

    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(check("n_frames", forever, time_limit=0.5)))
    start = time.monotonic()
    worker.start()
    worker.join(5)
    assert outcome == [False] and time.monotonic() - start < 3


def test_missing_function_is_looked_up_in_the_caller_namespace(capsys):
    assert check("n_frames", namespace={}) is False
    assert "no function called `n_frames` is defined yet" in capsys.readouterr().out
    n_frames = _functions(SOLUTION)["n_frames"]
    assert check("n_frames", namespace={"n_frames": n_frames}) is True
    capsys.readouterr()
    assert check("no_such_task") is False
    assert "unknown exercise task; known tasks: " in capsys.readouterr().out


def test_results_are_appended_for_the_grader_and_nbgrader_gets_an_assertion(tmp_path, monkeypatch, solution_fns,
                                                                               capsys):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(RESULTS_ENV, str(results))
    check("n_frames", solution_fns["n_frames"])
    check("to_db", _power_db)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["task"], r["passed"]) for r in lines] == [("n_frames", True), ("to_db", False)]
    assert "10·log10" in lines[1]["message"]
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(AssertionError, match="to_db"):
        check("to_db", _power_db)
    assert check("n_frames", solution_fns["n_frames"]) is True
    assert summary(LESSON)["to_db"] is False


def test_event_clips_have_known_length_level_and_determinism():
    clip = make_event_clip([Event(0.1, "click", -6.0), Event(0.5, "beep", -20.0, 0.2)], 1.0, 8000, seed=3)
    assert clip.shape == (8000,) and clip.dtype == torch.float32
    assert torch.equal(clip, make_event_clip([Event(0.1, "click", -6.0), Event(0.5, "beep", -20.0, 0.2)], 1.0, 8000,
                                             seed=3))
    assert abs(float(clip[800:1300].abs().max()) - 10 ** (-6 / 20)) < 0.01  # click peak at -6 dBFS
    assert abs(float(clip[4000:5600].abs().max()) - 10 ** (-20 / 20)) < 0.005  # beep peak at -20 dBFS
    silence = float(clip[2000:3000].pow(2).mean().sqrt())
    assert 20 * math.log10(silence) == pytest.approx(-80, abs=1.5)
    assert min(len(c.events) for c in ONSET_CASES) == 0 and max(len(c.events) for c in ONSET_CASES) >= 5
    with pytest.raises(ValueError, match="outside the clip"):
        make_event_clip([Event(2.0)], 1.0)


def test_find_solution_by_name_then_by_grade_ids(tmp_path):
    for name, grade_id in [("00_a.ipynb", "task_a"), ("01_b.ipynb", "task_b")]:
        nb = nbformat.v4.new_notebook(cells=[_cell("code", "x", grade=True, points=1, grade_id=grade_id)])
        (tmp_path / name).write_text(notebook_text(nb))
    assert find_solution(Path("alice_01_b.ipynb"), tmp_path).name == "01_b.ipynb"
    submission = nbformat.v4.new_notebook(cells=[_cell("code", "x", grade=True, points=1, grade_id="task_a")])
    assert find_solution(Path("bob.ipynb"), tmp_path, submission).name == "00_a.ipynb"


# --------------------------------------------------------------------------------------------------------
# Grader (runs real kernels: a few seconds per submission)
# --------------------------------------------------------------------------------------------------------


def _variant(cells_from: Path, edit) -> nbformat.NotebookNode:
    nb = read_notebook(cells_from)
    nb.cells = edit([copy.deepcopy(c) for c in nb.cells])
    return nb


def _index(cells, cell_id: str) -> int:
    return next(i for i, c in enumerate(cells) if c.id == cell_id)


def _insert_after(cell_id: str, source: str):
    def edit(cells):
        cells.insert(_index(cells, cell_id) + 1, nbformat.v4.new_code_cell(source))
        return cells
    return edit


@pytest.fixture(scope="module")
def graded_folder(tmp_path_factory):
    """Grade a folder of submissions once (a fresh kernel each, two at a time); return results by name, CSV path."""
    folder = tmp_path_factory.mktemp("submissions")
    overwrite = folder / "overwrites_00_audio_basics.ipynb"

    def raising(cells):
        cells = _insert_after("n-frames-check", "1 / 0")(cells)
        cells[_index(cells, "to-db-solution")].source = (
            "def to_db(magnitude, amin=1e-5, top_db=80.0):\n    raise ValueError('oops')")
        return cells

    def looping(cells):  # a check of a function that loops, then a cell that loops
        cells[_index(cells, "n-frames-solution")].source = (  # loops idle: a busy loop would burn a core twice
            "def n_frames(*args):\n    import time\n    while True:\n        time.sleep(0.01)")
        cells[_index(cells, "n-frames-check")].source = 'passed = check("n_frames", time_limit=1.0)'
        return _insert_after("n-frames-check", "import time\nwhile True:\n    time.sleep(0.05)")(cells)

    notebooks = {
        "loops_00_audio_basics.ipynb": _variant(SOLUTION, looping),
        "solution_00_audio_basics.ipynb": read_notebook(SOLUTION),
        "untouched_00_audio_basics.ipynb": read_notebook(EXERCISE),
        "raises_00_audio_basics.ipynb": _variant(SOLUTION, raising),
        overwrite.name: _variant(SOLUTION, _insert_after("setup", (
            "import json\n"
            f"open({str(overwrite)!r}, 'w').write(json.dumps({{'cells': [], 'metadata': {{}}, 'nbformat': 4, "
            "'nbformat_minor': 5}))"))),
        "no_checks_00_audio_basics.ipynb": _variant(SOLUTION, lambda cells: [
            c for c in cells if not c.metadata.get("nbgrader", {}).get("grade")]),
        "dies_00_audio_basics.ipynb": _variant(SOLUTION, _insert_after("n-frames-check", "import os\nos._exit(1)")),
    }
    for name, nb in notebooks.items():
        (folder / name).write_text(notebook_text(nb), encoding="utf-8")
    paths = sorted(folder.glob("*.ipynb"))
    graded = grade_many(paths, jobs=2, solutions_dir=ROOT / "solutions", timeout=120, cell_timeout=20)
    results = {p.name: r for p, r in zip(paths, graded)}
    csv_path = write_csv(list(results.values()), folder / "grades.csv", root=folder)
    return results, csv_path, overwrite


def _points(result) -> dict:
    return {s.task: s.points for s in result.scores}


def test_grader_gives_full_marks_to_the_solution_and_zero_to_the_exercise(graded_folder):
    results, _, _ = graded_folder
    solution = results["solution_00_audio_basics.ipynb"]
    assert solution.status == "completed" and solution.solution == SOLUTION
    assert _points(solution) == {"n_frames": 1, "mel_filterbank": 3, "to_db": 2, "count_onsets": 2}
    untouched = results["untouched_00_audio_basics.ipynb"]
    assert untouched.total == 0 and untouched.max_total == 8 and untouched.status == "completed"
    assert all("not implemented yet" in s.message for s in untouched.scores)


def test_grader_survives_a_submission_that_raises(graded_folder):
    result = graded_folder[0]["raises_00_audio_basics.ipynb"]
    assert result.status == "errors" and "ZeroDivisionError" in result.detail
    assert _points(result) == {"n_frames": 1, "mel_filterbank": 3, "to_db": 0, "count_onsets": 2}
    assert "ValueError: oops" in next(s.message for s in result.scores if s.task == "to_db")


def test_grader_survives_a_submission_that_deletes_its_cells(graded_folder):
    results, _, overwrite = graded_folder
    # the cell tried to empty its own file: the grader's write guard refused, and the notebook went on
    assert len(json.loads(overwrite.read_text())["cells"]) > 1
    assert results[overwrite.name].total == 8 and "PermissionError" in results[overwrite.name].detail
    no_checks = results["no_checks_00_audio_basics.ipynb"]
    assert no_checks.total == 8 and [s.task for s in no_checks.scores] == TASK_IDS
    assert all("checked by the grader" in s.message for s in no_checks.scores)


def test_grader_reports_a_dead_kernel_and_keeps_earlier_points(graded_folder):
    result = graded_folder[0]["dies_00_audio_basics.ipynb"]
    assert result.status == "kernel died"
    assert _points(result) == {"n_frames": 1, "mel_filterbank": 0, "to_db": 0, "count_onsets": 0}
    assert "no result recorded" in result.scores[1].message


def test_grader_writes_one_csv_row_per_submission(graded_folder):
    results, csv_path, _ = graded_folder
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [r["file"] for r in rows] == sorted(results)
    assert list(rows[0]) == ["file", "status", "detail", *TASK_IDS, "total", "max"]
    by_file = {r["file"]: r for r in rows}
    assert by_file["solution_00_audio_basics.ipynb"]["total"] == "8"
    assert by_file["raises_00_audio_basics.ipynb"]["to_db"] == "0"
    assert by_file["dies_00_audio_basics.ipynb"]["status"] == "kernel died"


def test_grader_interrupts_a_looping_cell_and_a_looping_check(graded_folder):
    result = graded_folder[0]["loops_00_audio_basics.ipynb"]
    assert result.status == "cell timeout" and "interrupted" in result.detail
    assert _points(result) == {"n_frames": 0, "mel_filterbank": 3, "to_db": 2, "count_onsets": 2}
    # the notebook's edited check cell (time_limit=1.0) was replaced by the instructor's (the default limit)
    assert f"did not finish within {DEFAULT_TIME_LIMIT:g} s" in result.scores[0].message


def test_grader_cli_stops_a_submission_at_the_time_limit(tmp_path, capsys):
    nb = read_notebook(EXERCISE)
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)  # even interrupts are ignored\n"
        "while True:\n    time.sleep(0.05)"))
    path = tmp_path / "stuck_00_audio_basics.ipynb"
    path.write_text(notebook_text(nb), encoding="utf-8")
    start = time.monotonic()
    assert main(["grade", str(tmp_path), "--timeout", "6", "--cell-timeout", "2", "--csv", str(tmp_path / "g.csv"),
                 "--solutions", str(ROOT / "solutions")]) == 0
    assert time.monotonic() - start < 30
    out = capsys.readouterr().out
    assert "time limit" in out and "total" in out
    row = next(csv.DictReader((tmp_path / "g.csv").open(encoding="utf-8")))
    assert row["file"] == path.name and row["status"] == "time limit" and (row["total"], row["max"]) == ("0", "8")


def test_cli_generate_and_check(tmp_path, capsys):
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    (solutions / SOLUTION.name).write_bytes(SOLUTION.read_bytes())
    args = ["--solutions", str(solutions), "--exercises", str(exercises)]
    assert main(["generate", "--check", *args]) == 1
    assert "stale: " in capsys.readouterr().out
    assert main(["generate", *args]) == 0
    assert (exercises / SOLUTION.name).read_bytes() == EXERCISE.read_bytes()
    assert main(["generate", "--check", *args]) == 0
    (exercises / "orphan.ipynb").write_text("{}")
    assert main(["generate", "--check", *args]) == 1
    assert main(["generate", *args]) == 0 and not (exercises / "orphan.ipynb").exists()
    assert main(["generate", "--solutions", str(tmp_path / "missing")]) == 2
