"""Noise2Music end to end: captions → text encoder → generator (low-rate waveform) → cascader (16 kHz).

Huang et al. 2023 ("Noise2Music: Text-conditioned Music Generation with Diffusion Models") generate music
with a **cascade** of diffusion models, every one a 1-D Efficient U-Net
(:class:`~course_lib.diffusion.unet1d.UNet1D`) cross-attending to frozen text embeddings:

* the **generator** samples a low-rate waveform ``(B, 1, T_low)`` from the caption (the paper's 3.2 kHz
  waveform model: the course uses 3.2 kHz too);
* the **cascader** samples the 16 kHz waveform ``(B, 1, T)``, ``T = T_low · 16000 / 3200``, given the caption
  and the low-rate audio, which is upsampled to 16 kHz (band-limited sinc, :func:`course_lib.audio.resample`)
  and stacked with the noisy ``x_t`` along channels (``in_channels = 2``, as Imagen's super-resolution
  models). The cascader was trained with **noise-conditioning augmentation**: its low-rate input corrupted
  by the forward process at a random level ``s``, with ``s`` given to the U-Net (``aug_level``); at sampling
  a fixed level is used (:attr:`Noise2MusicStageConfig.aug_level`), so the generator's small errors look
  like the noise the cascader learned to see through.

Both stages are sampled with DDIM (or ancestral DDPM) and classifier-free guidance on the text (the
low-rate audio is never dropped) from :mod:`course_lib.diffusion.gaussian`.

A trained stage is a :class:`Noise2MusicStage`: the U-Net plus everything needed to sample it — its
:class:`~course_lib.diffusion.gaussian.GaussianDiffusionConfig` (schedule, parameterisation, steps, guidance
scale), the two rates, the peak level its audio was scaled to, and (cascader) the sampling augmentation
level — saved together (``config.json`` + ``model.safetensors``), so :meth:`Noise2MusicPipeline.from_pretrained`
loads the whole cascade in one call.

**Audio level.** The training families scale every 16 kHz clip to a peak of :attr:`Noise2MusicStageConfig.peak`
(0.9 by default; the course music is generated between −6 and −1 dBFS, so this is a gain of 1.1 to 1.8)
and make the low-rate audio by resampling *that* clip: the generator learns, and the cascader is
conditioned on, exactly the same signal. (Band-limiting moves the peak: 0.56 to 1.01 on 24 test clips, so
a low-rate sample can overshoot 1 by a hair; the samplers clip x̂₀ to [−1, 1].) Real low-rate inputs for
:meth:`Noise2MusicPipeline.upsample` go through :func:`to_low_rate` (or :meth:`Noise2MusicPipeline.to_low`)
first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.audio import resample
from course_lib.diffusion.gaussian import GaussianDiffusion, GaussianDiffusionConfig, guided
from course_lib.diffusion.unet1d import UNet1D, UNet1DConfig
from course_lib.pipelines.audiogen import _eval_mode, _load_model, load_text
from course_lib.text.base import TextEmbedding, TextEncoder
from course_lib.text.prompts import encode_prompts

__all__ = ["Noise2MusicStageConfig", "Noise2MusicStage", "Noise2MusicPipeline", "ResizeConvUp", "load_stage",
           "scale_to_peak", "to_low_rate", "STAGES", "SAMPLERS", "UPSAMPLERS"]

STAGES = ("generator", "cascader")
SAMPLERS = ("ddim", "ddpm")
UPSAMPLERS = ("subpixel", "nearest", "linear")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def _generator_unet() -> UNet1DConfig:
    return UNet1DConfig()


# ---- the stage: a U-Net and how to sample it ------------------------------------------------------------------


@dataclass
class Noise2MusicStageConfig:
    """One stage of the cascade: ``stage`` (``"generator"`` or ``"cascader"``), its ``unet``
    (:class:`UNet1DConfig`) and ``diffusion`` (:class:`GaussianDiffusionConfig`: schedule, parameterisation,
    ``num_steps`` and ``guidance_scale``, the sampling defaults, and ``cond_drop``, the training dropout).

    ``low_rate``: the generator's output rate and the cascader's conditioning rate in Hz (Noise2Music: 3200).
    ``high_rate``: the cascader's output rate, the rate the training data arrive at (16000). ``peak``: the
    peak level every training clip was scaled to (module docstring). ``aug_level``: the cascader's
    noise-conditioning augmentation level at sampling, a diffusion time in [0, 1) of ``diffusion.schedule``
    (0 = clean; the generator ignores it). A generator has ``unet.in_channels = 1`` and no
    ``aug_conditioning``; a cascader ``in_channels = 2`` (noisy audio + upsampled low-rate audio) and
    ``aug_conditioning = True``. Both need ``unet.text_dim`` (they cross-attend to the text).

    ``residual`` (cascader only; False in the paper): the cascader diffuses the *residual* ``x − up(c)``, what
    the 16 kHz clip adds to its sinc-upsampled low-rate version ``up(c)``, and :meth:`Noise2MusicPipeline.upsample`
    returns ``up(c) + high_band(r̂)``: only the part of the sample above the low rate's Nyquist frequency is
    added, so the input's low band passes through untouched (AudioSR's low-frequency replacement). A deviation
    from Noise2Music, which diffuses the clip itself: with the U-Net's zero-initialised output and
    x0-prediction an untrained cascader then *is* sinc upsampling, so training only has to add the high band
    instead of first learning to copy the low one.

    ``upsample``: how the U-Net's decoder upsamples. ``"subpixel"`` (the default, and the shipped course stages):
    :class:`UNet1D`'s own sub-pixel layer, a 1×1 conv to ``s`` phases interleaved in time. Its ``s`` phases have
    their own weights and biases, which training pulls apart, so the output carries a fixed pattern with the
    period of the stride product at that layer: spectral lines at multiples of ``rate / 4`` (last layer) and
    ``rate / 16`` (the one before) in every clip; MEASURED on the shipped course stages (per-clip prominence over
    the neighbouring ±16-80 Hz): the generator's 800 and 1600 Hz (its Nyquist) lines +6 and +8 dB, the
    cascader's 4, 7 and 8 kHz lines +15, +16, +18 dB, all gone (about 0 dB) when those layers' phases are set
    equal. ``"nearest"`` / ``"linear"``: resize-convolution (:class:`ResizeConvUp`; Odena et al. 2016,
    imagen-pytorch's default ``Upsample``): interpolate ×s, then a kernel-3 conv, the same weights at every
    output sample, so there is no per-phase pattern to learn (a constant input stays constant).
    Left out of :meth:`to_dict` while it is ``"subpixel"``: configs saved before the option existed compare equal.
    """

    stage: Literal["generator", "cascader"] = "generator"
    low_rate: int = 3200
    high_rate: int = 16000
    peak: float = 0.9
    aug_level: float = 0.0
    residual: bool = False
    unet: UNet1DConfig = field(default_factory=_generator_unet)
    diffusion: GaussianDiffusionConfig = field(default_factory=GaussianDiffusionConfig)
    upsample: Literal["subpixel", "nearest", "linear"] = field(default="subpixel", metadata={"omit_if_default": True})

    @classmethod
    def cascader(cls, **overrides) -> Noise2MusicStageConfig:
        """A cascader: the default U-Net made 2-channel and augmentation-conditioned, Noise2Music's (unconfirmed)
        linear schedule for cascaders, and the course cascader's measured choices (``n2m_cascader_course.yaml``):
        x0-prediction, no guidance by default, sampling augmentation level 0.03. ``overrides`` replace fields."""
        base = cls(stage="cascader", aug_level=0.03, unet=UNet1DConfig(in_channels=2, aug_conditioning=True),
                   diffusion=GaussianDiffusionConfig(schedule="linear", parameterisation="x0", guidance_scale=1.0))
        return dataclasses.replace(base, **overrides)

    @property
    def output_rate(self) -> int:
        """The rate of the audio this stage generates: ``low_rate`` (generator) or ``high_rate`` (cascader)."""
        return self.low_rate if self.stage == "generator" else self.high_rate

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work (the U-Net's and diffusion's own checks too)."""
        if self.stage not in STAGES:
            raise ValueError(f"Noise2MusicStageConfig.stage: expected one of {STAGES}, got {self.stage!r}")
        for name in ("low_rate", "high_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Noise2MusicStageConfig.{name}: must be a positive int (Hz), got {value!r}")
        if self.low_rate >= self.high_rate:
            raise ValueError(f"Noise2MusicStageConfig: low_rate ({self.low_rate} Hz) must be below high_rate "
                             f"({self.high_rate} Hz)")
        if not 0.0 < self.peak <= 1.0:
            raise ValueError(f"Noise2MusicStageConfig.peak: must be in (0, 1], got {self.peak!r}")
        if not 0.0 <= self.aug_level < 1.0:
            raise ValueError(f"Noise2MusicStageConfig.aug_level: a diffusion time in [0, 1), got {self.aug_level!r}")
        if not isinstance(self.residual, bool) or (self.residual and self.stage != "cascader"):
            raise ValueError(f"Noise2MusicStageConfig.residual: a bool, and True only for a cascader (it diffuses "
                             f"what the 16 kHz clip adds to its upsampled input), got {self.residual!r} for a {self.stage}")
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"Noise2MusicStageConfig.upsample: expected one of {UPSAMPLERS}, got {self.upsample!r}")
        self.unet.validate()
        self.diffusion.validate()
        u = self.unet
        want = (1, False) if self.stage == "generator" else (2, True)
        if (u.in_channels, u.aug_conditioning) != want:
            raise ValueError(f"Noise2MusicStageConfig: a {self.stage} needs unet.in_channels={want[0]} and "
                             f"unet.aug_conditioning={want[1]} (got {u.in_channels} and {u.aug_conditioning})"
                             + ("; its input is the noisy audio stacked with the upsampled low-rate audio"
                                if self.stage == "cascader" else ""))
        if u.out_channels != 1:
            raise ValueError(f"Noise2MusicStageConfig: unet.out_channels must be 1 (mono audio), got {u.out_channels}")
        if u.text_dim is None:
            raise ValueError("Noise2MusicStageConfig: unet.text_dim must be the text encoder's width (the stages "
                             "are text-conditioned), got None")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (the U-Net and diffusion configs nested; ``upsample`` only when not the
        default ``"subpixel"``, so an old-style stage writes the same ``config.json`` as before the option)."""
        data = dataclasses.asdict(self)
        if data["upsample"] == "subpixel":
            del data["upsample"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Noise2MusicStageConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown Noise2MusicStageConfig keys {unknown}; known keys: {sorted(names)}")
        data = dict(data)
        if "unet" in data:
            data["unet"] = UNet1DConfig.from_dict(data["unet"])
        if "diffusion" in data:
            data["diffusion"] = GaussianDiffusionConfig.from_dict(data["diffusion"])
        return cls(**data)


class ResizeConvUp(nn.Module):
    """×``stride`` upsampling by resize-convolution: ``F.interpolate`` (``mode`` ``"nearest"`` or ``"linear"``)
    then a ``kernel_size`` conv ``c_in → c_out`` at the high rate (Odena et al. 2016, "Deconvolution and
    Checkerboard Artifacts"; imagen-pytorch's ``Upsample``). Unlike :class:`UNet1D`'s sub-pixel layer it has no
    per-phase weights: every output sample is made by the same filter, so training cannot learn a fixed
    pattern with the stride's period (:attr:`Noise2MusicStageConfig.upsample`). Costs a kernel-3 conv at the
    high rate instead of a 1×1 one at the low rate."""

    def __init__(self, c_in: int, c_out: int, stride: int, mode: str = "linear", kernel_size: int = 3) -> None:
        super().__init__()
        if mode not in ("nearest", "linear"):
            raise ValueError(f"ResizeConvUp: mode must be 'nearest' or 'linear', got {mode!r}")
        self.stride, self.c_out, self.mode = stride, c_out, mode
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "linear":
            x = F.interpolate(x, scale_factor=self.stride, mode="linear", align_corners=False)
        else:
            x = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return self.conv(x)


def _upsampler_kind(unet: UNet1D) -> str:
    """``"subpixel"`` for a U-Net with its own upsampling layers, else the mode of its :class:`ResizeConvUp` ones."""
    kinds = {up.mode if isinstance(up, ResizeConvUp) else "subpixel" for up in unet.upsamples}
    if len(kinds) != 1:
        raise ValueError(f"Noise2MusicStage: the U-Net mixes upsampling layers {sorted(kinds)}")
    return kinds.pop()


class Noise2MusicStage(nn.Module):
    """A generator or cascader: :class:`UNet1D` ``(B, C_in, T) → (B, 1, T)`` plus its sampling settings.

    Built from a :class:`Noise2MusicStageConfig` (a new random U-Net), or around an existing ``unet`` (its
    weights shared; its config replaces ``config.unet``).
    :meth:`forward` is the U-Net's (``x, t, text, text_mask, aug_level``); :attr:`diffusion` is a
    :class:`GaussianDiffusion` with the stage's config. :meth:`save_pretrained` / :meth:`from_pretrained`
    write and read ``config.json`` (the whole :class:`Noise2MusicStageConfig`) and ``model.safetensors``.
    """

    def __init__(self, config: Noise2MusicStageConfig | None = None, unet: UNet1D | None = None) -> None:
        super().__init__()
        config = config or Noise2MusicStageConfig()
        if unet is not None:  # wrap an existing U-Net (weights shared): its own config (and upsampling) wins
            if not isinstance(unet, UNet1D):
                raise TypeError(f"Noise2MusicStage: unet must be a UNet1D, got {type(unet).__name__}")
            config = dataclasses.replace(config, unet=unet.config, upsample=_upsampler_kind(unet))
        config.validate()
        self.config = config
        if unet is None:
            unet = UNet1D(config.unet)
            if config.upsample != "subpixel":  # resize-convolution instead of the U-Net's sub-pixel layers
                u = config.unet
                outs = [u.channels, *u.widths()[:-1]]
                for j, i in enumerate(reversed(range(len(u.strides)))):
                    unet.upsamples[j] = ResizeConvUp(u.widths()[i], outs[i], u.strides[i], config.upsample)
        self.unet = unet

    @property
    def diffusion(self) -> GaussianDiffusion:
        """The Gaussian diffusion (schedule, parameterisation, samplers) this stage was trained with."""
        return GaussianDiffusion(self.config.diffusion)

    def valid_length(self, n: int) -> int:
        """``n`` rounded up to a length the U-Net takes (a multiple of the product of its strides)."""
        return self.unet.valid_length(n)

    def num_parameters(self) -> int:
        """Total number of parameters (all in the U-Net)."""
        return self.unet.num_parameters()

    def forward(self, x: Tensor, t: Tensor | float, text: Tensor | None = None, text_mask: Tensor | None = None,
                aug_level: Tensor | float | None = None) -> Tensor:
        """The U-Net's prediction ``(B, 1, T)`` (ε, v or x₀ per ``config.diffusion.parameterisation``)."""
        return self.unet(x, t, text, text_mask, aug_level)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created if needed); return it."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> Noise2MusicStage:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors, nothing unpickled); eval mode."""
        from safetensors.torch import load_model

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder} does not hold a saved Noise2MusicStage ({CONFIG_FILE} and {WEIGHTS_FILE})")
        data = json.loads((folder / CONFIG_FILE).read_text())
        if "stage" not in data:
            raise ValueError(f"{folder / CONFIG_FILE} is not a Noise2MusicStage config (no 'stage' key): a bare "
                             f"UNet1D folder? Load it with UNet1D.from_pretrained and wrap it with "
                             f"Noise2MusicStage(config, unet=unet)")
        model = cls(Noise2MusicStageConfig.from_dict(data))
        load_model(model, str(folder / WEIGHTS_FILE), device=str(map_location))
        return model.to(map_location).eval()


