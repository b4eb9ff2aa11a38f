"""``mel_vqvae``: the mel VQ-VAE of Diffsound's first stage (:class:`course_lib.codecs.mel_vqvae.MelVQVAE`).

Training loss per batch: ``|x − x̂|₁`` on the log-mel (``model.recon_loss=mse`` for squared error) plus the
quantizer's VQ loss (β-commitment, and the codebook term when ``model.ema=false``). Evaluation reports, on
held-out clips: the mel L1 distance (nats and dB), the VQ loss, the codebook perplexity and usage over all
eval tokens, and writes input / Griffin-Lim reconstruction pairs as audio.

Train it::

    python -m course_lib.train mel_vqvae --config tiny train.run_dir=runs/mel_vqvae_tiny
    python -m course_lib.train mel_vqvae --config tiny data.source=py:course_lib.train.families.mel_vqvae:mixed_generated

``mixed_generated`` (a ``data.source=py:...`` factory) gives half generated sound events, half generated
music, which is what the course's shipped model is trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig, reconstruction_loss
from course_lib.quantize import perplexity
from course_lib.train.config import EvalConfig, RunConfig
from course_lib.train.data import mixed_generated  # noqa: F401  (the older config spelling py:...mel_vqvae:mixed_generated)
from course_lib.train.errors import ConfigError
from course_lib.train.families import register_family
from course_lib.train.families.base import Batch, EvalResult, Family, unwrap_model

NATS_TO_DB = 20.0 / math.log(10.0)


@dataclass
class MelVQVAEEvalConfig(EvalConfig):
    """Evaluation settings, plus ``griffin_lim_iters`` for the audio samples."""

    griffin_lim_iters: int = 32


@dataclass
class MelVQVAERunConfig(RunConfig):
    """The ``mel_vqvae`` run config: shared sections plus this family's ``model`` and ``eval``."""

    model: MelVQVAEConfig = field(default_factory=MelVQVAEConfig)
    eval: MelVQVAEEvalConfig = field(default_factory=MelVQVAEEvalConfig)


@register_family
class MelVQVAEFamily(Family):
    """Builds :class:`MelVQVAE`, trains it with L1 (or MSE) on log-mel + VQ loss, evaluates tokens and sound."""

    name = "mel_vqvae"
    config_class = MelVQVAERunConfig
    description = "Diffsound stage 1: 2-D conv VQ-VAE over log-mel, a token grid per clip"

    def validate(self, config: MelVQVAERunConfig) -> None:
        super().validate(config)
        try:
            config.model.validate()
        except ValueError as err:
            raise ConfigError(f"model.{err}") from None
        if config.eval.griffin_lim_iters <= 0:
            raise ConfigError(f"eval.griffin_lim_iters: must be > 0, got {config.eval.griffin_lim_iters}")

    def metric_names(self, config: MelVQVAERunConfig) -> tuple[str, ...]:
        return ("loss", "mel_l1", "mel_l1_db", "vq_loss", "perplexity", "usage")

    def build_model(self, model_config: MelVQVAEConfig) -> MelVQVAE:
        return MelVQVAE(model_config)

    def loss_step(self, model: nn.Module, batch: Batch, config: MelVQVAERunConfig
                  ) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad(), torch.autocast(batch["audio"].device.type, enabled=False):
            target = unwrap_model(model).features(batch["audio"])  # fp32 log-mel, no gradient
        recon, vq = model(target)  # through forward, so DDP syncs the gradients
        rec = reconstruction_loss(recon, target, config.model.recon_loss)
        extras = {"recon": float(rec.detach()), "vq_loss": float(vq.loss.detach()), "perplexity": float(vq.metrics["perplexity"]),
                  "usage": float(vq.metrics["usage"])}
        if config.model.dead_code_threshold > 0:
            extras["restarted"] = float(vq.metrics["restarted"])
        return rec + vq.loss, extras

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: MelVQVAERunConfig) -> EvalResult:
        l1 = vq_total = 0.0
        n = 0
        codes, audio = [], {}
        for batch in batches:
            target = model.features(batch["audio"])
            recon, vq = model(target)
            l1 += float(reconstruction_loss(recon, target, "l1"))
            vq_total += float(vq.loss)
            n += 1
            codes.append(vq.codes.reshape(-1).cpu())
            if not audio and config.eval.num_samples > 0:
                k = min(config.eval.num_samples, recon.shape[0])
                length = batch["audio"].shape[-1]
                wavs = model.to_audio(recon[:k], n_iter=config.eval.griffin_lim_iters, length=length)
                for i in range(k):
                    audio[f"{i}_input"] = batch["audio"][i, 0].float().cpu()
                    audio[f"{i}_reconstruction"] = wavs[i].cpu()
        n = max(n, 1)
        size = config.model.codebook_size
        all_codes = torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long)
        metrics = {
            "loss": l1 / n,  # the held-out mel L1 distance picks the best checkpoint
            "mel_l1": l1 / n,
            "mel_l1_db": l1 / n * NATS_TO_DB,
            "vq_loss": vq_total / n,
            "perplexity": float(perplexity(all_codes, size)) if all_codes.numel() else 0.0,
            "usage": float(torch.unique(all_codes).numel()) / size,
        }
        return EvalResult(metrics=metrics, audio=audio, sample_rate=config.model.sample_rate)
