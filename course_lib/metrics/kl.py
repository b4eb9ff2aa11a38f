"""Paired KL divergence between a classifier's label distributions on reference and generated clips.

AudioGen and Diffsound report a "KL" next to FAD: each generated clip is paired with the reference clip whose
caption produced it, a pretrained audio classifier gives a label distribution for both, and the KL
divergence between the two distributions is averaged over the pairs. Unlike FAD it compares *pairs*, so
it asks "does each generated clip contain the same kind of sound as its reference?".

The convention, as in audiocraft's ``metrics/kld.py`` (AudioGen, PaSST classifier on AudioSet) and in
the SpecVQGAN / audioldm_eval code (``kullback_leibler_divergence_softmax``):

* **label distributions**: a *softmax* over the classifier's logits, even for AudioSet's multi-label classes;
* **direction**: ``KL(p_ref ‖ p_gen) = Σ_c p_ref,c · log(p_ref,c / p_gen,c)``, the reference is the "true"
  distribution; a generated clip is punished most for giving ~0 probability to a class the reference has;
* **epsilon**: ``1e-6`` is added to ``p_gen`` only, inside the log (``0 · log 0 = 0`` for the reference), so
  the value stays finite when ``p_gen`` has zeros; it is not renormalised, so identical rows read ``≈ −C·ε``
  rather than exactly 0 (−1.2e-5 for 12 classes; pass ``eps=0`` for an exact 0 when ``p_gen`` has no zeros);
* **reduction**: the mean over pairs (audiocraft sums per-pair KLs and divides by the number of pairs).

audioldm_eval also reports a "KL_Sigmoid" (sigmoids of the logits fed into the same formula); that is not a
divergence between distributions (the ``1 − p`` terms are missing) and is not offered here. With
``multilabel=True`` this module computes the proper multi-label counterpart instead: the sum over classes of
the Bernoulli KL ``p log(p/q) + (1−p) log((1−p)/(1−q))`` between sigmoid probabilities.

The value depends entirely on the classifier (PaSST here would give other numbers than the course's own
12-class classifier), so only numbers measured with the same classifier are comparable.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["paired_kl", "label_distributions", "classifier_kl"]

_SUM_TOL = 1e-3  # how far a row of probabilities may be from summing to 1


def _as_2d(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be an (N, C) array of numbers, got {type(x).__name__}") from err
    if x.dtype == torch.bool or x.is_complex() or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N pairs, C classes), got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def label_distributions(x: Any, from_logits: bool = False, multilabel: bool = False, name: str = "x") -> torch.Tensor:
    """Validated class probabilities ``(N, C)`` float64 from logits or probabilities.

    ``from_logits``: apply softmax over classes (or a sigmoid per class when ``multilabel``). Otherwise the
    values must already be probabilities: in ``[0, 1]``, and (unless ``multilabel``) each row summing to 1
    within 1e-3; anything else raises a ``ValueError`` that says which row is wrong.
    """
    x = _as_2d(x, name)
    if from_logits:
        return torch.sigmoid(x) if multilabel else torch.softmax(x, dim=1)
    if (x < 0).any() or (x > 1).any():
        raise ValueError(f"{name} holds values outside [0, 1]: pass from_logits=True if these are logits")
    if not multilabel:
        err = (x.sum(dim=1) - 1).abs()
        if (err > _SUM_TOL).any():
            row = int(err.argmax())
            raise ValueError(f"row {row} of {name} sums to {float(x[row].sum()):.4f}, not 1: rows must be probability "
                             f"distributions (or pass from_logits=True, or multilabel=True for per-class probabilities)")
    return x


def paired_kl(p_ref: Any, p_gen: Any, from_logits: bool = False, multilabel: bool = False, eps: float = 1e-6,
              reduction: str = "mean") -> float | torch.Tensor:
    """Mean over pairs of ``KL(p_ref ‖ p_gen)``: row ``i`` of ``p_ref`` ``(N, C)`` is the classifier's output
    on reference clip ``i``, row ``i`` of ``p_gen`` ``(N, C)`` on the clip generated from the same caption.

    Inputs are probabilities (rows summing to 1), or logits with ``from_logits=True`` (softmax over classes,
    AudioGen's convention). Per pair: ``Σ_c p_ref,c · (log p_ref,c − log(p_gen,c + eps))`` with ``0·log 0 = 0``
    (audiocraft's ``kl_divergence``). ``multilabel=True`` treats each class as its own yes/no label
    (sigmoid probabilities) and sums the Bernoulli KLs over classes, with ``eps`` clamping ``p_gen`` into
    ``[eps, 1 − eps]``. ``reduction="mean"`` returns a float in nats; ``"none"`` the per-pair values ``(N,)``.
    Raises ``ValueError`` on shape mismatch, an empty batch or rows that are not distributions.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < 0.5:
        raise ValueError(f"eps must be a float in [0, 0.5), got {eps!r}")
    ref = label_distributions(p_ref, from_logits, multilabel, "p_ref")
    gen = label_distributions(p_gen, from_logits, multilabel, "p_gen")
    if ref.shape != gen.shape:
        raise ValueError(f"p_ref {tuple(ref.shape)} and p_gen {tuple(gen.shape)} must have the same shape (N pairs, "
                         f"C classes): pair each generated clip with its reference clip")
    if ref.shape[0] == 0 or ref.shape[1] == 0:
        raise ValueError(f"need at least one pair and one class, got shape {tuple(ref.shape)}")
    if multilabel:
        q = gen.clamp(eps, 1 - eps)
        per_pair = (torch.xlogy(ref, ref) - ref * q.log() + torch.xlogy(1 - ref, 1 - ref) - (1 - ref) * (1 - q).log())
        per_pair = per_pair.sum(dim=1)
    else:
        per_pair = (torch.xlogy(ref, ref) - ref * (gen + eps).log()).sum(dim=1)
    return float(per_pair.mean()) if reduction == "mean" else per_pair


def classifier_kl(classifier: Any, reference_audio: Any, generated_audio: Any, sample_rate: int,
                  generated_sample_rate: int | None = None, eps: float = 1e-6) -> dict[str, float]:
    """Paired KL measured with an audio classifier that has ``predict_proba(audio, sample_rate) -> (B, C)``
    (e.g. :class:`course_lib.metrics.embeddings.CourseAudioClassifier`).

    ``reference_audio`` and ``generated_audio`` are clips ``(N, T)`` (or ``(N, 1, T)``), row ``i`` of one paired
    with row ``i`` of the other. Returns ``{"kl": KL(ref‖gen), "kl_reverse": KL(gen‖ref), "kl_both": their
    sum}``, the three numbers audiocraft logs (``kld``/``kld_pq``, ``kld_qp``, ``kld_both``).
    """
    p_ref = classifier.predict_proba(reference_audio, sample_rate)
    p_gen = classifier.predict_proba(generated_audio, generated_sample_rate or sample_rate)
    forward = paired_kl(p_ref, p_gen, eps=eps)
    reverse = paired_kl(p_gen, p_ref, eps=eps)
    return {"kl": forward, "kl_reverse": reverse, "kl_both": forward + reverse}
