"""``audiogen``: AudioGen's stage 2, a text-conditioned transformer LM over the tokens of a frozen codec.

The trained module is :class:`course_lib.lm.AudioLM`. Two frozen tools are loaded once per process (never
saved in checkpoints, never trained): the codec that turns audio into tokens (``tokenizer.codec``) and the
text encoder that turns captions into embeddings (``conditioning.text_encoder``). One training step
(Kreuk et al. 2023, §3; audiocraft's ``AudioGenSolver``, a ``MusicGenSolver``)::

    c      = Codec.encode(x)                       x (B, 1, T) audio  →  c (B, K, F) codes, no gradient
    e, m   = TextEncoder(y)                        captions → (B, L, D) embeddings, (B, L) mask, frozen
    m'     = drop_condition(m, p)                  each caption replaced by the null text with prob. p (0.1)
    loss   = AudioLM.loss(c, e, m')                mean cross-entropy (nats/token) of the K·F real tokens

The dropout ``p = conditioning.cond_drop`` is what makes classifier-free guidance possible at sampling time
(the same network learns ``p(c | y)`` and ``p(c)``); it is applied in training only, never in evaluation.
Evaluation reports the held-out (valid split) teacher-forced ``loss``, ``accuracy``, ``perplexity`` (e^loss)
and per-codebook ``ce_k{k}``, and writes ``eval.num_samples`` clips generated from the first eval captions
(CFG ``eval.cfg_scale``, ``eval.sample_seconds`` long) next to the real clips they describe.

Where the tools come from:

* ``tokenizer.codec``: ``"pretrained:codec_course"`` (a shipped codec), a folder written by
  ``Codec.save_pretrained``, or a ``codec`` training run's folder (read with ``load_from_run`` and
  ``tokenizer.checkpoint``). ``tokenizer.cache_size`` > 0 keeps the codes of that many clips in memory,
  keyed by a hash of their samples: the course data repeats its clips every epoch and the CPU codec costs
  more per clip than the LM step, so after the first epoch the cache cuts a CPU step from ~1.8 s to
  ~0.75 s. (It lives in the process only: a resumed run re-encodes, which gives the same codes unless float
  rounding that depends on the batch flips a nearest-code choice.)
* ``conditioning.text_encoder``: any :func:`course_lib.text.load_text_encoder` spec (``"course"``,
  ``"t5:t5-large"``, ...). ``model.text_dim`` must equal its width.

Train it::

    python -m course_lib.train audiogen --config tiny train.run_dir=runs/audiogen_tiny \\
        tokenizer.codec=/path/to/a/saved/codec
    python -m course_lib.train audiogen --config course train.run_dir=runs/audiogen_course
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.codecs.codec import Codec
from course_lib.lm.model import AudioLM, AudioLMConfig
from course_lib.lm.patterns import make_pattern
from course_lib.nn.guidance import drop_condition
from course_lib.text.base import TextEmbedding, TextEncoder
from course_lib.train.config import EvalConfig, RunConfig
from course_lib.train.errors import ConfigError, TrainingError
from course_lib.train.families import register_family
from course_lib.train.families.base import Batch, EvalResult, Family, unwrap_model

# 1. Configs ----------------------------------------------------------------------------------------------


@dataclass
class ConditioningConfig:
    """The ``conditioning`` section: the frozen text encoder (a :func:`~course_lib.text.load_text_encoder`
    spec) and ``cond_drop``, the probability that a caption is replaced by the null text in training
    (AudioGen: 0.1)."""

    text_encoder: str = "course"
    cond_drop: float = 0.1


@dataclass
class TokenizerConfig:
    """The ``tokenizer`` section: the frozen codec whose tokens the LM models (``codec``: ``"pretrained:NAME"``,
    a ``save_pretrained`` folder, or a codec run folder read at ``checkpoint`` ``last``/``best``/``ema``), and
    ``cache_size``, how many clips' codes to keep in memory (0 = encode every batch)."""

    codec: str = "pretrained:codec_course"
    checkpoint: Literal["last", "best", "ema"] = "last"
    cache_size: int = 0


@dataclass
class AudioGenEvalConfig(EvalConfig):
    """Evaluation settings, plus how the ``num_samples`` audio samples are generated: ``sample_seconds`` long,
    guidance ``cfg_scale`` (AudioGen: 3), ``temperature`` and ``top_k`` (audiocraft: 1 and 250)."""

    sample_seconds: float = 1.0
    cfg_scale: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    best_metric: str = "loss"


