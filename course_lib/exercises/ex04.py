"""Checks for exercise notebook 04, conditioning on text: masked attention, cross-attention, classifier-free
guidance, condition dropout, caption similarity.

Each checker compares the student's function with the course's reference (torch's own
``F.scaled_dot_product_attention``, :class:`course_lib.nn.attention.MultiHeadAttention`,
:mod:`course_lib.nn.guidance`, :meth:`course_lib.text.base.TextEmbedding.pooled`) on hand-made and random
inputs, and turns the first mismatch into a hint naming the likeliest mistake: the mask's polarity
inverted, the softmax over the queries instead of the keys, no ``1/√d``, masked scores set to 0 instead of
−∞, padding tokens that still change the output, one big head instead of several, NaN for the null caption,
guidance pushed from the wrong side or on probabilities, an unconditional half that still sees the caption, tokens dropped one by one instead of whole captions, a rate of ``1 − p``,
padding counted in a mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.exercises.checks import CheckContext, WrongAnswer, expect_tensor, register_task, seeded
from course_lib.nn.attention import MultiHeadAttention
from course_lib.nn.guidance import cfg_mix

LESSON = "04_text_conditioning"

__all__ = ["LESSON", "GuidanceCheckModel", "reference_caption_similarity", "reference_guided_logits",
           "reference_masked_attention"]


def _same(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, equal_nan: bool = False) -> bool:
    """Same shape and values (float rounding allowed), and no NaN in ``got`` unless ``equal_nan`` (then NaN must
    sit where ``expected`` has NaN: used to recognise wrong variants that produce NaN)."""
    if got.shape != expected.shape or (torch.isnan(got).any() and not equal_nan):
        return False
    return bool(torch.allclose(got.double(), expected.double(), atol=atol, rtol=1e-4, equal_nan=equal_nan))


def _unchanged(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], where: str) -> None:
    if not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where} your function changed its inputs in place; compute on new tensors "
                          "(no `+=`, no `masked_fill_`, no `x[...] = ...` on an argument)")


def _float_tensor(value: object, fn_name: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    got = expect_tensor(value, fn_name)
    if tuple(got.shape) != shape:
        raise WrongAnswer(f"{where} expected an output of shape {shape}, got {tuple(got.shape)}")
    if not got.is_floating_point():
        raise WrongAnswer(f"{where} expected float values, got {got.dtype}")
    return got.detach()


# --------------------------------------------------------------------------------------------------------
# Task 1: scaled dot-product attention with a key mask
# --------------------------------------------------------------------------------------------------------


def reference_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                               *, scale: float | None = None, softmax_dim: int = -1, invert: bool = False,
                               fill: float = float("-inf")) -> torch.Tensor:
    """``softmax(Q Kᵀ · scale + M) V`` for ``q`` ``(B, H, Sq, d)``, ``k`` ``(B, H, Sk, d)``, ``v`` ``(B, H, Sk, dv)``
    and ``key_mask`` ``(B, Sk)`` bool (True = may attend) → ``(B, H, Sq, dv)``; ``scale`` defaults to ``1/√d``.

    With the defaults it equals ``F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None])``;
    the keyword switches build the wrong variants the check recognises (softmax over the queries, an
    inverted mask, masked scores filled with ``fill`` instead of −∞).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, Sq, Sk)
    keep = key_mask[:, None, None, :]
    scores = scores.masked_fill(keep if invert else ~keep, fill)
    return scores.softmax(dim=softmax_dim) @ v


