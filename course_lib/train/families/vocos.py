"""``vocos``: the Vocos vocoder (Siuzdak 2023), trained by the engine on reconstruction losses, optionally a GAN.

The generator (:class:`course_lib.vocoders.vocos.Vocos`) predicts an STFT at the mel frame rate and inverts it;
every step cuts one random ``loss.segment_samples`` window from each clip (:meth:`VocosFamily.prepare_batch`)
and minimises, from step 0, the reconstruction losses of the generated audio ``ŷ`` against the real ``y``:

* ``loss.lambda_mel`` (45, Vocos and HiFi-GAN) × the L1 between log-mels at the model's own front end
  (``loss.mel_top_db``: None compares down to the 1e-5 floor, as Vocos; a number floors both that many dB
  under the clip's peak first, as the course metric :func:`course_lib.metrics.log_mel_distance_db` does);
* ``loss.lambda_mrmel`` × the mean of the same log-mel L1 at the other ``loss.mel_resolutions``
  (``[n_fft, hop, n_mels]`` each; 0 in the paper): a multi-resolution mel loss, as DAC and BigVGAN use;
* ``loss.lambda_stft`` × Parallel WaveGAN's multi-resolution STFT loss (spectral convergence + log
  magnitude at ``loss.stft_resolutions``; 0 in the paper), which weighs loud partials more than the log-mel.

With ``model.use_discriminator`` (the paper) the model also holds Vocos' discriminators (HiFi-GAN's
multi-period and UnivNet's multi-resolution) and every step from ``loss.disc_start_step`` on has two phases,
as ``melgan``: the discriminator's hinge loss ``Σ E[max(0, 1 − D(y))] + E[max(0, 1 + D(ŷ))]``, then the
generator's ``E[max(0, 1 − D(ŷ))]`` + ``loss.lambda_fm`` × feature matching + the reconstruction losses, the
multi-resolution discriminator's terms weighted by ``loss.mrd_weight`` (0.1 in Vocos). Deviation: each
adversarial and feature-matching term is a mean over sub-discriminators and layers (Vocos sums them), as the
course's MelGAN does. Without a discriminator (the course config) the run is reconstruction-only: the course's
CPU budget, and enough to beat Griffin-Lim (see the config).

Evaluation: on held-out clips, the course's log-mel distance (dB) between each clip and the audio made from its
log-mel, for Vocos (``mel_l1_db``, the ``best`` metric) and for the Griffin-Lim baseline
(``griffin_lim_mel_l1_db``), plus audio samples (real, Vocos, Griffin-Lim).

Configs: ``paper`` (Vocos' published mel model: 24 kHz, 100 mels, dim 512, 8 blocks, GAN, AdamW 5e-4 (0.8, 0.9),
cosine, 16384-sample segments, batch 16; GPU), ``course`` (16 kHz, the course's mel front end, SoundFont music
and sound events in a room (``data.version: 2``), reconstruction-only, sized for about 100 minutes on one CPU
thread), ``tiny`` (seconds, for the tests; a GAN phase too)::

    python -m course_lib.train vocos --config course train.run_dir=runs/vocos_course
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.audio import MelConfig, mel_filterbank
from course_lib.metrics.spectral import log_mel_distance_db
from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss
from course_lib.train.config import EvalConfig, OptimConfig, RunConfig
from course_lib.train.data import segment_samples
from course_lib.train.errors import ConfigError
from course_lib.train.families import register_family
from course_lib.train.families.base import Batch, EvalResult, Family, OptimizerGroup, unwrap_model
from course_lib.train.families.melgan import PWG_RESOLUTIONS, mel_l1, multi_resolution_stft_loss
from course_lib.vocoders.griffin_lim import GriffinLimVocoder
from course_lib.vocoders.vocos import Vocos, VocosConfig

NATS_TO_DB = 20.0 / math.log(10.0)
LOG_AMIN = 1e-5


@dataclass
class VocosLossConfig:
    """Training losses and crops. ``segment_samples``: the random crop of each clip (Vocos: 16384);
    ``lambda_mel`` / ``mel_top_db``: the log-mel L1 at the model's front end and its floor (dB under the clip's
    peak; None: the 1e-5 floor); ``lambda_mrmel`` / ``mel_resolutions``: the same L1 at other
    ``[n_fft, hop, n_mels]``; ``lambda_stft`` / ``stft_resolutions``: Parallel WaveGAN's multi-resolution STFT
    loss at ``[n_fft, hop, win]``; GAN (with ``model.use_discriminator``): ``lambda_fm`` (feature matching),
    ``mrd_weight`` (the multi-resolution discriminator's share, 0.1 in Vocos), ``disc_start_step`` (steps of
    reconstruction-only training before the discriminator joins); ``vqvae_input`` (a shipped mel VQ-VAE, e.g.
    ``"mel_vqvae_course"``, or a folder from ``MelVQVAE.save_pretrained``): each clip of a batch is, with
    probability ``vqvae_input_prob``, vocoded from that VQ-VAE's reconstruction of its log-mel instead of the
    log-mel itself, the losses still against the real clip: the vocoder learns to undo the VQ-VAE's smearing, as
    HiFi-GAN fine-tunes on Tacotron 2's predicted mels (its section 4.4) and as Diffsound hands it tokens'
    mels."""

    segment_samples: int = 16384
    lambda_mel: float = 45.0
    mel_top_db: float | None = None
    lambda_mrmel: float = 0.0
    mel_resolutions: list[list[int]] = field(default_factory=lambda: [[512, 128, 64], [2048, 512, 128]])
    lambda_stft: float = 0.0
    stft_resolutions: list[list[int]] = field(default_factory=lambda: [list(r) for r in PWG_RESOLUTIONS])
    lambda_fm: float = 1.0
    mrd_weight: float = 0.1
    disc_start_step: int = 0
    vqvae_input: str | None = None
    vqvae_input_prob: float = 0.5


@dataclass
class VocosEvalConfig(EvalConfig):
    """Evaluation settings: the best checkpoint is picked by the Vocos mel distance; Griffin-Lim iterations of
    the baseline."""

    best_metric: str = "mel_l1_db"
    griffin_lim_iters: int = 32


def _paper_optim() -> OptimConfig:
    return OptimConfig(lr=5e-4, betas=(0.8, 0.9), weight_decay=0.01, schedule="cosine", grad_clip=0.0)


@dataclass
class VocosRunConfig(RunConfig):
    """The ``vocos`` run config: ``model`` (architecture), ``loss`` (losses, crops), ``optim`` (generator),
    ``disc_optim`` (discriminator; unused without one), and the shared ``data``/``train``/``eval`` sections."""

    model: VocosConfig = field(default_factory=VocosConfig)
    loss: VocosLossConfig = field(default_factory=VocosLossConfig)
    optim: OptimConfig = field(default_factory=_paper_optim)
    disc_optim: OptimConfig = field(default_factory=_paper_optim)
    eval: VocosEvalConfig = field(default_factory=VocosEvalConfig)


class MultiResolutionMel(nn.Module):
    """Log-mel L1 between two waveforms ``(B, 1, T)`` at several ``(n_fft, hop, n_mels)``, averaged (nats).

    Each resolution is a centred Hann STFT and a Slaney mel bank (the course's front end at that size), natural
    log floored at 1e-5; with ``top_db`` both log-mels are clamped that many dB under the target's peak first."""

    def __init__(self, sample_rate: int, resolutions: Iterable[Iterable[int]]) -> None:
        super().__init__()
        self.resolutions = [tuple(int(v) for v in r) for r in resolutions]
        for i, (n_fft, hop, n_mels) in enumerate(self.resolutions):
            cfg = MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
            self.register_buffer(f"filters_{i}", mel_filterbank(cfg).T.contiguous(), persistent=False)
            self.register_buffer(f"window_{i}", torch.hann_window(n_fft), persistent=False)

    def log_mel(self, audio: torch.Tensor, i: int) -> torch.Tensor:
        n_fft, hop, _ = self.resolutions[i]
        spec = torch.stft(audio.reshape(audio.shape[0], -1).float(), n_fft, hop, n_fft, getattr(self, f"window_{i}"),
                          center=True, pad_mode="reflect", return_complex=True)
        return torch.log(torch.matmul(getattr(self, f"filters_{i}"), spec.abs()).clamp_min(LOG_AMIN))

    def forward(self, estimate: torch.Tensor, target: torch.Tensor, top_db: float | None = None) -> torch.Tensor:
        total = estimate.new_zeros((), dtype=torch.float32)
        for i in range(len(self.resolutions)):
            fake = self.log_mel(estimate, i)
            with torch.no_grad():
                real = self.log_mel(target, i)
            if top_db is not None:
                floor = real.amax(dim=(-2, -1), keepdim=True) - top_db / NATS_TO_DB
                fake, real = fake.maximum(floor), real.maximum(floor)
            total = total + F.l1_loss(fake, real)
        return total / max(len(self.resolutions), 1)


def _generator_hinge(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Vocos' generator term: ``mean over sub-discriminators of E[max(0, 1 − D(ŷ))]``."""
    return torch.stack([F.relu(1.0 - f).mean() for f in fake_logits]).mean()


@register_family
class VocosFamily(Family):
    """Builds :class:`Vocos`; reconstruction losses from step 0, optionally a GAN; evaluates against Griffin-Lim."""

    name = "vocos"
    config_class = VocosRunConfig
    description = "Vocos vocoder (log-mel -> STFT -> iSTFT), reconstruction losses (+ optional GAN); Griffin-Lim baseline in eval"

    def __init__(self) -> None:
        self._mrmel: dict[tuple, MultiResolutionMel] = {}
        self._vqvae: dict[tuple, nn.Module] = {}

    def validate(self, config: VocosRunConfig) -> None:
        super().validate(config)
        m, g = config.model, config.loss
        try:
            m.validate()
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        for key in ("lambda_mel", "lambda_mrmel", "lambda_stft", "lambda_fm", "mrd_weight"):
            if getattr(g, key) < 0:
                raise ConfigError(f"loss.{key}: must be >= 0, got {getattr(g, key)}")
        if g.lambda_mel <= 0 and g.lambda_mrmel <= 0 and g.lambda_stft <= 0 and not m.use_discriminator:
            raise ConfigError("loss: without a discriminator (model.use_discriminator=false) the generator needs a "
                              "reconstruction loss: set loss.lambda_mel, loss.lambda_mrmel or loss.lambda_stft > 0")
        if g.mel_top_db is not None and g.mel_top_db <= 0:
            raise ConfigError(f"loss.mel_top_db: must be > 0 dB or null, got {g.mel_top_db}")
        if not 0.0 <= g.vqvae_input_prob <= 1.0:
            raise ConfigError(f"loss.vqvae_input_prob: must be in [0, 1], got {g.vqvae_input_prob}")
        if g.vqvae_input is not None:
            from course_lib.pipelines.diffsound import load_vqvae

            try:
                vq = load_vqvae(g.vqvae_input)
            except (FileNotFoundError, KeyError, ValueError) as err:
                raise ConfigError(f"loss.vqvae_input: {err}") from None
            if vq.config.mel_config() != m.mel_config():
                raise ConfigError(f"loss.vqvae_input: {g.vqvae_input!r} reads {vq.config.mel_config()}, the vocoder "
                                  f"reads {m.mel_config()}: they must share the mel front end")
        if g.disc_start_step < 0:
            raise ConfigError(f"loss.disc_start_step: must be >= 0, got {g.disc_start_step}")
        if g.lambda_mrmel > 0:
            if not g.mel_resolutions or any(len(r) != 3 or min(int(v) for v in r) <= 0 for r in g.mel_resolutions):
                raise ConfigError(f"loss.mel_resolutions: need a list of [n_fft, hop, n_mels] > 0, got {g.mel_resolutions}")
            try:
                for n_fft, hop, n_mels in g.mel_resolutions:
                    MelConfig(sample_rate=m.sample_rate, n_fft=int(n_fft), hop_length=int(hop), n_mels=int(n_mels))
            except ValueError as err:
                raise ConfigError(f"loss.mel_resolutions: {err}") from None
        if g.lambda_stft > 0 and (not g.stft_resolutions or any(
                len(r) != 3 or int(r[0]) < int(r[2]) or min(int(v) for v in r) <= 0 for r in g.stft_resolutions)):
            raise ConfigError(f"loss.stft_resolutions: need a list of [n_fft, hop, win] with 0 < win <= n_fft and "
                              f"hop > 0, got {g.stft_resolutions}")
        largest = [m.n_fft]
        largest += [int(r[0]) for r in g.mel_resolutions] if g.lambda_mrmel > 0 else []
        largest += [int(r[0]) for r in g.stft_resolutions] if g.lambda_stft > 0 else []
        largest += [int(r[0]) for r in m.mrd_resolutions] if m.use_discriminator else []
        need = max(max(largest) // 2 + 1, m.hop_length, max(m.mpd_periods) if m.use_discriminator else 1)
        if g.segment_samples < need:
            raise ConfigError(f"loss.segment_samples: must be >= {need} (half the largest FFT of the losses and "
                              f"discriminators: the STFT reflect-pads n_fft / 2), got {g.segment_samples}")
        clip = segment_samples(config.data)
        if g.segment_samples > clip:
            raise ConfigError(f"loss.segment_samples ({g.segment_samples}) is longer than the clips the data delivers "
                              f"(data.clip_seconds x data.sample_rate = {clip} samples)")
        if m.use_discriminator:
            d = config.disc_optim
            if d.lr <= 0 or not all(0.0 <= b < 1.0 for b in d.betas) or d.grad_clip < 0 or d.weight_decay < 0:
                raise ConfigError(f"disc_optim: need lr > 0, betas in [0, 1), grad_clip >= 0, weight_decay >= 0; "
                                  f"got {d}")
            if d.grad_accum != config.optim.grad_accum:
                raise ConfigError(f"disc_optim.grad_accum ({d.grad_accum}) must equal optim.grad_accum "
                                  f"({config.optim.grad_accum}): both phases share the micro-batches")
            if g.disc_start_step > 0 and g.lambda_mel <= 0 and g.lambda_mrmel <= 0 and g.lambda_stft <= 0:
                raise ConfigError("loss.disc_start_step > 0 trains the generator on its reconstruction losses alone at "
                                  "first: it needs loss.lambda_mel, loss.lambda_mrmel or loss.lambda_stft > 0")
        if config.eval.griffin_lim_iters <= 0:
            raise ConfigError(f"eval.griffin_lim_iters: must be > 0, got {config.eval.griffin_lim_iters}")

    def metric_names(self, config: VocosRunConfig) -> tuple[str, ...]:
        return ("mel_l1_db", "griffin_lim_mel_l1_db")

    def build_model(self, model_config: VocosConfig) -> Vocos:
        return Vocos(model_config)

    def optimizer_groups(self, model: nn.Module, config: VocosRunConfig) -> list[OptimizerGroup]:
        if model.discriminator is None:
            return [OptimizerGroup("generator", model.generator, config.optim)]
        return [OptimizerGroup("discriminator", model.discriminator, config.disc_optim, ema=False,
                               start_step=config.loss.disc_start_step),
                OptimizerGroup("generator", model.generator, config.optim)]

    def prepare_batch(self, batch: Batch, config: VocosRunConfig) -> Batch:
        """Cut one random ``loss.segment_samples`` window from each clip (torch's global RNG, so resume is exact)."""
        audio = batch["audio"]
        seg, total = config.loss.segment_samples, audio.shape[-1]
        if total <= seg:
            return batch
        starts = torch.randint(0, total - seg + 1, (audio.shape[0],)).tolist()
        crops = torch.stack([audio[i, :, s:s + seg] for i, s in enumerate(starts)])
        return {**batch, "audio": crops}

    def _vocoder_input(self, target: torch.Tensor, config: VocosRunConfig) -> torch.Tensor:
        """``target`` (B, n_mels, frames), with each clip swapped for ``loss.vqvae_input``'s reconstruction of it
        with probability ``loss.vqvae_input_prob`` (torch's global RNG, drawn every step, so resume is exact)."""
        g = config.loss
        if g.vqvae_input is None:
            return target
        pick = torch.rand(target.shape[0]) < g.vqvae_input_prob
        key = (str(g.vqvae_input), str(target.device))
        if key not in self._vqvae:
            from course_lib.pipelines.diffsound import load_vqvae

            self._vqvae[key] = load_vqvae(g.vqvae_input).to(target.device).eval().requires_grad_(False)
        if not bool(pick.any()):
            return target
        rebuilt = self._vqvae[key](target[pick.to(target.device)])[0].to(target.dtype)
        given = target.clone()
        given[pick.to(target.device)] = rebuilt
        return given

    def _multi_resolution_mel(self, config: VocosRunConfig, device: torch.device) -> MultiResolutionMel:
        key = (config.model.sample_rate, tuple(tuple(int(v) for v in r) for r in config.loss.mel_resolutions), str(device))
        if key not in self._mrmel:
            self._mrmel[key] = MultiResolutionMel(config.model.sample_rate, config.loss.mel_resolutions).to(device)
        return self._mrmel[key]

    def loss_step(self, model: nn.Module, batch: Batch, config: VocosRunConfig, phase: str | None = None,
                  step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        bare: Vocos = unwrap_model(model)
        audio = batch["audio"]
        g = config.loss
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            target = bare.features(audio)  # (B, n_mels, frames), fp32, no gradient
            given = self._vocoder_input(target, config)  # the true log-mel, or a VQ-VAE's rendering of it
        if phase is None or (phase == "generator" and step is not None and step < g.disc_start_step):
            fake = model(given)[..., : audio.shape[-1]]  # reconstruction only
            return self._reconstruction(bare, fake, audio, target, config)
        out = model(given, audio, phase=phase)  # one forward per phase, so DDP sees it
        mpd_real, mrd_real = out.real_out["mpd"], out.real_out["mrd"]
        mpd_fake, mrd_fake = out.fake_out["mpd"], out.fake_out["mrd"]
        if phase == "discriminator":
            mpd = discriminator_hinge_loss(mpd_real[0], mpd_fake[0])
            mrd = discriminator_hinge_loss(mrd_real[0], mrd_fake[0])
            loss = mpd + g.mrd_weight * mrd
            return loss, {"d_mpd": float(mpd.detach()), "d_mrd": float(mrd.detach())}
        adv = _generator_hinge(mpd_fake[0]) + g.mrd_weight * _generator_hinge(mrd_fake[0])
        fm = feature_matching_loss(mpd_real[1], mpd_fake[1]) + g.mrd_weight * feature_matching_loss(mrd_real[1], mrd_fake[1])
        recon, logs = self._reconstruction(bare, out.fake, audio, target, config)
        loss = adv + g.lambda_fm * fm + recon
        return loss, {"g_adv": float(adv.detach()), "feature_matching": float(fm.detach()), **logs}

    def _reconstruction(self, bare: Vocos, fake: torch.Tensor, audio: torch.Tensor, target: torch.Tensor,
                        config: VocosRunConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted reconstruction losses of ``fake`` against the real ``audio`` (log-mel ``target``) in
        float32, and their logs (the front-end mel L1 in dB is always logged)."""
        g = config.loss
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
            if g.lambda_mrmel > 0:
                mr = self._multi_resolution_mel(config, fake.device)(fake, audio, g.mel_top_db)
                loss, logs["mrmel_l1_db"] = loss + g.lambda_mrmel * mr, float(mr.detach()) * NATS_TO_DB
            if g.lambda_stft > 0:
                sc, mag = multi_resolution_stft_loss(fake, audio.float(), g.stft_resolutions)
                loss = loss + g.lambda_stft * (sc + mag)
                logs["stft_sc"], logs["stft_log_mag"] = float(sc.detach()), float(mag.detach())
        return loss, logs

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: VocosRunConfig) -> EvalResult:
        """Mel L1 (dB) of Vocos and of Griffin-Lim on the eval clips; audio of the first clips."""
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
                    audio[f"{i}_vocos"] = fake[i, 0].clamp(-1.0, 1.0).cpu()
                    audio[f"{i}_griffin_lim"] = baseline[i, 0].cpu()
        metrics = {k: v / max(n, 1) for k, v in sums.items()}
        return EvalResult(metrics=metrics, audio=audio, sample_rate=config.model.sample_rate)
