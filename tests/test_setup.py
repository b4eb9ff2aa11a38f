"""The set-up files agree with each other: pyproject is the one source, the README's commands exist."""

import re
import sys
from pathlib import Path

import pytest
import yaml

from course_lib import check

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; on 3.10 these checks are skipped


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_package_from_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = tuple(int(v) for v in python.split("=")[1].split(".")[:2])
    minimum = tuple(int(v) for v in re.findall(r"\d+", pyproject()["project"]["requires-python"])[:2])
    assert version >= minimum, f"environment.yml asks for Python {version}, pyproject needs >= {minimum}"
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip_section == ['-e ".[dev]"'], "environment.yml must install the course package, not list packages"
    conda_pkgs = {re.split(r"[=<>]", d)[0] for d in deps if isinstance(d, str)}
    assert conda_pkgs == {"python", "pip"}, f"packages belong in pyproject.toml, not environment.yml: {conda_pkgs}"


def test_dependencies_are_ranges_not_pins():
    project = pyproject()["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    for must in ("torch", "torchaudio", "librosa", "transformers", "datasets", "jupyterlab", "ipywidgets",
                 "matplotlib", "soundfile", "safetensors", "tqdm"):
        assert any(re.match(rf"{must}\b", d) for d in deps), f"{must} missing from pyproject dependencies"
    for extra in ("pytest", "nbval", "ruff"):
        assert any(d.startswith(extra) for d in project["optional-dependencies"]["dev"]), extra
    pinned = [d for d in deps if "==" in d]
    assert not pinned, f"exact pins in pyproject: {pinned}"


def test_ci_runs_the_readme_test_command_only():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert commands[-1] == "make test"
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^make \w+", quick_start, flags=re.M) == ["make lab", "make test"]


def test_readme_lesson_table_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert nb.name in readme, f"README's course map does not mention {nb.name}"


def test_environment_check_passes_here():
    results = check.run_checks()
    failed = [msg for ok, msg in results if not ok]
    assert not failed, failed
    assert any("torch" in msg for _, msg in results)
    assert sys.version_info >= (3, 10)


def committed_notebooks():
    return sorted(p for folder in ("notebooks", "solutions", "exercises") for p in (ROOT / folder).glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs():
    import nbformat

    assert committed_notebooks(), "no notebooks found"
    dirty = []
    for path in committed_notebooks():
        nb = nbformat.read(path, as_version=4)
        if any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in nb.cells):
            dirty.append(path.name)
    assert not dirty, f"strip outputs before committing (make strip): {dirty}"


def test_lessons_use_the_course_kernel_and_end_with_assertions():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "audio-course", path.name
        last_code = [c for c in nb.cells if c.cell_type == "code"][-1].source
        assert "assert " in last_code and "report_metrics(" in last_code, f"{path.name} must end with assertions"
