"""Multi-head attention (self, causal, cross) on ``scaled_dot_product_attention``, with an explicit KV cache.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1), per head ``h`` of width ``d = dim / num_heads``::

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V,      M[i, j] = 0 where query i may see key j, else −∞

with ``Q = x W_q`` from the queries' sequence and ``K = c W_k``, ``V = c W_v`` from the same sequence
(self-attention, ``c = x``) or from a *context* (cross-attention: ``c`` = text embeddings ``(B, L,
context_dim)``, as in AudioGen's and Diffsound's decoders). The heads are concatenated and projected by
``W_o``. The kernel is :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
on GPU, a fused CPU kernel otherwise); the module only prepares ``Q, K, V`` and the mask.

Masks are **boolean, True = may attend** (PyTorch's convention for ``attn_mask``), both for the causal
mask and for the context's key padding mask ``(B, L)``. A batch item whose context mask is all False (no
text at all: the *null condition* of classifier-free guidance, see :mod:`course_lib.nn.guidance`) gets a
cross-attention output of exactly **zero**, never NaN: the residual stream then passes through the block
as if it had no cross-attention (the same null condition as Noise2Music's "zero the cross-attention
output").

Incremental decoding: a :class:`KVCache` holds the projected keys and values of the positions seen so far.
It is an explicit object that the caller creates (``KVCache()``), passes to every call, and that the call
extends in place — the module itself keeps no state between calls. With a cache, a causal call on ``n``
new positions lets new query ``i`` see the ``P`` cached keys and new keys ``0..i``; the outputs equal
those of one call on the whole sequence. For cross-attention the cache stores the projected context once
(at the first call) and reuses it: the context must not change while a cache is in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KVCache", "MultiHeadAttention", "causal_mask"]


def causal_mask(n: int, device: torch.device | str | None = None, num_keys: int | None = None) -> Tensor:
    """Boolean causal mask ``(n, num_keys)``, True where query ``i`` may attend to key ``j``.

    With ``num_keys = n`` (default) it is the lower triangle ``j ≤ i``. With ``num_keys = P + n`` (``P``
    cached past positions followed by ``n`` new ones) query ``i`` sits at absolute position ``P + i`` and
    sees keys ``j ≤ P + i``: the mask a KV-cached decoder needs when it feeds several new positions at once.
    """
    num_keys = n if num_keys is None else num_keys
    if n < 0 or num_keys < n:
        raise ValueError(f"causal_mask needs 0 <= n <= num_keys, got n={n}, num_keys={num_keys}")
    offset = num_keys - n
    rows = torch.arange(n, device=device)[:, None]
    cols = torch.arange(num_keys, device=device)[None, :]
    return cols <= rows + offset


@dataclass
class KVCache:
    """Projected keys and values of the positions attended so far, each ``(B, num_heads, P, head_dim)``.

    Create an empty one (``KVCache()``) per attention layer and pass it to every call; the call appends the
    new positions (self-attention) or stores the projected context once (cross-attention). ``len(cache)`` is
    ``P``, the number of cached positions (0 when empty).
    """

    keys: Tensor | None = None
    values: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Concatenate new ``(B, H, n, head_dim)`` keys/values after the cached ones; return the full ones."""
        if self.keys is not None:
            if self.keys.shape[:2] != keys.shape[:2]:
                raise ValueError(f"KVCache holds keys for (batch, heads) = {tuple(self.keys.shape[:2])}, got new "
                                 f"keys for {tuple(keys.shape[:2])}; use one cache per batch")
            keys = torch.cat([self.keys, keys], dim=2)
            values = torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values


