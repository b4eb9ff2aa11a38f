"""Training signals of the waveform codec: multi-scale mel loss, waveform L1, SI-SDR, and the MS-STFT discriminator.

Reconstruction (EnCodec, Défossez et al. 2022, §3.4; code: audiocraft ``audiocraft/losses/specloss.py``):

* time domain: ``ℓ_t = mean |x − x̂|`` (:func:`waveform_l1`);
* frequency domain, :class:`MultiScaleMelLoss`: for each scale ``i`` (window ``n_fft_i = 2^i``, hop
  ``n_fft_i / 4``), with ``S_i`` a mel spectrogram,
  ``ℓ_f = 1 / (2·|scales|) · Σ_i [ mean |S_i(x) − S_i(x̂)| + α · mean (log10(S_i(x) + ε) − log10(S_i(x̂) + ε))² ]``
  i.e. L1 on the linear mel plus (α =) 1 × L2 on the log10 mel, averaged over the scales and the two terms
  (audiocraft's ``msspec`` with ``normalized: true, alphas: false``: scales 2^6 ... 2^10, 64 mel bands from
  64 Hz, ε = 1e-5).

  ``S_i`` is a power mel spectrogram (``power=2``, as torchaudio's default that audiocraft uses), so the floor
  ε sits about 50 dB below a full-scale tone and near-silent passages do not dominate the log term.
  Deviations, stated plainly: the mel front end is the course's (:class:`course_lib.audio.MelSpectrogram`:
  centred STFT, Slaney mel scale with area normalisation) where audiocraft uses torchaudio's (HTK scale, no
  filter normalisation, STFT normalised by the window's norm), which moves the numbers by a constant factor
  per band (within about 10 dB); and a scale's number of bands is ``min(n_mels, n_fft // 4)`` so no band of
  the narrow 64- and 128-point windows is empty (audiocraft keeps 64 bands and lets some be all-zero).

Adversarial (EnCodec §3.4; code: audiocraft ``audiocraft/adversarial/discriminators/msstftd.py``):
:class:`MultiScaleSTFTDiscriminator` looks at the complex STFT (real and imaginary parts as 2 channels) at
several resolutions with 2-D convolutions; it is trained with the hinge loss and the generator gets
``−D`` plus feature matching (:mod:`course_lib.nn.gan`). audiocraft's weights: adversarial 4, feature
matching 4, waveform L1 0.1, multi-scale mel 2 (``config/solver/compression/default.yaml``), combined by a
gradient balancer that this course replaces by a plain weighted sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.audio import MelConfig, MelSpectrogram

MSSPEC_N_FFTS = (64, 128, 256, 512, 1024)  # audiocraft msspec: 2**i for i in range(6, 11)
MSSTFTD_N_FFTS = (1024, 2048, 512, 256, 128)  # audiocraft msstftd
MSSTFTD_HOPS = (256, 512, 128, 64, 32)


def _check_pair(x: torch.Tensor, y: torch.Tensor, who: str) -> None:
    for name, t in (("estimate", x), ("target", y)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{who}: {name} must be a float tensor (B, C, T), got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if x.shape != y.shape:
        raise ValueError(f"{who}: estimate and target must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def waveform_l1(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Time-domain reconstruction loss ``mean |x̂ − x|`` over all samples (EnCodec's ℓ_t); a scalar."""
    _check_pair(estimate, target, "waveform_l1")
    return F.l1_loss(estimate, target)


