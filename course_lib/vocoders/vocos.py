"""Vocos (Siuzdak, 2023): a vocoder that predicts an STFT at the mel frame rate and inverts it with an iSTFT.

MelGAN (:mod:`course_lib.vocoders.melgan`) *upsamples* the mel frames to samples with transposed convolutions.
Vocos, the vocoder later work moved to, does not: everything runs at the frame rate. The **backbone** turns a
log-mel ``(B, n_mels, frames)`` into one feature vector per frame, ``(B, frames, dim)``: a kernel-7 conv
embedding, a LayerNorm, ``num_layers`` ConvNeXt blocks (Liu et al. 2022: depthwise conv, kernel 7 → LayerNorm →
Linear ``dim → intermediate_dim`` → GELU → Linear back → learned per-channel layer scale, initialised to
``1 / num_layers``; residual) and a final LayerNorm. The **iSTFT head** maps each frame's features linearly to
``n_fft + 2`` numbers: ``n_fft // 2 + 1`` log-magnitudes ``m`` and as many phases ``p``. The spectrum is
``S = min(exp(m), 100) · (cos p + i sin p)`` (Vocos' eqs.: the magnitude through ``exp``, clipped; the phase
through cos and sin, so it never needs unwrapping and no instantaneous frequency is computed), and the audio
is ``iSTFT(S)`` with the *same* ``n_fft`` and ``hop_length`` as the mel, a periodic Hann window and overlap-add.
``frames`` mel frames give ``frames · hop_length`` samples, as every vocoder of the course
(:class:`course_lib.vocoders.Vocoder`). A Griffin-Lim vocoder (:mod:`course_lib.vocoders.griffin_lim`) also ends
in an iSTFT; Vocos replaces its 32 iterations of phase retrieval with one network that predicts the magnitude
and the phase together.

Training (``python -m course_lib.train vocos``, :mod:`course_lib.train.families.vocos`): mel and
multi-resolution STFT reconstruction losses from the first step; optionally Vocos' GAN (a HiFi-GAN
multi-period discriminator and a UnivNet multi-resolution discriminator, :class:`VocosDiscriminator`, hinge loss
and feature matching) when ``use_discriminator`` is set.

Deviations from the paper, stated plainly:

* **Not a MelGAN**, on purpose: Vocos is the stated deviation from the MelGAN that Diffsound (and lesson 03)
  use. It is a drop-in replacement: same input (``course_lib.audio.log_mel``), same output length.
* the input is the course's mel front end (natural log of a Slaney mel magnitude, floored at 1e-5; 16 kHz,
  n_fft 1024, hop 256, 80 mels in the course configs), not Vocos' torchaudio HTK mel at 24 kHz with 100 bands
  and a 1e-7 floor;
* the iSTFT is *centred* (``torch.istft(center=True)``), because the course's mel is computed from a centred
  STFT: mel frame ``f`` is centred on sample ``f · hop``, and so is the synthesised frame ``f``, which makes the
  head an exact inverse of the analysis (a test feeds it a signal's STFT and gets the signal back). Vocos'
  "same"-padded iSTFT does the same job for its own front end;
* optional **phase advance** (``phase_advance=True``, off in the paper config, on in the course configs): the
  phase of frame ``f`` is ``p_f + Σ_{j ≤ f} δ_j``, the direct Vocos phase plus a running sum of a second head
  output ``δ`` (a per-frame phase advance per bin), initialised to the phase vocoder's bin-centre advance
  ``2π k · hop / n_fft`` with zero weights. Why: the backbone is a convolution over frames, so a perfectly
  steady mel (a held note) gives identical feature vectors in every frame, hence identical direct phases
  ``p``; identical frames overlap-added every ``hop`` samples make a signal of period ``hop`` exactly, i.e.
  partials only on multiples of ``sample_rate / hop`` (62.5 Hz at 16 kHz, hop 256): the same grid that defeats
  the course's MelGAN on music. A per-frame advance that is the same in every frame instead rotates the phase
  at the bin's own frequency. With ``δ`` at 0 the model is Vocos exactly, so this only adds freedom. The
  course measured the effect on a steady 440 Hz harmonic tone (true magnitudes): constant phase 4.1 dB log-mel
  distance, bin-centre advance 2.3 dB, exact phase 0.0 dB;
* optional **mel prior** for the magnitude (``mel_prior=True``, off in the paper config, on in the course
  configs): the log-magnitude is ``m + P · log_mel + c``, where the learnable linear map ``P`` (bands → bins) and
  bias ``c`` start as the interpolation that inverts the Slaney mel bank for a spectrum that is flat within each
  band (``P[k, b] = fb[b, k] / Σ_b fb[b, k]``, ``c_k = −Σ_b P[k, b] log Σ_k' fb[b, k']``), and ``m`` (the
  backbone's share) starts at 0. Vocos learns the magnitude from scratch, which its millions of GPU steps afford;
  on a CPU budget the first few hundred steps left loud partials 20-30 dB too quiet. With the prior the model
  starts where Griffin-Lim's pseudo-inverse starts (the course measured 1.2-2.7 dB log-mel distance for these
  magnitudes with the true phase) and training goes into the phase and the detail;
* weights are initialised as Vocos' code (truncated normal, std 0.02, zero biases), except the advance head
  and, with the mel prior, the magnitude rows of the head (zero).
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
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.audio import MelConfig, MelSpectrogram
from course_lib.vocoders.melgan import check_log_mel

__all__ = [
    "VocosConfig", "Vocos", "VocosBackbone", "ConvNeXtBlock", "ISTFTHead", "VocosDiscriminator",
    "MultiPeriodDiscriminator", "MultiResolutionDiscriminator", "PAPER_GENERATOR_PARAMETERS", "mel_prior_init",
]

LOG_AMIN = 1e-5  # the floor of course_lib.audio.log_mel
PAPER_GENERATOR_PARAMETERS = 13.5e6  # Siuzdak 2023, Table 1 (Vocos, mel input, 24 kHz)


# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------


@dataclass
class VocosConfig:
    """Architecture of :class:`Vocos` and its mel front end (Hz, samples, bands). Defaults: the paper's
    mel-spectrogram Vocos (24 kHz, n_fft 1024, hop 256, 100 mels; dim 512, intermediate 1536, 8 ConvNeXt blocks).

    Mel: ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``, ``f_min``, ``f_max`` (None = Nyquist) define the
    ``course_lib.audio.MelConfig`` whose :func:`~course_lib.audio.log_mel` the model reads; the iSTFT head uses
    the same ``n_fft`` and ``hop_length``. Backbone: ``dim`` (channels per frame), ``intermediate_dim`` (the
    ConvNeXt MLP's width), ``num_layers`` ConvNeXt blocks of depthwise ``kernel_size`` (odd),
    ``layer_scale_init`` (None: ``1 / num_layers``, as Vocos). Head: ``max_magnitude`` (100: the clip of
    ``exp(log-magnitude)``), ``phase_advance`` and ``mel_prior`` (see the module docstring; False in the paper).
    Discriminator (training only): ``use_discriminator``, ``mpd_periods`` (HiFi-GAN's 2, 3, 5, 7, 11),
    ``mpd_channels`` (HiFi-GAN's 32, 128, 512, 1024, 1024), ``mrd_resolutions`` (``[n_fft, hop, win]`` each, Vocos'
    three), ``mrd_channels`` (32). (``mpd_channels`` came last: a run config leaves it out while it has its default,
    so the runs trained before it existed resume.)
    """

    sample_rate: int = 24_000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 100
    f_min: float = 0.0
    f_max: float | None = None
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    kernel_size: int = 7
    layer_scale_init: float | None = None
    max_magnitude: float = 100.0
    phase_advance: bool = False
    mel_prior: bool = False
    use_discriminator: bool = True
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: tuple[int, ...] = field(default=(32, 128, 512, 1024, 1024), metadata={"omit_if_default": True})
    mrd_resolutions: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
    mrd_channels: int = 32

    def mel_config(self) -> MelConfig:
        """The mel front end this model reads: magnitude mel (power 1), Slaney scale and norm."""
        return MelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                         n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max, power=1.0)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work."""
        for key in ("sample_rate", "n_fft", "hop_length", "n_mels", "dim", "intermediate_dim", "num_layers",
                    "kernel_size", "mrd_channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (the depthwise conv keeps the frame count), got {self.kernel_size}")
        if self.n_fft % 2:
            raise ValueError(f"n_fft must be even, got {self.n_fft}")
        if self.hop_length > self.n_fft // 2:
            raise ValueError(f"hop_length ({self.hop_length}) must be at most n_fft / 2 ({self.n_fft // 2}): the "
                             "overlap-add of Hann windows needs at least 50% overlap here")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            raise ValueError(f"layer_scale_init must be > 0 or None, got {self.layer_scale_init}")
        if not (math.isfinite(self.max_magnitude) and self.max_magnitude > 0):
            raise ValueError(f"max_magnitude must be > 0, got {self.max_magnitude}")
        if self.use_discriminator:
            if not self.mpd_periods or any(int(p) < 1 for p in self.mpd_periods):
                raise ValueError(f"mpd_periods must be a non-empty list of ints >= 1, got {list(self.mpd_periods)}")
            if not self.mpd_channels or any(int(c) < 1 for c in self.mpd_channels):
                raise ValueError(f"mpd_channels must be a non-empty list of ints >= 1, got {list(self.mpd_channels)}")
            if not self.mrd_resolutions or any(len(r) != 3 or min(int(v) for v in r) <= 0 or int(r[2]) > int(r[0])
                                               for r in self.mrd_resolutions):
                raise ValueError(f"mrd_resolutions must be [n_fft, hop, win] with 0 < win <= n_fft, got "
                                 f"{[list(r) for r in self.mrd_resolutions]}")
        self.mel_config()  # checks the rate and band edges

    @property
    def n_freqs(self) -> int:
        """STFT bins the head predicts per frame: ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1


# --------------------------------------------------------------------------------------------------------
# Generator: ConvNeXt backbone + iSTFT head
# --------------------------------------------------------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block over frames, ``(B, dim, frames)`` → same shape (Liu et al. 2022, as in Vocos).

    ``x + γ ⊙ W₂ GELU(W₁ LayerNorm(DWConv_k(x)))``: a depthwise conv (kernel ``k``, each channel alone, zero
    padding ``k // 2``), a LayerNorm over channels, a two-layer MLP ``dim → intermediate_dim → dim`` applied
    to every frame, and a learned per-channel scale ``γ`` (initialised small, so each block starts near the
    identity).
    """

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int = 7, layer_scale_init: float = 0.125) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)  # (B, frames, dim)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class VocosBackbone(nn.Module):
    """Log-mel ``(B, n_mels, frames)`` → features ``(B, frames, dim)``, all at the frame rate.

    Kernel-7 conv embedding → LayerNorm → ``num_layers`` :class:`ConvNeXtBlock` → LayerNorm. Its receptive
    field is ``1 + (k − 1)(num_layers + 1)`` frames (55 for Vocos' 8 blocks of kernel 7: ±27 frames).
    """

    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        k = config.kernel_size
        scale = config.layer_scale_init if config.layer_scale_init is not None else 1.0 / config.num_layers
        self.embed = nn.Conv1d(config.n_mels, config.dim, k, padding=k // 2)
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.blocks = nn.ModuleList([ConvNeXtBlock(config.dim, config.intermediate_dim, k, scale)
                                     for _ in range(config.num_layers)])
        self.final_norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.receptive_field = 1 + (k - 1) * (config.num_layers + 1)

    def forward(self, log_mel: Tensor) -> Tensor:
        x = self.embed(log_mel)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x.transpose(1, 2))


