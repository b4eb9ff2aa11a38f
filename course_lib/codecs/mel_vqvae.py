"""The mel VQ-VAE of Diffsound's first stage: a log-mel spectrogram in, a small grid of discrete tokens out.

Diffsound (Yang et al. 2023) turns a 10-s, 22.05 kHz clip into an 80 × 848 log-mel "image", encodes it
with a 2-D conv encoder that halves both axes four times (16×), quantizes each of the 5 × 53 = 265
latent vectors to one of 256 codes, and decodes the token grid back to a mel (code:
yangdongchao/Text-to-sound-Synthesis ``Codebook/configs/caps_codebook.yaml``: ``ch: 128``,
``ch_mult: [1, 1, 2, 2, 4]``, ``num_res_blocks: 2``, attention at the 53-wide level, ``embed_dim: 256``,
``n_embed: 256``). The token decoder of lesson 06 then generates such grids from text.

This module builds the same shape of model at any size::

    log-mel (B, n_mels, frames) → normalise → (B, 1, n_mels, frames)   [padded to a multiple of 2^L]
      → Conv → L × [ResBlock × num_res_blocks, Downsample ×2]  → mid (ResBlock [+ attention] ResBlock)
      → z (B, embed_dim, H', W')  → VectorQuantizer → z_q  (codes (B, H', W'))
      → mirrored decoder (nearest-neighbour Upsample ×2 + Conv) → (B, n_mels, frames)  [cropped back]

with ``L = len(ch_mult) − 1`` and ``H' = ceil(n_mels / 2^L)``, ``W' = ceil(frames / 2^L)``. Any number of
frames works: the mel is padded with the log floor (silence) up to the downsampling multiple and the
output is cropped back. Loss: ``L = |x − x̂|₁ + L_vq`` (the VQ-VAE's reconstruction term plus
:class:`~course_lib.quantize.VectorQuantizer`'s β-commitment/codebook terms).

Deviations from Diffsound, stated plainly: Diffsound's codebook is SpecVQGAN's VQGAN, trained with L1
on the mel **plus** a perceptual loss (a pretrained audio classifier's features) and a patch-GAN hinge
loss switched on after 16k steps (code: ``specvqgan/modules/losses/vqperceptual.py``); here the loss is
L1 (or MSE) + VQ only, since no pretrained classifier can be downloaded and a GAN is lesson 03's topic.
Its quantizer is taming-transformers' learned codebook (``ema=False`` here), whose ``legacy`` loss puts β
on the codebook term rather than on the commitment term; this module follows the 2017 paper (β on the
commitment term). Normalisation: the model reads the course's natural-log mel and scales it with a fixed
affine map (``norm_offset``, ``norm_scale``) instead of SpecVQGAN's dB-to-[-1, 1] mapping.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.audio import MelConfig, MelSpectrogram
from course_lib.quantize import QuantizerOutput, VectorQuantizer
from course_lib.vocoders.griffin_lim import griffin_lim  # the course's one Griffin-Lim (re-exported)

LOG_AMIN = 1e-5  # floor of course_lib.audio.log_mel: log(1e-5) ≈ −11.5 is "silence"
LOG_FLOOR = math.log(LOG_AMIN)

__all__ = ["MelVQVAEConfig", "MelVQVAE", "reconstruction_loss", "griffin_lim", "LOG_FLOOR"]


# ------------------------------------------------------------------------------------------------ config


@dataclass
class MelVQVAEConfig:
    """Architecture of :class:`MelVQVAE`: its mel front end, conv sizes, and codebook.

    Front end (the :class:`~course_lib.audio.MelConfig` fields): ``sample_rate`` (Hz), ``n_fft``,
    ``hop_length`` (samples), ``n_mels``, ``f_min``/``f_max`` (Hz; ``None`` = Nyquist); magnitude mel.
    Network: ``channels`` base width, ``ch_mult`` width multiplier per level (``len − 1`` downsamplings by 2
    on both axes), ``num_res_blocks`` per level, ``attention`` at the bottleneck, ``embed_dim`` code vector
    size, ``dropout``. Codebook: ``codebook_size``, ``beta``, ``ema``/``decay``, ``dead_code_threshold``,
    ``kmeans_init`` (see :class:`~course_lib.quantize.VectorQuantizer`). ``recon_loss``: ``"l1"``
    (Diffsound's) or ``"mse"``. ``norm_offset``/``norm_scale``: the network sees
    ``(log_mel − norm_offset) / norm_scale``. Diffsound's values: 22050 Hz, 1024, 256, 80 mels,
    ``channels=128``, ``ch_mult=(1, 1, 2, 2, 4)``, ``num_res_blocks=2``, ``attention=True``,
    ``embed_dim=256``, ``codebook_size=256`` (``configs/mel_vqvae_paper.yaml``).
    """

    sample_rate: int = 16_000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None
    channels: int = 16
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    attention: bool = False
    embed_dim: int = 64
    dropout: float = 0.0
    codebook_size: int = 256
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    recon_loss: Literal["l1", "mse"] = "l1"
    norm_offset: float = -5.0
    norm_scale: float = 4.0

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        """Downsampling of both the mel-band and the frame axis: ``2 ** (len(ch_mult) - 1)``."""
        return 2 ** (len(self.ch_mult) - 1)

    def mel_config(self) -> MelConfig:
        """The course mel front end this model reads (magnitude mel, Slaney filter bank)."""
        return MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                         n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work (the message starts with its name)."""
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels", "channels", "embed_dim", "codebook_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"ch_mult: must be a non-empty list of positive ints, got {list(self.ch_mult)}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks: must be >= 0, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay: must be in [0, 1), got {self.decay}")
        if self.beta < 0 or self.dead_code_threshold < 0:
            raise ValueError(f"beta and dead_code_threshold: must be >= 0, got {self.beta}, "
                             f"{self.dead_code_threshold}")
        if self.recon_loss not in ("l1", "mse"):
            raise ValueError(f"recon_loss: expected 'l1' or 'mse', got {self.recon_loss!r}")
        if self.norm_scale <= 0:
            raise ValueError(f"norm_scale: must be > 0, got {self.norm_scale}")
        try:
            self.mel_config()
        except ValueError as err:
            raise ValueError(f"mel front end: {err}") from None

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (``ch_mult`` as a list)."""
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> MelVQVAEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown MelVQVAEConfig keys {unknown}; known: {sorted(names)}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------- layers


def _groups(channels: int) -> int:
    """Largest of 32, 16, ..., 1 that divides ``channels`` (GroupNorm groups)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class ResBlock2d(nn.Module):
    """``skip(x) + Conv3(Drop(SiLU(GN(Conv3(SiLU(GN(x)))))))`` on ``(B, c_in, H, W)`` → ``(B, c_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(_groups(c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(_groups(c_out), c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.net(x)


class AttnBlock2d(nn.Module):
    """Single-head self-attention over the ``H·W`` positions of ``(B, C, H, W)``, residual (as in VQGAN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Encoder2d(nn.Module):
    """``(B, 1, H, W)`` → ``(B, embed_dim, H / 2^L, W / 2^L)``; H and W must be multiples of ``2^L``."""

    def __init__(self, cfg: MelVQVAEConfig) -> None:
        super().__init__()
        c = cfg.channels
        layers: list[nn.Module] = [nn.Conv2d(1, c, 3, padding=1)]
        c_in = c
        for i, mult in enumerate(cfg.ch_mult):
            c_out = c * mult
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock2d(c_in, c_out, cfg.dropout))
                c_in = c_out
            if i < len(cfg.ch_mult) - 1:
                layers.append(nn.Conv2d(c_in, c_in, 3, stride=2, padding=1))  # halves both axes
        layers += [ResBlock2d(c_in, c_in, cfg.dropout)]
        if cfg.attention:
            layers += [AttnBlock2d(c_in), ResBlock2d(c_in, c_in, cfg.dropout)]
        layers += [nn.GroupNorm(_groups(c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, cfg.embed_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder2d(nn.Module):
    """``(B, embed_dim, H', W')`` → ``(B, 1, H'·2^L, W'·2^L)``: the encoder mirrored, nearest-neighbour upsampling."""

    def __init__(self, cfg: MelVQVAEConfig) -> None:
        super().__init__()
        c = cfg.channels
        c_in = c * cfg.ch_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.embed_dim, c_in, 3, padding=1), ResBlock2d(c_in, c_in, cfg.dropout)]
        if cfg.attention:
            layers += [AttnBlock2d(c_in), ResBlock2d(c_in, c_in, cfg.dropout)]
        for i, mult in reversed(list(enumerate(cfg.ch_mult))):
            c_out = c * mult
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock2d(c_in, c_out, cfg.dropout))
                c_in = c_out
            if i > 0:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c_in, c_in, 3, padding=1)]
        layers += [nn.GroupNorm(_groups(c_in), c_in), nn.SiLU(), nn.Conv2d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


# ----------------------------------------------------------------------------------------------- model


class MelVQVAE(nn.Module):
    """Log-mel ``(B, n_mels, frames)`` ⇄ token grid ``(B, H', W')`` with ``H' = ceil(n_mels / f)``,
    ``W' = ceil(frames / f)``, ``f = config.downsample_factor``.

    ``forward(log_mel)`` → ``(reconstruction (B, n_mels, frames), QuantizerOutput)``;
    ``encode(log_mel)`` → codes; ``decode(codes, frames=None)`` → log-mel; ``features(audio)`` → log-mel
    exactly as :func:`course_lib.audio.log_mel` computes it; ``from_audio(audio)`` = ``forward(features(audio))``;
    ``to_audio(log_mel)`` inverts a log-mel with Griffin-Lim; ``loss(log_mel)`` = reconstruction + VQ loss.
    The mel filter bank is a non-saved buffer, so the model follows ``.to(device)``.
    """

    def __init__(self, config: MelVQVAEConfig | None = None) -> None:
        super().__init__()
        config = config or MelVQVAEConfig()
        config.validate()
        self.config = config
        self.mel = MelSpectrogram(config.mel_config())
        self.encoder = Encoder2d(config)
        self.quantizer = VectorQuantizer(config.embed_dim, config.codebook_size, beta=config.beta, ema=config.ema,
                                         decay=config.decay, dead_code_threshold=config.dead_code_threshold,
                                         kmeans_init=config.kmeans_init)
        self.decoder = Decoder2d(config)

    # -- shapes ------------------------------------------------------------------------------------------
    def token_grid_shape(self, frames: int) -> tuple[int, int]:
        """``(H', W')`` of the token grid for a mel with ``frames`` frames."""
        f = self.config.downsample_factor
        return math.ceil(self.config.n_mels / f), math.ceil(frames / f)

    def _check_mel(self, log_mel: torch.Tensor) -> None:
        n = self.config.n_mels
        if not isinstance(log_mel, torch.Tensor) or log_mel.dim() != 3 or log_mel.shape[1] != n:
            shape = tuple(log_mel.shape) if isinstance(log_mel, torch.Tensor) else type(log_mel).__name__
            raise ValueError(f"MelVQVAE expects a log-mel of shape (B, n_mels={n}, frames), got {shape}")
        if log_mel.shape[-1] < 1:
            raise ValueError("MelVQVAE needs at least one frame")

    # -- front end ---------------------------------------------------------------------------------------
    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``(B, 1, T)``, ``(B, T)`` or ``(T,)`` at ``config.sample_rate`` → log-mel ``(B, n_mels, frames)``,
        ``frames = 1 + T // hop_length``, natural log floored at 1e-5 (as :func:`course_lib.audio.log_mel`)."""
        if not isinstance(audio, torch.Tensor):
            audio = torch.as_tensor(audio)
        if audio.dim() == 3:
            if audio.shape[1] != 1:
                raise ValueError(f"MelVQVAE expects mono audio (B, 1, T), got shape {tuple(audio.shape)}")
            audio = audio[:, 0]
        elif audio.dim() == 1:
            audio = audio[None]
        elif audio.dim() != 2:
            raise ValueError(f"expected audio (B, 1, T), (B, T) or (T,), got shape {tuple(audio.shape)}")
        return torch.log(self.mel(audio.float()).clamp_min(LOG_AMIN))

    # -- the three stages --------------------------------------------------------------------------------
    def encode_latent(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output ``(B, embed_dim, H', W')`` before quantization."""
        self._check_mel(log_mel)
        f = self.config.downsample_factor
        h, w = self.token_grid_shape(log_mel.shape[-1])
        x = (log_mel.float() - self.config.norm_offset) / self.config.norm_scale
        pad_value = (LOG_FLOOR - self.config.norm_offset) / self.config.norm_scale
        x = F.pad(x, (0, w * f - log_mel.shape[-1], 0, h * f - log_mel.shape[1]), value=pad_value)
        return self.encoder(x[:, None])

    def decode_latent(self, z_q: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Quantized latent ``(B, embed_dim, H', W')`` → log-mel ``(B, n_mels, frames)`` (default ``W'·f``)."""
        if z_q.dim() != 4 or z_q.shape[1] != self.config.embed_dim:
            raise ValueError(f"expected a latent (B, embed_dim={self.config.embed_dim}, H', W'), got "
                             f"{tuple(z_q.shape)}")
        y = self.decoder(z_q)[:, 0] * self.config.norm_scale + self.config.norm_offset
        frames = y.shape[-1] if frames is None else frames
        if not 1 <= frames <= y.shape[-1]:
            raise ValueError(f"frames={frames} must be in [1, {y.shape[-1]}] for a grid of width {z_q.shape[-1]}")
        return y[:, : self.config.n_mels, :frames]

    def encode(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(B, n_mels, frames)`` → token grid, long ``(B, H', W')``. No codebook update."""
        return self.quantizer.encode(self.encode_latent(log_mel))

    def decode(self, codes: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Token grid, long ``(B, H', W')`` → log-mel ``(B, n_mels, frames)`` (``frames`` defaults to ``W'·f``)."""
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
            raise ValueError(f"MelVQVAE.decode expects codes of shape (B, H', W'), got "
                             f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
        expected_h = self.token_grid_shape(1)[0]
        if codes.shape[1] != expected_h:
            raise ValueError(f"codes have {codes.shape[1]} rows but this model's grid has H'={expected_h} "
                             f"(n_mels={self.config.n_mels} / {self.config.downsample_factor})")
        return self.decode_latent(self.quantizer.decode(codes), frames)

    def forward(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Reconstruct ``log_mel`` ``(B, n_mels, frames)``: returns ``(reconstruction, vq_output)``; the
        reconstruction has the input's shape, ``vq_output.codes`` is ``(B, H', W')``. In training mode the
        codebook statistics are updated (see :class:`~course_lib.quantize.VectorQuantizer`)."""
        z = self.encode_latent(log_mel)
        vq = self.quantizer(z)
        return self.decode_latent(vq.quantized, log_mel.shape[-1]), vq

    def loss(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``reconstruction_loss(x̂, x) + vq.loss`` for a log-mel batch; returns ``(loss, parts)`` where
        ``parts`` has ``recon``, ``vq`` and the quantizer's metrics (detached)."""
        recon, vq = self(log_mel)
        rec = reconstruction_loss(recon, log_mel, self.config.recon_loss)
        parts = {"recon": rec.detach(), "vq": vq.loss.detach(), **vq.metrics}
        return rec + vq.loss, parts

    def from_audio(self, audio: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """``forward(features(audio))``: audio ``(B, 1, T)`` → ``(reconstructed log-mel, vq_output)``."""
        return self(self.features(audio))

    @torch.no_grad()
    def to_audio(self, log_mel: torch.Tensor, n_iter: int = 32, length: int | None = None) -> torch.Tensor:
        """Griffin-Lim inverse of a log-mel ``(B, n_mels, frames)`` → audio ``(B, T)`` (see :func:`griffin_lim`)."""
        return griffin_lim(log_mel, self.config.mel_config(), n_iter=n_iter, length=length)

    # -- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (weights + codebook statistics) and ``config.json`` into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> MelVQVAE:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors; nothing unpickled). Eval mode."""
        from safetensors.torch import load_model

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"{folder} is not a saved MelVQVAE (needs config.json and model.safetensors)")
        model = cls(MelVQVAEConfig.from_dict(json.loads((folder / "config.json").read_text())))
        load_model(model, str(folder / "model.safetensors"))
        return model.eval()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``"l1"``, Diffsound's) or squared (``"mse"``) error between two log-mels of equal shape,
    in nats (× 20/ln 10 ≈ 8.69 gives dB). Computed in float32."""
    if recon.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape")
    if kind == "l1":
        return F.l1_loss(recon.float(), target.float())
    if kind == "mse":
        return F.mse_loss(recon.float(), target.float())
    raise ValueError(f"kind: expected 'l1' or 'mse', got {kind!r}")
