"""Text–audio agreement: a small contrastive (CLAP-style) model and the score it gives a caption and a clip.

CLAP (LAION; Microsoft) and MuLan train an audio tower and a text tower so that a clip and its caption land
close together in a shared space; the *CLAP score* of a generated clip is the cosine similarity between its
audio embedding and the embedding of the caption it was generated from. The course's version is the same
idea at laptop scale:

* audio tower: :class:`~course_lib.metrics.embeddings.ConvAudioEncoder` (the course classifier's CNN body)
  and a linear projection;
* text tower: the course's frozen text encoder (``load_text_encoder("course")``), mean-pooled over its real
  tokens with its mask, and a small trainable MLP projection;
* loss: CLIP's symmetric InfoNCE (:func:`info_nce_loss`) with a learnable temperature (``logit_scale =
  log(1/τ)``, initialised at τ = 0.07 and clamped at 100, as in CLIP).

What it can see: the class of a sound, and the facts that come with it (background, instrument, drums).
What it cannot: anything it was not trained on; and, measured in lesson 08 on held-out clips, captions
that differ in one fact only — the pitch band, the count or the tempo — are told apart no better than
chance (the true caption wins 50–64% of such pairs). A high score says "the caption and the clip agree *as far as this small model
can tell*". Its numbers are not comparable with CLAP scores in papers.

The real route: :class:`HFClapAgreement` loads a ``transformers`` ``ClapModel`` (e.g.
``laion/clap-htsat-unfused``) by name or path; :func:`agreement_score` takes either model.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.metrics.embeddings import (
    _CHUNK,
    CONFIG_FILE,
    WEIGHTS_FILE,
    AudioClassifierConfig,
    ConvAudioEncoder,
    CourseAudioClassifier,
    HFAudioEmbedder,
    _eval,
    _progress,
    _read_config,
    _shipped,
    course_clips,
    course_label_set,
    prepare_audio,
    publish_model,
)
from course_lib.runtime import configure_threads

__all__ = ["info_nce_loss", "AgreementConfig", "AgreementModel", "HFClapAgreement", "agreement_score",
           "similarity_matrix", "retrieval_metrics", "course_captions", "train_agreement_model",
           "measure_agreement", "load_agreement_model", "SHIPPED_AGREEMENT"]

SHIPPED_AGREEMENT = "agreement_course"  # the folder name under course_lib/pretrained/ once shipped
#: The shipped agreement model of each course data version, and the shipped text encoder it reads captions with.
SHIPPED_AGREEMENTS = {1: SHIPPED_AGREEMENT, 2: "agreement_v2"}
TEXT_ENCODERS = {1: "course", 2: "course:text_encoder_v2"}


def info_nce_loss(similarity: torch.Tensor, temperature: float | torch.Tensor = 0.07,
                  positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021) on a ``(B, B)`` similarity matrix (row ``i``: audio ``i``,
    column ``j``: caption ``j``; the matching pairs on the diagonal). A scalar tensor.

    ``logits = similarity / temperature``; the loss is the mean of the audio→text cross-entropy (each row
    should pick its own column) and the text→audio one (each column its own row). ``positives`` (``(B, B)``
    bool, default the identity) marks every pair that counts as a match, for batches that hold the same
    caption twice: each row's loss is then ``−log Σ_{j∈P} softmax_j``. Known values: a perfectly diagonal
    cosine matrix with a small temperature gives ≈ 0; a constant matrix gives exactly ``log B``.
    """
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (B, B) tensor, got {getattr(similarity, 'shape', type(similarity))}")
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = similarity / temperature
    if positives is None:
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if positives.shape != logits.shape or positives.dtype != torch.bool or not positives.diagonal().all():
        raise ValueError("positives must be a (B, B) bool tensor with a True diagonal")
    masked = logits.masked_fill(~positives, float("-inf"))
    rows = (torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)).mean()
    cols = (torch.logsumexp(logits, dim=0) - torch.logsumexp(masked, dim=0)).mean()
    return 0.5 * (rows + cols)


