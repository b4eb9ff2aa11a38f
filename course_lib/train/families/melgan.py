"""``melgan``: the MelGAN vocoder (Kumar et al. 2019) trained by the engine as a two-optimizer GAN.

Every optimizer step has two phases on the same random ``gan.segment_samples``-sample crops (8192 in the
paper; :meth:`MelGANFamily.prepare_batch` cuts them from the ``data.clip_seconds`` clips):

1. ``discriminator``: the hinge loss ``Σ_k E[max(0, 1 − D_k(x))] + E[max(0, 1 + D_k(G(s)))]`` on real audio
   ``x`` and generated audio ``G(s)`` (no gradient into the generator); Adam on ``disc_optim``;
2. ``generator``: ``−E[D_k(G(s))] + λ_fm · L_FM + λ_mel · |log_mel(G(s)) − s|₁`` (``gan.lambda_fm`` = 10 in
   the paper; ``gan.lambda_mel`` = 0 in the paper, > 0 in the course configs, as HiFi-GAN adds); Adam on
   ``optim``. The EMA (``train.ema_decay``) averages the generator only. Options beyond the paper (0 there):
   ``gan.lambda_sc`` adds :func:`spectral_convergence` on the mel, ``gan.lambda_stft`` Parallel WaveGAN's
   :func:`multi_resolution_stft_loss` on the waveform.

With ``gan.disc_start_step`` = N > 0 (the course config; 0 in the paper) the first N steps train the generator
on the mel loss alone and skip the discriminator (the engine's ``OptimizerGroup.start_step``), as Parallel
WaveGAN warms up its generator: those steps are cheaper (no discriminator; about 0.7 of a GAN step in the
course config on a CPU) and give the GAN a generator that already follows the mel.

Evaluation: on held-out clips, the course's log-mel distance (:func:`course_lib.metrics.log_mel_distance_db`:
mean |Δ log-mel| in dB, floored 80 dB under each clip's peak) between each clip and the audio the vocoder
makes from its log-mel, for MelGAN (``mel_l1_db``, the ``best`` metric) and for the Griffin-Lim baseline
(``griffin_lim_mel_l1_db``), plus audio samples (real, MelGAN, Griffin-Lim).

Configs: ``paper`` (22.05 kHz, hop 256, 80 mels, Adam 1e-4 (0.5, 0.9), λ_fm = 10, GPU), ``course`` (16 kHz,
the course's mel front end, sized for about 45 minutes on a laptop CPU), ``tiny`` (seconds, for the tests)::

    python -m course_lib.train melgan --config course train.run_dir=runs/melgan
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.metrics.spectral import log_mel_distance_db
from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from course_lib.train.config import EvalConfig, OptimConfig, RunConfig
from course_lib.train.data import segment_samples
from course_lib.train.errors import ConfigError
from course_lib.train.families import register_family
from course_lib.train.families.base import Batch, EvalResult, Family, OptimizerGroup, unwrap_model
from course_lib.vocoders.griffin_lim import GriffinLimVocoder
from course_lib.vocoders.melgan import MelGAN, MelGANConfig

NATS_TO_DB = 20.0 / math.log(10.0)
PWG_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))  # Parallel WaveGAN's (n_fft, hop, win)


@dataclass
class MelGANLossConfig:
    """GAN training settings: crop length in samples, feature-matching weight, optional mel-loss weight,
    ``mel_top_db`` (None: the mel loss compares log-mels down to their 1e-5 floor, as HiFi-GAN; a number:
    both are clamped that many dB under the clip's peak first, the course metric's floor), ``lambda_sc`` (the
    weight of :func:`spectral_convergence`, 0 in the paper),
    ``lambda_stft`` (the weight of :func:`multi_resolution_stft_loss`, Parallel WaveGAN's auxiliary loss on
    the linear STFT at ``stft_resolutions`` ``[n_fft, hop, win]``; 0 in the paper), and
    ``disc_start_step``: optimizer steps during which the generator trains on the mel loss alone and the
    discriminator waits (0 in the paper; Parallel WaveGAN-style warm-up, cheap steps for a CPU run)."""

    segment_samples: int = 8192
    lambda_fm: float = 10.0
    lambda_mel: float = 0.0
    mel_top_db: float | None = None
    lambda_sc: float = 0.0
    lambda_stft: float = 0.0
    stft_resolutions: list[list[int]] = field(default_factory=lambda: [list(r) for r in PWG_RESOLUTIONS])
    disc_start_step: int = 0


@dataclass
class MelGANEvalConfig(EvalConfig):
    """Evaluation settings: the best checkpoint is picked by the MelGAN mel distance; Griffin-Lim iterations
    of the baseline."""

    best_metric: str = "mel_l1_db"
    griffin_lim_iters: int = 32


def _paper_optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, betas=(0.5, 0.9), weight_decay=0.0, schedule="constant", grad_clip=0.0)


@dataclass
class MelGANRunConfig(RunConfig):
    """The ``melgan`` run config: ``model`` (architecture), ``gan`` (losses, crops), ``optim`` (generator),
    ``disc_optim`` (discriminator), and the shared ``data``/``train``/``eval`` sections."""

    model: MelGANConfig = field(default_factory=MelGANConfig)
    gan: MelGANLossConfig = field(default_factory=MelGANLossConfig)
    optim: OptimConfig = field(default_factory=_paper_optim)
    disc_optim: OptimConfig = field(default_factory=_paper_optim)
    eval: MelGANEvalConfig = field(default_factory=MelGANEvalConfig)


def mel_l1(model: MelGAN, audio: torch.Tensor, log_mel: torch.Tensor, top_db: float | None = None) -> torch.Tensor:
    """Mean L1 (nats) between ``log_mel`` ``(B, n_mels, frames)`` and the log-mel of ``audio`` ``(B, 1, T)``.

    With ``top_db``, both are first clamped at ``top_db`` decibels under each target clip's loudest bin (as
    :func:`course_lib.metrics.log_mel_distance_db` does), so no effort goes into matching inaudible levels."""
    fake, real = model.features(audio.float()), log_mel.float()
    if top_db is not None:
        floor = real.amax(dim=(-2, -1), keepdim=True) - top_db / NATS_TO_DB
        fake, real = fake.maximum(floor), real.maximum(floor)
    return F.l1_loss(fake, real)


def spectral_convergence(model: MelGAN, audio: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
    """``‖M − M̂‖_F / ‖M‖_F`` between the target mel magnitude ``M = exp(log_mel)`` and the mel magnitude of
    ``audio``, over the whole batch (Parallel WaveGAN's spectral convergence, Yamamoto et al. 2020, on the
    mel rather than the linear STFT). Unlike the log-mel L1, which weighs every bin alike, it is dominated by
    the loudest bins: without it a short run leaves sustained loud partials (music) 20-30 dB too quiet."""
    target = log_mel.float().exp()
    return (model.features(audio.float()).exp() - target).norm() / target.norm().clamp_min(1e-8)


def _stft_magnitude(audio: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """``|STFT|`` ``(B, n_fft // 2 + 1, frames)`` of audio ``(B, 1, T)`` or ``(B, T)``, Hann window of ``win``
    samples, floored at 1e-7 (Parallel WaveGAN's clamp, so the log stays finite)."""
    audio = audio.reshape(audio.shape[0], -1).float()
    window = torch.hann_window(win, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, win, window, center=True, pad_mode="reflect", return_complex=True)
    return (spec.real.pow(2) + spec.imag.pow(2)).clamp_min(1e-14).sqrt()


def multi_resolution_stft_loss(estimate: torch.Tensor, target: torch.Tensor,
                               resolutions=PWG_RESOLUTIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel WaveGAN's multi-resolution STFT loss (Yamamoto et al. 2020, eqs. 4-6) between two waveforms
    ``(B, 1, T)``: returns ``(spectral_convergence, log_magnitude)``, each averaged over the resolutions
    ``[(n_fft, hop, win), ...]``. Spectral convergence ``‖|Y| − |Ŷ|‖_F / ‖|Y|‖_F`` is dominated by the loud
    bins (a missing partial costs its whole energy); the log-magnitude term ``mean |log|Y| − log|Ŷ||`` weighs
    every bin alike. Several resolutions keep the generator from fitting one time-frequency trade-off only.
    Both are 0 for identical inputs."""
    if estimate.shape != target.shape:
        raise ValueError(f"multi_resolution_stft_loss: estimate {tuple(estimate.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    if not resolutions:
        raise ValueError("multi_resolution_stft_loss needs at least one (n_fft, hop, win) resolution")
    sc_total = log_total = estimate.new_zeros((), dtype=torch.float32)
    for n_fft, hop, win in resolutions:
        est, tgt = _stft_magnitude(estimate, n_fft, hop, win), _stft_magnitude(target, n_fft, hop, win)
        sc_total = sc_total + (tgt - est).norm() / tgt.norm().clamp_min(1e-8)
        log_total = log_total + F.l1_loss(est.log(), tgt.log())
    return sc_total / len(resolutions), log_total / len(resolutions)


@register_family
class MelGANFamily(Family):
    """Builds :class:`MelGAN`; trains discriminator then generator each step; evaluates against Griffin-Lim."""

    name = "melgan"
    config_class = MelGANRunConfig
    description = "MelGAN vocoder (log-mel -> audio), GAN-trained; Griffin-Lim baseline in eval"

    def validate(self, config: MelGANRunConfig) -> None:
        super().validate(config)
        m, g = config.model, config.gan
        try:
            m.validate()
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        d = config.disc_optim
        if d.lr <= 0 or not all(0.0 <= b < 1.0 for b in d.betas) or d.grad_clip < 0 or d.weight_decay < 0:
            raise ConfigError(f"disc_optim: need lr > 0, betas in [0, 1), grad_clip >= 0, weight_decay >= 0; got {d}")
        if d.grad_accum != config.optim.grad_accum:
            raise ConfigError(f"disc_optim.grad_accum ({d.grad_accum}) must equal optim.grad_accum "
                              f"({config.optim.grad_accum}): both phases share the micro-batches")
        if g.lambda_fm < 0 or g.lambda_mel < 0:
            raise ConfigError(f"gan.lambda_fm and gan.lambda_mel must be >= 0, got {g.lambda_fm}, {g.lambda_mel}")
        if g.lambda_sc < 0:
            raise ConfigError(f"gan.lambda_sc must be >= 0, got {g.lambda_sc}")
        if g.lambda_stft < 0:
            raise ConfigError(f"gan.lambda_stft must be >= 0, got {g.lambda_stft}")
        if not g.stft_resolutions or any(len(r) != 3 or int(r[0]) < int(r[2]) or min(int(v) for v in r) <= 0
                                         for r in g.stft_resolutions):
            raise ConfigError(f"gan.stft_resolutions: need a list of [n_fft, hop, win] with 0 < win <= n_fft and "
                              f"hop > 0, got {g.stft_resolutions}")
        if max(int(r[0]) for r in g.stft_resolutions) // 2 >= g.segment_samples:
            raise ConfigError(f"gan.stft_resolutions: every n_fft must be under twice gan.segment_samples "
                              f"({g.segment_samples}; the STFT reflect-pads n_fft / 2), got {g.stft_resolutions}")
        if g.mel_top_db is not None and g.mel_top_db <= 0:
            raise ConfigError(f"gan.mel_top_db: must be > 0 dB or null, got {g.mel_top_db}")
        if g.disc_start_step < 0:
            raise ConfigError(f"gan.disc_start_step: must be >= 0, got {g.disc_start_step}")
        if g.disc_start_step > 0 and g.lambda_mel <= 0 and g.lambda_stft <= 0:
            raise ConfigError("gan.disc_start_step > 0 trains the generator on its reconstruction losses alone at "
                              f"first: it needs gan.lambda_mel > 0 or gan.lambda_stft > 0, got {g.lambda_mel} and "
                              f"{g.lambda_stft}")
        need = max(m.min_frames() * m.hop_length, m.n_fft // 2 + 1, 8 * 2 ** (m.num_scales - 1))
        if g.segment_samples < need:
            raise ConfigError(f"gan.segment_samples: must be >= {need} (the generator's {m.min_frames()} mel frames, "
                              f"half an FFT window, and the discriminator's coarsest scale), got {g.segment_samples}")
        clip = segment_samples(config.data)
        if g.segment_samples > clip:
            raise ConfigError(f"gan.segment_samples ({g.segment_samples}) is longer than the clips the data "
                              f"delivers (data.clip_seconds x data.sample_rate = {clip} samples)")
        if config.eval.griffin_lim_iters <= 0:
            raise ConfigError(f"eval.griffin_lim_iters: must be > 0, got {config.eval.griffin_lim_iters}")

    def metric_names(self, config: MelGANRunConfig) -> tuple[str, ...]:
        return ("mel_l1_db", "griffin_lim_mel_l1_db")

    def build_model(self, model_config: MelGANConfig) -> MelGAN:
        return MelGAN(model_config)

    def optimizer_groups(self, model: nn.Module, config: MelGANRunConfig) -> list[OptimizerGroup]:
        return [OptimizerGroup("discriminator", model.discriminator, config.disc_optim, ema=False,
                               start_step=config.gan.disc_start_step),
                OptimizerGroup("generator", model.generator, config.optim)]

    def prepare_batch(self, batch: Batch, config: MelGANRunConfig) -> Batch:
        """Cut one random ``gan.segment_samples`` window from each clip (torch's global RNG)."""
        audio = batch["audio"]
        seg, total = config.gan.segment_samples, audio.shape[-1]
        if total <= seg:
            return batch
        starts = torch.randint(0, total - seg + 1, (audio.shape[0],)).tolist()
        crops = torch.stack([audio[i, :, s:s + seg] for i, s in enumerate(starts)])
        return {**batch, "audio": crops}

    def loss_step(self, model: nn.Module, batch: Batch, config: MelGANRunConfig, phase: str = "generator",
                  step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        bare: MelGAN = unwrap_model(model)
        audio = batch["audio"]
        g = config.gan
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            target = bare.features(audio)  # (B, n_mels, frames), fp32, no gradient
        if phase == "generator" and step is not None and step < g.disc_start_step:  # warm-up: reconstruction only
            fake = model(target)[..., : audio.shape[-1]]
            return self._reconstruction(bare, fake, audio, target, g)
        out = model(target, audio, phase=phase)  # one forward per phase, so DDP sees it
        if phase == "discriminator":
            loss = discriminator_hinge_loss(out.real_logits, out.fake_logits)
            real = torch.stack([r.detach().float().mean() for r in out.real_logits]).mean()
            fake = torch.stack([f.detach().float().mean() for f in out.fake_logits]).mean()
            return loss, {"d_real": float(real), "d_fake": float(fake)}
        adv = generator_hinge_loss(out.fake_logits)
        fm = feature_matching_loss(out.real_feats, out.fake_feats)
        recon, logs = self._reconstruction(bare, out.fake, audio, target, g)
        loss = adv + g.lambda_fm * fm + recon
        return loss, {"g_adv": float(adv.detach()), "feature_matching": float(fm.detach()), **logs}

    @staticmethod
    def _reconstruction(bare: MelGAN, fake: torch.Tensor, audio: torch.Tensor, target: torch.Tensor,
                        g: MelGANLossConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted reconstruction losses (mel L1, mel spectral convergence, multi-resolution STFT) of
        ``fake`` against the real ``audio`` / its log-mel ``target``, in float32, and their logs. The mel L1 is
        always logged (without a gradient when ``lambda_mel`` is 0)."""
        with torch.autocast(audio.device.type, enabled=False):
            fake = fake.float()
            loss = fake.new_zeros(())
            if g.lambda_mel > 0:
                mel = mel_l1(bare, fake, target, g.mel_top_db)
                loss = loss + g.lambda_mel * mel
            else:
                with torch.no_grad():
                    mel = mel_l1(bare, fake.detach(), target, g.mel_top_db)
            logs = {"mel_l1_db": float(mel.detach()) * NATS_TO_DB}
            if g.lambda_sc > 0:
                sc = spectral_convergence(bare, fake, target)
                loss, logs["spectral_convergence"] = loss + g.lambda_sc * sc, float(sc.detach())
            if g.lambda_stft > 0:
                stft_sc, stft_mag = multi_resolution_stft_loss(fake, audio.float(), g.stft_resolutions)
                loss = loss + g.lambda_stft * (stft_sc + stft_mag)
                logs["stft_sc"], logs["stft_log_mag"] = float(stft_sc.detach()), float(stft_mag.detach())
        return loss, logs

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: MelGANRunConfig) -> EvalResult:
        """Mel L1 (dB) of MelGAN and of Griffin-Lim on the eval clips; audio of the first clips."""
        model = unwrap_model(model)
        griffin_lim = GriffinLimVocoder(model.mel_config, n_iter=config.eval.griffin_lim_iters)
        griffin_lim = griffin_lim.to(next(model.parameters()).device)
        sums, n, audio = {"mel_l1_db": 0.0, "griffin_lim_mel_l1_db": 0.0}, 0, {}
        for batch in batches:
            wav = batch["audio"].float()
            T = wav.shape[-1]
            with torch.autocast(wav.device.type, enabled=False):
                target = model.features(wav)
                fake = model(target).float()[..., :T]
                baseline = griffin_lim(target)[..., :T]
                sums["mel_l1_db"] += float(log_mel_distance_db(fake, wav, model.mel_config).mean())
                sums["griffin_lim_mel_l1_db"] += float(log_mel_distance_db(baseline, wav, model.mel_config).mean())
            n += 1
            if not audio and config.eval.num_samples > 0:
                for i in range(min(config.eval.num_samples, wav.shape[0])):
                    audio[f"{i}_real"] = wav[i, 0].cpu()
                    audio[f"{i}_melgan"] = fake[i, 0].cpu()
                    audio[f"{i}_griffin_lim"] = baseline[i, 0].cpu()
        metrics = {k: v / max(n, 1) for k, v in sums.items()}
        return EvalResult(metrics=metrics, audio=audio, sample_rate=config.model.sample_rate)
