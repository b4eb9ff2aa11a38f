"""Version 2 captions (course_lib.data.captions_v2): variety, a held-out grammar split, and labels kept exact.

Most checks run on captions of cheaply drawn attributes (``draw_attributes`` + ``caption_of``: the same draws as
``generate_clip`` without the audio, which a few tests confirm), so thousands of captions take about a second.
Version 1 captions are pinned byte for byte by the fingerprint tests in test_sound_events_v2.py / test_soundfont.py.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pytest

from course_lib.data import captions_v2 as cv
from course_lib.data import music, music_sf2
from course_lib.data import sound_events as se
from course_lib.data import sound_events_v2 as v2
from course_lib.text.captions import HELD_OUT_WORDS as V1_HELD_OUT_WORDS
from course_lib.text.captions import draw_attributes

N_TRAIN, N_VALID, N_HELDOUT = 3000, 1000, 400


def _captions(domain: str, split: str, n: int, grammar: str = "seen") -> list[tuple[dict, cv.Caption]]:
    module = v2 if domain == "sound_events" else music_sf2
    return [(a, module.caption_of(a, grammar)) for a in (module.draw_attributes(i, split) for i in range(n))]


@pytest.fixture(scope="module")
def corpus() -> dict[tuple[str, str], list[tuple[dict, cv.Caption]]]:
    out = {}
    for domain in ("sound_events", "music"):
        out[domain, "train"] = _captions(domain, "train", N_TRAIN)
        out[domain, "valid"] = _captions(domain, "valid", N_VALID)
        out[domain, "heldout"] = _captions(domain, "test", N_HELDOUT, "heldout")
    return out


def _has(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as whole words (case-insensitive; "high" is not in "high-pitched")."""
    return re.search(rf"(?<![\w-]){re.escape(phrase.lower())}(?![\w-])", text.lower()) is not None


def _present(text: str, table: dict) -> set:
    """The keys of ``table`` (value -> phrases) with a phrase in ``text``."""
    return {value for value, phrases in table.items() if any(_has(text, p.strip(" ,")) for p in phrases)}


# ---- determinism and the clip API ---------------------------------------------------------------------------


def test_generate_clip_writes_the_caption_of_its_drawn_attributes_deterministically():
    for i in (0, 3, 13):
        clip = se.generate_clip(i, "train", version=2)
        a = v2.draw_attributes(i, "train")
        assert {k: clip.attributes[k] for k in a} == a
        written = v2.caption_of(a)
        assert clip.caption == written.text and clip.attributes["caption_states"] == list(written.states)
        assert clip.attributes["caption_template"] == written.template and clip.attributes["caption_grammar"] == "seen"
    for i in (1, 10):
        clip = music.generate_clip(i, "valid", version=2)
        a = music_sf2.draw_attributes(i, "valid")
        assert {k: clip.attributes[k] for k in a} == a
        assert clip.caption == music_sf2.caption_of(a).text
    assert music_sf2.caption_of(music_sf2.draw_attributes(5, "train")) == \
        music_sf2.caption_of(music_sf2.draw_attributes(5, "train"))
    assert v2.caption_of(v2.draw_attributes(5, "train")).text != v2.caption_of(v2.draw_attributes(5, "valid")).text


def test_heldout_grammar_changes_only_the_caption_and_only_for_test_clips():
    seen, held = se.generate_clip(7, "test", version=2), se.generate_clip(7, "test", version=2, grammar="heldout")
    assert np.array_equal(seen.audio, held.audio) and seen.caption != held.caption
    assert held.attributes["caption_grammar"] == "heldout" and held.attributes["caption_template"] in cv.HELD_OUT_TEMPLATES
    assert {k: v for k, v in seen.attributes.items() if not k.startswith("caption")} == \
        {k: v for k, v in held.attributes.items() if not k.startswith("caption")}
    clips = list(se.generate_clips("test", 2, version=2, grammar="heldout"))
    assert all(c.attributes["caption_grammar"] == "heldout" for c in clips)
    m = music.generate_clip(2, "test", version=2, grammar="heldout")
    assert m.attributes["caption_template"] in cv.HELD_OUT_TEMPLATES
    for split in ("train", "valid"):
        with pytest.raises(ValueError, match="test-split clips"):
            v2.generate_clip(0, split, grammar="heldout")
        with pytest.raises(ValueError, match="test-split clips"):
            music.generate_clip(0, split, version=2, grammar="heldout")
    with pytest.raises(ValueError, match="grammar must be one of"):
        v2.generate_clip(0, "test", grammar="unseen")


