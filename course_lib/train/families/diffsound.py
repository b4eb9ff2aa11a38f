"""``diffsound`` and ``diffsound_ar``: text → mel-token grids, by discrete diffusion or by its AR baseline.

Both families train a token decoder over the token grids of a frozen mel VQ-VAE (Diffsound's stage 1,
``tokenizer.vqvae``), conditioned on a frozen text encoder (``conditioning.text_encoder``), and differ only in
the decoder. One training step (Yang et al. 2023, §3; VQ-Diffusion, Gu et al. 2022)::

    g      = MelVQVAE.encode(log_mel(x))          x (B, 1, T) audio  →  g (B, H, W) token grid, no gradient
    e, m   = TextEncoder(y)                        captions → (B, L, D) embeddings, (B, L) mask, frozen
    m'     = drop_condition(m, p)                  each caption replaced by the null text with prob. p (0.1)
    diffsound:     loss = DiffsoundModel.loss(g, e, m')          variational bound + λ · auxiliary x_0 CE
    diffsound_ar:  loss = AudioLM.loss(seq(g), e, m')            next-token CE over the time-major sequence

``diffsound`` trains :class:`~course_lib.diffusion.diffsound.DiffsoundModel` (mask-and-replace diffusion,
parallel decoding). ``diffsound_ar`` trains the autoregressive baseline Diffsound was compared with: a
one-codebook :class:`~course_lib.lm.AudioLM` over the same grids read **time-major**
(:func:`~course_lib.pipelines.diffsound.grid_to_sequence`: the H tokens of column 0, then column 1, ...),
with the same text encoder, condition dropout, width and depth. The dropout ``p = conditioning.cond_drop``
makes classifier-free guidance possible at sampling time; it applies in training only.

Evaluation reports the held-out (valid split) loss and the model's metrics (the diffusion loss at timesteps
drawn from a generator seeded 0 at every evaluation, so evaluations are comparable; the AR baseline's
teacher-forced cross-entropy and ``perplexity``), and writes ``eval.num_samples`` clips generated from the
first eval captions through :class:`~course_lib.pipelines.DiffsoundPipeline` (VQ-VAE decoder, then
``eval.vocoder``: Griffin-Lim by default, fast enough for a CPU eval) next to the real clips they describe.

Where the tools come from:

* ``tokenizer.vqvae``: ``"pretrained:mel_vqvae_course"`` (the shipped mel VQ-VAE), a folder written by
  ``MelVQVAE.save_pretrained``, or a ``mel_vqvae`` training run's folder (read at ``tokenizer.checkpoint``).
  ``tokenizer.cache_size`` > 0 keeps the grids of that many clips in memory, keyed by a hash of their
  samples (as the ``audiogen`` family's code cache): the course data repeats its clips every epoch, so
  later epochs skip the VQ-VAE.
* ``conditioning.text_encoder``: any :func:`course_lib.text.load_text_encoder` spec (``"course"``,
  ``"clip:openai/clip-vit-base-patch32"``, ...). ``model.text_dim`` must equal its width.

Resuming a run with another ``tokenizer.vqvae``/``tokenizer.checkpoint`` or ``conditioning.text_encoder`` is
refused (the weights were trained on those tokens and embeddings), as the engine does for ``audiogen``.

Train them::

    python -m course_lib.train diffsound --config course train.run_dir=runs/diffsound_course
    python -m course_lib.train diffsound_ar --config course train.run_dir=runs/diffsound_ar_course
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from course_lib.codecs.mel_vqvae import MelVQVAE
from course_lib.diffusion.diffsound import DiffsoundConfig, DiffsoundModel
from course_lib.lm.model import AudioLM, AudioLMConfig
from course_lib.nn.guidance import drop_condition
from course_lib.pipelines.diffsound import grid_to_sequence, sequence_to_grid
from course_lib.text.base import TextEmbedding, TextEncoder
from course_lib.train.config import EvalConfig, RunConfig
from course_lib.train.errors import ConfigError, TrainingError
from course_lib.train.families import register_family
from course_lib.train.families.audiogen import (
    ConditioningConfig,
    _slug,
    _stamp,
    cached_tokens,
    embed_captions,
    frozen_text_encoder,
    lm_loss,
)
from course_lib.train.families.base import Batch, EvalResult, Family, unwrap_model

__all__ = ["DiffsoundARFamily", "DiffsoundARRunConfig", "DiffsoundFamily", "DiffsoundRunConfig", "MelTokenizerConfig",
           "diffsound_loss", "grid_to_sequence", "sequence_to_grid"]


# 1. Configs ----------------------------------------------------------------------------------------------


@dataclass
class MelTokenizerConfig:
    """The ``tokenizer`` section: the frozen mel VQ-VAE whose token grids the decoder models (``vqvae``:
    ``"pretrained:NAME"``, a ``save_pretrained`` folder, or a ``mel_vqvae`` run folder read at ``checkpoint``
    ``last``/``best``/``ema``), and ``cache_size``, how many clips' grids to keep in memory (0 = none)."""

    vqvae: str = "pretrained:mel_vqvae_course"
    checkpoint: Literal["last", "best", "ema"] = "last"
    cache_size: int = 0


