"""Run every lesson headless and render it: ``make course`` (``python -m course_lib.course_runner``).

Each notebook in ``notebooks/`` runs at default size (or ``--size quick``) in a fresh kernel; the executed
copy goes to ``build/executed/`` and an HTML page to ``build/html/`` (its audio players are plain
``<audio>`` elements with the sound embedded, so the pages play offline). At the end a table prints the
wall time of each lesson, whether it passed, and the metrics it reported with
:func:`course_lib.runtime.report_metrics`; the same table is written to ``build/summary.md`` and
``build/summary.json``. This is the course's benchmark: DESIGN.md's time budgets are read from it.

The pages typeset their formulas offline: MathJax's files (from the ``jupyter-server-mathjax`` package, a
dependency) are copied to ``build/mathjax/`` and every page loads them from there, not from a CDN.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from course_lib.runtime import METRICS_PREFIX

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "audio-course"


def collect_metrics(nb) -> dict:
    """Metrics printed by ``report_metrics`` in an executed notebook's stream outputs."""
    metrics: dict = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                for line in out.get("text", "").splitlines():
                    if line.startswith(METRICS_PREFIX):
                        metrics.update(json.loads(line[len(METRICS_PREFIX):]))
    return metrics


MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"  # the configs jupyter-server-mathjax ships


def install_mathjax(out_dir: Path) -> Path:
    """Copy MathJax's files (the ``jupyter-server-mathjax`` package) to ``out_dir/mathjax`` once; return it."""
    import shutil

    import jupyter_server_mathjax

    target = out_dir / "mathjax"
    if not (target / "MathJax.js").is_file():
        source = Path(jupyter_server_mathjax.__file__).parent / "static"
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def html_exporter():
    """nbconvert's JupyterLab-style HTML exporter whose pages load MathJax from ``../mathjax/`` (the copy
    :func:`install_mathjax` makes beside ``html/``), so formulas typeset without a network."""
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", mathjax_url=f"../mathjax/MathJax.js?config={MATHJAX_CONFIG}")


def run_notebook(path: Path, out_dir: Path, size: str, timeout: int) -> dict:
    """Execute one notebook in a fresh kernel, write the executed copy and its HTML; return a summary row."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    os.environ["COURSE_RUN_SIZE"] = size  # the kernel inherits it
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=False)
    start = time.perf_counter()
    error = ""
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as err:
        error = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
    seconds = time.perf_counter() - start
    (out_dir / "executed").mkdir(parents=True, exist_ok=True)
    (out_dir / "html").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / "executed" / path.name)
    install_mathjax(out_dir)
    body, _ = html_exporter().from_notebook_node(nb)
    (out_dir / "html" / path.with_suffix(".html").name).write_text(body, encoding="utf-8")
    return {"lesson": path.name, "seconds": round(seconds, 1), "ok": not error, "error": error,
            "metrics": collect_metrics(nb)}


def strip_outputs(path: Path) -> bool:
    """Remove outputs and execution counts from a notebook in place; return True if it changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    if changed:
        nbformat.write(nb, path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build", help="output folder (default: build)")
    parser.add_argument("--size", default="default", choices=["default", "quick"])
    parser.add_argument("--timeout", type=int, default=900, help="per-cell time limit in seconds")
    parser.add_argument("--strip", action="store_true", help="only strip outputs from the given notebooks (or all)")
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: all of notebooks/)")
    args = parser.parse_args(argv)
    if args.strip:
        folders = ("notebooks", "solutions", "exercises")
        paths = [Path(p) for p in args.notebooks] or sorted(p for f in folders for p in (ROOT / f).glob("*.ipynb"))
        for path in paths:
            if strip_outputs(path):
                print(f"stripped {path}")
        return 0
    paths = [Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    out_dir = Path(args.out)
    rows = []
    for path in paths:
        print(f"running {path.name} at {args.size} size ...", flush=True)
        rows.append(run_notebook(path.resolve(), out_dir, args.size, args.timeout))
        print(f"  {'ok' if rows[-1]['ok'] else 'FAILED: ' + rows[-1]['error']} in {rows[-1]['seconds']} s", flush=True)
    lines = ["| lesson | wall time (s) | passed | metrics |", "|---|---|---|---|"]
    for r in rows:
        metrics = ", ".join(f"{k}={v}" for k, v in r["metrics"].items())
        lines.append(f"| {r['lesson']} | {r['seconds']} | {'yes' if r['ok'] else 'NO'} | {metrics} |")
    table = "\n".join(lines)
    print("\n" + table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(table + "\n")
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
