"""Load a Hugging Face ``transformers`` EnCodec (``EncodecModel``) into the course's :class:`Codec`.

EnCodec (Défossez et al. 2022) and the course codec are the same model: SEANet encoder → residual VQ →
SEANet decoder (:mod:`course_lib.codecs.seanet`, :mod:`course_lib.codecs.codec`). This module maps an
``EncodecConfig`` onto a :class:`CodecConfig` and every tensor of an ``EncodecModel`` onto the course
codec's, so the released checkpoints (``facebook/encodec_24khz``) run inside the course::

    from transformers import EncodecModel
    from course_lib.codecs.encodec_hf import codec_from_encodec, encodec_n_q

    hf = EncodecModel.from_pretrained("facebook/encodec_24khz")  # or pass the name/folder to codec_from_encodec
    codec = codec_from_encodec(hf)
    codes = codec.encode(wav, n_q=encodec_n_q(hf.config, 6.0))   # 6 kbps: 8 codebooks of 1024 at 75 frames/s
    wav_hat = codec.decode(codes)

What maps to what (``EncodecConfig`` → ``CodecConfig``): ``sampling_rate`` → ``sample_rate``,
``audio_channels`` → ``channels``, ``num_filters`` → ``n_filters``, ``hidden_size`` → ``dimension``,
``upsampling_ratios`` → ``ratios`` (both list the decoder's order; the encoder runs them reversed),
``num_residual_layers`` → ``n_residual_layers``, ``kernel_size``/``residual_kernel_size``/
``last_kernel_size`` → the same names, ``dilation_growth_rate`` → ``dilation_base``, ``compress`` →
``compress``, ``num_lstm_layers`` → ``lstm``, ``use_causal_conv`` → ``causal``, ``norm_type`` → ``norm``
(``weight_norm`` or ``time_group_norm``), ``pad_mode`` → ``pad_mode``, ``trim_right_ratio`` →
``trim_right_ratio``, ``use_conv_shortcut`` → ``true_skip = not use_conv_shortcut``, ``codebook_size`` →
``codebook_size``, and ``num_quantizers`` (from the largest of ``target_bandwidths``) → ``n_q``; the
converted codec also sets ``pad_input=False`` (EnCodec pads inside each convolution, not the clip first).
A bandwidth becomes a number of codebooks with :func:`encodec_n_q`, EnCodec's own rule.

Tensors: ``encoder.layers.i`` → ``encoder.model.i`` and ``decoder.layers.i`` → ``decoder.model.i`` (the
two stacks list their layers in the same order); a transposed convolution's ``conv`` is the course's
``convtr``; the weight-norm parametrisation is the same torch one, so its magnitude ``original0`` and
direction ``original1`` are copied as they are (older ``weight_g``/``weight_v`` names are renamed, and a
plain ``weight`` whose norm was removed is split back into magnitude and direction); ``shortcut`` convs,
LSTM weights and ``time_group_norm`` GroupNorms keep their names; the codebooks' ``embed`` → ``embedding``,
``embed_avg`` and ``cluster_size`` (the EMA state) → the same names, ``inited`` → ``initialized``.
Every course tensor must receive exactly one EnCodec tensor of the same shape and every EnCodec tensor must
be used; anything else raises ``ValueError`` naming the keys.

Deviations, and how they are handled:

* Input renormalisation (``normalize=True``, EnCodec 48 kHz: each chunk divided by its RMS, the scale kept
  beside the codes) and chunked encoding (``chunk_length_s``/``overlap``, decoded with a linear
  overlap-add) are wrapper behaviour the course's ``encode``/``decode`` do not have. They are refused with a
  ``ValueError``; ``network_only=True`` converts the networks anyway, and the caller then does the
  scaling/chunking (``codec.encode(x / scale)`` gives EnCodec's codes of a one-chunk clip).
* Interface: EnCodec's ``encode(x, bandwidth=b)`` returns codes ``(chunks, B, K, F)`` and defaults to the
  *smallest* bandwidth; the course's ``encode(x, n_q=K)`` returns ``(B, K, F)`` and defaults to all
  codebooks. EnCodec's ``decode`` gives ``F · hop`` samples, as the course's; both ``forward`` crop to ``T``.
* Bitrate: EnCodec rounds the frame rate up (``ceil(sampling_rate / hop)``) in its bandwidth arithmetic,
  :meth:`Codec.bitrate` does not; they differ only when ``hop`` does not divide the sample rate.
* Nearest code: EnCodec takes the argmax of ``-(‖x‖² − 2x·e + ‖e‖²)``, the course the argmin of
  ``‖e‖² − 2x·e``; the same choice except for float32 near-ties, which may break either way
  (:func:`course_lib.quantize.is_nearest` is the referee).
* Training state: EnCodec's EMA counts and sums are copied, so fine-tuning continues their averages; a model
  that was never trained has zero counts, and then the course's own start (counts of 1, sums = codebook) is
  used instead of dividing by zero. Quantizer training settings that ``EncodecConfig`` does not hold are set to
  EnCodec's (EMA decay 0.99, dead-code threshold 2, commitment weight 1, quantizer dropout on); change them
  with ``dataclasses.replace`` on the config and :func:`encodec_state_dict_to_course` if you need others.

``transformers`` is imported only when a function needs it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.codecs.seanet import PAD_MODES, SConvTranspose1d

__all__ = ["codec_config_from_encodec", "codec_from_encodec", "encodec_n_q", "encodec_state_dict_to_course"]

# EncodecConfig attribute -> CodecConfig field (use_conv_shortcut is negated into true_skip).
CONFIG_KEYS = {
    "sampling_rate": "sample_rate",
    "audio_channels": "channels",
    "num_filters": "n_filters",
    "hidden_size": "dimension",
    "upsampling_ratios": "ratios",
    "num_residual_layers": "n_residual_layers",
    "kernel_size": "kernel_size",
    "residual_kernel_size": "residual_kernel_size",
    "last_kernel_size": "last_kernel_size",
    "dilation_growth_rate": "dilation_base",
    "compress": "compress",
    "num_lstm_layers": "lstm",
    "use_causal_conv": "causal",
    "norm_type": "norm",
    "pad_mode": "pad_mode",
    "trim_right_ratio": "trim_right_ratio",
    "use_conv_shortcut": "true_skip",
    "codebook_size": "codebook_size",
    "target_bandwidths": "n_q",
}
ENCODEC_NORMS = ("weight_norm", "time_group_norm")
# Quantizer training settings that EncodecConfig does not hold: EnCodec's values (REFERENCE.md, audiocraft).
ENCODEC_TRAINING = dict(quantizer_dropout=True, commitment_weight=1.0, ema_decay=0.99, kmeans_init=True,
                        kmeans_iters=50, dead_code_threshold=2.0)


def _as_encodec_config(hf_config: Any) -> Any:
    if isinstance(hf_config, Mapping):
        from transformers import EncodecConfig

        return EncodecConfig.from_dict(dict(hf_config))
    return hf_config


def _refuse(key: str, value: Any, why: str) -> ValueError:
    return ValueError(f"EncodecConfig.{key}={value!r} cannot be represented by course_lib's Codec: {why}")


def codec_config_from_encodec(hf_config: Any, *, network_only: bool = False) -> CodecConfig:
    """The :class:`CodecConfig` of an ``EncodecConfig`` (or its ``config.json`` dict); see the module docstring.

    Raises ``ValueError`` naming the EnCodec key and value that the course codec cannot represent:
    ``normalize=True`` and ``chunk_length_s`` (unless ``network_only=True``), a ``norm_type`` or ``pad_mode``
    the course lacks, a ``codebook_dim`` other than ``hidden_size`` (EnCodec has no projection either), and any
    value the course's :meth:`CodecConfig.validate` rejects.
    """
    cfg = _as_encodec_config(hf_config)
    if not network_only:
        if cfg.normalize:
            raise _refuse("normalize", cfg.normalize,
                          "EnCodec divides each chunk by its RMS and returns the scale beside the codes, and the "
                          "course's encode/decode carry no scale. Pass network_only=True to convert the "
                          "encoder, quantizer and decoder anyway and apply the scale yourself.")
        if cfg.chunk_length_s is not None:
            raise _refuse("chunk_length_s", cfg.chunk_length_s,
                          "the course encodes a clip in one piece, EnCodec in overlapping chunks joined by a "
                          "linear overlap-add. Pass network_only=True to convert the networks and chunk "
                          "yourself.")
    if cfg.norm_type not in ENCODEC_NORMS:
        raise _refuse("norm_type", cfg.norm_type, f"the course supports {ENCODEC_NORMS}")
    if cfg.pad_mode not in PAD_MODES:
        raise _refuse("pad_mode", cfg.pad_mode, f"the course pads with one of {PAD_MODES}")
    codebook_dim = getattr(cfg, "codebook_dim", None)
    if codebook_dim is not None and codebook_dim != cfg.hidden_size:
        raise _refuse("codebook_dim", codebook_dim,
                      f"the course quantizes the latent directly, so codebook_dim must equal hidden_size "
                      f"({cfg.hidden_size})")
    n_q = int(cfg.num_quantizers)
    if n_q < 1:
        raise _refuse("target_bandwidths", list(cfg.target_bandwidths),
                      f"the largest bandwidth buys {n_q} codebooks; at least 1 is needed")

    values = {course: getattr(cfg, hf) for hf, course in CONFIG_KEYS.items() if course not in ("n_q", "true_skip")}
    values["ratios"] = tuple(int(r) for r in values["ratios"])
    values["trim_right_ratio"] = float(values["trim_right_ratio"])
    config = CodecConfig(**values, true_skip=not cfg.use_conv_shortcut, n_q=n_q, pad_input=False,
                         **ENCODEC_TRAINING)
    try:
        config.validate()
    except ValueError as err:
        match = re.match(r"model\.(\w+)", str(err))
        hf_key = next((hf for hf, course in CONFIG_KEYS.items() if match and course == match.group(1)), None)
        if hf_key is None:
            raise
        raise _refuse(hf_key, getattr(cfg, hf_key), str(err)) from err
    return config


def encodec_n_q(hf_config: Any, bandwidth: float) -> int:
    """Codebooks EnCodec uses at ``bandwidth`` kbps (one of ``target_bandwidths``): ``floor(bandwidth · 1000 /
    (log2(codebook_size) · ceil(sampling_rate / hop)))``, at least 1, at most ``num_quantizers`` (EnCodec's
    ``get_num_quantizers_for_bandwidth``); e.g. 24 kHz: 1.5 → 2, 3 → 4, 6 → 8, 12 → 16, 24 → 32."""
    cfg = _as_encodec_config(hf_config)
    bandwidths = [float(b) for b in cfg.target_bandwidths]
    if float(bandwidth) not in bandwidths:
        raise ValueError(f"bandwidth {bandwidth!r} kbps is not one of this model's target_bandwidths {bandwidths}")
    per_codebook = math.log2(cfg.codebook_size) * math.ceil(cfg.sampling_rate / math.prod(cfg.upsampling_ratios))
    return min(int(max(1, math.floor(bandwidth * 1000 / per_codebook))), int(cfg.num_quantizers))


_STACK = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_CODEBOOK = re.compile(r"^quantizer\.layers\.(\d+)\.codebook\.(embed|embed_avg|cluster_size|inited)$")
_CODEBOOK_NAMES = {"embed": "embedding", "embed_avg": "embed_avg", "cluster_size": "cluster_size",
                   "inited": "initialized"}


def _course_key(hf_key: str, codec: Codec) -> str | None:
    """The course key of one EnCodec state-dict key (before the plain-weight split), or None."""
    match = _CODEBOOK.match(hf_key)
    if match:
        return f"quantizer.layers.{match.group(1)}.{_CODEBOOK_NAMES[match.group(2)]}"
    match = _STACK.match(hf_key)
    if not match:
        return None
    part, index, rest = match.groups()
    try:
        layer = codec.get_submodule(f"{part}.model.{index}")
    except AttributeError:
        return None
    if isinstance(layer, SConvTranspose1d) and rest.startswith("conv."):
        rest = "convtr." + rest[len("conv."):]
    rest = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", rest)
    rest = re.sub(r"\.weight_v$", ".parametrizations.weight.original1", rest)
    return f"{part}.model.{index}.{rest}"


def encodec_state_dict_to_course(hf_state_dict: Mapping[str, torch.Tensor], codec: Codec) -> dict[str, torch.Tensor]:
    """Map an ``EncodecModel`` state dict onto ``codec``'s keys (the codec built from
    :func:`codec_config_from_encodec`); returns a dict for ``codec.load_state_dict(..., strict=True)``.

    Raises ``ValueError`` if an EnCodec tensor has no place in the codec, two land on one key, a shape differs,
    or a course tensor receives nothing: a dropped or misplaced weight cannot pass silently.
    """
    target = codec.state_dict()
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unused: list[str] = []

    def put(course_key: str, value: torch.Tensor, hf_key: str) -> None:
        if course_key in out:
            raise ValueError(f"EnCodec tensors {source[course_key]!r} and {hf_key!r} both map to {course_key!r}")
        if tuple(value.shape) != tuple(target[course_key].shape):
            raise ValueError(f"EnCodec tensor {hf_key!r} has shape {tuple(value.shape)} but the course's "
                             f"{course_key!r} has {tuple(target[course_key].shape)}")
        out[course_key], source[course_key] = value, hf_key

    for hf_key, value in hf_state_dict.items():
        key = _course_key(hf_key, codec)
        if key is None:
            unused.append(hf_key)
        elif key.endswith(".initialized"):
            put(key, torch.tensor(bool(value.reshape(-1)[0])), hf_key)
        elif key in target:
            put(key, value.detach(), hf_key)
        elif key.endswith(".weight") and key[: -len("weight")] + "parametrizations.weight.original0" in target:
            # a plain weight (weight norm removed) into a weight-normed conv: w = g · v / ‖v‖ with v = w, g = ‖w‖
            stem = key[: -len("weight")] + "parametrizations.weight."
            weight = value.detach()
            magnitude = torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.dim())), keepdim=True)
            put(stem + "original0", magnitude, hf_key)
            put(stem + "original1", weight, hf_key)
        else:
            unused.append(hf_key)
    if unused:
        raise ValueError(f"EnCodec tensors with no place in the course codec: {unused}")
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"no EnCodec tensor for the course codec's {missing}")

    for i in range(codec.config.n_q):  # a never-trained EnCodec has zero EMA counts: use the course's start
        prefix = f"quantizer.layers.{i}."
        if not bool((out[prefix + "cluster_size"] > 0).any()):
            out[prefix + "cluster_size"] = torch.ones_like(target[prefix + "cluster_size"])
            out[prefix + "embed_avg"] = out[prefix + "embedding"].clone()
    return out


def codec_from_encodec(model_or_path: Any, *, network_only: bool = False, **from_pretrained_kwargs) -> Codec:
    """A course :class:`Codec` (eval mode, float32, on the model's device) holding an EnCodec model's weights.

    ``model_or_path``: an ``EncodecModel``, or a name/folder for ``EncodecModel.from_pretrained`` (a local
    folder from ``save_pretrained``, a hub name such as ``"facebook/encodec_24khz"`` from the Hugging Face cache
    or, online, the hub); ``from_pretrained_kwargs`` (``revision``, ``local_files_only``, ``cache_dir``, ...) go
    to that call. ``network_only``: see :func:`codec_config_from_encodec`. The converted codec encodes to
    the same codes and decodes to the same audio as the EnCodec model (``tests/test_encodec_convert.py``).
    """
    from transformers import EncodecModel

    if isinstance(model_or_path, (str, os.PathLike)):
        model = EncodecModel.from_pretrained(os.fspath(model_or_path), **from_pretrained_kwargs)
    elif isinstance(model_or_path, EncodecModel):
        if from_pretrained_kwargs:
            raise TypeError(f"from_pretrained keyword arguments {sorted(from_pretrained_kwargs)} need a name or "
                            f"folder, not a model instance")
        model = model_or_path
    else:
        raise TypeError(f"codec_from_encodec expects an EncodecModel, a folder or a hub name, got "
                        f"{type(model_or_path).__name__}")
    config = codec_config_from_encodec(model.config, network_only=network_only)
    with torch.random.fork_rng(devices=[]):  # building draws random weights: leave the caller's seed stream alone
        codec = Codec(config)
    codec.load_state_dict(encodec_state_dict_to_course(model.state_dict(), codec), strict=True)
    param = next(iter(model.parameters()), None)
    if param is not None:
        codec.to(param.device)
    return codec.eval()
