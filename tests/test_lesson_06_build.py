"""Lesson 06 builds Diffsound's token decoder, its loss and its reverse loop in cells and checks them against course_lib.

The lesson's checks (``check_same_as_library``: the notebook's ``Denoiser`` holding the shipped weights gives
``DiffsoundModel``'s logits; ``check_loss_against_library``: its ``diffsound_loss`` is ``DiffsoundModel.loss``;
``check_sampler_against_library``: its ``reverse_loop`` is ``DiffsoundModel.generate`` without guidance or
truncation) are only worth something if they fail when either side changes. This test runs the lesson's code
cells up to those checks (at quick size, skipping the cells that only plot, play or train), sees them pass,
then breaks the library (a monkeypatched method of ``course_lib``) or the notebook's side (its timestep
features in the other order) and sees the lesson's own check cells raise ``AssertionError``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from notebook_cells import code_cells

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from course_lib.diffusion.discrete import DiscreteDiffusion  # noqa: E402
from course_lib.nn.transformer import AdaptiveLayerNorm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_diffsound.ipynb"
MODEL_CHECK = "model_difference = check_same_as_library(model, my_net)"
LOSS_CHECK = "= check_loss_against_library(model, my_net)"
SAMPLER_CHECK = "sampler_agreement = check_sampler_against_library(model)"
# Cells the checks do not need (plots, listening, training): skipped to keep the test short.
SKIP = ("steps_shown = [0, 10, 30, 60, 100]", "for step in range(train_steps)", "summary = train(family, config")


def _code_cells() -> list[str]:
    return code_cells(NOTEBOOK)


def _cell(marker: str) -> str:
    found = [source for source in _code_cells() if marker in source]
    assert len(found) == 1, f"expected one code cell of {NOTEBOOK.name} containing {marker!r}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The namespace of the lesson's code cells, run in order up to and including the sampler check."""
    sources = _code_cells()
    last = next(i for i, source in enumerate(sources) if SAMPLER_CHECK in source)
    namespace: dict = {"__name__": "lesson06"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_RUN_SIZE", "quick")
        for i, source in enumerate(sources[: last + 1]):
            assert not any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()), "no magics"
            if any(marker in source for marker in SKIP):
                continue
            exec(compile(source, f"{NOTEBOOK.name}, code cell {i}", "exec"), namespace)
    plt.close("all")
    torch.set_num_threads(1)
    return namespace


def _run_checks(namespace: dict) -> None:
    """Rerun the lesson's three check cells as they are written in the notebook."""
    for marker in (MODEL_CHECK, LOSS_CHECK, SAMPLER_CHECK):
        exec(compile(_cell(marker), marker, "exec"), namespace)


def test_the_skipped_cells_exist():
    """Every cell the build test skips (listening, hand loop, engine) is still in the notebook, so a renamed
    marker cannot silently stop skipping a slow cell."""
    for marker in SKIP:
        assert marker in _cell(marker), marker


def test_the_lesson_checks_pass_against_the_untouched_library(lesson, capsys):
    _run_checks(lesson)
    assert lesson["model_difference"] < 1e-4
    assert abs(lesson["loss_mine"] - lesson["loss_library"]) < 1e-4
    assert lesson["sampler_agreement"] > 0.99
    assert "DiffsoundModel.loss" in capsys.readouterr().out


def _no_one_plus(self, x, cond):
    """AdaLN with ``LN(x)·γ + β`` instead of ``LN(x)·(1 + γ) + β``: a plausible slip in the library."""
    scale, shift = self.to_scale_shift(cond).chunk(2, dim=-1)
    return self.norm(x) * scale[:, None, :] + shift[:, None, :]


def test_breaking_the_library_adaptive_norm_fails_the_model_check(lesson, monkeypatch):
    monkeypatch.setattr(AdaptiveLayerNorm, "forward", _no_one_plus)
    with pytest.raises(AssertionError):
        exec(compile(_cell(MODEL_CHECK), "model check", "exec"), lesson)


def test_breaking_the_library_loss_fails_the_loss_check(lesson, monkeypatch):
    original = DiscreteDiffusion.loss

    def no_adaptive_aux(self, *args, **kwargs):  # the auxiliary term without its 2 − (t−1)/T weighting
        kwargs["adaptive_aux"] = False
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DiscreteDiffusion, "loss", no_adaptive_aux)
    with pytest.raises(AssertionError):
        exec(compile(_cell(LOSS_CHECK), "loss check", "exec"), lesson)


def test_breaking_the_library_sampler_fails_the_sampler_check(lesson, monkeypatch):
    original = DiscreteDiffusion.timesteps

    def one_step_late(self, steps=None):  # every intermediate jump lands one step lower: T, 89, 79, ..., 9, 0
        times = original(self, steps)
        return [times[0]] + [t - 1 for t in times[1:-1]] + [0]

    monkeypatch.setattr(DiscreteDiffusion, "timesteps", one_step_late)
    with pytest.raises(AssertionError):
        exec(compile(_cell(SAMPLER_CHECK), "sampler check", "exec"), lesson)


def test_changing_the_lesson_side_fails_the_model_check(lesson, monkeypatch):
    features = lesson["timestep_features"]

    def sines_first(t, dim):  # the notebook's timestep features with sines and cosines swapped
        cos_sin = features(t, dim)
        return torch.cat([cos_sin[:, dim // 2:], cos_sin[:, : dim // 2]], dim=-1)

    monkeypatch.setitem(lesson, "timestep_features", sines_first)
    with pytest.raises(AssertionError):
        exec(compile(_cell(MODEL_CHECK), "model check", "exec"), lesson)
    monkeypatch.setitem(lesson, "timestep_features", features)
    exec(compile(_cell(MODEL_CHECK), "model check", "exec"), lesson)  # and the lesson's own version passes again
