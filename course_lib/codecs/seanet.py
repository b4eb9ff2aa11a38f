"""SEANet encoder and decoder: the convolutional halves of the EnCodec / SoundStream waveform codec.

The encoder turns a waveform ``(B, channels, T)`` into a latent sequence ``(B, dimension, T / hop)`` with
``hop = prod(ratios)``; the decoder mirrors it with transposed convolutions (Défossez et al. 2022, "High
Fidelity Neural Audio Compression", Fig. 1; code: facebookresearch/encodec ``encodec/modules/seanet.py``,
audiocraft ``audiocraft/modules/seanet.py``)::

    encoder: conv k7 (n_filters) → for r in reversed(ratios): [residual unit × n_residual_layers,
             ELU, strided conv (kernel 2r, stride r, channels × 2)] → LSTM (+ skip) → ELU, conv k7 → dimension
    decoder: conv k7 → LSTM (+ skip) → for r in ratios: [ELU, transposed conv (kernel 2r, stride r,
             channels / 2), residual unit × n_residual_layers] → ELU, conv k7 → channels

A residual unit is ``x + conv1(ELU(conv_k(ELU(x))))`` where ``conv_k`` has kernel ``residual_kernel_size``,
dilation ``dilation_base ** j`` and ``dim // compress`` output channels (the ``compress`` bottleneck).
Every convolution is weight-normalised (``norm="weight_norm"``, as both repositories do).

Padding. A convolution with kernel ``k``, dilation ``d`` and stride ``s`` is padded by ``(k - 1)·d + 1 - s``
samples in total (plus a few zeros on the right so that the last frame is full), so a length ``L`` that is a
multiple of ``s`` becomes exactly ``L / s`` frames; a transposed convolution trims ``k - s`` samples so that
``L`` frames become exactly ``L · s`` samples. Non-causal layers (the default) split the padding between both
sides (EnCodec's right share is ``total // 2``); causal layers put all of it on the left (and trim all of the
transposed convolutions' excess on the right), so output sample ``t`` never depends on input after ``t``.
Padding values are zeros (audiocraft's ``pad_mode: constant``; the ``encodec`` package reflects instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("weight_norm", "none")


def _apply_norm(module: nn.Module, norm: str) -> nn.Module:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "weight_norm":
        return nn.utils.parametrizations.weight_norm(module)
    return module


def extra_padding_for_conv1d(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Zeros to add on the right of a ``length``-sample signal (already padded by ``padding_total`` in all)
    so that a convolution with ``kernel_size``/``stride`` covers every sample with full frames: the output
    then has ``ceil(length / stride)`` frames (EnCodec's ``get_extra_padding_for_conv1d``)."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return ideal_length - length


class SConv1d(nn.Module):
    """Conv1d ``(B, C_in, L)`` → ``(B, C_out, ceil(L / stride))`` with the padding rule of the module docstring.

    ``causal=True`` pads only on the left. The effective kernel is ``(kernel_size - 1)·dilation + 1``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 causal: bool = False, norm: str = "weight_norm") -> None:
        super().__init__()
        self.conv = _apply_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation), norm)
        self.causal = causal
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = (self.kernel_size - 1) * self.dilation + 1
        padding_total = kernel - self.stride
        extra = extra_padding_for_conv1d(x.shape[-1], kernel, self.stride, padding_total)
        if self.causal:
            left, right = padding_total, extra
        else:
            right = padding_total // 2
            left, right = padding_total - right, right + extra
        return self.conv(F.pad(x, (left, right)))


