"""Lesson 02 builds its SEANet codec, RVQ and multi-scale mel loss in cells and proves they are the library's:
this test runs those cells (at quick size) and checks that the proof can fail.

The lesson's ``check_same_as_library`` loads the shipped ``Codec``'s weights into the notebook's
``NotebookCodec`` and compares, on the same clips, the latent, the codes, the reconstruction, every loss term
(time L1, multi-scale mel, commitment, total) and every encoder/decoder gradient. Here it must pass as the two
stand, and raise ``AssertionError`` when either side changes: a library class monkeypatched (a residual unit
without its skip, an LSTM without its skip, a mel loss without its log term), or a line of the notebook's own
model edited (the encoder's strides in the config's order, no straight-through).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from notebook_cells import code_cells

from course_lib.codecs import losses, seanet

pytestmark = pytest.mark.usefixtures("one_thread")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_neural_codec.ipynb"
FIRST = "def conv(c_in, c_out, kernel"  # the first build cell
CHECK = "same = check_same_as_library("  # the cell that runs the equivalence check: the build ends


def _build_cells() -> list[str]:
    """The notebook's set-up cell, then every code cell from the first build cell to the check cell (included)."""
    cells = code_cells(NOTEBOOK)
    start = next(i for i, s in enumerate(cells) if FIRST in s)
    end = next(i for i, s in enumerate(cells) if CHECK in s)
    assert start < end, "the lesson's build cells moved: update FIRST/CHECK"
    return [cells[0]] + cells[start:end + 1]


def _run(cells: list[str]) -> dict:
    """Execute the cells in one fresh namespace (as a kernel would) and return it."""
    namespace: dict = {"__name__": "__lesson02__"}
    for i, source in enumerate(cells):
        exec(compile(source, f"{NOTEBOOK.name}[build cell {i}]", "exec"), namespace)
    return namespace


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setenv("COURSE_RUN_SIZE", "quick")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("COURSE_NUM_THREADS", raising=False)


def _check(namespace: dict) -> None:
    namespace["check_same_as_library"](namespace["shipped"], namespace["clips"][:2])


def test_the_notebook_codec_is_the_library_codec(quick):
    namespace = _run(_build_cells())
    same = namespace["same"]
    assert same["codes that agree"] > 0.99
    assert same["|loss diff|"] < 1e-4 and same["worst relative gradient diff"] < 1e-3
    ours, library = namespace["NotebookCodec"](), namespace["shipped"]
    assert sum(p.numel() for p in ours.parameters()) == (
        sum(p.numel() for p in [*library.encoder.parameters(), *library.decoder.parameters()])
        + sum(layer.codebook.numel() for layer in library.quantizer.layers))


def _unit_without_skip(self, x: torch.Tensor) -> torch.Tensor:
    return self.block(x)


def _lstm_without_skip(self, x: torch.Tensor) -> torch.Tensor:
    out, _ = self.lstm(x.permute(2, 0, 1))
    return out.permute(1, 2, 0)


def _mel_without_log(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return sum(F.l1_loss(mel(estimate), mel(target)) for mel in self.mels) / len(self.mels)


@pytest.fixture(scope="module")
def built() -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_RUN_SIZE", "quick")
        mp.setenv("MPLBACKEND", "Agg")
        mp.delenv("COURSE_NUM_THREADS", raising=False)
        return _run(_build_cells())


@pytest.mark.parametrize("target, name, patch", [
    (seanet.ResidualUnit, "forward", _unit_without_skip),
    (seanet.SLSTM, "forward", _lstm_without_skip),
    (losses.MultiScaleMelLoss, "forward", _mel_without_log),
], ids=["residual-unit-without-skip", "lstm-without-skip", "mel-loss-without-log"])
def test_the_check_fails_when_the_library_changes(built, monkeypatch, target, name, patch):
    _check(built)  # passes as the two stand
    monkeypatch.setattr(target, name, patch)
    with pytest.raises(AssertionError):
        _check(built)


@pytest.mark.parametrize("old, new", [
    ("for s in strides:  # encoder strides", "for s in reversed(strides):  # encoder strides"),
    ("total = flat + (total - flat).detach()", "total = total + 0 * flat"),
], ids=["notebook-strides-in-config-order", "notebook-without-straight-through"])
def test_the_check_fails_when_the_notebook_changes(quick, old, new):
    cells = _build_cells()
    assert sum(old in s for s in cells) == 1, f"the lesson no longer contains {old!r}: update this test"
    edited = [s.replace(old, new) for s in cells]
    namespace = _run(edited[:-1])
    with pytest.raises(AssertionError):
        exec(compile(edited[-1], "check cell", "exec"), namespace)
