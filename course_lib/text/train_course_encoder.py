"""Train the course text encoder contrastively on generated caption paraphrases, then measure it and write a card.

    python -m course_lib.text.train_course_encoder --out course_lib/pretrained/text_encoder_course

1. Draw the attributes of ``--pool`` train-split clips per domain (sound events, music) and learn a
   WordPiece tokenizer from two captions of each (no :data:`~course_lib.text.captions.HELD_OUT_WORDS`).
2. Every step: ``--batch`` attribute sets (half sound events, half music), each captioned twice by its
   generator with fresh random phrasings; a fraction ``--token-drop`` of tokens replaced by ``[UNK]``;
   pooled (mean-token) vectors ``z`` normalised; supervised InfoNCE at temperature ``--temperature``:
   ``-mean_{p in P(i)} log softmax_j(z_i . z_j / tau)[p]``, where ``P(i)`` are the other captions whose
   content (:func:`~course_lib.text.captions.content_key`) equals caption ``i``'s (its paraphrase at least).
3. AdamW with warm-up and cosine decay; validation metrics on the valid split every ``--eval-every`` steps.
4. Save (safetensors + config + tokenizer), measure on the test split before and after training, and
   write ``card.json`` + ``CARD.md`` next to the weights.

``--data-version 2`` trains ``text_encoder_v2`` instead (shipped in ``course_lib/pretrained/text_encoder_v2``)::

    python -m course_lib.text.train_course_encoder --data-version 2 --out course_lib/pretrained/text_encoder_v2

The tokenizer is learnt from version 1 and version 2 seen-grammar train captions and keeps a character
fallback (``char_fallback``: no English word is ever ``[UNK]``); the steps caption version 2 clips (sound
events v2, SoundFont music) with the seen grammar only (:mod:`course_lib.data.captions_v2`: the held-out
grammar is test-only, its words are never read in training); a fraction ``--respell`` of the words is
re-spelt from smaller pieces, as an unseen word would be, so the encoder learns what the fallback pieces
spell; content is :func:`~course_lib.text.captions.content_key_v2`; weights are shipped in float16 and the card
is measured with ``data_version=2`` (its ``heldout_`` rows: held-out-grammar queries).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.data import captions_v2
from course_lib.runtime import configure_threads
from course_lib.text.captions import (
    DOMAINS,
    HELD_OUT_WORDS,
    content_key,
    content_key_v2,
    draw_attributes,
    draw_attributes_v2,
    measure_text_encoder,
    paraphrase,
    paraphrase_v2,
)
from course_lib.text.course_encoder import CourseEncoderConfig, CourseTextEncoder, train_tokenizer

NAME = "text_encoder_course"
NAMES = {1: NAME, 2: "text_encoder_v2"}  # the shipped name of each data version's encoder
# held-out and everyday words the v2 card shows tokenized (the last: what the fallback does not cover)
TOKENIZER_EXAMPLES = ("a klaxon toots thrice", "a shrill cloudburst", "compose a sorrowful fiddle piece",
                      "a cat meows near the ambulance", "собака лает")


def supervised_info_nce(z: torch.Tensor, keys: list, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, "L_out") of unit vectors ``z (N, D)``: for each
    anchor, the mean negative log-probability of its positives (same ``keys``, not itself) under a softmax
    over all other rows of ``z_i . z_j / temperature``. Anchors without a positive are skipped."""
    n = z.shape[0]
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    labels = torch.tensor([ids[k] for k in keys], device=z.device)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    has = positive.any(dim=1)
    per_anchor = -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1))
    return per_anchor[has].mean()


def _batch(pool: dict[str, list], rng: np.random.Generator, size: int, step: int, seed: int,
           data_version: int = 1) -> tuple[list[str], list]:
    """``2 * size`` captions (two views of ``size`` attribute sets) and their content keys; version 2 writes
    them with the seen grammar of :mod:`course_lib.data.captions_v2`."""
    write, key = (paraphrase, content_key) if data_version == 1 else (paraphrase_v2, content_key_v2)
    texts, keys = [], []
    for d, domain in enumerate(DOMAINS):
        n = size // 2 if d == 0 else size - size // 2
        for j in rng.integers(len(pool[domain]), size=n):
            a = pool[domain][int(j)]
            for view in range(2):
                texts.append(write(a, [seed, step, d, int(j), view]))
                keys.append(key(a))
    return texts, keys


