"""Exercise notebook 05 (AudioGen): the solution passes every check, the stub says "not implemented", and each
check rejects plausible wrong answers with the hint that names the mistake."""

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
from course_lib.exercises.ex05 import (
    LESSON,
    TOP_P_CASES,
    reference_delay_interleave,
    reference_next_token_loss,
    reference_sample,
    reference_top_p,
    tiny_lm,
)
from course_lib.exercises.grade import grade_many, solution_tasks
from course_lib.lm.patterns import DelayPattern
from course_lib.lm.sampling import generate, top_p_filter
from course_lib.nn.attention import KVCache, MultiHeadAttention

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "05_audiogen.ipynb"
EXERCISE = ROOT / "exercises" / "05_audiogen.ipynb"
TASK_IDS = ["delay_interleave", "delay_deinterleave", "next_token_loss", "top_p_filter", "cached_attention_step",
            "sample_with_cfg"]
NAMESPACE = {"math": math, "torch": torch, "F": F}  # what the solution cells assume is imported


def _functions(path: Path) -> dict:
    return notebook_functions(path, NAMESPACE)


@pytest.fixture(scope="module")
def solution_fns() -> dict:
    return _functions(SOLUTION)


def test_notebook_tasks_match_the_registry_and_the_exercise_is_fresh():
    assert_generated_and_registered(SOLUTION, EXERCISE, LESSON, TASK_IDS)
    assert sum(solution_tasks(SOLUTION).values()) == 13


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.float_path
def test_every_check_passes_the_solution_quickly(task_id, solution_fns, capsys):
    assert_check_passes_quickly(task_id, solution_fns, capsys)


def test_check_on_the_untouched_exercise_says_not_implemented(capsys):
    assert_stubs_not_implemented(EXERCISE, TASK_IDS, capsys, NAMESPACE)


