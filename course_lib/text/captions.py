"""Paraphrases of the course captions, and how well a text encoder tells them apart (held-out measurement).

The course generators (:mod:`course_lib.data.sound_events`, :mod:`course_lib.data.music`) write a caption
from a clip's attributes with a random choice of template and synonyms, so the same attributes can be
captioned many ways: "a high-pitched bell rings twice" and "two loud high bell strikes" say the same thing.
This module draws a clip's attributes without synthesising its audio, writes as many paraphrases as asked,
and measures an encoder on them:

* ``paraphrase_cos``: mean cosine similarity of two different captions of the same attributes;
* ``different_cos``: mean cosine similarity of captions of different content (:func:`content_key` differs);
* ``retrieval_acc``: each query caption's nearest neighbour in a gallery (one other paraphrase per clip) has
  the query's content; ``class_retrieval_acc``: it has at least the same sound class or instrument;
* ``unseen_*``: the same, for queries that contain a :data:`HELD_OUT_WORDS` synonym (never in the course
  encoder's training captions) against a gallery that does not.

Similarities are between pooled (mean-token) vectors, :meth:`~course_lib.text.base.TextEmbedding.pooled`.

``data_version=2`` measures the same on the version 2 captions (:mod:`course_lib.data.captions_v2`: sound events v2
and SoundFont music, a richer grammar whose captions may leave facts out), with ``heldout_*`` rows for queries
written by the held-out part of that grammar (:data:`course_lib.data.captions_v2.HELD_OUT_WORDS`: new words and
sentence shapes no seen caption has) instead of ``unseen_*``. Its content (:func:`content_key_v2`) is every fact a
version 2 caption may state, so a query's "same content" is in practice its own clip.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from course_lib.data import captions_v2, music, music_sf2, sound_events, sound_events_v2, synth

DOMAINS: tuple[str, ...] = ("sound_events", "music")

# Synonyms the course encoder never sees in training (captions containing them are re-drawn), so that
# lesson 05 can show what an encoder trained on a closed vocabulary does with words it has not learnt.
# Every held-out word has a seen synonym for the same fact, so every attribute set stays expressible.
HELD_OUT_WORDS: dict[str, str] = {
    "shrill": "high pitch (seen: high, high-pitched)",
    "deep": "low pitch (seen: low, low-pitched)",
    "medium": "mid pitch, in 'medium-pitched' (seen: mid-pitched)",
    "faint": "quiet (seen: quiet, soft)",
    "faintly": "quietly (seen: quietly, softly)",
    "single": "a count of one, in 'a single' (seen: one, once)",
    "joyful": "happy mood (seen: happy, upbeat, cheerful)",
    "gentle": "calm mood (seen: calm, peaceful, relaxed)",
    "urgent": "tense mood (seen: tense, dramatic, dark)",
    "sorrowful": "sad mood (seen: sad, melancholic, gloomy)",
    "percussion": "no drums, in 'with no percussion' (seen: without drums, no drums)",
}


# ---- attributes and content --------------------------------------------------------------------------
# The generators draw attributes inside generate_clip; the two private calls below are the same draws,
# minus the audio (75 microseconds instead of 25 ms). tests/test_text.py checks they agree with generate_clip.


def draw_attributes(domain: str, split: str, index: int, clip_seconds: float = 4.0) -> dict[str, Any]:
    """The caption-relevant attributes clip ``index`` of ``split`` gets from ``domain``'s generator
    (``"sound_events"`` or ``"music"``) for a clip of ``clip_seconds`` (it bounds the sound-event counts),
    drawn without synthesising audio; includes ``"domain"``."""
    seed = synth.clip_seed(split, index)
    if domain == "sound_events":
        a = sound_events._draw_attributes(synth.make_rng(seed, sound_events.STREAM), int(index), float(clip_seconds), {})
    elif domain == "music":
        a = music._draw(synth.make_rng(seed, music.STREAM), int(index), {})
    else:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return {"domain": domain, **a}


def _domain(attributes: dict[str, Any]) -> str:
    if "class" in attributes:
        return "sound_events"
    if "instrument" in attributes:
        return "music"
    raise ValueError("attributes must come from a course generator (a sound-event 'class' or a music "
                     f"'instrument'), got keys {sorted(attributes)}")


def content_key(attributes: dict[str, Any]) -> tuple:
    """The facts a caption can state, as a hashable tuple: two attribute sets with the same key are
    paraphrase material. Sound events: class, count, pitch band, level, pace (footsteps, clock: slow /
    steady / quick) and background; music: instrument, mood, key, mode, tempo (bpm) and drums."""
    if _domain(attributes) == "sound_events":
        pace = sound_events._pace(attributes.get("rate_hz"))[0]
        return ("sound_events", attributes["class"], attributes.get("count"), attributes.get("pitch_band"),
                attributes.get("level"), pace, attributes.get("background"))
    return ("music", attributes["instrument"], attributes["mood"], attributes["key"], attributes["mode"],
            attributes["tempo_bpm"], attributes["has_drums"])


def class_of(attributes: dict[str, Any]) -> str:
    """The coarsest fact: the sound-event class or the music instrument."""
    return attributes["class"] if _domain(attributes) == "sound_events" else attributes["instrument"]


# ---- paraphrases --------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """The lower-case words of ``text`` (letters only; "high-pitched" gives "high", "pitched")."""
    return re.findall(r"[a-z]+", text.lower())


def has_held_out_word(text: str) -> bool:
    """True if ``text`` contains one of :data:`HELD_OUT_WORDS`."""
    return any(w in HELD_OUT_WORDS for w in words(text))


def paraphrase(attributes: dict[str, Any], seed: int | list[int], unseen: bool | None = False,
               avoid: tuple[str, ...] = (), tries: int = 200) -> str | None:
    """One caption of ``attributes`` by its generator, reproducible from ``seed``.

    ``unseen=False``: no :data:`HELD_OUT_WORDS` (what the course encoder trains on); ``True``: at least one;
    ``None``: any caption. Captions in ``avoid`` are skipped (to get a *different* phrasing). Draws up to
    ``tries`` candidates and returns ``None`` if none qualifies (e.g. ``unseen=True`` for a moderate dog
    barking twice: no held-out synonym applies).
    """
    caption = sound_events.caption if _domain(attributes) == "sound_events" else music.caption
    base = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    for k in range(tries):
        text = caption(attributes, np.random.default_rng([*base, k]))
        if text in avoid or (unseen is not None and has_held_out_word(text) != unseen):
            continue
        return text
    return None


def paraphrase_set(split: str, n_per_domain: int, seed: int = 0, start: int = 0) -> dict[str, list]:
    """Captions of ``n_per_domain`` clips of each domain (indices ``start ...``), three per clip where possible.

    Returns lists aligned by clip: ``attributes``, ``gallery`` (a seen-words caption), ``query`` (another
    seen-words caption, different text where the generator allows) and ``unseen`` (a caption with a held-out
    word, or ``None``). Deterministic in ``(split, n_per_domain, seed, start)``.
    """
    out: dict[str, list] = {"attributes": [], "gallery": [], "query": [], "unseen": []}
    for domain in DOMAINS:
        for i in range(start, start + n_per_domain):
            a = draw_attributes(domain, split, i)
            g = paraphrase(a, [seed, i, 0])
            q = paraphrase(a, [seed, i, 1], avoid=(g,)) or paraphrase(a, [seed, i, 1])
            out["attributes"].append(a)
            out["gallery"].append(g)
            out["query"].append(q)
            out["unseen"].append(paraphrase(a, [seed, i, 2], unseen=True))
    return out


# ---- measurement --------------------------------------------------------------------------------------


@torch.no_grad()
def _pooled(encoder: Any, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    parts = [encoder.encode(texts[i:i + batch_size]).pooled() for i in range(0, len(texts), batch_size)]
    return torch.nn.functional.normalize(torch.cat(parts).float().cpu(), dim=-1)


def _scores(q: torch.Tensor, g: torch.Tensor, rows: list[int], keys: list, classes: list) -> dict[str, float]:
    """Paraphrase / different-content cosines and nearest-neighbour accuracies of queries ``q`` (for clips
    ``rows``) against the gallery ``g`` (one row per clip)."""
    sim = q @ g.T  # (len(rows), n_clips)
    same = torch.tensor([[keys[r] == k for k in keys] for r in rows])
    nearest = sim.argmax(dim=1).tolist()
    return {
        "paraphrase_cos": float(sim[torch.arange(len(rows)), torch.tensor(rows)].mean()),
        "different_cos": float(sim[~same].mean()),
        "retrieval_acc": float(np.mean([keys[j] == keys[r] for r, j in zip(rows, nearest)])),
        "class_retrieval_acc": float(np.mean([classes[j] == classes[r] for r, j in zip(rows, nearest)])),
    }


def measure_text_encoder(encoder: Any, n_per_domain: int = 64, split: str = "test", seed: int = 0,
                         data_version: int = 1) -> dict[str, float]:
    """Held-out paraphrase metrics of any :class:`~course_lib.text.base.TextEncoder` (see the module doc).

    Uses ``n_per_domain`` sound-event and as many music clips of ``split`` (the test split by default: never
    seen in training): ``paraphrase_cos``, ``different_cos``, ``retrieval_acc``, ``class_retrieval_acc`` for
    seen-words queries, the ``unseen_`` versions for queries with a held-out synonym, and ``unseen_queries``
    (how many clips could be captioned with one). Values rounded to 4 decimals.

    ``data_version=2``: the version 2 captions instead, see :func:`measure_text_encoder_v2` (``split`` must
    be ``"test"`` there unless ``heldout`` is switched off, as the held-out grammar captions test clips only).
    """
    if data_version == 2:
        return measure_text_encoder_v2(encoder, n_per_domain, split, seed)
    if data_version != 1:
        raise ValueError(f"data_version must be 1 or 2, got {data_version!r}")
    data = paraphrase_set(split, n_per_domain, seed)
    keys = [content_key(a) for a in data["attributes"]]
    classes = [class_of(a) for a in data["attributes"]]
    gallery = _pooled(encoder, data["gallery"])
    query = _pooled(encoder, data["query"])
    n = len(keys)
    metrics = _scores(query, gallery, list(range(n)), keys, classes)
    rows = [i for i, t in enumerate(data["unseen"]) if t is not None]
    unseen = _pooled(encoder, [data["unseen"][i] for i in rows])
    metrics.update({f"unseen_{k}": v for k, v in _scores(unseen, gallery, rows, keys, classes).items()})
    metrics["unseen_queries"] = len(rows)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


# ---- version 2 captions -------------------------------------------------------------------------------
# Version 2 clips get their caption from their own random stream (caption_of); a paraphrase is the same
# writer with another stream, so any number of captions of one clip can be written without rendering audio.

_V2_MODULES = {"sound_events": sound_events_v2, "music": music_sf2}


def draw_attributes_v2(domain: str, split: str, index: int) -> dict[str, Any]:
    """The attributes version 2 clip ``index`` of ``split`` gets from ``domain``'s generator (sound events v2 or
    SoundFont music), drawn without rendering audio; include ``seed``, ``split`` and ``index``."""
    if domain not in _V2_MODULES:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return _V2_MODULES[domain].draw_attributes(int(index), split)


def content_key_v2(attributes: dict[str, Any]) -> tuple:
    """Every fact a version 2 caption of ``attributes`` may state, as a hashable tuple. Sound events: class,
    recipe, count, pitch band, level, pace band, background, room band; music: instrument, GM program, mood,
    tempo (bpm), key, mode, drums, drum kit."""
    a = attributes
    if _domain(a) == "sound_events":
        return ("sound_events", a["class"], a.get("recipe"), a.get("count"), a.get("pitch_band"), a.get("level"),
                captions_v2.pace_of(a.get("rate_hz")), a.get("background"), captions_v2.room_band(a.get("room_rt60_s")))
    return ("music", a["instrument"], a.get("program"), a["mood"], a["tempo_bpm"], a["key"], a["mode"],
            a["has_drums"], a.get("drum_kit"))


def paraphrase_v2(attributes: dict[str, Any], seed: int | list[int], grammar: str = "seen",
                  avoid: tuple[str, ...] = (), tries: int = 20) -> str:
    """A version 2 caption of ``attributes`` from the random stream ``seed`` and ``grammar`` (``"seen"``, or
    ``"heldout"`` for test clips only), different from the captions in ``avoid`` where one of ``tries`` draws
    is (a clip with few facts may have few phrasings)."""
    captions_v2.check_grammar(grammar, attributes.get("split", "test"))
    base = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    text = ""
    for k in range(tries):
        text = captions_v2.caption(attributes, np.random.default_rng([*base, k]), grammar).text
        if text not in avoid:
            break
    return text


def paraphrase_set_v2(split: str, n_per_domain: int, seed: int = 0, heldout: bool = True) -> dict[str, list]:
    """Version 2 captions of clips ``0 .. n_per_domain - 1`` of each domain of ``split``, aligned by clip:
    ``attributes``, ``gallery`` (the clip's own caption, ``caption_of``), ``query`` (another seen-grammar
    caption, different text where possible) and, with ``heldout``, ``heldout`` (a held-out-grammar caption;
    test split only)."""
    out: dict[str, list] = {"attributes": [], "gallery": [], "query": [], "heldout": []}
    for domain in DOMAINS:
        for i in range(n_per_domain):
            a = draw_attributes_v2(domain, split, i)
            gallery = _V2_MODULES[domain].caption_of(a).text
            out["attributes"].append(a)
            out["gallery"].append(gallery)
            out["query"].append(paraphrase_v2(a, [seed, i, 1], avoid=(gallery,)))
            if heldout:
                out["heldout"].append(paraphrase_v2(a, [seed, i, 2], grammar="heldout"))
    return out


def measure_text_encoder_v2(encoder: Any, n_per_domain: int = 64, split: str = "test", seed: int = 0
                            ) -> dict[str, float]:
    """Paraphrase metrics of any text encoder on version 2 captions of ``n_per_domain`` sound-event and as many
    music clips of ``split``: ``paraphrase_cos``, ``different_cos``, ``retrieval_acc`` (the nearest gallery
    caption has the query's :func:`content_key_v2`) and ``class_retrieval_acc`` (its class / instrument) for
    seen-grammar queries against one seen-grammar gallery caption per clip, and on the test split the
    ``heldout_`` versions for held-out-grammar queries against the same gallery. Rounded to 4 decimals."""
    heldout = split == "test"
    data = paraphrase_set_v2(split, n_per_domain, seed, heldout=heldout)
    keys = [content_key_v2(a) for a in data["attributes"]]
    classes = [class_of(a) for a in data["attributes"]]
    gallery = _pooled(encoder, data["gallery"])
    rows = list(range(len(keys)))
    metrics = _scores(_pooled(encoder, data["query"]), gallery, rows, keys, classes)
    if heldout:
        held = _scores(_pooled(encoder, data["heldout"]), gallery, rows, keys, classes)
        metrics.update({f"heldout_{k}": v for k, v in held.items()})
    return {k: round(v, 4) for k, v in metrics.items()}
