"""Attention, transformer blocks and classifier-free guidance (course_lib.nn): pinned against closed forms
and an independent softmax implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.nn import (
    AdaptiveLayerNorm,
    KVCache,
    MultiHeadAttention,
    Transformer,
    TransformerBlock,
    causal_mask,
    cfg_mix,
    drop_condition,
    null_mask_like,
    sinusoidal_embedding,
)

torch.set_num_threads(1)
DIM, HEADS, CTX = 32, 4, 24


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_attention(attn: MultiHeadAttention, x, context=None, mask=None, causal=False):
    """Plain softmax(QKᵀ/√d + M)V with the module's weights: an independent reference for SDPA."""
    src = x if context is None else context
    b, n, _ = x.shape
    heads = lambda t: t.view(b, t.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(src)), heads(attn.v_proj(src))
    scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
    if causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, attn.dim))


# ---------------------------------------------------------------------------------------------- attention


def test_causal_mask_closed_form():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    # 2 cached positions, then 2 new queries at absolute positions 2 and 3
    assert torch.equal(causal_mask(2, num_keys=4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match="num_keys"):
        causal_mask(3, num_keys=2)


def test_attention_matches_reference_softmax():
    torch.manual_seed(0)
    self_attn = MultiHeadAttention(DIM, HEADS)
    cross = MultiHeadAttention(DIM, HEADS, context_dim=CTX)
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 7, CTX)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    torch.testing.assert_close(self_attn(x, causal=True), _reference_attention(self_attn, x, causal=True))
    torch.testing.assert_close(self_attn(x), _reference_attention(self_attn, x))
    torch.testing.assert_close(cross(x, ctx, mask), _reference_attention(cross, x, ctx, mask))


def test_causal_self_attention_ignores_the_future():
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS)
    x = torch.randn(2, 6, DIM)
    y = x.clone()
    y[:, 4] += 3.0  # change position 4 only
    out_x, out_y = attn(x, causal=True), attn(y, causal=True)
    torch.testing.assert_close(out_x[:, :4], out_y[:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(out_x[:, 4:], out_y[:, 4:])
    # and without the causal flag the past does change
    assert not torch.allclose(attn(x)[:, :4], attn(y)[:, :4])


def test_cross_attention_mask_hides_padded_context():
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS, context_dim=CTX)
    x, ctx = torch.randn(2, 3, DIM), torch.randn(2, 5, CTX)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, False]])
    changed = ctx.clone()
    changed[0, 3:] = 100.0
    changed[1, 1] = -50.0
    changed[1, 4] = 7.0
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, changed, mask), rtol=0, atol=1e-6)
    kept = ctx.clone()
    kept[0, 0] += 1.0
    assert not torch.allclose(attn(x, ctx, mask)[0], attn(x, kept, mask)[0])


def test_fully_masked_context_gives_zero_not_nan():
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS, context_dim=CTX)
    x, ctx = torch.randn(3, 4, DIM, requires_grad=True), torch.randn(3, 5, CTX)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False  # the null condition of CFG: no text at all
    out = attn(x, ctx, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # the other items are computed as if the empty row were not in the batch
    torch.testing.assert_close(out[[0, 2]], attn(x[[0, 2]], ctx[[0, 2]], mask[[0, 2]]))
    # an empty context (L = 0) is the same null condition
    assert torch.equal(attn(x, ctx[:, :0]), torch.zeros(3, 4, DIM))


def test_kv_cache_step_by_step_equals_full_pass():
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS)
    x = torch.randn(2, 7, DIM)
    full = attn(x, causal=True)
    cache = KVCache()
    parts = [attn(x[:, :3], causal=True, cache=cache)]  # a 3-step prefill into an empty cache
    parts.append(attn(x[:, 3:5], causal=True, cache=cache))  # 2 new steps after 3 cached: offset mask
    parts += [attn(x[:, i: i + 1], causal=True, cache=cache) for i in range(5, 7)]
    assert len(cache) == 7 and cache.keys.shape == (2, HEADS, 7, DIM // HEADS)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-6)


def test_attention_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)
    attn, cross = MultiHeadAttention(DIM, HEADS), MultiHeadAttention(DIM, HEADS, context_dim=CTX)
    with pytest.raises(ValueError, match=r"\(B, S, dim=32\)"):
        attn(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="takes no context"):
        attn(torch.randn(2, 5, DIM), torch.randn(2, 3, DIM))
    with pytest.raises(ValueError, match="context_dim=24"):
        cross(torch.randn(2, 5, DIM), torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="context_mask must be a bool"):
        cross(torch.randn(2, 5, DIM), torch.randn(2, 3, CTX), torch.ones(2, 3))
    with pytest.raises(ValueError, match="batch"):
        cross(torch.randn(2, 5, DIM), torch.randn(3, 3, CTX))


# -------------------------------------------------------------------------------------------- transformer