class SConvTranspose1d(nn.Module):
    """ConvTranspose1d ``(B, C_in, L)`` → ``(B, C_out, L · stride)``: the raw output has
    ``(L - 1)·stride + kernel_size`` samples and ``kernel_size - stride`` of them are trimmed (all on the right
    when causal, else ``total // 2`` on the right and the rest on the left)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 causal: bool = False, norm: str = "weight_norm") -> None:
        super().__init__()
        self.convtr = _apply_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride), norm)
        self.causal = causal
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr(x)
        padding_total = self.kernel_size - self.stride
        right = padding_total if self.causal else padding_total // 2
        left = padding_total - right
        return y[..., left: y.shape[-1] - right]


class ResidualUnit(nn.Module):
    """SEANet residual unit ``x + conv_1(ELU(conv_k,d(ELU(x))))`` over ``(B, dim, L)``, length preserved.

    ``conv_k,d`` has kernel ``kernel_size``, dilation ``dilation`` and ``dim // compress`` channels; the skip
    is the identity (audiocraft's ``true_skip``).
    """

    def __init__(self, dim: int, kernel_size: int = 3, dilation: int = 1, compress: int = 2, causal: bool = False,
                 norm: str = "weight_norm") -> None:
        super().__init__()
        hidden = max(dim // compress, 1)
        self.block = nn.Sequential(
            nn.ELU(),
            SConv1d(dim, hidden, kernel_size, dilation=dilation, causal=causal, norm=norm),
            nn.ELU(),
            SConv1d(hidden, dim, 1, causal=causal, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SLSTM(nn.Module):
    """A ``num_layers`` unidirectional LSTM over ``(B, dim, L)`` with a skip connection: ``x + LSTM(x)``."""

    def __init__(self, dim: int, num_layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(2, 0, 1)  # (L, B, dim)
        out, _ = self.lstm(seq)
        return (out + seq).permute(1, 2, 0)


def _check_args(channels: int, dimension: int, n_filters: int, ratios: Sequence[int], kernel_size: int,
                residual_kernel_size: int, last_kernel_size: int, n_residual_layers: int, compress: int,
                lstm: int, dilation_base: int) -> None:
    for name, value in (("channels", channels), ("dimension", dimension), ("n_filters", n_filters),
                        ("kernel_size", kernel_size), ("residual_kernel_size", residual_kernel_size),
                        ("last_kernel_size", last_kernel_size), ("compress", compress),
                        ("dilation_base", dilation_base)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"SEANet {name} must be a positive int, got {value!r}")
    if not ratios or any(not isinstance(r, int) or r <= 0 for r in ratios):
        raise ValueError(f"SEANet ratios must be a non-empty list of positive ints, got {list(ratios)!r}")
    if n_residual_layers < 0 or lstm < 0:
        raise ValueError(f"n_residual_layers and lstm must be >= 0, got {n_residual_layers} and {lstm}")


class SEANetEncoder(nn.Module):
    """Waveform ``(B, channels, T)`` → latent ``(B, dimension, ceil(T / hop_length))``, ``hop_length =
    prod(ratios)``; the strides are ``ratios`` reversed (EnCodec 24 kHz: ratios [8, 5, 4, 2], strides 2, 4, 5, 8).

    Channel widths: ``n_filters`` after the first conv, doubled by each strided conv, so the LSTM runs at
    ``n_filters · 2**len(ratios)`` channels. :attr:`receptive_field` is the number of input samples that one
    latent frame of the convolutional part sees (the LSTM, if any, makes it unbounded to the left).
    """

    def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 32,
                 ratios: Sequence[int] = (8, 5, 4, 2), n_residual_layers: int = 1, kernel_size: int = 7,
                 residual_kernel_size: int = 3, last_kernel_size: int = 7, dilation_base: int = 2, compress: int = 2,
                 lstm: int = 2, causal: bool = False, norm: str = "weight_norm") -> None:
        super().__init__()
        _check_args(channels, dimension, n_filters, ratios, kernel_size, residual_kernel_size, last_kernel_size,
                    n_residual_layers, compress, lstm, dilation_base)
        self.ratios = list(ratios)
        self.hop_length = math.prod(self.ratios)
        self._kernels = [(kernel_size, 1, 1)]  # (kernel, dilation, stride) of every conv, in order
        mult = 1
        layers: list[nn.Module] = [SConv1d(channels, n_filters, kernel_size, causal=causal, norm=norm)]
        for ratio in reversed(self.ratios):
            for j in range(n_residual_layers):
                layers.append(ResidualUnit(mult * n_filters, residual_kernel_size, dilation_base ** j, compress,
                                           causal, norm))
                self._kernels += [(residual_kernel_size, dilation_base ** j, 1), (1, 1, 1)]
            layers += [nn.ELU(), SConv1d(mult * n_filters, 2 * mult * n_filters, 2 * ratio, stride=ratio,
                                         causal=causal, norm=norm)]
            self._kernels.append((2 * ratio, 1, ratio))
            mult *= 2
        if lstm:
            layers.append(SLSTM(mult * n_filters, lstm))
        layers += [nn.ELU(), SConv1d(mult * n_filters, dimension, last_kernel_size, causal=causal, norm=norm)]
        self._kernels.append((last_kernel_size, 1, 1))
        self.model = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> int:
        """Input samples that one output frame of the conv stack depends on: ``1 + Σ (k-1)·d·J`` over the
        convolutions, ``J`` being the product of the strides before each one."""
        field, jump = 1, 1
        for kernel, dilation, stride in self._kernels:
            field += (kernel - 1) * dilation * jump
            jump *= stride
        return field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SEANetDecoder(nn.Module):
    """Latent ``(B, dimension, frames)`` → waveform ``(B, channels, frames · hop_length)``: the encoder's
    mirror, with transposed convolutions (kernel ``2r``, stride ``r``) for ``r`` in ``ratios`` in order and no
    final activation (EnCodec's default; the output is not clipped to [-1, 1])."""

    def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 32,
                 ratios: Sequence[int] = (8, 5, 4, 2), n_residual_layers: int = 1, kernel_size: int = 7,
                 residual_kernel_size: int = 3, last_kernel_size: int = 7, dilation_base: int = 2, compress: int = 2,
                 lstm: int = 2, causal: bool = False, norm: str = "weight_norm") -> None:
        super().__init__()
        _check_args(channels, dimension, n_filters, ratios, kernel_size, residual_kernel_size, last_kernel_size,
                    n_residual_layers, compress, lstm, dilation_base)
        self.ratios = list(ratios)
        self.hop_length = math.prod(self.ratios)
        mult = 2 ** len(self.ratios)
        layers: list[nn.Module] = [SConv1d(dimension, mult * n_filters, kernel_size, causal=causal, norm=norm)]
        if lstm:
            layers.append(SLSTM(mult * n_filters, lstm))
        for ratio in self.ratios:
            layers += [nn.ELU(), SConvTranspose1d(mult * n_filters, mult * n_filters // 2, 2 * ratio, stride=ratio,
                                                  causal=causal, norm=norm)]
            for j in range(n_residual_layers):
                layers.append(ResidualUnit(mult * n_filters // 2, residual_kernel_size, dilation_base ** j, compress,
                                           causal, norm))
            mult //= 2
        layers += [nn.ELU(), SConv1d(n_filters, channels, last_kernel_size, causal=causal, norm=norm)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