class MultiScaleMelLoss(nn.Module):
    """EnCodec's frequency-domain loss ℓ_f (module docstring): L1 on mel + α·L2 on log10 mel, averaged over scales.

    ``forward(estimate, target)`` takes two waveforms of the same shape ``(B, C, T)`` (or ``(B, T)``) at
    ``sample_rate`` and returns a scalar, exactly 0 for identical inputs and positive otherwise. ``T`` must
    exceed half the largest window (``max(n_ffts) // 2`` samples, reflect padding). ``power`` is the mel's
    exponent (2: power mel, audiocraft's; 1: magnitude mel), ``floor`` the ε inside the log.
    """

    def __init__(self, sample_rate: int = 16_000, n_ffts: Sequence[int] = MSSPEC_N_FFTS, n_mels: int = 64,
                 f_min: float = 64.0, alpha: float = 1.0, floor: float = 1e-5, power: float = 2.0) -> None:
        super().__init__()
        if not n_ffts:
            raise ValueError("MultiScaleMelLoss needs at least one scale (n_ffts)")
        if alpha < 0 or floor <= 0:
            raise ValueError(f"need alpha >= 0 and floor > 0, got {alpha} and {floor}")
        self.n_ffts = tuple(int(n) for n in n_ffts)
        self.alpha, self.floor = float(alpha), float(floor)
        self.mels = nn.ModuleList(
            MelSpectrogram(MelConfig(sample_rate=sample_rate, n_fft=n, hop_length=max(n // 4, 1),
                                     n_mels=max(1, min(n_mels, n // 4)), f_min=f_min, power=power))
            for n in self.n_ffts)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(estimate, target, "MultiScaleMelLoss")
        need = max(self.n_ffts) // 2 + 1
        if estimate.shape[-1] < need:
            raise ValueError(f"MultiScaleMelLoss needs clips of at least {need} samples (largest window "
                             f"{max(self.n_ffts)}), got {estimate.shape[-1]}")
        estimate, target = estimate.float(), target.float()
        total = estimate.new_zeros(())
        for mel in self.mels:
            s_x, s_y = mel(estimate), mel(target)
            total = total + F.l1_loss(s_x, s_y)
            total = total + self.alpha * F.mse_loss(torch.log10(s_x + self.floor), torch.log10(s_y + self.floor))
        return total / (len(self.mels) * (1.0 + self.alpha))


def si_sdr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-distortion ratio in dB per clip, ``(B, C, T)`` or ``(B, T)`` → ``(B,)``.

    Both signals are made zero-mean; with ``α = ⟨x̂, x⟩ / ‖x‖²`` (Le Roux et al. 2019, "SDR – half-baked
    or well done?"): ``SI-SDR = 10 log10(‖α x‖² / ‖α x − x̂‖²)``. Higher is better; +∞ for a perfect
    copy up to scale (capped by ``eps``), around 0 dB when half the energy is error.
    """
    _check_pair(estimate, target, "si_sdr")
    x_hat = estimate.reshape(estimate.shape[0], -1).double()
    x = target.reshape(target.shape[0], -1).double()
    x_hat = x_hat - x_hat.mean(dim=-1, keepdim=True)
    x = x - x.mean(dim=-1, keepdim=True)
    alpha = (x_hat * x).sum(-1, keepdim=True) / (x.pow(2).sum(-1, keepdim=True) + eps)
    projection = alpha * x
    noise = projection - x_hat
    ratio = (projection.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps)
    return (10 * torch.log10(ratio)).float()


# ------------------------------------------------------------------------------------------------------------
# The multi-scale STFT discriminator
# ------------------------------------------------------------------------------------------------------------


def _wn(module: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(module)


class STFTDiscriminator(nn.Module):
    """One resolution of the MS-STFT discriminator: waveform ``(B, 1, T)`` → logits ``(B, 1, frames, F')``
    and the list of its 5 feature maps.

    Input features: the complex STFT (Hann window ``n_fft``, ``hop_length``, ``center=False``, normalised
    by the window's norm) with real and imaginary parts stacked as 2 channels, laid out
    ``(B, 2, frames, n_fft // 2 + 1)``. Layers (audiocraft): Conv2d k(3, 9) to ``filters`` channels; three
    Conv2d k(3, 9) with stride (1, 2) (halving frequency) and time dilations 1, 2, 4; a Conv2d k(3, 3); then a
    k(3, 3) conv to 1 logit channel. LeakyReLU(``negative_slope``) after every layer but the last, whose
    outputs are the feature maps. ``frames = 1 + (T − n_fft) // hop_length``;
    ``F' = ⌊(F − 1) / 2⌋ + 1`` applied three times to ``F = n_fft // 2 + 1``. All convs weight-normalised
    except the first (as audiocraft).
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, filters: int = 32, max_filters: int = 1024,
                 filters_scale: int = 1, dilations: Sequence[int] = (1, 2, 4), negative_slope: float = 0.3) -> None:
        super().__init__()
        if n_fft < 2 or hop_length < 1 or filters < 1:
            raise ValueError(f"need n_fft >= 2, hop_length >= 1, filters >= 1; got {n_fft}, {hop_length}, {filters}")
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.activation = nn.LeakyReLU(negative_slope)
        k = (3, 9)
        convs = [nn.Conv2d(2, filters, k, padding=(1, 4))]
        in_ch = min(filters_scale * filters, max_filters)
        for i, d in enumerate(dilations):
            out_ch = min(filters_scale ** (i + 1) * filters, max_filters)
            convs.append(_wn(nn.Conv2d(in_ch, out_ch, k, stride=(1, 2), dilation=(d, 1), padding=(d, 4))))
            in_ch = out_ch
        out_ch = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        convs.append(_wn(nn.Conv2d(in_ch, out_ch, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.conv_post = _wn(nn.Conv2d(out_ch, 1, (3, 3), padding=(1, 1)))

    def output_shape(self, num_samples: int) -> tuple[int, int]:
        """``(frames, freq)`` of the logits for a clip of ``num_samples`` samples."""
        frames = 1 + (num_samples - self.n_fft) // self.hop_length
        freq = self.n_fft // 2 + 1
        for _ in range(len(self.convs) - 2):
            freq = (freq - 1) // 2 + 1
        return frames, freq

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"STFTDiscriminator expects mono audio (B, 1, T), got {tuple(wav.shape)}")
        if wav.shape[-1] < self.n_fft:
            raise ValueError(f"STFTDiscriminator(n_fft={self.n_fft}) needs clips of at least {self.n_fft} "
                             f"samples, got {wav.shape[-1]}")
        spec = torch.stft(wav[:, 0].float(), self.n_fft, self.hop_length, window=self.window, center=False,
                          normalized=True, return_complex=True)  # (B, F, frames)
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, frames, F)
        fmap = []
        for conv in self.convs:
            z = self.activation(conv(z))
            fmap.append(z)
        return self.conv_post(z), fmap


class MultiScaleSTFTDiscriminator(nn.Module):
    """MS-STFT discriminator (EnCodec): one :class:`STFTDiscriminator` per ``(n_fft, hop)`` pair.

    ``forward(wav (B, 1, T))`` → ``(logits, fmaps)``: ``logits[k]`` is scale k's ``(B, 1, frames_k, F'_k)``
    and ``fmaps[k]`` its list of feature maps, the format :mod:`course_lib.nn.gan`'s losses take. Defaults
    are audiocraft's 5 scales (n_fft 1024, 2048, 512, 256, 128; hops n_fft / 4; 32 filters; LeakyReLU 0.3);
    the encodec package uses the first 3.
    """

    def __init__(self, n_ffts: Sequence[int] = MSSTFTD_N_FFTS, hop_lengths: Sequence[int] | None = None,
                 filters: int = 32, negative_slope: float = 0.3) -> None:
        super().__init__()
        hop_lengths = tuple(hop_lengths) if hop_lengths is not None else tuple(n // 4 for n in n_ffts)
        if not n_ffts or len(hop_lengths) != len(n_ffts):
            raise ValueError(f"need one hop length per n_fft, got n_ffts={list(n_ffts)}, hop_lengths={list(hop_lengths)}")
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(n, h, filters, negative_slope=negative_slope) for n, h in zip(n_ffts, hop_lengths))

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, fmaps = [], []
        for disc in self.discriminators:
            logit, fmap = disc(wav)
            logits.append(logit)
            fmaps.append(fmap)
        return logits, fmaps