# ---- variety ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["sound_events", "music"])
def test_variety_of_shapes_and_words(corpus, domain):
    rows = corpus[domain, "train"][:500]
    templates = {c.template for _, c in rows}
    assert templates == {t for t in (cv.EVENT_TEMPLATES if domain == "sound_events" else cv.MUSIC_TEMPLATES)
                         if t not in cv.HELD_OUT_TEMPLATES}  # all 16 seen templates
    shapes = {(c.template, c.states) for _, c in rows}  # sentence shape x which facts it states
    assert len(shapes) >= 150, len(shapes)
    assert len({c.text for _, c in rows}) >= 490
    assert any(c.text == c.text.lower() and "," in c.text for _, c in rows)  # typed fragments
    assert any(c.text.endswith("?") for _, c in rows)  # questions
    for fact in cv.EVENT_STATES if domain == "sound_events" else cv.MUSIC_STATES:  # every fact sometimes left out
        if fact not in ("class", "instrument"):
            stated = np.mean([fact in c.states for _, c in rows])
            assert 0.0 < stated < 0.95, (fact, stated)


def test_every_event_class_has_five_or_more_names_in_use(corpus):
    used = defaultdict(set)
    for a, c in corpus["sound_events", "train"][:1200]:
        w = cv.EVENT_WORDS[a["class"]]
        names = [*w.names, *w.plural, *w.uncounted, *w.weather, *(e for pair in w.events for e in pair),
                 *(n for group in w.by_recipe.values() for n in group)]
        used[a["class"]] |= {cv._bare(n) for n in names if _has(c.text, cv._bare(n))}
    for event_class in se.EVENT_CLASSES:
        assert len(used[event_class]) >= 5, (event_class, used[event_class])
    instruments = defaultdict(set)
    for a, c in corpus["music", "train"][:1200]:
        words = [*cv.INSTRUMENT_WORDS[a["instrument"]], *cv.PROGRAM_WORDS.get(a["program"], ())]
        instruments[a["instrument"]] |= {w for w in words if _has(c.text, w)}
    assert all(len(instruments[i]) >= 3 for i in music_sf2.INSTRUMENTS), instruments


# ---- the held-out grammar ------------------------------------------------------------------------------------


def test_heldout_part_is_documented_and_detectable():
    # every held-out phrase and template brings a word the seen grammar never uses
    for phrase in cv.HELD_OUT_PHRASES:
        assert set(cv.words(re.sub(r"\{\w+\}", " ", phrase))) & cv.HELD_OUT_WORDS, phrase
    for tid in cv.HELD_OUT_TEMPLATES:
        template = {**cv.EVENT_TEMPLATES, **cv.MUSIC_TEMPLATES}[tid]
        assert set(cv.words(re.sub(r"\{\w+\??\}", " ", template))) & cv.HELD_OUT_WORDS, tid
    assert not cv.HELD_OUT_WORDS & cv.SEEN_WORDS
    # every held-out phrase is in the grammar (no typo leaves one in the seen part)
    options = {o if isinstance(o, str) else o[0] for o in cv._options()}
    assert cv.HELD_OUT_PHRASES <= options, cv.HELD_OUT_PHRASES - options
    # version 1's held-out synonyms stay out of seen captions in version 2 too, and no held-out word is in a
    # version 1 caption (so the shipped course encoder, trained on version 1, never read one either)
    assert not set(V1_HELD_OUT_WORDS) & cv.SEEN_WORDS
    v1_words = {w for i in range(600) for w in cv.words(se.caption(draw_attributes("sound_events", "train", i), i)
                                                         + " " + music.caption(draw_attributes("music", "train", i), i))}
    assert not (cv.HELD_OUT_WORDS & v1_words) - set(V1_HELD_OUT_WORDS), cv.HELD_OUT_WORDS & v1_words
    # about a fifth of the templates and of the word options are held out
    for templates in (cv.EVENT_TEMPLATES, cv.MUSIC_TEMPLATES):
        assert 5 * sum(t in cv.HELD_OUT_TEMPLATES for t in templates) == len(templates)  # one in five
    share = np.mean([cv._held(o) for o in cv._options()])
    assert 0.1 < share < 0.3, share


@pytest.mark.parametrize("domain", ["sound_events", "music"])
def test_train_and_valid_captions_never_use_the_heldout_part(corpus, domain):
    for split in ("train", "valid"):
        for _, c in corpus[domain, split]:
            assert not set(cv.words(c.text)) & cv.HELD_OUT_WORDS, c.text
            assert c.template not in cv.HELD_OUT_TEMPLATES and c.grammar == "seen"


