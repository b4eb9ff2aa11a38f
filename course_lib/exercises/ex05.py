"""Checks for exercise notebook 05, AudioGen: the delay pattern (interleave and its inverse), the next-token
loss with padding excluded, the top-p (nucleus) filter, one KV-cached attention step, and the sampling loop with
classifier-free guidance and top-k.

Each checker compares the student's function with the course's reference (:class:`course_lib.lm.patterns.DelayPattern`,
:meth:`course_lib.lm.AudioLM.loss`, :func:`course_lib.lm.sampling.top_p_filter`, torch's own
``F.scaled_dot_product_attention``, :func:`course_lib.lm.sampling.generate`) on hand-made and random inputs, and
turns the first mismatch into a hint naming the likeliest mistake: codebooks delayed the wrong way, padding filled
with 0, the ragged end cut off; a loss without the shift, shifted the wrong way, or with the padding counted (in
the sum, or only in the count); the set kept *below* p, nothing kept at all, the keep-decision left in sorted
order; a cache that forgets the new key, that is not returned, or that grows along the wrong axis; guidance mixed
on probabilities instead of logits, the branches swapped, a zeroed caption as the null condition, no shift,
sampled tokens left in the padding, top-k before guidance. The loss and sampling checks run small random
:class:`~course_lib.lm.AudioLM` models (:func:`tiny_lm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from course_lib.exercises.checks import CheckContext, WrongAnswer, expect_tensor, register_task, seeded
from course_lib.lm.model import AudioLM, AudioLMConfig
from course_lib.lm.patterns import DelayPattern
from course_lib.lm.sampling import generate, top_k_filter, top_p_filter

LESSON = "05_audiogen"

__all__ = ["LESSON", "LOSS_VARIANTS", "SAMPLE_VARIANTS", "TOP_P_CASES", "reference_delay_interleave",
           "reference_next_token_loss", "reference_sample", "reference_top_p", "tiny_lm"]


def _unchanged(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], where: str) -> None:
    if not all(torch.equal(a, b) for a, b in zip(before, after)):
        raise WrongAnswer(f"{where} your function changed its inputs in place; compute on new tensors "
                          "(no `masked_fill_`, no `x[...] = ...` on an argument)")


def _same(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> bool:
    if got.shape != expected.shape or torch.isnan(got).any():
        return False
    return bool(torch.allclose(got.double(), expected.double(), atol=atol, rtol=1e-4))


# --------------------------------------------------------------------------------------------------------
# Tasks 1-2: the delay pattern
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
# Task 3: the next-token loss, padding excluded
# --------------------------------------------------------------------------------------------------------


def tiny_lm(n_q: int = 3, codebook_size: int = 16, seed: int = 0, head_gain: float = 4.0) -> AudioLM:
    """A small random :class:`AudioLM` (delay pattern, text width 8) for the checks, built without touching the
    caller's random state. ``head_gain`` scales the output heads so that its distributions are peaked: the wrong
    answers the checks recognise then give clearly different numbers."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AudioLM(AudioLMConfig(n_q=n_q, codebook_size=codebook_size, dim=32, num_layers=1, num_heads=2,
                                      text_dim=8, max_len=64)).eval()
        with torch.no_grad():
            for head in model.heads:
                head.weight.mul_(head_gain)
            for cross in (block.cross_attn for block in model.transformer.blocks):
                cross.out_proj.weight.mul_(3.0)  # the caption matters: conditional and unconditional differ
    return model


