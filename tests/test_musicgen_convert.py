"""transformers' MusicGen decoder loaded into the course's AudioLM: same logits, same greedy tokens (offline).

Everything is built from tiny configs with random weights (a 1-layer T5, a tiny EnCodec the composite model
needs to exist, a 2-layer decoder over 4 codebooks of 32 codes), so nothing is downloaded and the module runs in
seconds. The decoder's weights are re-drawn with a larger spread than transformers' init (std 0.02 makes every
logit nearly equal), so that the attention is peaked, greedy decoding is not one repeated token, and a misplaced
weight moves the logits far beyond the tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from course_lib.lm import AudioLM, AudioLMConfig, generate, lm_config_from_musicgen, lm_from_musicgen
from course_lib.lm.model import sinusoidal_embedding_t2t
from course_lib.nn.transformer import sinusoidal_embedding

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")

K, CARD, DIM, TEXT_DIM, LAYERS = 4, 32, 32, 24, 2
B, L, FRAMES = 2, 5, 6
ATOL = RTOL = 1e-5


def _tiny_config(**decoder_overrides):
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    t5 = T5Config(vocab_size=40, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8)
    # 8 kHz / hop 4 = 2000 frames/s, 5 bits per code: 40 kbps gives the 4 codebooks the decoder predicts.
    codec = EncodecConfig(target_bandwidths=[40.0], sampling_rate=8000, audio_channels=1, hidden_size=8,
                          num_filters=4, num_residual_layers=1, upsampling_ratios=[2, 2], codebook_size=CARD,
                          codebook_dim=8, num_lstm_layers=1)
    decoder = dict(vocab_size=CARD, hidden_size=DIM, ffn_dim=2 * DIM, num_hidden_layers=LAYERS, num_attention_heads=4,
                   num_codebooks=K, max_position_embeddings=64, pad_token_id=CARD, bos_token_id=CARD,
                   decoder_start_token_id=CARD)
    decoder.update(decoder_overrides)
    return MusicgenConfig(text_encoder=t5, audio_encoder=codec, decoder=MusicgenDecoderConfig(**decoder))


@torch.no_grad()
def _tiny_musicgen(seed: int = 0, **decoder_overrides):
    """A random MusicgenForConditionalGeneration, eval mode; decoder and text projection re-drawn (see top)."""
    from transformers import MusicgenForConditionalGeneration

    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(_tiny_config(**decoder_overrides)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    params = dict(model.decoder.named_parameters(prefix="decoder"))
    params.update(model.enc_to_dec_proj.named_parameters(prefix="enc_to_dec_proj"))
    for name, p in params.items():
        if "layer_norm" in name:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
        else:  # linear weights (and the projection's bias)
            scale = 3.0 if "lm_heads" in name else 1.5
            p.copy_(scale * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return model


@pytest.fixture(scope="module")
def pair():
    hf = _tiny_musicgen()
    return hf, lm_from_musicgen(hf)


def _text(hf, seed: int = 0):
    """Caption ids ``(B, L)``, their mask (item 1 padded after 3 tokens) and the T5 states ``(B, L, TEXT_DIM)``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (B, L), generator=gen)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 3:] = 0
    with torch.no_grad():
        states = hf.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return ids, mask, states


def _decoder_input(lm: AudioLM, seed: int = 0) -> torch.Tensor:
    """The model input ``(B, K, S)`` for random codes: delay-interleaved, special-padded, shifted right."""
    codes = torch.randint(0, CARD, (B, K, FRAMES), generator=torch.Generator().manual_seed(seed))
    return lm.shift_right(lm.pattern.interleave(codes, lm.special_id))


@torch.no_grad()
def _hf_logits(hf, inp, **kwargs) -> torch.Tensor:
    """transformers' logits for decoder input ``inp`` ``(B, K, S)`` → ``(B, K, S, CARD)``."""
    b, k, s = inp.shape
    out = hf(decoder_input_ids=inp.reshape(b * k, s), **kwargs)
    return out.logits.reshape(b, k, s, -1)


# ---- the config --------------------------------------------------------------------------------------------------


