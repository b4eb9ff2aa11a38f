"""Checks for exercise notebook 05, AudioGen: the causal mask, the delay pattern (interleave and its inverse),
the top-p (nucleus) filter, one KV-cached attention step.

Each checker compares the student's function with the course's reference (:func:`course_lib.nn.attention.causal_mask`,
:class:`course_lib.lm.patterns.DelayPattern`, :func:`course_lib.lm.sampling.top_p_filter`, torch's own
``F.scaled_dot_product_attention``) on hand-made and random inputs, and turns the first mismatch into a hint
naming the likeliest mistake: the mask's polarity inverted, the diagonal left out, the cache offset
forgotten; codebooks delayed the wrong way, padding filled with 0, the ragged end cut off; the set kept
*below* p, nothing kept at all, the keep-decision left in sorted order; a cache that forgets the new key,
that is not returned, or that grows along the wrong axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from course_lib.exercises.checks import CheckContext, WrongAnswer, expect_tensor, register_task, seeded
from course_lib.lm.patterns import DelayPattern
from course_lib.lm.sampling import top_p_filter
from course_lib.nn.attention import causal_mask

LESSON = "05_audiogen"

__all__ = ["LESSON", "TOP_P_CASES", "reference_delay_interleave", "reference_top_p"]


def _unchanged(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], where: str) -> None:
    if not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where} your function changed its inputs in place; compute on new tensors "
                          "(no `masked_fill_`, no `x[...] = ...` on an argument)")


def _same(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    if got.shape != expected.shape or torch.isnan(got).any():
        return False
    return bool(torch.allclose(got.double(), expected.double(), atol=atol, rtol=1e-4))


# --------------------------------------------------------------------------------------------------------
# Task 1: the causal mask
# --------------------------------------------------------------------------------------------------------

MASK_CASES: list[tuple[int, int | None]] = [(4, None), (1, None), (6, None), (3, 7), (1, 5), (2, 2)]


@register_task("causal_mask", LESSON,
               hint_on_error="mask[i, j] = j <= i + (num_keys - n), as a bool tensor of shape (n, num_keys).")
def check_causal_mask_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(n, num_keys=None)`` must equal :func:`course_lib.nn.attention.causal_mask` (bool, True = may attend)."""
    for n, num_keys in MASK_CASES:
        keys = n if num_keys is None else num_keys
        expected = causal_mask(n, num_keys=keys)
        got = expect_tensor(ctx.call(fn, n) if num_keys is None else ctx.call(fn, n, num_keys), "causal_mask",
                            "a bool tensor")
        where = f"for n = {n}" + ("" if num_keys is None else f" new queries and num_keys = {num_keys}")
        if tuple(got.shape) != (n, keys):
            hint = ("num_keys = P + n counts the P cached keys too: one column per key"
                    if num_keys is not None and tuple(got.shape) == (n, n) else "one row per query, one column per key")
            raise WrongAnswer(f"{where} expected a mask of shape (n, num_keys) = {(n, keys)}, got {tuple(got.shape)}: "
                              f"{hint}")
        if got.dtype != torch.bool:
            raise WrongAnswer(f"{where} expected a bool mask (True = may attend, PyTorch's attn_mask convention), "
                              f"got {got.dtype}: not an additive 0/−inf float mask")
        if torch.equal(got, expected):
            continue
        rows, cols = torch.arange(n)[:, None], torch.arange(keys)[None, :]
        offset = keys - n
        if torch.equal(got, ~expected) or torch.equal(got, cols >= rows + offset):
            hint = ("the polarity is inverted: True must mark the keys a query MAY see, its past and itself "
                    "(j ≤ i), not its future")
        elif torch.equal(got, cols < rows + offset):
            hint = "a position must see itself: include the diagonal (j ≤ i, not j < i)"
        elif offset and torch.equal(got, cols <= rows):
            hint = (f"with P = num_keys − n = {offset} cached keys in front, new query i sits at position P + i: it "
                    "sees keys j ≤ P + i (all the cache and the new ones up to itself)")
        elif torch.equal(got, cols > rows + offset):
            hint = "that is the strict future; True must mark the past and the present (j ≤ i)"
        else:
            hint = "query i (at position num_keys − n + i) may attend to key j exactly when j ≤ num_keys − n + i"
        raise WrongAnswer(f"{where}: expected {expected.int().tolist()}, got {got.int().tolist()}: {hint}")


# --------------------------------------------------------------------------------------------------------
# Tasks 2-3: the delay pattern
# --------------------------------------------------------------------------------------------------------


