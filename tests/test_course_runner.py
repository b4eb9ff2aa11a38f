"""`make course`'s runner: executes a notebook, renders HTML with offline audio players, collects metrics."""

import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from course_lib import course_runner


def test_runner_executes_renders_and_collects(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("import torch\nfrom course_lib.audio import listen_panel\n"
                      "listen_panel({'a': torch.zeros(1600), 'b': torch.zeros(1600)})"),
        new_code_cell("from course_lib.runtime import report_metrics, run_size\n"
                      "report_metrics(answer=42, size=run_size())"),
    ])
    nb.metadata["kernelspec"] = {"name": "audio-course", "display_name": "Python (audio course)", "language": "python"}
    path = tmp_path / "00_tiny.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "build"
    assert course_runner.main(["--out", str(out), "--size", "quick", str(path)]) == 0
    html = (out / "html" / "00_tiny.html").read_text()
    assert html.count("<audio") == 2 and "data:audio/wav;base64," in html
    assert "{&#x27;answer&#x27;: 42" not in html and "{'answer': 42" not in html  # metrics printed once, not echoed
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["ok"] and summary[0]["metrics"] == {"answer": 42, "size": "quick"}
    assert "| 00_tiny.ipynb |" in (out / "summary.md").read_text()
    # formulas typeset offline: the page loads MathJax from the copy beside it, never from a CDN
    assert 'src="../mathjax/MathJax.js?config=' in html and "libs/mathjax" not in html
    assert (out / "mathjax" / "MathJax.js").is_file()
    assert (out / "mathjax" / "config" / (course_runner.MATHJAX_CONFIG.split(",")[0] + ".js")).is_file()


def test_runner_reports_a_failing_notebook(tmp_path):
    nb = new_notebook(cells=[new_code_cell("assert 1 == 2, 'measured value too low'")])
    nb.metadata["kernelspec"] = {"name": "audio-course", "display_name": "Python (audio course)", "language": "python"}
    path = tmp_path / "01_bad.ipynb"
    nbformat.write(nb, path)
    assert course_runner.main(["--out", str(tmp_path / "b"), "--size", "quick", str(path)]) == 1
    row = json.loads((tmp_path / "b" / "summary.json").read_text())[0]
    assert not row["ok"] and "measured value too low" in row["error"]


def test_strip_outputs(tmp_path):
    nb = new_notebook(cells=[new_code_cell("1 + 1")])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]
    nb.cells[0].execution_count = 1
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert course_runner.main(["--strip", str(path)]) == 0
    cell = nbformat.read(path, as_version=4).cells[0]
    assert cell.outputs == [] and cell.execution_count is None
    assert not course_runner.strip_outputs(path)  # already clean: unchanged
