"""Exercise notebook 04 (conditioning on text): the solution passes every check, the stub says "not implemented",
and each check rejects plausible wrong answers with the hint that names the mistake."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exercise_notebooks import (
    assert_check_passes_quickly,
    assert_generated_and_registered,
    assert_stubs_not_implemented,
    notebook_functions,
)

from course_lib.exercises import check
from course_lib.exercises.ex04 import (
    LESSON,
    GuidanceCheckModel,
    reference_caption_similarity,
    reference_guided_logits,
    reference_masked_attention,
)
from course_lib.exercises.grade import solution_tasks
from course_lib.nn.attention import MultiHeadAttention
from course_lib.nn.guidance import cfg_mix
from course_lib.text.base import TextEmbedding

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "04_text_conditioning.ipynb"
EXERCISE = ROOT / "exercises" / "04_text_conditioning.ipynb"
TASK_IDS = ["masked_attention", "cross_attention", "guided_logits", "condition_dropout",
            "caption_similarity"]
NAMESPACE = {"math": math, "torch": torch, "F": F}  # what the solution cells assume is imported


def _functions(path: Path) -> dict:
    return notebook_functions(path, NAMESPACE)


@pytest.fixture(scope="module")
def solution_fns() -> dict:
    return _functions(SOLUTION)


def test_notebook_tasks_match_the_registry_and_the_exercise_is_fresh():
    assert_generated_and_registered(SOLUTION, EXERCISE, LESSON, TASK_IDS)
    assert sum(solution_tasks(SOLUTION).values()) == 9


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.float_path
def test_every_check_passes_the_solution_quickly(task_id, solution_fns, capsys):
    assert_check_passes_quickly(task_id, solution_fns, capsys)


def test_check_on_the_untouched_exercise_says_not_implemented(capsys):
    assert_stubs_not_implemented(EXERCISE, TASK_IDS, capsys, NAMESPACE)


@pytest.mark.float_path
def test_known_answers_of_the_solution_and_the_references(solution_fns):
    # one query, keys 2·e1 (kept), 4·e1 (hidden), e2 (kept), d = 2: weights ∝ exp(2/√2), exp(0)
    q, k = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[2.0, 0.0], [4.0, 0.0], [0.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 0.0], [10.0, 10.0], [0.0, 1.0]]]])
    mask = torch.tensor([[True, False, True]])
    w = 1 / (1 + math.exp(-math.sqrt(2)))
    out = solution_fns["masked_attention"](q, k, v, mask)
    assert out.flatten().tolist() == pytest.approx([w, 1 - w], abs=1e-6)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 8, generator=g), torch.randn(2, 3, 6, 8, generator=g), torch.randn(2, 3, 6, 5, generator=g)
    mask = torch.rand(2, 6, generator=g) > 0.4
    mask[:, 0] = True
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    assert torch.allclose(reference_masked_attention(q, k, v, mask), expected, atol=1e-6)
    assert torch.allclose(solution_fns["masked_attention"](q, k, v, mask), expected, atol=1e-6)
    # cross-attention: the library layer, padding garbage does not matter, the null caption gives exactly 0
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, context_dim=12).eval()
    x, text = torch.randn(3, 5, 16), torch.randn(3, 4, 12)
    text_mask = torch.tensor([[True, True, False, False], [True] * 4, [False] * 4])
    with torch.no_grad():
        mine = solution_fns["cross_attention"](layer, x, text, text_mask)
        assert torch.allclose(mine, layer(x, text, text_mask), atol=1e-6)
        garbage = text.clone()
        garbage[~text_mask] = 99.0
        assert torch.allclose(solution_fns["cross_attention"](layer, x, garbage, text_mask), mine, atol=1e-6)
    assert float(mine[2].abs().max()) == 0.0
    # guidance in one batched pass: one call on 2B rows; scale 1 is the conditional model, 0 the unconditional one
    model = GuidanceCheckModel(0)
    x, text = torch.randn(2, 3, 16), torch.randn(2, 4, 12)
    text_mask = torch.tensor([[True, True, False, False], [True] * 4])
    guided = solution_fns["guided_logits"]
    with torch.no_grad():
        cond, uncond = model(x, text, text_mask), model(x, text, torch.zeros_like(text_mask))
        model.calls.clear()
        assert torch.allclose(guided(model, x, text, text_mask, 1.0), cond, atol=1e-5) and model.calls == [4]
        assert torch.allclose(guided(model, x, text, text_mask, 0.0), uncond, atol=1e-5)
        assert torch.allclose(guided(model, x, text, text_mask, 3.0), cfg_mix(cond, uncond, 3.0), atol=1e-5)
        assert torch.allclose(reference_guided_logits(model, x, text, text_mask, 3.0), cfg_mix(cond, uncond, 3.0),
                              atol=1e-5)
        # the check model tells the null caption from zeroed text under the real mask (its value bias)
        assert not torch.allclose(model(x, torch.zeros_like(text), text_mask), uncond, atol=1e-3)
    # condition dropout: p = 0 and 1, padding stays False, whole rows only
    full = torch.tensor([[True, True, False], [True, False, False]])
    drop = solution_fns["condition_dropout"]
    assert torch.equal(drop(full, 0.0), full) and not drop(full, 1.0).any()
    dropped = drop(torch.ones(10_000, 3, dtype=torch.bool), 0.25, torch.Generator().manual_seed(1))
    assert dropped.all(1).logical_xor(~dropped.any(1)).all()
    assert abs(float((~dropped.any(1)).float().mean()) - 0.25) < 0.03
    # caption similarity: the library's TextEmbedding.pooled + cosine; a caption with itself is 1, null is 0
    emb = torch.randn(3, 5, 8)
    m = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    sim = solution_fns["caption_similarity"](emb, m, emb, m)
    pooled = F.normalize(TextEmbedding(emb * m[..., None], m).pooled(), dim=-1)
    assert torch.allclose(sim, pooled @ pooled.T, atol=1e-6)
    assert torch.allclose(reference_caption_similarity(emb, m, emb, m), sim, atol=1e-6)
    assert sim[0, 0] == pytest.approx(1.0) and sim[1, 1] == pytest.approx(1.0) and float(sim[2].abs().max()) == 0


# --- plausible wrong answers -------------------------------------------------------------------------


def _attn(q, k, v, key_mask, **kwargs):
    return reference_masked_attention(q, k, v, key_mask, **kwargs)


def _zero_after_softmax(q, k, v, key_mask):
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return (weights * key_mask[:, None, None, :]) @ v


def _cross(layer, x, text, text_mask, heads=True, use_mask=True, zero_null=True, out_proj=True, invert=False):
    b, s, dim = x.shape
    h = layer.num_heads if heads else 1

    def split(t):
        return t.view(t.shape[0], t.shape[1], h, dim // h).transpose(1, 2)

    q, k, v = split(layer.q_proj(x)), split(layer.k_proj(text)), split(layer.v_proj(text))
    mask = ~text_mask if invert else text_mask
    null = ~mask.any(1)
    keep = (mask | null[:, None]) if zero_null else mask
    out = reference_masked_attention(q, k, v, keep if use_mask else torch.ones_like(keep))
    out = out.transpose(1, 2).reshape(b, s, dim)
    out = layer.out_proj(out) if out_proj else out
    return out.masked_fill(null[:, None, None], 0.0) if zero_null else out


def _null_not_zeroed(layer, x, text, text_mask):
    null = ~text_mask.any(1)
    return layer(x, text, text_mask | null[:, None])


def _cfg(model, x, text, text_mask, scale, uncond_text=None, uncond_mask=None, swap=False, probs=False):
    """Variants of the batched guidance: what the unconditional half is given, halves swapped, mix on probs."""
    b = x.shape[0]
    uncond_text = text if uncond_text is None else uncond_text
    uncond_mask = torch.zeros_like(text_mask) if uncond_mask is None else uncond_mask
    logits = model(torch.cat([x, x]), torch.cat([text, uncond_text]), torch.cat([text_mask, uncond_mask]))
    cond, uncond = (logits[b:], logits[:b]) if swap else (logits[:b], logits[b:])
    if probs:
        cond, uncond = cond.softmax(-1), uncond.softmax(-1)
    return uncond + scale * (cond - uncond)


def _two_calls(model, x, text, text_mask, scale):
    cond, uncond = model(x, text, text_mask), model(x, text, torch.zeros_like(text_mask))
    return uncond + scale * (cond - uncond)


def _in_place_cfg(model, x, text, text_mask, scale):
    out = reference_guided_logits(model, x, text, text_mask, scale)
    x.mul_(0)  # the caller's tensor, changed in place
    return out


def _per_token(mask, p, generator=None):
    return mask & ~(torch.rand(mask.shape, generator=generator) < p)


def _inverted_rate(mask, p, generator=None):
    return mask & ~(torch.rand(mask.shape[0], generator=generator) >= p)[:, None]


def _global_rng(mask, p, generator=None):
    return mask & ~(torch.rand(mask.shape[0]) < p)[:, None]


def _one_draw(mask, p, generator=None):
    return mask & ~(torch.rand(1, generator=generator) < p)


def _padding_becomes_true(mask, p, generator=None):
    keep = torch.rand(mask.shape[0], generator=generator) >= p
    return keep[:, None].expand_as(mask).clone()


def _float_mask(mask, p, generator=None):
    return (mask & ~(torch.rand(mask.shape[0], generator=generator) < p)[:, None]).float()


def _pool(emb, mask):
    m = mask[..., None].float()
    return (emb * m).sum(1) / m.sum(1).clamp(min=1)


def _mean_with_padding(ea, ma, eb, mb):
    return F.normalize(ea.mean(1), dim=-1) @ F.normalize(eb.mean(1), dim=-1).T


def _dot(ea, ma, eb, mb):
    return _pool(ea, ma) @ _pool(eb, mb).T


def _nan_null(ea, ma, eb, mb):
    a, b = _pool(ea, ma), _pool(eb, mb)
    return (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).T


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("masked_attention", lambda q, k, v, m: _attn(q, k, v, m, invert=True), "polarity is inverted"),
    ("masked_attention", lambda q, k, v, m: _attn(q, k, v, m, scale=1.0), "forgot to divide the scores by √d"),
    ("masked_attention", lambda q, k, v, m: _attn(q, k, v, m, scale=1 / q.shape[-1]), "divide by √d, not by d"),
    ("masked_attention", lambda q, k, v, m: _attn(q, k, v, m, softmax_dim=-2), "softmax must run over the KEYS"),
    ("masked_attention", lambda q, k, v, m: _attn(q, k, v, m, fill=0.0), "must become −∞"),
    ("masked_attention", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v), "ignores key_mask"),
    ("masked_attention", _zero_after_softmax, "BEFORE the softmax"),
    ("cross_attention", lambda *a: _cross(*a, use_mask=False), "masked-out tokens must not matter"),
    ("cross_attention", lambda *a: _cross(*a, invert=True), "polarity is inverted"),
    ("cross_attention", lambda *a: _cross(*a, zero_null=False), "null caption (a mask row of all False"),
    ("cross_attention", lambda *a: _cross(*a, heads=False), "split q, k, v into 4 heads"),
    ("cross_attention", lambda *a: _cross(*a, out_proj=False), "layer.out_proj"),
    ("cross_attention", _null_not_zeroed, "must give exactly zero output"),
    ("guided_logits", _two_calls, "call model once"),
    ("guided_logits", lambda m, x, t, k, s: _cfg(m, x, t, k, s, uncond_mask=k), "still sees the caption"),
    ("guided_logits", lambda m, x, t, k, s: _cfg(m, x, t, k, s, uncond_text=torch.zeros_like(t), uncond_mask=k),
     "zeroing the text is not the null caption"),
    ("guided_logits", lambda m, x, t, k, s: _cfg(m, x, t, k, s, uncond_mask=~k), "inverted mask"),
    ("guided_logits", lambda m, x, t, k, s: _cfg(m, x, t, k, s, swap=True), "halves are swapped"),
    ("guided_logits", lambda m, x, t, k, s: _cfg(m, x, t, k, s, probs=True), "not their softmax probabilities"),
    ("guided_logits", _in_place_cfg, "changed its inputs in place"),
    ("condition_dropout", _per_token, "removes a WHOLE caption"),
    ("condition_dropout", _inverted_rate, "probability 1 − p"),
    ("condition_dropout", _global_rng, "draw the random numbers from the generator"),
    ("condition_dropout", _one_draw, "one random number PER ROW"),
    ("condition_dropout", _padding_becomes_true, "a padding position (False in the input) became True"),
    ("condition_dropout", _float_mask, "expected a bool mask"),
    ("caption_similarity", _mean_with_padding, "padding included"),
    ("caption_similarity", _dot, "divide by both norms"),
    ("caption_similarity", _nan_null, "the null caption gives NaN"),
    ("caption_similarity", lambda ea, ma, eb, mb: reference_caption_similarity(eb, mb, ea, ma),
     "rows are the A captions"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out
