"""Load Hugging Face ``transformers`` MusicGen language models into the course's :class:`~course_lib.lm.AudioLM`.

MusicGen (Copet et al. 2023, "Simple and Controllable Music Generation") is the music sibling of AudioGen: the
same decoder-only transformer over the K codebooks of an EnCodec codec, with the delay pattern, cross-attention
to a frozen T5 text encoder and classifier-free guidance. ``transformers`` ships it as
``MusicgenForConditionalGeneration`` (T5 + EnCodec + decoder) and ``MusicgenForCausalLM`` (the decoder alone).
:func:`lm_from_musicgen` turns the decoder into an :class:`~course_lib.lm.AudioLM` whose logits are the same
(tested to ~1e-5 on random weights in ``tests/test_musicgen_convert.py``), so the course's sampler
(:func:`course_lib.lm.generate`: delay pattern, CFG, top-k, KV cache) runs a real MusicGen checkpoint::

    lm = lm_from_musicgen("facebook/musicgen-small")          # a hub name (online) or a local folder
    # text: the checkpoint's own T5 encoder output (B, L, 768), NOT projected; text_mask: its attention mask
    codes = generate(lm, text, text_mask, num_frames=250, top_k=250, cfg_scale=3.0)   # (B, 4, 250), 50 Hz

How the two architectures line up, and what differs (each difference is an :class:`AudioLMConfig` option that is
off for the course's own models, or is stated here):

* Tokens: K embedding tables of ``vocab_size + 1`` rows, summed; id ``vocab_size`` is both MusicGen's pad and
  its bos / decoder start token, i.e. the course's ``special_id = codebook_size``. The delay pattern of
  ``build_delay_pattern_mask`` (codebook k shifted by k, a bos column first, pad in the ragged corners) is the
  course's :class:`~course_lib.lm.DelayPattern` with :meth:`~course_lib.lm.AudioLM.shift_right`: both feed the
  same ids at every step. Configs whose pad / bos / decoder-start id is not ``vocab_size`` are refused.
* Positions: MusicGen's sinusoid uses frequencies ``10000^(−i/(half−1))`` (tensor2tensor's; cosines first);
  the course's default uses ``10000^(−i/half)``. → ``positional="sinusoidal_t2t"``.
* Blocks: both are pre-norm (LayerNorm, eps 1e-5) self-attention → cross-attention → MLP with residuals and a
  final LayerNorm; attention scaling ``head_dim^−½`` in both. MusicGen's linears (q/k/v/out, fc1/fc2, lm_heads)
  have **no bias** → ``linear_bias=False``. Its activation (``activation_function``, ``"gelu"`` in the
  released checkpoints) → ``activation`` (``gelu``, ``gelu_pytorch_tanh``/``gelu_new`` → ``gelu_tanh``,
  ``relu``, ``silu``/``swish``; any other is refused). ``ffn_dim`` → ``mlp_ratio = ffn_dim / hidden_size``.
* Text projection: the composite model projects the T5 output **once** (``enc_to_dec_proj``: ``W_p, b_p``,
  present when the text and decoder widths differ); the course projects inside every block's cross-attention.
  Both are affine maps, composed exactly here: ``W_k' = W_k·W_p``, ``b_k' = W_k·b_p`` (MusicGen's ``W_k`` has
  no bias), the same for V (computed in float64, then cast). So the converted model takes the **unprojected**
  text encoder output, ``text_dim = text_encoder.hidden_size``. A bare ``MusicgenForCausalLM`` has no
  projection: its ``text_dim`` is ``hidden_size`` and it takes already-projected states, K/V biases zero.
* Padding / null text: MusicGen multiplies the projected text by the attention mask and masks the padded keys;
  the course masks the keys only. Masked keys get zero weight, so the outputs agree. Classifier-free guidance:
  ``MusicgenForConditionalGeneration.generate(guidance_scale=s)`` appends a null branch of **zeroed** T5 states
  **and a zeroed attention mask**; the projected null text is then zero, the bias-free K/V are zero, and its
  cross-attention output is exactly zero, which is the course's null condition (an all-False text mask, see
  :mod:`course_lib.nn.guidance`). Both mix the logits as ``uncond + s·(cond − uncond)``, so the course's
  ``generate(..., cfg_scale=s)`` is MusicGen's ``generate(guidance_scale=s)`` (greedy: ``top_k=1`` here,
  ``do_sample=False`` there; tested token for token). (A caller who passes ``encoder_outputs`` to
  ``generate`` builds the null branch themselves; zero states *without* a mask are not the same null condition.)
* Not carried over, training only: MusicGen drops out the embedding sum and the MLP's hidden activations
  (``activation_dropout``) and uses a separate ``attention_dropout``; the course has one ``dropout`` on the
  residual branches and the attention weights. The converted config takes ``dropout = config.dropout``
  (override with ``dropout=``); ``layerdrop`` → ``layerdrop``. Eval-mode outputs do not depend on any of them.
* ``scale_embedding``: ``transformers``' ``MusicgenDecoder`` stores ``embed_scale`` but never multiplies by it,
  so the converted model does not scale either (tested with the flag on).
* Refused: stereo checkpoints (``audio_channels = 2``, their codebooks pair up in the delay pattern), MusicGen
  Melody (``model_type`` ``musicgen_melody``: it prepends the condition instead of cross-attending), and any
  parameter this module does not know (a checkpoint whose layout changed fails loudly, naming it).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from course_lib.lm.model import AudioLM, AudioLMConfig

__all__ = ["HF_ACTIVATIONS", "lm_config_from_musicgen", "lm_from_musicgen"]

# transformers' activation_function names → AudioLMConfig.activation. gelu_new is the tanh GELU written out
# by hand in transformers: equal to torch's tanh GELU up to float rounding.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "relu": "relu",
                  "silu": "silu", "swish": "silu"}

_MODEL_TYPES = ("musicgen", "musicgen_decoder")


def _split_config(config: Any) -> tuple[Any, int, bool]:
    """``(decoder_config, text_dim, has_projection)`` from a composite MusicgenConfig or a decoder config."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"model_type: expected one of {_MODEL_TYPES} (transformers' MusicGen), got {model_type!r}"
                         + ("; MusicGen Melody prepends its condition instead of cross-attending, which AudioLM "
                            "does not do" if str(model_type).startswith("musicgen_melody") else ""))
    if model_type == "musicgen_decoder":
        return config, config.hidden_size, False
    decoder, text_dim = config.decoder, config.text_encoder.hidden_size
    projected = text_dim != decoder.hidden_size and decoder.cross_attention_hidden_size is None
    return decoder, (text_dim if projected else decoder.hidden_size), projected


