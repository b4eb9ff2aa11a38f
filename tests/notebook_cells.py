"""Reading a lesson's code cells, for the tests that rerun a lesson's build and equivalence-check cells
(tests/test_lesson_*_build.py) with the library (or the notebook's own code) deliberately broken."""

from __future__ import annotations

import json
from pathlib import Path


def code_cells(notebook: Path) -> list[str]:
    """The source of every code cell of ``notebook``, in order."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