@dataclass
class AgreementConfig:
    """Settings of :class:`AgreementModel` (saved as ``config.json``).

    ``audio``: the audio tower (:class:`~course_lib.metrics.embeddings.AudioClassifierConfig`, its ``classes``
    unused); ``text_encoder``: a :func:`course_lib.text.load_text_encoder` spec (``"course"``), not saved
    with the weights, loaded frozen; ``text_dim``: its width; ``embed_dim``: the shared space;
    ``init_temperature``: τ at the start (CLIP: 0.07); ``max_logit_scale``: clamp of ``1/τ`` (CLIP: 100).
    """

    audio: AudioClassifierConfig = field(default_factory=lambda: AudioClassifierConfig(classes=()))
    text_encoder: str = "course"
    text_dim: int = 128
    embed_dim: int = 64
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        if isinstance(self.audio, dict):
            self.audio = AudioClassifierConfig.from_dict(self.audio)
        if not 0 < self.init_temperature < 1 or self.max_logit_scale <= 1:
            raise ValueError(f"need 0 < init_temperature < 1 and max_logit_scale > 1, got {self.init_temperature}, "
                             f"{self.max_logit_scale}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "audio": self.audio.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgreementConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class AgreementModel(nn.Module):
    """A CLAP-style contrastive text–audio model: ``embed_audio`` ``(B, E)`` and ``embed_text`` ``(B, E)``, both
    L2-normalised, so their dot product is a cosine in [-1, 1] (:func:`agreement_score`).

    ``text_encoder`` (a frozen :class:`course_lib.text.TextEncoder`; default: the one named in the config)
    is held but not saved with the weights: :meth:`save_pretrained` writes the audio tower, the two
    projections and the temperature, and :meth:`from_pretrained` reloads the text encoder from its spec.
    """

    def __init__(self, config: AgreementConfig | None = None, text_encoder: Any = None) -> None:
        super().__init__()
        from course_lib.text import load_text_encoder

        self.config = config or AgreementConfig()
        self.text_encoder = text_encoder if text_encoder is not None else load_text_encoder(self.config.text_encoder)
        self.text_encoder.freeze()
        if int(self.text_encoder.dim) != self.config.text_dim:
            raise ValueError(f"the text encoder has dim {self.text_encoder.dim} but config.text_dim is "
                             f"{self.config.text_dim}")
        d, e = self.config.text_dim, self.config.embed_dim
        self.audio_tower = ConvAudioEncoder(self.config.audio)
        self.audio_proj = nn.Linear(self.config.audio.embed_dim, e)
        self.text_proj = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, e))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.config.init_temperature)))
        self.sample_rate = self.config.audio.sample_rate

    @property
    def temperature(self) -> float:
        """The current τ = 1 / clamp(exp(logit_scale), max_logit_scale)."""
        return 1.0 / float(self.logit_scale.detach().exp().clamp(max=self.config.max_logit_scale))

    def scale(self) -> torch.Tensor:
        """``1/τ`` as a differentiable tensor, clamped at ``max_logit_scale`` (CLIP)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def pooled_text(self, captions: list[str]) -> torch.Tensor:
        """The frozen encoder's mean-pooled caption vectors ``(B, text_dim)`` (mask-aware)."""
        with torch.no_grad():
            return self.text_encoder.encode(captions).pooled().to(self.audio_proj.weight.device)

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings ``(B, E)`` from pooled caption vectors ``(B, text_dim)``."""
        return F.normalize(self.text_proj(pooled), dim=-1)

    def project_audio(self, feats: torch.Tensor) -> torch.Tensor:
        """Normalised audio embeddings ``(B, E)`` from audio-tower features ``(B, n_mels, frames)``."""
        return F.normalize(self.audio_proj(self.audio_tower.encode_features(feats)), dim=-1)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        """Normalised caption embeddings ``(B, E)`` of a list of ``B`` captions."""
        with torch.no_grad(), _eval(self):
            return self.project_text(self.pooled_text(captions)).cpu()

    def embed_audio(self, audio: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Normalised audio embeddings ``(B, E)`` of clips (any shape :func:`prepare_audio` accepts), at
        ``sample_rate`` Hz (default: the model's 16 kHz; other rates are resampled)."""
        batches = prepare_audio(audio, sample_rate or self.sample_rate, self.sample_rate)
        with torch.no_grad(), _eval(self):
            return torch.cat([self.project_audio(self.audio_tower.features(chunk)).cpu()
                              for wav in batches for chunk in wav.split(_CHUNK)])

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (without the frozen text encoder) into ``folder``."""
        from safetensors.torch import save_file

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("text_encoder.")}
        save_file(state, str(path / WEIGHTS_FILE))
        return path

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, text_encoder: Any = None) -> AgreementModel:
        """Load a model written by :meth:`save_pretrained` (``None``: the shipped one), in eval mode."""
        from safetensors.torch import load_file

        folder = _shipped(SHIPPED_AGREEMENT) if folder is None else Path(folder)
        model = cls(AgreementConfig.from_dict(_read_config(folder, cls.__name__)), text_encoder)
        missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("text_encoder.")]
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not match the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return model.float().eval()


class HFClapAgreement(nn.Module):
    """A ``transformers`` CLAP model (audio tower, text tower, projections) behind the same two methods,
    ``embed_audio`` and ``embed_text`` (normalised, ``(B, projection_dim)``), so :func:`agreement_score`
    computes the CLAP score with it. Load with :meth:`from_pretrained` (a hub name such as
    ``"laion/clap-htsat-unfused"``, or a folder holding the model, feature extractor and tokenizer)."""

    def __init__(self, audio: HFAudioEmbedder, tokenizer: Any) -> None:
        super().__init__()
        if audio.kind != "clap":
            raise ValueError(f"HFClapAgreement needs a CLAP model, got a {audio.kind!r} model")
        self.audio = audio
        self.tokenizer = tokenizer
        self.sample_rate = audio.sample_rate

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, local_files_only: bool = False) -> HFClapAgreement:
        """Load model, feature extractor and tokenizer; frozen, eval mode (``local_files_only``: no network)."""
        from transformers import AutoTokenizer

        audio = HFAudioEmbedder.from_pretrained(name_or_path, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local_files_only)
        return cls(audio, tokenizer)

    def embed_audio(self, audio: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Normalised CLAP audio embeddings ``(B, projection_dim)``."""
        return self.audio.embed(audio, sample_rate)

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        """Normalised CLAP text embeddings ``(B, projection_dim)``."""
        from course_lib.text.base import check_texts

        model = self.audio.model
        tokens = self.tokenizer(check_texts(captions), padding=True, truncation=True, return_tensors="pt")
        device = next(model.parameters()).device
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            pooled = model.text_model(**tokens).pooler_output
            return F.normalize(model.text_projection(pooled), dim=-1).cpu()


