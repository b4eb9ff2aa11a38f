"""Frozen text encoders for conditioning: captions in, ``(B, L, D)`` token vectors and a ``(B, L)`` mask out.

``base``: the interface (:class:`TextEncoder`, :class:`TextEmbedding`; ``""`` is the null caption: a zero row
with an all-False mask). ``hf``: Hugging Face T5 / CLIP / BERT wrappers (``from_pretrained`` on a hub name
or a saved folder). ``course_encoder``: the course's offline default, trained on its own captions and
shipped in ``course_lib/pretrained/text_encoder_course`` (and ``text_encoder_v2``: version 2 captions, a tokenizer
with a character fallback, ``pretrained.load("text_encoder_v2")``). ``captions``: paraphrases of the course captions
and the held-out measurement of any encoder on them. ``prompts``: which prompts an encoder cannot read as written
(:func:`prompt_report`: empty, cut off at ``max_length``, mostly unknown words) and the pipelines' encode step
that warns about them (:func:`encode_prompts`, :class:`PromptWarning`)::

    from course_lib.text import load_text_encoder
    enc = load_text_encoder("course")                 # or "t5:/models/t5-base", "clip:...", "bert:..."
    emb = enc.encode(["a dog barks twice", ""])      # emb.embeddings (2, L, D), emb.mask (2, L)
    enc.similarity(["a dog barks twice"], ["two dog barks", "a bell rings"])   # cosine, (1, 2)
    prompt_report(enc, ["", "a klaxon honking"])      # [PromptIssue(kind="empty", ...), ... "unknown_words" ...]
"""

from __future__ import annotations

from typing import Any

from course_lib.text.base import Piece, TextEmbedding, TextEncoder
from course_lib.text.course_encoder import (
    CourseEncoderConfig,
    CourseTextEncoder,
    fallback_pieces,
    train_tokenizer,
)
from course_lib.text.hf import BertTextEncoder, CLIPTextEncoder, HFTextEncoder, T5TextEncoder
from course_lib.text.prompts import (
    PromptIssue,
    PromptWarning,
    encode_prompts,
    prompt_report,
    prompt_words,
    unknown_words,
    warn_prompts,
)

KINDS: dict[str, type] = {"t5": T5TextEncoder, "clip": CLIPTextEncoder, "bert": BertTextEncoder,
                          "course": CourseTextEncoder}


def load_text_encoder(spec: str = "course", local_files_only: bool = False, **kwargs: Any) -> TextEncoder:
    """Load a frozen text encoder from a spec string: ``"course"`` (the shipped default), ``"course:FOLDER"``
    (one saved by ``CourseTextEncoder.save_pretrained``), or ``"t5:NAME_OR_PATH"``, ``"clip:NAME_OR_PATH"``,
    ``"bert:NAME_OR_PATH"`` (a hub name or a saved folder; ``local_files_only`` and ``kwargs`` go to
    :meth:`HFTextEncoder.from_pretrained`). An unknown kind or a missing path raises an error saying what
    is accepted."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty str like 'course' or 't5:PATH', got {spec!r}")
    kind, _, where = spec.strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown text encoder kind {kind!r} in {spec!r}; expected 'course', 'course:FOLDER', "
                         f"'t5:NAME_OR_PATH', 'clip:NAME_OR_PATH' or 'bert:NAME_OR_PATH'")
    if kind == "course":
        return CourseTextEncoder.from_pretrained(where or None, **kwargs)
    if not where:
        raise ValueError(f"{spec!r} needs a model: '{kind}:NAME_OR_PATH' (a hub name or a saved folder)")
    return KINDS[kind].from_pretrained(where, local_files_only=local_files_only, **kwargs)


__all__ = ["TextEmbedding", "TextEncoder", "HFTextEncoder", "T5TextEncoder", "CLIPTextEncoder", "BertTextEncoder",
           "CourseTextEncoder", "CourseEncoderConfig", "train_tokenizer", "fallback_pieces", "load_text_encoder", "KINDS",
           "Piece",
           "PromptIssue", "PromptWarning", "prompt_report", "prompt_words", "unknown_words", "warn_prompts",
           "encode_prompts"]
