"""MelGAN (Kumar et al., NeurIPS 2019): a fully convolutional GAN that turns a log-mel spectrogram into audio.

The **generator** maps a log-mel ``(B, n_mels, frames)`` to a waveform ``(B, 1, frames * hop)``: a kernel-7
conv to ``ngf * 2**len(ratios)`` channels (512 in the paper), then for each upsampling ratio ``r`` (paper:
``[8, 8, 2, 2]``, product = the mel hop 256) a LeakyReLU, a transposed conv (kernel ``2r``, stride ``r``,
halving the channels) and a *residual stack* of dilated convs (dilations 1, 3, 9) that widens the receptive
field; finally a kernel-7 conv to one channel and ``tanh``. Every conv is weight-normalised and padded by
reflection. The **multi-scale discriminator** runs the same conv net on the audio, on the audio average-pooled
×2 and ×4 (``AvgPool1d(4, 2, padding=1, count_include_pad=False)``); each scale is a kernel-15 conv, four
grouped strided convs (kernel 41, stride 4, groups = in_channels / 4, channels ×4 up to 1024), a kernel-5
conv and a kernel-3 conv to one channel of logits, and returns its feature maps for feature matching.

Objectives (paper eqs. 1–3, ``course_lib.nn.gan``): the discriminator minimises the hinge loss
``Σ_k E[max(0, 1 − D_k(x))] + E[max(0, 1 + D_k(G(s)))]``; the generator minimises
``Σ_k −E[D_k(G(s))] + λ_fm · L_FM`` with ``λ_fm = 10``, where ``L_FM`` is the mean L1 distance between the
discriminator's feature maps on real and generated audio.

Deviations from the paper, stated plainly:

* the input is ``course_lib.audio.log_mel`` (natural log of a Slaney mel magnitude, centred STFT, so
  ``frames = 1 + T // hop``), not the official code's ``log10`` of an uncentred mel; the generator's output
  (``frames * hop`` samples) is therefore cropped to the ``T`` samples of the clip for the losses;
* the losses are averaged over the discriminator's scales and layers (the official code sums the three
  scales and weights feature matching by ``4 / (n_layers + 1) / n_scales``);
* an optional mel reconstruction loss ``λ_mel · |log_mel(G(s)) − s|₁`` (as HiFi-GAN adds, with λ = 45) is
  available in training (``loss.lambda_mel`` of the ``melgan`` family); it is **off (0) in the paper config**
  and on in the course's CPU configs, where it makes a few minutes of training sound like speech-free
  audio rather than noise;
* default PyTorch initialisation (the official ``normal(0, 0.02)`` init is a no-op on weight-normed convs);
* an optional periodic activation, ``activation="snake"`` (BigVGAN, Lee et al. 2023: ``x + sin²(αx) / α`` with
  a learned ``α`` per channel) in place of the generator's LeakyReLU(0.2). The paper uses LeakyReLU (the
  default); snake makes long, steady sinusoids (music partials, beeps) easy to produce.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from course_lib.audio import MelConfig, MelSpectrogram

__all__ = [
    "MelGANConfig", "MelGAN", "MelGANGenerator", "MultiScaleDiscriminator", "ScaleDiscriminator",
    "ResidualStack", "ResidualUnit", "Snake", "receptive_field", "generator_output_length", "check_log_mel",
]

LOG_AMIN = 1e-5  # the floor of course_lib.audio.log_mel
PAPER_GENERATOR_PARAMETERS = 4.26e6  # Kumar et al. 2019, Table "number of parameters"


# --------------------------------------------------------------------------------------------------------
# Arithmetic a student can check by hand
# --------------------------------------------------------------------------------------------------------


def receptive_field(kernel_size: int = 3, dilations: Sequence[int] = (1, 3, 9)) -> int:
    """Receptive field, in samples at the stack's rate, of stacked dilated convs (stride 1).

    Each conv of kernel ``k`` and dilation ``d`` widens the field by ``(k − 1) · d``, so a stack sees
    ``1 + (k − 1) · Σ d`` input samples per output sample: 27 for MelGAN's kernel 3 and dilations 1, 3, 9
    (the 1×1 convs of a residual unit add nothing). A test measures it from an impulse response.
    """
    if kernel_size < 1 or not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"need kernel_size >= 1 and dilations >= 1, got {kernel_size}, {list(dilations)}")
    return 1 + (kernel_size - 1) * sum(int(d) for d in dilations)


def generator_output_length(frames: int, ratios: Sequence[int] = (8, 8, 2, 2)) -> int:
    """Samples the generator makes from ``frames`` mel frames: ``frames · Π ratios`` (= frames · hop).

    Each transposed conv (kernel ``2r``, stride ``r``, padding ``r//2 + r%2``, output padding ``r%2``) turns a
    length ``L`` into exactly ``L · r``: ``(L − 1) r − 2 pad + 2r + out_pad = L r``.
    """
    if frames < 0 or any(int(r) < 1 for r in ratios):
        raise ValueError(f"need frames >= 0 and ratios >= 1, got {frames}, {list(ratios)}")
    return frames * math.prod(int(r) for r in ratios)


def check_log_mel(log_mel: Tensor, n_mels: int, who: str, min_frames: int = 1) -> Tensor:
    """Validate a log-mel batch ``(B, n_mels, frames)`` (a single ``(n_mels, frames)`` gets a batch axis);
    raise a ``ValueError`` that says what was expected (bands, frames) and what came."""
    if not isinstance(log_mel, Tensor):
        raise TypeError(f"{who} expects a log-mel tensor (B, {n_mels}, frames), got {type(log_mel).__name__}")
    if log_mel.dim() == 2:
        log_mel = log_mel[None]
    if log_mel.dim() != 3:
        raise ValueError(f"{who} expects a log-mel (B, n_mels={n_mels}, frames), got shape {tuple(log_mel.shape)}")
    if log_mel.shape[1] != n_mels:
        raise ValueError(f"{who} expects {n_mels} mel bands (B, {n_mels}, frames), got {log_mel.shape[1]} "
                         f"(shape {tuple(log_mel.shape)}); compute the mel with the model's mel_config()")
    if log_mel.shape[2] < min_frames:
        raise ValueError(f"{who} needs at least {min_frames} mel frames, got {log_mel.shape[2]}")
    if log_mel.is_complex() or not log_mel.is_floating_point():
        raise TypeError(f"{who} expects a real floating-point log-mel, got dtype {log_mel.dtype}")
    return log_mel


# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------


@dataclass
class MelGANConfig:
    """Architecture of :class:`MelGAN` and its mel front end (Hz, samples, bands). Defaults: the paper.

    Mel: ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``, ``f_min``, ``f_max`` (None = Nyquist) define the
    ``course_lib.audio.MelConfig`` whose :func:`~course_lib.audio.log_mel` the generator reads. Generator:
    ``ngf`` (32: the first conv has ``ngf · 2**len(upsample_ratios)`` = 512 channels), ``upsample_ratios``
    (product must equal ``hop_length``), ``residual_kernel`` and ``dilations`` of each residual stack.
    Discriminator: ``num_scales`` (3), ``disc_channels`` (16, the first conv), ``disc_layers`` (4 strided
    convs), ``disc_stride`` (4; kernel ``10 · stride + 1`` = 41), ``disc_max_channels`` (1024).
    """

    sample_rate: int = 22_050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None
    ngf: int = 32
    upsample_ratios: tuple[int, ...] = (8, 8, 2, 2)
    residual_kernel: int = 3
    dilations: tuple[int, ...] = (1, 3, 9)
    activation: str = "leaky_relu"
    num_scales: int = 3
    disc_channels: int = 16
    disc_layers: int = 4
    disc_stride: int = 4
    disc_max_channels: int = 1024

    def mel_config(self) -> MelConfig:
        """The mel front end this model reads: magnitude mel (power 1), Slaney scale and norm."""
        return MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                         n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max, power=1.0)

    def min_frames(self) -> int:
        """Fewest mel frames the generator accepts: reflection padding needs an input longer than the pad (3 for
        the first conv; the largest dilated conv's pad at the first, shortest, upsampled stage). 4 for the paper."""
        stack_pad = max(self.dilations) * (self.residual_kernel - 1) // 2
        return max(4, stack_pad // self.upsample_ratios[0] + 1)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work (e.g. ratios that do not multiply to the hop)."""
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels", "ngf", "residual_kernel", "num_scales",
                    "disc_channels", "disc_layers", "disc_stride", "disc_max_channels"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"MelGANConfig.{key}: must be > 0, got {getattr(self, key)}")
        if not self.upsample_ratios or any(r < 1 for r in self.upsample_ratios):
            raise ValueError(f"MelGANConfig.upsample_ratios: need ratios >= 1, got {list(self.upsample_ratios)}")
        if math.prod(self.upsample_ratios) != self.hop_length:
            raise ValueError(f"MelGANConfig.upsample_ratios {list(self.upsample_ratios)} multiply to "
                             f"{math.prod(self.upsample_ratios)}, but hop_length is {self.hop_length}: the "
                             f"generator must make exactly one hop of samples per mel frame")
        if self.residual_kernel % 2 == 0:
            raise ValueError(f"MelGANConfig.residual_kernel: must be odd, got {self.residual_kernel}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"MelGANConfig.dilations: need dilations >= 1, got {list(self.dilations)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MelGANConfig.activation: must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.disc_channels % 4:
            raise ValueError(f"MelGANConfig.disc_channels: must be a multiple of 4 (groups = channels / 4), "
                             f"got {self.disc_channels}")
        self.mel_config()  # raises on an impossible mel front end


# --------------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------------


def _wn_conv(*args, **kwargs) -> nn.Conv1d:
    return weight_norm(nn.Conv1d(*args, **kwargs))


class Snake(nn.Module):
    """BigVGAN's periodic activation ``x + sin²(α x) / α`` over ``(B, C, T)``, with a learned ``α > 0`` per channel.

    ``α`` is stored as its log (initialised to 0: ``α = 1``) so it stays positive. Near 0 it is ``x + α x²``,
    for large ``|x|`` it rises like ``x`` with a ripple of period ``π / α``: a monotone-ish function that
    makes periodic signals easy to build (a stated deviation from MelGAN's LeakyReLU; option ``"snake"``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.log_alpha.exp()
        return x + torch.sin(alpha * x).pow(2) / alpha


def _leaky_relu(channels: int) -> nn.Module:
    return nn.LeakyReLU(0.2)


ACTIVATIONS = {"leaky_relu": _leaky_relu, "snake": Snake}  # name -> (channels -> module)


class ResidualUnit(nn.Module):
    """``shortcut(x) + conv1x1(lrelu(conv_k,d(reflect_pad(lrelu(x)))))`` over ``(B, C, T)``; length kept.

    One unit of MelGAN's residual stack: a dilated conv (kernel ``k``, dilation ``d``, reflection padding
    ``d (k − 1) / 2``), a 1×1 conv, and a weight-normed 1×1 shortcut (as in the official code).
    """

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1, activation: str = "leaky_relu") -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.block = nn.Sequential(
            act(channels),
            nn.ReflectionPad1d(dilation * (kernel_size - 1) // 2),
            _wn_conv(channels, channels, kernel_size, dilation=dilation),
            act(channels),
            _wn_conv(channels, channels, 1),
        )
        self.shortcut = _wn_conv(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.block(x)


class ResidualStack(nn.Module):
    """Residual units with growing dilations (1, 3, 9): ``(B, C, T)`` → ``(B, C, T)``.

    Its receptive field is :func:`receptive_field` ``(kernel_size, dilations)`` samples (27 for MelGAN), at
    the rate of the upsampling stage it follows.
    """

    def __init__(self, channels: int, kernel_size: int = 3, dilations: Sequence[int] = (1, 3, 9),
                 activation: str = "leaky_relu") -> None:
        super().__init__()
        self.kernel_size, self.dilations = kernel_size, tuple(dilations)
        self.units = nn.Sequential(*[ResidualUnit(channels, kernel_size, d, activation) for d in dilations])

    def forward(self, x: Tensor) -> Tensor:
        return self.units(x)

    @property
    def receptive_field(self) -> int:
        """Input samples that influence one output sample (see :func:`receptive_field`)."""
        return receptive_field(self.kernel_size, self.dilations)


class MelGANGenerator(nn.Module):
    """Log-mel ``(B, n_mels, frames)`` → waveform ``(B, 1, frames · hop_length)`` in (−1, 1).

    Calling it checks the input (bands; at least ``min_frames`` frames, 4 for the paper, for the reflection
    paddings) and raises an error that names the expected number of bands when it does not match.
    """

    def __init__(self, config: MelGANConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        act = ACTIVATIONS[config.activation]
        mult = 2 ** len(config.upsample_ratios)
        layers: list[nn.Module] = [nn.ReflectionPad1d(3), _wn_conv(config.n_mels, mult * config.ngf, 7)]
        for r in config.upsample_ratios:
            c_in, c_out = mult * config.ngf, mult * config.ngf // 2
            layers += [
                act(c_in),
                weight_norm(nn.ConvTranspose1d(c_in, c_out, kernel_size=2 * r, stride=r, padding=r // 2 + r % 2,
                                               output_padding=r % 2)),
                ResidualStack(c_out, config.residual_kernel, config.dilations, config.activation),
            ]
            mult //= 2
        layers += [act(mult * config.ngf), nn.ReflectionPad1d(3), _wn_conv(mult * config.ngf, 1, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.min_frames = config.min_frames()

    @property
    def hop_length(self) -> int:
        """Samples per mel frame (= the product of the upsampling ratios)."""
        return self.config.hop_length

    @property
    def mel_config(self) -> MelConfig:
        """The mel front end the input must come from."""
        return self.config.mel_config()

    def forward(self, log_mel: Tensor) -> Tensor:
        log_mel = check_log_mel(log_mel, self.config.n_mels, "MelGANGenerator", min_frames=self.min_frames)
        return self.net(log_mel)


# --------------------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------------------


class ScaleDiscriminator(nn.Module):
    """One scale of MelGAN's discriminator: audio ``(B, 1, T)`` → (logits ``(B, 1, T / stride**layers)``,
    feature maps). The feature maps are the outputs of every layer before the last (6 for the paper's 4
    strided layers), each ``(B, C_i, T_i)``, used by the feature-matching loss."""

    def __init__(self, channels: int = 16, layers: int = 4, stride: int = 4, max_channels: int = 1024) -> None:
        super().__init__()
        blocks = [nn.Sequential(nn.ReflectionPad1d(7), _wn_conv(1, channels, 15), nn.LeakyReLU(0.2))]
        nf = channels
        for _ in range(layers):
            nf_prev, nf = nf, min(nf * stride, max_channels)
            blocks.append(nn.Sequential(
                _wn_conv(nf_prev, nf, kernel_size=stride * 10 + 1, stride=stride, padding=stride * 5,
                         groups=nf_prev // 4),
                nn.LeakyReLU(0.2)))
        nf_prev, nf = nf, min(nf * 2, max_channels)
        blocks.append(nn.Sequential(_wn_conv(nf_prev, nf, 5, padding=2), nn.LeakyReLU(0.2)))
        blocks.append(_wn_conv(nf, 1, 3, padding=1))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = []
        x = audio
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats[-1], feats[:-1]


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` :class:`ScaleDiscriminator` on the audio and on copies average-pooled ×2, ×4, ...

    ``forward(audio (B, 1, T))`` returns ``(logits, feats)``: ``logits[k]`` is ``(B, 1, T_k)`` and
    ``feats[k]`` the list of feature maps of scale ``k`` (k = 0 is the raw audio). Pooling is
    ``AvgPool1d(4, stride=2, padding=1, count_include_pad=False)`` (halves an even length).
    """

    def __init__(self, config: MelGANConfig) -> None:
        super().__init__()
        self.scales = nn.ModuleList([
            ScaleDiscriminator(config.disc_channels, config.disc_layers, config.disc_stride, config.disc_max_channels)
            for _ in range(config.num_scales)])
        self.pool = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)
        self.min_samples = 8 * 2 ** (config.num_scales - 1)  # the coarsest scale still reflect-pads by 7

    def forward(self, audio: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"MultiScaleDiscriminator expects audio (B, 1, T), got shape {tuple(audio.shape)}")
        if audio.shape[-1] < self.min_samples:
            raise ValueError(f"MultiScaleDiscriminator needs at least {self.min_samples} samples, got {audio.shape[-1]}")
        logits, feats = [], []
        x = audio
        for k, disc in enumerate(self.scales):
            if k > 0:
                x = self.pool(x)
            out, maps = disc(x)
            logits.append(out)
            feats.append(maps)
        return logits, feats


# --------------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------------


@dataclass
class _GANOutputs:
    """What one training phase of :meth:`MelGAN.forward` returns (see there)."""

    fake: Tensor
    fake_logits: list[Tensor]
    fake_feats: list[list[Tensor]] = field(default_factory=list)
    real_logits: list[Tensor] = field(default_factory=list)
    real_feats: list[list[Tensor]] = field(default_factory=list)


class MelGAN(nn.Module):
    """MelGAN: ``generator`` (:class:`MelGANGenerator`) + ``discriminator`` (:class:`MultiScaleDiscriminator`).

    As a vocoder, ``model(log_mel)`` with ``log_mel`` ``(B, n_mels, frames)`` from :meth:`features` (=
    ``course_lib.audio.log_mel(audio, config.mel_config())``) returns audio ``(B, 1, frames · hop)``.
    For training, ``model(log_mel, audio, phase="discriminator" | "generator")`` runs everything a phase needs
    in one call (so DDP sees one forward per backward): see :meth:`adversarial`.
    """

    def __init__(self, config: MelGANConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.mel = MelSpectrogram(config.mel_config())
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.generator = MelGANGenerator(config)
        self.discriminator = MultiScaleDiscriminator(config)

    @property
    def mel_config(self) -> MelConfig:
        """The mel front end the vocoder reads."""
        return self.config.mel_config()

    @property
    def hop_length(self) -> int:
        """Samples per mel frame."""
        return self.config.hop_length

    def features(self, audio: Tensor) -> Tensor:
        """Audio ``(B, 1, T)``, ``(B, T)`` or ``(T,)`` → log-mel ``(B, n_mels, 1 + T // hop)``, differentiable.

        Numerically ``course_lib.audio.log_mel(audio, config.mel_config())`` (centred Hann STFT, Slaney mel,
        natural log floored at 1e-5), computed here with ``torch.stft`` so gradients flow (mel loss).
        """
        if audio.dim() == 3:
            if audio.shape[1] != 1:
                raise ValueError(f"MelGAN expects mono audio (B, 1, T), got shape {tuple(audio.shape)}")
            audio = audio[:, 0]
        elif audio.dim() == 1:
            audio = audio[None]
        elif audio.dim() != 2:
            raise ValueError(f"expected audio (B, 1, T), (B, T) or (T,), got shape {tuple(audio.shape)}")
        cfg = self.config
        if audio.shape[-1] < cfg.n_fft // 2 + 1:
            raise ValueError(f"audio has {audio.shape[-1]} samples; the mel front end needs at least "
                             f"{cfg.n_fft // 2 + 1} (n_fft={cfg.n_fft})")
        spec = torch.stft(audio.float(), cfg.n_fft, cfg.hop_length, cfg.n_fft, self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        return torch.log(torch.matmul(self.mel.filters, spec.abs()).clamp_min(LOG_AMIN))

    def adversarial(self, log_mel: Tensor, audio: Tensor, phase: str) -> _GANOutputs:
        """One training phase: generate from ``log_mel``, crop to ``audio``'s ``T`` samples, discriminate.

        ``phase="discriminator"``: the generator runs without gradients; returns real and fake logits (for
        the hinge loss). ``phase="generator"``: returns the fake audio (with gradients), fake logits and
        feature maps, and the real feature maps computed without gradients (feature matching).
        """
        T = audio.shape[-1]
        if phase == "discriminator":
            with torch.no_grad():
                fake = self.generator(log_mel)[..., :T]
            real_logits, _ = self.discriminator(audio)
            fake_logits, _ = self.discriminator(fake)
            return _GANOutputs(fake=fake, fake_logits=fake_logits, real_logits=real_logits)
        if phase == "generator":
            fake = self.generator(log_mel)[..., :T]
            fake_logits, fake_feats = self.discriminator(fake)
            with torch.no_grad():
                real_logits, real_feats = self.discriminator(audio)
            return _GANOutputs(fake=fake, fake_logits=fake_logits, fake_feats=fake_feats, real_logits=real_logits,
                               real_feats=real_feats)
        raise ValueError(f"phase must be 'discriminator' or 'generator', got {phase!r}")

    def forward(self, log_mel: Tensor, audio: Tensor | None = None, phase: str | None = None):
        """``model(log_mel)`` → audio ``(B, 1, frames · hop)``; with ``audio`` and ``phase``, :meth:`adversarial`."""
        if phase is None:
            return self.generator(log_mel)
        if audio is None:
            raise ValueError("MelGAN.forward: a training phase needs the real audio (B, 1, T) too")
        return self.adversarial(log_mel, audio, phase)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (generator and discriminator) and ``config.json`` into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> MelGAN:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors, nothing unpickled); eval mode."""
        from safetensors.torch import load_model

        folder = Path(folder)
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a saved MelGAN: {name} is missing")
        raw = json.loads((folder / "config.json").read_text())
        names = {f.name for f in dataclasses.fields(MelGANConfig)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{folder / 'config.json'}: unknown MelGANConfig keys {unknown}")
        for key in ("upsample_ratios", "dilations"):
            if key in raw:
                raw[key] = tuple(raw[key])
        model = cls(MelGANConfig(**raw))
        load_model(model, str(folder / "model.safetensors"), device=str(device))
        return model.to(device).eval()

    def num_parameters(self, part: str = "generator") -> int:
        """Parameter count of ``"generator"``, ``"discriminator"`` or ``"all"`` (weight norm's g and v both count)."""
        module = {"generator": self.generator, "discriminator": self.discriminator, "all": self}.get(part)
        if module is None:
            raise ValueError(f"part must be 'generator', 'discriminator' or 'all', got {part!r}")
        return sum(p.numel() for p in module.parameters())
