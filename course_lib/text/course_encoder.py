"""The course's offline text encoder: a WordPiece tokenizer and a 2-layer transformer trained on course captions.

No download, 0.42 M parameters (1.7 MB), well under a millisecond per caption on a CPU, and trained for exactly one
job: paraphrases of the same sound land close together, different sounds far apart. It is shipped in
``course_lib/pretrained/text_encoder_course`` (see its ``CARD.md`` for the held-out numbers) and loads with
``CourseTextEncoder.from_pretrained()`` or ``load_text_encoder("course")``; it is retrained by
``python -m course_lib.text.train_course_encoder --out DIR`` in a few minutes.

How it was made: a WordPiece tokenizer (lower-cased, digits split one by one so "120 bpm" is "1 2 0 bpm")
learnt from captions written by the course generators and pruned to the pieces those captions use (about
200), so any other word is one ``[UNK]``; token embeddings plus fixed sinusoidal positions;
two pre-norm transformer blocks (bidirectional self-attention over the real tokens only); a final
LayerNorm. The per-token outputs ``(B, L, 128)`` are what cross-attention reads; their mean over real
tokens is the sentence vector. Training is contrastive: two independently generated captions of the same
attributes are pulled together, captions of other content in the batch pushed apart (a supervised InfoNCE
where every caption with the same content counts as a positive).

The trade-off against T5 (AudioGen used the frozen T5-base encoder, 110 M parameters, ~440 MB;
Noise2Music T5-XXL, 4.6 B; Diffsound CLIP's text encoder, 63 M):

* **Size and speed.** About 260 times smaller than T5-base: nothing to download, instant on a laptop.
``text_encoder_v2`` (``pretrained.load("text_encoder_v2")``, issue #19) is the same architecture trained on the
version 2 captions with ``train_tokenizer(..., char_fallback=True)``: every letter, digit, ``##``-continuation
and ASCII punctuation mark stays in its ~400-piece vocabulary, so an unseen English word is spelt from pieces
("klaxon" -> ``k ##la ##x ##on``) rather than becoming ``[UNK]``; only other scripts (Cyrillic, Japanese) are.

* **Vocabulary.** About 200 pieces (the words of the course captions, digits, punctuation), against T5's
  32 000 SentencePiece pieces learnt from web text. A word the course never used ("shrill", "a cat meows",
  "ambulance") becomes ``[UNK]``; training drops random tokens to ``[UNK]``, so the encoder has learnt to
  read such a caption from the words it does know. T5 knows that "shrill" is close to "high-pitched" from pre-training;
  this encoder cannot (``HELD_OUT_WORDS`` in :mod:`course_lib.text.captions` measure exactly that).
* **Understanding.** It knows the facts the course generators state (class, count, pitch band, loudness,
  pace, background; instrument, mood, key, mode, tempo, drums) in the constructions they use, and nothing
  else: no world knowledge, no negation beyond "without drums", numbers only as the digit patterns it saw.
* **Geometry.** Trained for the task, its sentence vectors separate content clearly (paraphrases near 1,
  other content much lower), whereas mean-pooled T5 vectors of any two captions are all rather similar:
  T5 needs the generator's cross-attention, trained on much more data, to pull the facts out.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.text.base import Piece, TextEncoder

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "text_encoder_course"
PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1 in every tokenizer made by train_tokenizer
# what the prompt warnings suggest instead of unknown words: words every course caption family uses
VOCABULARY_HINT = ("use words from the course's captions, e.g. 'siren', 'bell', 'dog barks', 'rain', 'engine', "
                   "'piano', 'guitar', 'loud', 'high-pitched', 'twice', 'fast'")


@dataclass
class CourseEncoderConfig:
    """Hyper-parameters of :class:`CourseTextEncoder` (saved as ``config.json``).

    ``vocab_size``: tokenizer size; ``dim``: width ``D`` of every token vector; ``n_layers`` transformer
    blocks with ``n_heads`` heads and an MLP of ``ff_mult * dim``; ``max_length``: captions are truncated to
    this many tokens; ``dropout``: used only while training (the encoder is frozen otherwise).
    """

    vocab_size: int = 512
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 4
    max_length: int = 64
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for key in ("vocab_size", "dim", "n_layers", "n_heads", "ff_mult", "max_length"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim={self.dim} must split into n_heads={self.n_heads} heads of even size")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CourseEncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CourseEncoderConfig key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**d)


# The character fallback: every lower-case letter and digit, as a word start and as a "##" continuation, and
# ASCII punctuation, so that WordPiece can always spell a word it has no longer piece for (BertNormalizer
# lower-cases and strips accents first: "Café" is "cafe"). Letters of other scripts (Cyrillic, Japanese, ...)
# are not covered and still become [UNK].
FALLBACK_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
FALLBACK_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def fallback_pieces() -> list[str]:
    """The pieces a ``char_fallback`` tokenizer always has: ``a``..``z``, ``0``..``9``, their ``##`` continuations
    (``##a``...) and every ASCII punctuation mark (72 + 32 pieces)."""
    return ([*FALLBACK_CHARACTERS] + [f"##{c}" for c in FALLBACK_CHARACTERS] + [*FALLBACK_PUNCTUATION])


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, prune: bool = True,
                    char_fallback: bool = False) -> Any:
    """Learn a WordPiece tokenizer (``tokenizers.Tokenizer``) from ``texts``: lower-cased, split on spaces and
    punctuation, digits one by one; ``[PAD]`` is id 0 and ``[UNK]`` id 1.

    With ``prune`` (the default) the pieces that tokenizing ``texts`` never produces (the spare letters
    WordPiece keeps to spell any word) are dropped, so a word built from pieces the encoder could never have
    learnt a meaning for becomes one ``[UNK]``, which training teaches the encoder to read as "a word I do not
    know" (see ``--token-drop`` in :mod:`course_lib.text.train_course_encoder`). The vocabulary may end
    smaller than ``vocab_size``.

    ``char_fallback=True`` adds :func:`fallback_pieces` (after pruning, and whether or not ``texts`` use
    them), so no word of ASCII letters, digits and punctuation is ever ``[UNK]``: an unseen word is spelt
    from the longest pieces that match ("klaxon" -> ``k ##la ##x ##on``). Other scripts still are ``[UNK]``.
    The default (``False``) trains exactly the tokenizer the shipped ``text_encoder_course`` was made with.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("train_tokenizer needs a non-empty list of str")

    def blank(model: Any) -> Any:
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                                     pre_tokenizers.Digits(individual_digits=True)])
        return tok

    tok = blank(models.WordPiece(unk_token=UNK))
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK],
                                                                   show_progress=False))
    if not prune and not char_fallback:
        return tok
    vocab = tok.get_vocab()
    if prune:
        used = {i for enc in tok.encode_batch(texts) for i in enc.ids}
        vocab = {p: i for p, i in vocab.items() if i in used}
    kept = [PAD, UNK] + sorted((p for p in vocab if p not in (PAD, UNK)), key=vocab.get)
    if char_fallback:  # appended after the learnt pieces: the ids of those do not depend on the option
        kept += [p for p in fallback_pieces() if p not in vocab]
    return blank(models.WordPiece({p: i for i, p in enumerate(kept)}, unk_token=UNK))


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` fixed positional encodings (Vaswani et al. 2017, eq. in section 3.5)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    out = torch.zeros(length, dim)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


class _Block(nn.Module):
    """Pre-norm transformer encoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``; ``x (B, L, D)``."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        keep = mask[:, None, None, :]  # (B, 1, 1, L): every query attends to the real keys only
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(h.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class CourseTextEncoder(TextEncoder):
    """The course's own text encoder: ``encode(texts)`` gives ``(B, L, D)`` token vectors and a ``(B, L)`` mask.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` whose ids 0 and 1 are ``[PAD]`` and ``[UNK]`` (see
    :func:`train_tokenizer`). Frozen by default; :meth:`contextualize` is the differentiable forward pass on
    token ids used for training. Save and load with :meth:`save_pretrained` / :meth:`from_pretrained`
    (safetensors + JSON config + ``tokenizer.json``; nothing unpickled).
    """

    def __init__(self, config: CourseEncoderConfig, tokenizer: Any, frozen: bool = True) -> None:
        super().__init__()
        if tokenizer.token_to_id(PAD) != 0 or tokenizer.token_to_id(UNK) != 1:
            raise ValueError("the tokenizer must have [PAD] as id 0 and [UNK] as id 1 (use train_tokenizer)")
        if tokenizer.get_vocab_size() > config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but config.vocab_size is "
                             f"{config.vocab_size}")
        self.config, self.tokenizer = config, tokenizer
        self.dim, self.name = config.dim, "course"
        self.max_length, self.vocabulary_hint = config.max_length, VOCABULARY_HINT
        self.embed = nn.Embedding(config.vocab_size, config.dim, padding_idx=0)
        self.register_buffer("positions", sinusoidal_positions(config.max_length, config.dim), persistent=False)
        self.blocks = nn.ModuleList(_Block(config.dim, config.n_heads, config.ff_mult, config.dropout)
                                    for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.dim)
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.embed.weight, std=config.dim ** -0.5)
        if frozen:
            self.freeze()

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids (N, L)`` int64 (0 = padding) and ``mask (N, L)`` bool, right-padded to the longest caption and
        truncated to ``config.max_length`` tokens, on the module's device."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = [e.ids[: self.config.max_length] or [1] for e in encodings]  # a caption of only spaces: one [UNK]
        length = max(len(i) for i in ids)
        out = torch.zeros(len(ids), length, dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq)
        mask = torch.arange(length)[None, :] < torch.tensor([len(i) for i in ids])[:, None]
        return out.to(self.device), mask.to(self.device)

    def pieces(self, texts: list[str]) -> list[list[Piece]]:
        """Every token of each caption, untruncated, with its character span; ``[UNK]`` (id 1) is the unknown
        token. The course tokenizer adds no special tokens."""
        return [[Piece(token, i == 1, False, start, end) for token, i, (start, end) in zip(e.tokens, e.ids, e.offsets)]
                for e in self.tokenizer.encode_batch(texts)]

    def contextualize(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids ``(N, L)`` and mask ``(N, L)`` to token vectors ``(N, L, D)`` (differentiable)."""
        x = self.embed(ids) * math.sqrt(self.config.dim) + self.positions[: ids.shape[1]]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        return self.contextualize(ids, mask), mask

    # ---- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``model.safetensors``, ``config.json`` and ``tokenizer.json`` into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.tokenizer.save(str(folder / "tokenizer.json"))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, frozen: bool = True) -> CourseTextEncoder:
        """Load a saved encoder, frozen: ``folder`` (default: the shipped ``course_lib/pretrained/text_encoder_course``)
        or the name of another shipped one (``"text_encoder_v2"``) when no such folder exists here."""
        from safetensors.torch import load_model
        from tokenizers import Tokenizer

        folder = Path(folder) if folder is not None else SHIPPED_DIR
        shipped = SHIPPED_DIR.parent / folder.name
        if not folder.exists() and len(folder.parts) == 1 and (shipped / "config.json").is_file():
            folder = shipped
        needed = ("config.json", "model.safetensors", "tokenizer.json")
        missing = [f for f in needed if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a saved CourseTextEncoder: missing {missing} (a saved one "
                                    f"holds {list(needed)}; train one with python -m "
                                    f"course_lib.text.train_course_encoder --out DIR)")
        config = CourseEncoderConfig.from_dict(json.loads((folder / "config.json").read_text()))
        model = cls(config, Tokenizer.from_file(str(folder / "tokenizer.json")), frozen=False)
        load_model(model, str(folder / "model.safetensors"))
        return model.freeze() if frozen else model.eval()