def test_config_maps_every_architectural_field(pair):
    hf, lm = pair
    cfg = lm.config
    assert (cfg.n_q, cfg.codebook_size, cfg.dim, cfg.num_layers, cfg.num_heads) == (K, CARD, DIM, LAYERS, 4)
    assert cfg.text_dim == TEXT_DIM  # the T5 width: enc_to_dec_proj is folded into the cross-attention
    assert (cfg.mlp_ratio, cfg.max_len, cfg.pattern) == (2.0, 64, "delay")
    assert (cfg.positional, cfg.activation, cfg.linear_bias) == ("sinusoidal_t2t", "gelu", False)
    assert cfg.special_id == hf.config.decoder.pad_token_id == hf.generation_config.decoder_start_token_id
    assert lm_config_from_musicgen(hf.config) == cfg == lm_config_from_musicgen(hf)
    assert lm_config_from_musicgen(hf.config.decoder).text_dim == DIM  # decoder alone: projected text


def test_t2t_positions_are_musicgens_table_bit_for_bit():
    from transformers.models.musicgen.modeling_musicgen import MusicgenSinusoidalPositionalEmbedding

    table = MusicgenSinusoidalPositionalEmbedding.get_embedding(64, DIM)
    ours = sinusoidal_embedding_t2t(torch.arange(64), DIM)
    assert torch.equal(ours, table)
    assert not torch.allclose(sinusoidal_embedding(torch.arange(64), DIM), table, atol=1e-3)


@pytest.mark.parametrize("overrides, key", [
    (dict(audio_channels=2), "audio_channels"),
    (dict(activation_function="quick_gelu"), "activation_function"),
    (dict(pad_token_id=0), "pad_token_id"),
    (dict(bos_token_id=3), "bos_token_id"),
    (dict(hidden_size=27, num_attention_heads=3), "hidden_size"),
])
def test_unsupported_configs_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        lm_config_from_musicgen(_tiny_config(**overrides))


def test_other_model_types_are_refused():
    from transformers import T5Config

    with pytest.raises(ValueError, match="model_type"):
        lm_config_from_musicgen(T5Config())
    with pytest.raises(TypeError, match="MusicgenForConditionalGeneration"):
        lm_from_musicgen(torch.nn.Linear(2, 2))


# ---- logits ------------------------------------------------------------------------------------------------------


