"""Lesson 05 builds the AudioGen LM, its loss and its sampling loop in cells and checks them against course_lib.

The lesson's checks (``check_against_library``: the notebook's ``TinyAudioLM`` holding the shipped weights gives
``AudioLM``'s logits, in one call and through its KV cache; ``check_loss_against_library``: its
``next_token_loss`` is ``AudioLM.loss``) are only worth something if they fail when either side changes. This
test runs the lesson's code cells up to those checks (at quick size, as the notebook tests do), sees them pass,
then breaks the library (a monkeypatched method or function of ``course_lib``) or the notebook's side (one
weight mapped wrong) and sees the lesson's own check cells raise ``AssertionError``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from notebook_cells import code_cells

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import course_lib.lm.model as lm_model  # noqa: E402
from course_lib.lm.model import AudioLM  # noqa: E402
from course_lib.nn.attention import MultiHeadAttention  # noqa: E402
from course_lib.nn.transformer import TransformerBlock  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_audiogen.ipynb"
MODEL_CHECK = "my_lm, differences = check_against_library(lm)"  # the cell that runs the model's check
LOSS_CHECK = "= check_loss_against_library(lm, my_lm,"  # the cell that runs the loss's check


def _code_cells() -> list[str]:
    return code_cells(NOTEBOOK)


def _cell(marker: str) -> str:
    found = [source for source in _code_cells() if marker in source]
    assert len(found) == 1, f"expected one code cell of {NOTEBOOK.name} containing {marker!r}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def lesson() -> dict:
    """The namespace of the lesson's code cells, run in order up to and including the loss check."""
    sources = _code_cells()
    last = next(i for i, source in enumerate(sources) if LOSS_CHECK in source)
    namespace: dict = {"__name__": "lesson05"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COURSE_RUN_SIZE", "quick")
        for i, source in enumerate(sources[: last + 1]):
            assert not any(line.lstrip().startswith(("%", "!")) for line in source.splitlines()), "no magics"
            exec(compile(source, f"{NOTEBOOK.name}, code cell {i}", "exec"), namespace)
    plt.close("all")
    torch.set_num_threads(1)  # the lesson's configure_threads() chose; the module fixture's setting stands
    return namespace


def _run_checks(namespace: dict) -> None:
    """Rerun the lesson's two check cells as they are written in the notebook."""
    exec(compile(_cell(MODEL_CHECK), "model check", "exec"), namespace)
    exec(compile(_cell(LOSS_CHECK), "loss check", "exec"), namespace)


def test_the_lesson_checks_pass_against_the_untouched_library(lesson, capsys):
    _run_checks(lesson)
    assert max(lesson["differences"].values()) < 1e-4
    assert abs(lesson["loss_mine"] - lesson["loss_library"]) < 1e-5
    assert "from AudioLM.loss" in capsys.readouterr().out


def _sin_first(positions, dim, max_period=10_000.0):
    """The library's positions with sines and cosines swapped: a plausible 'harmless' refactor."""
    cos_sin = ORIGINAL_SINUSOIDAL(positions, dim, max_period)
    return torch.cat([cos_sin[..., dim // 2:], cos_sin[..., : dim // 2]], dim=-1)


ORIGINAL_SINUSOIDAL = lm_model.sinusoidal_embedding


def _break_positions(mp):
    mp.setattr(lm_model, "sinusoidal_embedding", _sin_first)


def _break_causality(mp):
    original = MultiHeadAttention.forward

    def forward(self, x, context=None, context_mask=None, causal=False, cache=None):
        return original(self, x, context, context_mask, causal=False, cache=cache)

    mp.setattr(MultiHeadAttention, "forward", forward)


def _break_null_caption(mp):
    """Cross-attention without the key padding mask: padded caption tokens are attended, no caption is not zero."""
    original = MultiHeadAttention.forward

    def forward(self, x, context=None, context_mask=None, causal=False, cache=None):
        if context is not None:
            context_mask = None
        return original(self, x, context, context_mask, causal=causal, cache=cache)

    mp.setattr(MultiHeadAttention, "forward", forward)


def _break_residual(mp):
    """A block whose MLP branch is scaled: the same parameters, a different function."""
    original = TransformerBlock.forward

    def forward(self, x, context=None, context_mask=None, cond=None, cache=None):
        out = original(self, x, context, context_mask, cond, cache)
        return out + 0.01 * self.mlp(self.norm3(out, cond))

    mp.setattr(TransformerBlock, "forward", forward)


def _break_heads(mp):
    """The K heads' outputs stacked in the wrong order (codebook 0 gets codebook 3's head)."""
    original = AudioLM.forward

    def forward(self, seq, text, text_mask=None, cache=None):
        return original(self, seq, text, text_mask, cache).flip(1)

    mp.setattr(AudioLM, "forward", forward)


def _break_loss_shift(mp):
    """AudioLM.loss without the shift: the input holds the very tokens to predict."""
    mp.setattr(AudioLM, "shift_right", lambda self, seq: seq)


def _break_loss_padding(mp):
    """AudioLM.loss with the padding counted: every position valid, padded targets read as code 0."""
    original = AudioLM.loss

    def loss(self, codes, text, text_mask=None):
        target = self.pattern.interleave(codes, self.special_id)
        logits = self(self.shift_right(target), text, text_mask).float()
        value = torch.nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), target.clamp(max=self.special_id - 1))
        return value, original(self, codes, text, text_mask)[1]

    mp.setattr(AudioLM, "loss", loss)


@pytest.mark.parametrize("break_library, failing", [
    (_break_positions, MODEL_CHECK),
    (_break_causality, MODEL_CHECK),
    (_break_null_caption, MODEL_CHECK),
    (_break_residual, MODEL_CHECK),
    (_break_heads, MODEL_CHECK),
    (_break_loss_shift, LOSS_CHECK),
    (_break_loss_padding, LOSS_CHECK),
], ids=["positions", "causality", "null-caption", "residual", "heads", "loss-shift", "loss-padding"])
def test_a_broken_library_fails_the_lesson_check(lesson, monkeypatch, break_library, failing):
    break_library(monkeypatch)
    with pytest.raises(AssertionError):
        exec(compile(_cell(failing), "broken library", "exec"), dict(lesson))


@pytest.mark.parametrize("perturb", ["one weight", "two heads swapped"])
def test_a_wrong_weight_mapping_fails_the_lesson_check(lesson, monkeypatch, perturb):
    """The notebook's side: one tensor nudged by 1e-3, or two codebooks' heads exchanged, by the mapping that the
    lesson's check_against_library calls (looked up in the lesson's namespace, as in the notebook)."""
    mapping = lesson["library_to_mine"]

    def wrong(state):
        mapped = dict(mapping(state))
        if perturb == "one weight":
            name = "blocks.1.cross_attn.v.weight"
            mapped[name] = mapped[name] + 1e-3 * torch.ones_like(mapped[name])
        else:
            mapped["heads.0.weight"], mapped["heads.1.weight"] = mapped["heads.1.weight"], mapped["heads.0.weight"]
        return mapped

    monkeypatch.setitem(lesson, "library_to_mine", wrong)
    with pytest.raises(AssertionError):
        lesson["check_against_library"](lesson["lm"])
    monkeypatch.undo()
    lesson["check_against_library"](lesson["lm"])  # and the right mapping passes again
