"""Text encoders: one interface, HF wrappers loaded offline from tiny saved models, the shipped course encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import pretrained
from course_lib.data import music, sound_events
from course_lib.text import (
    CourseEncoderConfig,
    CourseTextEncoder,
    TextEmbedding,
    load_text_encoder,
    train_tokenizer,
)
from course_lib.text.captions import (
    HELD_OUT_WORDS,
    content_key,
    draw_attributes,
    has_held_out_word,
    measure_text_encoder,
    paraphrase,
    words,
)
from course_lib.text.train_course_encoder import main as train_main
from course_lib.text.train_course_encoder import supervised_info_nce

SHORT = "a bell rings twice"
LONG = "three loud high-pitched beeps while rain falls, then an upbeat piano melody in C major at 120 bpm"
CORPUS = [SHORT, LONG, "a dog barks once", "wind blows in gusts over the sound of rain", "two beeps"] * 4


# ---- tiny Hugging Face models, built from configs and saved locally (no download) ---------------------------


def _tiny_hf_folder(kind: str, folder) -> str:
    from course_lib.text.hf import save_random_tiny

    return str(save_random_tiny(kind, folder, CORPUS))


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    return {k: _tiny_hf_folder(k, tmp_path_factory.mktemp(k)) for k in ("t5", "clip", "bert")}


@pytest.mark.parametrize("kind", ["t5", "clip", "bert"])
def test_hf_encoder_loads_offline_frozen_with_shapes_and_mask(hf_folders, kind):
    enc = load_text_encoder(f"{kind}:{hf_folders[kind]}", local_files_only=True)
    assert enc.dim == 16 and enc.name == f"{kind}:{hf_folders[kind]}"
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    enc.train()  # a parent calling .train() must not switch dropout on in a frozen encoder
    assert not enc.training and not enc.model.training
    emb = enc.encode([SHORT, LONG])
    n_short = len(enc.tokenizer(SHORT)["input_ids"])
    n_long = len(enc.tokenizer(LONG)["input_ids"])
    assert emb.embeddings.shape == (2, n_long, 16) and emb.embeddings.dtype == torch.float32
    assert emb.mask.dtype == torch.bool and emb.mask.sum(1).tolist() == [n_short, n_long]
    assert torch.all(emb.embeddings[0, n_short:] == 0) and emb.embeddings[0, :n_short].abs().sum() > 0
    again = load_text_encoder(f"{kind}:{hf_folders[kind]}", local_files_only=True).encode([SHORT, LONG])
    assert torch.equal(emb.embeddings, again.embeddings)  # deterministic, same weights from disk


@pytest.mark.parametrize("kind", ["t5", "clip", "bert"])
def test_hf_encoder_is_padding_invariant_and_handles_the_null_caption(hf_folders, kind):
    enc = load_text_encoder(f"{kind}:{hf_folders[kind]}", local_files_only=True)
    alone = enc.encode([SHORT])
    batched = enc.encode(["", SHORT, LONG])
    n = int(alone.mask.sum())
    torch.testing.assert_close(batched.embeddings[1, :n], alone.embeddings[0, :n], atol=1e-5, rtol=1e-4)
    assert batched.is_null.tolist() == [True, False, False]
    assert torch.all(batched.embeddings[0] == 0)


def test_hf_loading_errors_name_what_was_expected(hf_folders, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_text_encoder(f"t5:{missing}", local_files_only=True)
    with pytest.raises(ValueError, match="'bert' model"):
        load_text_encoder(f"t5:{hf_folders['bert']}", local_files_only=True)
    weights_only = tmp_path / "weights_only"  # transformers would build an empty tokenizer here, silently
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((Path(hf_folders["t5"]) / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_text_encoder(f"t5:{weights_only}", local_files_only=True)
    with pytest.raises(ValueError, match="unknown text encoder kind"):
        load_text_encoder("gpt:whatever")
    with pytest.raises(ValueError, match="needs a model"):
        load_text_encoder("clip")


# ---- the interface -------------------------------------------------------------------------------------


def _tiny_course_encoder(seed: int = 0) -> CourseTextEncoder:
    torch.manual_seed(seed)
    tok = train_tokenizer(CORPUS, vocab_size=120)
    return CourseTextEncoder(CourseEncoderConfig(vocab_size=tok.get_vocab_size(), dim=16, n_heads=2), tok)


def test_encode_rejects_bad_input_with_clear_errors():
    enc = _tiny_course_encoder()
    with pytest.raises(TypeError, match="wrap it as"):
        enc.encode(SHORT)
    with pytest.raises(ValueError, match="empty list"):
        enc.encode([])
    with pytest.raises(TypeError, match="not str"):
        enc.encode([SHORT, 3])
    with pytest.raises(ValueError, match="mask must be a bool"):
        TextEmbedding(torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


def test_null_caption_is_a_zero_row_with_an_all_false_mask():
    enc = _tiny_course_encoder()
    only_null = enc.encode(["", "   "])
    assert only_null.embeddings.shape == (2, 1, 16) and not only_null.mask.any()
    assert torch.all(only_null.embeddings == 0) and torch.all(only_null.pooled() == 0)
    mixed = enc.encode([SHORT, ""])
    assert mixed.is_null.tolist() == [False, True]
    torch.testing.assert_close(mixed.embeddings[:1], enc.encode([SHORT]).embeddings)


def test_pooled_is_the_mean_over_real_tokens():
    e = torch.arange(12.0).view(1, 3, 4)
    emb = TextEmbedding(e, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(emb.pooled(), (e[0, 0] + e[0, 1])[None] / 2)


def test_course_encoder_save_load_round_trip_and_unfreeze(tmp_path):
    enc = _tiny_course_encoder()
    enc.save_pretrained(tmp_path)
    back = CourseTextEncoder.from_pretrained(tmp_path)
    torch.testing.assert_close(back.encode([SHORT, LONG]).embeddings, enc.encode([SHORT, LONG]).embeddings)
    assert json.loads((tmp_path / "config.json").read_text())["dim"] == 16
    with pytest.raises(FileNotFoundError, match="missing"):
        CourseTextEncoder.from_pretrained(tmp_path / "nothing_here")
    back.unfreeze().encode([SHORT]).embeddings.sum().backward()  # trainable when asked
    assert back.embed.weight.grad is not None


def test_pruned_tokenizer_maps_unknown_words_to_one_unk():
    tok = train_tokenizer(CORPUS, vocab_size=120)
    assert tok.encode("a shrill bell").tokens == ["a", "[UNK]", "bell"]
    assert tok.encode("120 bells").tokens[:3] == ["1", "2", "0"]  # digits one by one


# ---- captions, paraphrases and the training objective ---------------------------------------------------


def test_draw_attributes_matches_what_generate_clip_draws():
    for i in (0, 5, 13):
        clip = sound_events.generate_clip(i, "test", clip_seconds=4.0, sample_rate=16000)
        assert content_key(draw_attributes("sound_events", "test", i)) == content_key(clip.attributes)
        clip = music.generate_clip(i, "test", clip_seconds=1.0, sample_rate=16000)
        assert content_key(draw_attributes("music", "test", i)) == content_key(clip.attributes)


def test_paraphrases_keep_or_use_held_out_words_as_asked():
    a = draw_attributes("music", "train", 3)
    seen = [paraphrase(a, [0, k]) for k in range(30)]
    assert len(set(seen)) > 5 and not any(has_held_out_word(t) for t in seen)
    unseen = paraphrase(a, 7, unseen=True)
    assert has_held_out_word(unseen) and words(unseen)
    assert paraphrase(a, 7, unseen=True) == unseen  # reproducible from the seed


def test_supervised_info_nce_matches_its_closed_form():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    tau = 0.5
    # each anchor: its positive at cosine 1, two negatives at cosine 0 -> -log(e^(1/tau) / (e^(1/tau) + 2))
    expected = math.log(1 + 2 * math.exp(-1 / tau))
    assert supervised_info_nce(z, ["a", "a", "b", "b"], tau).item() == pytest.approx(expected, rel=1e-6)


def test_training_entry_point_writes_a_loadable_encoder_and_card(tmp_path):
    out = tmp_path / "enc"
    assert train_main(["--out", str(out), "--steps", "2", "--batch", "8", "--pool", "12", "--eval-every", "1",
                       "--eval-n", "3", "--dim", "32"]) == 0
    enc = load_text_encoder(f"course:{out}")
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["command"].startswith("python -m course_lib.text.train_course_encoder")
    assert card["parameters"] == sum(p.numel() for p in enc.parameters())
    assert set(card["evaluation"]["metrics"]) >= {"paraphrase_cos", "different_cos", "retrieval_acc"}


# ---- the shipped course encoder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return load_text_encoder("course")


@pytest.mark.float_path
def test_shipped_course_encoder_reproduces_its_card(shipped):
    card = pretrained.card("text_encoder_course")
    assert card["parameters"] == sum(p.numel() for p in shipped.parameters())
    measured = measure_text_encoder(shipped, **card["evaluation"]["settings"])
    assert pretrained.compare_with_card("text_encoder_course", measured) == []
    # and what the card claims is worth having: paraphrases close, other content far, retrieval mostly right
    assert measured["paraphrase_cos"] > measured["different_cos"] + 0.5
    assert measured["retrieval_acc"] > 0.8 and measured["class_retrieval_acc"] > 0.95


def test_shipped_course_encoder_never_saw_the_held_out_words(shipped):
    for word in HELD_OUT_WORDS:
        assert shipped.tokenizer.encode(word).tokens == ["[UNK]"], word
    assert shipped.tokenizer.encode("a high-pitched bell, 120 bpm").tokens == [
        "a", "high", "-", "pitched", "bell", ",", "1", "2", "0", "bpm"]
    assert shipped.encode([SHORT]).embeddings.shape[-1] == shipped.dim == 128


def test_shipped_course_encoder_ranks_a_paraphrase_above_other_sounds(shipped):
    sim = shipped.similarity(["a bell rings twice"],
                             ["two bell strikes", "a dog barks twice", "a piano melody with drums"])
    assert sim.argmax().item() == 0 and np.isfinite(sim.numpy()).all()
