"""Prompts a text encoder cannot read, found before generating: empty, too long, or mostly unknown words.

A text-to-audio pipeline reads a prompt only through its frozen text encoder, and it gives confident sound
whatever the encoder made of the prompt. Three kinds of prompt go wrong silently:

* **empty**: ``""`` (or only spaces) is the null caption, an all-False mask (:mod:`course_lib.text.base`).
  The model then generates *unconditionally*, from the null condition it learnt when captions were dropped in
  training (classifier-free guidance; the shipped models drop 10%), and guidance has nothing to amplify, since
  the conditional and unconditional predictions are the same. A prompt of punctuation or symbols only
  (``"!!!"``, ``"🔔"``) is *not* the null caption: the encoder reads its marks (the course encoder: one
  ``[UNK]`` each), and they name no sound, so the model generates almost unconditionally.
* **truncated**: more tokens than the encoder reads (:attr:`~course_lib.text.base.TextEncoder.max_length`: 64
  for the course encoder, special tokens included for T5 / CLIP / BERT). The rest is cut off before the
  encoder sees it.
* **unknown_words**: a word the tokenizer has no pieces for becomes the unknown token (``[UNK]``, T5's
  ``<unk>``). It means nothing in particular, so the model falls back on whatever the other words say. A word
  is *unknown* when at least half of its pieces are the unknown token. For the course's pruned WordPiece
  tokenizer, a word is either all ``[UNK]`` or not unknown at all, and Japanese, Chinese, Arabic, etc. are
  unknown to it. The rule: a prompt is flagged when its unknown words are **more than half of its words, or
  four or more**. The course's own captions hold up to three held-out synonyms, at most half of their words
  (``"a single faint shrill bird chirp"``), and the encoder was trained to read past them, so a word or two of
  ``[UNK]`` in an otherwise readable caption is normal. :func:`unknown_words` lists every unknown word anyway.

:func:`prompt_report` returns the findings as :class:`PromptIssue` objects. :func:`encode_prompts` is the
one encode step of every pipeline (AudioGen, Diffsound, Noise2Music): it checks the prompts, issues one
:class:`PromptWarning` per problem prompt, and encodes them. To silence these warnings, call
``warnings.simplefilter("ignore", PromptWarning)``::

    from course_lib.text import load_text_encoder, prompt_report
    enc = load_text_encoder("course")
    for issue in prompt_report(enc, ["", "a klaxon honking", "a dog barks"]):
        print(issue)          # prompts[0] '': empty prompt: ...   prompts[1] ...: ... does not know 'klaxon', ...
"""

from __future__ import annotations

import os
import sys
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from course_lib.text.base import Piece, TextEmbedding, TextEncoder, check_texts

__all__ = ["PromptIssue", "PromptWarning", "prompt_report", "unknown_words", "prompt_words", "warn_prompts",
           "encode_prompts"]

MOST_UNKNOWN_WORDS = 4  # this many unknown words flag a prompt even when they are not most of its words
_LIBRARY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the course_lib folder


class PromptWarning(UserWarning):
    """A prompt that the pipeline's text encoder cannot read as written (empty, too long, unknown words)."""


@dataclass(frozen=True)
class PromptIssue:
    """One problem with one prompt, as :func:`prompt_report` finds it.

    Attributes:
        index: the prompt's position in the batch (``prompts[index]``).
        prompt: the prompt itself.
        kind: ``"empty"``, ``"truncated"`` or ``"unknown_words"``.
        message: what happens to the prompt, in plain words (``str(issue)`` prefixes the shortened prompt).
        unknown: for ``"unknown_words"``, the words read as the unknown token, in order, without repeats.
        tokens: for ``"truncated"``, how many tokens the tokenizer makes of the prompt (special ones included).
        kept: for ``"truncated"``, how many of them the encoder reads (its ``max_length``).
        ignored: for ``"truncated"``, the part of the prompt that is cut off (from the first ignored token on).
    """

    index: int
    prompt: str
    kind: str
    message: str
    unknown: tuple[str, ...] = ()
    tokens: int = 0
    kept: int = 0
    ignored: str = ""

    def __str__(self) -> str:
        return f"prompts[{self.index}] {_shorten(self.prompt)!r}: {self.message}"


# ---- words -------------------------------------------------------------------------------------------------------


def _is_mark(ch: str) -> bool:
    """Punctuation or a symbol (Unicode categories P* and S*: '!', '。', '#', '🔔')."""
    return unicodedata.category(ch)[0] in "PS"


def prompt_words(text: str) -> list[str]:
    """The words of ``text`` as a reader counts them: the whitespace-separated chunks with their leading and
    trailing punctuation and symbols removed, keeping those with at least one letter or digit
    (``"a high-pitched bell, twice!"`` gives ``['a', 'high-pitched', 'bell', 'twice']``; a Japanese sentence,
    written without spaces, is one word). Returns ``[]`` for a prompt of spaces, punctuation or symbols."""
    words = []
    for chunk in text.split():
        start, end = 0, len(chunk)
        while start < end and _is_mark(chunk[start]):
            start += 1
        while end > start and _is_mark(chunk[end - 1]):
            end -= 1
        if any(ch.isalnum() for ch in chunk[start:end]):
            words.append(chunk[start:end])
    return words


