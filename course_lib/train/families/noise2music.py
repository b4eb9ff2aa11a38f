"""``n2m_generator`` and ``n2m_cascader``: Noise2Music's two diffusion stages, trained by the engine.

Both train a :class:`~course_lib.pipelines.noise2music.Noise2MusicStage` (a 1-D Efficient U-Net plus its
Gaussian-diffusion settings) on 16 kHz captioned music, conditioned on a frozen text encoder
(``conditioning.text_encoder``) by cross-attention, with classifier-free guidance's condition dropout
(``model.diffusion.cond_drop``: the text mask of a dropped caption is all False, the null condition). Every
clip is first scaled to the peak level ``model.peak`` and resampled to ``model.low_rate`` (3.2 kHz), so the
generator learns exactly the signal the cascader is conditioned on. One training step (Huang et al. 2023,
§3; Imagen's cascade, Saharia et al. 2022, §2.5)::

    x, x_low = peak(x), resample(peak(x), 16 kHz → 3.2 kHz)          x (B, 1, T) from the data
    e, m     = TextEncoder(y)                                          frozen, (B, L, D) and (B, L)
    n2m_generator:  x0 = x_low                                          the whole clip, (B, 1, T_low)
                    loss = ‖f(x_t, t, e, m') − target‖²                 m' = m with 10% of rows dropped
    n2m_cascader:   c  = resample(x_low, 3.2 kHz → 16 kHz)              the conditioning, (B, 1, T)
                    x0, c = the same random crop of x and c             cascade.crop_seconds long
                    s ~ U(0, cascade.aug_max);  c_s = α_s c + σ_s ε'    noise-conditioning augmentation
                    loss = ‖f([x_t ; c_s], t, e, m', aug_level=s) − target‖²
                    with model.residual (the course config): x0 = x − c, what the clip adds to c

with ``t ~ U(0, 1)``, ``x_t = α_t x0 + σ_t ε`` and the target ε, v or x₀ (``model.diffusion``), all from
:meth:`~course_lib.diffusion.gaussian.GaussianDiffusion.loss`. The augmentation noise is added after
upsampling, as imagen-pytorch does, with the cascader's own schedule; ``s`` reaches the U-Net's
``aug_level`` embedding. At sampling the cascader sees a fixed level ``model.aug_level``.

**Lengths.** The generator trains on whole clips: ``round(data.clip_seconds · low_rate)`` low-rate samples,
cut *down* to a multiple of the U-Net's total stride (never padded: the model should not learn padded
silence; the course's 4 s = 12 800 samples is already one). The 16 kHz cascader is the expensive one on a
CPU, so it trains on random crops of ``cascade.crop_seconds`` (cut down to a multiple of its stride, too):
the U-Net is convolutional, with attention only at its coarse stages, so at sampling it runs on whole
clips. Crops and augmentation levels come from torch's RNG (saved in checkpoints: resume is exact).

Evaluation reports the held-out loss and ``x0_mse`` at draws seeded 0 at every evaluation (so evaluations
are comparable) and writes audio for ``eval.num_samples`` eval captions: the generator's samples (``eval.steps``
DDIM steps, guidance ``eval.cfg_scale``; None = the model's ``diffusion.num_steps`` / ``guidance_scale``)
upsampled to 16 kHz for listening, next to the real clip's low-rate version; the cascader's output from the
real clip's low-rate audio, next to that input (upsampled) and the real clip.

Train them::

    python -m course_lib.train n2m_generator --config course train.run_dir=runs/n2m_generator_course
    python -m course_lib.train n2m_cascader --config course train.run_dir=runs/n2m_cascader_course

Resuming with another ``conditioning.text_encoder`` or any ``model.*`` change (rates, peak, U-Net, diffusion)
is refused by the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from course_lib.audio import resample
from course_lib.diffusion.gaussian import GaussianDiffusion
from course_lib.pipelines.noise2music import (
    Noise2MusicPipeline,
    Noise2MusicStage,
    Noise2MusicStageConfig,
    scale_to_peak,
)
from course_lib.text.base import TextEmbedding, TextEncoder
from course_lib.train.config import EvalConfig, RunConfig
from course_lib.train.errors import ConfigError
from course_lib.train.families import register_family
from course_lib.train.families.audiogen import _slug, embed_captions, frozen_text_encoder
from course_lib.train.families.base import Batch, EvalResult, Family, unwrap_model

__all__ = ["CascadeConfig", "N2MConditioningConfig", "N2MEvalConfig", "N2MGeneratorRunConfig", "N2MCascaderRunConfig",
           "N2MGeneratorFamily", "N2MCascaderFamily"]


# 1. Configs ----------------------------------------------------------------------------------------------


@dataclass
class N2MConditioningConfig:
    """The ``conditioning`` section: the frozen text encoder, a :func:`~course_lib.text.load_text_encoder` spec
    (``"course"``, ``"t5:t5-large"``, ...). The condition dropout is ``model.diffusion.cond_drop``."""

    text_encoder: str = "course"


@dataclass
class CascadeConfig:
    """The cascader's ``cascade`` section: noise-conditioning augmentation levels drawn uniformly in ``[0,
    aug_max]`` (diffusion times of the cascader's schedule; Noise2Music, unconfirmed: up to 0.5) and the
    length of the random training crops in seconds."""

    aug_max: float = 0.5
    crop_seconds: float = 0.8


@dataclass
class N2MEvalConfig(EvalConfig):
    """Evaluation settings, plus how the ``num_samples`` audio samples are made: ``sample_seconds`` long,
    ``steps`` DDIM steps and guidance ``cfg_scale`` (None = the model's ``diffusion.num_steps`` /
    ``diffusion.guidance_scale``)."""

    sample_seconds: float = 2.0
    steps: int | None = 25
    cfg_scale: float | None = None
    best_metric: str = "loss"


@dataclass
class N2MGeneratorRunConfig(RunConfig):
    """The ``n2m_generator`` run config: ``model`` (a generator :class:`Noise2MusicStageConfig`),
    ``conditioning``, ``eval`` and the shared sections."""

    model: Noise2MusicStageConfig = field(default_factory=Noise2MusicStageConfig)
    conditioning: N2MConditioningConfig = field(default_factory=N2MConditioningConfig)
    eval: N2MEvalConfig = field(default_factory=N2MEvalConfig)


@dataclass
class N2MCascaderRunConfig(RunConfig):
    """The ``n2m_cascader`` run config: ``model`` (a cascader :class:`Noise2MusicStageConfig`),
    ``conditioning``, ``cascade``, ``eval`` and the shared sections."""

    model: Noise2MusicStageConfig = field(default_factory=Noise2MusicStageConfig.cascader)
    conditioning: N2MConditioningConfig = field(default_factory=N2MConditioningConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    eval: N2MEvalConfig = field(default_factory=N2MEvalConfig)


def _floor_valid(n: int, stride: int) -> int:
    """``n`` cut down to a multiple of ``stride`` (0 if shorter than one)."""
    return (int(n) // stride) * stride


# 2. What both stages share --------------------------------------------------------------------------------------


class _Noise2MusicFamily(Family):
    """Base of the two stage families (not registered): the frozen text encoder, the audio levels, the loss
    through :meth:`GaussianDiffusion.loss` and the evaluation loop. Subclasses give :meth:`training_inputs`,
    their length checks and their audio samples."""

    stage: ClassVar[str] = ""

    def __init__(self) -> None:
        self._tools: dict[tuple, Any] = {}

    # ---- the frozen text encoder -------------------------------------------------------------------------------

    def text_encoder(self, config: RunConfig, device: torch.device | str = "cpu") -> TextEncoder:
        """The frozen text encoder of ``conditioning.text_encoder`` on ``device`` (loaded once)."""
        return frozen_text_encoder(self._tools, config.conditioning.text_encoder, device)

    def embed(self, captions: Any, config: RunConfig, device: torch.device) -> TextEmbedding:
        """Captions (a list of ``B`` str; ``""`` = no text) → frozen text embeddings on ``device``, fp32."""
        return embed_captions(self.text_encoder(config, device), captions, self.name, device)

    def levels(self, audio: Tensor, config: RunConfig) -> tuple[Tensor, Tensor]:
        """Data audio ``(B, 1, T)`` at ``high_rate`` → ``(x, x_low)``: the clip scaled to peak ``model.peak`` and its
        band-limited resampling to ``model.low_rate`` ``(B, 1, ceil(T · low / high))``, fp32, no gradient."""
        m = config.model
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            high = scale_to_peak(audio.float(), m.peak)
            return high, resample(high, m.high_rate, m.low_rate)

    # ---- checks -------------------------------------------------------------------------------------------------

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        m, ev = config.model, config.eval
        try:
            m.validate()
        except ValueError as err:
            names = {"Noise2MusicStageConfig.": "model.", "Noise2MusicStageConfig: ": "model: ",
                     "UNet1DConfig.": "model.unet.", "UNet1DConfig: ": "model.unet: ",
                     "GaussianDiffusionConfig.": "model.diffusion."}
            message = str(err)
            for old, new in names.items():
                message = message.replace(old, new)
            raise ConfigError(message) from None
        if m.stage != self.stage:
            raise ConfigError(f"model.stage: the {self.name} family trains a {self.stage}, got {m.stage!r} (set "
                              f"model.stage={self.stage} and the matching model.unet: see configs/{self.name}_tiny.yaml)")
        if config.data.sample_rate != m.high_rate:
            raise ConfigError(f"data.sample_rate={config.data.sample_rate} must equal model.high_rate={m.high_rate}: "
                              f"the clips arrive at the high rate and are resampled to model.low_rate={m.low_rate}")
        dim = self.text_encoder(config).dim
        if m.unet.text_dim != dim:
            raise ConfigError(f"model.unet.text_dim={m.unet.text_dim} must equal the width of conditioning.text_encoder="
                              f"{config.conditioning.text_encoder!r} ({dim}): set model.unet.text_dim={dim}")
        if not ev.sample_seconds > 0:
            raise ConfigError(f"eval.sample_seconds: must be > 0, got {ev.sample_seconds}")
        if ev.steps is not None and ev.steps < 1:
            raise ConfigError(f"eval.steps: a positive number of DDIM steps or null (model.diffusion.num_steps), got "
                              f"{ev.steps}")
        self.check_lengths(config)

    def check_lengths(self, config: RunConfig) -> None:
        """Raise :class:`ConfigError` when the training clips or crops are too short for the U-Net."""
        raise NotImplementedError

    # ---- the engine hooks -------------------------------------------------------------------------------------------

    def build_model(self, model_config: Noise2MusicStageConfig) -> Noise2MusicStage:
        return Noise2MusicStage(model_config)

    def training_inputs(self, batch: Batch, config: RunConfig, generator: torch.Generator | None = None
                        ) -> dict[str, Tensor]:
        """What the loss needs from a batch: ``x0`` (the clean target ``(B, 1, N)``) and, for the cascader,
        ``cond`` (the noisy conditioning ``(B, 1, N)``), ``clean_cond`` and ``aug_level`` ``(B,)``. Random draws
        come from ``generator`` (on the audio's device) or torch's global RNG."""
        raise NotImplementedError

    def loss_step(self, model: nn.Module, batch: Batch, config: RunConfig,
                  generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        stage = unwrap_model(model)
        inputs = self.training_inputs(batch, config, generator)
        text = self.embed(batch.get("caption"), config, inputs["x0"].device)
        diff_cfg = config.model.diffusion
        if not stage.training:  # evaluation: no condition dropout
            diff_cfg = dataclasses.replace(diff_cfg, cond_drop=0.0)
        cond, levels = inputs.get("cond"), inputs.get("aug_level")

        def model_fn(x_t: Tensor, t: Tensor, **kwargs: Tensor) -> Tensor:
            if cond is None:
                return model(x_t, t, **kwargs)
            return model(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t, aug_level=levels, **kwargs)

        loss, metrics = GaussianDiffusion(diff_cfg).loss(model_fn, inputs["x0"], generator=generator,
                                                         text=text.embeddings, text_mask=text.mask)
        if levels is not None:
            metrics["aug_level"] = float(levels.mean())
        return loss, metrics

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: RunConfig) -> EvalResult:
        stage = unwrap_model(model)
        sums: dict[str, float] = {}
        n = 0
        first: Batch | None = None
        generator: torch.Generator | None = None
        for batch in batches:
            first = first if first is not None else batch
            if generator is None:  # the same draws at every evaluation: comparable numbers
                generator = torch.Generator(device=batch["audio"].device).manual_seed(0)
            loss, metrics = self.loss_step(stage, batch, config, generator)  # eval mode: no condition dropout
            for k, v in {**metrics, "loss": float(loss)}.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        result = {k: v / max(n, 1) for k, v in sums.items()}
        result.pop("cond_dropped", None)
        audio: dict[str, Tensor] = {}
        if first is not None and config.eval.num_samples > 0:
            with torch.autocast(first["audio"].device.type, enabled=False):
                audio = self.samples(stage, first, config)
        return EvalResult(metrics=result, audio=audio, sample_rate=config.model.high_rate)

    def samples(self, stage: Noise2MusicStage, batch: Batch, config: RunConfig) -> dict[str, Tensor]:
        """The eval audio ``{name: (T,) at high_rate}`` for the first ``eval.num_samples`` clips of ``batch``."""
        raise NotImplementedError


# 3. The two families ----------------------------------------------------------------------------------------------


@register_family
class N2MGeneratorFamily(_Noise2MusicFamily):
    """Trains Noise2Music's generator: text → low-rate (3.2 kHz) waveform, a text-conditioned 1-D U-Net diffusion
    model on whole clips; evaluates the held-out loss and generates samples (upsampled to 16 kHz to listen)."""

    name = "n2m_generator"
    stage = "generator"
    config_class = N2MGeneratorRunConfig
    description = "Noise2Music generator: text -> 3.2 kHz waveform by Gaussian diffusion with a 1-D Efficient U-Net"

    def train_length(self, config: N2MGeneratorRunConfig) -> int:
        """Low-rate samples the generator trains on: ``round(clip_seconds · low_rate)`` cut down to a multiple
        of the U-Net's total stride."""
        m = config.model
        return _floor_valid(round(config.data.clip_seconds * m.low_rate), m.unet.total_stride)

    def check_lengths(self, config: N2MGeneratorRunConfig) -> None:
        m = config.model
        if self.train_length(config) == 0:
            raise ConfigError(f"data.clip_seconds={config.data.clip_seconds} is "
                              f"{round(config.data.clip_seconds * m.low_rate)} samples at model.low_rate={m.low_rate}, "
                              f"shorter than the U-Net's total stride {m.unet.total_stride} (strides {m.unet.strides})")

    def training_inputs(self, batch: Batch, config: N2MGeneratorRunConfig,
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
        _, low = self.levels(batch["audio"], config)
        return {"x0": low[..., : self.train_length(config)]}

    def samples(self, stage: Noise2MusicStage, batch: Batch, config: N2MGeneratorRunConfig) -> dict[str, Tensor]:
        ev, m = config.eval, config.model
        captions = list(batch["caption"])[: ev.num_samples]
        pipe = Noise2MusicPipeline(stage, None, self.text_encoder(config, batch["audio"].device))
        low = pipe.generate_low(captions, seconds=ev.sample_seconds, steps=ev.steps, cfg_scale=ev.cfg_scale, seed=0)
        _, real_low = self.levels(batch["audio"][: len(captions)], config)
        generated = resample(low, m.low_rate, m.high_rate)
        real = resample(real_low[..., : low.shape[-1]], m.low_rate, m.high_rate)
        audio = {}
        for i, caption in enumerate(captions):
            name = f"{i}_{_slug(caption)}"
            audio[f"{name}_generated"] = generated[i, 0].cpu()
            audio[f"{name}_real_low"] = real[i, 0].cpu()
        return audio


@register_family
class N2MCascaderFamily(_Noise2MusicFamily):
    """Trains Noise2Music's cascader: low-rate waveform + text → 16 kHz waveform, a 1-D U-Net diffusion model
    on random crops with noise-conditioning augmentation; evaluates the held-out loss and upsamples real
    low-rate clips."""

    name = "n2m_cascader"
    stage = "cascader"
    config_class = N2MCascaderRunConfig
    description = "Noise2Music cascader: 3.2 kHz waveform + text -> 16 kHz waveform, noise-conditioning augmentation"

    def crop_length(self, config: N2MCascaderRunConfig) -> int:
        """16 kHz samples of a training crop: ``round(crop_seconds · high_rate)`` cut down to a multiple of the
        U-Net's total stride."""
        m = config.model
        return _floor_valid(round(config.cascade.crop_seconds * m.high_rate), m.unet.total_stride)

    def check_lengths(self, config: N2MCascaderRunConfig) -> None:
        m, c = config.model, config.cascade
        if not 0.0 <= c.aug_max < 1.0:
            raise ConfigError(f"cascade.aug_max: a diffusion time in [0, 1) (Noise2Music, unconfirmed: 0.5), got {c.aug_max}")
        if m.aug_level > c.aug_max:
            raise ConfigError(f"model.aug_level={m.aug_level} (the sampling level) is above cascade.aug_max={c.aug_max}: "
                              f"the cascader would never have seen such noisy inputs in training")
        crop = self.crop_length(config)
        clip = round(config.data.clip_seconds * m.high_rate)
        if crop == 0 or crop > clip:
            raise ConfigError(f"cascade.crop_seconds={c.crop_seconds} gives {crop} samples: it must cover at least the "
                              f"U-Net's total stride ({m.unet.total_stride}) and at most data.clip_seconds="
                              f"{config.data.clip_seconds} ({clip} samples)")
        if config.eval.num_samples > 0 and config.eval.sample_seconds > config.data.clip_seconds:
            raise ConfigError(f"eval.sample_seconds={config.eval.sample_seconds} must be <= data.clip_seconds="
                              f"{config.data.clip_seconds}: the cascader's samples upsample real eval clips")

    def training_inputs(self, batch: Batch, config: N2MCascaderRunConfig,
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
        m = config.model
        high, low = self.levels(batch["audio"], config)
        b, _, n = high.shape
        device = high.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            up = resample(low, m.low_rate, m.high_rate)[..., :n]  # the conditioning, whole clip then cropped
            crop = self.crop_length(config)
            offsets = torch.randint(0, n - crop + 1, (b,), generator=generator, device=device)
            index = (offsets[:, None] + torch.arange(crop, device=device))[:, None]  # (B, 1, crop)
            x0, clean = high.gather(2, index), up.gather(2, index)
            levels = torch.rand(b, generator=generator, device=device) * config.cascade.aug_max
            cond = GaussianDiffusion(m.diffusion).q_sample(clean, levels, generator=generator)
            if m.residual:  # diffuse what the clip adds to its upsampled low-rate version (model.residual)
                x0 = x0 - clean
        return {"x0": x0, "cond": cond, "clean_cond": clean, "aug_level": levels}

    def samples(self, stage: Noise2MusicStage, batch: Batch, config: N2MCascaderRunConfig) -> dict[str, Tensor]:
        ev, m = config.eval, config.model
        captions = list(batch["caption"])[: ev.num_samples]
        high, low = self.levels(batch["audio"][: len(captions)], config)
        low = low[..., : round(ev.sample_seconds * m.low_rate)]
        pipe = Noise2MusicPipeline(None, stage, self.text_encoder(config, high.device))
        upsampled = pipe.upsample(low, captions, steps=ev.steps, cfg_scale=ev.cfg_scale, seed=0)
        given = resample(low, m.low_rate, m.high_rate)
        length = upsampled.shape[-1]
        audio = {}
        for i, caption in enumerate(captions):
            name = f"{i}_{_slug(caption)}"
            audio[f"{name}_upsampled"] = upsampled[i, 0].cpu()
            audio[f"{name}_input"] = given[i, 0, :length].cpu()
            audio[f"{name}_real"] = high[i, 0, :length].cpu()
        return audio
