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
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from course_lib.runtime import configure_threads
from course_lib.text.captions import (
    DOMAINS,
    HELD_OUT_WORDS,
    content_key,
    draw_attributes,
    measure_text_encoder,
    paraphrase,
)
from course_lib.text.course_encoder import CourseEncoderConfig, CourseTextEncoder, train_tokenizer

NAME = "text_encoder_course"


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


def _batch(pool: dict[str, list], rng: np.random.Generator, size: int, step: int, seed: int
           ) -> tuple[list[str], list]:
    """``2 * size`` captions (two views of ``size`` attribute sets) and their content keys."""
    texts, keys = [], []
    for d, domain in enumerate(DOMAINS):
        n = size // 2 if d == 0 else size - size // 2
        for j in rng.integers(len(pool[domain]), size=n):
            a = pool[domain][int(j)]
            for view in range(2):
                texts.append(paraphrase(a, [seed, step, d, int(j), view]))
                keys.append(content_key(a))
    return texts, keys


def _drop_tokens(ids: torch.Tensor, mask: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Replace a fraction ``p`` of the real tokens by ``[UNK]`` (id 1): robustness to words it does not know."""
    if p <= 0:
        return ids
    drop = (torch.rand(ids.shape, generator=gen) < p) & mask
    return ids.masked_fill(drop, 1)


def train(out: Path, steps: int = 1200, batch: int = 128, lr: float = 1e-3, temperature: float = 0.1,
          token_drop: float = 0.1, pool_size: int = 3000, vocab_size: int = 512, seed: int = 0,
          eval_every: int = 200, eval_n: int = 64, config: dict | None = None, command: str = "") -> dict:
    """Train, save to ``out`` and write the card; returns the card (a dict). See the module docstring."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    pool = {d: [draw_attributes(d, "train", i) for i in range(pool_size)] for d in DOMAINS}
    corpus = [paraphrase(a, [seed, 0, k, i, v]) for k, d in enumerate(DOMAINS) for i, a in enumerate(pool[d])
              for v in range(2)]  # step 0: the training steps start at 1
    tokenizer = train_tokenizer(corpus, vocab_size)
    cfg = CourseEncoderConfig(**{**(config or {}), "vocab_size": tokenizer.get_vocab_size()})
    model = CourseTextEncoder(cfg, tokenizer, frozen=False)
    before = measure_text_encoder(model.eval(), n_per_domain=eval_n, split="test")
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
        texts, keys = _batch(pool, rng, batch, step, seed)
        ids, mask = model.tokenize(texts)
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
            valid = measure_text_encoder(model.eval(), n_per_domain=min(eval_n, 32), split="valid")
            history.append({"step": step, "loss": round(loss.item(), 4), **valid})
            print(f"step {step}/{steps} loss {loss.item():.4f} {time.time() - t_train:.0f}s valid {valid}", flush=True)
    train_seconds = time.time() - t_train

    model.freeze()
    model.save_pretrained(out)
    settings = {"n_per_domain": eval_n}
    metrics = measure_text_encoder(model, **settings)
    card = _write_card(out, model, metrics, before, settings, history, command=command, steps=steps,
                       train_seconds=train_seconds, total_seconds=time.time() - t0,
                       hyper={"batch": batch, "lr": lr, "temperature": temperature, "token_drop": token_drop,
                              "pool_size": pool_size, "vocab_size": vocab_size, "seed": seed})
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
    args = parser.parse_args(argv)
    for key in ("steps", "batch", "pool", "vocab", "threads", "eval_every", "eval_n"):
        if getattr(args, key) is not None and getattr(args, key) < 1:  # --threads may be left out (None)
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.batch < 2:
        parser.error("--batch must be at least 2 (one sound event and one music clip)")
    configure_threads(args.threads)
    command = "python -m course_lib.text.train_course_encoder " + " ".join(argv if argv is not None else sys.argv[1:])
    train(args.out, steps=args.steps, batch=args.batch, lr=args.lr, temperature=args.temperature,
          token_drop=args.token_drop, pool_size=args.pool, vocab_size=args.vocab, seed=args.seed,
          eval_every=args.eval_every, eval_n=args.eval_n, config={"dim": args.dim, "n_layers": args.layers},
          command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
