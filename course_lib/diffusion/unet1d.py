"""Imagen's Efficient U-Net made 1-D, as Noise2Music's generator and cascaders use it: ``(B, C_in, T) → (B,
C_out, T)``.

The network (Saharia et al. 2022, Imagen, Appendix B "Efficient U-Net"; Huang et al. 2023, Noise2Music §3
"1D U-Nets"), read alongside lucidrains/imagen-pytorch's ``Unet(memory_efficient=True)``::

    stem conv (C_in → C)                                            ─────────────── skip ──┐
    stage i = 0..S−1:  downsample ×1/s_i (conv, stride s_i)  →  res blocks  →  [attention] ── skip_i ─┐
    middle:            res block → attention (self + cross) → res block                              │
    stage i = S−1..0:  concat(h, skip_i / √2) → res blocks → [attention] → upsample ×s_i  ←──────────┘
    concat(h, stem / √2) → [res block] → GroupNorm, SiLU, conv (→ C_out, zero-initialised)

Efficient-U-Net traits kept: **downsampling before** the res blocks on the way down and **upsampling after**
them on the way up (so the blocks run at the lower rate), any number of res blocks per stage (put more at
the coarse, cheap stages), skip connections **scaled by 1/√2**, and self-attention only at the stages you
name (the coarse ones). Each res block is GroupNorm → SiLU → conv → GroupNorm → **FiLM** ``h·(1 + γ) + β``
with ``(γ, β) = Linear(SiLU(e))`` → SiLU → dropout → conv, plus a 1×1-conv shortcut; ``e`` is the embedding
of the diffusion time ``t`` (sinusoidal features of ``1000·t`` through a 2-layer MLP), to which a cascader
adds the embedding of its augmentation noise level (Imagen's and Noise2Music's noise-conditioning
augmentation; a separate MLP, summed, as in imagen-pytorch). Text enters by cross-attention
(:class:`~course_lib.nn.attention.MultiHeadAttention`) to the text embeddings ``(B, L, text_dim)`` with a
mask ``(B, L)``; an all-False mask row — or ``text=None`` — is the null condition of classifier-free
guidance (exactly zero cross-attention output). Extra conditioning signals (the cascader's upsampled
low-rate audio) are stacked along channels by the caller: ``in_channels = 1 + extra``.

Length rule: ``T`` must be a multiple of ``prod(strides)``; :meth:`UNet1D.valid_length` rounds up.
The final convolution is **zero-initialised** (imagen-pytorch's ``zero_init_(final_conv)``): a fresh model
outputs exactly 0 (ε̂ = 0, the mean of the noise), which is a stable start for diffusion training.

Paper sizes: Noise2Music's U-Net widths, strides and block counts are in its appendix, which the course
could not read: they are *not* reproduced here. :data:`PAPER_CONFIGS` holds Imagen's super-resolution
Efficient U-Net made 1-D (see its comment for what is and is not confirmed).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.nn.attention import MultiHeadAttention
from course_lib.nn.saving import CONFIG_FILE, WEIGHTS_FILE, load_pretrained, save_pretrained  # noqa: F401 (re-exported)
from course_lib.nn.transformer import sinusoidal_embedding

__all__ = ["UNet1D", "UNet1DConfig", "PAPER_CONFIGS", "ResBlock1D", "AttentionBlock1D"]

SKIP_SCALE = 2 ** -0.5

# Paper-scale settings, as keyword arguments of UNet1DConfig. Never build these on a laptop.
PAPER_CONFIGS: dict[str, dict] = {
    # Imagen's 64→256 super-resolution Efficient U-Net (lucidrains/imagen-pytorch `SRUnet256`, whose
    # comment says it follows the paper's appendix): base width 128, multipliers (1, 2, 4, 8), res blocks
    # (2, 4, 8, 8), attention only at the coarsest stage, T5-XXL text (4096-d). Made 1-D here with stride 2
    # per stage as in 2-D; Noise2Music's own 1-D strides/widths are UNCONFIRMED and not used. Heads = 8
    # (imagen-pytorch). in_channels = 2: noisy audio + the upsampled low-rate audio (a cascader).
    "imagen-sr-efficient-1d": dict(in_channels=2, out_channels=1, channels=128, channel_mults=[1, 2, 4, 8],
                                   strides=[2, 2, 2, 2], num_res_blocks=[2, 4, 8, 8],
                                   self_attn_stages=[False, False, False, True],
                                   cross_attn_stages=[False, False, False, True], text_dim=4096, num_heads=8,
                                   aug_conditioning=True, final_res_block=True),
}


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"UNet1DConfig.{name}: expected {n} values (one per stage, as many as strides), "
                             f"got {len(value)}: {list(value)}")
        return list(value)
    return [value] * n


@dataclass
class UNet1DConfig:
    """Architecture of :class:`UNet1D`. Defaults are a course-size text-conditioned generator (~1.3 M params).

    Channels: ``in_channels`` (1 audio channel + any stacked conditioning channels), ``out_channels``,
    ``channels`` the stem width ``C``; stage ``i`` has width ``C · channel_mults[i]``, downsamples by
    ``strides[i]`` (a stride of 1 keeps the rate), and runs ``num_res_blocks[i]`` res blocks (an int means
    the same for every stage). ``self_attn_stages`` / ``cross_attn_stages``: per stage, whether it has
    self-attention / cross-attention to the text (the middle block has both). ``text_dim``: width of the
    text embeddings, ``None`` for an unconditional model. ``num_heads``: attention heads (every attended
    width must divide by it). ``aug_conditioning``: the model takes a cascader's augmentation noise level
    ``aug_level`` (B,) in [0, 1]. ``dropout``: inside res blocks. ``kernel_size``: res-block convs (odd).
    ``num_groups``: GroupNorm groups (every width must divide by it). ``num_train_steps``: how integer
    (long) times map to [0, 1] (``t / num_train_steps``). ``final_res_block``: Imagen's last res block at
    the full rate after the stem skip (off by default: at audio rates it costs as much as the rest of a
    course-size network; without it the stem skip goes straight to the output conv).
    """

    in_channels: int = 1
    out_channels: int = 1
    channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 4])
    strides: list[int] = field(default_factory=lambda: [4, 4, 4])
    num_res_blocks: list[int] | int = field(default_factory=lambda: [1, 2, 2])
    self_attn_stages: list[bool] | bool = field(default_factory=lambda: [False, False, True])
    cross_attn_stages: list[bool] | bool = field(default_factory=lambda: [False, False, True])
    text_dim: int | None = 128
    num_heads: int = 4
    aug_conditioning: bool = False
    dropout: float = 0.0
    kernel_size: int = 3
    num_groups: int = 8
    num_train_steps: int = 1000
    final_res_block: bool = False

    def __post_init__(self) -> None:
        self._normalise()

    def _normalise(self) -> None:
        """Tuples → lists, and a scalar per-stage field → one value per stage (when strides is a list)."""
        for name in ("channel_mults", "strides"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        if isinstance(self.strides, list):
            n = len(self.strides)
            for name in ("channel_mults", "num_res_blocks", "self_attn_stages", "cross_attn_stages"):
                value = getattr(self, name)
                if not isinstance(value, (list, tuple)) or len(value) == n:
                    setattr(self, name, _as_list(value, n, name))

    @property
    def total_stride(self) -> int:
        """The product of the strides: input lengths must be a multiple of it."""
        return math.prod(self.strides)

    def widths(self) -> list[int]:
        """Channel width of every stage, ``[C · m for m in channel_mults]``."""
        return [self.channels * m for m in self.channel_mults]

    def valid_length(self, n: int) -> int:
        """The smallest length ``≥ n`` (and ``≥ 1``) that the U-Net accepts: ``n`` rounded up to a multiple of
        :attr:`total_stride` (pad the audio to it, then crop the output)."""
        p = self.total_stride
        return max(1, -(-int(n) // p)) * p

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that cannot work (scalar per-stage fields become lists)."""
        self._normalise()

        def pos_int(name, value):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"UNet1DConfig.{name}: must be a positive int, got {value!r}")

        for name in ("in_channels", "out_channels", "channels", "num_heads", "kernel_size", "num_groups",
                     "num_train_steps"):
            pos_int(name, getattr(self, name))
        if not isinstance(self.strides, list) or not self.strides:
            raise ValueError(f"UNet1DConfig.strides: must be a non-empty list of positive ints, got {self.strides!r}")
        n = len(self.strides)
        for name in ("channel_mults", "num_res_blocks", "self_attn_stages", "cross_attn_stages"):
            _as_list(getattr(self, name), n, name)
        for i, s in enumerate(self.strides):
            pos_int(f"strides[{i}]", s)
        for i, m in enumerate(self.channel_mults):
            pos_int(f"channel_mults[{i}]", m)
        for i, r in enumerate(self.num_res_blocks):
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ValueError(f"UNet1DConfig.num_res_blocks[{i}]: must be an int >= 1, got {r!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"UNet1DConfig.kernel_size: must be odd (same-length convs), got {self.kernel_size}")
        if self.channels % 2:
            raise ValueError(f"UNet1DConfig.channels: must be even (sinusoidal time features), got {self.channels}")
        for w in [self.channels, *self.widths()]:
            if w % self.num_groups:
                raise ValueError(f"UNet1DConfig: width {w} is not divisible by num_groups={self.num_groups}; "
                                 f"pick channels / channel_mults / num_groups so that every width divides")
        attended = [w for w, a, c in zip(self.widths(), self.self_attn_stages, self.cross_attn_stages) if a or c]
        for w in attended + [self.widths()[-1]]:
            if w % self.num_heads:
                raise ValueError(f"UNet1DConfig: attention width {w} is not divisible by num_heads={self.num_heads}")
        if self.text_dim is not None:
            pos_int("text_dim", self.text_dim)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNet1DConfig.dropout: must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNet1DConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown UNet1DConfig keys {unknown}; known keys: {sorted(names)}")
        return cls(**data)

    @classmethod
    def paper(cls, name: str = "imagen-sr-efficient-1d") -> UNet1DConfig:
        """The paper-scale config ``name`` from :data:`PAPER_CONFIGS` (GPU-cluster size: count its parameters
        on the meta device, ``with torch.device("meta"): UNet1D(cfg)``)."""
        if name not in PAPER_CONFIGS:
            raise ValueError(f"unknown paper config {name!r}; known: {sorted(PAPER_CONFIGS)}")
        return cls(**PAPER_CONFIGS[name])


class ResBlock1D(nn.Module):
    """Imagen's ResnetBlock in 1-D: ``(B, c_in, T), e (B, emb_dim) → (B, c_out, T)``.

    ``h = conv(SiLU(GN(x)))``; ``h = conv(dropout(SiLU(GN(h) · (1 + γ) + β)))`` with ``(γ, β) = Linear(SiLU(e))``
    (FiLM, Perez et al. 2018; imagen-pytorch's ``scale_shift``); output ``h + shortcut(x)`` (1×1 conv when
    the widths differ).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, kernel_size: int = 3, num_groups: int = 8,
                 dropout: float = 0.0) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(num_groups, c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, padding=pad)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(num_groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, padding=pad)
        self.shortcut = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb)).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.shortcut(x)


class AttentionBlock1D(nn.Module):
    """Self-attention, cross-attention to text and a feed-forward layer, each residual, on ``(B, C, T)``.

    Pre-norm (GroupNorm), sequence axis = time; attention is :class:`MultiHeadAttention`. Cross-attention
    is skipped when ``text`` is ``None`` (identical to an all-False mask: zero output). Feed-forward: 1×1
    convs ``C → 2C → C`` with GELU (imagen-pytorch's ``ChanFeedForward``, mult 2).
    """

    def __init__(self, dim: int, num_heads: int, text_dim: int | None, self_attn: bool, cross_attn: bool,
                 num_groups: int = 8) -> None:
        super().__init__()
        self.norm_self = nn.GroupNorm(num_groups, dim) if self_attn else None
        self.self_attn = MultiHeadAttention(dim, num_heads) if self_attn else None
        use_cross = cross_attn and text_dim is not None
        self.norm_cross = nn.GroupNorm(num_groups, dim) if use_cross else None
        self.cross_attn = MultiHeadAttention(dim, num_heads, context_dim=text_dim) if use_cross else None
        self.ff = nn.Sequential(nn.GroupNorm(num_groups, dim), nn.Conv1d(dim, 2 * dim, 1), nn.GELU(),
                                nn.Conv1d(2 * dim, dim, 1))

    def forward(self, x: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        if self.self_attn is not None:
            x = x + self.self_attn(self.norm_self(x).transpose(1, 2)).transpose(1, 2)
        if self.cross_attn is not None and text is not None:
            h = self.cross_attn(self.norm_cross(x).transpose(1, 2), context=text, context_mask=text_mask)
            x = x + h.transpose(1, 2)
        return x + self.ff(x)


class _TimeEmbedding(nn.Module):
    """``t (B,) in [0, 1] → (B, emb_dim)``: sinusoidal features of ``1000 t`` (DDPM's scale) through an MLP."""

    def __init__(self, dim: int, emb_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(1000.0 * t, self.dim).to(self.mlp[0].weight.dtype))


def _down(c_in: int, c_out: int, stride: int) -> nn.Conv1d:
    """Strided conv, kernel ``2s − 1``, padding ``s − 1``: length ``T → T / s`` exactly when ``s | T``."""
    return nn.Conv1d(c_in, c_out, 2 * stride - 1, stride=stride, padding=stride - 1)


class _Up(nn.Module):
    """Sub-pixel upsampling ×s (Shi et al. 2016; imagen-pytorch's ``PixelShuffleUpsample`` in 1-D): a 1×1 conv
    ``c_in → s·c_out`` at the low rate, then each output channel's ``s`` phases are interleaved in time.

    All the work happens at the low rate (the cost of one 1×1 conv at the high rate). The weights are
    initialised equal across the ``s`` phases (ICNR, Aitken et al. 2017), so at initialisation it is
    nearest-neighbour upsampling followed by a 1×1 conv: no checkerboard pattern at the stride's period.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride, self.c_out = stride, c_out
        self.conv = nn.Conv1d(c_in, c_out * stride, 1)
        with torch.no_grad():
            w = self.conv.weight.view(c_out, stride, c_in, 1)
            w.copy_(w[:, :1].expand_as(w))
            b = self.conv.bias.view(c_out, stride)
            b.copy_(b[:, :1].expand_as(b))

    def forward(self, x: Tensor) -> Tensor:
        b, _, n = x.shape
        h = self.conv(x).view(b, self.c_out, self.stride, n)  # channel index = c · s + phase
        return h.transpose(2, 3).reshape(b, self.c_out, n * self.stride)


class _Stage(nn.Module):
    def __init__(self, blocks: list[ResBlock1D], attn: AttentionBlock1D | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor, text: Tensor | None, text_mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return x if self.attn is None else self.attn(x, text, text_mask)


class UNet1D(nn.Module):
    """The 1-D Efficient U-Net (module docstring): ``(x (B, C_in, T), t (B,)) → (B, C_out, T)``.

    :meth:`forward` ``(x, t, text=None, text_mask=None, aug_level=None)``. ``t`` is float in [0, 1]
    (diffusion time, 1 = noise) or long in ``[0, num_train_steps]``. ``T`` must be a multiple of
    ``prod(strides)`` (:meth:`valid_length`). :meth:`save_pretrained` / :meth:`from_pretrained` store
    ``config.json`` + ``model.safetensors``.
    """

    def __init__(self, config: UNet1DConfig | None = None) -> None:
        super().__init__()
        config = config or UNet1DConfig()
        config.validate()
        self.config = cfg = config
        c0, widths, g = cfg.channels, cfg.widths(), cfg.num_groups
        emb_dim = 4 * c0
        block = dict(emb_dim=emb_dim, kernel_size=cfg.kernel_size, num_groups=g, dropout=cfg.dropout)

        def attention(width: int, self_attn: bool, cross: bool) -> AttentionBlock1D | None:
            if not self_attn and not (cross and cfg.text_dim is not None):
                return None
            return AttentionBlock1D(width, cfg.num_heads, cfg.text_dim, self_attn, cross, g)

        self.time_embed = _TimeEmbedding(c0, emb_dim)
        self.aug_embed = _TimeEmbedding(c0, emb_dim) if cfg.aug_conditioning else None
        self.stem = nn.Conv1d(cfg.in_channels, c0, 7, padding=3)

        self.downsamples, self.down_stages = nn.ModuleList(), nn.ModuleList()
        prev = c0
        for w, s, n, sa, ca in zip(widths, cfg.strides, cfg.num_res_blocks, cfg.self_attn_stages,
                                   cfg.cross_attn_stages):
            self.downsamples.append(_down(prev, w, s))
            self.down_stages.append(_Stage([ResBlock1D(w, w, **block) for _ in range(n)], attention(w, sa, ca)))
            prev = w

        mid = widths[-1]
        self.mid = nn.ModuleList([ResBlock1D(mid, mid, **block),
                                  AttentionBlock1D(mid, cfg.num_heads, cfg.text_dim, True, True, g),
                                  ResBlock1D(mid, mid, **block)])

        self.up_stages, self.upsamples = nn.ModuleList(), nn.ModuleList()
        outs = [c0, *widths[:-1]]
        for i in reversed(range(len(widths))):
            w = widths[i]
            blocks = [ResBlock1D(2 * w if j == 0 else w, w, **block) for j in range(cfg.num_res_blocks[i])]
            self.up_stages.append(_Stage(blocks, attention(w, cfg.self_attn_stages[i], cfg.cross_attn_stages[i])))
            self.upsamples.append(_Up(w, outs[i], cfg.strides[i]))

        self.final_block = ResBlock1D(2 * c0, c0, **block) if cfg.final_res_block else None
        c_final = c0 if cfg.final_res_block else 2 * c0
        self.out_norm = nn.GroupNorm(g, c_final)
        self.out_conv = nn.Conv1d(c_final, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def valid_length(self, n: int) -> int:
        """``n`` rounded up to a multiple of ``prod(strides)``: the nearest length ``≥ n`` the model accepts."""
        return self.config.valid_length(n)

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def _times(self, t: Tensor | float, b: int, device: torch.device, name: str) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.dim() != 1 or t.shape[0] != b:
            raise ValueError(f"UNet1D: {name} must have shape (B,) = ({b},), got {tuple(t.shape)}")
        if t.dtype == torch.bool:
            raise ValueError(f"UNet1D: {name} must be float in [0, 1] or long steps, got bool")
        if not t.is_floating_point():
            if (t < 0).any() or (t > self.config.num_train_steps).any():
                raise ValueError(f"UNet1D: integer {name} must lie in [0, {self.config.num_train_steps}]")
            return t.to(device, torch.float32) / self.config.num_train_steps
        if (t < 0).any() or (t > 1).any():
            raise ValueError(f"UNet1D: float {name} must lie in [0, 1], got values in "
                             f"[{t.min().item():.4g}, {t.max().item():.4g}]")
        return t.to(device)

    def _check(self, x: Tensor, text: Tensor | None, text_mask: Tensor | None, aug_level) -> None:
        cfg = self.config
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] != cfg.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"UNet1D expects x of shape (B, in_channels={cfg.in_channels}, T), got {got}")
        n, p = x.shape[-1], cfg.total_stride
        if n % p:
            lo, hi = (n // p) * p, (n // p + 1) * p
            nearest = f"{lo} and {hi}" if lo > 0 else f"{hi}"
            raise ValueError(f"UNet1D: length must be a multiple of {p} (the product of strides {cfg.strides}); "
                             f"got {n}, nearest valid: {nearest} (model.valid_length({n}) = {hi})")
        if text is not None:
            if cfg.text_dim is None:
                raise ValueError("UNet1D was built unconditional (text_dim=None) but got text")
            if text.dim() != 3 or text.shape[0] != x.shape[0] or text.shape[-1] != cfg.text_dim:
                raise ValueError(f"UNet1D expects text of shape (B={x.shape[0]}, L, text_dim={cfg.text_dim}), "
                                 f"got {tuple(text.shape)}")
        elif text_mask is not None:
            raise ValueError("UNet1D got text_mask without text")
        if cfg.aug_conditioning and aug_level is None:
            raise ValueError("UNet1D was built with aug_conditioning=True (a cascader): pass aug_level (B,) in [0, 1], "
                             "the noise level of its low-rate conditioning input (0 = clean)")
        if not cfg.aug_conditioning and aug_level is not None:
            raise ValueError("UNet1D got aug_level but was built with aug_conditioning=False")

    def forward(self, x: Tensor, t: Tensor | float, text: Tensor | None = None, text_mask: Tensor | None = None,
                aug_level: Tensor | float | None = None) -> Tensor:
        """Predict ``(B, out_channels, T)`` from ``x`` ``(B, in_channels, T)`` at diffusion time ``t`` ``(B,)``.

        ``text`` ``(B, L, text_dim)`` and ``text_mask`` ``(B, L)`` bool (True = real token) condition by
        cross-attention; ``text=None`` or an all-False mask row is the null condition. ``aug_level``
        ``(B,)`` in [0, 1] (or long steps) is required exactly when ``config.aug_conditioning``.
        """
        self._check(x, text, text_mask, aug_level)
        b = x.shape[0]
        emb = self.time_embed(self._times(t, b, x.device, "t"))
        if self.aug_embed is not None:
            emb = emb + self.aug_embed(self._times(aug_level, b, x.device, "aug_level"))

        h = self.stem(x)
        stem, skips = h, []
        for down, stage in zip(self.downsamples, self.down_stages):
            h = stage(down(h), emb, text, text_mask)
            skips.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h, text, text_mask)
        h = self.mid[2](h, emb)
        for stage, up in zip(self.up_stages, self.upsamples):
            h = torch.cat([h, skips.pop() * SKIP_SCALE], dim=1)
            h = up(stage(h, emb, text, text_mask))
        h = torch.cat([h, stem * SKIP_SCALE], dim=1)
        if self.final_block is not None:
            h = self.final_block(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created if needed); return it."""
        return save_pretrained(self, self.config, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> UNet1D:
        """Inverse of :meth:`save_pretrained` (JSON config + safetensors, nothing unpickled); eval mode."""
        return load_pretrained(cls, UNet1DConfig, folder, map_location)
