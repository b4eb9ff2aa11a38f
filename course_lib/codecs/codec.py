"""The RVQ waveform codec: SEANet encoder → residual vector quantizer → SEANet decoder (EnCodec, SoundStream).

This is AudioGen's stage 1 (Kreuk et al. 2023): audio at 16 kHz becomes ``K`` parallel streams of discrete
tokens at 50 frames/s that a language model can predict, and back. The model (Défossez et al. 2022,
"High Fidelity Neural Audio Compression"; Zeghidour et al. 2021, "SoundStream")::

    z   = Enc(x)                         x (B, 1, T)  →  z (B, D, F),  F = ceil(T / hop)
    ẑ   = Σ_{i<n_q} e_i[c_i],  c_i = argmin_k ‖r_i − e_i[k]‖²,  r_0 = z,  r_{i+1} = r_i − e_i[c_i]
    x̂   = Dec(ẑ)                         ẑ (B, D, F)  →  x̂ (B, 1, F · hop)  → cropped to T samples

with ``hop = prod(ratios)`` and a bitrate of ``frame_rate × n_q × log2(codebook_size)`` bits/s. The
quantizer is :class:`course_lib.quantize.ResidualVectorQuantizer` (EMA codebooks, k-means init, dead-code
restarts, straight-through on the summed output); training losses live in :mod:`course_lib.codecs.losses`.

Numbers (code: audiocraft ``config/model/encodec/default.yaml`` and ``encodec_large_nq4_s320.yaml``, the
model of ``config/solver/compression/encodec_audiogen_16khz.yaml``): AudioGen's released 16 kHz codec has
``n_filters=64``, ``dimension=128``, ``ratios=[8, 5, 4, 2]`` (hop 320, 50 frames/s), a 2-layer LSTM,
4 codebooks × 2048 entries (2.2 kbps), no quantizer dropout, non-causal convolutions with zero padding.
EnCodec 24 kHz uses ``n_filters=32`` and 32 codebooks × 1024 with quantizer dropout (bandwidths 1.5-24 kbps).

Causality: the course default is **non-causal** (``causal=False``), as audiocraft's 16/32 kHz codecs: every
frame sees samples on both sides, which buys quality for the same size and costs nothing here because the
course never streams. ``causal=True`` gives EnCodec 24 kHz's streaming variant (all padding on the left, a
unidirectional LSTM), where a latent frame depends only on past and present samples.

Deviations from the papers: no input renormalisation (audiocraft's ``renormalize: false`` for these
models); zero padding inside the network (audiocraft) rather than reflection (the ``encodec`` package);
inputs of any length are zero-padded on the right to a multiple of ``hop`` and the output is cropped back.

Options for EnCodec checkpoints (:func:`course_lib.codecs.encodec_hf.codec_from_encodec` sets them; the
defaults keep the course codec and the shipped ``codec_course`` weights, and old ``config.json`` files load
unchanged): ``true_skip=False`` (1×1 convolution shortcuts in the residual units), ``pad_mode="reflect"``,
``norm="time_group_norm"`` (EnCodec 48 kHz), ``trim_right_ratio`` (causal transposed convolutions), and
``pad_input=False``: the clip is not zero-padded to a multiple of ``hop`` first, every convolution pads its
own input instead (same frame count; the values differ only in the last frame of a clip whose length is not
a multiple of ``hop``). See :mod:`course_lib.codecs.seanet`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.codecs.istft_decoder import ISTFTDecoder
from course_lib.codecs.seanet import NORMS, PAD_MODES, SEANetDecoder, SEANetEncoder
from course_lib.quantize import QuantizerOutput, ResidualVectorQuantizer, bitrate

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class CodecConfig:
    """Architecture of :class:`Codec`. Defaults are the course's CPU-sized codec (16 kHz, 50 frames/s,
    4 × 256 codebooks = 1.6 kbps); ``codec_paper.yaml`` sets AudioGen's released codec (4 × 2048).

    Encoder/decoder (:mod:`course_lib.codecs.seanet`): ``n_filters`` channels after the first conv, doubled
    at each of the ``len(ratios)`` downsamplings; ``dimension`` latent channels per frame; ``lstm`` LSTM
    layers (0: none); ``causal`` convolutions; ``norm`` ``"weight_norm"`` or ``"none"``. Quantizer
    (:class:`~course_lib.quantize.ResidualVectorQuantizer`): ``n_q`` codebooks of ``codebook_size``
    entries, ``quantizer_dropout`` (a random 1..n_q stages per training batch), commitment weight
    ``commitment_weight`` (audiocraft: 1.0), EMA ``ema_decay`` (0.99), ``kmeans_init`` with ``kmeans_iters``
    (50), dead codes restarted under an EMA usage of ``dead_code_threshold`` hits per batch (audiocraft: 2,
    with 64 × 50 = 3200 frames per GPU batch; the course default is 0.5, because a CPU batch of 8 one-second
    clips holds 400 frames: at 2 nearly every code would be restarted at every step).

    EnCodec options, off by default (see :mod:`course_lib.codecs.seanet`): ``true_skip`` (False: 1×1
    convolution shortcuts in the residual units), ``pad_mode`` (one of ``PAD_MODES``), ``norm`` may also be
    ``"time_group_norm"``, ``trim_right_ratio`` (causal only), ``pad_input`` (False: no zero-padding of the
    clip to a multiple of ``hop`` before the encoder, as EnCodec).

    ``decoder``: ``"seanet"`` (EnCodec's, the default) or ``"istft"`` (a Vocos-style decoder at the frame rate,
    :class:`course_lib.codecs.istft_decoder.ISTFTDecoder`, a stated deviation; mono only) with
    ``decoder_dim``/``decoder_intermediate_dim``/``decoder_layers`` (its ConvNeXt backbone), ``decoder_n_fft``
    (0: 4 × hop) and ``decoder_phase_advance``.
    """

    sample_rate: int = 16_000
    channels: int = 1
    n_filters: int = 16
    dimension: int = 64
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    n_residual_layers: int = 1
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 7
    dilation_base: int = 2
    compress: int = 2
    lstm: int = 2
    causal: bool = False
    norm: str = "weight_norm"
    n_q: int = 4
    codebook_size: int = 256
    quantizer_dropout: bool = False
    commitment_weight: float = 1.0
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 50
    dead_code_threshold: float = 0.5
    true_skip: bool = True
    pad_mode: str = "constant"
    trim_right_ratio: float = 1.0
    pad_input: bool = True
    decoder: str = "seanet"
    decoder_dim: int = 256
    decoder_intermediate_dim: int = 768
    decoder_layers: int = 8
    decoder_n_fft: int = 0
    decoder_phase_advance: bool = True

    @property
    def hop_length(self) -> int:
        """Samples per latent frame: the product of ``ratios``."""
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        """Latent frames (token steps) per second: ``sample_rate / hop_length``."""
        return self.sample_rate / self.hop_length

    def validate(self) -> None:
        """Raise ``ValueError`` naming the ``model.*`` key that cannot work."""
        for key in ("sample_rate", "channels", "n_filters", "dimension", "kernel_size", "residual_kernel_size",
                    "last_kernel_size", "dilation_base", "compress", "n_q", "codebook_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{key}: must be a positive int, got {value!r}")
        if not self.ratios or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in self.ratios):
            raise ValueError(f"model.ratios: must be a non-empty list of positive ints, got {list(self.ratios)!r}")
        for key in ("n_residual_layers", "lstm", "kmeans_iters"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.{key}: must be >= 0, got {getattr(self, key)}")
        if self.codebook_size < 2:
            raise ValueError(f"model.codebook_size: must be >= 2 (1 entry carries no information), "
                             f"got {self.codebook_size}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm: must be one of {NORMS}, got {self.norm!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"model.pad_mode: must be one of {PAD_MODES}, got {self.pad_mode!r}")
        ratio = self.trim_right_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"model.trim_right_ratio: must be a number in [0, 1], got {ratio!r}")
        if ratio != 1.0 and not self.causal:
            raise ValueError(f"model.trim_right_ratio: {ratio} != 1.0 needs model.causal = true (a non-causal "
                             f"transposed convolution trims total // 2 on the right)")
        if self.decoder not in ("seanet", "istft"):
            raise ValueError(f"model.decoder: must be 'seanet' or 'istft', got {self.decoder!r}")
        if self.decoder == "istft":
            if self.channels != 1:
                raise ValueError(f"model.decoder: 'istft' makes mono audio, but model.channels = {self.channels}")
            for key in ("decoder_dim", "decoder_intermediate_dim", "decoder_layers"):
                if getattr(self, key) <= 0:
                    raise ValueError(f"model.{key}: must be > 0, got {getattr(self, key)}")
            if self.decoder_n_fft and self.decoder_n_fft < 2 * self.hop_length:
                raise ValueError(f"model.decoder_n_fft: must be 0 (4 x hop) or >= 2 x hop = {2 * self.hop_length}, "
                                 f"got {self.decoder_n_fft}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"model.ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.commitment_weight < 0 or self.dead_code_threshold < 0:
            raise ValueError(f"model.commitment_weight and model.dead_code_threshold must be >= 0, got "
                             f"{self.commitment_weight} and {self.dead_code_threshold}")

    @classmethod
    def from_dict(cls, data: dict) -> CodecConfig:
        """Build from a plain dict (e.g. ``config.json``); unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown CodecConfig keys {unknown}; known keys: {sorted(names)}")
        data = dict(data)
        if "ratios" in data:
            data["ratios"] = tuple(data["ratios"])
        return cls(**data)