@dataclass
class MelTokenEvalConfig(EvalConfig):
    """Evaluation settings, plus how the ``num_samples`` audio samples are made: ``sample_seconds`` long, CFG
    ``cfg_scale``, ``truncation`` r (keep the top-r probability mass; None = off), ``temperature``, then the
    VQ-VAE decoder and ``vocoder`` (``"griffin_lim"`` with ``griffin_lim_iters`` iterations, or a MelGAN name
    or folder)."""

    sample_seconds: float = 2.0
    cfg_scale: float = 3.0
    truncation: float | None = 0.86
    temperature: float = 1.0
    vocoder: str = "griffin_lim"
    griffin_lim_iters: int = 32
    best_metric: str = "loss"


@dataclass
class DiffsoundEvalConfig(MelTokenEvalConfig):
    """:class:`MelTokenEvalConfig` plus ``steps``, the reverse steps of sampling (None = the model's T)."""

    steps: int | None = None


@dataclass
class DiffsoundAREvalConfig(MelTokenEvalConfig):
    """:class:`MelTokenEvalConfig` plus ``top_k`` (0 = off) for the AR baseline's sampling."""

    top_k: int = 0


@dataclass
class DiffsoundRunConfig(RunConfig):
    """The ``diffsound`` run config: shared sections plus ``model`` (:class:`DiffsoundConfig`),
    ``conditioning``, ``tokenizer`` and ``eval``."""

    model: DiffsoundConfig = field(default_factory=DiffsoundConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    tokenizer: MelTokenizerConfig = field(default_factory=MelTokenizerConfig)
    eval: DiffsoundEvalConfig = field(default_factory=DiffsoundEvalConfig)


def _ar_model_config() -> AudioLMConfig:
    return AudioLMConfig(n_q=1, codebook_size=256, text_dim=128, max_len=640, pattern="parallel")


@dataclass
class DiffsoundARRunConfig(RunConfig):
    """The ``diffsound_ar`` run config: ``model`` is an :class:`AudioLMConfig` with ``n_q = 1`` over the
    time-major grid (``max_len`` ≥ H · W tokens), plus ``conditioning``, ``tokenizer`` and ``eval``."""

    model: AudioLMConfig = field(default_factory=_ar_model_config)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    tokenizer: MelTokenizerConfig = field(default_factory=MelTokenizerConfig)
    eval: DiffsoundAREvalConfig = field(default_factory=DiffsoundAREvalConfig)


def diffsound_loss(model: nn.Module, tokens: Tensor, text: Tensor, text_mask: Tensor,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """:meth:`DiffsoundModel.loss` of grids ``(B, H, W)`` given text ``(B, L, D)`` and mask ``(B, L)``.

    A bare :class:`DiffsoundModel` computes it itself. Under DistributedDataParallel (or ``torch.compile``) the
    same computation runs with the network called through the wrapper, so DDP sees the call and syncs
    gradients: draw ``t`` and ``x_t ~ q(x_t | x_0)`` (from ``generator``), predict ``x_0``, take the loss.
    """
    net = unwrap_model(model)
    if model is net:
        return net.loss(tokens, text, text_mask, generator=generator)
    b, cfg = tokens.shape[0], net.config
    t = net.diffusion.sample_t(b, device=tokens.device, generator=generator)
    x0 = tokens.reshape(b, -1)
    x_t = net.diffusion.q_sample(x0, t, generator=generator)
    logits = model(x_t.view_as(tokens), t, text, text_mask)
    return net.diffusion.loss(logits.reshape(b, cfg.codebook_size, -1), x0, x_t, t, aux_weight=cfg.aux_weight,
                              adaptive_aux=cfg.adaptive_aux)


# 2. What both families share: the frozen tools, the token cache, condition dropout, evaluation ---------------


class MelTokenFamily(Family):
    """Base of ``diffsound`` and ``diffsound_ar`` (not registered itself): a token decoder over the grids of a
    frozen mel VQ-VAE, conditioned on a frozen text encoder with condition dropout. Subclasses give the
    model, its loss (:meth:`model_loss`), its size checks (:meth:`check_model`) and its sampling arguments."""

    def __init__(self) -> None:
        self._tools: dict[tuple, Any] = {}
        self._grids: dict[tuple, OrderedDict[bytes, Tensor]] = {}

    # ---- the frozen tools -------------------------------------------------------------------------------------

    def vqvae(self, config: RunConfig, device: torch.device | str = "cpu") -> MelVQVAE:
        """The frozen mel VQ-VAE of ``tokenizer.vqvae`` on ``device`` (loaded once per process and folder state)."""
        tc = config.tokenizer
        key = ("vqvae", tc.vqvae, tc.checkpoint, _stamp(tc.vqvae), str(device))
        if key not in self._tools:
            self._tools[key] = _load_vqvae(tc.vqvae, tc.checkpoint).to(device).eval().requires_grad_(False)
        return self._tools[key]

    def text_encoder(self, config: RunConfig, device: torch.device | str = "cpu") -> TextEncoder:
        """The frozen text encoder of ``conditioning.text_encoder`` on ``device`` (loaded once)."""
        return frozen_text_encoder(self._tools, config.conditioning.text_encoder, device)

    def vocoder(self, config: RunConfig, device: torch.device | str = "cpu") -> nn.Module:
        """The vocoder of the eval samples (``eval.vocoder``) on ``device``, for the VQ-VAE's mel front end."""
        ev = config.eval
        key = ("vocoder", ev.vocoder, ev.griffin_lim_iters, _stamp(ev.vocoder), str(device))
        if key not in self._tools:
            from course_lib.pipelines.diffsound import load_vocoder

            try:
                voc = load_vocoder(ev.vocoder, self.vqvae(config).config.mel_config(), ev.griffin_lim_iters)
            except (OSError, ValueError, TypeError) as err:
                raise ConfigError(f"eval.vocoder={ev.vocoder!r}: {err} (eval.vocoder takes griffin_lim, a shipped "
                                  f"MelGAN name or a MelGAN.save_pretrained folder)") from None
            self._tools[key] = voc.to(device).eval().requires_grad_(False)
        return self._tools[key]

    def tokenize(self, audio: Tensor, config: RunConfig) -> Tensor:
        """Audio ``(B, 1, T)`` → token grids ``(B, H, W)`` (long, on the audio's device) with the frozen VQ-VAE, in
        fp32 and without gradient; clips seen before come from the in-memory cache when ``tokenizer.cache_size``."""
        vqvae = self.vqvae(config, audio.device)
        size = config.tokenizer.cache_size
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            audio = audio.float()
            if size <= 0:
                return vqvae.encode(vqvae.features(audio))
            tc = config.tokenizer
            cache = self._grids.setdefault((tc.vqvae, tc.checkpoint, _stamp(tc.vqvae), audio.shape[-1]),
                                           OrderedDict())
            return cached_tokens(cache, audio, lambda a: vqvae.encode(vqvae.features(a)), size,
                                 vqvae.config.codebook_size)

    def embed(self, captions: Any, config: RunConfig, device: torch.device) -> TextEmbedding:
        """Captions (a list of ``B`` str; ``""`` = no text) → frozen text embeddings on ``device``, fp32."""
        return embed_captions(self.text_encoder(config, device), captions, self.name, device)

    # ---- what a subclass gives --------------------------------------------------------------------------------

    def model_loss(self, model: nn.Module, grid: Tensor, text: Tensor, text_mask: Tensor,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The decoder's training loss for grids ``(B, H, W)`` and text; ``(scalar, metrics)``."""
        raise NotImplementedError

    def check_model(self, config: RunConfig, rows: int, codebook_size: int, text_dim: int) -> None:
        """Raise :class:`ConfigError` if ``config.model`` does not fit the VQ-VAE's grid or the text width."""
        raise NotImplementedError

    def max_cols(self, config: RunConfig, rows: int) -> int:
        """The widest grid (token columns) the model of ``config`` takes."""
        raise NotImplementedError

    def sample_kwargs(self, config: RunConfig) -> dict[str, Any]:
        """Keyword arguments of :meth:`DiffsoundPipeline.generate` for the eval samples."""
        ev = config.eval
        return dict(cfg_scale=ev.cfg_scale, truncation=ev.truncation, temperature=ev.temperature)

    # ---- engine hooks -------------------------------------------------------------------------------------------

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        cond, tok, ev = config.conditioning, config.tokenizer, config.eval
        if not 0.0 <= cond.cond_drop <= 1.0:
            raise ConfigError(f"conditioning.cond_drop: a probability in [0, 1] (Diffsound, AudioGen: 0.1), got "
                              f"{cond.cond_drop}")
        if tok.cache_size < 0:
            raise ConfigError(f"tokenizer.cache_size: must be >= 0 (0 = no cache), got {tok.cache_size}")
        if ev.sample_seconds <= 0 or ev.temperature < 0 or ev.griffin_lim_iters < 1:
            raise ConfigError(f"eval.sample_seconds must be > 0, eval.temperature >= 0 and eval.griffin_lim_iters "
                              f">= 1; got {ev.sample_seconds}, {ev.temperature}, {ev.griffin_lim_iters}")
        if ev.truncation is not None and not 0.0 < ev.truncation <= 1.0:
            raise ConfigError(f"eval.truncation: a probability mass in (0, 1] or null (off), got {ev.truncation}")
        vqvae = self.vqvae(config)
        vc = vqvae.config
        if vc.sample_rate != config.data.sample_rate:
            raise ConfigError(f"data.sample_rate={config.data.sample_rate} must equal the sample rate of "
                              f"tokenizer.vqvae={tok.vqvae!r} ({vc.sample_rate} Hz): set data.sample_rate={vc.sample_rate}")
        rows = vqvae.token_grid_shape(1)[0]
        self.check_model(config, rows, vc.codebook_size, self.text_encoder(config).dim)
        lengths = {"data.clip_seconds": config.data.clip_seconds}
        if ev.num_samples > 0:
            lengths["eval.sample_seconds"] = ev.sample_seconds
            self.vocoder(config)  # a clear error now, not at the first evaluation
        widest = self.max_cols(config, rows)
        for key, seconds in lengths.items():
            frames = 1 + round(seconds * vc.sample_rate) // vc.hop_length
            cols = vqvae.token_grid_shape(frames)[1]
            if cols > widest:
                raise ConfigError(f"{key}={seconds} is {frames} mel frames = a {rows} x {cols} token grid, wider than "
                                  f"the model takes ({widest} columns): {self.widen_hint(rows, cols)} or shorten {key}")

    def widen_hint(self, rows: int, cols: int) -> str:
        """How to make the model take ``cols`` columns (for the error message)."""
        raise NotImplementedError

    def _inputs(self, batch: Batch, config: RunConfig) -> tuple[Tensor, TextEmbedding]:
        audio = batch["audio"]
        return self.tokenize(audio, config), self.embed(batch.get("caption"), config, audio.device)

    def loss_step(self, model: nn.Module, batch: Batch, config: RunConfig,
                  generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        grid, text = self._inputs(batch, config)
        mask = text.mask
        dropped = 0.0
        if unwrap_model(model).training and config.conditioning.cond_drop > 0:  # CFG's condition dropout
            new_mask = drop_condition(mask, config.conditioning.cond_drop)
            dropped = float((mask.any(dim=1) & ~new_mask.any(dim=1)).float().mean())
            mask = new_mask
        loss, metrics = self.model_loss(model, grid, text.embeddings, mask, generator)
        logs = {k: float(v) for k, v in metrics.items()}
        logs["cond_dropped"] = dropped
        return loss, logs

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: RunConfig) -> EvalResult:
        decoder = unwrap_model(model)
        sums: dict[str, float] = {}
        n = 0
        first: Batch | None = None
        generator: torch.Generator | None = None
        for batch in batches:
            first = first if first is not None else batch
            if generator is None:  # the same timesteps at every evaluation: comparable numbers
                generator = torch.Generator(device=batch["audio"].device).manual_seed(0)
            loss, metrics = self.loss_step(decoder, batch, config, generator)  # eval mode: no condition dropout
            for k, v in {"loss": float(loss), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        result = {k: v / max(n, 1) for k, v in sums.items()}
        result.pop("cond_dropped", None)
        self.finish_metrics(result, n)
        audio: dict[str, Tensor] = {}
        ev = config.eval
        if first is not None and ev.num_samples > 0:
            from course_lib.pipelines.diffsound import DiffsoundPipeline

            device = first["audio"].device
            captions = list(first["caption"])[: ev.num_samples]
            pipe = DiffsoundPipeline(decoder, self.vqvae(config, device), self.vocoder(config, device),
                                     self.text_encoder(config, device))
            with torch.autocast(device.type, enabled=False):
                wavs = pipe.generate(captions, seconds=ev.sample_seconds, seed=0, **self.sample_kwargs(config))
            length = wavs.shape[-1]
            for i, caption in enumerate(captions):
                name = f"{i}_{_slug(caption)}"
                audio[f"{name}_generated"] = wavs[i, 0].cpu()
                audio[f"{name}_real"] = first["audio"][i, 0, :length].float().cpu()
        return EvalResult(metrics=result, audio=audio, sample_rate=config.data.sample_rate)

    def finish_metrics(self, result: dict[str, float], batches: int) -> None:
        """Add derived eval metrics to ``result`` in place (default: none)."""


# 3. The two families ---------------------------------------------------------------------------------------


@register_family
class DiffsoundFamily(MelTokenFamily):
    """Trains :class:`DiffsoundModel` (mask-and-replace discrete diffusion) on the token grids of a frozen mel
    VQ-VAE, conditioned on a frozen text encoder with condition dropout; evaluates the held-out diffusion loss
    and generates samples by parallel decoding."""

    name = "diffsound"
    config_class = DiffsoundRunConfig
    description = "Diffsound: text-conditioned discrete diffusion (mask-and-replace) over mel VQ-VAE token grids"

    def build_model(self, model_config: DiffsoundConfig) -> DiffsoundModel:
        return DiffsoundModel(model_config)

    def model_loss(self, model: nn.Module, grid: Tensor, text: Tensor, text_mask: Tensor,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return diffsound_loss(model, grid, text, text_mask, generator)

    def check_model(self, config: DiffsoundRunConfig, rows: int, codebook_size: int, text_dim: int) -> None:
        m, tok = config.model, config.tokenizer
        try:
            m.validate()
        except ValueError as err:
            raise ConfigError(str(err).replace("DiffsoundConfig.", "model.").replace("DiffsoundConfig:", "model:")
                              ) from None
        if (m.grid_rows, m.codebook_size) != (rows, codebook_size):
            raise ConfigError(f"model.grid_rows={m.grid_rows} and model.codebook_size={m.codebook_size} must match the "
                              f"VQ-VAE tokenizer.vqvae={tok.vqvae!r} ({rows} token rows x {codebook_size} codes): set "
                              f"model.grid_rows={rows} model.codebook_size={codebook_size}")
        if m.text_dim != text_dim:
            raise ConfigError(f"model.text_dim={m.text_dim} must equal the width of conditioning.text_encoder="
                              f"{config.conditioning.text_encoder!r} ({text_dim}): set model.text_dim={text_dim}")
        steps = config.eval.steps
        if steps is not None and not 1 <= steps <= m.num_steps:
            raise ConfigError(f"eval.steps: between 1 and model.num_steps={m.num_steps}, or null (all), got {steps}")

    def max_cols(self, config: DiffsoundRunConfig, rows: int) -> int:
        return config.model.max_cols

    def widen_hint(self, rows: int, cols: int) -> str:
        return f"set model.max_cols>={cols}"

    def sample_kwargs(self, config: DiffsoundRunConfig) -> dict[str, Any]:
        return {**super().sample_kwargs(config), "steps": config.eval.steps}


@register_family
class DiffsoundARFamily(MelTokenFamily):
    """Diffsound's autoregressive baseline: a one-codebook :class:`AudioLM` over the same frozen mel VQ-VAE
    grids read time-major, the same text encoder and condition dropout; evaluates held-out cross-entropy and
    generates samples token by token."""

    name = "diffsound_ar"
    config_class = DiffsoundARRunConfig
    description = "Diffsound's AR baseline: text-conditioned transformer LM over time-major mel VQ-VAE tokens"

    def build_model(self, model_config: AudioLMConfig) -> AudioLM:
        return AudioLM(model_config)

    def model_loss(self, model: nn.Module, grid: Tensor, text: Tensor, text_mask: Tensor,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = lm_loss(model, grid_to_sequence(grid), text, text_mask)  # deterministic: no generator
        metrics.pop("ce_k0", None)  # one codebook: the same number as the loss
        return loss, metrics

    def check_model(self, config: DiffsoundARRunConfig, rows: int, codebook_size: int, text_dim: int) -> None:
        m, tok = config.model, config.tokenizer
        try:
            m.validate()
        except ValueError as err:
            raise ConfigError(str(err).replace("AudioLMConfig.", "model.")) from None
        if (m.n_q, m.codebook_size) != (1, codebook_size):
            raise ConfigError(f"model.n_q={m.n_q} and model.codebook_size={m.codebook_size} must be one time-major "
                              f"stream of the VQ-VAE tokenizer.vqvae={tok.vqvae!r}'s codes ({codebook_size}): set "
                              f"model.n_q=1 model.codebook_size={codebook_size}")
        if m.text_dim != text_dim:
            raise ConfigError(f"model.text_dim={m.text_dim} must equal the width of conditioning.text_encoder="
                              f"{config.conditioning.text_encoder!r} ({text_dim}): set model.text_dim={text_dim}")
        if config.eval.top_k < 0:
            raise ConfigError(f"eval.top_k: must be >= 0 (0 = off), got {config.eval.top_k}")

    def max_cols(self, config: DiffsoundARRunConfig, rows: int) -> int:
        return config.model.max_len // rows

    def widen_hint(self, rows: int, cols: int) -> str:
        return f"set model.max_len>={rows * cols}"

    def sample_kwargs(self, config: DiffsoundARRunConfig) -> dict[str, Any]:
        return {**super().sample_kwargs(config), "top_k": config.eval.top_k or None}

    def finish_metrics(self, result: dict[str, float], batches: int) -> None:
        if batches:
            result["perplexity"] = math.exp(min(result["loss"], 50.0))


def _load_vqvae(spec: str, checkpoint: str = "last") -> MelVQVAE:
    """The VQ-VAE of ``tokenizer.vqvae``: a shipped name, a ``save_pretrained`` folder or a mel_vqvae run folder."""
    from course_lib.pipelines.diffsound import load_vqvae
    from course_lib.train.checkpoint import latest_checkpoint, load_from_run

    path = Path(spec).expanduser()
    try:
        if path.is_dir() and not (path / "config.json").is_file() and latest_checkpoint(path) is not None:
            model = load_from_run(path, which=checkpoint)
            if not isinstance(model, MelVQVAE):
                raise TypeError(f"the run holds a {type(model).__name__}, not a MelVQVAE")
            return model
        return load_vqvae(spec)
    except (OSError, ValueError, TypeError, TrainingError) as err:
        raise ConfigError(f"tokenizer.vqvae={spec!r}: {err} (tokenizer.vqvae takes pretrained:NAME, a "
                          f"MelVQVAE.save_pretrained folder or a mel_vqvae training run's folder)") from None