def _is_unknown(pieces: list[Piece]) -> bool:
    """A word is unknown when at least half of its pieces (special tokens aside) are the unknown token."""
    real = [p for p in pieces if not p.special]
    return bool(real) and 2 * sum(p.unknown for p in real) >= len(real)


def _unknown_set(encoder: TextEncoder, words: list[str]) -> tuple[set[str], str]:
    """Which of ``words`` the encoder reads as unknown (each word tokenized on its own, all in one call), and
    how its tokenizer spells the unknown token (``"[UNK]"`` if none was seen)."""
    if not words:
        return set(), "[UNK]"
    try:
        pieces = encoder.pieces(words)
    except NotImplementedError:  # an encoder without a tokenizer to ask: nothing is known to be unknown
        return set(), "[UNK]"
    spelled = next((p.token for ps in pieces for p in ps if p.unknown), "[UNK]")
    return {w for w, ps in zip(words, pieces) if _is_unknown(ps)}, spelled


def unknown_words(encoder: TextEncoder, prompts: Sequence[str]) -> list[list[str]]:
    """For each prompt, every word (:func:`prompt_words`) that ``encoder`` reads as its unknown token, in order
    and without repeats, whether or not the prompt is flagged. ``[]`` for all when the encoder has no
    :meth:`~course_lib.text.base.TextEncoder.pieces`."""
    words = [prompt_words(p) for p in check_texts(list(prompts))]
    unknown, _ = _unknown_set(encoder, sorted({w for ws in words for w in ws}))
    return [list(dict.fromkeys(w for w in ws if w in unknown)) for ws in words]


# ---- the three checks --------------------------------------------------------------------------------------------


def _shorten(text: str, width: int = 40) -> str:
    """``text`` with its whitespace collapsed and, if longer than ``width`` characters, cut after its last whole
    word that fits (mid-word for a script without spaces), with '…'."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    if text[width - 1] != " " and " " in cut:  # the cut falls inside a word: drop that word
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


def _tail(text: str, width: int = 30) -> str:
    """The end of ``text`` (whitespace collapsed): '…' and the whole words of its last ``width`` characters."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[-(width - 1):]
    if text[-width] != " " and " " in cut:  # the cut falls inside a word: drop that word
        cut = cut.split(" ", 1)[1]
    return "…" + cut.lstrip()


def _names(words: Sequence[str], most: int = 8) -> str:
    """``'a', 'b' and 3 more``: the first ``most`` words quoted."""
    shown = ", ".join(repr(w) for w in words[:most])
    return shown + (f" and {len(words) - most} more" if len(words) > most else "")


def _empty_issue(index: int, prompt: str, pieces: list[Piece] | None) -> PromptIssue:
    """A prompt without a word: the null caption when blank, else punctuation the encoder reads as no sound."""
    if not prompt.strip():
        message = ("empty prompt: generating unconditionally, from the null condition (an all-False text mask) that "
                   "the model learnt from the captions dropped in training (10% for the shipped models); "
                   "classifier-free guidance has nothing to amplify, whatever cfg_scale is")
        return PromptIssue(index, prompt, "empty", message)
    read = [p.token for p in pieces or [] if not p.special]
    shown = " ".join(read[:6]) + (" …" if len(read) > 6 else "") if read else "only punctuation"
    message = (f"no words, only punctuation or symbols: the text encoder reads {shown}, which names no sound, so "
               f"the model generates almost unconditionally (only an empty prompt is exactly the null condition)")
    return PromptIssue(index, prompt, "empty", message)


def _truncation_issue(index: int, prompt: str, pieces: list[Piece], encoder: TextEncoder) -> PromptIssue | None:
    """The prompt has more tokens than ``encoder.max_length``: say where the cut falls and what is lost."""
    limit = encoder.max_length
    if not limit or len(pieces) <= limit:
        return None
    content = [p for p in pieces if not p.special]
    keep = max(limit - (len(pieces) - len(content)), 0)  # special tokens ([CLS], </s>) survive the cut
    first_cut = content[keep]
    if first_cut.start >= 0:
        kept_text, ignored = prompt[: first_cut.start], prompt[first_cut.start:]
    else:  # no character offsets: quote the tokens instead
        kept_text = " ".join(p.token for p in content[:keep])
        ignored = " ".join(p.token for p in content[keep:])
    message = (f"{len(pieces)} tokens long; the text encoder ({encoder.name}) reads the first {limit}, up to "
               f"{_tail(kept_text)!r}: everything from {_shorten(ignored, 30)!r} on ({len(pieces) - limit} "
               f"tokens) is ignored")
    return PromptIssue(index, prompt, "truncated", message, tokens=len(pieces), kept=limit, ignored=ignored)