@dataclass
class AudioGenRunConfig(RunConfig):
    """The ``audiogen`` run config: shared sections plus ``model`` (:class:`AudioLMConfig`), ``conditioning``,
    ``tokenizer`` and ``eval``."""

    model: AudioLMConfig = field(default_factory=AudioLMConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    eval: AudioGenEvalConfig = field(default_factory=AudioGenEvalConfig)


# 2. The loss through the (possibly wrapped) model -------------------------------------------------------


def lm_loss(model: nn.Module, codes: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """:meth:`AudioLM.loss` of codes ``(B, K, F)`` given text ``(B, L, D)`` and mask ``(B, L)``.

    A bare :class:`AudioLM` computes it itself. Under DistributedDataParallel (or ``torch.compile``) the same
    computation runs with the forward called through the wrapper, so DDP sees the call and syncs gradients:
    interleave by the pattern, shift right, cross-entropy over the real (non-padding) tokens only.
    """
    lm = unwrap_model(model)
    if model is lm:
        return lm.loss(codes, text, text_mask)
    target = lm.pattern.interleave(codes, lm.special_id)  # (B, K, S)
    logits = model(lm.shift_right(target), text, text_mask).float()  # (B, K, S, V)
    valid = lm.pattern.valid_mask(codes.shape[2], codes.device).expand_as(target)
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), target.masked_fill(~valid, -100), reduction="none")
    loss = ce.sum() / valid.sum()
    with torch.no_grad():
        metrics = {f"ce_k{k}": ce[:, k].sum() / valid[:, k].sum() for k in range(lm.config.n_q)}
        metrics["accuracy"] = ((logits.argmax(-1) == target) & valid).sum() / valid.sum()
    return loss, metrics


def _slug(caption: str, limit: int = 48) -> str:
    """A file-name-safe short form of a caption for sample names."""
    return re.sub(r"[^a-z0-9]+", "_", caption.lower()).strip("_")[:limit] or "unconditional"


def _stamp(spec: str) -> float:
    """Modification time of the newest file under a folder spec (0 for names): a changed folder reloads."""
    path = Path(spec.partition("course:")[2] or spec).expanduser()
    if not path.is_dir():
        return 0.0
    return max((p.stat().st_mtime for p in path.rglob("*.safetensors")), default=0.0)


def frozen_text_encoder(cache: dict, spec: str, device: torch.device | str = "cpu") -> TextEncoder:
    """The frozen text encoder of the spec ``conditioning.text_encoder`` on ``device``, loaded once into ``cache``
    (a family's tool cache; a course folder reloads when its files change). A spec that cannot be loaded is a
    :class:`ConfigError` naming the config key. Shared by every text-conditioned family."""
    key = ("text", spec, _stamp(spec), str(device))
    if key not in cache:
        from course_lib.pipelines.audiogen import load_text

        try:
            encoder = load_text(spec)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(f"conditioning.text_encoder={spec!r}: {err}") from None
        cache[key] = encoder.to(device).freeze()
    return cache[key]


def embed_captions(encoder: TextEncoder, captions: Any, family: str, device: torch.device) -> TextEmbedding:
    """A batch's captions (a list of ``B`` str; ``""`` = no text) → the frozen ``encoder``'s embeddings on
    ``device``, fp32, no gradient. Anything else is a :class:`TrainingError` naming ``family``. Shared by every
    text-conditioned family."""
    if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
        raise TrainingError(f"the {family} family needs a caption (str) for every clip; the batch's 'caption' is "
                            f"{type(captions).__name__} {str(captions)[:80]} (use a captioned data.source)")
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return encoder.encode(list(captions)).to(device)


def cached_tokens(cache: OrderedDict, audio: Tensor, encode: Callable[[Tensor], Tensor], size: int,
                  codebook_size: int) -> Tensor:
    """``encode(audio)`` for a batch ``(B, 1, T)`` (fp32), clip by clip through ``cache``, an LRU of at most ``size``
    clips keyed by a hash of each clip's samples, so clips seen before (a fixed dataset's next epoch) are not
    encoded again. Tokens are stored on the CPU as int16 (int32 for codebooks above 2^15) and returned as long
    on the audio's device, stacked as ``encode`` stacks them. Shared by the token-modelling families."""
    keys = [hashlib.blake2b(a.detach().cpu().numpy().tobytes(), digest_size=16).digest() for a in audio]
    out: list[Tensor | None] = [None] * len(keys)
    for i, key in enumerate(keys):
        if key in cache:
            cache.move_to_end(key)  # least recently used clips leave first
            out[i] = cache[key]
    missing = [i for i, tokens in enumerate(out) if tokens is None]
    if missing:
        dtype = torch.int16 if codebook_size <= 2**15 else torch.int32
        for i, tokens in zip(missing, encode(audio[missing]).cpu()):
            out[i] = cache[keys[i]] = tokens.to(dtype)
    while len(cache) > size:
        cache.popitem(last=False)
    return torch.stack(out).long().to(audio.device)