def test_sinusoidal_embedding_closed_form():
    emb = sinusoidal_embedding(torch.tensor([0, 1, 5]), 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([10_000 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb[2], torch.cat([torch.cos(5 * freqs), torch.sin(5 * freqs)]))
    assert sinusoidal_embedding(torch.zeros(2, 3), 6).shape == (2, 3, 6)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.arange(3), 7)


def test_transformer_is_causal_end_to_end():
    torch.manual_seed(0)
    model = Transformer(DIM, 2, HEADS, cross_attention_dim=CTX, causal=True)
    x, ctx = torch.randn(2, 6, DIM), torch.randn(2, 4, CTX)
    y = x.clone()
    y[:, 3] = torch.randn(2, DIM)
    out_x, out_y = model(x, ctx), model(y, ctx)
    torch.testing.assert_close(out_x[:, :3], out_y[:, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(out_x[:, 3:], out_y[:, 3:])


def test_transformer_cache_equals_full_pass():
    torch.manual_seed(0)
    model = Transformer(DIM, 2, HEADS, cross_attention_dim=CTX, causal=True).eval()
    x, ctx = torch.randn(2, 6, DIM), torch.randn(2, 4, CTX)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    cache = model.new_cache()
    steps = [model(x[:, :2], ctx, mask, cache=cache)] + [model(x[:, i: i + 1], ctx, mask, cache=cache)
                                                         for i in range(2, 6)]
    assert len(cache) == 6
    torch.testing.assert_close(torch.cat(steps, dim=1), model(x, ctx, mask), rtol=1e-5, atol=1e-5)


def test_adaptive_norm_starts_as_plain_layernorm():
    torch.manual_seed(0)
    plain = TransformerBlock(DIM, HEADS, cross_attention_dim=CTX, causal=False)
    ada = TransformerBlock(DIM, HEADS, cross_attention_dim=CTX, causal=False, adaptive_norm_dim=16)
    result = ada.load_state_dict(plain.state_dict(), strict=False)
    assert all(".to_scale_shift." in k for k in result.missing_keys)  # only the adaLN maps are new
    x, ctx, cond = torch.randn(2, 5, DIM), torch.randn(2, 3, CTX), torch.randn(2, 16)
    torch.testing.assert_close(ada(x, ctx, cond=cond), plain(x, ctx), rtol=0, atol=1e-6)
    # once the modulation is trained (non-zero), the condition changes the output
    torch.nn.init.normal_(ada.norm1.inner.to_scale_shift[1].weight)
    assert not torch.allclose(ada(x, ctx, cond=cond), ada(x, ctx, cond=cond + 1))


def test_adaptive_layernorm_formula_and_errors():
    torch.manual_seed(0)
    norm = AdaptiveLayerNorm(8, 4)
    torch.nn.init.normal_(norm.to_scale_shift[1].weight)
    x, c = torch.randn(2, 3, 8), torch.randn(2, 4)
    scale, shift = norm.to_scale_shift(c).chunk(2, -1)
    expected = F.layer_norm(x, (8,)) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(norm(x, c), expected)
    with pytest.raises(ValueError, match="cond_dim=4"):
        norm(x, torch.randn(2, 5))
    block = TransformerBlock(DIM, HEADS)
    with pytest.raises(ValueError, match="adaptive_norm_dim"):
        block(torch.randn(1, 2, DIM), cond=torch.randn(1, 4))
    with pytest.raises(ValueError, match="cross_attention_dim"):
        block(torch.randn(1, 2, DIM), torch.randn(1, 2, DIM))


# ---------------------------------------------------------------------------------------------- guidance


def test_cfg_mix_closed_form():
    cond, uncond = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, 2.0, 1.0])
    assert torch.equal(cfg_mix(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_mix(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_mix(cond, uncond, 3.0), torch.tensor([2.0, 2.0, -5.0]))
    with pytest.raises(ValueError, match="same shape"):
        cfg_mix(cond, uncond[:2], 2.0)


def test_drop_condition_rate_and_null_condition():
    mask = torch.ones(20_000, 3, dtype=torch.bool)
    dropped = drop_condition(mask, 0.1, generator=_gen(1))
    rows = ~dropped.any(dim=1)
    assert dropped[~rows].all()  # kept rows untouched
    assert abs(rows.float().mean().item() - 0.1) < 0.01  # binomial sd ≈ 0.002
    assert torch.equal(dropped, drop_condition(mask, 0.1, generator=_gen(1)))  # seeded
    assert torch.equal(drop_condition(mask, 0.0), mask) and not drop_condition(mask, 1.0).any()
    emb = torch.randn(1000, 2, 4) + 5
    out = drop_condition(emb, 0.5, generator=_gen(2))
    zero = (out == 0).flatten(1).all(1)
    assert torch.equal(out[~zero], emb[~zero]) and 0.4 < zero.float().mean() < 0.6
    assert not null_mask_like(mask).any() and null_mask_like(mask).shape == mask.shape
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_condition(mask, 1.5)


def test_null_condition_ignores_text_content():
    """All-masked text (what drop_condition produces) is one condition, whatever the embeddings hold."""
    torch.manual_seed(0)
    model = Transformer(DIM, 2, HEADS, cross_attention_dim=CTX, causal=True)
    x = torch.randn(2, 4, DIM)
    null = null_mask_like(torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(model(x, torch.randn(2, 3, CTX), null), model(x, torch.randn(2, 3, CTX), null),
                               rtol=0, atol=0)