def lm_config_from_musicgen(config: Any, dropout: float | None = None) -> AudioLMConfig:
    """The :class:`AudioLMConfig` of a transformers MusicGen config (or model: its ``.config`` is used).

    ``config``: a ``MusicgenConfig`` (composite: ``text_dim`` is the text encoder's width, the text projection
    being folded into the cross-attention) or a ``MusicgenDecoderConfig`` (``text_dim = hidden_size``).
    ``dropout`` overrides the decoder's ``dropout`` (training only). Mapping: ``num_codebooks`` → ``n_q``,
    ``vocab_size`` → ``codebook_size``, ``hidden_size`` → ``dim``, ``num_hidden_layers`` → ``num_layers``,
    ``num_attention_heads`` → ``num_heads``, ``ffn_dim / hidden_size`` → ``mlp_ratio``,
    ``max_position_embeddings`` → ``max_len``, ``activation_function`` → ``activation``, ``layerdrop`` →
    ``layerdrop``; always ``pattern="delay"``, ``positional="sinusoidal_t2t"``, ``linear_bias=False``. A
    config the course cannot reproduce raises ``ValueError`` naming the key (see the module docstring).
    """
    config = getattr(config, "config", config)
    dec, text_dim, _ = _split_config(config)
    if getattr(dec, "audio_channels", 1) != 1:
        raise ValueError(f"audio_channels: only mono MusicGen (1) is supported, got {dec.audio_channels} (stereo "
                         "checkpoints interleave left/right codebooks with paired delays)")
    act = dec.activation_function
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"activation_function: {act!r} has no AudioLM equivalent; supported: {sorted(HF_ACTIVATIONS)}")
    card = dec.vocab_size
    start = getattr(config, "decoder_start_token_id", None)
    for key, value in (("pad_token_id", dec.pad_token_id), ("bos_token_id", dec.bos_token_id),
                       ("decoder_start_token_id", getattr(dec, "decoder_start_token_id", None)),
                       ("decoder_start_token_id", start)):
        if value is not None and value != card:
            raise ValueError(f"{key}: AudioLM's padding / start id is codebook_size = vocab_size = {card}, "
                             f"got {value}")
    dim, ffn = dec.hidden_size, dec.ffn_dim
    if dim % 2 or dim < 4:
        raise ValueError(f"hidden_size: must be even and >= 4 for the sinusoidal positions, got {dim}")
    mlp_ratio = ffn / dim
    if int(round(mlp_ratio * dim)) != ffn:
        raise ValueError(f"ffn_dim: {ffn} is not representable as mlp_ratio * hidden_size ({dim})")
    cfg = AudioLMConfig(n_q=dec.num_codebooks, codebook_size=card, dim=dim, num_layers=dec.num_hidden_layers,
                        num_heads=dec.num_attention_heads, text_dim=text_dim, max_len=dec.max_position_embeddings,
                        dropout=float(dec.dropout if dropout is None else dropout), pattern="delay",
                        mlp_ratio=mlp_ratio, positional="sinusoidal_t2t", activation=HF_ACTIVATIONS[act],
                        linear_bias=False, layerdrop=float(dec.layerdrop))
    try:
        cfg.validate()
    except ValueError as err:  # name the transformers key as well
        raise ValueError(f"MusicGen config not representable: {err}") from err
    return cfg


