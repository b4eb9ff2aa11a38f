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
from course_lib.exercises.ex05 import LESSON, TOP_P_CASES, reference_delay_interleave, reference_top_p
from course_lib.exercises.grade import grade_many, solution_tasks
from course_lib.lm.patterns import DelayPattern
from course_lib.lm.sampling import top_p_filter
from course_lib.nn.attention import KVCache, MultiHeadAttention, causal_mask

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "05_audiogen.ipynb"
EXERCISE = ROOT / "exercises" / "05_audiogen.ipynb"
TASK_IDS = ["causal_mask", "delay_interleave", "delay_deinterleave", "top_p_filter", "cached_attention_step"]
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
def test_known_answers_of_the_solution(solution_fns):
    mask = solution_fns["causal_mask"]
    assert mask(3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert mask(2, 5).int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]  # 3 cached keys in front
    assert torch.equal(mask(4, 9), causal_mask(4, num_keys=9))
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


def test_top_p_cases_stay_away_from_the_boundary():
    """No case has a cumulative mass within 1e-4 of p: float32 and float64 answers cannot disagree."""
    for logits, p in TOP_P_CASES:
        cum = logits.double().softmax(-1).sort(-1, descending=True).values.cumsum(-1)
        assert (cum - p).abs().min() > 1e-4 or p == 1.0
        assert torch.equal(reference_top_p(logits, p), top_p_filter(logits, p))


# --- plausible wrong answers -------------------------------------------------------------------------


def _grid(n, num_keys=None):
    num_keys = n if num_keys is None else num_keys
    return torch.arange(n)[:, None], torch.arange(num_keys)[None, :], num_keys - n


def _upper(n, num_keys=None):
    rows, cols, offset = _grid(n, num_keys)
    return cols >= rows + offset


def _strict(n, num_keys=None):
    rows, cols, offset = _grid(n, num_keys)
    return cols < rows + offset


def _no_offset(n, num_keys=None):
    rows, cols, _ = _grid(n, num_keys)
    return cols <= rows


def _additive(n, num_keys=None):
    rows, cols, offset = _grid(n, num_keys)
    return torch.zeros(n, cols.shape[1]).masked_fill(cols > rows + offset, float("-inf"))


def _square(n, num_keys=None):
    return torch.ones(n, n).tril().bool()


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


@pytest.mark.parametrize("task_id, wrong, hint", [
    ("causal_mask", _upper, "the polarity is inverted"),
    ("causal_mask", _strict, "a position must see itself"),
    ("causal_mask", _no_offset, "sits at position P + i"),
    ("causal_mask", _additive, "expected a bool mask"),
    ("causal_mask", _square, "num_keys = P + n counts the P cached keys"),
    ("delay_interleave", _wrong_way, "the delay goes the wrong way"),
    ("delay_interleave", lambda codes, pad_id: reference_delay_interleave(codes, 0), "not 0 (0 is a real code)"),
    ("delay_interleave", _cropped, "the sequence has T + K − 1"),
    ("delay_interleave", lambda codes, pad_id: reference_delay_interleave(codes, pad_id).float(),
     "keep the codes' integer dtype"),
    ("delay_deinterleave", _deinterleave_no_shift, "undo the delay"),
    ("delay_deinterleave", _deinterleave_wrong_way, "the shift goes the wrong way"),
    ("delay_deinterleave", lambda seq: seq, "the number of frames is T = S − K + 1"),
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
    for full, points in ((full04, 8), (full05, 9)):
        assert full.status == "completed", full.detail
        assert full.total == full.max_total == points
    for empty, points in ((empty04, 8), (empty05, 9)):
        assert empty.status == "completed", empty.detail  # the untouched exercise runs top to bottom, no error
        assert empty.total == 0 and empty.max_total == points
        assert all(s.message.startswith("not implemented") for s in empty.scores)
