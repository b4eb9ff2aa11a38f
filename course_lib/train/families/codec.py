"""``codec``: the RVQ waveform codec (EnCodec / SoundStream; AudioGen stage 1), optionally with its GAN.

Model: :class:`course_lib.codecs.codec.Codec`. Generator loss (EnCodec §3.4, audiocraft's compression solver;
weights from ``config/solver/compression/default.yaml``)::

    L_G = λ_t · mean|x − x̂| + λ_f · ℓ_f(x, x̂) + L_vq  [+ λ_adv · mean_k(−D_k(x̂)) + λ_feat · ℓ_feat]

with ℓ_f the multi-scale mel loss (:class:`course_lib.codecs.losses.MultiScaleMelLoss`), L_vq the residual
quantizer's commitment loss (already weighted by ``model.commitment_weight``), λ_t = ``loss.l1`` (0.1),
λ_f = ``loss.mel`` (2), λ_adv = ``loss.adv`` (4), λ_feat = ``loss.feat`` (4). audiocraft combines these
with a gradient balancer; here they are a plain weighted sum (a deviation, stated).

``model.adversarial: true`` adds the multi-scale STFT discriminator
(:class:`~course_lib.codecs.losses.MultiScaleSTFTDiscriminator`, audiocraft's 5 scales) and trains in two
phases per step (the engine's optimizer groups): the discriminator with the hinge loss (optimizer
``disc_optim``), then the codec with the loss above (optimizer ``optim``). The model is then a
:class:`CodecGAN` holding ``.codec`` and ``.discriminator``; :func:`codec_of` returns the codec either way.
The tiny config and the lesson's quick path leave it off (reconstruction losses only).

Evaluation: ``mel_distance`` (ℓ_f), ``si_sdr`` (dB), ``waveform_l1``, code ``perplexity``,
``mel_distance_unquantized`` (the decoder fed the continuous latent: the ceiling) and, for each
``n`` in ``eval.n_q_levels`` (default every 1..n_q), ``mel_distance_q{n}`` / ``si_sdr_q{n}`` decoded from the
first ``n`` codebooks; audio samples of the input and of the reconstructions at all and at 1 codebook.

Train it: ``python -m course_lib.train codec --config tiny train.run_dir=runs/codec_tiny``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.codecs.losses import (
    MSSPEC_N_FFTS,
    MSSTFTD_HOPS,
    MSSTFTD_N_FFTS,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    si_sdr,
    waveform_l1,
)
from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from course_lib.train.config import EvalConfig, OptimConfig, RunConfig
from course_lib.train.errors import ConfigError
from course_lib.train.families import register_family
from course_lib.train.families.base import Batch, EvalResult, Family, OptimizerGroup, unwrap_model
from course_lib.train.families.melgan import multi_resolution_stft_loss

NATS_TO_DB = 20.0 / math.log(10.0)

# 1. Configs ----------------------------------------------------------------------------------------------


@dataclass
class CodecModelConfig(CodecConfig):
    """The ``model`` section: the codec's architecture (:class:`CodecConfig`) plus the optional discriminator.

    ``adversarial`` adds the MS-STFT discriminator (``disc_filters`` channels, one scale per
    ``disc_n_ffts``/``disc_hop_lengths`` pair; audiocraft: 32 filters, n_fft 1024, 2048, 512, 256, 128 with
    hops n_fft / 4). :meth:`codec_config` is the part saved with the codec.
    """

    adversarial: bool = False
    disc_filters: int = 32
    disc_n_ffts: tuple[int, ...] = MSSTFTD_N_FFTS
    disc_hop_lengths: tuple[int, ...] = MSSTFTD_HOPS

    def codec_config(self) -> CodecConfig:
        """The :class:`CodecConfig` fields of this section."""
        names = {f.name for f in dataclasses.fields(CodecConfig)}
        return CodecConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class CodecLossConfig:
    """Loss weights (audiocraft: ``l1`` 0.1, ``mel`` (msspec) 2, ``adv`` 4, ``feat`` 4) and the multi-scale mel
    loss's scales (``mel_n_ffts``, hop n_fft / 4), bands (``mel_n_mels``, from ``mel_f_min`` Hz).

    ``autoencoder_warmup_steps`` = N > 0 (0 in EnCodec; the course config uses it) trains the first N steps
    without the quantizer: the encoder's latent goes straight to the decoder, and the codebooks are left
    alone. Their k-means initialisation then runs on latents that already describe the sound, which skips the
    long collapsed start (perplexity near 1, mel distance stuck) that a short CPU run otherwise spends a third
    of its steps in.

    Two extra reconstruction terms, 0 in EnCodec (the course's ``codec_v2`` uses them, as the course's Vocos
    does): ``mrmel`` × the log-mel L1 at ``mrmel_resolutions`` (``[n_fft, hop, n_mels]``; the first is the
    course front end), floored ``mrmel_top_db`` dB under the clip's peak like the course metric
    (:class:`course_lib.train.families.vocos.MultiResolutionMel`); ``stft`` × Parallel WaveGAN's
    multi-resolution STFT loss at ``stft_resolutions`` (``[n_fft, hop, win]``): its spectral convergence keeps
    loud partials loud, which a log-scale loss alone lets slip."""

    l1: float = 0.1
    mel: float = 2.0
    adv: float = 4.0
    feat: float = 4.0
    mel_n_ffts: tuple[int, ...] = MSSPEC_N_FFTS
    mel_n_mels: int = 64
    mel_f_min: float = 64.0
    autoencoder_warmup_steps: int = 0
    mrmel: float = 0.0
    mrmel_resolutions: list[list[int]] = field(default_factory=lambda: [[1024, 256, 80], [512, 128, 64],
                                                                        [2048, 512, 128]])
    mrmel_top_db: float | None = 80.0
    stft: float = 0.0
    stft_resolutions: list[list[int]] = field(default_factory=lambda: [[1024, 120, 600], [2048, 240, 1200],
                                                                       [512, 50, 240]])


@dataclass
class CodecEvalConfig(EvalConfig):
    """Evaluation settings: ``n_q_levels`` are the codebook counts scored separately (empty: 1..n_q);
    ``best_metric`` defaults to ``mel_distance``."""

    n_q_levels: tuple[int, ...] = ()
    best_metric: str = "mel_distance"


def _disc_optim() -> OptimConfig:
    return OptimConfig(lr=3e-4, betas=(0.5, 0.9), weight_decay=0.0, schedule="constant", grad_clip=0.0)


@dataclass
class CodecRunConfig(RunConfig):
    """The ``codec`` run config: shared sections plus ``model``, ``loss``, ``eval`` and ``disc_optim`` (the
    discriminator's optimizer, used only with ``model.adversarial``; audiocraft: Adam lr 3e-4, betas 0.5/0.9)."""

    model: CodecModelConfig = field(default_factory=CodecModelConfig)
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    eval: CodecEvalConfig = field(default_factory=CodecEvalConfig)
    disc_optim: OptimConfig = field(default_factory=_disc_optim)


# 2. The adversarial wrapper ------------------------------------------------------------------------------


@contextmanager
def _frozen_quantizer(codec: Codec):
    """Run the quantizer in eval mode (all codebooks, no EMA/k-means/restart updates), then restore it."""
    was = codec.quantizer.training
    codec.quantizer.eval()
    try:
        yield
    finally:
        codec.quantizer.train(was)


class CodecGAN(nn.Module):
    """A :class:`Codec` and its :class:`MultiScaleSTFTDiscriminator`, trained in two phases.

    ``forward(wav (B, 1, T), phase)`` does all a phase needs in one call (so DDP sees one forward):

    * ``"discriminator"``: the codec reconstructs ``wav`` without gradient (its quantizer frozen, so the
      codebooks are updated once per step, in the generator phase); returns ``real_logits``/``fake_logits``;
    * ``"generator"``: returns ``recon``, the quantizer output ``q``, ``fake_logits`` (with gradient to the
      codec) and the feature maps ``real_fmaps``/``fake_fmaps``.
    """

    PHASES = ("discriminator", "generator")

    def __init__(self, codec: Codec, discriminator: MultiScaleSTFTDiscriminator) -> None:
        super().__init__()
        self.codec = codec
        self.discriminator = discriminator

    def forward(self, wav: torch.Tensor, phase: str, quantize: bool = True) -> dict[str, Any]:
        if phase == "discriminator":
            with torch.no_grad(), _frozen_quantizer(self.codec):
                recon, _ = self.codec(wav, quantize=quantize)
            real_logits, _ = self.discriminator(wav)
            fake_logits, _ = self.discriminator(recon.detach())
            return {"real_logits": real_logits, "fake_logits": fake_logits}
        if phase == "generator":
            recon, q = self.codec(wav, quantize=quantize)
            fake_logits, fake_fmaps = self.discriminator(recon)
            with torch.no_grad():
                _, real_fmaps = self.discriminator(wav)
            return {"recon": recon, "q": q, "fake_logits": fake_logits, "real_fmaps": real_fmaps,
                    "fake_fmaps": fake_fmaps}
        raise ValueError(f"CodecGAN phase must be one of {self.PHASES}, got {phase!r}")


def codec_of(model: nn.Module) -> Codec:
    """The :class:`Codec` inside a trained ``codec`` model (itself, or a :class:`CodecGAN`'s ``.codec``)."""
    model = unwrap_model(model)
    if isinstance(model, CodecGAN):
        return model.codec
    if isinstance(model, Codec):
        return model
    raise TypeError(f"expected a Codec or CodecGAN, got {type(model).__name__}")


# 3. The family -------------------------------------------------------------------------------------------


@register_family
class CodecFamily(Family):
    """Builds :class:`Codec` (or :class:`CodecGAN`), trains it with L1 + multi-scale mel + commitment
    (+ hinge GAN and feature matching), evaluates mel distance, SI-SDR and quality per number of codebooks."""

    name = "codec"
    config_class = CodecRunConfig
    description = "SEANet + residual-VQ waveform codec (EnCodec/SoundStream, AudioGen stage 1)"

    def __init__(self) -> None:
        self._mel_losses: dict[tuple, MultiScaleMelLoss] = {}
        self._mrmel: dict[tuple, nn.Module] = {}

    def validate(self, config: CodecRunConfig) -> None:
        super().validate(config)
        m, loss = config.model, config.loss
        try:
            m.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for key in ("l1", "mel", "adv", "feat"):
            if getattr(loss, key) < 0:
                raise ConfigError(f"loss.{key}: weights must be >= 0, got {getattr(loss, key)}")
        if not loss.mel_n_ffts or any(n < 4 for n in loss.mel_n_ffts) or loss.mel_n_mels < 1:
            raise ConfigError(f"loss.mel_n_ffts must be window sizes >= 4 and loss.mel_n_mels >= 1, got "
                              f"{list(loss.mel_n_ffts)} and {loss.mel_n_mels}")
        samples = int(config.data.clip_seconds * config.data.sample_rate)
        need = {"the multi-scale mel loss (loss.mel_n_ffts)": max(loss.mel_n_ffts) // 2 + 1}
        if m.adversarial:
            if len(m.disc_n_ffts) != len(m.disc_hop_lengths) or not m.disc_n_ffts:
                raise ConfigError(f"model.disc_n_ffts and model.disc_hop_lengths need the same non-zero length, "
                                  f"got {list(m.disc_n_ffts)} and {list(m.disc_hop_lengths)}")
            if m.channels != 1:
                raise ConfigError("model.adversarial: the MS-STFT discriminator takes mono audio (model.channels=1)")
            need["the discriminator (model.disc_n_ffts)"] = max(m.disc_n_ffts)
            d = config.disc_optim
            if d.lr <= 0 or not all(0.0 <= b < 1.0 for b in d.betas) or d.grad_clip < 0 or d.weight_decay < 0:
                raise ConfigError(f"disc_optim: need lr > 0, betas in [0, 1), grad_clip >= 0, weight_decay >= 0; "
                                  f"got {d}")
            if d.grad_accum != config.optim.grad_accum:
                raise ConfigError(f"disc_optim.grad_accum ({d.grad_accum}) must equal optim.grad_accum "
                                  f"({config.optim.grad_accum}): both phases share the micro-batches")
        for key in ("mrmel", "stft"):
            if getattr(loss, key) < 0:
                raise ConfigError(f"loss.{key}: weights must be >= 0, got {getattr(loss, key)}")
        if loss.mrmel > 0:
            if not loss.mrmel_resolutions or any(len(r) != 3 or min(int(v) for v in r) <= 0
                                                 for r in loss.mrmel_resolutions):
                raise ConfigError(f"loss.mrmel_resolutions: need a list of [n_fft, hop, n_mels] > 0, got "
                                  f"{loss.mrmel_resolutions}")
            if loss.mrmel_top_db is not None and loss.mrmel_top_db <= 0:
                raise ConfigError(f"loss.mrmel_top_db: must be > 0 dB or null, got {loss.mrmel_top_db}")
            need["the multi-resolution mel loss (loss.mrmel_resolutions)"] = max(
                int(r[0]) for r in loss.mrmel_resolutions) // 2 + 1
        if loss.stft > 0:
            if not loss.stft_resolutions or any(len(r) != 3 or int(r[0]) < int(r[2]) or min(int(v) for v in r) <= 0
                                                for r in loss.stft_resolutions):
                raise ConfigError(f"loss.stft_resolutions: need a list of [n_fft, hop, win] with 0 < win <= n_fft, "
                                  f"got {loss.stft_resolutions}")
            need["the multi-resolution STFT loss (loss.stft_resolutions)"] = max(
                int(r[0]) for r in loss.stft_resolutions) // 2 + 1
        for what, n in need.items():
            if samples < n:
                raise ConfigError(f"data.clip_seconds={config.data.clip_seconds} gives {samples} samples, fewer "
                                  f"than the {n} that {what} needs")
        if loss.autoencoder_warmup_steps < 0:
            raise ConfigError(f"loss.autoencoder_warmup_steps: must be >= 0, got {loss.autoencoder_warmup_steps}")
        bad = [n for n in config.eval.n_q_levels if not 1 <= n <= m.n_q]
        if bad:
            raise ConfigError(f"eval.n_q_levels: every level must be in [1, model.n_q={m.n_q}], got {bad}")

    def metric_names(self, config: CodecRunConfig) -> set[str]:
        levels = set(config.eval.n_q_levels) or set(range(1, config.model.n_q + 1))
        return {"loss", "kbps", "perplexity", "mel_distance", "mel_distance_unquantized", "si_sdr", "waveform_l1",
                *(f"mel_distance_q{n}" for n in levels), *(f"si_sdr_q{n}" for n in levels)}

    def build_model(self, model_config: CodecModelConfig) -> nn.Module:
        codec = Codec(model_config.codec_config())
        if not model_config.adversarial:
            return codec
        disc = MultiScaleSTFTDiscriminator(model_config.disc_n_ffts, model_config.disc_hop_lengths,
                                           model_config.disc_filters)
        return CodecGAN(codec, disc)

    def optimizer_groups(self, model: nn.Module, config: CodecRunConfig) -> list[OptimizerGroup]:
        if isinstance(model, CodecGAN):
            return [OptimizerGroup("discriminator", model.discriminator, config.disc_optim, ema=False),
                    OptimizerGroup("generator", model.codec, config.optim)]
        return [OptimizerGroup("model", model, config.optim)]

    def mel_loss(self, config: CodecRunConfig, device: torch.device) -> MultiScaleMelLoss:
        """The multi-scale mel loss of ``config.loss`` on ``device`` (built once, then cached)."""
        lc = config.loss
        key = (config.model.sample_rate, tuple(lc.mel_n_ffts), lc.mel_n_mels, lc.mel_f_min, str(device))
        if key not in self._mel_losses:
            self._mel_losses[key] = MultiScaleMelLoss(config.model.sample_rate, lc.mel_n_ffts, lc.mel_n_mels,
                                                      lc.mel_f_min).to(device)
        return self._mel_losses[key]

    def _multi_resolution_mel(self, config: CodecRunConfig, device: torch.device) -> nn.Module:
        from course_lib.train.families.vocos import MultiResolutionMel

        lc = config.loss
        key = (config.model.sample_rate, tuple(tuple(int(v) for v in r) for r in lc.mrmel_resolutions), str(device))
        if key not in self._mrmel:
            self._mrmel[key] = MultiResolutionMel(config.model.sample_rate, lc.mrmel_resolutions).to(device)
        return self._mrmel[key]

    def _reconstruction(self, recon: torch.Tensor, audio: torch.Tensor, q: Any,
                        config: CodecRunConfig) -> tuple[torch.Tensor, dict[str, float]]:
        recon = recon.float()
        l1 = waveform_l1(recon, audio)
        mel = self.mel_loss(config, audio.device)(recon, audio)
        total = config.loss.l1 * l1 + config.loss.mel * mel + q.loss
        logs = {"l1": float(l1.detach()), "mel": float(mel.detach()), "vq": float(q.loss.detach())}
        lc = config.loss
        if lc.mrmel > 0:
            mr = self._multi_resolution_mel(config, audio.device)(recon, audio, lc.mrmel_top_db)
            total, logs["mrmel_db"] = total + lc.mrmel * mr, float(mr.detach()) * NATS_TO_DB
        if lc.stft > 0:
            sc, mag = multi_resolution_stft_loss(recon, audio, lc.stft_resolutions)
            total = total + lc.stft * (sc + mag)
            logs["stft_sc"], logs["stft_log_mag"] = float(sc.detach()), float(mag.detach())
        if q.metrics:  # empty while the quantizer is bypassed (warm-up)
            logs.update(perplexity=float(q.metrics["perplexity"]), dead_codes=float(q.metrics["dead_codes"]))
        return total, logs

    def loss_step(self, model: nn.Module, batch: Batch, config: CodecRunConfig,
                  phase: str | None = None, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        audio = batch["audio"].float()
        quantize = step is None or step >= config.loss.autoencoder_warmup_steps
        if phase is None:
            recon, q = model(audio, quantize=quantize)
            return self._reconstruction(recon, audio, q, config)
        out = model(audio, phase, quantize=quantize)
        if phase == "discriminator":
            loss = discriminator_hinge_loss(out["real_logits"], out["fake_logits"])
            return loss, {"d_hinge": float(loss.detach())}
        total, logs = self._reconstruction(out["recon"], audio, out["q"], config)
        adv = generator_hinge_loss(out["fake_logits"])
        feat = feature_matching_loss(out["real_fmaps"], out["fake_fmaps"])
        total = total + config.loss.adv * adv + config.loss.feat * feat
        logs.update({"g_adv": float(adv.detach()), "g_feat": float(feat.detach())})
        return total, logs

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: CodecRunConfig) -> EvalResult:
        codec = codec_of(model)
        n_q = codec.config.n_q
        levels = set(config.eval.n_q_levels) or set(range(1, n_q + 1))
        sums: dict[str, float] = {}
        n, audio_out = 0, {}
        for batch in batches:
            audio = batch["audio"].float()
            length = audio.shape[-1]
            mel_loss = self.mel_loss(config, audio.device)
            z = codec.encode_latent(audio)
            recon = {}
            metrics: dict[str, float] = {}
            ceiling = codec.decoder(z)[..., :length].float()  # no quantization: what the codebooks approach
            metrics["mel_distance_unquantized"] = float(mel_loss(ceiling, audio))
            for level in sorted(levels | {n_q}):
                q = codec.quantizer(z, level)
                recon[level] = codec.decoder(q.quantized)[..., :length].float()
                if level == n_q:
                    metrics["perplexity"] = float(q.metrics["perplexity"])
                    metrics["mel_distance"] = float(mel_loss(recon[level], audio))
                    metrics["si_sdr"] = float(si_sdr(recon[level], audio).mean())
                    metrics["waveform_l1"] = float(waveform_l1(recon[level], audio))
                if level in levels:
                    metrics[f"mel_distance_q{level}"] = float(mel_loss(recon[level], audio))
                    metrics[f"si_sdr_q{level}"] = float(si_sdr(recon[level], audio).mean())
            metrics["loss"] = config.loss.l1 * metrics["waveform_l1"] + config.loss.mel * metrics["mel_distance"]
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if not audio_out and config.eval.num_samples > 0:
                k = min(config.eval.num_samples, audio.shape[0])
                if 1 not in recon:
                    recon[1] = codec.decoder(codec.quantizer(z[:k], 1).quantized)[..., :length].float()
                for i in range(k):
                    audio_out[f"{i}_input"] = audio[i, 0].cpu()
                    audio_out[f"{i}_reconstruction"] = recon[n_q][i, 0].cpu()
                    if n_q > 1:
                        audio_out[f"{i}_reconstruction_1_codebook"] = recon[1][i, 0].cpu()
        result = {k: v / max(n, 1) for k, v in sums.items()}
        result["kbps"] = codec.bitrate() / 1000
        return EvalResult(metrics=result, audio=audio_out, sample_rate=codec.config.sample_rate)
