"""Lesson 01 builds its mel VQ-VAE in cells and proves it is the library's ``MelVQVAE``: this test runs those
cells (at quick size) and checks that the proof can fail.

The lesson's ``check_same_as_library`` loads the library model's weights and codebook state into the
notebook's model, runs one training-mode forward and backward of both on the same batch and compares the
reconstruction, the loss, the codes, the codebook after its EMA update and restarts, and every gradient.
Here it must pass as the two stand, and raise ``AssertionError`` when either side changes: a library class
monkeypatched (a residual block without its skip path, no dead-code restarts, no straight-through), or a
line of the notebook's own model edited (no straight-through, β dropped from the loss).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from notebook_cells import code_cells

from course_lib.codecs import mel_vqvae
from course_lib.quantize import QuantizerOutput, VectorQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_vq_vae.ipynb"
FIRST = "from course_lib.codecs.mel_vqvae import LOG_FLOOR"  # the cell that loads the config: the build starts
CHECK = "same = check_same_as_library("  # the cell that runs the equivalence check: the build ends


def _build_cells() -> list[str]:
    """The notebook's set-up cell, then every code cell from the config cell to the check cell (included)."""
    cells = code_cells(NOTEBOOK)
    start = next(i for i, s in enumerate(cells) if FIRST in s)
    end = next(i for i, s in enumerate(cells) if CHECK in s)
    assert start < end, "the lesson's build cells moved: update FIRST/CHECK"
    return [cells[0]] + cells[start:end + 1]


def _run(cells: list[str]) -> dict:
    """Execute the cells in one fresh namespace (as a kernel would) and return it."""
    namespace: dict = {"__name__": "__lesson01__"}
    for i, source in enumerate(cells):
        exec(compile(source, f"{NOTEBOOK.name}[build cell {i}]", "exec"), namespace)
    return namespace


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setenv("COURSE_RUN_SIZE", "quick")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("COURSE_NUM_THREADS", raising=False)


def test_the_notebook_model_is_the_library_model(quick):
    namespace = _run(_build_cells())
    same = namespace["same"]
    assert same["codes that agree"] > 0.99
    assert same["max |gradient diff|"] < 1e-4 and same["|loss diff|"] < 1e-5
    ours, library = namespace["VQVAE"](namespace["cfg"]), mel_vqvae.MelVQVAE(namespace["cfg"])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in library.parameters())


def _no_skip(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


def _no_restarts(self, flat: torch.Tensor) -> int:
    return 0


def _no_straight_through(original: Callable) -> Callable:
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        out = original(self, z)
        return QuantizerOutput(out.quantized.detach(), out.codes, out.loss, out.metrics)
    return forward


@pytest.mark.parametrize("target, name, patch", [
    (mel_vqvae.ResBlock2d, "forward", _no_skip),
    (VectorQuantizer, "_restart_dead", _no_restarts),
    (VectorQuantizer, "forward", _no_straight_through(VectorQuantizer.forward)),
], ids=["resblock-without-skip", "no-dead-code-restarts", "no-straight-through"])
def test_the_check_fails_when_the_library_changes(quick, monkeypatch, target, name, patch):
    cells = _build_cells()
    namespace = _run(cells[:-1])
    monkeypatch.setattr(target, name, patch)
    with pytest.raises(AssertionError, match="are not close"):
        exec(compile(cells[-1], "check cell", "exec"), namespace)


@pytest.mark.parametrize("old, new", [
    ("return z + (q - z).detach(), codes.reshape(b, h, w), commitment", "return q, codes.reshape(b, h, w), commitment"),
    ("return reconstruction + beta * commitment, reconstruction", "return reconstruction + commitment, reconstruction"),
], ids=["notebook-without-straight-through", "notebook-without-beta"])
def test_the_check_fails_when_the_notebook_changes(quick, old, new):
    cells = _build_cells()
    assert sum(old in s for s in cells) == 1, f"the lesson no longer contains {old!r}: update this test"
    edited = [s.replace(old, new) for s in cells]
    namespace = _run(edited[:-1])
    with pytest.raises(AssertionError, match="are not close"):
        exec(compile(edited[-1], "check cell", "exec"), namespace)