def _pool(data_version: int, pool_size: int) -> dict[str, list]:
    """``pool_size`` train-split attribute sets per domain of the given data version (no audio rendered)."""
    draw = draw_attributes if data_version == 1 else draw_attributes_v2
    return {d: [draw(d, "train", i) for i in range(pool_size)] for d in DOMAINS}


def _corpus(pool: dict[str, list], data_version: int, seed: int) -> list[str]:
    """The captions the tokenizer is learnt from: two per pool attribute set (step 0: the training steps start
    at 1). Version 2 adds as many version 1 captions, so the vocabulary reads both caption families; never a
    held-out word of either (version 1 ``paraphrase`` avoids them, version 2 writes the seen grammar)."""
    def captions(p: dict[str, list], write: Any) -> list[str]:
        return [write(a, [seed, 0, k, i, v]) for k, d in enumerate(DOMAINS) for i, a in enumerate(p[d]) for v in range(2)]

    if data_version == 1:
        return captions(pool, paraphrase)
    v1_pool = _pool(1, len(pool[DOMAINS[0]]))
    corpus = captions(v1_pool, paraphrase) + captions(pool, paraphrase_v2)
    assert not any(w in captions_v2.HELD_OUT_WORDS for t in corpus for w in captions_v2.words(t))
    return corpus


def _respelt(word: str, vocab: dict[str, int]) -> list[int] | None:
    """``word``'s ids when its own whole-word piece is missing: greedy longest-match WordPiece over ``vocab``
    without the piece ``word`` (how a word outside the vocabulary is spelt); ``None`` if no spelling exists."""
    ids, start = [], 0
    while start < len(word):
        prefix = "##" if start else ""
        for end in range(len(word), start, -1):
            piece = prefix + word[start:end]
            if piece in vocab and piece != word:
                ids.append(vocab[piece])
                start = end
                break
        else:
            return None
    return ids