def reference_next_token_loss(model: AudioLM, codes: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, *,
                              shift: str = "right", padding: str = "excluded", reduce: str = "mean",
                              delay: bool = True) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy of codes ``(B, K, T)`` under ``model`` (= ``model.loss`` for the
    defaults): delay-interleave with ``pad_id = special_id``, shift right by one step (a ``special_id`` column
    first), cross-entropy averaged over the real tokens only. The keywords build the wrong variants the check
    recognises: ``shift`` ``"none"`` (input = target), ``"left"``, ``"zero_start"`` (a 0 column first);
    ``padding`` ``"as_zero"`` (padded positions counted with target 0), ``"divided"`` (left out of the sum,
    counted in the mean); ``reduce="sum"``; ``delay=False`` (no pattern: the codes as they are)."""
    special = model.special_id
    target = reference_delay_interleave(codes, special) if delay else codes
    start = torch.full_like(target[:, :, :1], special)
    if shift == "right":
        inputs = torch.cat([start, target[:, :, :-1]], dim=2)
    elif shift == "none":
        inputs = target
    elif shift == "left":
        inputs = torch.cat([target[:, :, 1:], start], dim=2)
    elif shift == "zero_start":
        inputs = torch.cat([torch.zeros_like(start), target[:, :, :-1]], dim=2)
    else:
        raise ValueError(f"unknown shift {shift!r}")
    logits = model(inputs, text, text_mask).float()  # (B, K, S, V)
    valid = target != special
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), target.masked_fill(~valid, 0), reduction="none")  # (B, K, S)
    if padding == "excluded":
        total, count = (ce * valid).sum(), valid.sum()
    elif padding == "as_zero":
        total, count = ce.sum(), ce.numel()
    elif padding == "divided":
        total, count = (ce * valid).sum(), ce.numel()
    else:
        raise ValueError(f"unknown padding {padding!r}")
    return total if reduce == "sum" else total / count


LOSS_VARIANTS: list[tuple[dict, str]] = [
    (dict(padding="as_zero"), "padding counted in the loss: the delay pattern's padded positions (K(K − 1) per clip) "
                              "hold no token; leave them out of the sum AND out of the count"),
    (dict(padding="divided"), "you left the padding out of the sum but divided by every position B·K·S: divide by "
                              "the number of real tokens, B·K·T"),
    (dict(shift="none"), "no shift: the input at step s is the very token it must predict; feed the target shifted "
                         "RIGHT by one step (a column of special_id first, then target[:, :, :-1])"),
    (dict(shift="left"), "the shift goes the wrong way: step s must see steps < s, so the input is a special_id "
                         "column followed by target[:, :, :-1] (shift RIGHT)"),
    (dict(shift="zero_start"), "the first input step must be the special id V = codebook_size (start of sequence), "
                               "not 0, which is a real code"),
    (dict(reduce="sum"), "average the cross-entropy over the real tokens (a mean, in nats per token), not their sum"),
    (dict(delay=False), "lay the codes out with the delay pattern first (your delay_interleave, pad_id = "
                        "model.special_id): the model reads and predicts pattern steps, not frames"),
    (dict(delay=False, shift="none"), "lay the codes out with the delay pattern and shift right by one step"),
]


def _loss_cases() -> list[tuple[AudioLM, torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = seeded(54)
    a, b = tiny_lm(3, 16, seed=0), tiny_lm(2, 8, seed=1)
    cases = []
    for model, batch, frames in ((a, 2, 5), (b, 3, 4), (a, 1, 1)):
        k, v = model.config.n_q, model.config.codebook_size
        codes = torch.randint(0, v, (batch, k, frames), generator=g)
        text = torch.randn(batch, 4, 8, generator=g)
        mask = torch.ones(batch, 4, dtype=torch.bool)
        mask[-1, 2:] = False  # the last caption is shorter: its padding is masked
        cases.append((model, codes, text, mask))
    return cases


@register_task("next_token_loss", LESSON,
               hint_on_error="target = delay_interleave(codes, V); inputs = [V column, target[..., :-1]]; "
                             "cross-entropy over the positions where target != V, averaged.")
def check_next_token_loss_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(model, codes, text, text_mask)`` must equal ``model.loss(codes, text, text_mask)[0]`` (the library's
    :meth:`AudioLM.loss`) and keep its graph, so that ``backward()`` trains the model."""
    for model, codes, text, mask in _loss_cases():
        b, k, t = codes.shape
        args = (codes.clone(), text.clone(), mask.clone())
        where = (f"for codes of shape (B, K, T) = {(b, k, t)} and an LM with V = {model.config.codebook_size} "
                 f"codes per codebook")
        got = ctx.call(fn, model, *args)
        _unchanged((codes, text, mask), args, where)
        if isinstance(got, (int, float)):
            raise WrongAnswer(f"{where} you returned a Python number ({got:.4g}): return the loss as a tensor that "
                              "still carries its graph (no .item()), so that loss.backward() can train the model")
        got = expect_tensor(got, "next_token_loss", "a scalar tensor (the mean cross-entropy)")
        if got.numel() != 1:
            raise WrongAnswer(f"{where} expected one number (the mean over the real tokens), got a tensor of shape "
                              f"{tuple(got.shape)}: average over every real token of every codebook and clip")
        expected = model.loss(codes, text, mask)[0].detach()
        if not got.requires_grad:
            raise WrongAnswer(f"{where} your loss has no gradient: compute it from the model's logits, without "
                              "torch.no_grad() or .detach(), so that loss.backward() reaches the weights")
        value = got.detach().reshape(()).double()
        if torch.allclose(value, expected.double(), rtol=1e-4, atol=1e-5):
            continue
        hint = ("target = delay_interleave(codes, V) with V = model.special_id; inputs = a V column then "
                "target[:, :, :-1]; cross-entropy of model(inputs, text, text_mask) against target where target != V, "
                "averaged over those positions")
        with torch.no_grad():
            for kwargs, variant_hint in LOSS_VARIANTS:
                variant = reference_next_token_loss(model, codes, text, mask, **kwargs).double()
                if torch.allclose(value, variant, rtol=1e-4, atol=1e-5):
                    hint = variant_hint
                    break
        raise WrongAnswer(f"{where} expected a loss of {float(expected):.4f} nats/token, got {float(value):.4f}: {hint}")


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


