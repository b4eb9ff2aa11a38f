"""Codebook interleaving patterns: how K parallel token streams ``(B, K, T)`` become one LM sequence.

A residual codec gives ``K`` codes per frame. A language model predicts one *step* at a time, and a pattern
decides which ``(codebook k, frame t)`` tokens are predicted at each step ``s`` (Copet et al. 2023, MusicGen
§2.2, whose three patterns are implemented here):

* :class:`FlatteningPattern` — one token per step, frame by frame, coarse codebook first: ``s = t·K + k``,
  ``S = K·T`` steps. Exact autoregressive factorisation, K times longer sequences (AudioLM, VALL-E's AR part).
* :class:`ParallelPattern` — all K codebooks of frame t at step ``s = t``, ``S = T``: fastest, but the K
  tokens of a frame are sampled independently of each other.
* :class:`DelayPattern` — codebook k shifted right by ``delays[k]`` (default ``k``): ``s = t + k``,
  ``S = T + K − 1``. Codebook k of frame t is predicted one step after codebook k − 1 of the same frame,
  so fine codes see the coarse ones they refine, at almost the parallel pattern's length (MusicGen's choice).

Which one AudioGen uses: the AudioGen paper (Kreuk et al. 2023) trains its main models on a *single* code
stream (K = 1, where the three patterns coincide) and explores multi-stream variants (2 × 1024 and
4 × 512 codebooks) to shorten sequences; audiocraft's *released* AudioGen (audiogen-medium, 4 × 2048
codebooks) uses the **delay** pattern with delays ``[0, 1, 2, 3]`` (``config/model/lm/audiogen_lm.yaml``).
The course follows the release: ``delay`` is the default (:func:`make_pattern`).

Representation (audiocraft's): every pattern maps codes ``(B, K, T)`` to a sequence ``(B, K, S)`` with one
row per codebook; a position that holds no token (the delay pattern's ragged ends, the K − 1 idle rows of
each flattened step) holds ``pad_id``. The LM embeds all K rows of a step and sums them, and its loss skips
the padding (:meth:`Pattern.valid_mask`). Everything follows from one table, :meth:`Pattern.positions`:
the step ``s`` at which token ``(k, t)`` sits. :meth:`Pattern.time_grid` draws it as a ``(K, S)`` picture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DelayPattern", "FlatteningPattern", "ParallelPattern", "Pattern", "PATTERNS", "make_pattern"]


class Pattern:
    """Base class: a bijection between codes ``(B, K, T)`` and the non-padding positions of ``(B, K, S)``.

    Subclasses define :meth:`seq_len` and :meth:`positions`; :meth:`interleave`, :meth:`deinterleave`,
    :meth:`valid_mask` and :meth:`time_grid` follow from them. ``n_q`` is K, the number of codebooks.
    """

    name = "pattern"

    def __init__(self, n_q: int) -> None:
        if isinstance(n_q, bool) or not isinstance(n_q, int) or n_q <= 0:
            raise ValueError(f"{type(self).__name__}: n_q (number of codebooks) must be a positive int, got {n_q!r}")
        self.n_q = n_q

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_q={self.n_q})"

    def seq_len(self, num_frames: int) -> int:
        """Number of LM steps ``S`` for ``num_frames`` frames."""
        raise NotImplementedError

    def positions(self, num_frames: int) -> Tensor:
        """Long tensor ``(K, T)``: the step ``s`` that holds token ``(k, t)``."""
        raise NotImplementedError

    def _check_frames(self, num_frames: int) -> None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames <= 0:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")

    def valid_mask(self, num_frames: int, device: torch.device | str | None = None) -> Tensor:
        """Bool ``(K, S)``: True where the sequence holds a real token, False at padding (``K·T`` Trues)."""
        return self.time_grid(num_frames, device) >= 0

    def time_grid(self, num_frames: int, device: torch.device | str | None = None) -> Tensor:
        """Long ``(K, S)`` picture of the pattern: the frame ``t`` each position holds, −1 for padding.

        ``plt.imshow(pattern.time_grid(T))`` is the figure of MusicGen's Fig. 1.
        """
        pos = self.positions(num_frames).to(device)
        grid = torch.full((self.n_q, self.seq_len(num_frames)), -1, dtype=torch.long, device=device)
        rows = torch.arange(self.n_q, device=device)[:, None].expand_as(pos)
        grid[rows, pos] = torch.arange(num_frames, device=device).expand_as(pos)
        return grid

    def interleave(self, codes: Tensor, pad_id: int = -1) -> Tensor:
        """Codes ``(B, K, T)`` → sequence ``(B, K, S)`` with token ``(k, t)`` at step ``positions[k, t]`` and
        ``pad_id`` everywhere else (default −1, handy for pictures; the LM passes its ``special_id``). Extra
        trailing dims (e.g. ``(B, K, T, V)`` logits) are carried along."""
        self._check_codes(codes, "interleave", "codes (B, K, T)")
        num_frames = codes.shape[2]
        pos = self.positions(num_frames).to(codes.device)
        rows = torch.arange(self.n_q, device=codes.device)[:, None].expand_as(pos)
        out = codes.new_full((codes.shape[0], self.n_q, self.seq_len(num_frames), *codes.shape[3:]), pad_id)
        out[:, rows, pos] = codes
        return out

    def deinterleave(self, seq: Tensor, num_frames: int) -> Tensor:
        """Sequence ``(B, K, S)`` → codes ``(B, K, T)``: the exact inverse of :meth:`interleave` (padding is
        dropped). Extra trailing dims are carried along, so ``(B, K, S, V)`` logits map to ``(B, K, T, V)``."""
        self._check_codes(seq, "deinterleave", "a sequence (B, K, S)")
        self._check_frames(num_frames)
        expected = self.seq_len(num_frames)
        if seq.shape[2] != expected:
            raise ValueError(f"{self!r}.deinterleave: {num_frames} frames need {expected} steps, "
                             f"got a sequence of {seq.shape[2]}")
        pos = self.positions(num_frames).to(seq.device)
        rows = torch.arange(self.n_q, device=seq.device)[:, None].expand_as(pos)
        return seq[:, rows, pos]

    def _check_codes(self, x: Tensor, who: str, what: str) -> None:
        if not isinstance(x, Tensor) or x.dim() < 3:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{self!r}.{who} expects {what}, got {got}")
        if x.shape[1] != self.n_q:
            raise ValueError(f"{self!r}.{who} expects K = {self.n_q} codebooks on axis 1, got {x.shape[1]} "
                             f"(shape {tuple(x.shape)})")
        if x.shape[2] == 0:
            raise ValueError(f"{self!r}.{who}: the time axis is empty")


class FlatteningPattern(Pattern):
    """One token per step: ``s = t·K + k`` (frame-major, coarse first), ``S = K·T``."""

    name = "flattening"

    def seq_len(self, num_frames: int) -> int:
        self._check_frames(num_frames)
        return self.n_q * num_frames

    def positions(self, num_frames: int) -> Tensor:
        self._check_frames(num_frames)
        t = torch.arange(num_frames)[None, :]
        k = torch.arange(self.n_q)[:, None]
        return t * self.n_q + k


class ParallelPattern(Pattern):
    """All K codebooks of frame ``t`` at step ``s = t``; ``S = T`` and no padding."""

    name = "parallel"

    def seq_len(self, num_frames: int) -> int:
        self._check_frames(num_frames)
        return num_frames

    def positions(self, num_frames: int) -> Tensor:
        self._check_frames(num_frames)
        return torch.arange(num_frames)[None, :].expand(self.n_q, num_frames).clone()


class DelayPattern(Pattern):
    """Codebook ``k`` delayed by ``delays[k]`` steps: ``s = t + delays[k]``, ``S = T + max(delays)``.

    ``delays`` defaults to ``[0, 1, …, K − 1]`` (MusicGen; audiocraft's released AudioGen with K = 4). They
    must be non-negative ints with ``delays[0] = 0`` (equal delays put those codebooks on the same step);
    the gaps they leave hold ``pad_id``.
    """

    name = "delay"

    def __init__(self, n_q: int, delays: Sequence[int] | None = None) -> None:
        super().__init__(n_q)
        delays = list(range(n_q)) if delays is None else list(delays)
        if len(delays) != n_q or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in delays):
            raise ValueError(f"DelayPattern: delays must be {n_q} non-negative ints, got {delays!r}")
        if delays[0] != 0:
            raise ValueError(f"DelayPattern: the first codebook must not be delayed (delays[0] = 0), got {delays!r}")
        self.delays = delays

    def __repr__(self) -> str:
        return f"DelayPattern(n_q={self.n_q}, delays={self.delays})"

    def seq_len(self, num_frames: int) -> int:
        self._check_frames(num_frames)
        return num_frames + max(self.delays)

    def positions(self, num_frames: int) -> Tensor:
        self._check_frames(num_frames)
        return torch.arange(num_frames)[None, :] + torch.tensor(self.delays)[:, None]


PATTERNS: dict[str, type[Pattern]] = {"flattening": FlatteningPattern, "parallel": ParallelPattern,
                                      "delay": DelayPattern}


def make_pattern(name: str, n_q: int) -> Pattern:
    """The pattern called ``name`` (``"delay"`` (default of the course), ``"parallel"``, ``"flattening"``)
    for ``n_q`` codebooks; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in PATTERNS:
        raise ValueError(f"unknown codebook pattern {name!r}; expected one of {sorted(PATTERNS)}")
    return PATTERNS[name](n_q)