def reference_delay_interleave(codes: torch.Tensor, pad_id: int, delays: Sequence[int] | None = None) -> torch.Tensor:
    """Codes ``(B, K, T)`` → ``(B, K, T + max(delays))`` with codebook ``k`` shifted right by ``delays[k]``
    (default ``k``, MusicGen's delay pattern) and ``pad_id`` elsewhere. Unlike :class:`DelayPattern` it accepts
    any delays (the check builds wrong variants with it)."""
    b, k, t = codes.shape
    delays = list(range(k)) if delays is None else list(delays)
    out = codes.new_full((b, k, t + max(delays)), pad_id)
    for row, d in enumerate(delays):
        out[:, row, d: d + t] = codes[:, row]
    return out


def _delay_cases() -> list[tuple[torch.Tensor, int]]:
    g = seeded(50)
    hand = torch.arange(1, 13).view(1, 3, 4)  # codebook k, frame t holds 4k + t + 1
    return [(hand, -1), (torch.randint(0, 256, (2, 4, 10), generator=g), 256),
            (torch.randint(0, 16, (3, 1, 5), generator=g), 16), (torch.randint(0, 1024, (1, 2, 1), generator=g), 1024)]


@register_task("delay_interleave", LESSON,
               hint_on_error="seq = codes.new_full((B, K, T + K - 1), pad_id); seq[:, k, k:k + T] = codes[:, k].")
def check_delay_interleave_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(codes, pad_id)`` must equal ``DelayPattern(K).interleave(codes, pad_id)``."""
    for codes, pad_id in _delay_cases():
        b, k, t = codes.shape
        expected = DelayPattern(k).interleave(codes, pad_id)
        codes_in = codes.clone()
        where = f"for codes of shape (B, K, T) = {(b, k, t)} and pad_id = {pad_id}"
        got = expect_tensor(ctx.call(fn, codes_in, pad_id), "delay_interleave")
        _unchanged((codes,), (codes_in,), where)
        if tuple(got.shape) != tuple(expected.shape):
            hint = (f"codebook K − 1 = {k - 1} is delayed by {k - 1} steps, so its last frame lands on step "
                    f"T + K − 2: the sequence has T + K − 1 = {t + k - 1} steps")
            raise WrongAnswer(f"{where} expected a sequence of shape (B, K, T + K − 1) = {tuple(expected.shape)}, got "
                              f"{tuple(got.shape)}: {hint}")
        if got.is_floating_point():
            raise WrongAnswer(f"{where} you returned {got.dtype} values: keep the codes' integer dtype "
                              "(codes.new_full(..., pad_id))")
        if torch.equal(got, expected):
            continue
        hint = "codebook k starts k steps late: seq[:, k, k + t] = codes[:, k, t], pad_id everywhere else"
        if torch.equal(got, reference_delay_interleave(codes, pad_id, list(range(k))[::-1])):
            hint = ("the delay goes the wrong way: codebook 0 (the coarsest) is NOT delayed, codebook k is delayed by "
                    "k steps, so fine codes come after the coarse codes of the same frame")
        elif torch.equal(got, reference_delay_interleave(codes, 0)) and pad_id != 0:
            hint = f"the gaps must hold pad_id = {pad_id}, not 0 (0 is a real code)"
        elif torch.equal(got.masked_fill(expected == pad_id, pad_id), expected):
            hint = f"the real tokens are in place, but the gaps must hold pad_id = {pad_id}"
        elif torch.equal(got[:, :, :t], codes):
            hint = "you did not shift anything: codebook k must start k steps later"
        raise WrongAnswer(f"{where}: expected {expected[0].tolist()} for batch item 0, got {got[0].tolist()}: {hint}")


@register_task("delay_deinterleave", LESSON,
               hint_on_error="T = S - K + 1; codes[:, k] = seq[:, k, k:k + T].")
def check_delay_deinterleave_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(seq)`` must invert the delay pattern: ``fn(interleave(codes, pad)) == codes``, whatever the padding holds."""
    g = seeded(51)
    for codes, pad_id in _delay_cases():
        b, k, t = codes.shape
        seq = DelayPattern(k).interleave(codes, pad_id)
        # fill the padding with other codes, so that reading a padded position shows
        pad = seq == pad_id
        seq = seq.masked_scatter(pad, torch.randint(0, 100, (int(pad.sum()),), generator=g) + 2000)
        seq_in = seq.clone()
        where = f"for a delayed sequence of shape (B, K, S) = {tuple(seq.shape)} (codes of {t} frames)"
        got = expect_tensor(ctx.call(fn, seq_in), "delay_deinterleave")
        _unchanged((seq,), (seq_in,), where)
        if tuple(got.shape) != (b, k, t):
            raise WrongAnswer(f"{where} expected codes of shape (B, K, T) = {(b, k, t)}, got {tuple(got.shape)}: the "
                              "number of frames is T = S − K + 1")
        if torch.equal(got, codes):
            continue
        hint = "codebook k's frame t sits at step t + k: codes[:, k] = seq[:, k, k:k + T]"
        if torch.equal(got, seq[:, :, :t]):
            hint = "you read steps 0..T−1 of every codebook: undo the delay, codebook k's frames start at step k"
        elif k > 1 and torch.equal(got, torch.stack([seq[:, j, k - 1 - j: k - 1 - j + t] for j in range(k)], 1)):
            hint = "the shift goes the wrong way: codebook k was delayed by k steps (codebook 0 not at all)"
        elif (got >= 2000).any():
            hint = "you read padded positions: codebook k holds real tokens at steps k..k + T − 1 only"
        raise WrongAnswer(f"{where}: the round trip deinterleave(interleave(codes)) does not give the codes back: {hint}")