# --------------------------------------------------------------------------------------------------------
# Task 6: the sampling loop, with classifier-free guidance and top-k
# --------------------------------------------------------------------------------------------------------


def reference_sample(model: AudioLM, text: torch.Tensor, text_mask: torch.Tensor, num_frames: int, cfg_scale: float,
                     top_k: int, generator: torch.Generator | None = None, *, cfg_on: str = "logits",
                     shift: str = "right", padding: str = "special", null: str = "mask", swap: bool = False,
                     top_k_first: bool = False, use_top_k: bool = True) -> torch.Tensor:
    """Sample codes ``(B, K, num_frames)`` step by step over the delay pattern, without a cache: at step ``s`` the
    model reads the sequence shifted right (a ``special_id`` column, then steps ``< s``), the conditional and the
    null-caption (all-False mask) branches are mixed on the logits ``uncond + cfg_scale · (cond − uncond)``, the
    ``top_k`` largest survive, and one token per codebook is drawn with ``torch.multinomial(probs.reshape(B·K, V),
    1, generator)``; padded positions keep ``special_id``. For the defaults, the same tokens as
    :func:`course_lib.lm.sampling.generate` (temperature 1, ``top_p`` off) with the same generator. The keywords
    build the wrong variants the check recognises: guidance on probabilities (``cfg_on="probs"``, clipped at 0 and
    renormalised), no shift, sampled tokens left in padded positions (``padding="keep"``), a zeroed caption with
    its mask as the unconditional branch (``null="zeros"``), the branches swapped, top-k applied to each branch
    before mixing (``top_k_first``), no top-k at all."""
    batch, k, special = text.shape[0], model.config.n_q, model.special_id
    steps = num_frames + k - 1
    seq = torch.full((batch, k, steps), special, dtype=torch.long)
    if null == "mask":
        both_text, both_mask = torch.cat([text, text]), torch.cat([text_mask, torch.zeros_like(text_mask)])
    else:
        both_text, both_mask = torch.cat([text, torch.zeros_like(text)]), torch.cat([text_mask, text_mask])
    start = torch.full((batch, k, 1), special, dtype=torch.long)
    frame_of_step = -torch.arange(k)  # codebook k holds frame s − k at step s
    with torch.no_grad():
        for s in range(steps):
            inp = torch.cat([start, seq[:, :, :s]], dim=2) if shift == "right" else seq[:, :, : s + 1]
            cond, uncond = model(torch.cat([inp, inp]), both_text, both_mask)[:, :, -1].float().chunk(2)
            if swap:
                cond, uncond = uncond, cond
            if top_k_first:
                cond, uncond = top_k_filter(cond, top_k), top_k_filter(uncond, top_k)
            if cfg_on == "logits":
                guided = uncond + cfg_scale * (cond - uncond)
                if use_top_k and not top_k_first:
                    guided = top_k_filter(guided, top_k)
                probs = guided.softmax(dim=-1)
            else:
                probs = uncond.softmax(-1) + cfg_scale * (cond.softmax(-1) - uncond.softmax(-1))
                if use_top_k:
                    probs = probs.masked_fill(top_k_filter(probs, top_k) == float("-inf"), 0.0)
                probs = probs.clamp(min=0.0)
                probs = probs / probs.sum(dim=-1, keepdim=True)
            probs = torch.nan_to_num(probs, nan=1.0 / probs.shape[-1])
            tokens = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(batch, k)
            frame = s + frame_of_step
            real = (frame >= 0) & (frame < num_frames)
            seq[:, :, s] = tokens if padding == "keep" else torch.where(real, tokens, special)
    return torch.stack([seq[:, i, i: i + num_frames] for i in range(k)], dim=1)


