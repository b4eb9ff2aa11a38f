"""Frozen Hugging Face text encoders behind the course interface: T5 (AudioGen, Noise2Music), CLIP (Diffsound), BERT.

Each wrapper pairs a ``transformers`` model with its tokenizer and returns the last hidden layer, one vector
per token, as the :class:`~course_lib.text.base.TextEmbedding` that cross-attention reads::

    enc = T5TextEncoder.from_pretrained("t5-base")                            # downloads once (explicit name)
    enc = T5TextEncoder.from_pretrained("/models/t5-base", local_files_only=True)  # offline, a saved folder
    emb = enc.encode(["a dog barks twice", ""])    # embeddings (2, L, 768), mask (2, L); row 1 is null

AudioGen and Noise2Music used T5 encoders (T5-base, T5-XXL), Diffsound a CLIP text encoder; BERT is here for
comparison. ``name_or_path`` is either a hub name (fetched by ``transformers`` into its cache, never
implicitly) or a folder written by ``save_pretrained`` (``config.json``, weights, tokenizer files). The model
type in ``config.json`` is checked, so a BERT folder passed to the T5 wrapper fails with a clear message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from course_lib.text.base import Piece, TextEncoder

DEFAULT_MAX_LENGTH = 128
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.txt", "vocab.json", "sentencepiece.bpe.model")


class HFTextEncoder(TextEncoder):
    """A ``transformers`` encoder model + tokenizer as a frozen course :class:`TextEncoder`.

    ``encode`` tokenizes with right padding and truncation to ``max_length`` tokens (including the
    tokenizer's own special tokens, e.g. T5's ``</s>`` or BERT's ``[CLS] ... [SEP]``), runs the model with the
    attention mask and returns ``last_hidden_state`` ``(B, L, D)`` as float32 with the tokenizer's
    attention mask as ``mask``. Subclasses fix the model class and the accepted ``model_type`` values.
    """

    model_class_name: str = ""  # the ``transformers`` class, imported only when loading
    model_types: tuple[str, ...] = ()  # accepted ``config.model_type`` values
    kind: str = "hf"
    example: str = ""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str = "", max_length: int | None = None,
                 frozen: bool = True) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or f"{self.kind}:{getattr(model.config, 'name_or_path', '') or 'unnamed'}"
        self.dim = int(_hidden_size(model.config))
        # at most: what was asked (default 128), what the tokenizer was made for, the learned positions (CLIP, BERT)
        limits = [max_length or DEFAULT_MAX_LENGTH, getattr(tokenizer, "model_max_length", None),
                  getattr(model.config, "max_position_embeddings", None)]
        self.max_length = int(min(x for x in limits if isinstance(x, int) and x > 0))
        if tokenizer.pad_token is None:
            raise ValueError(f"the tokenizer of {self.name} has no pad token; set tokenizer.pad_token first")
        if frozen:
            self.freeze()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, local_files_only: bool = False,
                        max_length: int | None = None, frozen: bool = True, **model_kwargs: Any) -> HFTextEncoder:
        """Load model and tokenizer from a hub name or a saved folder; frozen and in eval mode by default.

        ``local_files_only=True`` never touches the network: ``name_or_path`` must be a folder or a name already
        in the Hugging Face cache. Raises ``FileNotFoundError`` naming the path when nothing can be loaded,
        and ``ValueError`` when the folder holds another kind of model. ``model_kwargs`` go to the model's
        ``from_pretrained`` (e.g. ``dtype=torch.bfloat16``).
        """
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        source = str(name_or_path)
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            where = ("the folder has no readable config.json" if Path(source).expanduser().is_dir() else
                     "no such folder" if _looks_like_path(source) else
                     "not in the local Hugging Face cache" if local_files_only else "could not be fetched")
            raise FileNotFoundError(
                f"cannot load a {cls.kind} text encoder from {source!r}: {where}. Expected a folder written by "
                f"save_pretrained (config.json, model weights, tokenizer files) or a hub name such as "
                f"{cls.example!r}{' (local_files_only=True: no download was tried)' if local_files_only else ''}"
            ) from err
        if config.model_type not in cls.model_types:
            kind = _KIND_OF.get(config.model_type)
            hint = f"load it with load_text_encoder('{kind}:{source}')" if kind else "supported: t5, clip, bert"
            raise ValueError(f"{source!r} holds a {config.model_type!r} model, but {cls.__name__} loads "
                             f"{cls.model_types}; {hint}")
        folder = Path(source).expanduser()
        if folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            # transformers 5 would silently build an empty tokenizer here: every word would become <unk>
            raise FileNotFoundError(f"{source!r} has no tokenizer files (one of {_TOKENIZER_FILES}); save the "
                                    f"tokenizer next to the model with tokenizer.save_pretrained({source!r})")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            model_class = getattr(transformers, cls.model_class_name)
            model = model_class.from_pretrained(source, local_files_only=local_files_only, **model_kwargs)
        except OSError as err:
            raise FileNotFoundError(f"{source!r} has a {config.model_type} config.json but its tokenizer files or "
                                    f"weights could not be loaded ({err}); save both with save_pretrained") from err
        return cls(model, tokenizer, name=f"{cls.kind}:{source}", max_length=max_length, frozen=frozen)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model and tokenizer to ``folder`` (loadable offline with ``local_files_only=True``)."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, both ``(N, L)`` int64, padded on the right, on the model's device."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def pieces(self, texts: list[str]) -> list[list[Piece]]:
        """Every token of each caption, untruncated and with the special tokens. A piece with the id
        ``tokenizer.unk_token_id`` that the tokenizer did not add itself is unknown (CLIP's byte-level tokenizer
        never makes one from text; its unknown token is also its end token, which is special). Character spans come
        from a fast tokenizer's offsets; a slow one has none (-1)."""
        tok, unk = self.tokenizer, self.tokenizer.unk_token_id
        options = {"truncation": False, "return_special_tokens_mask": True, "verbose": False}  # verbose: no length nag
        try:
            batch = tok(texts, return_offsets_mapping=True, **options)
            offsets = batch["offset_mapping"]
        except NotImplementedError:  # a slow (Python) tokenizer cannot map tokens back to characters
            batch = tok(texts, **options)
            offsets = [[(-1, -1)] * len(ids) for ids in batch["input_ids"]]
        return [[Piece(token, unk is not None and i == unk and not special, bool(special), int(a), int(b))
                 for token, i, special, (a, b) in zip(tok.convert_ids_to_tokens(ids), ids, specials, spans)]
                for ids, specials, spans in zip(batch["input_ids"], batch["special_tokens_mask"], offsets)]

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenize(texts)
        out = self.model(**batch)
        return out.last_hidden_state, batch["attention_mask"].bool()


class T5TextEncoder(HFTextEncoder):
    """The encoder half of T5 (``T5EncoderModel``), as AudioGen (T5-base) and Noise2Music (T5-XXL) used it."""

    kind, example, model_class_name, model_types = "t5", "t5-base", "T5EncoderModel", ("t5", "mt5", "umt5")


class CLIPTextEncoder(HFTextEncoder):
    """CLIP's text transformer (``CLIPTextModel``, causal attention), the text side Diffsound conditioned on."""

    kind, example, model_class_name = "clip", "openai/clip-vit-base-patch32", "CLIPTextModel"
    model_types = ("clip", "clip_text_model")


class BertTextEncoder(HFTextEncoder):
    """BERT (``BertModel``), a bidirectional encoder trained by masked-language modelling, for comparison."""

    kind, example, model_class_name, model_types = "bert", "bert-base-uncased", "BertModel", ("bert",)


_KIND_OF = {"t5": "t5", "mt5": "t5", "umt5": "t5", "clip": "clip", "clip_text_model": "clip", "bert": "bert"}


def _hidden_size(config: Any) -> int:
    for key in ("d_model", "hidden_size"):
        if getattr(config, key, None):
            return getattr(config, key)
    raise ValueError(f"cannot find the hidden size of {type(config).__name__} (no d_model / hidden_size)")


def _looks_like_path(source: str) -> bool:
    """A local path rather than a hub name ``org/name``: absolute, relative with ./ or ~, or with a backslash."""
    return source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source or source.count("/") > 1


def save_random_tiny(kind: str, folder: str | os.PathLike, captions: list[str], width: int = 16,
                     seed: int = 0) -> Path:
    """Write a tiny, randomly initialised ``kind`` ("t5", "clip" or "bert") encoder and a WordPiece tokenizer
    trained on ``captions`` to ``folder``, in the layout ``from_pretrained`` reads: the real loading code runs
    offline on it (the tests and lesson 04 use it where a download of ``t5-base`` is impossible). Its
    embeddings are random: it shows the plumbing, not what a trained T5 knows. Returns ``folder``."""
    from transformers import (
        BertConfig,
        BertModel,
        CLIPTextConfig,
        CLIPTextModel,
        PreTrainedTokenizerFast,
        T5Config,
        T5EncoderModel,
    )

    from course_lib.text.course_encoder import train_tokenizer

    if kind not in ("t5", "clip", "bert"):
        raise ValueError(f"kind must be 't5', 'clip' or 'bert', got {kind!r}")
    if not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError("captions must be a non-empty list of str (the tokenizer's training text)")
    tok = train_tokenizer(captions, vocab_size=120, prune=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    v, h = tok.get_vocab_size(), int(width)
    torch.manual_seed(seed)
    if kind == "t5":
        model = T5EncoderModel(T5Config(vocab_size=v, d_model=h, d_kv=h // 2, num_heads=2, num_layers=1, d_ff=2 * h,
                                        pad_token_id=0, dropout_rate=0.5))
    elif kind == "clip":
        model = CLIPTextModel(CLIPTextConfig(vocab_size=v, hidden_size=h, intermediate_size=2 * h,
                                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40,
                                             pad_token_id=0, bos_token_id=1, eos_token_id=1))
    else:
        model = BertModel(BertConfig(vocab_size=v, hidden_size=h, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=2 * h, max_position_embeddings=40, hidden_dropout_prob=0.5))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return Path(folder)