def similarity_matrix(model: Any, audio: Any, captions: list[str], sample_rate: int | None = None) -> torch.Tensor:
    """Cosine similarities ``(B_audio, B_captions)`` between every clip and every caption, with any model that
    has ``embed_audio`` and ``embed_text`` returning normalised vectors (:class:`AgreementModel`,
    :class:`HFClapAgreement`)."""
    return model.embed_audio(audio, sample_rate) @ model.embed_text(list(captions)).T


def agreement_score(model: Any, audio: Any, captions: list[str], sample_rate: int | None = None) -> torch.Tensor:
    """The agreement (CLAP) score of each clip with its own caption: ``(B,)`` cosines in [-1, 1], clip ``i``
    with caption ``i``. ``audio``: ``(B, T)`` (or what :func:`prepare_audio` accepts) at ``sample_rate`` Hz."""
    a = model.embed_audio(audio, sample_rate)
    t = model.embed_text(list(captions))
    if a.shape[0] != t.shape[0]:
        raise ValueError(f"got {a.shape[0]} clips but {t.shape[0]} captions: pass one caption per clip")
    return (a * t).sum(dim=1)


def retrieval_metrics(similarity: torch.Tensor, groups: list[Any] | None = None) -> dict[str, float]:
    """Retrieval numbers from a square similarity matrix ``(N, N)`` (clip ``i`` ↔ caption ``i``).

    ``recall_at_1``: clip→caption, the share of clips whose own caption scores highest (chance ``1/N``);
    ``recall_at_1_text``: the same caption→clip; ``pair_accuracy``: the share of (clip, other caption) pairs
    scoring below the clip's own caption (0.5 = chance, the ranking the tests pin); ``matched_mean`` and
    ``mismatched_mean`` cosines; with ``groups`` (e.g. each clip's class), ``recall_at_1_group``: the share of
    clips whose best caption belongs to a clip of the same group.
    """
    s = similarity.detach().double()
    n = s.shape[0]
    if s.dim() != 2 or s.shape[1] != n or n < 2:
        raise ValueError(f"similarity must be a square (N, N) matrix with N >= 2, got {tuple(s.shape)}")
    diag = s.diagonal()
    off = ~torch.eye(n, dtype=torch.bool)
    idx = torch.arange(n)
    out = {"recall_at_1": float((s.argmax(dim=1) == idx).double().mean()),
           "recall_at_1_text": float((s.argmax(dim=0) == idx).double().mean()),
           "pair_accuracy": float((diag[:, None] > s)[off].double().mean()),
           "matched_mean": float(diag.mean()), "mismatched_mean": float(s[off].mean()), "n": float(n)}
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} clips")
        best = s.argmax(dim=1).tolist()
        out["recall_at_1_group"] = float(np.mean([groups[b] == groups[i] for i, b in enumerate(best)]))
    return out


