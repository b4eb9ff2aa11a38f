"""Sampling from the AudioGen LM: temperature, top-k, top-p, classifier-free guidance, KV cache, continuation.

Each step of :func:`generate` computes the logits ``(B, K, V)`` of the K tokens of the next pattern step,
guides them (:func:`guided_logits`: ``uncond + s·(cond − uncond)``, Ho & Salimans 2022, AudioGen §3, with
the conditional and the unconditional (all-masked text) branches batched together as ``2B`` items),
divides by the temperature, keeps the ``top_k`` most likely tokens and/or the smallest set whose mass
reaches ``top_p`` (Holtzman et al. 2020, nucleus sampling), and draws one token per codebook. Positions the
pattern pads get the special id; positions the prompt covers are teacher-forced (audio continuation).
audiocraft's released AudioGen samples with ``top_k = 250``, ``top_p = 0`` (off), temperature 1, CFG 3:
the defaults here.

KV cache: with ``use_cache=True`` every layer keeps the keys and values of past steps, so a step costs one
position instead of re-running the whole prefix (``O(S)`` instead of ``O(S²)`` work per sequence). Both ways
give the same logits up to float rounding, hence identical tokens under greedy decoding (``top_k=1``).
:func:`time_generation` measures tokens/s both ways::

    for use_cache in (False, True):
        print(use_cache, time_generation(model, text, mask, num_frames=100, use_cache=use_cache))
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from course_lib.lm.model import AudioLM
from course_lib.nn.guidance import cfg_mix, null_mask_like
from course_lib.nn.transformer import TransformerCache

__all__ = ["apply_temperature", "generate", "guided_logits", "sample_next", "time_generation", "top_k_filter",
           "top_p_filter"]


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits along the last axis, set the others to ``-inf``; same shape.

    Exactly ``k`` survive even with ties (the first ones :func:`torch.topk` returns); ``k ≥ V`` keeps all.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"top_k_filter: k must be a positive int, got {k!r}")
    if k >= logits.shape[-1]:
        return logits
    idx = logits.topk(k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass is ``≥ p``.

    Along the last axis, tokens are sorted by probability; a token survives if the mass of the tokens before
    it is still ``< p``. The most likely token always survives (so ``p → 0`` is greedy); ``p = 1`` keeps
    all. The others are set to ``-inf``; same shape. ``p`` must be in ``(0, 1]``.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p_filter: p must be in (0, 1], got {p!r}")
    if p >= 1.0:
        return logits
    probs = F.softmax(logits.float(), dim=-1)
    sorted_probs, idx = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` (``> 0``): below 1 sharpens the distribution, above 1 flattens it."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy in sample_next), got {temperature!r}")
    return logits / temperature


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from logits ``(..., V)`` → long ``(...)``.

    Order: temperature, then top-k, then top-p (each off when ``None`` or 0, as audiocraft's ``top_p=0``).
    ``temperature=0`` or ``top_k=1`` is greedy (argmax, no randomness). ``generator`` must live on the
    logits' device.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits.float(), temperature)
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def guided_logits(model: AudioLM, seq: Tensor, text: Tensor, text_mask: Tensor | None, cfg_scale: float,
                  cache: TransformerCache | None = None) -> Tensor:
    """Classifier-free-guided logits ``(B, K, S, V)`` for input steps ``seq`` ``(B, K, S)``.

    ``cfg_scale = 1`` runs the conditional model alone (batch B). Otherwise the conditional and the
    unconditional branch (the same text with an all-False mask, the course's null condition) run as one
    batch of ``2B`` and are mixed by :func:`~course_lib.nn.guidance.cfg_mix`. A ``cache`` must therefore have
    been built by calls with the same ``cfg_scale`` (batch ``B`` or ``2B``). For an LM converted from
    transformers' MusicGen (:func:`course_lib.lm.lm_from_musicgen`) this null branch is the one MusicGen's
    ``generate(guidance_scale=...)`` builds (zeroed T5 states with a zeroed mask: zero cross-attention too), so
    greedy decoding gives MusicGen's tokens (``tests/test_musicgen_convert.py``).
    """
    if text_mask is None:
        text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    if cfg_scale == 1:
        return model(seq, text, text_mask, cache=cache)
    both = model(torch.cat([seq, seq]), torch.cat([text, text]), torch.cat([text_mask, null_mask_like(text_mask)]),
                 cache=cache)
    cond, uncond = both.chunk(2, dim=0)
    return cfg_mix(cond, uncond, cfg_scale)


def _check_generate_args(model: AudioLM, text: Tensor, num_frames: int, prompt_codes: Tensor | None) -> None:
    if not isinstance(model, AudioLM):
        raise TypeError(f"generate expects an AudioLM, got {type(model).__name__}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames <= 0:
        raise ValueError(f"num_frames must be a positive int (codec frames to return), got {num_frames!r}")
    if not isinstance(text, Tensor) or text.dim() != 3:
        raise ValueError(f"text must be embeddings (B, L, text_dim), got "
                         f"{tuple(text.shape) if isinstance(text, Tensor) else type(text).__name__}")
    steps = model.pattern.seq_len(num_frames)
    if steps > model.config.max_len:
        raise ValueError(f"{num_frames} frames need {steps} pattern steps, more than max_len = {model.config.max_len}")
    if prompt_codes is None:
        return
    k, card = model.config.n_q, model.config.codebook_size
    if (not isinstance(prompt_codes, Tensor) or prompt_codes.dim() != 3 or prompt_codes.is_floating_point()
            or prompt_codes.shape[0] != text.shape[0] or prompt_codes.shape[1] != k):
        got = tuple(prompt_codes.shape) if isinstance(prompt_codes, Tensor) else type(prompt_codes).__name__
        raise ValueError(f"prompt_codes must be integer codes (B={text.shape[0]}, K={k}, P), got {got}")
    if not 0 < prompt_codes.shape[2] <= num_frames:
        raise ValueError(f"prompt_codes has {prompt_codes.shape[2]} frames; expected 1..num_frames={num_frames} "
                         "(num_frames counts the prompt)")
    lo, hi = int(prompt_codes.min()), int(prompt_codes.max())
    if lo < 0 or hi >= card:
        raise ValueError(f"prompt_codes ids must be in [0, {card - 1}], got values in [{lo}, {hi}]")


@torch.no_grad()
def generate(model: AudioLM, text: Tensor, text_mask: Tensor | None, num_frames: int, temperature: float = 1.0,
             top_k: int | None = 250, top_p: float | None = 0.0, cfg_scale: float = 3.0,
             prompt_codes: Tensor | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> Tensor:
    """Sample codes ``(B, K, num_frames)`` (long, ids in ``[0, codebook_size)``) given text ``(B, L, text_dim)``.

    Runs the model's pattern step by step (``pattern.seq_len(num_frames)`` steps), sampling with
    :func:`sample_next` from :func:`guided_logits`. ``text_mask`` ``(B, L)`` bool (None = all real).
    ``prompt_codes`` ``(B, K, P)``, ``P ≤ num_frames``: audio continuation — the prompt's tokens are
    teacher-forced (kept verbatim, the steps they fully determine are fed in one pass) and sampling continues
    after them. ``use_cache=False`` re-runs the whole prefix at every step (same result, slower). The model
    runs in eval mode (restored afterwards); ``generator`` seeds the draws.
    """
    _check_generate_args(model, text, num_frames, prompt_codes)
    pattern, special = model.pattern, model.special_id
    batch, device = text.shape[0], text.device
    codes = torch.zeros(batch, model.config.n_q, num_frames, dtype=torch.long, device=device)
    num_prompt = 0
    if prompt_codes is not None:
        num_prompt = prompt_codes.shape[2]
        codes[:, :, :num_prompt] = prompt_codes.to(device)
    grid = pattern.time_grid(num_frames, device)  # (K, S): frame held by each position, -1 = padding
    valid = grid >= 0
    known = valid & (grid < num_prompt)
    seq = pattern.interleave(codes, special).masked_fill(~known, special)  # (B, K, S): prompt, rest special
    todo = (valid & ~known).any(dim=0).nonzero()
    if len(todo) == 0:  # the prompt already fills every frame
        return codes
    first = int(todo[0])
    cache = model.new_cache() if use_cache else None
    was_training = model.training
    model.eval()
    try:
        for s in range(first, seq.shape[2]):
            if cache is None or s == first:
                inp = model.shift_right(seq)[:, :, : s + 1]  # every input step up to s (the prefill)
            else:
                inp = seq[:, :, s - 1: s]  # only the newest step; the rest is in the cache
            logits = guided_logits(model, inp, text, text_mask, cfg_scale, cache)[:, :, -1]  # (B, K, V)
            tokens = sample_next(logits, temperature, top_k, top_p, generator)  # (B, K)
            column = torch.where(known[:, s], seq[:, :, s], tokens)
            seq[:, :, s] = torch.where(valid[:, s], column, torch.full_like(column, special))
    finally:
        model.train(was_training)
    return pattern.deinterleave(seq, num_frames)


def time_generation(model: AudioLM, text: Tensor, text_mask: Tensor | None, num_frames: int,
                    use_cache: bool = True, repeats: int = 1, **kwargs) -> dict[str, float]:
    """Time :func:`generate` (best of ``repeats`` runs); return ``seconds``, ``tokens_per_s``, ``frames_per_s``
    and ``steps_computed``.

    ``tokens_per_s`` counts the ``B·K·num_frames`` generated tokens; ``frames_per_s`` the codec frames per
    second of wall clock (divide by the codec frame rate, e.g. 50, for the real-time factor).
    ``steps_computed`` counts the input steps the transformer ran over in one run, per sequence, summed over
    its calls (guidance's two branches run as one batch): an operation count that does not depend on the
    machine, so it shows the cache's saving (``S`` steps with it, about ``S²/2`` without) where wall time, on
    short clips or a busy CPU, may not. Extra keyword arguments go to :func:`generate` (``cfg_scale``, ``top_k``, ...).
    """
    steps_computed = 0

    def count(module, args, kwargs_):  # forward pre-hook: the input steps of this call
        nonlocal steps_computed
        seq = args[0] if args else kwargs_["seq"]
        steps_computed += seq.shape[-1]

    best = float("inf")
    for run in range(max(1, repeats)):
        handle = model.register_forward_pre_hook(count, with_kwargs=True) if run == 0 else None
        try:
            if text.is_cuda:
                torch.cuda.synchronize(text.device)
            start = time.perf_counter()
            generate(model, text, text_mask, num_frames, use_cache=use_cache, **kwargs)
            if text.is_cuda:
                torch.cuda.synchronize(text.device)
            best = min(best, time.perf_counter() - start)
        finally:
            if handle is not None:
                handle.remove()
    tokens = text.shape[0] * model.config.n_q * num_frames
    return {"seconds": best, "tokens_per_s": tokens / best, "frames_per_s": text.shape[0] * num_frames / best,
            "steps_computed": steps_computed}