# --------------------------------------------------------------------------------------------------------
# Task 4: top-p (nucleus) filter
# --------------------------------------------------------------------------------------------------------


def reference_top_p(logits: torch.Tensor, p: float, *, below: bool = False, inclusive: bool = False,
                    unsorted: bool = False, ascending: bool = False, dim: int = -1,
                    softmax: bool = True) -> torch.Tensor:
    """Nucleus filter along ``dim``: keep the smallest set of most likely tokens whose mass reaches ``p``, others
    ``-inf`` (the library's :func:`~course_lib.lm.sampling.top_p_filter` for the defaults). The keywords build
    the wrong variants the check recognises: the set whose mass stays below ``p`` (``below``; ``inclusive``
    counts the token itself), no mapping back from sorted order, an ascending sort, a softmax over ``dim``, no
    softmax at all (``softmax=False``: the logits' cumulative sum taken as mass)."""
    probs = logits.softmax(dim=dim) if softmax else logits
    sorted_probs, idx = probs.sort(dim=-1, descending=not ascending)
    cum = sorted_probs.cumsum(-1)
    if below:
        drop = cum > p if inclusive else cum >= p
    else:
        drop = cum - sorted_probs >= p
        drop[..., 0] = False
    if unsorted:
        return logits.masked_fill(drop, float("-inf"))
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))


def _top_p_cases() -> list[tuple[torch.Tensor, float]]:
    hand = torch.tensor([0.05, 0.5, 0.15, 0.3]).log() + 2.0  # unsorted, and not normalised log-probabilities
    g = seeded(52)
    rand = torch.randn(2, 3, 40, generator=g) * 2.0
    return [(hand, 0.7), (hand, 0.9), (hand, 0.3), (rand, 0.8), (rand, 0.5), (hand, 1.0)]


TOP_P_CASES = _top_p_cases()


@register_task("top_p_filter", LESSON,
               hint_on_error="softmax, sort descending, keep a token while the mass BEFORE it is < p, scatter back.")
