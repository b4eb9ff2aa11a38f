"""The AudioGen LM and its sampler (course_lib.lm): causality, the loss over real tokens only, cached vs
uncached decoding, continuation, guidance, filters on hand-made distributions, files and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.lm import (
    AudioLM,
    AudioLMConfig,
    generate,
    guided_logits,
    sample_next,
    time_generation,
    top_k_filter,
    top_p_filter,
)

torch.set_num_threads(1)
K, CARD, TEXT_DIM, B, L = 3, 16, 12, 2, 5


def _model(pattern: str = "delay", positional: str = "sinusoidal", seed: int = 0) -> AudioLM:
    torch.manual_seed(seed)
    cfg = AudioLMConfig(n_q=K, codebook_size=CARD, dim=32, num_layers=2, num_heads=4, text_dim=TEXT_DIM,
                        max_len=64, pattern=pattern, positional=positional)
    return AudioLM(cfg).eval()


def _text(seed: int = 1, batch: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, L, TEXT_DIM, generator=g)
    mask = torch.ones(batch, L, dtype=torch.bool)
    mask[0, 3:] = False
    return text, mask


def _codes(t: int, seed: int = 2, batch: int = B) -> torch.Tensor:
    return torch.randint(0, CARD, (batch, K, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def delay_model() -> AudioLM:
    return _model("delay")


# ------------------------------------------------------------------------------------------------- model


def test_forward_shape_and_causality(delay_model):
    text, mask = _text()
    seq = delay_model.pattern.interleave(_codes(6), delay_model.special_id)  # (B, K, 8)
    logits = delay_model(seq, text, mask)
    assert logits.shape == (B, K, 8, CARD)
    changed = seq.clone()
    changed[:, :, 5] = (changed[:, :, 5] + 1) % CARD  # a future step
    logits2 = delay_model(changed, text, mask)
    torch.testing.assert_close(logits[:, :, :5], logits2[:, :, :5], rtol=0, atol=1e-5)
    assert not torch.allclose(logits[:, :, 5:], logits2[:, :, 5:])


def test_text_conditions_the_logits_and_masked_text_does_not(delay_model):
    text, mask = _text()
    seq = delay_model.pattern.interleave(_codes(4), delay_model.special_id)
    other = text.clone()
    other[0, 3:] = 42.0  # masked-out tokens of item 0
    torch.testing.assert_close(delay_model(seq, text, mask), delay_model(seq, other, mask), rtol=0, atol=1e-6)
    other[0, 0] += 1.0  # a real token
    assert not torch.allclose(delay_model(seq, text, mask)[0], delay_model(seq, other, mask)[0])


@pytest.mark.parametrize("pattern", ["delay", "parallel", "flattening"])
def test_loss_is_cross_entropy_over_real_tokens_only(pattern):
    model = _model(pattern)
    text, mask = _text()
    codes = _codes(5)
    loss, metrics = model.loss(codes, text, mask)
    # independent path: map the logits back to (B, K, T, V) with the pattern and score the codes directly
    target = model.pattern.interleave(codes, model.special_id)
    logits = model(model.shift_right(target), text, mask)
    per_frame = model.pattern.deinterleave(logits, 5)  # (B, K, T, V): padding positions dropped
    expected = F.cross_entropy(per_frame.reshape(-1, CARD), codes.reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert set(metrics) == {"ce_k0", "ce_k1", "ce_k2", "accuracy"}
    torch.testing.assert_close(sum(metrics[f"ce_k{k}"] for k in range(K)) / K, expected)
    assert abs(loss.item() - math.log(CARD)) < 1.0  # an untrained model is near uniform


def test_loss_ignores_what_the_model_predicts_at_padding(delay_model):
    """Padding targets never enter the loss: the delay pattern's pad logits may be anything."""
    text, mask = _text()
    codes = _codes(4)
    target = delay_model.pattern.interleave(codes, delay_model.special_id)
    logits = delay_model(delay_model.shift_right(target), text, mask)
    valid = delay_model.pattern.valid_mask(4)
    garbage = logits.clone()
    garbage[:, ~valid] = torch.randn_like(garbage[:, ~valid]) * 100
    ce = lambda lg: F.cross_entropy(  # noqa: E731
        lg.permute(0, 3, 1, 2), target.masked_fill(~valid, -100), ignore_index=-100)
    torch.testing.assert_close(ce(logits), ce(garbage))
    torch.testing.assert_close(delay_model.loss(codes, text, mask)[0], ce(logits))