SAMPLE_VARIANTS: list[tuple[dict, str]] = [
    (dict(cfg_on="probs"), "you mixed PROBABILITIES: guidance mixes the LOGITS, uncond + s·(cond − uncond), then the "
                           "softmax (mixed probabilities are not a distribution: they go negative for s > 1)"),
    (dict(swap=True), "the branches are swapped: guided = uncond + s·(cond − uncond), cond from the caption, uncond "
                      "from the all-False mask"),
    (dict(null="zeros"), "the unconditional branch is the caption with an all-False MASK (torch.zeros_like(text_mask)), "
                         "not zeroed embeddings with the caption's mask"),
    (dict(shift="none"), "the input at step s is the sequence shifted RIGHT: a special_id column, then steps 0..s − 1 "
                         "(length s + 1); its last position's logits predict step s"),
    (dict(padding="keep"), "padding positions must keep special_id: at step s, codebook k holds a token only when "
                           "0 <= s − k < num_frames"),
    (dict(top_k_first=True), "top-k goes AFTER guidance: mix the two branches' full logits, then keep the k largest "
                             "guided logits"),
    (dict(use_top_k=False), "you did not apply top-k: keep only the k largest guided logits (the others -inf) before "
                            "the softmax; top_k = 1 is greedy decoding"),
]


def _sample_greedy_cases() -> list[tuple[AudioLM, torch.Tensor, torch.Tensor, int, float]]:
    g = seeded(55)
    a, b = tiny_lm(3, 16, seed=2), tiny_lm(2, 8, seed=3)
    cases = []
    for model, batch, frames, scale in ((a, 2, 6, 3.0), (b, 1, 5, 5.0), (a, 1, 4, 1.0)):
        text = torch.randn(batch, 4, 8, generator=g)
        mask = torch.ones(batch, 4, dtype=torch.bool)
        mask[-1, 3:] = False
        cases.append((model, text, mask, frames, scale))
    return cases