def _attention_cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = seeded(40)
    # hand-made: one query, three keys, the middle key masked out
    q0 = torch.tensor([[[[1.0, 0.0]]]])
    k0 = torch.tensor([[[[2.0, 0.0], [4.0, 0.0], [0.0, 1.0]]]])
    v0 = torch.tensor([[[[1.0, 0.0], [10.0, 10.0], [0.0, 1.0]]]])
    m0 = torch.tensor([[True, False, True]])
    # random: queries and keys of different lengths (cross-attention), value width != key width, and every
    # mask row with both kept and hidden keys (so an inverted mask is visible and still finite)
    q1, k1, v1 = (torch.randn(2, 3, 5, 8, generator=g) * 1.5, torch.randn(2, 3, 7, 8, generator=g) * 1.5,
                  torch.randn(2, 3, 7, 6, generator=g))
    m1 = torch.tensor([[True, True, True, False, False, True, False], [False, True, True, True, True, True, True]])
    q2, k2, v2 = (torch.randn(1, 2, 4, 16, generator=g) * 2, torch.randn(1, 2, 4, 16, generator=g) * 2,
                  torch.randn(1, 2, 4, 16, generator=g))
    m2 = torch.tensor([[True, False, True, True]])
    return [(q0, k0, v0, m0), (q1, k1, v1, m1), (q2, k2, v2, m2)]


@register_task("masked_attention", LESSON,
               hint_on_error="scores = q @ k.transpose(-2, -1) / sqrt(d); hide keys with masked_fill; softmax over keys.")
