"""Lesson 03 writes MelGAN in cells and proves it is course_lib's by loading the library's weights into it and
comparing every output. This test runs that proof from the notebook itself (its code cells, at quick size), then
breaks the library, and the notebook's version, in plausible ways and sees the proof fail: the check cannot
silently pass when either side drifts."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch.nn.functional as F
from notebook_cells import code_cells

import course_lib.nn.gan as gan
from course_lib.vocoders import melgan

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_melgan.ipynb"
FIRST_BUILD_CELL = "def wn_conv("  # the first cell of the notebook's MelGAN
CHECK_CALL = "check_same_as_library(MelGAN(course_config)"  # the cell that runs the equivalence check


def _code_cells() -> list[str]:
    return code_cells(NOTEBOOK)


def _index(cells: list[str], marker: str) -> int:
    found = [i for i, source in enumerate(cells) if marker in source]
    assert found, f"no code cell of {NOTEBOOK.name} contains {marker!r}: update this test with the notebook"
    return found[0]


@pytest.fixture(scope="module")
def lesson():
    """The notebook's namespace after its code cells up to and including the equivalence check (quick size)."""
    matplotlib.use("Agg")
    patch = pytest.MonkeyPatch()
    patch.setenv("COURSE_RUN_SIZE", "quick")
    patch.chdir(NOTEBOOK.parent)
    cells = _code_cells()
    start, end = _index(cells, FIRST_BUILD_CELL), _index(cells, CHECK_CALL)
    assert start < end
    namespace: dict = {"__name__": "lesson_03"}
    try:
        for i, source in enumerate(cells[: end + 1]):
            exec(compile(source, f"{NOTEBOOK.name}:code cell {i}", "exec"), namespace)
        yield cells, start, end, namespace
    finally:
        patch.undo()
        import matplotlib.pyplot as plt

        plt.close("all")


def _rerun_build_and_check(lesson, edits: tuple[tuple[str, str], ...] = ()) -> dict:
    """Run the notebook's build cells and its check cell again (after ``edits`` to their source) on a copy of
    the namespace; return the namespace."""
    cells, start, end, namespace = lesson
    namespace = dict(namespace)
    applied = set()
    for i in range(start, end + 1):
        source = cells[i]
        for old, new in edits:
            if old in source:
                source = source.replace(old, new, 1)
                applied.add(old)
        exec(compile(source, f"{NOTEBOOK.name}:code cell {i}", "exec"), namespace)
    assert applied == {old for old, _ in edits}, f"edits not found in the notebook: {set(dict(edits)) - applied}"
    return namespace


def test_the_lesson_check_passes_and_copies_every_library_tensor(lesson):
    namespace = _rerun_build_and_check(lesson)
    library = melgan.MelGAN(namespace["course_config"])
    assert len(namespace["pairs"]) == len(library.generator.state_dict()) + len(library.discriminator.state_dict())


def _identity_shortcut(monkeypatch):
    # a plausible refactor of the library: the residual unit's 1x1 shortcut replaced by the identity
    monkeypatch.setattr(melgan.ResidualUnit, "forward", lambda self, x: x + self.block(x))


def _one_feature_map_fewer(monkeypatch):
    # the library's discriminator stops returning its first layer's feature map
    original = melgan.ScaleDiscriminator.forward

    def forward(self, audio):
        logits, feats = original(self, audio)
        return logits, feats[1:]

    monkeypatch.setattr(melgan.ScaleDiscriminator, "forward", forward)


def _pool_without_padding(monkeypatch):
    # the coarser scales see the audio pooled differently (no padding: one sample shorter, shifted)
    original = melgan.MultiScaleDiscriminator.__init__

    def init(self, config):
        original(self, config)
        self.pool = melgan.nn.AvgPool1d(4, stride=2)

    monkeypatch.setattr(melgan.MultiScaleDiscriminator, "__init__", init)


def _feature_matching_summed(monkeypatch):
    # the library's feature matching sums the layers instead of averaging them (the official code's weighting)
    def summed(real_feats, fake_feats):
        return sum(F.l1_loss(f, r.detach()) for rs, fs in zip(real_feats, fake_feats) for r, f in zip(rs, fs))

    monkeypatch.setattr(gan, "feature_matching_loss", summed)


def _hinge_summed_over_scales(monkeypatch):
    original = gan.discriminator_hinge_loss
    monkeypatch.setattr(gan, "discriminator_hinge_loss", lambda real, fake: original(real, fake, reduction="sum"))


@pytest.mark.parametrize("break_library", [_identity_shortcut, _one_feature_map_fewer, _pool_without_padding,
                                           _feature_matching_summed, _hinge_summed_over_scales],
                         ids=lambda f: f.__name__.strip("_"))
def test_breaking_the_library_makes_the_lesson_check_fail(lesson, monkeypatch, break_library):
    break_library(monkeypatch)
    with pytest.raises(AssertionError):
        _rerun_build_and_check(lesson)


@pytest.mark.parametrize("edit", [
    # the notebook's generator with another LeakyReLU slope in its residual units
    ("            nn.LeakyReLU(0.2),\n            nn.ReflectionPad1d(dilation),",
     "            nn.LeakyReLU(0.1),\n            nn.ReflectionPad1d(dilation),"),
    # one weight of the mapping perturbed on its way from the library to the notebook
    ("target.load_state_dict(dict(zip(tgt, src.values())))",
     "target.load_state_dict({k: v + 1e-2 * (i == 7) for i, (k, v) in enumerate(zip(tgt, src.values()))})"),
    # the notebook's hinge with real and fake swapped
    ("F.relu(1 - r).mean() + F.relu(1 + f).mean()", "F.relu(1 + r).mean() + F.relu(1 - f).mean()"),
], ids=["leaky-slope", "perturbed-weight", "swapped-hinge"])
def test_changing_the_notebook_version_makes_the_check_fail(lesson, edit):
    with pytest.raises(AssertionError):
        _rerun_build_and_check(lesson, (edit,))