def course_captions(clips: list[Any], paraphrases: int, seed: int = 0) -> list[list[str]]:
    """``paraphrases`` captions per clip: its own caption, then fresh wordings of the same attributes
    (:func:`course_lib.data.sound_events.caption` / :func:`course_lib.data.music.caption` with other seeds; for
    a version 2 clip, :func:`course_lib.text.captions.paraphrase_v2` in the seen grammar, each different from
    the ones before where the grammar allows)."""
    from course_lib.data import music, sound_events
    from course_lib.text.captions import paraphrase_v2

    out = []
    for i, clip in enumerate(clips):
        if str(clip.attributes.get("generator", "")).endswith("/v2"):
            wordings = [clip.caption]
            for k in range(1, paraphrases):
                wordings.append(paraphrase_v2(clip.attributes, [seed, i, k], avoid=tuple(wordings)))
            out.append(wordings)
            continue
        writer = music.caption if "instrument" in clip.attributes else sound_events.caption
        extra = [writer(clip.attributes, np.random.default_rng([seed, i, k])) for k in range(1, paraphrases)]
        out.append([clip.caption, *extra])
    return out


@torch.no_grad()
def measure_agreement(model: Any, split: str = "test", n_per_class: int = 8, clip_seconds: float = 2.0,
                      start: int = 0, music: bool = True, version: int = 1) -> dict[str, float]:
    """Retrieval on fresh held-out clips and their own captions (:func:`retrieval_metrics`, grouped by
    class): ``n_per_class`` clips per sound-event class (and per instrument with ``music``) of ``split``, data
    ``version``. With version 2 (test split) the same clips are also scored against captions written by the
    held-out grammar (templates and words no training caption uses): those numbers are prefixed ``heldout_``."""
    audio, labels, clips = course_clips(split, n_per_class, clip_seconds, model.sample_rate, start, music, version)
    sims = similarity_matrix(model, audio, [c.caption for c in clips], model.sample_rate)
    out = retrieval_metrics(sims, labels)
    if version == 2 and split == "test":
        _, _, heldout = course_clips(split, n_per_class, clip_seconds, model.sample_rate, start, music, version,
                                     grammar="heldout")
        sims = model.embed_audio(audio, model.sample_rate) @ model.embed_text([c.caption for c in heldout]).T
        out.update({f"heldout_{k}": v for k, v in retrieval_metrics(sims, labels).items() if k != "n"})
    return out