@pytest.mark.float_path
def test_known_answers_of_the_solution(solution_fns):
    codes = torch.arange(1, 13).view(1, 3, 4)
    seq = solution_fns["delay_interleave"](codes, -1)
    assert seq.tolist() == [[[1, 2, 3, 4, -1, -1], [-1, 5, 6, 7, 8, -1], [-1, -1, 9, 10, 11, 12]]]
    assert torch.equal(seq, DelayPattern(3).interleave(codes, -1))
    assert torch.equal(reference_delay_interleave(codes, -1), seq)
    assert torch.equal(solution_fns["delay_deinterleave"](seq), codes)
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    keep = {p: (solution_fns["top_p_filter"](probs.log(), p) > -math.inf).nonzero().flatten().tolist()
            for p in (0.3, 0.7, 0.9, 1.0)}
    assert keep == {0.3: [1], 0.7: [1, 3], 0.9: [1, 2, 3], 1.0: [0, 1, 2, 3]}  # smallest set with mass >= p
    # a KV cache built with the solution reproduces the library's MultiHeadAttention step by step
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        cache = KVCache()
        library = torch.cat([layer(x[:, s:s + 1], causal=True, cache=cache) for s in range(7)], dim=1)
        q, k, v = (layer._heads(p(x)) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
        ck = cv = torch.zeros(2, 2, 0, 8)
        outs = []
        for s in range(7):
            out, ck, cv = solution_fns["cached_attention_step"](q[:, :, s:s + 1], k[:, :, s:s + 1], v[:, :, s:s + 1],
                                                                ck, cv)
            outs.append(out)
        mine = layer.out_proj(torch.cat(outs, 2).transpose(1, 2).reshape(2, 7, 16))
    assert torch.allclose(mine, library, atol=1e-5)
    # the keys were projected for the whole sequence here and one step at a time in the cache: two matmul shapes,
    # two kernels, so equal to float rounding (2e-7 seen), not bit for bit
    assert ck.shape == cache.keys.shape and torch.allclose(ck, cache.keys, rtol=1e-5, atol=1e-6)


@pytest.mark.float_path
def test_the_solution_loss_trains_and_the_sampler_matches_the_library(solution_fns):
    """Task 3's loss is AudioLM.loss and a few AdamW steps on it lower it; task 6's sampler draws the library's
    tokens with the same generator, greedy or not, and its padding never reaches the codes."""
    model = tiny_lm(3, 16, seed=4)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (4, 3, 6), generator=g)
    text, mask = torch.randn(4, 5, 8, generator=g), torch.ones(4, 5, dtype=torch.bool)
    loss = solution_fns["next_token_loss"](model, codes, text, mask)
    torch.testing.assert_close(loss, model.loss(codes, text, mask)[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = solution_fns["next_token_loss"](model, codes, text, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    model.eval()
    for top_k, scale in ((1, 3.0), (5, 3.0), (16, 1.0)):
        mine = solution_fns["sample_with_cfg"](model, text, mask, 7, scale, top_k, torch.Generator().manual_seed(3))
        library = generate(model, text, mask, 7, temperature=1.0, top_k=top_k, top_p=0.0, cfg_scale=scale,
                           use_cache=False, generator=torch.Generator().manual_seed(3))  # the solution's path
        assert torch.equal(mine, library) and mine.shape == (4, 3, 7) and int(mine.max()) < 16
        assert torch.equal(mine, reference_sample(model, text, mask, 7, scale, top_k, torch.Generator().manual_seed(3)))
    # the loss with padding counted differs from the real one: the delay pattern pads K(K - 1) = 6 positions per clip
    with torch.no_grad():
        assert abs(float(reference_next_token_loss(model, codes, text, mask, padding="as_zero"))
                   - float(model.loss(codes, text, mask)[0])) > 0.05


def test_top_p_cases_stay_away_from_the_boundary():
    """No case has a cumulative mass within 1e-4 of p: float32 and float64 answers cannot disagree."""
    for logits, p in TOP_P_CASES:
        cum = logits.double().softmax(-1).sort(-1, descending=True).values.cumsum(-1)
        assert (cum - p).abs().min() > 1e-4 or p == 1.0
        assert torch.equal(reference_top_p(logits, p), top_p_filter(logits, p))


# --- plausible wrong answers -------------------------------------------------------------------------


def _wrong_way(codes, pad_id):
    return reference_delay_interleave(codes, pad_id, list(range(codes.shape[1]))[::-1])


def _cropped(codes, pad_id):
    return reference_delay_interleave(codes, pad_id)[:, :, : codes.shape[2]]


def _deinterleave_no_shift(seq):
    return seq[:, :, : seq.shape[2] - seq.shape[1] + 1]


def _deinterleave_wrong_way(seq):
    b, k, s = seq.shape
    t = s - k + 1
    return torch.stack([seq[:, i, k - 1 - i: k - 1 - i + t] for i in range(k)], 1)


def _probs_not_logits(logits, p):
    return reference_top_p(logits, p).softmax(-1)


def _zero_not_inf(logits, p):
    kept = reference_top_p(logits, p) > -math.inf
    return logits.masked_fill(~kept, 0.0)


def _in_place_top_p(logits, p):
    kept = reference_top_p(logits, p) > -math.inf
    return logits.masked_fill_(~kept, float("-inf"))


def _step(q, k, v, ck, cv, *, forget=False, keep_old=False, prepend=False, scale=True, dim=-1, axis=2):
    new_k = torch.cat([k, ck] if prepend else [ck, k], axis)
    new_v = torch.cat([v, cv] if prepend else [cv, v], axis)
    keys, values = (ck, cv) if forget else (new_k, new_v)
    scores = q @ keys.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    out = scores.softmax(dim) @ values
    return (out, ck, cv) if keep_old else (out, new_k, new_v)


def _loss_variant(**kwargs):
    return lambda model, codes, text, mask: reference_next_token_loss(model, codes, text, mask, **kwargs)


def _loss_no_graph(model, codes, text, mask):
    with torch.no_grad():
        return reference_next_token_loss(model, codes, text, mask)


def _loss_unreduced(model, codes, text, mask):
    special = model.special_id
    target = reference_delay_interleave(codes, special)
    inputs = torch.cat([torch.full_like(target[:, :, :1], special), target[:, :, :-1]], dim=2)
    logits = model(inputs, text, mask)
    valid = target != special
    return F.cross_entropy(logits[valid], target[valid], reduction="none")


def _sampler_variant(**kwargs):
    return lambda model, text, mask, frames, scale, top_k, generator=None: reference_sample(
        model, text, mask, frames, scale, top_k, generator, **kwargs)


def _sampler_probs_unclipped(model, text, mask, frames, scale, top_k, generator=None):
    """Guidance on probabilities, used as they come: negative entries make torch.multinomial raise."""
    b, k, v = text.shape[0], model.config.n_q, model.special_id
    seq = torch.full((b, k, frames + k - 1), v)
    with torch.no_grad():
        for s in range(seq.shape[2]):
            inp = torch.cat([torch.full((b, k, 1), v), seq[:, :, :s]], dim=2)
            both = model(torch.cat([inp, inp]), torch.cat([text, text]), torch.cat([mask, torch.zeros_like(mask)]))
            cond, uncond = both[:, :, -1].softmax(-1).chunk(2)
            probs = uncond + scale * (cond - uncond)
            tokens = torch.multinomial(probs.reshape(b * k, -1), 1, generator=generator).view(b, k)
            real = (s - torch.arange(k) >= 0) & (s - torch.arange(k) < frames)
            seq[:, :, s] = torch.where(real, tokens, v)
    return torch.stack([seq[:, i, i:i + frames] for i in range(k)], dim=1)


def _sampler_argmax(model, text, mask, frames, scale, top_k, generator=None):
    return reference_sample(model, text, mask, frames, scale, 1, generator)


def _sampler_uniform_top_k(model, text, mask, frames, scale, top_k, generator=None):
    """The top-k set right, but drawn uniformly from it, ignoring the probabilities."""
    b, k, v = text.shape[0], model.config.n_q, model.special_id
    seq = torch.full((b, k, frames + k - 1), v)
    with torch.no_grad():
        for s in range(seq.shape[2]):
            inp = torch.cat([torch.full((b, k, 1), v), seq[:, :, :s]], dim=2)
            both = model(torch.cat([inp, inp]), torch.cat([text, text]), torch.cat([mask, torch.zeros_like(mask)]))
            cond, uncond = both[:, :, -1].chunk(2)
            guided = uncond + scale * (cond - uncond)
            keep = guided >= guided.topk(top_k, dim=-1).values[..., -1:]
            tokens = torch.multinomial(keep.float().reshape(b * k, -1), 1, generator=generator).view(b, k)
            real = (s - torch.arange(k) >= 0) & (s - torch.arange(k) < frames)
            seq[:, :, s] = torch.where(real, tokens, v)
    return torch.stack([seq[:, i, i:i + frames] for i in range(k)], dim=1)


def _sampler_delayed(model, text, mask, frames, scale, top_k, generator=None):
    codes = reference_sample(model, text, mask, frames, scale, top_k, generator)
    return reference_delay_interleave(codes, 0)


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("delay_interleave", _wrong_way, "the delay goes the wrong way"),
    ("delay_interleave", lambda codes, pad_id: reference_delay_interleave(codes, 0), "not 0 (0 is a real code)"),
    ("delay_interleave", _cropped, "the sequence has T + K − 1"),
    ("delay_interleave", lambda codes, pad_id: reference_delay_interleave(codes, pad_id).float(),
     "keep the codes' integer dtype"),
    ("delay_deinterleave", _deinterleave_no_shift, "undo the delay"),
    ("delay_deinterleave", _deinterleave_wrong_way, "the shift goes the wrong way"),
    ("delay_deinterleave", lambda seq: seq, "the number of frames is T = S − K + 1"),
    ("next_token_loss", _loss_variant(padding="as_zero"), "padding counted in the loss"),
    ("next_token_loss", _loss_variant(padding="divided"), "divide by the number of real tokens"),
    ("next_token_loss", _loss_variant(shift="none"), "no shift"),
    ("next_token_loss", _loss_variant(shift="left"), "the shift goes the wrong way"),
    ("next_token_loss", _loss_variant(shift="zero_start"), "not 0, which is a real code"),
    ("next_token_loss", _loss_variant(reduce="sum"), "not their sum"),
    ("next_token_loss", _loss_variant(delay=False), "lay the codes out with the delay pattern"),
    ("next_token_loss", lambda *a: reference_next_token_loss(*a).item(), "no .item()"),
    ("next_token_loss", _loss_no_graph, "your loss has no gradient"),
    ("next_token_loss", _loss_unreduced, "expected one number"),
    ("top_p_filter", lambda x, p: reference_top_p(x, p, below=True), "stays BELOW p"),
    ("top_p_filter", lambda x, p: reference_top_p(x, p, below=True, inclusive=True), "stays BELOW p"),
    ("top_p_filter", lambda x, p: reference_top_p(x, p, unsorted=True), "map it back with the sort indices"),
    ("top_p_filter", lambda x, p: reference_top_p(x, p, ascending=True), "sort by DEcreasing probability"),
    ("top_p_filter", lambda x, p: reference_top_p(x, p, softmax=False), "turn the logits into probabilities"),
    ("top_p_filter", _probs_not_logits, "return the kept LOGITS unchanged"),
    ("top_p_filter", _zero_not_inf, "float('-inf')"),
    ("top_p_filter", _in_place_top_p, "changed its inputs in place"),
    ("top_p_filter", lambda x, p: x.clone(), "you removed no token at all"),
    ("top_p_filter", lambda x, p: x.masked_fill(x < x.max(-1, keepdim=True).values, -math.inf), "greedy decoding"),
    ("cached_attention_step", lambda *a: _step(*a, forget=True), "must also attend to its own key"),
    ("cached_attention_step", lambda *a: _step(*a, keep_old=True), "WITH the new position appended"),
    ("cached_attention_step", lambda *a: _step(*a, prepend=True), "at the END of the caches"),
    ("cached_attention_step", lambda *a: _step(*a, scale=False), "divide the scores by √d"),
    ("cached_attention_step", lambda *a: _step(*a, dim=-2), "the softmax runs over the KEYS"),
    ("cached_attention_step", lambda q, k, v, ck, cv: _step(q, k, v, ck, cv)[0], "should return three tensors"),
    ("sample_with_cfg", _sampler_variant(cfg_on="probs"), "you mixed PROBABILITIES"),
    ("sample_with_cfg", _sampler_probs_unclipped, "torch.multinomial refused your probabilities"),
    ("sample_with_cfg", _sampler_variant(swap=True), "the branches are swapped"),
    ("sample_with_cfg", _sampler_variant(null="zeros"), "all-False MASK"),
    ("sample_with_cfg", _sampler_variant(shift="none"), "shifted RIGHT"),
    ("sample_with_cfg", _sampler_variant(padding="keep"), "padding positions must keep special_id"),
    ("sample_with_cfg", _sampler_variant(top_k_first=True), "top-k goes AFTER guidance"),
    ("sample_with_cfg", _sampler_variant(use_top_k=False), "keep only the k largest"),
    ("sample_with_cfg", _sampler_argmax, "every draw gave the same first token"),
    ("sample_with_cfg", _sampler_uniform_top_k, "draw from the softmax of the filtered guided logits"),
    ("sample_with_cfg", _sampler_delayed, "you returned the delayed sequence"),
])
def test_each_check_rejects_a_plausible_wrong_answer_with_a_hint(task_id, wrong, hint, capsys):
    assert check(task_id, wrong) is False
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"❌ {task_id}: ") and hint in out and "\n" not in out


@pytest.mark.slow
def test_grader_gives_full_marks_to_the_solutions_and_zero_to_the_exercises(tmp_path):
    """Notebooks 04 and 05 end to end in fresh kernels: the solutions run top to bottom (library cells included)
    and score every point, the untouched exercises score none."""
    paths = []
    for name in ("04_text_conditioning", "05_audiogen"):
        for kind, folder in (("solution", "solutions"), ("untouched", "exercises")):
            target = tmp_path / f"{kind}_{name}.ipynb"
            target.write_text((ROOT / folder / f"{name}.ipynb").read_text(encoding="utf-8"), encoding="utf-8")
            paths.append(target)
    results = grade_many(paths, jobs=2, solutions_dir=ROOT / "solutions", timeout=120, cell_timeout=60)
    full04, empty04, full05, empty05 = results
    for full, points in ((full04, 9), (full05, 13)):
        assert full.status == "completed", full.detail
        assert full.total == full.max_total == points
    for empty, points in ((empty04, 9), (empty05, 13)):
        assert empty.status == "completed", empty.detail  # the untouched exercise runs top to bottom, no error
        assert empty.total == 0 and empty.max_total == points
        assert all(s.message.startswith("not implemented") for s in empty.scores)
