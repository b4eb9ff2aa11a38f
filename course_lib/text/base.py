"""One interface for every text encoder of the course: captions in, per-token embeddings and a mask out.

All three systems of the course (AudioGen, Diffsound, Noise2Music) condition on a *frozen* text encoder:
the captions are turned into a sequence of vectors once, and the generator cross-attends to them. Here
that contract is :class:`TextEncoder.encode`: a list of ``B`` strings gives a :class:`TextEmbedding` with
``embeddings (B, L, D)`` float32 and ``mask (B, L)`` bool (True = a real token, False = padding), where
``L`` is the longest caption of the batch in tokens and ``D`` is :attr:`TextEncoder.dim`.

The null caption: an empty (or whitespace-only) string means "no condition", the unconditional branch of
classifier-free guidance. Its row is all zeros with an all-False mask, for every encoder (the T5, CLIP and
BERT wrappers included), so ``encode([""] * B)`` is exactly what the CFG code elsewhere uses for the
unconditional pass, and cross-attention to such a row must treat it as "attend to nothing".

What the tokenizer makes of a caption, before any truncation, is :meth:`TextEncoder.pieces` (one
:class:`Piece` per token, with its character span and whether it is the unknown token);
:func:`course_lib.text.prompts.prompt_report` reads it to say which prompts an encoder cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Piece:
    """One token a tokenizer makes of a caption.

    Attributes:
        token: the piece as the tokenizer spells it (``"dog"``, ``"##s"``, ``"[UNK]"``, T5's ``"</s>"``).
        unknown: True if it is the tokenizer's unknown token (``[UNK]``, ``<unk>``): a word it has no pieces for.
        special: True for a token the tokenizer adds itself (BERT's ``[CLS]``/``[SEP]``, T5's ``</s>``).
        start, end: the characters of the caption it covers, ``caption[start:end]``; ``-1`` for both when the
            tokenizer cannot say (a slow Python tokenizer), and meaningless for special tokens.
    """

    token: str
    unknown: bool
    special: bool
    start: int
    end: int


@dataclass
class TextEmbedding:
    """A batch of encoded captions.

    Attributes:
        embeddings: ``(B, L, D)`` float32, one vector per token; zeros at padded positions and on null rows.
        mask: ``(B, L)`` bool, True where ``embeddings`` holds a real token. A row that is all False is the
            null caption (no condition).
    """

    embeddings: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        e, m = self.embeddings, self.mask
        if not isinstance(e, torch.Tensor) or e.ndim != 3:
            raise ValueError(f"embeddings must be a (B, L, D) tensor, got {getattr(e, 'shape', type(e))}")
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != tuple(e.shape[:2]):
            raise ValueError(f"mask must be a bool tensor of shape (B, L) = {tuple(e.shape[:2])}, got "
                             f"{getattr(m, 'dtype', type(m))} {tuple(getattr(m, 'shape', ()))}")

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def is_null(self) -> torch.Tensor:
        """``(B,)`` bool: True for the rows that are the null caption (all-False mask)."""
        return ~self.mask.any(dim=1)

    def pooled(self) -> torch.Tensor:
        """``(B, D)``: the mean of each caption's real-token vectors (a zero vector for a null row). This is the
        sentence vector the course uses to compare captions (cosine similarity)."""
        m = self.mask.unsqueeze(-1).to(self.embeddings.dtype)
        return (self.embeddings * m).sum(1) / m.sum(1).clamp(min=1.0)

    def to(self, device: torch.device | str) -> TextEmbedding:
        """The same embedding on ``device``."""
        return TextEmbedding(self.embeddings.to(device), self.mask.to(device))


def check_texts(texts: object) -> list[str]:
    """Validate an ``encode`` argument: a non-empty list (or tuple) of ``str``; raise a clear error otherwise."""
    if isinstance(texts, str):
        raise TypeError(f"encode expects a list of captions, got a single str {texts!r}: wrap it as [{texts!r}]")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"encode expects a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("encode expects at least one caption, got an empty list (use [''] for the null caption)")
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode expects a list of str; item(s) {bad[:5]} are not str")
    return list(texts)


class TextEncoder(nn.Module):
    """Base class of the course's text encoders: ``encode(texts) -> TextEmbedding``, frozen by default.

    Subclasses implement :meth:`_encode` for a list of non-empty captions (returning ``(N, L, D)`` vectors and
    an ``(N, L)`` bool mask) and set :attr:`dim` (``D``) and :attr:`name`. The base handles everything else:
    input checks, null (empty) captions (zero rows with an all-False mask), float32 output on the module's
    device, and freezing. A frozen encoder (the default, as in AudioGen / Diffsound / Noise2Music) has no
    trainable parameters, computes without autograd and stays in eval mode even when a parent module calls
    ``.train()`` (so its dropout is never switched on); :meth:`unfreeze` makes it trainable for fine-tuning.
    """

    dim: int = 0
    name: str = "text-encoder"
    max_length: int | None = None  # tokens read per caption (longer ones are cut); None: no limit known
    vocabulary_hint: str = ""  # what to write instead of unknown words, for the prompt warnings

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    # ---- freezing -------------------------------------------------------------------------------------
    def freeze(self) -> TextEncoder:
        """No gradients, eval mode (dropout off), and ``encode`` runs under ``torch.no_grad``. Returns self."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> TextEncoder:
        """Make the parameters trainable again (``encode`` then builds a graph). Returns self, in eval mode."""
        self.frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> TextEncoder:
        """Like ``nn.Module.train``, except that a frozen encoder always stays in eval mode."""
        return super().train(mode and not self.frozen)

    @property
    def device(self) -> torch.device:
        """Where the parameters live (CPU for an encoder without parameters)."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ---- encoding -------------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode non-empty captions: ``(N, L, D)`` vectors and ``(N, L)`` bool mask (subclasses)."""
        raise NotImplementedError

    def pieces(self, texts: list[str]) -> list[list[Piece]]:
        """The tokens the encoder's tokenizer makes of each caption, **before** truncation to
        :attr:`max_length` and with the tokenizer's special tokens: one list of :class:`Piece` per caption.
        Subclasses with a tokenizer implement it; the default raises ``NotImplementedError`` (the prompt report
        then checks only for empty prompts)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its tokenizer's pieces")

    def encode(self, texts: list[str]) -> TextEmbedding:
        """Encode ``B`` captions into ``embeddings (B, L, D)`` float32 and ``mask (B, L)`` bool.

        ``L`` is the longest caption in tokens (at least 1); padded positions are zero with a False mask.
        An empty or whitespace-only caption is the null caption: a zero row with an all-False mask. A caption
        never depends on the others in its batch (padding invariance) up to float rounding. Raises
        ``TypeError`` for anything but a list of str and ``ValueError`` for an empty list.
        """
        texts = check_texts(texts)
        real = [i for i, t in enumerate(texts) if t.strip()]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if real:
                emb, mask = self._encode([texts[i] for i in real])
                emb = emb.float() * mask.unsqueeze(-1)
            else:
                emb = torch.zeros(0, 1, self.dim, device=self.device)
                mask = torch.zeros(0, 1, dtype=torch.bool, device=self.device)
            if len(real) == len(texts):
                return TextEmbedding(emb, mask.bool())
            out = emb.new_zeros(len(texts), emb.shape[1], emb.shape[2])
            out_mask = torch.zeros(len(texts), emb.shape[1], dtype=torch.bool, device=emb.device)
            index = torch.tensor(real, dtype=torch.long, device=emb.device)
            out = out.index_copy(0, index, emb)
            out_mask[index] = mask.bool()
            return TextEmbedding(out, out_mask)

    def forward(self, texts: list[str]) -> TextEmbedding:
        """Same as :meth:`encode`."""
        return self.encode(texts)

    @torch.no_grad()
    def similarity(self, a: list[str], b: list[str]) -> torch.Tensor:
        """``(len(a), len(b))`` cosine similarities of the captions' pooled (mean-token) vectors, in [-1, 1]."""
        pa = torch.nn.functional.normalize(self.encode(a).pooled(), dim=-1)
        pb = torch.nn.functional.normalize(self.encode(b).pooled(), dim=-1)
        return pa @ pb.T