class ISTFTHead(nn.Module):
    """Features ``(B, frames, dim)`` → audio ``(B, 1, frames · hop)`` through a predicted STFT.

    A linear layer gives each frame ``n_freqs`` log-magnitudes ``m`` and ``n_freqs`` phases ``p`` (and, with
    ``phase_advance``, ``n_freqs`` advances ``δ``); :meth:`spectrum` forms ``S = min(exp m, max_magnitude) ·
    e^{iφ}`` with ``φ = p`` (Vocos) or ``φ = p + cumsum_frames(δ)``, and :meth:`istft` inverts it (centred Hann
    iSTFT, ``n_fft``/``hop`` of the mel), so an exact STFT goes back to its signal.
    """

    def __init__(self, dim: int, n_fft: int, hop_length: int, max_magnitude: float = 100.0,
                 phase_advance: bool = False, mel_config: MelConfig | None = None) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.max_magnitude = n_fft, hop_length, float(max_magnitude)
        self.n_freqs = n_fft // 2 + 1
        self.phase_advance = phase_advance
        self.out = nn.Linear(dim, 2 * self.n_freqs)
        self.prior = None
        if mel_config is not None:  # the mel prior of the log-magnitude (see the module docstring)
            weight, bias = mel_prior_init(mel_config)
            self.prior = nn.Linear(mel_config.n_mels, self.n_freqs)
            with torch.no_grad():
                self.prior.weight.copy_(weight)
                self.prior.bias.copy_(bias)
        if phase_advance:
            self.advance = nn.Linear(dim, self.n_freqs)
            nn.init.zeros_(self.advance.weight)  # start as the phase vocoder: every bin turns at its centre frequency
            with torch.no_grad():
                k = torch.arange(self.n_freqs, dtype=torch.float64)
                self.advance.bias.copy_(torch.remainder(2 * math.pi * k * hop_length / n_fft, 2 * math.pi).float())
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def spectrum(self, features: Tensor, log_mel: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Features ``(B, frames, dim)`` (and, for a head with a mel prior, the ``log_mel`` ``(B, n_mels, frames)``
        they came from) → (magnitude ``(B, n_freqs, frames)`` ≥ 0, phase ``(B, n_freqs, frames)``)."""
        m, p = self.out(features).float().transpose(1, 2).chunk(2, dim=1)
        if self.prior is not None:
            if log_mel is None:
                raise ValueError("ISTFTHead with a mel prior needs the log-mel: spectrum(features, log_mel)")
            m = m + self.prior(log_mel.float().transpose(1, 2)).transpose(1, 2)
        magnitude = torch.exp(m).clamp(max=self.max_magnitude)
        if self.phase_advance:
            p = p + torch.cumsum(self.advance(features).float().transpose(1, 2), dim=-1)
        return magnitude, p

    def istft(self, magnitude: Tensor, phase: Tensor) -> Tensor:
        """``(B, n_freqs, frames)`` magnitude and phase → audio ``(B, 1, frames · hop)``.

        ``S = magnitude · (cos φ + i sin φ)`` (cos and sin, so φ is never wrapped), centred iSTFT with a periodic
        Hann window: synthesised frame ``f`` is centred on sample ``f · hop``, like the analysis frame of
        :func:`course_lib.audio.stft`. The output keeps ``frames · hop`` samples (at least 50% overlap, so the
        window envelope covers them)."""
        if magnitude.shape != phase.shape or magnitude.dim() != 3 or magnitude.shape[1] != self.n_freqs:
            raise ValueError(f"ISTFTHead.istft expects magnitude and phase (B, {self.n_freqs}, frames) of one shape, "
                             f"got {tuple(magnitude.shape)} and {tuple(phase.shape)}")
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        frames = spec.shape[-1]
        audio = torch.istft(spec, self.n_fft, self.hop_length, self.n_fft, self.window, center=True,
                            length=frames * self.hop_length)
        return audio[:, None]

    def forward(self, features: Tensor, log_mel: Tensor | None = None) -> Tensor:
        return self.istft(*self.spectrum(features, log_mel))


def mel_prior_init(mel_config: MelConfig) -> tuple[Tensor, Tensor]:
    """Weight ``(n_freqs, n_mels)`` and bias ``(n_freqs,)`` of the log-magnitude prior ``P · log_mel + c``.

    ``P[k, b] = fb[b, k] / Σ_b fb[b, k]`` interpolates the log-mel of the bands that cover bin ``k``; a bin no band
    covers (DC, Nyquist) takes the band with the nearest centre. ``c_k = −Σ_b P[k, b] · log(area_b)``, with
    ``area_b = Σ_k fb[b, k]``, undoes the Slaney normalisation: a spectrum of flat magnitude ``A`` gives
    ``log A`` in every bin."""
    from course_lib.audio import mel_filterbank

    fb = mel_filterbank(mel_config).double()  # (n_freqs, n_mels): mel = fb.T @ magnitude
    area, cover = fb.sum(0), fb.sum(1)
    weight = fb / cover.clamp_min(1e-12)[:, None]
    centres = (fb * torch.arange(fb.shape[0], dtype=torch.float64)[:, None]).sum(0) / area.clamp_min(1e-12)
    for k in torch.nonzero(cover <= 1e-12).flatten().tolist():
        weight[k] = 0.0
        weight[k, int((centres - k).abs().argmin())] = 1.0
    bias = -(weight * torch.log(area.clamp_min(1e-12))[None]).sum(1)
    return weight.float(), bias.float()


def _init_weights(module: nn.Module) -> None:
    """Vocos' initialisation: truncated normal (std 0.02) weights and zero biases for convs and linears."""
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VocosGenerator(nn.Module):
    """Log-mel ``(B, n_mels, frames)`` → audio ``(B, 1, frames · hop_length)``: :class:`VocosBackbone` +
    :class:`ISTFTHead`. Calling it checks the input (bands, at least one frame) with an error that names the
    expected shape."""

    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = VocosBackbone(config)
        self.head = ISTFTHead(config.dim, config.n_fft, config.hop_length, config.max_magnitude,
                              config.phase_advance, config.mel_config() if config.mel_prior else None)
        self.backbone.apply(_init_weights)
        _init_weights(self.head.out)
        if config.mel_prior:
            with torch.no_grad():
                self.head.out.weight[: self.head.n_freqs].zero_()  # the magnitude starts as the prior

    def forward(self, log_mel: Tensor) -> Tensor:
        log_mel = check_log_mel(log_mel, self.config.n_mels, "Vocos").float()
        return self.head(self.backbone(log_mel), log_mel)


# --------------------------------------------------------------------------------------------------------
# Discriminators (training only, optional)
# --------------------------------------------------------------------------------------------------------


def _wn(module: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(module)


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's period discriminator: audio ``(B, 1, T)`` reshaped to ``(B, 1, T / p, p)`` (reflect-padded to
    a multiple of ``p``), 2-D convs (kernel (5, 1), stride (3, 1)) over each of the ``p`` phases; returns
    ``(logits, feature maps)``."""

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024, 1024)) -> None:
        super().__init__()
        self.period = int(period)
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            stride = (3, 1) if i < len(channels) - 1 else (1, 1)
            layers.append(_wn(nn.Conv2d(c_in, c, (5, 1), stride, padding=(2, 0))))
            c_in = c
        self.convs = nn.ModuleList(layers)
        self.post = _wn(nn.Conv2d(c_in, 1, (3, 1), padding=(1, 0)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, t = audio.shape
        if t % self.period:
            pad = self.period - t % self.period
            audio = F.pad(audio, (0, pad), mode="reflect" if pad < t else "constant")
            t = audio.shape[-1]
        x = audio.view(b, c, t // self.period, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        x = self.post(x)
        return x.flatten(1, -1)[:, None], feats


class MultiPeriodDiscriminator(nn.Module):
    """One :class:`PeriodDiscriminator` per period (HiFi-GAN: 2, 3, 5, 7, 11): ``(logits list, feats list)``."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = (32, 128, 512, 1024, 1024)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList([PeriodDiscriminator(p, channels) for p in periods])

    def forward(self, audio: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        outs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class ResolutionDiscriminator(nn.Module):
    """UnivNet's resolution discriminator (as Vocos uses it): the STFT magnitude ``(B, 1, frames, bins)`` of
    the audio at one ``(n_fft, hop, win)``, 2-D convs (kernels (3, 9) / (3, 3), frequency strides 2); returns
    ``(logits, feature maps)``."""

    def __init__(self, n_fft: int, hop: int, win: int, channels: int = 32) -> None:
        super().__init__()
        self.n_fft, self.hop, self.win = int(n_fft), int(hop), int(win)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.convs = nn.ModuleList([
            _wn(nn.Conv2d(1, channels, (7, 5), padding=(3, 2))),
            _wn(nn.Conv2d(channels, channels, (5, 3), stride=(2, 1), padding=(2, 1))),
            _wn(nn.Conv2d(channels, channels, (5, 3), stride=(2, 1), padding=(2, 1))),
            _wn(nn.Conv2d(channels, channels, (5, 3), stride=(2, 1), padding=(2, 1))),
            _wn(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ])
        self.post = _wn(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(audio[:, 0].float(), self.n_fft, self.hop, self.win, self.window, center=True,
                          return_complex=True)
        x = spec.abs()[:, None]  # (B, 1, bins, frames): frequency is the strided axis
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        x = self.post(x)
        return x.flatten(1, -1)[:, None], feats


class MultiResolutionDiscriminator(nn.Module):
    """One :class:`ResolutionDiscriminator` per ``(n_fft, hop, win)``: ``(logits list, feats list)``."""

    def __init__(self, resolutions: Sequence[Sequence[int]], channels: int = 32) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList([ResolutionDiscriminator(*r, channels=channels) for r in resolutions])

    def forward(self, audio: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        outs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outs], [o[1] for o in outs]


class VocosDiscriminator(nn.Module):
    """Vocos' two discriminators on audio ``(B, 1, T)``: ``mpd`` (:class:`MultiPeriodDiscriminator`) and ``mrd``
    (:class:`MultiResolutionDiscriminator`). ``forward`` returns ``{"mpd": (logits, feats), "mrd": (logits, feats)}``."""

    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(config.mpd_periods, config.mpd_channels)
        self.mrd = MultiResolutionDiscriminator(config.mrd_resolutions, config.mrd_channels)

    def forward(self, audio: Tensor) -> dict[str, tuple[list[Tensor], list[list[Tensor]]]]:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"VocosDiscriminator expects audio (B, 1, T), got shape {tuple(audio.shape)}")
        return {"mpd": self.mpd(audio), "mrd": self.mrd(audio)}


# --------------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------------


@dataclass
class _GANOutputs:
    """What one adversarial training phase of :meth:`Vocos.forward` returns (see :meth:`Vocos.adversarial`)."""

    fake: Tensor
    fake_out: dict = field(default_factory=dict)
    real_out: dict = field(default_factory=dict)


class Vocos(nn.Module):
    """Vocos: ``generator`` (:class:`VocosGenerator`: ConvNeXt backbone + iSTFT head) and, for GAN training,
    ``discriminator`` (:class:`VocosDiscriminator`, None when ``use_discriminator`` is off).

    As a vocoder (the :class:`course_lib.vocoders.Vocoder` protocol), ``model(log_mel)`` with ``log_mel``
    ``(B, n_mels, frames)`` from :meth:`features` (= ``course_lib.audio.log_mel(audio, config.mel_config())``)
    returns audio ``(B, 1, frames · hop)``. For GAN training, ``model(log_mel, audio, phase=...)`` runs what a
    phase needs in one call (see :meth:`adversarial`). Save and load with :meth:`save_pretrained` /
    :meth:`from_pretrained` (safetensors + JSON, as :class:`~course_lib.vocoders.melgan.MelGAN`).
    """

    def __init__(self, config: VocosConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.mel = MelSpectrogram(config.mel_config())
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.generator = VocosGenerator(config)
        self.discriminator = VocosDiscriminator(config) if config.use_discriminator else None

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
        natural log floored at 1e-5), computed with ``torch.stft`` so gradients flow (mel loss).
        """
        if audio.dim() == 3:
            if audio.shape[1] != 1:
                raise ValueError(f"Vocos expects mono audio (B, 1, T), got shape {tuple(audio.shape)}")
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
        """One GAN phase on ``log_mel`` and the real ``audio`` ``(B, 1, T)`` (generated audio cropped to ``T``).

        ``"discriminator"``: the generator runs without gradients; returns the discriminators' outputs on real
        and generated audio. ``"generator"``: the generated audio (with gradients) and the discriminators'
        outputs on it, and on the real audio without gradients (for feature matching)."""
        if self.discriminator is None:
            raise ValueError("this Vocos has no discriminator (use_discriminator=False): train it on the "
                             "reconstruction losses only")
        T = audio.shape[-1]
        if phase == "discriminator":
            with torch.no_grad():
                fake = self.generator(log_mel)[..., :T]
            return _GANOutputs(fake=fake, fake_out=self.discriminator(fake), real_out=self.discriminator(audio))
        if phase == "generator":
            fake = self.generator(log_mel)[..., :T]
            fake_out = self.discriminator(fake)
            with torch.no_grad():
                real_out = self.discriminator(audio)
            return _GANOutputs(fake=fake, fake_out=fake_out, real_out=real_out)
        raise ValueError(f"phase must be 'discriminator' or 'generator', got {phase!r}")

    def forward(self, log_mel: Tensor, audio: Tensor | None = None, phase: str | None = None):
        """``model(log_mel)`` → audio ``(B, 1, frames · hop)``; with ``audio`` and ``phase``, :meth:`adversarial`."""
        if phase is None:
            return self.generator(log_mel)
        if audio is None:
            raise ValueError("Vocos.forward: a training phase needs the real audio (B, 1, T) too")
        return self.adversarial(log_mel, audio, phase)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> Vocos:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors, nothing unpickled); eval mode."""
        from safetensors.torch import load_model

        folder = Path(folder)
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a saved Vocos: {name} is missing")
        raw = json.loads((folder / "config.json").read_text())
        names = {f.name for f in dataclasses.fields(VocosConfig)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{folder / 'config.json'}: unknown VocosConfig keys {unknown}")
        for key in ("mpd_periods", "mpd_channels"):
            if key in raw:
                raw[key] = tuple(raw[key])
        if "mrd_resolutions" in raw:
            raw["mrd_resolutions"] = tuple(tuple(r) for r in raw["mrd_resolutions"])
        model = cls(VocosConfig(**raw))
        load_model(model, str(folder / "model.safetensors"), device=str(device))
        return model.to(device).eval()

    def num_parameters(self, part: str = "generator") -> int:
        """Parameter count of ``"generator"``, ``"discriminator"`` (0 without one) or ``"all"``."""
        if part == "discriminator" and self.discriminator is None:
            return 0
        module = {"generator": self.generator, "discriminator": self.discriminator, "all": self}.get(part)
        if module is None:
            raise ValueError(f"part must be 'generator', 'discriminator' or 'all', got {part!r}")
        return sum(p.numel() for p in module.parameters())