def check_masked_attention_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(q, k, v, key_mask)`` must equal ``F.scaled_dot_product_attention`` with the key mask broadcast."""
    for q, k, v, mask in _attention_cases():
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        args = (q.clone(), k.clone(), v.clone(), mask.clone())
        b, h, sq, d = q.shape
        where = (f"for q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} and key_mask "
                 f"{mask.int().tolist()}")
        got = expect_tensor(ctx.call(fn, *args), "masked_attention")
        _unchanged((q, k, v, mask), args, where)
        if tuple(got.shape) != tuple(expected.shape):
            raise WrongAnswer(f"{where} expected an output of shape (B, H, Sq, dv) = {tuple(expected.shape)}, got "
                              f"{tuple(got.shape)}: one output row per query, as wide as the values")
        got = got.detach()
        if _same(got, expected):
            continue
        variants = [
            (dict(invert=True), "the mask's polarity is inverted: True means the key MAY be attended (keep it); hide "
                                "the keys where the mask is False (scores.masked_fill(~key_mask, -inf))"),
            (dict(scale=1.0), "you forgot to divide the scores by √d (d = the key width q.shape[-1]): without it the "
                              "softmax saturates as d grows"),
            (dict(scale=1.0 / d), "divide by √d, not by d"),
            (dict(scale=1.0 / math.sqrt(v.shape[-1])), "√d uses the width of the queries and keys, not of the values"),
            (dict(softmax_dim=-2), "the softmax must run over the KEYS (the last axis of the scores, dim=-1): each "
                                   "query's weights over the keys sum to 1"),
            (dict(fill=0.0), "a hidden key's score must become −∞ (weight exactly 0), not 0: exp(0) = 1 still gives "
                             "it weight"),
        ]
        for kwargs, hint in variants:
            if _same(got, reference_masked_attention(q, k, v, mask, **kwargs), equal_nan=True):
                raise WrongAnswer(f"{where}: {hint}")
        if _same(got, F.scaled_dot_product_attention(q, k, v)):
            raise WrongAnswer(f"{where}: your output ignores key_mask: hidden keys must get weight 0")
        weights = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1) * mask[:, None, None, :]
        if _same(got, weights @ v):
            raise WrongAnswer(f"{where}: zeroing the hidden keys' weights after the softmax leaves weights that no "
                              "longer sum to 1: mask the scores (−∞) BEFORE the softmax")
        if torch.isnan(got).any():
            raise WrongAnswer(f"{where}: your output has NaN; every query here can see at least one key, so check "
                              "the masking (masked_fill with float('-inf') on the hidden keys only)")
        raise WrongAnswer(f"{where}: expected {expected.flatten()[:4].tolist()}..., got {got.flatten()[:4].tolist()}"
                          "...; softmax(q kᵀ / √d with hidden keys at −∞, over the keys) @ v")


# --------------------------------------------------------------------------------------------------------
# Task 2: cross-attention to text, with padding and the null caption
# --------------------------------------------------------------------------------------------------------


def _cross_case(seed: int) -> tuple[MultiHeadAttention, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = seeded(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the layer's initial weights; the global RNG is restored below
    layer = MultiHeadAttention(dim=16, num_heads=4, context_dim=12).eval()
    torch.random.set_rng_state(torch_state)
    x = torch.randn(3, 5, 16, generator=g)
    text = torch.randn(3, 6, 12, generator=g)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False], [False] * 6])
    text[~mask] = torch.randn(int((~mask).sum()), 12, generator=g) * 10  # padding holds garbage, not zeros
    return layer, x, text, mask


def _single_head(layer: MultiHeadAttention, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    q, k, v = layer.q_proj(x), layer.k_proj(text), layer.v_proj(text)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :])
    return layer.out_proj(out)


def _no_out_proj(layer: MultiHeadAttention, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, s, _ = x.shape
    q, k, v = (layer._heads(layer.q_proj(x)), layer._heads(layer.k_proj(text)), layer._heads(layer.v_proj(text)))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return out.transpose(1, 2).reshape(b, s, layer.dim)


@register_task("cross_attention", LESSON,
               hint_on_error="project with layer.q_proj / k_proj / v_proj, split heads, masked attention, merge, out_proj.")
def check_cross_attention_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(layer, x, text, text_mask)`` must equal ``layer(x, context=text, context_mask=text_mask)``."""
    for seed in (41, 42):
        layer, x, text, mask = _cross_case(seed)
        real = mask.any(dim=1)
        with torch.no_grad():
            expected = layer(x, context=text, context_mask=mask)
            args = (x.clone(), text.clone(), mask.clone())
            where = (f"for x {tuple(x.shape)}, text {tuple(text.shape)} and text_mask {mask.int().tolist()} "
                     f"(a layer of {layer.num_heads} heads)")
            got = _float_tensor(ctx.call(fn, layer, *args), "cross_attention", tuple(expected.shape), where)
            _unchanged((x, text, mask), args, where)
            if torch.isnan(got[~real]).any() and not torch.isnan(got[real]).any():
                raise WrongAnswer(f"{where}: the null caption (a mask row of all False, batch item 2) gives NaN: a "
                                  "softmax over no key at all is 0/0. Let such rows see every key, then set their "
                                  "output to exactly zero (the course's null condition: no text, no contribution)")
            if torch.isnan(got).any():
                hint = "check the masking"
                if torch.isnan(got[mask.all(dim=1)]).any():
                    hint = ("the caption with no padding at all (batch item 0) gives NaN, as if it had no token to "
                            "attend to: the mask's polarity is inverted, True marks a real token (attend to it)")
                raise WrongAnswer(f"{where}: your output has NaN for captions with real tokens: {hint}")
            moved = text.clone()
            moved[~mask] = -moved[~mask] + 3.0  # other garbage at the padded positions only
            again = _float_tensor(ctx.call(fn, layer, x.clone(), moved, mask.clone()), "cross_attention",
                                  tuple(expected.shape), where)
            if not _same(again[real], got[real]):
                hint = ("changing the text embeddings at PADDED positions (mask False) changed your output: masked-out "
                        "tokens must not matter; pass the mask to the attention (True = real token)")
                if _same(got[real], layer(x, context=text, context_mask=~mask | ~real[:, None])[real]):
                    hint = "the mask's polarity is inverted: True marks a real text token, the one to attend to"
                raise WrongAnswer(f"{where}: {hint}")
            if not _same(got[real], expected[real]):
                if _same(got[real], _single_head(layer, x, text, mask)[real]):
                    hint = (f"you attended with one head of width {layer.dim}: split q, k, v into {layer.num_heads} heads "
                            f"of width {layer.head_dim} ((B, S, dim) → (B, heads, S, head_dim)), attend per head, then "
                            "merge them back")
                elif _same(got[real], _no_out_proj(layer, x, text, mask)[real]):
                    hint = "the merged heads still need the output projection: layer.out_proj(...)"
                else:
                    hint = ("q from x, k and v from the text (layer.q_proj(x), layer.k_proj(text), layer.v_proj(text)), "
                            "heads split as (B, heads, n, head_dim), key mask text_mask[:, None, None, :]")
                raise WrongAnswer(f"{where}: the captions with real tokens get the wrong output: {hint}")
            if got[~real].abs().max() > 0:
                raise WrongAnswer(f"{where}: the null caption (all-False mask, batch item 2) must give exactly zero "
                                  f"output, got values up to {float(got[~real].abs().max()):.3g}; zero those rows "
                                  "(e.g. out.masked_fill(~text_mask.any(1)[:, None, None], 0.0))")