class MultiHeadAttention(nn.Module):
    """Multi-head attention ``(B, S, dim) → (B, S, dim)``: self-attention, or cross-attention to a context.

    ``context_dim=None`` builds a **self-attention** layer (keys and values from ``x``; ``causal=True`` in
    :meth:`forward` hides the future). An int ``context_dim`` builds a **cross-attention** layer whose keys
    and values come from ``context`` ``(B, L, context_dim)`` (e.g. text-encoder embeddings), with an
    optional key padding mask ``(B, L)`` bool, True = real token. ``dim`` must be divisible by
    ``num_heads``; ``dropout`` is the attention-weight dropout, active in training mode only.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MultiHeadAttention: {name} must be a positive int, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"MultiHeadAttention: dim={dim} must be divisible by num_heads={num_heads}")
        if context_dim is not None and (isinstance(context_dim, bool) or not isinstance(context_dim, int)
                                        or context_dim <= 0):
            raise ValueError(f"MultiHeadAttention: context_dim must be None or a positive int, got {context_dim!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.context_dim, self.dropout = context_dim, dropout
        kv_in = dim if context_dim is None else context_dim
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_in, dim)
        self.v_proj = nn.Linear(kv_in, dim)
        self.out_proj = nn.Linear(dim, dim)

    @property
    def is_cross(self) -> bool:
        """True for a cross-attention layer (built with ``context_dim``)."""
        return self.context_dim is not None

    def extra_repr(self) -> str:
        kind = f"cross, context_dim={self.context_dim}" if self.is_cross else "self"
        return f"dim={self.dim}, num_heads={self.num_heads}, {kind}, dropout={self.dropout}"

    def _heads(self, t: Tensor) -> Tensor:
        """``(B, n, dim)`` → ``(B, num_heads, n, head_dim)``."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _check(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None, causal: bool) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"MultiHeadAttention expects x of shape (B, S, dim={self.dim}), got {got}")
        if not self.is_cross:
            if context is not None or context_mask is not None:
                raise ValueError("this MultiHeadAttention is a self-attention layer (built without context_dim); "
                                 "it takes no context or context_mask")
            return
        if causal:
            raise ValueError("causal=True applies to self-attention only; a cross-attention layer sees the whole "
                             "context")
        if not isinstance(context, Tensor) or context.dim() != 3 or context.shape[-1] != self.context_dim:
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"cross-attention expects context of shape (B, L, context_dim={self.context_dim}), "
                             f"got {got}")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context has batch {context.shape[0]} but x has batch {x.shape[0]}")
        if context_mask is not None:
            if (not isinstance(context_mask, Tensor) or context_mask.dtype != torch.bool
                    or tuple(context_mask.shape) != tuple(context.shape[:2])):
                got = (f"{tuple(context_mask.shape)} {context_mask.dtype}" if isinstance(context_mask, Tensor)
                       else type(context_mask).__name__)
                raise ValueError(f"context_mask must be a bool tensor (B, L) = {tuple(context.shape[:2])} "
                                 f"with True = real token, got {got}")

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                causal: bool = False, cache: KVCache | None = None) -> Tensor:
        """Attend from ``x`` ``(B, S, dim)``; return ``(B, S, dim)``.

        Self-attention: ``causal=True`` lets position ``i`` see positions ``≤ i`` only; with a ``cache`` the
        new positions are appended to it and attend to everything cached before them. Cross-attention:
        ``context`` ``(B, L, context_dim)`` is required, ``context_mask`` ``(B, L)`` bool (True = keep) is
        optional; rows whose mask is all False (and an empty context, ``L = 0``) give exactly zero output.
        """
        self._check(x, context, context_mask, causal)
        b, n, _ = x.shape
        q = self._heads(self.q_proj(x))
        attn_mask, empty_rows, is_causal = None, None, False
        if self.is_cross:
            if cache is not None and cache.keys is not None:
                k, v = cache.keys, cache.values
            else:
                k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
                if cache is not None:
                    cache.append(k, v)
            if context.shape[1] == 0:
                return x.new_zeros(b, n, self.dim)
            if context_mask is not None:
                empty_rows = ~context_mask.any(dim=1)  # (B,)
                # An all-False row would give softmax over nothing (NaN in some kernels): let it see every key
                # here, then zero its output below. Gradients stay finite.
                keep = context_mask | empty_rows[:, None]
                attn_mask = keep[:, None, None, :]  # (B, 1, 1, L) broadcast over heads and queries
        else:
            k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
            past = 0
            if cache is not None:
                past = len(cache)
                k, v = cache.append(k, v)
            if causal and past == 0:
                is_causal = n > 1
            elif causal and n > 1:
                attn_mask = causal_mask(n, x.device, num_keys=past + n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, self.dim))
        if empty_rows is not None:
            out = out.masked_fill(empty_rows[:, None, None], 0.0)
        return out
