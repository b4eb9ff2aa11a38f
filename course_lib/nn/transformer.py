"""The transformer shared by the course's token models: pre-norm blocks, cross-attention, adaptive LayerNorm.

One block (pre-norm, as GPT-2 and audiocraft's ``StreamingTransformer`` with ``norm_first``)::

    h = x + SelfAttn(LN₁(x))                  causal for the AudioGen LM, bidirectional for Diffsound
    h = h + CrossAttn(LN₂(h), text, mask)     when built with cross_attention_dim
    y = h + MLP(LN₃(h))                       MLP = Linear(dim, r·dim) → GELU → Linear(r·dim, dim)

With ``adaptive_norm_dim`` set, every LayerNorm becomes an :class:`AdaptiveLayerNorm`: the scale and shift
come from a conditioning vector ``c`` (Diffsound / VQ-Diffusion feed the diffusion timestep embedding this
way): ``AdaLN(x, c) = LN(x) · (1 + γ(c)) + β(c)``. The linear map to ``(γ, β)`` is zero-initialised, so an
untrained adaptive block computes exactly what a plain block does at initialisation.

:class:`Transformer` stacks ``num_layers`` blocks and a final norm, and threads an explicit
:class:`TransformerCache` (one :class:`~course_lib.nn.attention.KVCache` per attention layer) through them for
incremental decoding. :func:`sinusoidal_embedding` gives the fixed positional (or timestep) features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from course_lib.nn.attention import KVCache, MultiHeadAttention

__all__ = ["AdaptiveLayerNorm", "LayerCache", "Transformer", "TransformerBlock", "TransformerCache",
           "sinusoidal_embedding"]


def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Fixed sinusoidal features of ``positions`` (any shape, int or float) → ``(*positions.shape, dim)``.

    ``emb[..., i] = cos(p · ω_i)`` and ``emb[..., half + i] = sin(p · ω_i)`` with ``ω_i = max_period^(−i /
    half)``, ``half = dim / 2`` (Vaswani et al. 2017, §3.5; cosines first, the layout of audiocraft's
    ``create_sin_embedding`` and guided-diffusion's timestep embedding; DDPM's original code puts the sines first). audiocraft and MusicGen divide by ``half − 1``
    instead: :func:`course_lib.lm.model.sinusoidal_embedding_t2t`. Position 0 is ``[1, …, 1, 0, …, 0]``.
    ``dim`` must be even.
    """
    if not isinstance(positions, Tensor):
        raise TypeError(f"positions must be a tensor, got {type(positions).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"sinusoidal_embedding: dim must be a positive even int, got {dim!r}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32)
                      / half)
    args = positions.to(torch.float32)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaptiveLayerNorm(nn.Module):
    """``LN(x) · (1 + γ(c)) + β(c)`` on ``x`` ``(B, S, dim)`` with a condition ``c`` ``(B, cond_dim)`` or
    ``(B, S, cond_dim)``.

    ``(γ, β) = Linear(SiLU(c))`` (VQ-Diffusion's ``AdaLayerNorm``, DiT's adaLN), the linear map
    zero-initialised so that at initialisation the layer equals a plain ``nn.LayerNorm(dim)`` (whose affine
    weight is 1 and bias 0). The inner LayerNorm has no affine parameters of its own.
    """

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        nn.init.zeros_(self.to_scale_shift[1].weight)
        nn.init.zeros_(self.to_scale_shift[1].bias)
        self.dim, self.cond_dim = dim, cond_dim

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """Normalise ``x`` ``(B, S, dim)`` and modulate it by ``cond`` ``(B, cond_dim)`` or ``(B, S, cond_dim)``."""
        if not isinstance(cond, Tensor) or cond.dim() not in (2, 3) or cond.shape[-1] != self.cond_dim:
            got = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
            raise ValueError(f"adaptive LayerNorm needs cond of shape (B, cond_dim={self.cond_dim}) or "
                             f"(B, S, {self.cond_dim}), got {got}")
        if cond.shape[0] != x.shape[0] or (cond.dim() == 3 and cond.shape[1] != x.shape[1]):
            raise ValueError(f"cond {tuple(cond.shape)} does not match x {tuple(x.shape)} in batch/sequence")
        scale, shift = self.to_scale_shift(cond).chunk(2, dim=-1)
        if cond.dim() == 2:
            scale, shift = scale[:, None, :], shift[:, None, :]
        return self.norm(x) * (1 + scale) + shift


class _Norm(nn.Module):
    """A plain LayerNorm or an :class:`AdaptiveLayerNorm`, called the same way ``norm(x, cond)``."""

    def __init__(self, dim: int, cond_dim: int | None) -> None:
        super().__init__()
        self.adaptive = cond_dim is not None
        self.inner = AdaptiveLayerNorm(dim, cond_dim) if self.adaptive else nn.LayerNorm(dim)

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if self.adaptive:
            return self.inner(x, cond)
        if cond is not None:
            raise ValueError("cond was given but this block was built without adaptive_norm_dim")
        return self.inner(x)