def _call_sampler(ctx: CheckContext, fn: Callable, where: str, model: AudioLM, text: torch.Tensor,
                  mask: torch.Tensor, frames: int, scale: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
    args = (text.clone(), mask.clone())
    try:
        got = ctx.call(fn, model, *args, frames, scale, top_k, generator)
    except Exception as err:  # the harness reports the student's error; a negative probability is guidance on probs
        cause = err.__cause__
        if isinstance(cause, RuntimeError) and "probability" in str(cause):
            raise WrongAnswer(f"{where} torch.multinomial refused your probabilities ({str(cause).splitlines()[0]}): "
                              "they must be finite and >= 0. Mix the LOGITS, uncond + s·(cond − uncond), then top-k, "
                              "then the softmax: mixed probabilities go negative for s > 1, and top-k on each branch "
                              "before mixing gives −inf − (−inf) = NaN") from None
        raise
    _unchanged((text, mask), args, where)
    b, k, v = text.shape[0], model.config.n_q, model.config.codebook_size
    got = expect_tensor(got, "sample_with_cfg", "codes (B, K, num_frames)")
    if tuple(got.shape) != (b, k, frames):
        hint = ""
        if tuple(got.shape) == (b, k, frames + k - 1):
            hint = ": you returned the delayed sequence; undo the delay (your delay_deinterleave)"
        raise WrongAnswer(f"{where} expected codes of shape (B, K, num_frames) = {(b, k, frames)}, got "
                          f"{tuple(got.shape)}{hint}")
    if got.is_floating_point() or got.dtype == torch.bool:
        raise WrongAnswer(f"{where} expected integer codes, got {got.dtype}")
    if int(got.min()) < 0 or int(got.max()) >= v:
        raise WrongAnswer(f"{where} codes must lie in [0, {v - 1}], got values in [{int(got.min())}, {int(got.max())}]: "
                          f"special_id = {v} marks padding inside the sequence and never reaches the codes")
    return got


@register_task("sample_with_cfg", LESSON,
               hint_on_error="per step: inp = [V column, seq[:, :, :s]]; cond, uncond = model(both)[:, :, -1].chunk(2); "
                             "guided = uncond + s·(cond − uncond); top-k; softmax; torch.multinomial.")
def check_sample_with_cfg_impl(ctx: CheckContext, fn: Callable) -> None:
    """``fn(model, text, text_mask, num_frames, cfg_scale, top_k, generator)`` must sample codes ``(B, K, T)``.

    Greedy (``top_k = 1``): the tokens must be exactly :func:`course_lib.lm.sampling.generate`'s. Sampling
    (``top_k = 3``, 600 copies of one caption): every drawn token must be among the top-k of the guided logits of
    its own prefix, and the first step's draws must follow ``softmax(top-k(guided logits))``."""
    # 1. greedy: deterministic, so the tokens must be the library's
    for model, text, mask, frames, scale in _sample_greedy_cases():
        where = (f"greedy (top_k = 1), cfg_scale = {scale:g}, {text.shape[0]} caption(s), K = {model.config.n_q}, "
                 f"{frames} frames:")
        got = _call_sampler(ctx, fn, where, model, text, mask, frames, scale, 1, seeded(56))
        expected = generate(model, text, mask, frames, temperature=1.0, top_k=1, top_p=0.0, cfg_scale=scale,
                            use_cache=False)
        if torch.equal(got, expected):
            continue
        hint = ("at step s: input = [special_id column, seq[:, :, :s]]; guided = uncond + s·(cond − uncond) on the "
                "last position's logits; keep the top-k; softmax; draw; write the tokens where 0 <= s − k < T, "
                "special_id elsewhere")
        for kwargs, variant_hint in SAMPLE_VARIANTS:
            if torch.equal(got, reference_sample(model, text, mask, frames, scale, 1, seeded(56), **kwargs)):
                hint = variant_hint
                break
        i = int((got != expected).flatten(1).any(dim=1).nonzero()[0])  # the first caption whose codes differ
        raise WrongAnswer(f"{where} expected codes {expected[i].tolist()} for caption {i}, got {got[i].tolist()}: {hint}")
    # 2. sampling: each token among the top-k of its guided logits, and the first step's draws follow them
    model, text, mask, _, scale = _sample_greedy_cases()[0]
    n, top_k, frames = 600, 3, 2
    text, mask = text[:1].expand(n, -1, -1).contiguous(), mask[:1].expand(n, -1).contiguous()
    where = f"sampling 600 times from one caption (top_k = {top_k}, cfg_scale = {scale:g}, {frames} frames):"
    got = _call_sampler(ctx, fn, where, model, text, mask, frames, scale, top_k, seeded(57))
    special = model.special_id
    target = reference_delay_interleave(got, special)
    inputs = torch.cat([torch.full_like(target[:, :, :1], special), target[:, :, :-1]], dim=2)
    with torch.no_grad():
        both = model(torch.cat([inputs, inputs]), torch.cat([text, text]),
                     torch.cat([mask, torch.zeros_like(mask)])).float()
        cond, uncond = both.chunk(2)
        guided = uncond + scale * (cond - uncond)  # (n, K, S, V)
    drawn = guided.gather(-1, target.clamp(max=special - 1)[..., None])[..., 0]
    kth = guided.topk(top_k, dim=-1).values[..., -1]
    outside = ((drawn < kth - 1e-4) & (target != special)).sum()
    if outside:
        raise WrongAnswer(f"{where} {int(outside)} drawn tokens are not among the top-{top_k} of the guided logits at "
                          "their step: keep only the k largest GUIDED logits (mix first, then top-k), the rest -inf")
    first = got[:, 0, 0]  # codebook 0 of frame 0: drawn at step 0, from the same context in every row
    if int(first.unique().numel()) == 1:
        raise WrongAnswer(f"{where} every draw gave the same first token: sample from the distribution "
                          "(torch.multinomial on the softmax of the filtered logits), do not take the argmax")
    expected = top_k_filter(guided[0, 0, 0], top_k).softmax(-1)
    seen = torch.bincount(first, minlength=expected.numel()).double() / n
    distance = 0.5 * float((seen - expected.double()).abs().sum())
    if distance > 0.1:
        raise WrongAnswer(f"{where} the first tokens' frequencies {[round(x, 2) for x in seen.tolist() if x > 0]} "
                          f"are far from softmax(top-k(guided logits)) = "
                          f"{[round(x, 2) for x in expected.tolist() if x > 0]} (total variation {distance:.2f}): "
                          "draw from the softmax of the filtered guided logits, at temperature 1")