def _load(name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """``from_pretrained`` of the composite or the decoder-only class, whichever the folder / hub repo holds."""
    from transformers import AutoConfig, MusicgenForCausalLM, MusicgenForConditionalGeneration

    config = AutoConfig.from_pretrained(name_or_path, **{k: v for k, v in kwargs.items()
                                                         if k in ("revision", "local_files_only", "token",
                                                                  "cache_dir")})
    _split_config(config)  # refuses other model types before loading any weights
    cls = MusicgenForConditionalGeneration if config.model_type == "musicgen" else MusicgenForCausalLM
    return cls.from_pretrained(name_or_path, **kwargs)


def _musicgen_tensors(model: Any) -> tuple[Any, Any, dict[str, Tensor]]:
    """``(config, causal_lm, named)``: the config, the ``MusicgenForCausalLM`` and its parameters by name
    (plus ``enc_to_dec_proj.*`` for a composite model)."""
    from transformers import MusicgenForCausalLM, MusicgenForConditionalGeneration

    if isinstance(model, MusicgenForConditionalGeneration):
        causal = model.decoder
        named = {f"decoder.{n}": p for n, p in causal.named_parameters()}
        proj = getattr(model, "enc_to_dec_proj", None)
        if proj is not None:
            named.update({f"enc_to_dec_proj.{n}": p for n, p in proj.named_parameters()})
        return model.config, causal, named
    if isinstance(model, MusicgenForCausalLM):
        return model.config, model, {f"decoder.{n}": p for n, p in model.named_parameters()}
    raise TypeError(f"lm_from_musicgen expects a MusicgenForConditionalGeneration, a MusicgenForCausalLM, a local "
                    f"folder or a hub name, got {type(model).__name__}")


@torch.no_grad()
def lm_from_musicgen(model_or_path: Any, dropout: float | None = None, **from_pretrained_kwargs: Any) -> AudioLM:
    """An :class:`AudioLM` (float32, eval mode, on the CPU) with the weights of a transformers MusicGen decoder.

    ``model_or_path``: a ``MusicgenForConditionalGeneration`` or ``MusicgenForCausalLM`` instance, or a local
    folder / hub name given to their ``from_pretrained`` (with ``from_pretrained_kwargs``, e.g.
    ``local_files_only=True``; a hub name downloads the whole checkpoint, text encoder and codec included).
    The config comes from :func:`lm_config_from_musicgen` (``dropout`` as there). Every decoder weight is
    mapped (the text projection folded into each block's cross-attention keys and values, see the module
    docstring); a MusicGen parameter left unmapped or an AudioLM parameter left unfilled raises
    ``ValueError``. Text input of the result: the composite's text encoder output ``(B, L, text_hidden)``,
    unprojected, with its attention mask as a bool ``text_mask``.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        model_or_path = _load(model_or_path, **from_pretrained_kwargs)
    config, causal, named = _musicgen_tensors(model_or_path)
    cfg = lm_config_from_musicgen(config, dropout=dropout)
    if "enc_to_dec_proj.weight" not in named and cfg.text_dim != cfg.dim:
        raise ValueError(f"the model has no enc_to_dec_proj but its text width {cfg.text_dim} differs from "
                         f"hidden_size {cfg.dim}")
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in named:
            raise ValueError(f"MusicGen parameter {name!r} not found; the checkpoint's layout is not the one this "
                             "converter knows")
        used.add(name)
        return named[name].detach().to("cpu", torch.float64)

    dec = "decoder.model.decoder"
    state: dict[str, Tensor] = {}
    for k in range(cfg.n_q):
        state[f"embeddings.{k}.weight"] = take(f"{dec}.embed_tokens.{k}.weight")
        state[f"heads.{k}.weight"] = take(f"decoder.lm_heads.{k}.weight")
    if "enc_to_dec_proj.weight" in named:
        w_p, b_p = take("enc_to_dec_proj.weight"), take("enc_to_dec_proj.bias")  # (dim, text_dim), (dim,)
    else:
        w_p, b_p = torch.eye(cfg.dim, dtype=torch.float64), torch.zeros(cfg.dim, dtype=torch.float64)
    for i in range(cfg.num_layers):
        src, dst = f"{dec}.layers.{i}", f"transformer.blocks.{i}"
        for hf_norm, norm in (("self_attn_layer_norm", "norm1"), ("encoder_attn_layer_norm", "norm2"),
                              ("final_layer_norm", "norm3")):
            for p in ("weight", "bias"):
                state[f"{dst}.{norm}.inner.{p}"] = take(f"{src}.{hf_norm}.{p}")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{dst}.self_attn.{proj}.weight"] = take(f"{src}.self_attn.{proj}.weight")
        for proj in ("q_proj", "out_proj"):
            state[f"{dst}.cross_attn.{proj}.weight"] = take(f"{src}.encoder_attn.{proj}.weight")
        for proj in ("k_proj", "v_proj"):  # fold the text projection: W' = W·W_p, b' = W·b_p
            w = take(f"{src}.encoder_attn.{proj}.weight")
            state[f"{dst}.cross_attn.{proj}.weight"] = w @ w_p
            state[f"{dst}.cross_attn.{proj}.bias"] = w @ b_p
        state[f"{dst}.mlp.0.weight"] = take(f"{src}.fc1.weight")
        state[f"{dst}.mlp.2.weight"] = take(f"{src}.fc2.weight")
    for p in ("weight", "bias"):
        state[f"transformer.norm.inner.{p}"] = take(f"{dec}.layer_norm.{p}")
    unused = sorted(set(named) - used)
    if unused:
        raise ValueError(f"MusicGen parameters with no place in AudioLM (the converter would drop them): {unused}")
    lm = AudioLM(cfg)
    expected = lm.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"AudioLM parameters left unfilled: {missing}; mapped names AudioLM lacks: {extra}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(f"{name}: MusicGen gives shape {tuple(value.shape)}, AudioLM expects "
                             f"{tuple(expected[name].shape)}")
    lm.load_state_dict({name: value.to(torch.float32) for name, value in state.items()}, strict=True)
    return lm.eval()