def load_stage(spec: str | os.PathLike | Noise2MusicStage) -> Noise2MusicStage:
    """A :class:`Noise2MusicStage` by shipped name (``"n2m_generator_course"``, ``"pretrained:NAME"``) or folder
    (written by :meth:`Noise2MusicStage.save_pretrained`); eval mode, on the CPU."""
    return _load_model(spec, Noise2MusicStage, "stage")


# ---- audio levels and rates ------------------------------------------------------------------------------------


def _as_batch(audio: Tensor | np.ndarray, name: str) -> Tensor:
    """Float audio ``(T,)``, ``(B, T)`` or ``(B, 1, T)`` → ``(B, 1, T)`` float32, or a clear error."""
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, Tensor) or not audio.is_floating_point():
        got = f"dtype {audio.dtype}" if isinstance(audio, Tensor) else type(audio).__name__
        raise TypeError(f"{name} must be float audio (a tensor or NumPy array), got {got}")
    if audio.dim() == 1:
        audio = audio[None, None]
    elif audio.dim() == 2:
        audio = audio[:, None]
    if audio.dim() != 3 or audio.shape[1] != 1 or audio.shape[-1] == 0:
        raise ValueError(f"{name} must be mono audio (T,), (B, T) or (B, 1, T), got shape {tuple(audio.shape)}")
    return audio.float()