# 3. The family -------------------------------------------------------------------------------------------


@register_family
class AudioGenFamily(Family):
    """Trains :class:`AudioLM` on the codes of a frozen codec, conditioned on a frozen text encoder, with
    condition dropout for classifier-free guidance; evaluates held-out cross-entropy and generates samples."""

    name = "audiogen"
    config_class = AudioGenRunConfig
    description = "AudioGen stage 2: text-conditioned transformer LM over codec tokens (delay pattern, CFG)"

    def __init__(self) -> None:
        self._tools: dict[tuple, Any] = {}
        self._codes: dict[tuple, OrderedDict[bytes, Tensor]] = {}

    # ---- the frozen tools ---------------------------------------------------------------------------------

    def codec(self, config: AudioGenRunConfig, device: torch.device | str = "cpu") -> Codec:
        """The frozen codec of ``tokenizer.codec`` on ``device`` (loaded once per process and folder state)."""
        tc = config.tokenizer
        key = ("codec", tc.codec, tc.checkpoint, _stamp(tc.codec), str(device))
        if key not in self._tools:
            self._tools[key] = _load_codec(tc.codec, tc.checkpoint).to(device).eval().requires_grad_(False)
        return self._tools[key]

    def text_encoder(self, config: AudioGenRunConfig, device: torch.device | str = "cpu") -> TextEncoder:
        """The frozen text encoder of ``conditioning.text_encoder`` on ``device`` (loaded once)."""
        return frozen_text_encoder(self._tools, config.conditioning.text_encoder, device)

    def tokenize(self, audio: Tensor, config: AudioGenRunConfig) -> Tensor:
        """Audio ``(B, 1, T)`` → codes ``(B, K, F)`` (long, on the audio's device) with the frozen codec, in fp32
        and without gradient; clips seen before come from the in-memory cache when ``tokenizer.cache_size``."""
        codec = self.codec(config, audio.device)
        size = config.tokenizer.cache_size
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            audio = audio.float()
            if size <= 0:
                return codec.encode(audio)
            tc = config.tokenizer
            cache = self._codes.setdefault((tc.codec, tc.checkpoint, _stamp(tc.codec), audio.shape[-1]),
                                           OrderedDict())
            return cached_tokens(cache, audio, codec.encode, size, codec.config.codebook_size)

    def embed(self, captions: Any, config: AudioGenRunConfig, device: torch.device) -> TextEmbedding:
        """Captions (a list of ``B`` str; ``""`` = no text) → frozen text embeddings on ``device``, fp32."""
        return embed_captions(self.text_encoder(config, device), captions, self.name, device)

    # ---- engine hooks -------------------------------------------------------------------------------------

    def validate(self, config: AudioGenRunConfig) -> None:
        super().validate(config)
        m, cond, tok, ev = config.model, config.conditioning, config.tokenizer, config.eval
        try:
            m.validate()
        except ValueError as err:
            raise ConfigError(str(err).replace("AudioLMConfig.", "model.")) from None
        if not 0.0 <= cond.cond_drop <= 1.0:
            raise ConfigError(f"conditioning.cond_drop: a probability in [0, 1] (AudioGen: 0.1), got {cond.cond_drop}")
        if tok.cache_size < 0:
            raise ConfigError(f"tokenizer.cache_size: must be >= 0 (0 = no cache), got {tok.cache_size}")
        if ev.sample_seconds <= 0 or ev.temperature < 0 or ev.top_k < 0:
            raise ConfigError(f"eval.sample_seconds must be > 0, eval.temperature and eval.top_k >= 0; got "
                              f"{ev.sample_seconds}, {ev.temperature}, {ev.top_k}")
        codec = self.codec(config)
        cc = codec.config
        if cc.sample_rate != config.data.sample_rate:
            raise ConfigError(f"data.sample_rate={config.data.sample_rate} must equal the sample rate of "
                              f"tokenizer.codec={tok.codec!r} ({cc.sample_rate} Hz): set data.sample_rate={cc.sample_rate}")
        if (m.n_q, m.codebook_size) != (cc.n_q, cc.codebook_size):
            raise ConfigError(f"model.n_q={m.n_q} and model.codebook_size={m.codebook_size} must match the codec "
                              f"tokenizer.codec={tok.codec!r} ({cc.n_q} codebooks x {cc.codebook_size} entries): set "
                              f"model.n_q={cc.n_q} model.codebook_size={cc.codebook_size}")
        dim = self.text_encoder(config).dim
        if m.text_dim != dim:
            raise ConfigError(f"model.text_dim={m.text_dim} must equal the width of conditioning.text_encoder="
                              f"{cond.text_encoder!r} ({dim}): set model.text_dim={dim}")
        pattern = make_pattern(m.pattern, m.n_q)
        lengths = {"data.clip_seconds": config.data.clip_seconds}
        if ev.num_samples > 0:
            lengths["eval.sample_seconds"] = ev.sample_seconds
        for key, seconds in lengths.items():
            frames = codec.num_frames(round(seconds * cc.sample_rate))
            steps = pattern.seq_len(max(frames, 1))
            if steps > m.max_len:
                raise ConfigError(f"{key}={seconds} is {frames} codec frames = {steps} {m.pattern}-pattern steps, "
                                  f"more than model.max_len={m.max_len}: set model.max_len>={steps} or shorten {key}")

    def metric_names(self, config: AudioGenRunConfig) -> set[str]:
        return {"loss", "perplexity", "accuracy", *(f"ce_k{k}" for k in range(config.model.n_q))}

    def build_model(self, model_config: AudioLMConfig) -> AudioLM:
        return AudioLM(model_config)

    def _inputs(self, batch: Batch, config: AudioGenRunConfig) -> tuple[Tensor, TextEmbedding]:
        audio = batch["audio"]
        return self.tokenize(audio, config), self.embed(batch.get("caption"), config, audio.device)

    def loss_step(self, model: nn.Module, batch: Batch, config: AudioGenRunConfig
                  ) -> tuple[Tensor, dict[str, float]]:
        codes, text = self._inputs(batch, config)
        mask = text.mask
        dropped = 0.0
        if unwrap_model(model).training and config.conditioning.cond_drop > 0:  # CFG's condition dropout
            new_mask = drop_condition(mask, config.conditioning.cond_drop)
            dropped = float((mask.any(dim=1) & ~new_mask.any(dim=1)).float().mean())
            mask = new_mask
        loss, metrics = lm_loss(model, codes, text.embeddings, mask)
        logs = {k: float(v) for k, v in metrics.items()}
        logs["cond_dropped"] = dropped
        return loss, logs

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], config: AudioGenRunConfig) -> EvalResult:
        lm = unwrap_model(model)
        sums: dict[str, float] = {}
        n = 0
        first: Batch | None = None
        for batch in batches:
            first = first if first is not None else batch
            loss, metrics = self.loss_step(lm, batch, config)  # lm is in eval mode: no condition dropout
            for k, v in {"loss": float(loss), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        result = {k: v / max(n, 1) for k, v in sums.items()}
        result.pop("cond_dropped", None)
        if n:
            result["perplexity"] = math.exp(min(result["loss"], 50.0))
        audio: dict[str, Tensor] = {}
        ev = config.eval
        if first is not None and ev.num_samples > 0:
            from course_lib.pipelines.audiogen import AudioGenPipeline

            device = first["audio"].device
            captions = list(first["caption"])[: ev.num_samples]
            pipe = AudioGenPipeline(lm, self.codec(config, device), self.text_encoder(config, device))
            with torch.autocast(device.type, enabled=False):
                wavs = pipe.generate(captions, seconds=ev.sample_seconds, cfg_scale=ev.cfg_scale,
                                     temperature=ev.temperature, top_k=ev.top_k or None, seed=0)
            length = wavs.shape[-1]
            for i, caption in enumerate(captions):
                name = f"{i}_{_slug(caption)}"
                audio[f"{name}_generated"] = wavs[i, 0].cpu()
                audio[f"{name}_real"] = first["audio"][i, 0, :length].float().cpu()
        return EvalResult(metrics=result, audio=audio, sample_rate=config.data.sample_rate)


def _load_codec(spec: str, checkpoint: str = "last") -> Codec:
    """The codec of ``tokenizer.codec``: a shipped name, a ``save_pretrained`` folder or a codec run folder."""
    from course_lib.pipelines.audiogen import load_codec
    from course_lib.train.checkpoint import latest_checkpoint, load_from_run

    path = Path(spec).expanduser()
    try:
        if path.is_dir() and not (path / "config.json").is_file() and latest_checkpoint(path) is not None:
            from course_lib.train.families.codec import codec_of

            return codec_of(load_from_run(path, which=checkpoint))
        return load_codec(spec)
    except (OSError, ValueError, TypeError, TrainingError) as err:
        raise ConfigError(f"tokenizer.codec={spec!r}: {err} (tokenizer.codec takes pretrained:NAME, a "
                          f"Codec.save_pretrained folder or a codec training run's folder)") from None
