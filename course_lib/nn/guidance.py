"""Classifier-free guidance (Ho & Salimans 2022), shared by the AudioGen LM and the course's diffusion models.

One network learns both the conditional and the unconditional model: during training the condition is
replaced by a *null condition* with probability ``p`` (:func:`drop_condition`; AudioGen §3 drops the text
10% of the time). At sampling time the two predictions are mixed (:func:`cfg_mix`)::

    guided = uncond + s · (cond − uncond)

``s = 1`` is the plain conditional model, ``s = 0`` the unconditional one, ``s > 1`` pushes further in the
direction the text adds. Ho & Salimans write it for noise predictions as ``(1 + w) ε(z, c) − w ε(z)``, i.e.
``s = 1 + w``; AudioGen applies it to log-probabilities, ``γ log p(x|c) + (1 − γ) log p(x)`` with ``γ = s``
(audiocraft mixes the raw logits, which differs only by a per-step constant before the softmax, and uses
``s = 3`` for the released AudioGen). The same function serves logits ``(…, vocab)`` and diffusion scores.

The null condition in this course: **all-masked text**, i.e. a text mask ``(B, L)`` whose row is all False.
:class:`~course_lib.nn.attention.MultiHeadAttention` returns exactly zero cross-attention for such a row, so
the model sees "no text at all", whatever the embeddings hold. Models whose condition is a vector rather
than a masked sequence use the zero vector instead; :func:`drop_condition` does both.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cfg_mix", "drop_condition", "null_mask_like"]


def drop_condition(mask_or_embeddings: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each batch item's condition by the null condition with probability ``p``; a new tensor.

    A **bool mask** ``(B, L)`` (True = real token) gets its dropped rows set to all False: the all-masked
    null text that cross-attention turns into a zero contribution. A **float tensor** ``(B, …)`` (embeddings
    or a pooled condition vector) gets its dropped items set to zero. Each item is dropped independently
    (``Bernoulli(p)``, drawn from ``generator`` if given, which must live on the tensor's device). AudioGen
    trains with ``p = 0.1``; ``p = 0`` returns an unchanged copy, ``p = 1`` drops everything.
    """
    if not isinstance(mask_or_embeddings, Tensor) or mask_or_embeddings.dim() < 1:
        raise ValueError("drop_condition expects a bool mask (B, L) or float embeddings (B, ...) with a batch axis")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"drop_condition: p must be a probability in [0, 1], got {p!r}")
    x = mask_or_embeddings
    if x.dtype != torch.bool and not x.is_floating_point():
        raise ValueError(f"drop_condition expects a bool mask or a float tensor, got dtype {x.dtype}")
    b = x.shape[0]
    drop = torch.rand(b, generator=generator, device=x.device) < p
    drop = drop.view(b, *([1] * (x.dim() - 1)))
    return x & ~drop if x.dtype == torch.bool else x.masked_fill(drop, 0.0)


def null_mask_like(mask: Tensor) -> Tensor:
    """The null condition for a text mask ``(B, L)``: an all-False bool tensor of the same shape and device."""
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"null_mask_like expects a mask (B, L), got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    return torch.zeros_like(mask, dtype=torch.bool)


def cfg_mix(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ``uncond + scale · (cond − uncond)``, elementwise, same shape as the inputs.

    ``cond`` and ``uncond`` are the model's outputs with and without the condition (logits ``(B, K, V)`` of
    the LM, noise/score/velocity predictions of a diffusion model) and must have the same shape. ``scale``
    1 gives ``cond`` (returned as is), 0 gives ``uncond``; AudioGen's released model samples with 3.
    """
    if not isinstance(cond, Tensor) or not isinstance(uncond, Tensor) or cond.shape != uncond.shape:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (cond, uncond)]
        raise ValueError(f"cfg_mix needs cond and uncond tensors of the same shape, got {shapes[0]} and {shapes[1]}")
    if isinstance(scale, Tensor):
        scale = float(scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"cfg_mix: scale must be a number, got {type(scale).__name__}")
    if scale == 1:
        return cond
    return uncond + scale * (cond - uncond)