# --------------------------------------------------------------------------------------------------------
# Task 3: classifier-free guidance in one batched pass
# --------------------------------------------------------------------------------------------------------

CFG_SCALES: tuple[float, ...] = (3.0, 1.0, 0.0, 7.5)


class GuidanceCheckModel(nn.Module):
    """The check's conditional network: ``logits = head(x + cross_attention(x, text, text_mask))``, ``x`` (B, S, 16)
    float, ``text`` (B, L, 12), ``text_mask`` (B, L) bool -> logits (B, S, 10). Its value projection has a bias, so a
    caption of zeros under a real mask is not the null caption (an all-False row, whose cross-attention is exactly
    zero). It records the batch size of every call, so the check can see how often and how it was run."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # fixed weights; the global RNG is restored below
        self.attention = MultiHeadAttention(dim=16, num_heads=4, context_dim=12)
        self.head = nn.Linear(16, 10)
        torch.random.set_rng_state(torch_state)
        self.eval().requires_grad_(False)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(x.shape[0]))
        return 3.0 * self.head(x + self.attention(x, context=text, context_mask=text_mask))


def reference_guided_logits(model: Callable, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                            scale: float) -> torch.Tensor:
    """Classifier-free guidance in one batched pass: ``[x; x]`` with ``[text; text]`` under ``[text_mask; all
    False]`` through ``model`` once, halves mixed on the logits with :func:`course_lib.nn.guidance.cfg_mix`."""
    b = x.shape[0]
    logits = model(torch.cat([x, x]), torch.cat([text, text]), torch.cat([text_mask, torch.zeros_like(text_mask)]))
    return cfg_mix(logits[:b], logits[b:], scale)


def _guidance_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = seeded(seed)
    x, text = torch.randn(3, 5, 16, generator=g), torch.randn(3, 4, 12, generator=g)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    text[~mask] = torch.randn(int((~mask).sum()), 12, generator=g) * 10  # padding holds garbage
    return x, text, mask


@register_task("guided_logits", LESSON,
               hint_on_error="one call of model on torch.cat([x, x]), torch.cat([text, text]), torch.cat([text_mask, "
                             "null]); split the logits in halves; uncond + scale * (cond - uncond).")
def check_guided_logits_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(model, x, text, text_mask, scale)`` must equal :func:`reference_guided_logits`, calling ``model`` once on
    the doubled batch; the hints name the likely mistakes (two calls, the real mask or zeroed text in the
    unconditional half, guidance on probabilities, halves swapped, inputs changed in place)."""
    model = GuidanceCheckModel(44)
    x, text, mask = _guidance_case(45)
    b = x.shape[0]
    null = torch.zeros_like(mask)
    with torch.no_grad():
        cond = model(x, text, mask)
        uncond = model(x, text, null)
        zeros_text = model(x, torch.zeros_like(text), mask)
        inverted = model(x, text, ~mask)
    for scale in CFG_SCALES:
        where = f"for x {tuple(x.shape)}, text_mask {mask.int().tolist()} and scale {scale:g}"
        expected = cfg_mix(cond, uncond, scale)
        args = (x.clone(), text.clone(), mask.clone())
        model.calls.clear()
        with torch.no_grad():
            got = _float_tensor(ctx.call(fn, model, *args, scale), "guided_logits", tuple(cond.shape), where)
        _unchanged((x, text, mask), args, where)
        calls = list(model.calls)
        if _same(got, expected):
            if calls != [2 * b]:
                raise WrongAnswer(f"{where}: the logits are right, but model was called on batch sizes {calls}: stack "
                                  f"the conditional and the unconditional inputs into ONE batch of {2 * b} and call "
                                  "model once (what a sampler does at every step: one forward pass, not two)")
            continue
        probs = uncond.softmax(-1) + scale * (cond.softmax(-1) - uncond.softmax(-1))
        variants = [
            (cond, "your unconditional half still sees the caption: give it the null caption, the same text under a "
                   "mask of all False (torch.zeros_like(text_mask)), so cross-attention contributes exactly zero"),
            (cfg_mix(cond, zeros_text, scale),
             "zeroing the text is not the null caption: with the real mask, attention still reads the zero vectors "
             "(their value projection has a bias). Keep the text and give the unconditional half a mask of all False"),
            (cfg_mix(cond, inverted, scale),
             "the unconditional half got the inverted mask (it then attends to the padding): the null caption is a "
             "mask of all False"),
            (cfg_mix(uncond, cond, scale), "the halves are swapped: the first B rows of the output are the "
                                           "conditional ones (text_mask), the last B the unconditional ones (null)"),
            (cond + scale * (cond - uncond),
             "that is (1 + w)·cond − w·uncond with w = scale; here scale = 1 must give the conditional logits: "
             "uncond + scale·(cond − uncond)"),
            (probs, "mix the logits themselves, not their softmax probabilities (return logits)"),
            (probs.clamp_min(1e-30).log(), "mix the logits themselves, not their softmax probabilities"),
        ]
        for value, hint in variants:
            if _same(got, value):
                raise WrongAnswer(f"{where}: {hint}")
        raise WrongAnswer(f"{where}: expected {expected.flatten()[:3].tolist()}..., got {got.flatten()[:3].tolist()}"
                          "...: one call of model on the doubled batch, then uncond + scale·(cond − uncond) on the "
                          "two halves of the logits")