class Codec(nn.Module):
    """EnCodec/SoundStream-style codec: audio ``(B, channels, T)`` ↔ codes ``(B, K, ceil(T / hop))``.

    * :meth:`encode` ``(B, C, T)`` → long codes ``(B, n_q, F)``, ``F = ceil(T / hop_length)``;
    * :meth:`decode` codes ``(B, K, F)`` (any ``K ≤ n_q``) → audio ``(B, C, F · hop_length)``;
    * :meth:`forward` ``(B, C, T)`` → ``(reconstruction (B, C, T), QuantizerOutput)`` for training: the
      quantizer's ``quantized`` (straight-through), ``codes``, commitment ``loss`` and ``metrics``.

    ``frame_rate`` (frames/s), ``hop_length`` (samples/frame) and ``receptive_field`` (samples seen by one
    frame of the encoder's conv stack) are properties; :meth:`bitrate` gives bits/s for ``n_q`` codebooks.
    In eval mode ``decode(encode(x))[..., :T]`` equals ``forward(x)[0]`` exactly.
    """

    def __init__(self, config: CodecConfig | None = None) -> None:
        super().__init__()
        config = config or CodecConfig()
        config.validate()
        self.config = config
        seanet = dict(channels=config.channels, dimension=config.dimension, n_filters=config.n_filters,
                      ratios=config.ratios, n_residual_layers=config.n_residual_layers,
                      kernel_size=config.kernel_size, residual_kernel_size=config.residual_kernel_size,
                      last_kernel_size=config.last_kernel_size, dilation_base=config.dilation_base,
                      compress=config.compress, lstm=config.lstm, causal=config.causal, norm=config.norm,
                      true_skip=config.true_skip, pad_mode=config.pad_mode)
        self.encoder = SEANetEncoder(**seanet)
        self.quantizer = ResidualVectorQuantizer(
            config.dimension, config.n_q, config.codebook_size, quantizer_dropout=config.quantizer_dropout,
            beta=config.commitment_weight, ema=True, decay=config.ema_decay,
            dead_code_threshold=config.dead_code_threshold, kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters)
        if config.decoder == "istft":
            self.decoder = ISTFTDecoder(config.dimension, config.hop_length,
                                        config.decoder_n_fft or 4 * config.hop_length, config.decoder_dim,
                                        config.decoder_intermediate_dim, config.decoder_layers,
                                        phase_advance=config.decoder_phase_advance)
            with torch.no_grad():  # the untrained latent follows the input, not the biases (istft_decoder)
                for module in self.encoder.modules():
                    if isinstance(module, nn.Conv1d) and module.bias is not None:
                        module.bias.zero_()
        else:
            self.decoder = SEANetDecoder(**seanet, trim_right_ratio=config.trim_right_ratio)

    # ---- arithmetic --------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Audio sample rate in Hz."""
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        """Samples per frame: ``prod(ratios)`` (320 for [8, 5, 4, 2])."""
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        """Frames (token steps) per second: ``sample_rate / hop_length`` (50 at 16 kHz with hop 320)."""
        return self.config.frame_rate

    @property
    def receptive_field(self) -> int:
        """Input samples one latent frame of the encoder's conv stack depends on (the LSTM adds unbounded
        context on top)."""
        return self.encoder.receptive_field

    def num_frames(self, num_samples: int) -> int:
        """Latent frames for ``num_samples`` samples: ``ceil(num_samples / hop_length)``."""
        return -(-int(num_samples) // self.hop_length)

    def bitrate(self, n_q: int | None = None) -> float:
        """Bits per second with the first ``n_q`` codebooks (default all): ``frame_rate · n_q ·
        log2(codebook_size)``; e.g. 50 × 4 × 11 = 2200 bps for AudioGen's codec."""
        n_q = self.config.n_q if n_q is None else n_q
        if isinstance(n_q, bool) or not isinstance(n_q, int) or not 1 <= n_q <= self.config.n_q:
            raise ValueError(f"n_q must be an int in [1, {self.config.n_q}], got {n_q!r}")
        return bitrate(self.frame_rate, n_q, self.config.codebook_size)

    # ---- checks ------------------------------------------------------------------------------------------

    def _check_audio(self, wav: torch.Tensor, sample_rate: int | None, who: str) -> None:
        c = self.config.channels
        if not isinstance(wav, torch.Tensor):
            raise TypeError(f"Codec.{who} expects a float tensor (B, {c}, T), got {type(wav).__name__}")
        if wav.dim() != 3 or wav.shape[1] != c:
            hint = " (add the channel axis: wav[:, None, :])" if wav.dim() == 2 and c == 1 else ""
            raise ValueError(f"Codec.{who} expects audio of shape (B, {c}, T) ({c} channel{'s' * (c > 1)}), "
                             f"got {tuple(wav.shape)}{hint}")
        if not wav.is_floating_point():
            raise TypeError(f"Codec.{who} expects float audio in [-1, 1], got dtype {wav.dtype}")
        if wav.shape[-1] == 0:
            raise ValueError(f"Codec.{who} got an empty clip (T = 0 samples)")
        if sample_rate is not None and sample_rate != self.config.sample_rate:
            raise ValueError(f"Codec.{who}: audio is at {sample_rate} Hz but this codec runs at "
                             f"{self.config.sample_rate} Hz; resample it first (course_lib.audio.resample)")

    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        if not self.config.pad_input:
            return wav
        extra = self.num_frames(wav.shape[-1]) * self.hop_length - wav.shape[-1]
        return F.pad(wav, (0, extra)) if extra else wav

    # ---- API ---------------------------------------------------------------------------------------------

    def encode_latent(self, wav: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Continuous latent (before quantization): ``(B, C, T)`` → ``(B, dimension, ceil(T / hop))``."""
        self._check_audio(wav, sample_rate, "encode_latent")
        return self.encoder(self._pad(wav))

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None, sample_rate: int | None = None) -> torch.Tensor:
        """Audio ``(B, C, T)`` → long codes ``(B, n_q, ceil(T / hop_length))`` (default: all codebooks).
        Pass ``sample_rate`` to have the rate checked."""
        self._check_audio(wav, sample_rate, "encode")
        return self.quantizer.encode(self.encoder(self._pad(wav)), n_q)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, K, F)`` with ``1 ≤ K ≤ n_q`` → audio ``(B, C, F · hop_length)``; fewer codebooks give
        the lower-bitrate reconstruction."""
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.is_floating_point():
            got = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"Codec.decode expects integer codes of shape (B, K, frames) with K <= "
                             f"{self.config.n_q}, got {got}")
        return self.decoder(self.quantizer.decode(codes))

    def forward(self, wav: torch.Tensor, n_q: int | None = None, sample_rate: int | None = None,
                quantize: bool = True) -> tuple[torch.Tensor, QuantizerOutput]:
        """Training/analysis pass: audio ``(B, C, T)`` → ``(reconstruction (B, C, T), QuantizerOutput)``.

        ``n_q`` fixes the number of codebooks (default: all, or random with quantizer dropout in training).
        In training mode the codebooks are updated (EMA, k-means init, dead-code restarts).
        ``quantize=False`` decodes the continuous latent instead (a plain autoencoder, the quantizer untouched:
        the quality ceiling the codebooks approach, and the course's warm-up before k-means init); the
        returned output then has ``quantized = z``, no codes (``(B, 0, frames)``) and a zero loss.
        """
        self._check_audio(wav, sample_rate, "forward")
        length = wav.shape[-1]
        z = self.encoder(self._pad(wav))
        if not quantize:
            codes = torch.zeros(z.shape[0], 0, z.shape[-1], dtype=torch.long, device=z.device)
            q = QuantizerOutput(quantized=z, codes=codes, loss=z.new_zeros(()))
            return self.decoder(z)[..., :length], q
        q = self.quantizer(z, n_q)
        recon = self.decoder(q.quantized)
        return recon[..., :length], q

    # ---- files -------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (weights and codebook buffers) and ``config.json`` into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> Codec:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors, nothing unpickled); eval mode."""
        from safetensors.torch import load_model

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder} does not hold a saved Codec ({CONFIG_FILE} and {WEIGHTS_FILE})")
        model = cls(CodecConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text())))
        load_model(model, str(folder / WEIGHTS_FILE))
        return model.eval()
