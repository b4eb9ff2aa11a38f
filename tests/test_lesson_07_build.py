"""Lesson 07 builds the 1-D U-Net, the v-prediction loss and one training step in cells and checks them against
course_lib.

The lesson's checks (``check_against_library``: the notebook's ``TinyUNet`` holding ``UNet1D``'s weights gives
``UNet1D``'s output with a caption, a padded caption, a null caption and no text; ``check_loss_against_library``:
its ``v_loss`` is ``GaussianDiffusion.loss`` and one SGD step moves both networks' weights the same way) are only
worth something if they fail when either side changes. This test runs the lesson's imports, its toy-data cell and
its build cells (at quick size, as the notebook tests do), sees the checks pass, then breaks the library (a
monkeypatched method, function or constant of ``course_lib``) or the notebook's side (one weight mapped wrong)
and sees the lesson's own check cells raise ``AssertionError``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from notebook_cells import code_cells

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import course_lib.diffusion.gaussian as gaussian  # noqa: E402
import course_lib.diffusion.unet1d as unet1d  # noqa: E402
from course_lib.diffusion.unet1d import AttentionBlock1D, ResBlock1D  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "07_noise2music.ipynb"
SETUP = ("seed_everything(0)", "def toy_batch(")  # the imports cell and the toy signals' cell
FIRST_BUILD = "class ResBlock(nn.Module)"  # the build cells run from here ...
MODEL_CHECK = "my_unet, difference = check_against_library(library_unet)"  # ... through the model's check
LOSS_CHECK = "loss_mine, loss_library = check_loss_against_library("  # ... and the loss and step check


def _code_cells() -> list[str]:
    return code_cells(NOTEBOOK)


def _index(marker: str) -> int:
    found = [i for i, source in enumerate(_code_cells()) if marker in source]
    assert len(found) == 1, f"expected one code cell of {NOTEBOOK.name} containing {marker!r}, found {len(found)}"
    return found[0]


def _cell(marker: str) -> str:
    return _code_cells()[_index(marker)]


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The namespace of the lesson's setup cells and its build cells, up to and including the loss check."""
    sources = _code_cells()
    chosen = [_index(m) for m in SETUP] + list(range(_index(FIRST_BUILD), _index(LOSS_CHECK) + 1))
    namespace: dict = {"__name__": "lesson07"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_RUN_SIZE", "quick")
        for i in chosen:
            source = sources[i]
            assert not any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()), "no magics"
            exec(compile(source, f"{NOTEBOOK.name}, code cell {i}", "exec"), namespace)
    plt.close("all")
    torch.set_num_threads(1)  # the lesson's configure_threads() chose; the module fixture's setting stands
    return namespace


def _fresh(namespace: dict) -> dict:
    """A copy of the namespace with the library U-Net as the lesson built it (the loss check steps its weights)."""
    ns = dict(namespace)
    exec(compile(_cell(MODEL_CHECK), "rebuild", "exec"), ns)
    return ns


def test_the_lesson_checks_pass_against_the_untouched_library(lesson, capsys):
    ns = _fresh(lesson)
    exec(compile(_cell(LOSS_CHECK), "loss check", "exec"), ns)
    assert ns["difference"] < 1e-4
    assert abs(ns["loss_mine"] - ns["loss_library"]) < 1e-5
    assert "largest difference from UNet1D's output" in capsys.readouterr().out


def _break_film(mp):
    """FiLM without the 1 +: h·γ + β."""
    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb)).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * scale + shift
        return self.conv2(self.dropout(F.silu(h))) + self.shortcut(x)

    mp.setattr(ResBlock1D, "forward", forward)


def _break_skip_scale(mp):
    mp.setattr(unet1d, "SKIP_SCALE", 1.0)


def _break_upsampling(mp):
    """Sub-pixel upsampling that stacks the phases instead of interleaving them."""
    def forward(self, x):
        b, _, n = x.shape
        return self.conv(x).view(b, self.c_out, self.stride * n)

    mp.setattr(unet1d._Up, "forward", forward)


def _break_text_mask(mp):
    """Cross-attention that ignores the caption's padding mask."""
    original = AttentionBlock1D.forward

    def forward(self, x, text=None, text_mask=None):
        return original(self, x, text, None)

    mp.setattr(AttentionBlock1D, "forward", forward)


def _break_time_features(mp):
    """Sines first: a plausible 'harmless' refactor of the time embedding."""
    original = unet1d.sinusoidal_embedding

    def sin_first(positions, dim, max_period=10_000.0):
        cos_sin = original(positions, dim, max_period)
        return torch.cat([cos_sin[..., dim // 2:], cos_sin[..., : dim // 2]], dim=-1)

    mp.setattr(unet1d, "sinusoidal_embedding", sin_first)


def _break_v_sign(mp):
    """The velocity with the opposite sign, v = σ x0 − α ε."""
    mp.setattr(gaussian, "x0_eps_to_v", lambda x0, eps, alpha, sigma: sigma * x0 - alpha * eps)


def _break_loss_reduction(mp):
    """The loss summed over time instead of averaged."""
    original = gaussian.GaussianDiffusion.loss

    def loss(self, model_fn, x0, **kwargs):
        value, metrics = original(self, model_fn, x0, **kwargs)
        return value * x0.shape[-1], metrics

    mp.setattr(gaussian.GaussianDiffusion, "loss", loss)


@pytest.mark.parametrize("break_library, failing", [
    (_break_film, MODEL_CHECK),
    (_break_skip_scale, MODEL_CHECK),
    (_break_upsampling, MODEL_CHECK),
    (_break_text_mask, MODEL_CHECK),
    (_break_time_features, MODEL_CHECK),
    (_break_v_sign, LOSS_CHECK),
    (_break_loss_reduction, LOSS_CHECK),
], ids=["film", "skip-scale", "upsampling", "text-mask", "time-features", "v-sign", "loss-reduction"])
def test_a_broken_library_fails_the_lesson_check(lesson, monkeypatch, break_library, failing):
    ns = _fresh(lesson)
    break_library(monkeypatch)
    with pytest.raises(AssertionError):
        exec(compile(_cell(failing), "broken library", "exec"), ns)


def test_a_wrong_weight_mapping_fails_the_lesson_check(lesson, monkeypatch):
    """The notebook's side: one tensor nudged by 1e-3 by the mapping that check_against_library calls (looked up
    in the lesson's namespace, as in the notebook)."""
    ns = _fresh(lesson)
    mapping = ns["library_to_mine"]

    def wrong(state):
        mapped = dict(mapping(state))
        name = "mid_attn.cross_qkvo.2.weight"
        mapped[name] = mapped[name] + 1e-3 * torch.ones_like(mapped[name])
        return mapped

    monkeypatch.setitem(ns, "library_to_mine", wrong)  # the check cell, rerun in ns, made ns its functions' globals
    with pytest.raises(AssertionError):
        ns["check_against_library"](ns["library_unet"])
    monkeypatch.undo()
    ns["check_against_library"](ns["library_unet"])  # and the right mapping passes again