def _tokenize_respelling(model: CourseTextEncoder, texts: list[str], p: float, rng: np.random.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``model.tokenize(texts)`` (ids ``(N, L)``, mask ``(N, L)``), with each word that is one piece
    re-spelt from smaller pieces with probability ``p``: the encoder sees the fallback pieces in training and
    learns what they spell, which a new word needs."""
    if p <= 0:
        return model.tokenize(texts)
    vocab = model.tokenizer.get_vocab()
    rows = []
    for enc in model.tokenizer.encode_batch(texts):
        ids = []
        for token, i in zip(enc.tokens, enc.ids):
            spelt = _respelt(token, vocab) if len(token) > 1 and not token.startswith("##") and rng.random() < p else None
            ids += spelt or [i]
        rows.append(ids[: model.config.max_length] or [1])
    length = max(len(r) for r in rows)
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for row, seq in enumerate(rows):
        out[row, : len(seq)] = torch.tensor(seq)
    mask = torch.arange(length)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return out, mask


def _drop_tokens(ids: torch.Tensor, mask: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace a fraction ``p`` of the real tokens by ``[UNK]`` (id 1): robustness to words it does not know."""
    if p <= 0:
        return ids
    drop = (torch.rand(ids.shape, generator=gen) < p) & mask
    return ids.masked_fill(drop, 1)


def train(out: Path, steps: int = 1200, batch: int = 128, lr: float = 1e-3, temperature: float = 0.1,
          token_drop: float = 0.1, pool_size: int = 3000, vocab_size: int = 512, seed: int = 0,
          eval_every: int = 200, eval_n: int = 64, config: dict | None = None, command: str = "",
          data_version: int = 1, char_fallback: bool = False, respell: float = 0.0, half: bool = False) -> dict:
    """Train, save to ``out`` and write the card; returns the card (a dict). See the module docstring.

    ``data_version`` 1 (the shipped ``text_encoder_course``) or 2 (``text_encoder_v2``); ``char_fallback``: the
    tokenizer keeps every letter and digit piece; ``respell``: the probability a word is re-spelt from smaller
    pieces in training; ``half``: ship the weights in float16 (the card measures exactly those)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    pool = _pool(data_version, pool_size)
    corpus = _corpus(pool, data_version, seed)
    tokenizer = train_tokenizer(corpus, vocab_size, char_fallback=char_fallback)
    cfg = CourseEncoderConfig(**{**(config or {}), "vocab_size": tokenizer.get_vocab_size()})
    model = CourseTextEncoder(cfg, tokenizer, frozen=False)
    measure = {"data_version": data_version} if data_version != 1 else {}  # v1 cards keep their settings
    before = measure_text_encoder(model.eval(), n_per_domain=eval_n, split="test", **measure)
    print(f"tokenizer: {tokenizer.get_vocab_size()} pieces from {len(corpus)} captions; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; untrained (test): {before}", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    history = []
    t_train = time.time()
    for step in range(1, steps + 1):
        model.train()
        texts, keys = _batch(pool, rng, batch, step, seed, data_version)
        ids, mask = _tokenize_respelling(model, texts, respell, rng)
        ids = _drop_tokens(ids, mask, token_drop, gen)
        h = model.contextualize(ids, mask)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        loss = supervised_info_nce(F.normalize(pooled, dim=-1), keys, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            valid = measure_text_encoder(model.eval(), n_per_domain=min(eval_n, 32), split="valid", **measure)
            history.append({"step": step, "loss": round(loss.item(), 4), **valid})
            print(f"step {step}/{steps} loss {loss.item():.4f} {time.time() - t_train:.0f}s valid {valid}", flush=True)
    train_seconds = time.time() - t_train

    model.freeze()
    model.save_pretrained(out)
    if half:
        from course_lib.pretrained.publish import to_half_precision

        to_half_precision(Path(out) / "model.safetensors")
        model = CourseTextEncoder.from_pretrained(out)  # measure exactly what is shipped
    settings = {"n_per_domain": eval_n, **measure}
    metrics = measure_text_encoder(model, **settings)
    hyper = {"batch": batch, "lr": lr, "temperature": temperature, "token_drop": token_drop,
             "pool_size": pool_size, "vocab_size": vocab_size, "seed": seed}
    if data_version != 1:
        hyper.update(data_version=data_version, char_fallback=char_fallback, respell=respell, half=half)
    writer = _write_card if data_version == 1 else _write_card_v2
    card = writer(out, model, metrics, before, settings, history, command=command, steps=steps,
                  train_seconds=train_seconds, total_seconds=time.time() - t0, hyper=hyper)
    print(json.dumps(metrics, indent=2))
    return card


def _write_card(out: Path, model: CourseTextEncoder, metrics: dict, before: dict, settings: dict, history: list,
                command: str, steps: int, train_seconds: float, total_seconds: float, hyper: dict) -> dict:
    from course_lib.pretrained.measures import tolerance_text  # card wording shared by every card

    description = ("The course's offline text encoder: a WordPiece tokenizer learnt from the course captions and "
                   f"a {model.config.n_layers}-layer, {model.config.dim}-wide transformer trained contrastively "
                   "so that paraphrases of the same generated sound or music land together. Frozen; "
                   "embeddings (B, L, D) + mask for cross-attention.")
    card = {
        "name": NAME,
        "description": description,
        "model_class": "course_lib.text.course_encoder:CourseTextEncoder",
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.tokenizer.get_vocab_size(),
        "training": {
            "command": command,
            "checkpoint": "last",
            "steps": steps,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(total_seconds, 1),
            "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
            "data": "course generators (sound events + music), train split attributes, fresh captions every step; "
                    "captions with a held-out word are never used",
            "hyperparameters": hyper,
            "config": model.config.to_dict(),
            "valid_history": history,
        },
        "evaluation": {"split": "test (held out: never used in training or validation)",
                       "settings": settings, "metrics": metrics, "relative_tolerance": 0.02,
                       "tolerance": tolerance_text(0.02, 0), "untrained_metrics": before, "held_out_words": HELD_OUT_WORDS},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [f"# {NAME}", "", description, "", f"- class: `{card['model_class']}`",
             f"- parameters: {card['parameters']:,}; vocabulary: {card['vocab_size']} WordPiece pieces",
             f"- trained with: `{command}`",
             f"- steps: {steps} (batch {hyper['batch']} attribute sets x 2 captions), training time: "
             f"{card['training']['train_seconds']} s on {card['training']['machine']}",
             f"- data: {card['training']['data']}", "",
             "## Held-out metrics", "",
             f"Test split, {settings['n_per_domain']} sound-event + {settings['n_per_domain']} music clips; re-measured "
             f"by the tests with `course_lib.pretrained.measure({NAME!r})` (or "
             "`course_lib.text.captions.measure_text_encoder(encoder)`). Cosines are between mean-pooled token "
             "vectors; retrieval: a query caption's nearest neighbour among one other caption per clip has the "
             "same content (class / instrument for `class_retrieval_acc`). `unseen_` rows: queries containing a "
             "held-out synonym.", "",
             "| metric | trained | untrained (same architecture, random weights) |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {before.get(k)} |" for k, v in metrics.items()]
    lines += ["", "## Held-out synonyms (never in a training caption)", ""]
    lines += [f"- `{w}`: {what}" for w, what in HELD_OUT_WORDS.items()]
    lines += ["", "The tokenizer turns each of them into one `[UNK]` (a word it has no meaning for; training "
              "replaces random tokens by `[UNK]` so the encoder reads the rest of the caption): the `unseen_` "
              "rows show what an encoder trained on a closed vocabulary does with a new word. T5 would know them.",
              ""]
    (out / "CARD.md").write_text("\n".join(lines))
    return card


def _write_card_v2(out: Path, model: CourseTextEncoder, metrics: dict, before: dict, settings: dict,
                   history: list, command: str, steps: int, train_seconds: float, total_seconds: float,
                   hyper: dict) -> dict:
    """``card.json`` + ``CARD.md`` of ``text_encoder_v2``, laid out as :func:`_write_card`'s."""
    from course_lib.pretrained.measures import tolerance_text

    name = NAMES[2]
    # the shipped version 1 encoder on the same measure: what the new tokenizer and captions gain
    v1 = measure_text_encoder(CourseTextEncoder.from_pretrained(), **settings)
    description = ("The course's offline text encoder for the version 2 captions: a WordPiece tokenizer learnt from "
                   "version 1 and version 2 course captions with a character fallback (no English word is ever "
                   f"[UNK]) and a {model.config.n_layers}-layer, {model.config.dim}-wide transformer trained "
                   "contrastively so that paraphrases of the same version 2 sound or music clip land together. "
                   "Frozen; embeddings (B, L, D) + mask for cross-attention.")
    machine = f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    data = ("version 2 generators (sound events v2 + SoundFont music), train split attributes, fresh seen-grammar "
            "captions every step; the held-out grammar (captions_v2.HELD_OUT_PHRASES / HELD_OUT_TEMPLATES, "
            f"{len(captions_v2.HELD_OUT_WORDS)} words) is never read in training; tokenizer from version 1 + "
            "version 2 train captions")
    card = {
        "name": name, "description": description, "model_class": "course_lib.text.course_encoder:CourseTextEncoder",
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": model.tokenizer.get_vocab_size(),
        "training": {"command": command, "checkpoint": "last", "steps": steps,
                     "train_seconds": round(train_seconds, 1), "total_seconds": round(total_seconds, 1),
                     "machine": machine, "data": data, "hyperparameters": hyper, "config": model.config.to_dict(),
                     "valid_history": history},
        "evaluation": {"split": "test (held out: never used in training or validation); heldout_ rows: the held-out "
                                "caption grammar", "settings": settings, "metrics": metrics,
                       "relative_tolerance": 0.02, "tolerance": tolerance_text(0.02, 0), "untrained_metrics": before,
                       "text_encoder_course_metrics": v1, "held_out_words": sorted(captions_v2.HELD_OUT_WORDS)},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    n = settings["n_per_domain"]
    lines = [f"# {name}", "", description, "", f"- class: `{card['model_class']}`",
             f"- parameters: {card['parameters']:,}; vocabulary: {card['vocab_size']} WordPiece pieces "
             "(the learnt ones + every letter, digit, ##letter, ##digit and ASCII punctuation mark)",
             f"- weights: {'float16' if hyper.get('half') else 'float32'} (computed in float32)",
             f"- trained with: `{command}`",
             f"- steps: {steps} (batch {hyper['batch']} attribute sets x 2 captions), training time: "
             f"{card['training']['train_seconds']} s on {machine}", f"- data: {data}", "",
             "## Held-out metrics", "",
             f"Test split, {n} sound-event + {n} music version 2 clips, captions from `caption_of` (no audio); "
             f"re-measured by the tests with `course_lib.pretrained.measure({name!r})` (or "
             "`course_lib.text.captions.measure_text_encoder(encoder, data_version=2)`). Cosines are between "
             "mean-pooled token vectors; the gallery holds each clip's own caption; retrieval: a query caption's "
             "nearest gallery caption is of the same content (`content_key_v2`: every fact a caption may state, "
             "so in practice the same clip; class / instrument for `class_retrieval_acc`). Captions may leave facts "
             "out, so retrieval cannot reach 1. `heldout_` rows: queries written by the held-out grammar (new "
             "templates and words) against the same seen-grammar gallery.", "",
             f"{tolerance_text(0.02, 0)}", "",
             "| metric | trained | untrained (same architecture, random weights) | text_encoder_course (v1) |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v} | {before.get(k)} | {v1.get(k)} |" for k, v in metrics.items()]
    lines += ["", "## Tokenizer", "",
              "WordPiece, lower-cased and accent-stripped, digits one by one. Every letter a-z and digit, as a word "
              "start and as a `##` continuation, and every ASCII punctuation mark are in the vocabulary, so an "
              "English word the course never wrote is spelt from pieces instead of becoming `[UNK]`. Letters of "
              "other scripts (Cyrillic, Japanese, Greek ...) still are `[UNK]`. Training re-spells a fraction of the "
              "words from smaller pieces (`respell`) so the pieces mean something; an unseen word's meaning is "
              "still only what its spelling shares with seen words. For example:", ""]
    lines += [f"- `{text}` -> `{' '.join(model.tokenizer.encode(text).tokens)}`" for text in TOKENIZER_EXAMPLES]
    lines += ["", f"## Held-out words ({len(captions_v2.HELD_OUT_WORDS)}, never in a training caption)", "",
              ", ".join(f"`{w}`" for w in sorted(captions_v2.HELD_OUT_WORDS)), ""]
    (out / "CARD.md").write_text("\n".join(lines))
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for weights, tokenizer, config and card")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=128, help="attribute sets per step (2 captions each)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--token-drop", type=float, default=0.1)
    parser.add_argument("--pool", type=int, default=3000, help="train-split attribute sets per domain")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: $COURSE_NUM_THREADS, else 1; see course_lib.runtime.configure_threads)")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-n", type=int, default=64, help="test clips per domain for the card")
    parser.add_argument("--data-version", type=int, choices=(1, 2), default=1,
                        help="1: the shipped text_encoder_course; 2: text_encoder_v2 (v2 captions, character "
                             "fallback, --respell 0.1, float16 weights unless set otherwise)")
    parser.add_argument("--char-fallback", action=argparse.BooleanOptionalAction, default=None,
                        help="keep every letter/digit piece in the tokenizer (default: on for --data-version 2)")
    parser.add_argument("--respell", type=float, default=None,
                        help="share of words re-spelt from smaller pieces in training (default 0.1 for v2, else 0)")
    parser.add_argument("--half", action=argparse.BooleanOptionalAction, default=None,
                        help="ship float16 weights (default: on for --data-version 2)")
    args = parser.parse_args(argv)
    for key in ("steps", "batch", "pool", "vocab", "threads", "eval_every", "eval_n"):
        if getattr(args, key) is not None and getattr(args, key) < 1:  # --threads may be left out (None)
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.batch < 2:
        parser.error("--batch must be at least 2 (one sound event and one music clip)")
    if args.respell is not None and not 0 <= args.respell < 1:
        parser.error("--respell must be in [0, 1)")
    v2 = args.data_version == 2
    configure_threads(args.threads)
    command = "python -m course_lib.text.train_course_encoder " + " ".join(argv if argv is not None else sys.argv[1:])
    train(args.out, steps=args.steps, batch=args.batch, lr=args.lr, temperature=args.temperature,
          token_drop=args.token_drop, pool_size=args.pool, vocab_size=args.vocab, seed=args.seed,
          eval_every=args.eval_every, eval_n=args.eval_n, config={"dim": args.dim, "n_layers": args.layers},
          command=command, data_version=args.data_version,
          char_fallback=args.char_fallback if args.char_fallback is not None else v2,
          respell=args.respell if args.respell is not None else (0.1 if v2 else 0.0),
          half=args.half if args.half is not None else v2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
