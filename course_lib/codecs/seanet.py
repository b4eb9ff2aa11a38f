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

Options that exist for loading EnCodec checkpoints (:mod:`course_lib.codecs.encodec_hf`); all are off by
default, so the lessons' codec and its shipped weights are unchanged:

* ``true_skip=False``: the residual unit's skip is a learned 1×1 convolution, ``conv1x1(x) + block(x)``
  (the ``encodec`` package's default and the released EnCodec 24/48 kHz models, ``use_conv_shortcut`` in
  ``transformers``); the course keeps audiocraft's identity skip (``true_skip=True``).
* ``norm="time_group_norm"``: a plain convolution followed by ``GroupNorm(1, channels)`` (one group: every
  channel and time step of a clip normalised together), as EnCodec 48 kHz; applied before the transposed
  convolutions' trim, as EnCodec does.
* ``pad_mode``: the value of the padding samples, one of :data:`PAD_MODES` (``"constant"`` zeros, the
  course's; ``"reflect"``, the ``encodec`` package's and the released models'). Reflection of a signal
  shorter than the padding first appends zeros, as EnCodec's ``pad1d`` does.
* ``trim_right_ratio`` (causal transposed convolutions only): the share of the ``kernel_size - stride``
  excess trimmed on the right, ``ceil(excess · ratio)``, the rest on the left (1.0: all on the right).

Padding. A convolution with kernel ``k``, dilation ``d`` and stride ``s`` is padded by ``(k - 1)·d + 1 - s``
samples in total (plus a few zeros on the right so that the last frame is full), so a length ``L`` that is a
multiple of ``s`` becomes exactly ``L / s`` frames; a transposed convolution trims ``k - s`` samples so that
``L`` frames become exactly ``L · s`` samples. Non-causal layers (the default) split the padding between both
sides (EnCodec's right share is ``total // 2``); causal layers put all of it on the left (and trim all of the
transposed convolutions' excess on the right), so output sample ``t`` never depends on input after ``t``.
Padding values are zeros by default (audiocraft's ``pad_mode: constant``; the ``encodec`` package and the
released EnCodec models reflect instead: ``pad_mode="reflect"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("weight_norm", "none", "time_group_norm")
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _apply_norm(module: nn.Module, norm: str) -> nn.Module:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "weight_norm":
        return nn.utils.parametrizations.weight_norm(module)
    return module  # "none"; "time_group_norm" adds a GroupNorm after the convolution instead


def _check_pad_mode(pad_mode: str) -> None:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")


def pad1d(x: torch.Tensor, paddings: tuple[int, int], mode: str = "constant") -> torch.Tensor:
    """``F.pad`` on the last axis that also reflects a signal shorter than the padding: such a signal first
    gets zeros on the right, reflected, and those zeros are cut again (EnCodec's ``pad1d``)."""
    left, right = paddings
    if mode != "reflect":
        return F.pad(x, (left, right), mode)
    length = x.shape[-1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode)
    return padded[..., : padded.shape[-1] - extra]


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
    ``pad_mode`` is one of :data:`PAD_MODES`; ``norm="time_group_norm"`` adds ``self.norm`` after the conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 causal: bool = False, norm: str = "weight_norm", pad_mode: str = "constant") -> None:
        super().__init__()
        _check_pad_mode(pad_mode)
        self.conv = _apply_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation), norm)
        self.norm = nn.GroupNorm(1, out_channels) if norm == "time_group_norm" else None
        self.causal, self.pad_mode = causal, pad_mode
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
        y = self.conv(pad1d(x, (left, right), self.pad_mode))
        return y if self.norm is None else self.norm(y)