# --------------------------------------------------------------------------------------------------------
# Task 4: condition dropout
# --------------------------------------------------------------------------------------------------------


def _padded_mask(batch: int, length: int, seed: int) -> torch.Tensor:
    """A text mask ``(batch, length)``: each row a prefix of 1..length real tokens (True), then padding."""
    lengths = torch.randint(1, length + 1, (batch,), generator=seeded(seed))
    return torch.arange(length)[None, :] < lengths[:, None]


def _bool_mask(value: object, shape: tuple[int, ...], where: str) -> torch.Tensor:
    got = expect_tensor(value, "condition_dropout", "a bool tensor (the new mask)")
    if tuple(got.shape) != shape:
        raise WrongAnswer(f"{where} expected a mask of the same shape {shape}, got {tuple(got.shape)}")
    if got.dtype != torch.bool:
        raise WrongAnswer(f"{where} expected a bool mask (True = real token), got {got.dtype}: keep the dtype, "
                          "e.g. text_mask & keep[:, None]")
    return got


def _no_new_tokens(got: torch.Tensor, mask: torch.Tensor, where: str) -> None:
    if (got & ~mask).any():
        raise WrongAnswer(f"{where}: a padding position (False in the input) became True: a kept caption keeps "
                          "its mask as it was (text_mask & keep, not keep)")


@register_task("condition_dropout", LESSON,
               hint_on_error="drop = torch.rand(B, generator=generator) < p; return text_mask & ~drop[:, None].")