def test_loss_trains():
    model = _model("delay", positional="learned", seed=3).train()
    text, mask = _text()
    codes = _codes(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(codes, text, mask)[0].item()
    for _ in range(15):
        opt.zero_grad()
        loss = model.loss(codes, text, mask)[0]
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_save_and_load_give_the_same_model(delay_model, tmp_path):
    folder = delay_model.save_pretrained(tmp_path / "lm")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = AudioLM.from_pretrained(folder)
    assert not loaded.training and loaded.config == delay_model.config
    text, mask = _text()
    seq = delay_model.pattern.interleave(_codes(4), delay_model.special_id)
    assert torch.equal(loaded(seq, text, mask), delay_model(seq, text, mask))
    with pytest.raises(FileNotFoundError, match="AudioLM"):
        AudioLM.from_pretrained(tmp_path / "nothing")


def test_errors_name_what_was_expected(delay_model):
    text, mask = _text()
    with pytest.raises(ValueError, match="K = 3 codebooks"):
        delay_model.loss(torch.zeros(B, 4, 5, dtype=torch.long), text, mask)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 15\]"):
        delay_model.loss(torch.full((B, K, 5), CARD), text, mask)  # the special id is no code
    with pytest.raises(ValueError, match=r"ids must be in \[0, 16\]"):
        delay_model(torch.full((B, K, 5), -1), text, mask)
    with pytest.raises(ValueError, match="text_dim = 12"):
        delay_model.loss(_codes(5), torch.randn(B, L, 8), mask)
    with pytest.raises(ValueError, match="text_mask must be a bool"):
        delay_model.loss(_codes(5), text, mask.float())
    with pytest.raises(ValueError, match="integer tensor"):
        delay_model.loss(_codes(5).float(), text, mask)
    with pytest.raises(ValueError, match="max_len = 64"):
        delay_model(torch.zeros(B, K, 65, dtype=torch.long), text, mask)
    with pytest.raises(ValueError, match="pattern"):
        AudioLMConfig(pattern="zigzag").validate()
    with pytest.raises(ValueError, match="unknown AudioLMConfig keys"):
        AudioLMConfig.from_dict({"n_q": 4, "width": 3})


def test_paper_config_is_audiogen_medium():
    cfg = AudioLMConfig.paper()
    cfg.validate()
    assert (cfg.num_layers, cfg.dim, cfg.num_heads, cfg.n_q, cfg.codebook_size, cfg.pattern) == \
        (48, 1536, 24, 4, 2048, "delay")


# ---------------------------------------------------------------------------------------------- sampling


def test_top_k_filter_by_hand():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    out = top_k_filter(logits, 2)
    assert torch.equal(torch.isfinite(out), torch.tensor([False, True, True, False]))
    assert torch.equal(out[1:3], logits[1:3])
    assert torch.isfinite(top_k_filter(torch.zeros(5), 3)).sum() == 3  # ties: exactly k
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_keeps_the_smallest_set_over_p():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.3) == [False, True, False, False]  # 0.5 alone reaches 0.3
    assert kept(0.6) == [False, True, False, True]  # 0.5 + 0.25 = 0.75 ≥ 0.6
    assert kept(0.8) == [False, True, True, True]  # 0.75 < 0.8: add 0.15
    assert kept(0.95) == [True, True, True, True]
    assert kept(1e-6) == [False, True, False, False]  # at least one token
    assert torch.equal(top_p_filter(logits, 0.6)[0, [1, 3]], logits[0, [1, 3]])  # survivors untouched
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        top_p_filter(logits, 0.0)


def test_sample_next_follows_the_filtered_distribution():
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0]).log_softmax(-1).expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(draws.unique().tolist()) == {1, 2}
    p1 = math.exp(2) / (math.exp(2) + math.exp(1))
    assert abs((draws == 1).float().mean().item() - p1) < 0.03
    assert (sample_next(logits, temperature=0) == 1).all() and (sample_next(logits, top_k=1) == 1).all()
    cold = sample_next(logits, temperature=0.05, generator=g)
    assert (cold == 1).float().mean() > 0.99