class SConvTranspose1d(nn.Module):
    """ConvTranspose1d ``(B, C_in, L)`` → ``(B, C_out, L · stride)``: the raw output has
    ``(L - 1)·stride + kernel_size`` samples and ``kernel_size - stride`` of them are trimmed (all on the right
    when causal, else ``total // 2`` on the right and the rest on the left). A causal layer with
    ``trim_right_ratio`` < 1 trims ``ceil(total · trim_right_ratio)`` on the right and the rest on the left
    (EnCodec's option; non-causal layers need 1.0)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 causal: bool = False, norm: str = "weight_norm", trim_right_ratio: float = 1.0) -> None:
        super().__init__()
        _check_trim_right_ratio(trim_right_ratio, causal)
        self.convtr = _apply_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride), norm)
        self.norm = nn.GroupNorm(1, out_channels) if norm == "time_group_norm" else None
        self.causal, self.trim_right_ratio = causal, float(trim_right_ratio)
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr(x)
        if self.norm is not None:
            y = self.norm(y)
        padding_total = self.kernel_size - self.stride
        if self.causal:
            right = math.ceil(padding_total * self.trim_right_ratio)
        else:
            right = padding_total // 2
        left = padding_total - right
        return y[..., left: y.shape[-1] - right]


def _check_trim_right_ratio(trim_right_ratio: float, causal: bool) -> None:
    if not 0.0 <= trim_right_ratio <= 1.0:
        raise ValueError(f"trim_right_ratio must be in [0, 1], got {trim_right_ratio!r}")
    if not causal and trim_right_ratio != 1.0:
        raise ValueError(f"trim_right_ratio != 1.0 needs causal convolutions, got {trim_right_ratio!r} with "
                         f"causal=False")


class ResidualUnit(nn.Module):
    """SEANet residual unit ``skip(x) + conv_1(ELU(conv_k,d(ELU(x))))`` over ``(B, dim, L)``, length preserved.

    ``conv_k,d`` has kernel ``kernel_size``, dilation ``dilation`` and ``dim // compress`` channels. With
    ``true_skip=True`` (the course's default, audiocraft's) the skip is the identity; with ``False`` it is a
    1×1 convolution ``self.shortcut`` (the ``encodec`` package's and the released EnCodec models').
    """

    def __init__(self, dim: int, kernel_size: int = 3, dilation: int = 1, compress: int = 2, causal: bool = False,
                 norm: str = "weight_norm", true_skip: bool = True, pad_mode: str = "constant") -> None:
        super().__init__()
        hidden = max(dim // compress, 1)
        conv = dict(causal=causal, norm=norm, pad_mode=pad_mode)
        self.block = nn.Sequential(
            nn.ELU(),
            SConv1d(dim, hidden, kernel_size, dilation=dilation, **conv),
            nn.ELU(),
            SConv1d(hidden, dim, 1, **conv),
        )
        self.shortcut = None if true_skip else SConv1d(dim, dim, 1, **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + self.block(x)


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
    ``true_skip``, ``pad_mode`` and ``norm="time_group_norm"`` are the EnCodec options of the module docstring.
    """

    def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 32,
                 ratios: Sequence[int] = (8, 5, 4, 2), n_residual_layers: int = 1, kernel_size: int = 7,
                 residual_kernel_size: int = 3, last_kernel_size: int = 7, dilation_base: int = 2, compress: int = 2,
                 lstm: int = 2, causal: bool = False, norm: str = "weight_norm", true_skip: bool = True,
                 pad_mode: str = "constant") -> None:
        super().__init__()
        _check_args(channels, dimension, n_filters, ratios, kernel_size, residual_kernel_size, last_kernel_size,
                    n_residual_layers, compress, lstm, dilation_base)
        conv = dict(causal=causal, norm=norm, pad_mode=pad_mode)
        self.ratios = list(ratios)
        self.hop_length = math.prod(self.ratios)
        self._kernels = [(kernel_size, 1, 1)]  # (kernel, dilation, stride) of every conv, in order
        mult = 1
        layers: list[nn.Module] = [SConv1d(channels, n_filters, kernel_size, **conv)]
        for ratio in reversed(self.ratios):
            for j in range(n_residual_layers):
                layers.append(ResidualUnit(mult * n_filters, residual_kernel_size, dilation_base ** j, compress,
                                           true_skip=true_skip, **conv))
                self._kernels += [(residual_kernel_size, dilation_base ** j, 1), (1, 1, 1)]
            layers += [nn.ELU(), SConv1d(mult * n_filters, 2 * mult * n_filters, 2 * ratio, stride=ratio, **conv)]
            self._kernels.append((2 * ratio, 1, ratio))
            mult *= 2
        if lstm:
            layers.append(SLSTM(mult * n_filters, lstm))
        layers += [nn.ELU(), SConv1d(mult * n_filters, dimension, last_kernel_size, **conv)]
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
    final activation (EnCodec's default; the output is not clipped to [-1, 1]). ``true_skip``, ``pad_mode``,
    ``trim_right_ratio`` and ``norm="time_group_norm"`` are the EnCodec options of the module docstring."""

    def __init__(self, channels: int = 1, dimension: int = 128, n_filters: int = 32,
                 ratios: Sequence[int] = (8, 5, 4, 2), n_residual_layers: int = 1, kernel_size: int = 7,
                 residual_kernel_size: int = 3, last_kernel_size: int = 7, dilation_base: int = 2, compress: int = 2,
                 lstm: int = 2, causal: bool = False, norm: str = "weight_norm", true_skip: bool = True,
                 pad_mode: str = "constant", trim_right_ratio: float = 1.0) -> None:
        super().__init__()
        _check_args(channels, dimension, n_filters, ratios, kernel_size, residual_kernel_size, last_kernel_size,
                    n_residual_layers, compress, lstm, dilation_base)
        conv = dict(causal=causal, norm=norm, pad_mode=pad_mode)
        self.ratios = list(ratios)
        self.hop_length = math.prod(self.ratios)
        mult = 2 ** len(self.ratios)
        layers: list[nn.Module] = [SConv1d(dimension, mult * n_filters, kernel_size, **conv)]
        if lstm:
            layers.append(SLSTM(mult * n_filters, lstm))
        for ratio in self.ratios:
            layers += [nn.ELU(), SConvTranspose1d(mult * n_filters, mult * n_filters // 2, 2 * ratio, stride=ratio,
                                                  causal=causal, norm=norm, trim_right_ratio=trim_right_ratio)]
            for j in range(n_residual_layers):
                layers.append(ResidualUnit(mult * n_filters // 2, residual_kernel_size, dilation_base ** j, compress,
                                           true_skip=true_skip, **conv))
            mult //= 2
        layers += [nn.ELU(), SConv1d(n_filters, channels, last_kernel_size, **conv)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
