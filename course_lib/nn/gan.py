"""Adversarial losses shared by every GAN in the course: hinge losses and feature matching.

MelGAN (Kumar et al. 2019) trains its multi-scale discriminator with the hinge loss and its generator with
``-D(G(s))`` plus an L1 *feature-matching* loss between the discriminator's intermediate feature maps on real
and generated audio (weight λ = 10 in the paper). The codec of lesson 02 reuses the same three functions
with its own discriminator. A discriminator here is anything that returns, per scale (or per STFT
resolution), one logits tensor and a list of feature maps; the functions take those lists.

Reduction: every loss is a **mean over scales** (and, for feature matching, over layers), so adding a scale
does not change the loss's size. The official MelGAN code *sums* the hinge terms over its 3 scales and
weights each feature-matching term by ``4 / (n_layers + 1) / n_scales``; pass ``reduction="sum"`` to the
hinge losses to get the summed form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["discriminator_hinge_loss", "generator_hinge_loss", "feature_matching_loss"]

_REDUCTIONS = ("mean", "sum")


def _check_logits(name: str, logits: Sequence[Tensor]) -> None:
    if isinstance(logits, Tensor) or not isinstance(logits, (list, tuple)):
        raise TypeError(f"{name} must be a list of tensors (one per discriminator scale), got {type(logits).__name__}")
    if len(logits) == 0:
        raise ValueError(f"{name} is empty; expected one logits tensor per discriminator scale")
    for i, t in enumerate(logits):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")


def _reduce(terms: list[Tensor], reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    total = torch.stack(terms).sum()
    return total if reduction == "sum" else total / len(terms)


def discriminator_hinge_loss(
    real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor], reduction: str = "mean"
) -> Tensor:
    """Hinge loss of the discriminator, averaged (or summed) over scales; a scalar tensor.

    For each scale k with logits ``D_k(x)`` of any shape (MelGAN: ``(B, 1, T_k)``), the loss is
    ``E[max(0, 1 - D_k(x))] + E[max(0, 1 + D_k(G(s)))]`` (MelGAN eq. 1), where the expectation is the mean
    over every logit. ``real_logits[k]`` and ``fake_logits[k]`` belong to the same scale; pass the fake
    logits computed on *detached* generator output so that this loss trains only the discriminator.
    ``reduction="mean"`` (default) averages the per-scale terms, ``"sum"`` adds them as the official code.
    """
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits)
    if len(real_logits) != len(fake_logits):
        raise ValueError(
            f"real_logits has {len(real_logits)} scales but fake_logits has {len(fake_logits)}; expected the same"
        )
    terms = [F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return _reduce(terms, reduction)


def generator_hinge_loss(fake_logits: Sequence[Tensor], reduction: str = "mean") -> Tensor:
    """Adversarial loss of the generator, ``-E[D_k(G(s))]`` averaged (or summed) over scales; a scalar.

    This is MelGAN's generator term (eq. 2 without feature matching): the generator pushes the
    discriminator's logits on generated audio up, without the hinge's clipping. ``fake_logits[k]`` is the
    logits tensor of scale k on generated audio (not detached: gradients must reach the generator).
    """
    _check_logits("fake_logits", fake_logits)
    return _reduce([-f.mean() for f in fake_logits], reduction)


def feature_matching_loss(
    real_feats: Sequence[Sequence[Tensor]], fake_feats: Sequence[Sequence[Tensor]]
) -> Tensor:
    """Feature-matching loss: mean L1 between discriminator feature maps on real and fake audio; a scalar.

    ``real_feats[k][i]`` is feature map i of scale k on real audio, any shape (MelGAN: ``(B, C_i, T_i)``),
    and ``fake_feats[k][i]`` the same map on generated audio. The loss is the mean over scales of the mean
    over layers of ``mean |D_k^(i)(x) - D_k^(i)(G(s))|`` (MelGAN eq. 3, with 1/N_i as the mean over
    elements). Real features are detached: this loss trains only the generator. MelGAN weights it by
    λ = 10 in the generator loss; the weighting is the caller's.
    """
    for name, feats in (("real_feats", real_feats), ("fake_feats", fake_feats)):
        if isinstance(feats, Tensor) or not isinstance(feats, (list, tuple)) or len(feats) == 0:
            raise ValueError(f"{name} must be a non-empty list (one entry per scale) of lists of feature maps")
    if len(real_feats) != len(fake_feats):
        raise ValueError(f"real_feats has {len(real_feats)} scales but fake_feats has {len(fake_feats)}; expected the same")
    per_scale = []
    for k, (rs, fs) in enumerate(zip(real_feats, fake_feats)):
        if isinstance(rs, Tensor) or isinstance(fs, Tensor):
            raise TypeError(f"real_feats[{k}] and fake_feats[{k}] must be lists of feature maps, not tensors")
        if len(rs) != len(fs) or len(rs) == 0:
            raise ValueError(
                f"scale {k}: real has {len(rs)} feature maps and fake has {len(fs)}; expected the same non-zero number"
            )
        layer_terms = []
        for i, (r, f) in enumerate(zip(rs, fs)):
            if r.shape != f.shape:
                raise ValueError(
                    f"scale {k}, feature map {i}: real has shape {tuple(r.shape)} but fake has {tuple(f.shape)}"
                )
            layer_terms.append(F.l1_loss(f, r.detach()))
        per_scale.append(torch.stack(layer_terms).mean())
    return torch.stack(per_scale).mean()
