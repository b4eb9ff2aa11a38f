"""Prompts the text encoder cannot read (empty, too long, mostly unknown words, another script, punctuation only):
the report names the problem, and every pipeline warns once per problem prompt; the course's own captions do not.

The pipelines are tiny and random (built here, nothing saved); only the shipped course text encoder is loaded. The
Hugging Face wrappers are checked on tiny random T5 / CLIP / BERT models saved to temporary folders."""

from __future__ import annotations

import warnings

import pytest
import torch

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig
from course_lib.data import music, sound_events
from course_lib.diffusion import DiffsoundConfig, DiffsoundModel
from course_lib.lm import AudioLM, AudioLMConfig
from course_lib.pipelines import AudioGenPipeline, DiffsoundPipeline, Noise2MusicPipeline, Noise2MusicStage
from course_lib.text import (
    Piece,
    PromptWarning,
    TextEncoder,
    encode_prompts,
    load_text_encoder,
    prompt_report,
    unknown_words,
)
from course_lib.text.captions import draw_attributes, paraphrase
from course_lib.train import get_family
from course_lib.vocoders import GriffinLimVocoder

SENTENCE = "a dog barks three times while rain falls"  # 8 tokens for every tokenizer here
LONG = "wind " + " ".join([SENTENCE] * 20) + " then a bell rings twice"  # 166 tokens: > 64 (course), 128 (T5), 40
PROBLEMS = {  # prompt -> the kind of issue the report must find
    "": "empty",
    LONG: "truncated",
    "a klaxon honking": "unknown_words",  # 'klaxon', 'honking' are not in the course vocabulary: 2 of 3 words
    "犬が二回吠える": "unknown_words",  # Japanese: no piece of the course vocabulary covers it
    "!!! ...": "empty",  # punctuation only: no word, read as [UNK]s
}
GOOD = "a loud bell rings twice over rain"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def course():
    return load_text_encoder("course")