def test_cfg_scale_one_is_the_conditional_model_and_batching_is_exact(delay_model):
    text, mask = _text()
    seq = delay_model.pattern.interleave(_codes(4), delay_model.special_id)
    cond = delay_model(seq, text, mask)
    uncond = delay_model(seq, text, torch.zeros_like(mask))
    torch.testing.assert_close(guided_logits(delay_model, seq, text, mask, 1.0), cond, rtol=0, atol=0)
    torch.testing.assert_close(guided_logits(delay_model, seq, text, mask, 0.0), uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided_logits(delay_model, seq, text, mask, 3.0), uncond + 3 * (cond - uncond),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pattern", ["delay", "parallel", "flattening"])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
@pytest.mark.float_path
def test_greedy_generation_with_and_without_cache_is_identical(pattern, cfg_scale):
    model = _model(pattern)
    text, mask = _text()
    kwargs = dict(num_frames=5, top_k=1, cfg_scale=cfg_scale)
    with_cache = generate(model, text, mask, use_cache=True, **kwargs)
    without = generate(model, text, mask, use_cache=False, **kwargs)
    assert with_cache.shape == (B, K, 5) and with_cache.dtype == torch.long
    assert torch.equal(with_cache, without)


@pytest.mark.float_path
def test_sampled_generation_shape_range_and_seed(delay_model):
    text, mask = _text()
    run = lambda seed, cache: generate(delay_model, text, mask, num_frames=6, top_k=8, top_p=0.9,  # noqa: E731
                                       temperature=1.2, generator=torch.Generator().manual_seed(seed),
                                       use_cache=cache)
    codes = run(0, True)
    assert codes.shape == (B, K, 6) and codes.min() >= 0 and codes.max() < CARD  # never the special id
    assert torch.equal(codes, run(0, True)) and torch.equal(codes, run(0, False))
    assert not torch.equal(codes, run(1, True))


@pytest.mark.parametrize("pattern", ["delay", "flattening"])
@pytest.mark.float_path
def test_continuation_keeps_the_prompt_verbatim(pattern):
    model = _model(pattern).train()  # generate switches to eval and back
    text, mask = _text()
    prompt = _codes(3, seed=7)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    out = generate(model, text, mask, num_frames=7, prompt_codes=prompt, generator=g())
    assert model.training
    assert out.shape == (B, K, 7) and torch.equal(out[:, :, :3], prompt)
    assert torch.equal(out, generate(model, text, mask, num_frames=7, prompt_codes=prompt, generator=g(),
                                     use_cache=False))
    # the prompt is teacher-forced: the greedy continuation equals greedy decoding of the model given it
    greedy = generate(model, text, mask, num_frames=7, prompt_codes=prompt, top_k=1)
    seq = model.pattern.interleave(greedy, model.special_id)
    steps = model.pattern.positions(7)  # (K, T)
    logits = guided_logits(model.eval(), model.shift_right(seq), text, mask, 3.0)  # (B, K, S, V)
    best = logits.argmax(-1)
    for k in range(K):
        for t in range(3, 7):
            assert torch.equal(greedy[:, k, t], best[:, k, steps[k, t]])
    full = generate(model, text, mask, num_frames=3, prompt_codes=prompt)
    assert torch.equal(full, prompt)


def test_generate_errors(delay_model):
    text, mask = _text()
    with pytest.raises(ValueError, match="prompt_codes"):
        generate(delay_model, text, mask, num_frames=4, prompt_codes=_codes(5))
    with pytest.raises(ValueError, match="prompt_codes"):
        generate(delay_model, text, mask, num_frames=4, prompt_codes=torch.zeros(B, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len"):
        generate(delay_model, text, mask, num_frames=80)
    with pytest.raises(ValueError, match="text_dim = 12"):
        generate(delay_model, torch.randn(B, L, 4), None, num_frames=3)


def test_time_generation_reports_rates(delay_model):
    text, mask = _text()
    stats = time_generation(delay_model, text, mask, num_frames=3, use_cache=True, top_k=1)
    assert stats["seconds"] > 0
    assert stats["tokens_per_s"] == pytest.approx(B * K * 3 / stats["seconds"])


def test_time_generation_counts_the_steps_the_cache_saves(delay_model):
    """An operation count, not wall time: S steps with the cache, 1 + 2 + ... + S without (S pattern steps)."""
    text, mask = _text()
    steps = delay_model.pattern.seq_len(6)
    cached = time_generation(delay_model, text, mask, num_frames=6, use_cache=True, top_k=1, repeats=2)
    full = time_generation(delay_model, text, mask, num_frames=6, use_cache=False, top_k=1)
    assert cached["steps_computed"] == steps and full["steps_computed"] == steps * (steps + 1) // 2