def check_top_p_filter_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(logits, p)`` must equal :func:`course_lib.lm.sampling.top_p_filter`: kept logits unchanged, others −inf."""
    for logits, p in TOP_P_CASES:
        expected = top_p_filter(logits, p)
        logits_in = logits.clone()
        where = f"for logits of shape {tuple(logits.shape)} and p = {p:g}"
        if logits.dim() == 1:
            where = f"for probabilities {logits.softmax(-1).tolist()} (as logits) and p = {p:g}"
        got = expect_tensor(ctx.call(fn, logits_in, p), "top_p_filter")
        _unchanged((logits,), (logits_in,), where)
        if tuple(got.shape) != tuple(logits.shape):
            raise WrongAnswer(f"{where} expected filtered logits of the same shape {tuple(logits.shape)}, got "
                              f"{tuple(got.shape)}")
        got = got.detach()
        if not got.is_floating_point() or torch.isnan(got).any():
            raise WrongAnswer(f"{where} expected float logits without NaN, got {got.dtype}"
                              f"{' with NaN' if got.is_floating_point() else ''}")
        kept = got > float("-inf")
        kept_ref = expected > float("-inf")
        if torch.equal(kept, kept_ref):
            if not torch.equal(got[kept], logits[kept]):
                raise WrongAnswer(f"{where}: you keep the right tokens but changed their values: return the kept LOGITS "
                                  "unchanged (not probabilities, not renormalised), the removed ones as -inf")
            continue
        if (~kept).all(dim=-1).any():
            raise WrongAnswer(f"{where}: for some row you removed every token; at least one (the most likely) must "
                              "survive: a token is kept when the mass of the tokens BEFORE it is still < p")
        if torch.equal(got != logits, ~kept_ref):
            raise WrongAnswer(f"{where}: you picked the right tokens to remove, but set them to float('-inf') "
                              "(softmax then gives them exactly 0)")
        if not torch.equal(got[kept], logits[kept]):
            raise WrongAnswer(f"{where}: you changed the values of the tokens you keep: return the kept LOGITS unchanged "
                              "(not probabilities, not renormalised) and the removed ones as float('-inf')")
        if logits.dim() == 1:
            detail = (f"expected to keep token(s) {kept_ref.nonzero().flatten().tolist()}, you kept "
                      f"{kept.nonzero().flatten().tolist()}")
        else:
            detail = f"expected {int(kept_ref.sum())} tokens kept in all, you kept {int(kept.sum())}"
        raise WrongAnswer(f"{where}: {detail}: {_top_p_diagnosis(ctx, fn, logits, p, kept)}")


TOP_P_VARIANTS: list[tuple[dict, str]] = [
    (dict(below=True), "you kept the set whose mass stays BELOW p; nucleus sampling keeps the smallest set whose mass "
                       "REACHES p, so include the token that crosses p (keep it while the mass before it is < p)"),
    (dict(unsorted=True), "the keep/drop decision was made in sorted order but applied to the tokens in their original "
                          "order: map it back with the sort indices (scatter)"),
    (dict(ascending=True), "sort by DEcreasing probability: the nucleus is made of the most likely tokens"),
    (dict(softmax=False), "p is a probability mass: turn the logits into probabilities with a softmax before summing "
                          "them"),
    (dict(dim=0), "the softmax must run over the vocabulary (the last axis, dim=-1)"),
]


def _top_p_diagnosis(ctx: CheckContext, fn: Callable, logits: torch.Tensor, p: float, kept: torch.Tensor) -> str:
    """The hint for a wrong kept set: the known mistake that reproduces the student's kept sets on every case
    (two mistakes can agree on one case), else one that reproduces this case, else the recipe."""
    def kept_by(kwargs: dict, x: torch.Tensor, q: float) -> torch.Tensor:
        return reference_top_p(x, q, **kwargs) > float("-inf")

    theirs = []
    for x, q in TOP_P_CASES:
        out = ctx.call(fn, x.clone(), q)
        theirs.append(out.detach() > float("-inf") if isinstance(out, torch.Tensor) and out.shape == x.shape else None)
    usable = [(x, q, mine) for (x, q), mine in zip(TOP_P_CASES, theirs) if mine is not None]
    if all(mine.all() for _, _, mine in usable):
        return "you removed no token at all: the tokens outside the nucleus must become float('-inf')"
    if all(torch.equal(mine, x == x.max(dim=-1, keepdim=True).values) for x, _, mine in usable):
        return ("you kept only the most likely token (greedy decoding) whatever p is: keep tokens, most likely first, "
                "while the mass before them is < p")
    for kwargs, hint in TOP_P_VARIANTS:
        if all(torch.equal(mine, kept_by(kwargs, x, q)) for x, q, mine in usable if x.dim() > 1 or "dim" not in kwargs):
            return hint
    for kwargs, hint in TOP_P_VARIANTS:
        if (logits.dim() > 1 or "dim" not in kwargs) and torch.equal(kept, kept_by(kwargs, logits, p)):
            return hint
    return ("probabilities = softmax(logits); sort them in decreasing order; keep a token while the mass of the "
            "tokens before it is < p; the rest become -inf")



# --------------------------------------------------------------------------------------------------------
# Task 5: one cached attention step
# --------------------------------------------------------------------------------------------------------


def _step_outputs(value: object, where: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[torch.Tensor, ...]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise WrongAnswer(f"{where}: cached_attention_step should return three tensors (out, cache_k, cache_v), "
                          f"got {type(value).__name__}" + (f" of length {len(value)}" if isinstance(value, (tuple, list))
                                                           else ""))
    names = ("out", "cache_k", "cache_v")
    out = []
    for name, item, shape in zip(names, value, shapes):
        t = expect_tensor(item, f"cached_attention_step ({name})")
        if tuple(t.shape) != shape:
            hint = ""
            if name != "out" and tuple(t.shape) == (shape[0], shape[1], shape[2] - 1, shape[3]):
                hint = ": return the caches WITH the new position appended (one more step)"
            elif name != "out":
                hint = ": append the new key/value along the time axis (dim=2) of (B, heads, P, head_dim)"
            raise WrongAnswer(f"{where}: expected {name} of shape {shape}, got {tuple(t.shape)}{hint}")
        out.append(t.detach())
    return tuple(out)


@register_task("cached_attention_step", LESSON,
               hint_on_error="cache_k = torch.cat([cache_k, k], dim=2) (same for v), then attend q to all of them.")
def check_cached_attention_step_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(q, k, v, cache_k, cache_v)`` → ``(out, cache_k', cache_v')``: the new query attends to the cached keys and
    its own; the caches come back with the new position appended. Checked step by step against full causal
    attention (``F.scaled_dot_product_attention(..., is_causal=True)``)."""
    g = seeded(53)
    b, h, d, past = 2, 3, 8, 5
    q, k, v = (torch.randn(b, h, 1, d, generator=g) * 1.5 for _ in range(3))
    ck, cv = torch.randn(b, h, past, d, generator=g) * 1.5, torch.randn(b, h, past, d, generator=g)
    args = (q.clone(), k.clone(), v.clone(), ck.clone(), cv.clone())
    where = f"for one new position (q, k, v of shape {tuple(q.shape)}) and a cache of P = {past} positions"
    out, new_k, new_v = _step_outputs(ctx.call(fn, *args), where, ((b, h, 1, d), (b, h, past + 1, d),
                                                                  (b, h, past + 1, d)))
    _unchanged((q, k, v, ck, cv), args, where)
    full_k, full_v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    if not (torch.equal(new_k, full_k) and torch.equal(new_v, full_v)):
        if torch.equal(new_k, torch.cat([k, ck], 2)) and torch.equal(new_v, torch.cat([v, cv], 2)):
            hint = "append the new position at the END of the caches (torch.cat([cache_k, k], dim=2)), after the past"
        elif torch.equal(new_k, full_v) or torch.equal(new_v, full_k):
            hint = "keys and values are swapped: cache_k holds keys, cache_v values"
        else:
            hint = "the caches must be the old ones with the new key (value) appended: torch.cat([cache_k, k], dim=2)"
        raise WrongAnswer(f"{where}: wrong caches returned: {hint}")
    expected = F.scaled_dot_product_attention(q, full_k, full_v)
    if not _same(out, expected):
        scores = q @ full_k.transpose(-2, -1)
        if _same(out, F.scaled_dot_product_attention(q, ck, cv)):
            hint = ("your new query only attends to the cached positions: it must also attend to its own key and value "
                    "(append them first, then attend to all P + 1)")
        elif _same(out, (scores).softmax(-1) @ full_v):
            hint = "divide the scores by √d (d = head width q.shape[-1])"
        elif _same(out, (scores / math.sqrt(d)).softmax(-2) @ full_v):
            hint = ("the softmax runs over the KEYS (dim=-1); with a single query, a softmax over the queries is 1 "
                    "everywhere")
        else:
            hint = "out = softmax(q kᵀ / √d) v over the P + 1 keys (no mask needed: the cache holds only the past)"
        raise WrongAnswer(f"{where}: wrong output: {hint}")
    # a whole sequence, step by step from an empty cache, against full causal attention
    steps = 6
    qs, ks, vs = (torch.randn(1, 2, steps, 4, generator=g) * 1.5 for _ in range(3))
    reference = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
    ck, cv = qs.new_zeros(1, 2, 0, 4), qs.new_zeros(1, 2, 0, 4)
    for i in range(steps):
        where = f"decoding {steps} positions one at a time from an EMPTY cache (shape (1, 2, 0, 4)), at step {i}"
        sl = slice(i, i + 1)
        out, ck, cv = _step_outputs(ctx.call(fn, qs[:, :, sl], ks[:, :, sl], vs[:, :, sl], ck, cv), where,
                                    ((1, 2, 1, 4), (1, 2, i + 1, 4), (1, 2, i + 1, 4)))
        if not _same(out, reference[:, :, sl]):
            raise WrongAnswer(f"{where}: the output differs from row {i} of full causal attention over the whole "
                              "sequence; a KV cache must give the same result as recomputing everything")