@dataclass
class LayerCache:
    """KV caches of one :class:`TransformerBlock`: its self-attention and (if any) cross-attention."""

    self_attn: KVCache = field(default_factory=KVCache)
    cross_attn: KVCache = field(default_factory=KVCache)


@dataclass
class TransformerCache:
    """Per-block caches of a :class:`Transformer` for incremental decoding; ``len(cache)`` = cached positions.

    Make one with :meth:`Transformer.new_cache` and pass the same object to every call while decoding.
    """

    layers: list[LayerCache]

    def __len__(self) -> int:
        return len(self.layers[0].self_attn) if self.layers else 0


class TransformerBlock(nn.Module):
    """Pre-norm block ``(B, S, dim) → (B, S, dim)``: self-attention → (cross-attention) → MLP, each residual.

    ``cross_attention_dim`` adds cross-attention to a context ``(B, L, cross_attention_dim)``; ``causal``
    makes the self-attention causal; ``mlp_ratio`` sets the MLP's hidden width ``mlp_ratio · dim``;
    ``dropout`` applies to the attention weights and to each residual branch; ``adaptive_norm_dim`` turns
    the three LayerNorms into :class:`AdaptiveLayerNorm` driven by ``cond`` ``(B, adaptive_norm_dim)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4, cross_attention_dim: int | None = None,
                 causal: bool = False, dropout: float = 0.0, adaptive_norm_dim: int | None = None) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"TransformerBlock: mlp_ratio must be > 0, got {mlp_ratio}")
        if adaptive_norm_dim is not None and (not isinstance(adaptive_norm_dim, int) or adaptive_norm_dim <= 0):
            raise ValueError(f"TransformerBlock: adaptive_norm_dim must be None or a positive int, "
                             f"got {adaptive_norm_dim!r}")
        self.causal = causal
        self.norm1 = _Norm(dim, adaptive_norm_dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        self.norm2: _Norm | None = None
        self.cross_attn: MultiHeadAttention | None = None
        if cross_attention_dim is not None:
            self.norm2 = _Norm(dim, adaptive_norm_dim)
            self.cross_attn = MultiHeadAttention(dim, num_heads, context_dim=cross_attention_dim, dropout=dropout)
        self.norm3 = _Norm(dim, adaptive_norm_dim)
        hidden = int(round(mlp_ratio * dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                cond: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:
        """``x`` ``(B, S, dim)`` → ``(B, S, dim)``. ``context``/``context_mask`` feed the cross-attention
        (required if the block has one, refused otherwise); ``cond`` drives adaptive norms; ``cache`` (a
        :class:`LayerCache`) is extended in place for incremental decoding."""
        if self.cross_attn is None and context is not None:
            raise ValueError("context was given but this block was built without cross_attention_dim")
        if self.cross_attn is not None and context is None:
            raise ValueError("this block has cross-attention: pass context (B, L, cross_attention_dim)")
        h = x + self.drop(self.self_attn(self.norm1(x, cond), causal=self.causal,
                                         cache=None if cache is None else cache.self_attn))
        if self.cross_attn is not None:
            h = h + self.drop(self.cross_attn(self.norm2(h, cond), context, context_mask,
                                              cache=None if cache is None else cache.cross_attn))
        return h + self.drop(self.mlp(self.norm3(h, cond)))


class Transformer(nn.Module):
    """A stack of ``num_layers`` :class:`TransformerBlock` and a final norm: ``(B, S, dim) → (B, S, dim)``.

    Arguments as :class:`TransformerBlock`. With ``causal=True`` it is a decoder (the AudioGen LM): output
    ``i`` depends on inputs ``≤ i`` only. :meth:`new_cache` makes the cache for incremental decoding.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, mlp_ratio: float = 4,
                 cross_attention_dim: int | None = None, causal: bool = False, dropout: float = 0.0,
                 adaptive_norm_dim: int | None = None) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"Transformer: num_layers must be a positive int, got {num_layers!r}")
        self.dim, self.causal = dim, causal
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_ratio=mlp_ratio, cross_attention_dim=cross_attention_dim,
                             causal=causal, dropout=dropout, adaptive_norm_dim=adaptive_norm_dim)
            for _ in range(num_layers))
        self.norm = _Norm(dim, adaptive_norm_dim)

    def new_cache(self) -> TransformerCache:
        """An empty :class:`TransformerCache` with one :class:`LayerCache` per block."""
        return TransformerCache([LayerCache() for _ in self.blocks])

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                cond: Tensor | None = None, cache: TransformerCache | None = None) -> Tensor:
        """``x`` ``(B, S, dim)`` → ``(B, S, dim)`` through every block and the final norm (see the block)."""
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"cache has {len(cache.layers)} layers but the transformer has {len(self.blocks)}; "
                             "make it with new_cache()")
        for i, block in enumerate(self.blocks):
            x = block(x, context, context_mask, cond, None if cache is None else cache.layers[i])
        return self.norm(x, cond)