@pytest.mark.parametrize("domain", ["sound_events", "music"])
def test_heldout_captions_always_use_it(corpus, domain):
    rows = corpus[domain, "heldout"]
    for _, c in rows:
        assert set(cv.words(c.text)) & cv.HELD_OUT_WORDS, c.text
        assert c.template in cv.HELD_OUT_TEMPLATES and c.grammar == "heldout"
    # and mostly a held-out synonym too, not only the template's words
    template_words = {w for t in cv.HELD_OUT_TEMPLATES for w in cv.words({**cv.EVENT_TEMPLATES, **cv.MUSIC_TEMPLATES}[t])}
    with_synonym = np.mean([bool(set(cv.words(c.text)) & (cv.HELD_OUT_WORDS - template_words)) for _, c in rows])
    assert with_synonym > 0.8, with_synonym


# ---- labels stay exact ----------------------------------------------------------------------------------------

_COUNT_WORDS = {**{w: n for n, w in cv.NUMBER_WORDS.items()}, "once": 1, "twice": 2, "thrice": 3, "single": 1,
                "pair": 2}


def _counts(text: str) -> set[int]:
    """Every count a caption states: digits ("3 times", "x3") and number words ("two", "twice", "a single")."""
    lower = text.lower()
    found = {int(d) for d in re.findall(r"(?<![\w-])x?(\d+)(?![\w-])", lower)}
    found |= {n for w, n in _COUNT_WORDS.items() if _has(lower, w)}
    return found


def _check_event(a: dict, c: cv.Caption) -> None:
    text, states = c.text, set(c.states)
    assert "class" in states
    assert _counts(text) == ({a["count"]} if "count" in states else set()), text
    pitch = {b: (*cv.PITCH_ADJ[b], *cv.PITCH_TAIL[b]) for b in cv.PITCH_ADJ}
    assert _present(text, pitch) == ({a["pitch_band"]} if "pitch_band" in states else set()), text
    level = {lv: (*cv.LEVEL_ADJ[lv], *cv.LEVEL_ADV[lv], *cv.LEVEL_TAG[lv]) for lv in cv.LEVEL_ADJ}
    assert _present(text, level) == ({a["level"]} if "level" in states else set()), text
    if a["rate_hz"] is not None:
        pace = {p: (*cv.PACE_ADJ[p], *cv.PACE_ADV[p]) for p in cv.PACE_ADJ}
        assert _present(text, pace) == ({cv.pace_of(a["rate_hz"])} if "rate_hz" in states else set()), text
    else:
        assert "rate_hz" not in states
    backgrounds = _present(text, cv.BACKGROUND) | ({a["background"]} if "in the background" in text.lower() else set())
    assert backgrounds <= ({a["background"]} if "background" in states else set()), text
    if "background" in states:
        bg = a["background"]
        assert _present(text, {bg: (*cv.BACKGROUND[bg], *cv.BACKGROUND_CLAUSE[bg], *cv.BACKGROUND_TAG[bg])}), text
    rooms = _present(text, {b: (*cv.ROOM[b], *cv.ROOM_TAG[b]) for b in ("small", "echoing")})
    assert rooms == ({cv.room_band(a["room_rt60_s"])} if "room_rt60_s" in states else set()), text
    if "recipe" in states:
        w = cv.EVENT_WORDS[a["class"]]
        mine = (*w.by_recipe.get(a["recipe"], ()), *w.surfaces.get(a["recipe"], ()))
        assert any(_has(text, cv._bare(p)) for p in mine), text


def _keys(text: str) -> set[str]:
    lower = text.lower().replace(" sharp", "#").replace(" flat", "b")
    return set(re.findall(r"(?<![\w#])([a-g][#b]?) (?:major|minor)\b", lower)) | set(re.findall(r"key of ([a-g][#b]?)(?![\w#])", lower))


