"""Paired KL, the audio embedders (course CNN and Hugging Face, offline) and the text–audio agreement model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.audio import resample
from course_lib.metrics.agreement import (
    AgreementConfig,
    AgreementModel,
    HFClapAgreement,
    agreement_score,
    info_nce_loss,
    load_agreement_model,
    measure_agreement,
    retrieval_metrics,
    train_agreement_model,
)
from course_lib.metrics.embeddings import (
    AudioClassifierConfig,
    CourseAudioClassifier,
    HFAudioEmbedder,
    course_clips,
    course_label_set,
    load_audio_embedder,
    save_random_tiny_audio,
    train_course_classifier,
)
from course_lib.metrics.kl import classifier_kl, paired_kl

SMALL = {"channels": (64, 64), "embed_dim": 32}  # a small audio tower for fast tests


# ---- paired KL ---------------------------------------------------------------------------------------------


def test_kl_is_zero_for_identical_distributions():
    p = torch.softmax(torch.randn(6, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    # eps is added to p_gen only, as in audiocraft: identical rows read sum_c p log(p / (p + eps)) ~ -C * eps
    assert paired_kl(p, p) == pytest.approx(-12 * 1e-6, rel=1e-3)
    assert paired_kl(p, p, eps=0.0) == pytest.approx(0.0, abs=1e-12)
    logits = torch.randn(4, 5)
    assert abs(paired_kl(logits, logits, from_logits=True)) <= 5 * 1e-6


def test_kl_known_values_and_direction():
    p, q = torch.tensor([[0.2, 0.8]], dtype=torch.float64), torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    assert paired_kl(p, q, eps=0.0) == pytest.approx(0.2 * math.log(0.2 / 0.6) + 0.8 * math.log(0.8 / 0.4), rel=1e-12)
    # KL(p_ref || p_gen): a reference that is sure, a generated clip that hesitates costs log 2 ...
    sure, unsure = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    assert paired_kl(sure, unsure) == pytest.approx(math.log(2), rel=1e-5)
    # ... while the other direction puts mass where the reference has none: 0.5 log(0.5 / eps) dominates
    assert paired_kl(unsure, sure) == pytest.approx(0.5 * math.log(0.5 / 1.000001) + 0.5 * math.log(0.5 / 1e-6),
                                                    rel=1e-5)
    # the mean over pairs, and the per-pair values
    both = paired_kl(torch.cat([sure, unsure]), torch.cat([unsure, unsure]), eps=0.0, reduction="none")
    assert both.shape == (2,) and both[0] == pytest.approx(math.log(2)) and both[1] == pytest.approx(0.0)


def test_kl_matches_audiocraft_formula_on_logits():
    g = torch.Generator().manual_seed(1)
    ref_logits = torch.randn(8, 10, generator=g, dtype=torch.float64)
    gen_logits = torch.randn(8, 10, generator=g, dtype=torch.float64)
    p_ref, p_gen = ref_logits.softmax(1), gen_logits.softmax(1)
    # audiocraft metrics/kld.py: kl_div((pred_probs + eps).log(), target_probs).sum(-1), averaged over pairs
    expected = F.kl_div((p_gen + 1e-6).log(), p_ref, reduction="none").sum(-1).mean()
    assert paired_kl(ref_logits, gen_logits, from_logits=True) == pytest.approx(float(expected), rel=1e-9)
    assert paired_kl(p_ref, p_gen) == pytest.approx(float(expected), rel=1e-5)


def test_multilabel_kl_is_a_sum_of_bernoulli_kls():
    p, q = torch.tensor([[0.5, 0.9]]), torch.tensor([[0.25, 0.9]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # the second class agrees: 0
    assert paired_kl(p, q, multilabel=True) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("ref, gen, match", [
    (torch.full((2, 3), 1 / 3), torch.full((3, 3), 1 / 3), "same shape"),
    (torch.tensor([[0.5, 0.2]]), torch.tensor([[0.5, 0.5]]), "row 0 of p_ref sums to 0.7"),
    (torch.tensor([[1.5, -0.5]]), torch.tensor([[0.5, 0.5]]), "outside"),
    (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), "2-D"),
    (torch.tensor([[np.nan, 1.0]]), torch.tensor([[0.5, 0.5]]), "NaN"),
])
def test_kl_errors(ref, gen, match):
    with pytest.raises(ValueError, match=match):
        paired_kl(ref, gen)


# ---- the course classifier ---------------------------------------------------------------------------------


def _tiny_classifier(seed: int = 0) -> CourseAudioClassifier:
    torch.manual_seed(seed)
    return CourseAudioClassifier(AudioClassifierConfig(classes=("x", "y", "z"), **SMALL)).eval()


def test_classifier_shapes_and_input_forms():
    model = _tiny_classifier()
    wav = 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(0))
    emb = model.embed(wav)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32 and model.dim == 32
    torch.testing.assert_close(model.embed(wav[:, None]), emb)  # (B, 1, T)
    torch.testing.assert_close(model.embed(wav[0]), emb[:1])  # (T,)
    torch.testing.assert_close(model.embed(wav.numpy()), emb)  # NumPy
    torch.testing.assert_close(model.embed(wav[1:2]), emb[1:2])  # eval mode: a clip ignores its batch mates
    mixed = model.embed([wav[0], wav[1, :12000], wav[2]])  # a list of clips of different lengths, in order
    assert mixed.shape == (3, 32)
    torch.testing.assert_close(mixed[[0, 2]], emb[[0, 2]])
    proba = model.predict_proba(wav)
    assert proba.shape == (3, 3)
    torch.testing.assert_close(proba.sum(1), torch.ones(3))
    assert set(model.predict(wav)) <= {"x", "y", "z"}
    # another sample rate is resampled to the model's 16 kHz first
    slow = resample(wav, 16000, 8000)
    torch.testing.assert_close(model.embed(slow, 8000), model.embed(resample(slow, 8000, 16000)))


@pytest.mark.parametrize("bad, match", [(torch.full((1, 16000), float("nan")), "NaN"), (torch.zeros(1, 100), "too short"),
                                        (torch.zeros(1, 1, 1, 16000), "expected audio"), ("noise", "tensor")])
def test_classifier_rejects_bad_audio(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _tiny_classifier().embed(bad)


def test_classifier_save_load_round_trip(tmp_path):
    model = _tiny_classifier(seed=3)
    wav = 0.1 * torch.randn(2, 16000)
    folder = model.save_pretrained(tmp_path / "cls")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    loaded = CourseAudioClassifier.from_pretrained(folder)
    assert loaded.config == model.config and not loaded.training
    torch.testing.assert_close(loaded.embed(wav), model.embed(wav), rtol=0, atol=0)
    torch.testing.assert_close(loaded.predict_proba(wav), model.predict_proba(wav), rtol=0, atol=0)
    via_spec = load_audio_embedder(f"course:{folder}")
    torch.testing.assert_close(via_spec.embed(wav), model.embed(wav), rtol=0, atol=0)
    assert load_audio_embedder(model) is model
    with pytest.raises(FileNotFoundError, match="config.json"):
        CourseAudioClassifier.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown audio embedder spec"):
        load_audio_embedder("vggish")


@pytest.fixture(scope="module")
def trained_classifier():
    config = AudioClassifierConfig(classes=course_label_set(music=False), **SMALL)
    return train_course_classifier(n_per_class=3, steps=60, music=False, eval_per_class=2, config=config,
                                   clip_seconds=1.5)


def test_short_training_learns_and_kl_sees_the_class(trained_classifier):
    model, metrics = trained_classifier
    assert metrics["loss_last"] < 0.5 * metrics["loss_first"]
    assert metrics["test_accuracy"] >= 0.3  # 24 held-out clips; chance is 1/12 (0.5 to 0.63 over seeds 0-2)
    # KL with this classifier: pairs of the same class are closer than pairs of different classes
    audio, labels, _ = course_clips("test", 2, 1.5, start=100, music=False)
    first, second = audio[:12], audio[12:]  # the same 12 classes in the same order, different clips
    same = classifier_kl(model, first, second, 16000)
    other = classifier_kl(model, first, np.roll(second, 1, axis=0), 16000)
    assert other["kl"] > 1.5 * same["kl"]
    assert same["kl_both"] == pytest.approx(same["kl"] + same["kl_reverse"])


# ---- Hugging Face models, tiny and offline -----------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    return {kind: save_random_tiny_audio(kind, tmp_path_factory.mktemp(kind)) for kind in ("ast", "wav2vec2", "clap")}


def test_hf_classifier_loads_offline_and_embeds(hf_folders):
    emb = HFAudioEmbedder.from_pretrained(hf_folders["ast"], local_files_only=True)
    assert emb.kind == "classifier" and emb.classes == ("a", "b", "c") and emb.sample_rate == 16000
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    e = emb.embed(wav)
    assert e.shape == (2, emb.dim) and emb.dim == 32
    proba = emb.predict_proba(wav)
    assert proba.shape == (2, 3)
    torch.testing.assert_close(proba.sum(1), torch.ones(2))
    again = load_audio_embedder(f"hf:{hf_folders['ast']}", local_files_only=True)  # same weights from disk
    torch.testing.assert_close(again.embed(wav), e)
    assert paired_kl(proba, again.predict_proba(wav)) == pytest.approx(0.0, abs=1e-5)


def test_hf_encoder_and_clap_audio_tower(hf_folders):
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    w2v = HFAudioEmbedder.from_pretrained(hf_folders["wav2vec2"], local_files_only=True)
    assert w2v.kind == "encoder" and w2v.classes is None and w2v.embed(wav).shape == (2, 32)
    with pytest.raises(NotImplementedError, match="no classifier head"):
        w2v.predict_proba(wav)
    clap = HFAudioEmbedder.from_pretrained(hf_folders["clap"], local_files_only=True)
    assert clap.kind == "clap" and clap.sample_rate == 48000
    e = clap.embed(wav, 16000)  # resampled to 48 kHz for the model
    assert e.shape == (2, 16)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))


def test_hf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        HFAudioEmbedder.from_pretrained(tmp_path / "missing", local_files_only=True)


# ---- contrastive agreement ---------------------------------------------------------------------------------


def test_info_nce_known_values():
    eye = torch.eye(5)
    assert float(info_nce_loss(eye, temperature=0.01)) < 1e-10  # perfectly diagonal, sharp: ~0
    assert float(info_nce_loss(torch.full((5, 5), 0.3), 0.07)) == pytest.approx(math.log(5), rel=1e-6)  # uniform
    # 2x2, temperature 1: each row is a softmax over (1, 0): -log(e / (e + 1))
    assert float(info_nce_loss(torch.eye(2), 1.0)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # an asymmetric matrix: the loss is the mean of the row-wise and column-wise cross-entropies
    s = torch.tensor([[1.0, 0.5], [0.0, 0.2]])
    rows = -(torch.log_softmax(s, 1).diagonal()).mean()
    cols = -(torch.log_softmax(s, 0).diagonal()).mean()
    assert float(info_nce_loss(s, 1.0)) == pytest.approx(float(0.5 * (rows + cols)), rel=1e-6)
    torch.testing.assert_close(info_nce_loss(s, 1.0, positives=torch.eye(2, dtype=torch.bool)), info_nce_loss(s, 1.0))
    assert float(info_nce_loss(s, 1.0, positives=torch.ones(2, 2, dtype=torch.bool))) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="square"):
        info_nce_loss(torch.zeros(2, 3))


def test_retrieval_metrics_on_a_hand_made_matrix():
    s = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.9], [0.0, 0.1, 0.7]])
    m = retrieval_metrics(s, groups=["a", "b", "b"])
    assert m["recall_at_1"] == pytest.approx(2 / 3) and m["recall_at_1_text"] == pytest.approx(2 / 3)
    assert m["pair_accuracy"] == pytest.approx(5 / 6) and m["recall_at_1_group"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def trained_agreement():
    config = AgreementConfig(audio=AudioClassifierConfig(classes=(), **SMALL), embed_dim=32)
    return train_agreement_model(n_per_class=3, steps=40, batch_size=32, eval_per_class=0, config=config,
                                 clip_seconds=1.5)


def test_agreement_ranks_matching_pairs_above_mismatched_on_held_out_clips(trained_agreement):
    model, metrics = trained_agreement
    assert metrics["loss_last"] < 0.5 * metrics["loss_first"]
    held_out = measure_agreement(model, "test", n_per_class=2, clip_seconds=1.5)  # 36 unseen clips and captions
    assert held_out["pair_accuracy"] > 0.75  # chance: 0.5 (0.84 to 0.89 over seeds 0-1)
    assert held_out["matched_mean"] > held_out["mismatched_mean"] + 0.2
    assert held_out["recall_at_1_group"] > 3 / 18
    audio, labels, clips = course_clips("test", 1, 1.5, start=50)
    captions = [c.caption for c in clips]
    matched = agreement_score(model, audio, captions)
    mismatched = agreement_score(model, audio, captions[1:] + captions[:1])  # every clip with another class's caption
    assert matched.shape == (18,) and (matched.abs() <= 1 + 1e-6).all()
    assert (matched > mismatched).float().mean() > 0.7
    with pytest.raises(ValueError, match="one caption per clip"):
        agreement_score(model, audio, captions[:3])


def test_agreement_save_load_round_trip(trained_agreement, tmp_path):
    model, _ = trained_agreement
    folder = model.save_pretrained(tmp_path / "agree")
    loaded = load_agreement_model(f"course:{folder}")
    assert isinstance(loaded, AgreementModel) and loaded.config == model.config
    assert loaded.temperature == pytest.approx(model.temperature)
    audio, _, clips = course_clips("test", 1, 1.5, music=False)
    captions = [c.caption for c in clips]
    torch.testing.assert_close(agreement_score(loaded, audio, captions), agreement_score(model, audio, captions),
                               rtol=0, atol=0)


def test_hf_clap_agreement_offline(hf_folders):
    clap = HFClapAgreement.from_pretrained(hf_folders["clap"], local_files_only=True)
    wav = 0.1 * torch.randn(3, 16000, generator=torch.Generator().manual_seed(2))
    captions = ["a dog barks twice", "a bell rings", "rain falls"]
    score = agreement_score(clap, wav, captions, sample_rate=16000)
    assert score.shape == (3,)
    a, t = clap.embed_audio(wav, 16000), clap.embed_text(captions)
    torch.testing.assert_close(score, (a * t).sum(1))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    assert load_agreement_model(clap) is clap


def test_data_version_2_labels_clips_and_paraphrases():
    from course_lib.data import music_sf2
    from course_lib.metrics.agreement import course_captions
    from course_lib.metrics.embeddings import course_clips

    labels = course_label_set(version=2)
    assert labels[:12] == course_label_set()[:12] and labels[12:] == tuple(f"music/{i}" for i in music_sf2.INSTRUMENTS)
    audio, names, clips = course_clips("test", 1, 1.0, version=2)
    assert audio.shape == (20, 16_000) and sorted(names) == sorted(labels)
    assert {c.attributes["generator"] for c in clips} == {"sound_events/v2", "music/v2"}
    _, _, heldout = course_clips("test", 1, 1.0, version=2, grammar="heldout")
    assert [c.attributes["caption_grammar"] for c in heldout] == ["heldout"] * 20
    wordings = course_captions(clips, 3)
    assert all(w[0] == c.caption for w, c in zip(wordings, clips))
    assert sum(len(set(w)) == 3 for w in wordings) >= 18  # new wordings of the same facts, where the grammar has them
    with pytest.raises(ValueError, match="version=2"):
        course_clips("test", 1, 1.0, grammar="heldout")  # version 1 has no held-out grammar
