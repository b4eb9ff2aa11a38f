"""``mel_autoencoder``: a tiny 1-D conv autoencoder over log-mel, and THE TEMPLATE a new family copies.

The model squeezes a log-mel spectrogram ``(B, n_mels, frames)`` through a ``latent_dim``-channel
bottleneck (no downsampling in time) and rebuilds it; the loss is the L1 distance between the log-mels
(``course_lib.audio.log_mel``'s natural log, so ``loss * 20 / ln 10`` is the mean error in dB). Evaluation
turns the reconstructed mel back into audio with Griffin-Lim (``torchaudio``'s ``InverseMelScale`` then
``GriffinLim``) so you can hear what the bottleneck kept.

A family is four short pieces, in this order (copy this file and replace each):

1. ``MelAutoencoderConfig``: the model's own config dataclass (architecture only);
2. ``MelAutoencoder``: an ``nn.Module`` built from it, with ``save_pretrained``/``from_pretrained`` through
   safetensors + JSON;
3. ``MelAutoencoderRunConfig``: the run config, i.e. :class:`RunConfig` with ``model`` (and here ``eval``)
   typed to this family's sections;
4. ``MelAutoencoderFamily``: ``build_model``, ``loss_step`` and ``evaluate``, registered by name.

Train it: ``python -m course_lib.train mel_autoencoder --config tiny train.run_dir=runs/mae``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.audio import MelConfig, MelSpectrogram
from course_lib.train.config import EvalConfig, RunConfig, config_from_dict
from course_lib.train.errors import ConfigError
from course_lib.train.families import register_family
from course_lib.train.families.base import Batch, EvalResult, Family, unwrap_model

LOG_AMIN = 1e-5  # the floor of course_lib.audio.log_mel
NATS_TO_DB = 20.0 / math.log(10.0)


# 1. The model's config ------------------------------------------------------------------------------------


@dataclass
class MelAutoencoderConfig:
    """Architecture of :class:`MelAutoencoder`: mel front end (Hz, samples, bands) and conv sizes.

    ``channels`` is the width of the conv stacks, ``latent_dim`` the bottleneck's channels per frame
    (smaller than ``n_mels``, or there is nothing to learn), ``num_blocks`` residual blocks on each side.
    """

    sample_rate: int = 16_000
    n_fft: int = 512
    hop_length: int = 128
    n_mels: int = 40
    channels: int = 64
    latent_dim: int = 8
    kernel_size: int = 5
    num_blocks: int = 1
    dropout: float = 0.0

    def mel_config(self) -> MelConfig:
        """The course mel front end this model reads (magnitude mel, Slaney)."""
        return MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                         n_mels=self.n_mels)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the ``model.*`` key that cannot work."""
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels", "channels", "latent_dim", "kernel_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}: must be > 0, got {getattr(self, key)}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size: must be odd (same-length convs), got {self.kernel_size}")
        if self.num_blocks < 0:
            raise ConfigError(f"model.num_blocks: must be >= 0, got {self.num_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        try:
            self.mel_config()
        except ValueError as err:
            raise ConfigError(f"model: invalid mel front end: {err}") from None


# 2. The model ---------------------------------------------------------------------------------------------


class ResBlock1d(nn.Module):
    """``x + Conv(GELU(Conv(GELU(x))))`` over ``(B, channels, frames)``, length preserved."""

    def __init__(self, channels: int, kernel_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(nn.GELU(), nn.Conv1d(channels, channels, kernel_size, padding=pad), nn.GELU(),
                                 nn.Dropout(dropout), nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class MelAutoencoder(nn.Module):
    """Log-mel ``(B, n_mels, frames)`` → latent ``(B, latent_dim, frames)`` → log-mel ``(B, n_mels, frames)``.

    :meth:`features` computes the input from audio ``(B, 1, T)`` exactly as ``course_lib.audio.log_mel``
    does (``frames = 1 + T // hop_length``), with the filter bank as a (non-saved) buffer so it follows
    the model to the GPU. :meth:`to_audio` inverts a log-mel with Griffin-Lim.
    """

    def __init__(self, config: MelAutoencoderConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c, k, pad = config.channels, config.kernel_size, config.kernel_size // 2
        self.mel = MelSpectrogram(config.mel_config())
        self.encoder = nn.Sequential(
            nn.Conv1d(config.n_mels, c, k, padding=pad),
            *[ResBlock1d(c, k, config.dropout) for _ in range(config.num_blocks)],
            nn.GELU(),
            nn.Conv1d(c, config.latent_dim, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv1d(config.latent_dim, c, k, padding=pad),
            *[ResBlock1d(c, k, config.dropout) for _ in range(config.num_blocks)],
            nn.GELU(),
            nn.Conv1d(c, config.n_mels, k, padding=pad),
        )

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``(B, 1, T)``, ``(B, T)`` or ``(T,)`` at ``config.sample_rate`` → log-mel ``(B, n_mels, frames)``."""
        if audio.dim() == 3:
            if audio.shape[1] != 1:
                raise ValueError(f"MelAutoencoder expects mono audio (B, 1, T), got shape {tuple(audio.shape)}")
            audio = audio[:, 0]
        elif audio.dim() == 1:
            audio = audio[None]
        elif audio.dim() != 2:
            raise ValueError(f"expected audio (B, 1, T), (B, T) or (T,), got shape {tuple(audio.shape)}")
        return torch.log(self.mel(audio.float()).clamp_min(LOG_AMIN))

    def encode(self, log_mel: torch.Tensor) -> torch.Tensor:
        """``(B, n_mels, frames)`` → ``(B, latent_dim, frames)``."""
        if log_mel.dim() != 3 or log_mel.shape[1] != self.config.n_mels:
            raise ValueError(f"expected log-mel (B, {self.config.n_mels}, frames), got {tuple(log_mel.shape)}")
        return self.encoder(log_mel)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim, frames)`` → log-mel ``(B, n_mels, frames)``."""
        return self.decoder(latent)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Reconstruct a log-mel ``(B, n_mels, frames)``."""
        return self.decode(self.encode(log_mel))

    @torch.no_grad()
    def to_audio(self, log_mel: torch.Tensor, n_iter: int = 32, length: int | None = None) -> torch.Tensor:
        """Griffin-Lim: log-mel ``(B, n_mels, frames)`` → audio ``(B, T)`` (``T = length`` if given), through
        :func:`course_lib.vocoders.griffin_lim.griffin_lim` (filter-bank pseudo-inverse, zero initial phase)."""
        from course_lib.vocoders.griffin_lim import griffin_lim

        return griffin_lim(log_mel, self.config.mel_config(), n_iter=n_iter, length=length)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (the model config) into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> MelAutoencoder:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors; nothing unpickled)."""
        from safetensors.torch import load_model

        folder = Path(folder)
        config = config_from_dict(MelAutoencoderConfig, json.loads((folder / "config.json").read_text()))
        model = cls(config)
        load_model(model, str(folder / "model.safetensors"))
        return model.eval()


# 3. The run config ----------------------------------------------------------------------------------------


@dataclass
class MelAutoencoderEvalConfig(EvalConfig):
    """Evaluation settings, plus ``griffin_lim_iters`` for the audio samples."""

    griffin_lim_iters: int = 16


@dataclass
class MelAutoencoderRunConfig(RunConfig):
    """The ``mel_autoencoder`` run config: shared sections plus this family's ``model`` and ``eval``."""

    model: MelAutoencoderConfig = field(default_factory=MelAutoencoderConfig)
    eval: MelAutoencoderEvalConfig = field(default_factory=MelAutoencoderEvalConfig)


# 4. The family --------------------------------------------------------------------------------------------


@register_family
class MelAutoencoderFamily(Family):
    """Builds :class:`MelAutoencoder`, trains it with L1 on log-mel, evaluates with Griffin-Lim samples."""

    name = "mel_autoencoder"
    config_class = MelAutoencoderRunConfig
    description = "tiny 1-D conv autoencoder over log-mel (L1); the template for new families"

    def validate(self, config: MelAutoencoderRunConfig) -> None:
        super().validate(config)
        config.model.validate()
        if config.eval.griffin_lim_iters <= 0:
            raise ConfigError(f"eval.griffin_lim_iters: must be > 0, got {config.eval.griffin_lim_iters}")

    def metric_names(self, config: MelAutoencoderRunConfig) -> tuple[str, ...]:
        return ("loss", "mel_l1_db")

    def build_model(self, model_config: MelAutoencoderConfig) -> MelAutoencoder:
        return MelAutoencoder(model_config)

    def loss_step(self, model: nn.Module, batch: Batch, config: RunConfig) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad(), torch.autocast(batch["audio"].device.type, enabled=False):
            target = unwrap_model(model).features(batch["audio"])  # fp32 features, no gradient
        recon = model(target)  # through forward, so DDP syncs the gradients
        loss = F.l1_loss(recon.float(), target)
        return loss, {}

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: MelAutoencoderRunConfig) -> EvalResult:
        total, n, audio = 0.0, 0, {}
        for batch in batches:
            target = model.features(batch["audio"])
            recon = model(target)
            total, n = total + float(F.l1_loss(recon.float(), target)), n + 1
            if not audio and config.eval.num_samples > 0:
                k = min(config.eval.num_samples, recon.shape[0])
                length = batch["audio"].shape[-1]
                wavs = model.to_audio(recon[:k], n_iter=config.eval.griffin_lim_iters, length=length)
                for i in range(k):
                    audio[f"{i}_input"] = batch["audio"][i, 0].float().cpu()
                    audio[f"{i}_reconstruction"] = wavs[i].cpu()
        loss = total / max(n, 1)
        return EvalResult(metrics={"loss": loss, "mel_l1_db": loss * NATS_TO_DB}, audio=audio,
                          sample_rate=config.model.sample_rate)