def scale_to_peak(audio: Tensor, peak: float = 0.9) -> Tensor:
    """Scale each clip of ``audio`` ``(..., T)`` to the given peak level (its own gain; silence stays silent)."""
    return audio * (peak / audio.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8))


def to_low_rate(audio: Tensor | np.ndarray, sample_rate: int, low_rate: int = 3200, peak: float | None = 0.9) -> Tensor:
    """Real audio → the low-rate input a cascader was trained on: ``(B, 1, T_low)`` float32.

    Each clip (``(T,)``, ``(B, T)`` or ``(B, 1, T)`` at ``sample_rate`` Hz) is scaled to ``peak`` (None keeps its
    level) and resampled (band-limited) to ``low_rate`` Hz, ``T_low = ceil(T · low_rate / sample_rate)``.
    """
    wav = _as_batch(audio, "audio")
    if peak is not None:
        wav = scale_to_peak(wav, peak)
    return resample(wav, int(sample_rate), int(low_rate))


# ---- the pipeline ------------------------------------------------------------------------------------------------


class Noise2MusicPipeline:
    """Text-to-music with Noise2Music's cascade: ``prompts`` (``B`` captions) → ``(B, 1, T)`` float32 at 16 kHz.

    Holds a frozen ``text_encoder`` and the two stages (:class:`Noise2MusicStage`, or a bare :class:`UNet1D`
    together with its :class:`GaussianDiffusionConfig`). ``gen_diffusion_cfg`` / ``casc_diffusion_cfg``
    replace a stage's own diffusion config when given (e.g. other default steps or guidance scale; the
    schedule and parameterisation must stay those it was trained with). Either stage may be ``None`` (a
    generator-only pipeline while the cascader trains; a cascader-only one to upsample real audio); the
    methods that need a missing stage say so. The stages must agree on the rates and the text width, else
    ``ValueError``.

    :meth:`generate_low` samples the low-rate audio, :meth:`upsample` runs the cascader on any low-rate audio,
    :meth:`generate` (also ``__call__``) does both, :meth:`time_generation` times each stage.
    """

    def __init__(self, generator: Noise2MusicStage | UNet1D | None, cascader: Noise2MusicStage | UNet1D | None,
                 text_encoder: TextEncoder, gen_diffusion_cfg: GaussianDiffusionConfig | None = None,
                 casc_diffusion_cfg: GaussianDiffusionConfig | None = None) -> None:
        if not isinstance(text_encoder, TextEncoder):
            raise TypeError(f"Noise2MusicPipeline: text_encoder must be a TextEncoder, got {type(text_encoder).__name__}")
        if generator is None and cascader is None:
            raise ValueError("Noise2MusicPipeline needs a generator, a cascader or both")
        self.generator = _as_stage(generator, "generator", gen_diffusion_cfg)
        self.cascader = _as_stage(cascader, "cascader", casc_diffusion_cfg)
        for stage in (self.generator, self.cascader):
            if stage is not None and stage.config.unet.text_dim != text_encoder.dim:
                raise ValueError(f"the {stage.config.stage} was trained on {stage.config.unet.text_dim}-d text "
                                 f"embeddings but the text encoder gives {text_encoder.dim}-d ones: use the text "
                                 f"encoder it was trained with")
        if self.generator is not None and self.cascader is not None:
            g, c = self.generator.config, self.cascader.config
            if g.low_rate != c.low_rate:
                raise ValueError(f"the generator makes {g.low_rate} Hz audio but the cascader was trained on "
                                 f"{c.low_rate} Hz inputs: use stages trained for the same low rate")
        self.text_encoder = text_encoder

    @classmethod
    def from_pretrained(cls, generator: str | os.PathLike | None = "n2m_generator_course",
                        cascader: str | os.PathLike | None = "n2m_cascader_course",
                        text_encoder: str | os.PathLike = "course", device: str | torch.device = "cpu") -> Noise2MusicPipeline:
        """Load both stages (shipped names or :meth:`Noise2MusicStage.save_pretrained` folders; ``None`` leaves a
        stage out) and the text encoder (a :func:`course_lib.text.load_text_encoder` spec), on ``device``."""
        return cls(None if generator is None else load_stage(generator),
                   None if cascader is None else load_stage(cascader), load_text(text_encoder)).to(device)

    def to(self, device: str | torch.device) -> Noise2MusicPipeline:
        """Move the models to ``device``; returns self."""
        for m in (self.generator, self.cascader, self.text_encoder):
            if m is not None:
                m.to(device)
        return self

    # ---- arithmetic -------------------------------------------------------------------------------------------

    def _stage(self, name: str) -> Noise2MusicStage:
        stage = getattr(self, name)
        if stage is None:
            raise ValueError(f"this pipeline has no {name}: build it with one (Noise2MusicPipeline(generator, "
                             f"cascader, text_encoder) or from_pretrained({name}=...))")
        return stage

    @property
    def device(self) -> torch.device:
        """Where the stages run (the first stage's device)."""
        stage = self.generator if self.generator is not None else self.cascader
        return next(stage.parameters()).device

    @property
    def low_rate(self) -> int:
        """The low (generator) rate in Hz."""
        return (self.generator or self.cascader).config.low_rate

    @property
    def sample_rate(self) -> int:
        """The final (cascader) rate in Hz: ``high_rate`` of the stages."""
        return (self.cascader or self.generator).config.high_rate

    def num_low_samples(self, seconds: float) -> int:
        """Low-rate samples of a clip ``seconds`` long: ``round(seconds · low_rate)``."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        return max(1, round(seconds * self.low_rate))

    def num_samples(self, low_samples: int) -> int:
        """Final samples for ``low_samples`` low-rate ones: ``round(low_samples · sample_rate / low_rate)``."""
        return round(low_samples * self.sample_rate / self.low_rate)

    # ---- pieces -----------------------------------------------------------------------------------------------

    def encode_text(self, prompts: Sequence[str]) -> TextEmbedding:
        """Captions → :class:`~course_lib.text.TextEmbedding` on the stages' device (``""`` = no condition);
        a :class:`~course_lib.text.PromptWarning` for each prompt the text encoder cannot read as written (empty,
        too long, mostly unknown words: :func:`course_lib.text.prompt_report`)."""
        return encode_prompts(self.text_encoder, prompts, self.device)

    def _text(self, prompts: Sequence[str] | TextEmbedding) -> TextEmbedding:
        """``prompts`` through :meth:`encode_text` (which warns), or an embedding it already made, as is: so that
        :meth:`generate` encodes (and warns about) its prompts once for both stages."""
        return prompts.to(self.device) if isinstance(prompts, TextEmbedding) else self.encode_text(prompts)

    def _sample(self, stage: Noise2MusicStage, net, text: TextEmbedding, length: int, steps: int | None,
                cfg_scale: float | None, sampler: str, generator: torch.Generator) -> Tensor:
        """Run ``sampler`` on ``net(x_t, t, text, text_mask)`` with CFG; ``(B, 1, valid_length(length))``."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        scale = stage.config.diffusion.guidance_scale if cfg_scale is None else cfg_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"cfg_scale must be a number (1 = no guidance) or None (the stage's own), got {cfg_scale!r}")
        model_fn = guided(net, {"text": text.embeddings, "text_mask": text.mask}, scale=float(scale))
        shape = (len(text), 1, stage.valid_length(length))
        diffusion = stage.diffusion
        with _eval_mode(stage):
            if sampler == "ddim":
                return diffusion.ddim_sample(model_fn, shape, steps, generator=generator, device=self.device)
            return diffusion.ddpm_sample(model_fn, shape, steps, generator=generator, device=self.device)

    def to_low(self, audio: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        """Real audio ``(T,)``, ``(B, T)`` or ``(B, 1, T)`` at ``sample_rate`` Hz → the low-rate input the stages
        were trained on, ``(B, 1, T_low)`` (:func:`to_low_rate` at the stages' ``low_rate`` and ``peak``)."""
        stage = self.cascader or self.generator
        return to_low_rate(audio, sample_rate, stage.config.low_rate, stage.config.peak).to(self.device)

    # ---- generation -------------------------------------------------------------------------------------------

    def generate_low(self, prompts: Sequence[str] | TextEmbedding, seconds: float = 4.0, steps: int | None = None,
                     cfg_scale: float | None = None, seed: int = 0, sampler: str = "ddim") -> Tensor:
        """The generator's low-rate audio for ``B`` captions: ``(B, 1, T_low)`` float32, ``T_low = round(seconds ·
        low_rate)`` (sampled at the U-Net's next valid length, then cropped).

        ``steps``: sampling steps (None = the stage's ``diffusion.num_steps``); ``cfg_scale``: guidance (None =
        the stage's ``diffusion.guidance_scale``; 1 = none); ``sampler``: ``"ddim"`` (deterministic, η = 0) or
        ``"ddpm"`` (ancestral); ``seed`` makes it reproducible. ``prompts`` may also be their :meth:`encode_text`.
        """
        stage = self._stage("generator")
        _check_seed(seed)
        length = self.num_low_samples(seconds)
        text = self._text(prompts)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        audio = self._sample(stage, stage, text, length, steps, cfg_scale, sampler, generator)
        return audio[..., :length].clamp(-1.0, 1.0)

    def upsample(self, low: Tensor | np.ndarray, prompts: Sequence[str] | TextEmbedding, steps: int | None = None,
                 cfg_scale: float | None = None, aug_level: float | None = None, seed: int = 0,
                 sampler: str = "ddim") -> Tensor:
        """The cascader's 16 kHz audio from low-rate audio ``low`` and ``B`` captions: ``(B, 1, T)`` float32,
        ``T = round(T_low · sample_rate / low_rate)``.

        ``low``: ``(B, 1, T_low)``, ``(B, T_low)`` or one clip ``(T_low,)`` for every caption, at ``low_rate`` Hz
        and the training level (a generator's output, or real audio through :func:`to_low_rate`). It is
        upsampled to 16 kHz, noised to ``aug_level`` (a diffusion time of the cascader's schedule; None = the
        stage's ``aug_level``; 0 = clean) with noise drawn from ``seed``, and stacked with ``x_t``. ``steps``,
        ``cfg_scale`` (on the text only), ``sampler``, ``seed`` as :meth:`generate_low`. A ``residual`` cascader
        samples what to add to the (clean) upsampled input; its :meth:`high_band` is added, and the sum returned.
        ``prompts`` may also be their :meth:`encode_text`.
        """
        stage = self._stage("cascader")
        _check_seed(seed)
        text = self._text(prompts)
        low = _as_batch(low, "low").to(self.device)
        if low.shape[0] == 1 and len(text) > 1:
            low = low.expand(len(text), -1, -1)
        if low.shape[0] != len(text):
            raise ValueError(f"low holds {low.shape[0]} clips but {len(text)} prompts were given: one clip per prompt "
                             f"(or one for all)")
        level = stage.config.aug_level if aug_level is None else aug_level
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= level < 1.0:
            raise ValueError(f"aug_level must be a diffusion time in [0, 1) (0 = clean conditioning), got {aug_level!r}")
        length = self.num_samples(low.shape[-1])
        padded = stage.valid_length(length)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            cond = resample(low, self.low_rate, self.sample_rate)[..., :length]
            cond = torch.nn.functional.pad(cond, (0, padded - cond.shape[-1]))
        clean = cond
        generator = torch.Generator(device=self.device).manual_seed(seed)
        levels = torch.full((len(text),), float(level), device=self.device)
        if level > 0:
            cond = stage.diffusion.q_sample(cond, levels, generator=generator)

        def net(x_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
            return stage(torch.cat([x_t, cond], dim=1), t, text, text_mask, aug_level=levels)

        audio = self._sample(stage, net, text, length, steps, cfg_scale, sampler, generator)[..., :length]
        if stage.config.residual:
            audio = clean[..., :length] + self.high_band(audio)
        return audio.clamp(-1.0, 1.0)

    def high_band(self, audio: Tensor) -> Tensor:
        """What of 16 kHz audio ``(B, 1, T)`` (``T`` a multiple of ``sample_rate / low_rate``) lies above the low
        rate's Nyquist frequency: ``audio − up(down(audio))`` with the pipeline's sinc resampler. A residual
        cascader keeps only this part of what it samples, so the input's low band passes through untouched
        (AudioSR's low-frequency replacement): a sampled residual's low band can only be error."""
        step = self.sample_rate // self.low_rate
        if audio.dim() != 3 or audio.shape[-1] % step:
            raise ValueError(f"high_band expects 16 kHz audio (B, 1, T) with T a multiple of {step} "
                             f"(sample_rate / low_rate), got shape {tuple(audio.shape)}")
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            low = resample(audio.float(), self.sample_rate, self.low_rate)
            return audio - resample(low, self.low_rate, self.sample_rate)[..., : audio.shape[-1]]

    def generate(self, prompts: Sequence[str], seconds: float = 4.0, steps: int | None = None,
                 cfg_scale: float | None = None, casc_steps: int | None = None, casc_cfg_scale: float | None = None,
                 aug_level: float | None = None, seed: int = 0, sampler: str = "ddim",
                 return_low: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Both stages: captions → 16 kHz audio ``(B, 1, T)``, ``T = round(seconds · low_rate) · sample_rate /
        low_rate`` (or ``(low, audio)`` with ``return_low``). ``steps``/``cfg_scale`` are the generator's,
        ``casc_steps``/``casc_cfg_scale``/``aug_level`` the cascader's (None = each stage's own); the cascader
        draws from ``seed + 1``. The prompts are encoded (and checked: :meth:`encode_text`) once, for both stages."""
        text = self.encode_text(prompts)
        low = self.generate_low(text, seconds, steps, cfg_scale, seed, sampler)
        audio = self.upsample(low, text, casc_steps, casc_cfg_scale, aug_level, seed + 1, sampler)
        return (low, audio) if return_low else audio

    __call__ = generate

    def time_generation(self, prompts: Sequence[str], seconds: float = 4.0, **kwargs) -> tuple[Tensor, dict[str, float]]:
        """:meth:`generate` (same keyword arguments) and its wall-clock seconds per stage: ``{"generator": s,
        "cascader": s, "total": s}``."""
        gen_keys = {"steps", "cfg_scale", "seed", "sampler"}
        casc = {"casc_steps": "steps", "casc_cfg_scale": "cfg_scale", "aug_level": "aug_level"}
        unknown = sorted(set(kwargs) - gen_keys - set(casc))
        if unknown:
            raise TypeError(f"time_generation got unknown arguments {unknown}")
        seed = kwargs.get("seed", 0)
        t0 = time.perf_counter()
        text = self.encode_text(prompts)  # once for both stages (one warning per problem prompt)
        low = self.generate_low(text, seconds, **{k: v for k, v in kwargs.items() if k in gen_keys})
        t1 = time.perf_counter()
        audio = self.upsample(low, text, seed=seed + 1, sampler=kwargs.get("sampler", "ddim"),
                              **{casc[k]: v for k, v in kwargs.items() if k in casc})
        t2 = time.perf_counter()
        return audio, {"generator": t1 - t0, "cascader": t2 - t1, "total": t2 - t0}


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _as_stage(model: Noise2MusicStage | UNet1D | None, name: str,
              diffusion: GaussianDiffusionConfig | None) -> Noise2MusicStage | None:
    """A :class:`Noise2MusicStage` of kind ``name`` from a stage or a bare U-Net (+ diffusion config)."""
    if model is None:
        return None
    if diffusion is not None and not isinstance(diffusion, GaussianDiffusionConfig):
        raise TypeError(f"the {name}'s diffusion config must be a GaussianDiffusionConfig, got {type(diffusion).__name__}")
    if isinstance(model, Noise2MusicStage):
        if model.config.stage != name:
            raise ValueError(f"the {name} argument holds a {model.config.stage} stage")
        if diffusion is None:
            return model
        return Noise2MusicStage(dataclasses.replace(model.config, diffusion=diffusion), unet=model.unet)
    if isinstance(model, UNet1D):
        if diffusion is None:
            raise ValueError(f"a bare UNet1D {name} needs its GaussianDiffusionConfig ({'gen' if name == 'generator' else 'casc'}"
                             f"_diffusion_cfg=...): the schedule and parameterisation it was trained with")
        base = Noise2MusicStageConfig() if name == "generator" else Noise2MusicStageConfig.cascader()
        return Noise2MusicStage(dataclasses.replace(base, diffusion=diffusion), unet=model)
    raise TypeError(f"{name} must be a Noise2MusicStage, a UNet1D or None, got {type(model).__name__}")