def prompt_warnings(call) -> list[warnings.WarningMessage]:
    """The PromptWarnings that ``call()`` issues, every one recorded (no once-per-line filtering)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, PromptWarning)]


# ---- the report ------------------------------------------------------------------------------------------------


def test_the_report_finds_each_kind_and_says_what_happens(course):
    prompts = [GOOD, *PROBLEMS]
    issues = prompt_report(course, prompts)
    assert [(i.index, i.kind) for i in issues] == [(n + 1, kind) for n, kind in enumerate(PROBLEMS.values())]
    empty, long, klaxon, japanese, marks = issues
    assert "empty prompt: generating unconditionally" in empty.message and "null condition" in empty.message
    assert klaxon.unknown == ("klaxon", "honking") and "'klaxon', 'honking' (2 of 3 words)" in klaxon.message
    assert "[UNK]" in klaxon.message and "('a')" in klaxon.message  # what the model still reads
    assert japanese.unknown == ("犬が二回吠える",) and "no word is left" in japanese.message
    assert "[UNK] [UNK]" in marks.message and "almost unconditionally" in marks.message
    assert str(klaxon).startswith("prompts[3] 'a klaxon honking': the text encoder (course) does not know")


def test_the_truncation_point_is_where_the_encoder_cuts(course):
    (issue,) = prompt_report(course, [LONG])
    full = course.tokenizer.encode(LONG)
    ids, _ = course.tokenize([LONG])
    assert (issue.tokens, issue.kept) == (len(full.ids), 64) == (166, ids.shape[1])
    assert issue.ignored == LONG[full.offsets[64][0]:]  # the text of the 65th token on
    assert course.tokenizer.encode(LONG[: len(LONG) - len(issue.ignored)]).ids == ids[0].tolist()  # the rest is read
    assert issue.ignored.startswith("falls a dog barks")
    assert "166 tokens long; the text encoder (course) reads the first 64" in issue.message
    assert "up to '…barks three times while rain'" in issue.message and "from 'falls a dog" in issue.message


def test_the_unknown_word_rule(course):
    """Flagged when unknown words are more than half of the words, or four or more; always listed."""
    prompts = ["a shrill siren wails",  # 1 of 4: read past (a course caption could say it)
               "a single faint shrill bird chirp",  # 3 of 6, exactly half: a real course caption, not flagged
               "a cat meows",  # 2 of 3: flagged
               "a dog barks while a cat meows near an ambulance and a klaxon"]  # 5 of 13: four or more, flagged
    assert unknown_words(course, prompts) == [["shrill"], ["single", "faint", "shrill"], ["cat", "meows"],
                                              ["cat", "meows", "near", "ambulance", "klaxon"]]
    assert [(i.index, i.unknown) for i in prompt_report(course, prompts)] == [
        (2, ("cat", "meows")), (3, ("cat", "meows", "near", "ambulance", "klaxon"))]


def test_the_course_test_split_captions_never_warn(course):
    """50 sound-event and 50 music captions of the test split, as the generators write them (a third of them
    hold a held-out synonym the encoder never saw), and the paraphrases built on purpose around those synonyms."""
    captions = [sound_events.generate_clip(i, "test", clip_seconds=1.0).caption for i in range(50)]
    captions += [music.generate_clip(i, "test", clip_seconds=1.0).caption for i in range(50)]
    unseen = [paraphrase(draw_attributes(domain, "test", i), seed=i, unseen=True)
              for domain in ("sound_events", "music") for i in range(50)]
    captions += [c for c in unseen if c is not None]
    assert sum(bool(u) for u in unknown_words(course, captions)) > 50  # the held-out words are there...
    assert prompt_report(course, captions) == []  # ...and read past, as the encoder was trained to
    assert prompt_warnings(lambda: encode_prompts(course, captions)) == []


# ---- the Hugging Face wrappers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_encoders(tmp_path_factory):
    from course_lib.text.hf import save_random_tiny

    corpus = [SENTENCE, GOOD, "two beeps", "wind blows in gusts", "a siren wails then a bell rings twice"]
    return {k: load_text_encoder(f"{k}:{save_random_tiny(k, tmp_path_factory.mktemp(k), corpus)}",
                                 local_files_only=True) for k in ("t5", "clip", "bert")}


@pytest.mark.parametrize("kind", ["t5", "clip", "bert"])
def test_the_report_reads_hugging_face_tokenizers(hf_encoders, kind):
    enc = hf_encoders[kind]
    russian = "собака лает дважды"  # a sub-word tokenizer spells unseen English from letters, not another script
    prompts = [GOOD, "", LONG, russian, "犬が二回吠える", "!!! ..."]
    issues = prompt_report(enc, prompts)
    assert [(i.index, i.kind) for i in issues] == [(1, "empty"), (2, "truncated"), (3, "unknown_words"),
                                                   (4, "unknown_words"), (5, "empty")]
    long = issues[1]
    kept = enc.tokenize([LONG])["input_ids"].shape[1]
    assert (long.tokens, long.kept) == (166, kept) == (166, enc.max_length)
    assert long.ignored == LONG[len(" ".join(LONG.split()[:kept])) + 1:]  # one token per word here
    assert issues[2].unknown == ("собака", "лает", "дважды") and enc.tokenizer.unk_token in issues[2].message
    assert prompt_report(enc, [GOOD, SENTENCE]) == []


class _SpacedWithMarkers(TextEncoder):
    """A stand-in tokenizer: one token per space-separated word between a special [CLS] and [SEP], 5 at most."""

    max_length = 5

    def pieces(self, texts):
        out = []
        for text in texts:
            spans, start = [], 0
            for word in text.split():
                start = text.index(word, start)
                spans.append(Piece(word, word == "zz", False, start, start + len(word)))
                start += len(word)
            out.append([Piece("[CLS]", False, True, 0, 0), *spans, Piece("[SEP]", False, True, 0, 0)])
        return out


def test_special_tokens_are_kept_when_the_cut_is_made():
    """BERT keeps [CLS] and [SEP] when it truncates: 5 tokens leave room for 3 words of 'a b c d e f'."""
    (issue,) = prompt_report(_SpacedWithMarkers(), ["a b c d e f"])
    assert (issue.tokens, issue.kept, issue.ignored) == (8, 5, "d e f")
    assert [i.unknown for i in prompt_report(_SpacedWithMarkers(), ["zz zz a", "zz a"])] == [("zz",)]


def test_an_encoder_without_a_tokenizer_is_checked_for_empty_prompts_only():
    bare = TextEncoder()
    assert [(i.index, i.kind) for i in prompt_report(bare, ["a klaxon", "", "?!"])] == [(1, "empty"), (2, "empty")]


# ---- every pipeline warns, through the one encode step ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(course):
    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_filters=2, dimension=8, lstm=0, n_q=2, codebook_size=16, kmeans_iters=1)).eval()
    lm = AudioLM(AudioLMConfig(n_q=2, codebook_size=16, dim=16, num_layers=1, num_heads=2, text_dim=128, max_len=32,
                               mlp_ratio=2.0)).eval()
    vqvae = MelVQVAE(MelVQVAEConfig(channels=4, ch_mult=(1, 2, 2, 4), embed_dim=8, codebook_size=32,
                                    kmeans_init=False)).eval()
    decoder = DiffsoundModel(DiffsoundConfig(codebook_size=32, dim=16, num_layers=1, num_heads=2, mlp_ratio=2.0,
                                             max_cols=4, num_steps=4)).eval()
    vocoder = GriffinLimVocoder(vqvae.config.mel_config(), n_iter=1)
    stages = [Noise2MusicStage(get_family(f"n2m_{s}").load_config("tiny").model).eval()
              for s in ("generator", "cascader")]
    return {"audiogen": AudioGenPipeline(lm, codec, course),
            "diffsound": DiffsoundPipeline(decoder, vqvae, vocoder, course),
            "noise2music": Noise2MusicPipeline(*stages, course)}


PIPELINES = ["audiogen", "diffsound", "noise2music"]


@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize("prompt", list(PROBLEMS),
                         ids=["empty", "too_long", "unknown_words", "japanese", "punctuation"])
def test_each_problem_prompt_warns_from_each_pipeline(pipelines, name, prompt):
    caught = prompt_warnings(lambda: pipelines[name].encode_text([GOOD, prompt]))
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert message.startswith("prompts[1] ")
    assert {"empty": "unconditionally", "truncated": "reads the first 64", "unknown_words": "does not know"}[
        PROBLEMS[prompt]] in message
    assert caught[0].filename == __file__  # it points at the caller's line, not at course_lib


@pytest.mark.parametrize("name", PIPELINES)
def test_course_captions_do_not_warn_from_any_pipeline(pipelines, name):
    prompts = [GOOD, SENTENCE, "a calm piano melody in C major at 80 bpm", "a single faint shrill bird chirp"]
    assert prompt_warnings(lambda: pipelines[name].encode_text(prompts)) == []


def test_generation_warns_once_per_problem_prompt_end_to_end(pipelines):
    prompts = [GOOD, *PROBLEMS]
    calls = {"audiogen": lambda p: p(prompts, seconds=0.05, top_k=4),
             "diffsound": lambda p: p(prompts, seconds=0.1, steps=2),
             "noise2music": lambda p: p(prompts, seconds=0.05, steps=1, casc_steps=1)}  # two stages, one warning each
    for name, call in calls.items():
        with pytest.warns(PromptWarning) as record:
            audio = call(pipelines[name])
        assert audio.shape[0] == len(prompts) and torch.isfinite(audio).all()
        found = sorted(str(w.message)[:10] for w in record if issubclass(w.category, PromptWarning))
        assert found == [f"prompts[{i}]" for i in range(1, 6)], (name, found)