def test_same_logits_for_codes_text_and_mask(pair):
    hf, lm = pair
    ids, mask, states = _text(hf)
    inp = _decoder_input(lm)
    want = _hf_logits(hf, inp, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        got = lm(inp, states, mask.bool())
    assert got.shape == want.shape == (B, K, FRAMES + K - 1, CARD)
    assert want.std() > 1.0  # peaked distributions: the tolerance below is tight relative to the logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_kv_cached_step_by_step_decoding_equals_the_full_forward(pair):
    hf, lm = pair
    ids, mask, states = _text(hf, seed=1)
    inp = _decoder_input(lm, seed=1)
    want = _hf_logits(hf, inp, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        full = lm(inp, states, mask.bool())
        cache = lm.new_cache()
        steps = [lm(inp[:, :, :3], states, mask.bool(), cache=cache)]  # a prefill of 3, then one at a time
        steps += [lm(inp[:, :, s: s + 1], states, mask.bool(), cache=cache) for s in range(3, inp.shape[2])]
    cached = torch.cat(steps, dim=2)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(cached, want, atol=ATOL, rtol=RTOL)


def test_null_condition_is_the_same_in_both(pair):
    """MusicGen's CFG null branch (zeroed T5 states and a zeroed mask, as ``generate`` builds it) gives the
    logits of the course's null condition (any text, an all-False mask): zero cross-attention in both."""
    hf, lm = pair
    _, mask, states = _text(hf, seed=2)
    inp = _decoder_input(lm, seed=2)
    zeros = torch.zeros_like(states)
    want = _hf_logits(hf, inp, encoder_outputs=(zeros,), attention_mask=torch.zeros_like(mask))
    with torch.no_grad():
        got = lm(inp, states, torch.zeros_like(mask, dtype=torch.bool))
        cond = lm(inp, states, mask.bool())
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert (got - cond).abs().max() > 0.1  # the text matters, so this test is not vacuous


def test_scale_embedding_is_ignored_by_transformers_and_by_the_conversion():
    hf = _tiny_musicgen(seed=3, scale_embedding=True)
    lm = lm_from_musicgen(hf)
    ids, mask, states = _text(hf, seed=3)
    inp = _decoder_input(lm, seed=3)
    with torch.no_grad():
        got = lm(inp, states, mask.bool())
    torch.testing.assert_close(got, _hf_logits(hf, inp, input_ids=ids, attention_mask=mask), atol=ATOL, rtol=RTOL)


def test_decoder_only_model_takes_projected_text(pair):
    hf, _ = pair
    lm = lm_from_musicgen(hf.decoder)
    assert lm.config.text_dim == DIM
    _, mask, states = _text(hf, seed=4)
    inp = _decoder_input(lm, seed=4)
    with torch.no_grad():
        projected = hf.enc_to_dec_proj(states)
        out = hf.decoder(input_ids=inp.reshape(B * K, -1), encoder_hidden_states=projected,
                         encoder_attention_mask=mask)
        got = lm(inp, projected, mask.bool())
    torch.testing.assert_close(got, out.logits.reshape(got.shape), atol=ATOL, rtol=RTOL)


# ---- greedy decoding with CFG --------------------------------------------------------------------------------------


@torch.no_grad()
def _hf_generate_codes(hf, ids, mask, scale: float, num_frames: int) -> torch.Tensor:
    """Codes ``(B, K, num_frames)`` from ``MusicgenForConditionalGeneration.generate`` (greedy), read where
    generate hands them to the codec (it returns audio)."""
    seen = {}
    decode = hf.audio_encoder.decode

    def record(audio_codes, *args, **kwargs):
        seen["codes"] = audio_codes.clone()  # (1, B, K, T)
        return SimpleNamespace(audio_values=torch.zeros(audio_codes.shape[1], 1, 1))

    hf.audio_encoder.decode = record
    try:
        hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=scale,
                    max_new_tokens=num_frames + K - 1)  # the bos column + S = T + K - 1 steps
    finally:
        hf.audio_encoder.decode = decode
    return seen["codes"][0]


@pytest.mark.parametrize("scale", [3.0, 1.0])
def test_greedy_tokens_equal_transformers_generate(pair, scale):
    hf, lm = pair
    ids, mask, states = _text(hf, seed=5)
    num_frames = 12
    want = _hf_generate_codes(hf, ids, mask, scale, num_frames)
    assert want.shape == (B, K, num_frames)
    assert len(want.unique()) > 4  # not one repeated token
    for use_cache in (True, False):
        got = generate(lm, states, mask.bool(), num_frames, top_k=1, cfg_scale=scale, use_cache=use_cache)
        assert torch.equal(got, want), (use_cache, got, want)


def test_guidance_changes_the_greedy_tokens(pair):
    hf, lm = pair
    _, mask, states = _text(hf, seed=5)
    guided = generate(lm, states, mask.bool(), 12, top_k=1, cfg_scale=3.0)
    plain = generate(lm, states, mask.bool(), 12, top_k=1, cfg_scale=1.0)
    assert not torch.equal(guided, plain)  # so the CFG comparison above tests CFG


# ---- the tests catch a wrong conversion ------------------------------------------------------------------------------


def _corruptions(state: dict[str, torch.Tensor]):
    """``(name, kind, tensor)``: each mapped tensor transposed (square matrices) or with its rows reversed, and
    zeroed. The cross-attention key bias is skipped: it adds ``q·b`` to every score of a query, which softmax
    removes, so no output depends on it (the converter still maps it exactly)."""
    for name, value in state.items():
        if name.endswith("cross_attn.k_proj.bias"):
            continue
        if value.dim() == 2 and value.shape[0] == value.shape[1]:
            yield name, "transposed", value.t().contiguous()
        else:
            yield name, "rows reversed", value.flip(0)
        yield name, "zeroed", torch.zeros_like(value)


def test_every_wrongly_mapped_weight_changes_the_logits(pair):
    """The equivalence test has teeth: dropping (zeroing), transposing or permuting any single mapped tensor of the
    converted model moves the logits far outside the tolerance."""
    hf, lm = pair
    ids, mask, states = _text(hf)
    inp = _decoder_input(lm)
    want = _hf_logits(hf, inp, input_ids=ids, attention_mask=mask)
    state = {k: v.clone() for k, v in lm.state_dict().items()}
    bad = AudioLM(lm.config).eval()
    checked = set()
    for name, kind, value in _corruptions(state):
        bad.load_state_dict({**state, name: value})
        with torch.no_grad():
            err = (bad(inp, states, mask.bool()) - want).abs().max().item()
        assert err > 1e-2, f"{name} {kind}: max |Δlogit| only {err:.2e}"
        checked.add(name)
    assert len(checked) == len(state) - LAYERS  # every tensor but the softmax-invariant key biases
    # and two swaps: the heads of codebooks 0 and 1, the two blocks
    swaps = {"heads.0.weight": state["heads.1.weight"], "heads.1.weight": state["heads.0.weight"]}
    swaps_blocks = {k.replace("blocks.0.", "blocks.X.").replace("blocks.1.", "blocks.0.").replace("blocks.X.",
                                                                                                  "blocks.1."): v
                    for k, v in state.items()}
    for swapped in ({**state, **swaps}, swaps_blocks):
        bad.load_state_dict(swapped)
        with torch.no_grad():
            assert (bad(inp, states, mask.bool()) - want).abs().max() > 1e-2


def test_course_default_positions_do_not_match(pair):
    """Without the ``sinusoidal_t2t`` option the converted weights give other logits."""
    hf, lm = pair
    ids, mask, states = _text(hf)
    inp = _decoder_input(lm)
    cfg = AudioLMConfig(**{**lm.config.to_dict(), "positional": "sinusoidal"})
    other = AudioLM(cfg).eval()
    other.load_state_dict(lm.state_dict())
    with torch.no_grad():
        err = (other(inp, states, mask.bool()) - _hf_logits(hf, inp, input_ids=ids, attention_mask=mask)).abs().max()
    assert err > 1e-2


def test_a_parameter_the_converter_does_not_know_is_refused_not_dropped():
    hf = _tiny_musicgen(seed=6)
    fc1 = hf.decoder.model.decoder.layers[1].fc1
    fc1.bias = torch.nn.Parameter(torch.ones(fc1.out_features))
    with pytest.raises(ValueError, match=r"layers\.1\.fc1\.bias"):
        lm_from_musicgen(hf)
    hf = _tiny_musicgen(seed=6)
    del hf.decoder.lm_heads[3]
    with pytest.raises(ValueError, match=r"lm_heads\.3"):
        lm_from_musicgen(hf)


# ---- files and options -------------------------------------------------------------------------------------------


def test_local_folder_loads_through_from_pretrained(pair, tmp_path):
    hf, lm = pair
    hf.save_pretrained(tmp_path / "musicgen")
    loaded = lm_from_musicgen(tmp_path / "musicgen", local_files_only=True)
    assert loaded.config == lm.config
    for name, value in lm.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_converted_model_saves_and_loads_with_its_options(pair, tmp_path):
    _, lm = pair
    back = AudioLM.from_pretrained(lm.save_pretrained(tmp_path / "lm"))
    assert back.config == lm.config
    assert "transformer.blocks.0.mlp.0.bias" not in back.state_dict()  # linear_bias=False
    assert "transformer.blocks.0.cross_attn.k_proj.bias" in back.state_dict()  # holds the folded W_k·b_proj


def test_configs_saved_before_the_options_still_load():
    shipped = Path(__file__).resolve().parents[1] / "course_lib" / "pretrained" / "audiogen_course" / "config.json"
    old = json.loads(shipped.read_text())
    assert not {"activation", "linear_bias", "layerdrop"} & set(old)
    cfg = AudioLMConfig.from_dict(old)
    assert (cfg.positional, cfg.activation, cfg.linear_bias, cfg.layerdrop) == ("sinusoidal", "gelu", True, 0.0)
    with pytest.raises(ValueError, match="activation"):
        AudioLM(AudioLMConfig(activation="tanh"))


def test_layerdrop_skips_blocks_in_training_only():
    torch.manual_seed(0)
    lm = AudioLM(AudioLMConfig(n_q=2, codebook_size=8, dim=16, num_layers=4, num_heads=2, text_dim=8, max_len=16,
                               layerdrop=0.5))
    plain = AudioLM(AudioLMConfig(**{**lm.config.to_dict(), "layerdrop": 0.0}))
    plain.load_state_dict(lm.state_dict())
    seq, text = torch.randint(0, 9, (1, 2, 5)), torch.randn(1, 3, 8)
    lm.eval()
    plain.eval()
    torch.testing.assert_close(lm(seq, text), plain(seq, text))
    lm.train()
    outs = [lm(seq, text) for _ in range(8)]
    assert any(not torch.allclose(o, outs[0]) for o in outs[1:])
