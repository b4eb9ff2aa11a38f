"""The character-fallback tokenizer and the shipped ``text_encoder_v2`` (issue #19): no English word is ever a bare
``[UNK]``, the shipped ``text_encoder_course`` tokenizer is untouched, and the v2 encoder reads the held-out
caption grammar better than the v1 encoder does."""

from __future__ import annotations

import pytest

from course_lib import pretrained
from course_lib.data import captions_v2
from course_lib.text import train_tokenizer
from course_lib.text.captions import measure_text_encoder, paraphrase_set_v2
from course_lib.text.course_encoder import fallback_pieces
from course_lib.text.train_course_encoder import _respelt

# Everyday English: sound and music words the course grammar may or may not use, and generic ones.
EVERYDAY_WORDS = """
    ambulance applause baby bang bark bass beat bees bicycle birdsong blender boom breaking buzzing car cat
    cello chainsaw cheering chewing chicken children choir clapping clarinet clattering coughing cow crackle
    crash creak crickets crowd crying cymbal dishes door doorbell drill drip drizzle drum dryer duck echo
    electric explosion fan firework flute fountain frog glass gong growl guitar gunshot hail hammer harmonica
    harp helicopter hiss horse hum jazz keyboard kettle laughter lawnmower lion microwave motorcycle orchestra
    owl phone piano pig purr rattle ringtone roar rooster saxophone scream shout sigh singing siren sizzle
    skateboard snare sneeze snoring splash squeak static subway sweeping tambourine thunder toilet traffic
    train trombone trumpet typing ukulele vacuum violin waterfall waves whisper whistle wolf xylophone yawn
    zipper a about above after again air all almost also always and another any around ask away back bad
    because before begin between big both bring but call can change child city close cold come could day
    different do down each early end every eye face family far feel few find first follow food for friend
    from get give go good great group grow hand happy hard have head hear help here high home house how
    idea important just keep kind know large last late learn leave left life light like line little live
    long look made make man many may mean might more morning most mother move much must name near need
    never new next night number often old only open other our over own part people place play point
    question quick quiet quite really right room said same school see seem should show side small something
    sometimes song sound start still story study such take talk tell than that their them then there these
    thing think those though three through time today together too tree try turn under until use very
    walk want water way week well went were what when where which while white who why with without word
    work world write year yes you young zebra quizzical rhythm syncopation
""".split()


@pytest.fixture(scope="module")
def fallback_tokenizer():
    """A small fallback tokenizer learnt from a few seen-grammar captions (fast; the option, not the shipped file)."""
    corpus = ["a dog barks twice in a small room", "generate calm piano music with drums", "rain falls quietly"] * 3
    return train_tokenizer(corpus, vocab_size=200, char_fallback=True)


@pytest.fixture(scope="module")
def v2():
    return pretrained.load("text_encoder_v2")


@pytest.fixture(scope="module")
def v1():
    return pretrained.load("text_encoder_course")


def _unknown(tokenizer, words: list[str]) -> list[str]:
    """The words that tokenize to at least one ``[UNK]``."""
    return [w for w, enc in zip(words, tokenizer.encode_batch(words)) if "[UNK]" in enc.tokens]


# ---- the tokenizer option --------------------------------------------------------------------------------


def test_fallback_tokenizer_has_every_letter_digit_and_continuation(fallback_tokenizer):
    vocab = fallback_tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    assert set(fallback_pieces()) <= set(vocab)
    assert {"k", "##x", "7", "##7", "!", "'"} <= set(vocab)


@pytest.mark.parametrize("which", ["fallback_tokenizer", "v2"])
def test_no_grammar_or_everyday_word_is_unknown(which, request):
    tokenizer = request.getfixturevalue(which)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    words = sorted(captions_v2.SEEN_WORDS | captions_v2.HELD_OUT_WORDS) + EVERYDAY_WORDS
    assert len(EVERYDAY_WORDS) >= 200 and len(captions_v2.HELD_OUT_WORDS) >= 100
    assert _unknown(tokenizer, words) == []
    assert _unknown(tokenizer, ["Café", "NAÏVE", "ROCK'N'ROLL!", "120bpm", "e-mail"]) == []  # accents stripped