def check_condition_dropout_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(text_mask, p, generator)`` must null (all-False) each row independently with probability ``p``."""
    small = _padded_mask(6, 5, 44)
    for p, expected in ((0.0, small), (1.0, torch.zeros_like(small))):
        mask_in = small.clone()
        where = f"with p = {p:g} on a mask of shape {tuple(small.shape)}"
        got = _bool_mask(ctx.call(fn, mask_in, p, seeded(0)), tuple(small.shape), where)
        _unchanged((small,), (mask_in,), where)
        _no_new_tokens(got, small, where)
        if not torch.equal(got, expected):
            hint = ("p = 0 drops nothing: the mask must come back unchanged" if p == 0 else
                    "p = 1 drops every caption: every row must be all False")
            if torch.equal(got, ~expected) or (p == 0 and not got.any()):
                hint += " (you dropped with probability 1 − p: drop a row where rand < p)"
            raise WrongAnswer(f"{where}: {hint}")
    batch, length = 20_000, 5
    big = _padded_mask(batch, length, 45)
    for p in (0.1, 0.5):
        where = f"with p = {p:g} on a mask of shape {(batch, length)}"
        got = _bool_mask(ctx.call(fn, big.clone(), p, seeded(1)), (batch, length), where)
        _no_new_tokens(got, big, where)
        dropped = ~got.any(dim=1)
        untouched = (got == big).all(dim=1)
        if not (dropped | untouched).all():
            raise WrongAnswer(f"{where}: some rows lost only some of their tokens: condition dropout removes a WHOLE "
                              "caption (its row becomes all False), so draw one random number per row, not per token")
        rate = float(dropped.float().mean())
        tolerance = 6 * math.sqrt(p * (1 - p) / batch)  # six standard deviations of a binomial rate
        if rate in (0.0, 1.0):
            raise WrongAnswer(f"{where}: you dropped {rate:.0%} of the captions: each row is dropped independently, "
                              "so draw one random number PER ROW (torch.rand(B, ...)), not one for the batch")
        if abs(rate - (1 - p)) <= tolerance and abs(rate - p) > tolerance:
            raise WrongAnswer(f"{where}: you dropped {rate:.1%} of the captions, i.e. 1 − p: drop a row where "
                              "rand < p (and keep it otherwise)")
        if abs(rate - p) > tolerance:
            raise WrongAnswer(f"{where}: you dropped {rate:.1%} of the captions, expected {p:.0%} (± "
                              f"{tolerance:.1%}): drop each row with probability p, rand(B) < p")
    first = ctx.call(fn, big.clone(), 0.1, seeded(7))
    second = ctx.call(fn, big.clone(), 0.1, seeded(7))
    if not torch.equal(first, second):
        raise WrongAnswer("two calls with generators seeded alike gave different drops: draw the random numbers from "
                          "the generator you are given (torch.rand(B, generator=generator)), so a seeded run repeats")
    if torch.equal(first, ctx.call(fn, big.clone(), 0.1, seeded(8))):
        raise WrongAnswer("generators with different seeds gave the same drops: draw the random numbers from the "
                          "generator you are given (no torch.manual_seed inside your function)")
    where = "called without a generator (generator=None)"
    _no_new_tokens(_bool_mask(ctx.call(fn, small.clone(), 0.5), tuple(small.shape), where), small, where)


# --------------------------------------------------------------------------------------------------------
# Task 5: caption similarity
# --------------------------------------------------------------------------------------------------------


def reference_caption_similarity(emb_a: torch.Tensor, mask_a: torch.Tensor, emb_b: torch.Tensor,
                                 mask_b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``(A, B)`` of mean-pooled caption embeddings ``(A, L, D)`` / ``(B, M, D)`` with masks.

    Each caption's vector is the mean of its real tokens (``mask`` True) only, as
    :meth:`course_lib.text.base.TextEmbedding.pooled`; a null caption (all-False mask) pools to the zero
    vector, whose cosine with anything is 0.
    """

    def pool(e: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        w = m.unsqueeze(-1).to(e.dtype)
        return (e * w).sum(1) / w.sum(1).clamp(min=1.0)

    a, b = F.normalize(pool(emb_a, mask_a), dim=-1, eps=1e-8), F.normalize(pool(emb_b, mask_b), dim=-1, eps=1e-8)
    return a @ b.T


def _similarity_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = seeded(46)
    base = torch.randn(4, 16, generator=g)  # four "meanings"; tokens scatter around them
    emb_a = base[[0, 1, 2]][:, None, :] + 0.8 * torch.randn(3, 5, 16, generator=g)
    emb_b = base[[0, 3, 2, 1]][:, None, :] + 0.8 * torch.randn(4, 7, 16, generator=g)
    mask_a = torch.tensor([[True] * 5, [True, True, False, False, False], [True, True, True, False, False]])
    mask_b = torch.tensor([[True, True, True, False, False, False, False], [True] * 7,
                           [True, True, True, True, True, False, False], [False] * 7])
    # padded positions hold what a raw encoder leaves there (not zeros), the same vector everywhere
    garbage = torch.randn(16, generator=g) * 3
    emb_a[~mask_a], emb_b[~mask_b] = garbage, garbage
    return emb_a, mask_a, emb_b, mask_b


@register_task("caption_similarity", LESSON,
               hint_on_error="pool = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True); then cosine.")
def check_caption_similarity_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(emb_a, mask_a, emb_b, mask_b)`` → ``(A, B)`` cosine similarities of mean-pooled real tokens."""
    emb_a, mask_a, emb_b, mask_b = _similarity_case()
    expected = reference_caption_similarity(emb_a, mask_a, emb_b, mask_b)
    args = (emb_a.clone(), mask_a.clone(), emb_b.clone(), mask_b.clone())
    where = (f"for captions A of shape {tuple(emb_a.shape)} and B of shape {tuple(emb_b.shape)} (B's last caption is "
             "the null caption, all-False mask)")
    got = expect_tensor(ctx.call(fn, *args), "caption_similarity")
    _unchanged((emb_a, mask_a, emb_b, mask_b), args, where)
    if tuple(got.shape) != tuple(expected.shape):
        hint = ("rows are the A captions, columns the B captions" if tuple(got.shape) == (4, 3)
                else "one number per (A caption, B caption) pair")
        raise WrongAnswer(f"{where} expected a similarity matrix of shape (A, B) = {tuple(expected.shape)}, got "
                          f"{tuple(got.shape)}: {hint}")
    got = got.detach().double()
    if torch.isnan(got[:, :3]).any():
        raise WrongAnswer(f"{where}: your similarities have NaN for captions with real tokens")
    if torch.isnan(got[:, 3]).any():
        raise WrongAnswer(f"{where}: the null caption gives NaN: it pools to the zero vector, whose cosine is 0 by "
                          "convention; normalise with a small eps (F.normalize(v, dim=-1), or F.cosine_similarity)")
    if _same(got[:, :3], expected[:, :3]) and got[:, 3].abs().max() < 1e-6:
        return
    flat = F.normalize(emb_a.mean(1), dim=-1) @ F.normalize(emb_b.mean(1), dim=-1).T
    pooled = [(e * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1) for e, m in ((emb_a, mask_a),
                                                                                              (emb_b, mask_b))]
    dot = pooled[0] @ pooled[1].T
    token_mean = torch.stack([torch.stack([
        (F.normalize(ea[ma], dim=-1) @ F.normalize(eb[mb], dim=-1).T).mean() if mb.any() else torch.tensor(0.0)
        for eb, mb in zip(emb_b, mask_b)]) for ea, ma in zip(emb_a, mask_a)])
    if _same(got[:, :3], flat[:, :3]):
        hint = ("you averaged over every position, padding included: average over the real tokens only (mask True); "
                "an encoder's outputs at padded positions are not zeros")
    elif _same(got[:, :3], dot[:, :3]):
        hint = "that is the dot product of the pooled vectors: divide by both norms (cosine similarity)"
    elif _same(got[:, :3], token_mean[:, :3]):
        hint = "that is the mean of token-to-token cosines: pool each caption to ONE vector first, then one cosine"
    elif _same(got[:, :3], expected[:, :3]):
        hint = "the null caption's similarity must be 0 (its pooled vector is zero)"
    else:
        hint = "mean of each caption's real-token vectors, then the cosine of every (A, B) pair of those means"
    raise WrongAnswer(f"{where}: expected {expected[0].tolist()} in the first row, got {got[0].tolist()}: {hint}")