def _unknown_issue(index: int, prompt: str, words: list[str], unknown: set[str], unk: str,
                   encoder: TextEncoder) -> PromptIssue | None:
    """Flag the prompt when more than half of its words, or ``MOST_UNKNOWN_WORDS`` or more, are unknown."""
    n_unknown = sum(w in unknown for w in words)
    if not (2 * n_unknown > len(words) or n_unknown >= MOST_UNKNOWN_WORDS):
        return None
    names = list(dict.fromkeys(w for w in words if w in unknown))
    known = [w for w in words if w not in unknown]
    fallback = (f"so the model follows only the other words ({_shorten(' '.join(known), 40)!r})" if known else
                "and no word is left that names a sound, so the model generates almost unconditionally")
    message = (f"the text encoder ({encoder.name}) does not know {_names(names)} ({n_unknown} of {len(words)} "
               f"word{'s' * (len(words) > 1)}): it reads {'them' if len(names) > 1 else 'it'} as {unk}, which means "
               f"nothing in particular, {fallback}")
    if encoder.vocabulary_hint:
        message += f"; {encoder.vocabulary_hint}"
    return PromptIssue(index, prompt, "unknown_words", message, unknown=tuple(names))


def prompt_report(encoder: TextEncoder, prompts: Sequence[str]) -> list[PromptIssue]:
    """Check a batch of prompts against ``encoder`` before generating: a list of :class:`PromptIssue`, in prompt
    order, empty when every prompt reads well.

    A prompt without a word is ``"empty"`` (nothing else is checked for it); otherwise it may be
    ``"truncated"`` (more than ``encoder.max_length`` tokens) and/or ``"unknown_words"`` (more than half of its
    words, or four or more, read as the unknown token; see the module doc for why that rule). Works for any
    :class:`~course_lib.text.base.TextEncoder` with :meth:`~course_lib.text.base.TextEncoder.pieces` (the course
    encoder, T5 / CLIP / BERT); for others only empty prompts are found. Raises like ``encode`` for anything but
    a non-empty list of str.
    """
    prompts = check_texts(list(prompts))
    try:
        pieces: list[list[Piece]] | None = encoder.pieces(prompts)
    except NotImplementedError:
        pieces = None
    words = [prompt_words(p) for p in prompts]
    unknown, unk = _unknown_set(encoder, sorted({w for ws in words for w in ws}))
    issues: list[PromptIssue] = []
    for i, prompt in enumerate(prompts):
        if not words[i]:
            issues.append(_empty_issue(i, prompt, None if pieces is None else pieces[i]))
            continue
        found = [_truncation_issue(i, prompt, pieces[i], encoder) if pieces is not None else None,
                 _unknown_issue(i, prompt, words[i], unknown, unk, encoder)]
        issues += [issue for issue in found if issue is not None]
    return issues


# ---- warnings and the pipelines' encode step --------------------------------------------------------------------


def _stacklevel_outside_library() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point at the first frame outside
    ``course_lib``: the line of the user's notebook or script that asked for audio, however deep the pipeline."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def warn_prompts(encoder: TextEncoder, prompts: Sequence[str]) -> list[PromptIssue]:
    """Issue one :class:`PromptWarning` per problem prompt of :func:`prompt_report`, its issues joined in one
    message that names the prompt (shortened) and says what will happen; returns the issues."""
    issues = prompt_report(encoder, prompts)
    by_prompt: dict[int, list[PromptIssue]] = {}
    for issue in issues:
        by_prompt.setdefault(issue.index, []).append(issue)
    level = _stacklevel_outside_library()
    for index, found in by_prompt.items():
        text = f"prompts[{index}] {_shorten(found[0].prompt)!r}: " + "; also ".join(i.message for i in found)
        warnings.warn(text, PromptWarning, stacklevel=level)
    return issues


def encode_prompts(encoder: TextEncoder, prompts: Sequence[str], device: torch.device | str | None = None,
                   warn: bool = True) -> TextEmbedding:
    """The pipelines' encode step: ``B`` prompts → :class:`~course_lib.text.base.TextEmbedding` (``embeddings
    (B, L, D)``, ``mask (B, L)``) without gradients, on ``device`` (None: the encoder's).

    With ``warn`` (the default), a :class:`PromptWarning` is issued first for each prompt the encoder cannot
    read as written (:func:`warn_prompts`). ``""`` is the null caption (no condition). Raises ``TypeError`` for a
    single str or non-str items and ``ValueError`` for an empty list or anything but a list or tuple.
    """
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of captions, got a single str: wrap it as [{prompts!r}]")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        got = "an empty list" if isinstance(prompts, (list, tuple)) else type(prompts).__name__
        raise ValueError(f"prompts must be a non-empty list of captions (str), got {got}")
    prompts = check_texts(list(prompts))
    if warn:
        warn_prompts(encoder, prompts)
    with torch.no_grad():
        embedding = encoder.encode(prompts)
    return embedding if device is None else embedding.to(device)