def train_agreement_model(split: str = "train", n_per_class: int = 32, clip_seconds: float = 2.0, steps: int = 300,
                          batch_size: int = 48, lr: float = 3e-3, seed: int = 0, music: bool = True,
                          paraphrases: int = 4, config: AgreementConfig | None = None, text_encoder: Any = None,
                          audio_init: CourseAudioClassifier | None = None, eval_per_class: int = 8,
                          progress: bool = False, version: int = 1) -> tuple[AgreementModel, dict[str, Any]]:
    """Train an :class:`AgreementModel` on generated clips and their captions; return it (eval mode) and metrics.

    Data: :func:`course_lib.metrics.embeddings.course_clips` (``n_per_class`` per class, indices from
    ``seed·10⁶``, data ``version``: with 2, give a ``config`` whose ``text_encoder`` read version 2 captions,
    :data:`TEXT_ENCODERS`), each with ``paraphrases`` wordings of its caption (:func:`course_captions`), encoded once by
    the frozen text encoder. Each step: ``batch_size`` random clips, one random wording each, log-mels rolled
    in time by a random number of frames; symmetric InfoNCE with the learnable temperature (pairs whose
    wordings are identical count as positives of each other); AdamW with cosine decay. ``audio_init``: start
    the audio tower from a trained :class:`CourseAudioClassifier`'s encoder (same audio config needed).
    ``eval_per_class > 0``: :func:`measure_agreement` on the test split. Metrics include ``loss_first``,
    ``loss_last``, ``temperature``, the test retrieval numbers (prefixed ``test_``) and ``seconds``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 4000:
        raise ValueError(f"seed must be an int in [0, 4000), got {seed!r}")
    if isinstance(paraphrases, bool) or not isinstance(paraphrases, int) or paraphrases < 1:
        raise ValueError(f"paraphrases must be a positive int, got {paraphrases!r}")
    t0 = time.perf_counter()
    config = config or AgreementConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AgreementModel(config, text_encoder)
    if audio_init is not None:
        if audio_init.config.to_dict() | {"classes": []} != config.audio.to_dict() | {"classes": []}:
            raise ValueError("audio_init's encoder config differs from config.audio")
        model.audio_tower.load_state_dict(audio_init.encoder.state_dict())
    audio, labels, clips = course_clips(split, n_per_class, clip_seconds, config.audio.sample_rate, seed * 10**6, music,
                                        version)
    wordings = course_captions(clips, paraphrases, seed)
    flat = [w for ws in wordings for w in ws]
    unique = {w: i for i, w in enumerate(dict.fromkeys(flat))}
    text_ids = torch.tensor([unique[w] for w in flat]).view(len(clips), paraphrases)
    pooled = torch.cat([model.pooled_text(flat[i:i + 256]) for i in range(0, len(flat), 256)])
    pooled = pooled.view(len(clips), paraphrases, -1)
    with torch.no_grad():
        feats = torch.cat([model.audio_tower.features(chunk) for chunk in torch.from_numpy(audio).split(_CHUNK)])
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    bar = _progress(steps, progress, "agreement")
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(feats), generator=gen)[:batch_size]
        which = torch.randint(paraphrases, (len(idx),), generator=gen)
        shift = int(torch.randint(feats.shape[2], (1,), generator=gen))
        a = model.project_audio(feats[idx].roll(shift, dims=2))
        t = model.project_text(pooled[idx, which])
        ids = text_ids[idx, which]
        loss = info_nce_loss(a @ t.T * model.scale(), 1.0, positives=ids[:, None] == ids[None, :])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
    bar.close()
    model.eval()
    metrics: dict[str, Any] = {"loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
                               "temperature": model.temperature, "n_train": len(feats), "steps": steps,
                               "n_per_class": n_per_class, "paraphrases": paraphrases, "seed": seed,
                               "audio_init": audio_init is not None}
    if eval_per_class:
        metrics.update({f"test_{k}": v for k, v in measure_agreement(
            model, "test", eval_per_class, clip_seconds, music=music, version=version).items()})
    metrics["seconds"] = time.perf_counter() - t0
    return model, metrics


def load_agreement_model(spec: Any = "course", local_files_only: bool = False) -> Any:
    """An agreement model from a spec: ``"course"`` (the shipped one), ``"course:FOLDER"``
    (:meth:`AgreementModel.save_pretrained`), ``"hf:NAME_OR_PATH"`` (a CLAP model,
    :class:`HFClapAgreement`), or an object with ``embed_audio`` and ``embed_text`` (returned as it is)."""
    if not isinstance(spec, (str, os.PathLike)):
        if callable(getattr(spec, "embed_audio", None)) and callable(getattr(spec, "embed_text", None)):
            return spec
        raise ValueError(f"spec must be 'course', 'course:FOLDER', 'hf:NAME_OR_PATH' or an object with embed_audio "
                         f"and embed_text, got {type(spec).__name__}")
    kind, _, where = str(spec).strip().partition(":")
    if kind == "course":
        return AgreementModel.from_pretrained(where or None)
    if kind == "hf" and where:
        return HFClapAgreement.from_pretrained(where, local_files_only=local_files_only)
    raise ValueError(f"unknown agreement model spec {spec!r}: expected 'course', 'course:FOLDER' or 'hf:NAME_OR_PATH'")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m course_lib.metrics.agreement --out DIR``: train the course agreement model, save it to
    ``DIR`` with ``metrics.json`` (held-out retrieval numbers), and print the metrics. With ``--publish``:
    write the shipped model's card (``card.json`` + ``CARD.md``,
    :func:`course_lib.metrics.embeddings.publish_model`) instead of ``metrics.json``, with weights stored as
    float16 unless ``--float32``; the card's command is this command line."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n-per-class", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--paraphrases", type=int, default=4)
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--eval-per-class", type=int, default=8,
                        help="test clips per class measured after training (and for the card with --publish)")
    parser.add_argument("--audio-init", default=None, help="folder of a CourseAudioClassifier to start the audio tower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-music", action="store_true")
    parser.add_argument("--data-version", type=int, default=1, choices=sorted(SHIPPED_AGREEMENTS),
                        help="course data version (1, the default; 2: SoundFont music, v2 events and captions, read by "
                             f"text_encoder_v2; published as {SHIPPED_AGREEMENTS[2]})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: $COURSE_NUM_THREADS, else 1; see course_lib.runtime.configure_threads)")
    parser.add_argument("--publish", action="store_true",
                        help="write card.json + CARD.md (as agreement_course, or agreement_v2 with --data-version 2)")
    parser.add_argument("--float32", action="store_true", help="with --publish: keep float32 weights")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    init = CourseAudioClassifier.from_pretrained(args.audio_init) if args.audio_init else None
    version = args.data_version
    audio_config = AudioClassifierConfig(**{**init.config.to_dict(), "classes": ()}) if init else None
    config = AgreementConfig(**({"audio": audio_config} if audio_config else {}), text_encoder=TEXT_ENCODERS[version])
    model, metrics = train_agreement_model(n_per_class=args.n_per_class, steps=args.steps, paraphrases=args.paraphrases,
                                           clip_seconds=args.clip_seconds,
                                           eval_per_class=0 if args.publish else args.eval_per_class,
                                           seed=args.seed, music=not args.no_music, audio_init=init, config=config,
                                           progress=True, version=version)
    if args.publish:
        cfg = model.config
        own = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("text_encoder."))
        frozen = sum(p.numel() for p in model.text_encoder.parameters())
        start = (f"audio tower initialised from the classifier in `{args.audio_init}`" if args.audio_init
                 else "audio tower from random weights")
        text_name = "text_encoder_course" if cfg.text_encoder == "course" else cfg.text_encoder.partition(":")[2]
        settings = {"split": "test", "n_per_class": args.eval_per_class, "clip_seconds": args.clip_seconds}
        if version == 1:
            what = ("It tells classes apart (the true caption beats another clip's in 99% of held-out pairs) but not "
                    "captions that differ only in pitch band, count or tempo (50-64% of pairs, near chance: lesson "
                    "08)")
        else:
            settings["version"] = version
            what = ("Trained and measured on the course's data version 2 (SoundFont music, v2 sound events and their "
                    "varied captions); the `heldout_*` metrics score the same test clips against captions written "
                    "by the held-out part of the caption grammar, which no training caption uses")
        card = publish_model(
            model, args.out, name=SHIPPED_AGREEMENTS[version], model_class="course_lib.metrics.agreement:AgreementModel",
            description=("The course's text-audio agreement model (a CLAP-style score for generated clips): the "
                         f"classifier's conv audio tower and a linear projection, the frozen course text encoder "
                         f"(`{text_name}`, mean-pooled) and a 2-layer MLP projection, into a shared "
                         f"{cfg.embed_dim}-wide space; trained with symmetric InfoNCE and a learnable temperature. "
                         f"The score of a clip and a caption is their cosine. {what}; its numbers are not "
                         "comparable with the papers' CLAP scores."),
            measure=measure_agreement, settings=settings,
            command="python -m course_lib.metrics.agreement " + " ".join(sys.argv[1:] if argv is None else argv),
            train_metrics=metrics, half=not args.float32,
            notes=[f"of which {own:,} are stored here and {frozen:,} belong to the frozen text encoder "
                   f"(`{text_name}`, loaded from its own shipped folder)",
                   "metrics: retrieval among all test clips of the setting, each with its own caption "
                   "(`recall_at_1`: clip to caption, chance 1/n; `pair_accuracy`: own caption above another one, "
                   "chance 0.5; `recall_at_1_group`: best caption of a clip of the same class)"],
            data=(f"course generators (data version {version}), train split: {args.n_per_class} clips per class x "
                  f"{len(course_label_set(not args.no_music, version))} classes, {args.clip_seconds} s at "
                  f"{model.sample_rate} Hz, each with {args.paraphrases} wordings of its caption; {start}"))
        metrics = {**metrics, **{f"test_{k}": v for k, v in card["evaluation"]["metrics"].items()}}
    else:
        out = model.save_pretrained(args.out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