def _check_music(a: dict, c: cv.Caption) -> None:
    text, states = c.text, set(c.states)
    assert "instrument" in states
    numbers = [n for n in re.findall(r"\d+(?:\.\d+)?", text) if n != "808"]
    assert numbers == ([f"{a['tempo_bpm']:g}"] if "tempo_bpm" in states else []), text
    assert _present(text, cv.MOOD_WORDS) == ({a["mood"]} if "mood" in states else set()), text
    tempo = {b: (*cv.TEMPO_ADJ[b], *cv.TEMPO_TAIL[b]) for b in cv.TEMPO_ADJ}
    assert _present(text, tempo) == ({music.tempo_word(a["tempo_bpm"])} if "tempo" in states else set()), text
    assert set(re.findall(r"\b(major|minor)\b", text.lower())) == ({a["mode"]} if "mode" in states else set()), text
    assert _keys(text) == ({a["key"].lower()} if "key" in states else set()), text
    no_drums = any(_has(text, p.strip(" ,")) for p in (*cv.NO_DRUMS, *cv.DRUM_TAG[False]))
    drum_words = re.search(r"(?<![\w-])(drums?|percussion|beat|drum machine|808)(?![\w-])", text.lower())
    if "has_drums" in states:
        assert no_drums == (not a["has_drums"]) and drum_words, text
    else:
        assert not drum_words, text
    if "drum_kit" in states:
        assert any(_has(text, p.strip()) for p in cv.DRUM_KIT_WORDS[a["drum_kit"]]), text
    # instrument words: the family's or this program's, never one true of another program only
    family = music_sf2.GM_PROGRAMS[a["instrument"]]
    mine = {w.lower() for w in (*cv.INSTRUMENT_WORDS[a["instrument"]], *cv.PROGRAM_WORDS.get(a["program"], ()))}
    assert any(_has(text, w) for w in mine), text
    others = {w.lower() for p in family if p != a["program"] for w in cv.PROGRAM_WORDS.get(p, ())} - mine
    rest = text.lower()
    for w in sorted(mine, key=len, reverse=True):  # "electric grand piano" is not program 0's "grand piano"
        rest = re.sub(rf"(?<![\w-]){re.escape(w)}(?![\w-])", "|", rest)
    assert not [w for w in others if _has(rest, w)], text
    if "program" in states:
        assert any(_has(text, w) for w in cv.PROGRAM_WORDS[a["program"]]), text


@pytest.mark.parametrize("domain", ["sound_events", "music"])
def test_captions_state_only_true_facts_and_record_them(corpus, domain):
    check = _check_event if domain == "sound_events" else _check_music
    for part in ("train", "heldout"):
        for a, c in corpus[domain, part][:1500]:
            check(a, c)


def test_overridden_facts_reach_the_caption_and_v1_attributes_can_be_captioned():
    c = v2.generate_clip(4, "valid", event_class="bell", count=3, pitch_band="low", recipe="church bell")
    _check_event(c.attributes, cv.Caption(c.caption, tuple(c.attributes["caption_states"]), "", "seen"))
    tags = dict(instrument="strings", tempo_bpm=100.5, key="A", mode="minor", has_drums=False)
    a = music_sf2.draw_attributes(3, "test", **tags)
    for seed in range(40):
        _check_music(a, cv.music_caption(a, seed))
    old = se.generate_clip(0, "train")  # version 1 attributes (no recipe, room, program): still a true caption
    assert cv.event_caption(old.attributes, 1).states[0] == "class"


def test_grammar_on_version_1_says_it_needs_version_2():
    from course_lib.data import music, sound_events

    for module in (sound_events, music):
        with pytest.raises(ValueError, match="version=2"):
            module.generate_clip(0, "test", 1.0, grammar="heldout")


def test_heldout_caption_split_exports_and_streams_the_test_audio_with_new_wordings(tmp_path):
    from course_lib.data.__main__ import main
    from course_lib.data.export import HELDOUT_SPLIT, export_course_dataset
    from course_lib.data.loaders import load_captioned
    from course_lib.data.torch_dataset import GeneratedDataset

    with pytest.warns(UserWarning, match="not a folder name Hugging Face datasets recognises"):
        out = export_course_dataset("music", tmp_path / "m", {"test": 2, HELDOUT_SPLIT: 2}, clip_seconds=1.0,
                                    version=2)
    test, heldout = load_captioned(out, split="test"), load_captioned(out, split=HELDOUT_SPLIT)
    assert [r.attributes["caption_grammar"] for r in test] == ["seen", "seen"]
    assert [r.attributes["caption_grammar"] for r in heldout] == ["heldout", "heldout"]
    for a, b in zip(test, heldout):  # the same clips (audio and labels), captioned differently
        np.testing.assert_array_equal(a.audio, b.audio)
        assert a.attributes["instrument"] == b.attributes["instrument"] and a.caption != b.caption
    item = GeneratedDataset("sound_events", HELDOUT_SPLIT, size=1, clip_seconds=1.0, version=2)[0]
    assert item["attributes"]["caption_grammar"] == "heldout"
    with pytest.raises(ValueError, match="needs generator version 2"):
        export_course_dataset("music", tmp_path / "v1", {HELDOUT_SPLIT: 1}, clip_seconds=1.0)
    with pytest.raises(ValueError, match="needs generator version 2"):
        GeneratedDataset("music", HELDOUT_SPLIT, size=1)
    with pytest.warns(UserWarning, match="not a folder name"):
        assert main(["export", "--kind", "sound_events", "--out", str(tmp_path / "cli"), "--train", "0", "--valid",
                     "0", "--test", "0", "--test-heldout", "1", "--generator-version", "2", "--clip-seconds", "1"]) == 0
    assert load_captioned(tmp_path / "cli", split=HELDOUT_SPLIT)[0].attributes["caption_grammar"] == "heldout"