def test_unseen_word_is_spelt_from_pieces(fallback_tokenizer):
    tokens = fallback_tokenizer.encode("a klaxon").tokens
    assert tokens[0] == "a" and "".join(t.removeprefix("##") for t in tokens[1:]) == "klaxon" and len(tokens) > 2


def test_other_scripts_are_still_unknown(fallback_tokenizer):
    """Documented limit: the fallback covers ASCII letters, digits and punctuation only."""
    assert fallback_tokenizer.encode("Привет").tokens == ["[UNK]"]
    assert "[UNK]" in fallback_tokenizer.encode("犬が吠える").tokens


def test_respelling_avoids_the_whole_word_piece(fallback_tokenizer):
    vocab = fallback_tokenizer.get_vocab()
    ids = _respelt("dog", vocab)
    inverse = {i: p for p, i in vocab.items()}
    assert len(ids) > 1 and "".join(inverse[i].removeprefix("##") for i in ids) == "dog"


# ---- the shipped v1 tokenizer is unchanged ---------------------------------------------------------------


def test_shipped_course_tokenizer_is_unchanged(v1):
    tok = v1.tokenizer
    assert tok.get_vocab_size() == 194
    assert tok.encode("a dog barks twice").ids == [17, 93, 119, 118]
    assert tok.encode("A high-pitched bell rings 3 times, 120 bpm").ids == [17, 72, 5, 38, 94, 164, 9, 66, 4, 7, 8,
                                                                             6, 27]
    assert tok.encode("a klaxon honking").tokens == ["a", "[UNK]", "[UNK]"]
    assert tok.encode("violin downpour generate").tokens == ["[UNK]"] * 3


def test_default_tokenizer_option_is_the_old_pruned_one():
    """Without ``char_fallback`` the spare letters are still pruned: an unseen word is one ``[UNK]``."""
    tok = train_tokenizer(["a dog barks twice", "a bell rings once"] * 3, vocab_size=120)
    assert tok.encode("a klaxon").tokens == ["a", "[UNK]"]


# ---- the shipped v2 encoder ------------------------------------------------------------------------------


def test_v2_encoder_is_the_v1_size_with_a_fallback_vocabulary(v1, v2):
    assert v2.config.dim == v1.config.dim and v2.config.n_layers == v1.config.n_layers
    assert set(fallback_pieces()) <= set(v2.tokenizer.get_vocab())
    assert pretrained.card("text_encoder_v2")["evaluation"]["settings"]["data_version"] == 2


def test_v2_encoder_reads_the_held_out_grammar_better_than_v1(v1, v2):
    """A small sample (16 clips per domain) of the card's measure: held-out-grammar queries retrieve their clip
    more often with the v2 encoder, and seen-grammar v2 captions too."""
    old = measure_text_encoder(v1, n_per_domain=16, data_version=2)
    new = measure_text_encoder(v2, n_per_domain=16, data_version=2)
    assert new["heldout_retrieval_acc"] > old["heldout_retrieval_acc"] + 0.1
    assert new["heldout_class_retrieval_acc"] > old["heldout_class_retrieval_acc"]
    assert new["retrieval_acc"] > old["retrieval_acc"]


def test_held_out_captions_contain_held_out_words_and_seen_ones_none():
    data = paraphrase_set_v2("test", 6)
    assert all(set(captions_v2.words(t)) & captions_v2.HELD_OUT_WORDS for t in data["heldout"])
    assert not any(set(captions_v2.words(t)) & captions_v2.HELD_OUT_WORDS for t in data["gallery"] + data["query"])
    with pytest.raises(ValueError, match="test"):
        paraphrase_set_v2("valid", 2, heldout=True)
