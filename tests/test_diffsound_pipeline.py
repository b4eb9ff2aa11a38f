"""The Diffsound text-to-sound pipeline (both token decoders) and its card measurement.

Every model is tiny and random, saved to temporary folders: a mel VQ-VAE with the shipped one's layout
(16 kHz, hop 256, 80 mels, 8x down: 10-row grids of 256 codes), a Diffsound decoder with T = 10, a one-codebook
AR baseline and a MelGAN; only the shipped course text encoder is loaded."""

from __future__ import annotations

import pytest
import torch

from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig
from course_lib.data.probes import EventClassifier, EventClassifierConfig
from course_lib.diffusion import DiffsoundConfig, DiffsoundModel
from course_lib.lm import AudioLM, AudioLMConfig
from course_lib.lm.sampling import generate
from course_lib.pipelines import DiffsoundPipeline, grid_to_sequence, sequence_to_grid
from course_lib.pipelines.diffsound import load_decoder
from course_lib.pretrained import measures
from course_lib.pretrained.measures import measure_diffsound
from course_lib.text import load_text_encoder
from course_lib.vocoders import GriffinLimVocoder, MelGAN, MelGANConfig

SR = 16_000
PROMPTS = ["a bell rings twice", "rain falls"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffsound_pipeline")
    torch.manual_seed(0)
    vqvae = MelVQVAE(MelVQVAEConfig(channels=4, ch_mult=(1, 2, 2, 4), embed_dim=8, codebook_size=256,
                                    kmeans_init=False)).eval()
    diffsound = DiffsoundModel(DiffsoundConfig(dim=32, num_layers=1, num_heads=2, mlp_ratio=2.0, max_cols=16,
                                               num_steps=10)).eval()
    ar = AudioLM(AudioLMConfig(n_q=1, codebook_size=256, dim=32, num_layers=1, num_heads=2, text_dim=128,
                               max_len=160, pattern="parallel", mlp_ratio=2.0, positional="learned")).eval()
    melgan = MelGAN(MelGANConfig(sample_rate=SR, ngf=2, num_scales=1, disc_channels=4, disc_layers=1)).eval()
    for name, model in (("vqvae", vqvae), ("diffsound", diffsound), ("ar", ar), ("melgan", melgan)):
        model.save_pretrained(root / name)
    return {"root": root, "vqvae": vqvae, "diffsound": diffsound, "ar": ar, "melgan": melgan,
            "text": load_text_encoder("course")}


def pipe_for(parts, decoder, vocoder="griffin_lim"):
    root = parts["root"]
    return DiffsoundPipeline.from_pretrained(decoder=root / decoder, vqvae=root / "vqvae",
                                             vocoder=vocoder if vocoder == "griffin_lim" else root / vocoder,
                                             text_encoder="course", griffin_lim_iters=4)


@pytest.fixture(scope="module")
def diff_pipe(parts):
    return pipe_for(parts, "diffsound")


@pytest.fixture(scope="module")
def ar_pipe(parts):
    return pipe_for(parts, "ar", vocoder="melgan")


def test_seconds_to_columns_to_samples_arithmetic(diff_pipe, ar_pipe):
    # T = round(s * 16000); frames = 1 + T // 256; W = ceil(frames / 8)
    for seconds, frames, cols in ((2.0, 126, 16), (1.0, 63, 8), (0.5, 32, 4), (0.3, 19, 3)):
        assert (diff_pipe.num_frames(seconds), diff_pipe.num_cols(seconds)) == (frames, cols)
    assert diff_pipe.grid_rows == 10 and diff_pipe.max_cols == 16 and ar_pipe.max_cols == 16  # max_len 160 / 10
    assert diff_pipe.max_seconds == pytest.approx((16 * 8 * 256 - 1) / SR)
    assert diff_pipe.num_cols(diff_pipe.max_seconds) == 16
    assert not diff_pipe.is_autoregressive and ar_pipe.is_autoregressive


def test_both_decoders_give_grids_mels_and_audio_of_the_right_shapes(diff_pipe, ar_pipe):
    for pipe in (diff_pipe, ar_pipe):
        tokens = pipe.generate_tokens(PROMPTS, seconds=0.5, seed=1)
        assert tokens.shape == (2, 10, 4) and tokens.dtype == torch.long
        assert 0 <= int(tokens.min()) and int(tokens.max()) < 256  # no [MASK] left
        assert torch.equal(tokens, pipe.generate_tokens(PROMPTS, seconds=0.5, seed=1))  # seeded
        assert not torch.equal(tokens, pipe.generate_tokens(PROMPTS, seconds=0.5, seed=2))
        mel = pipe.tokens_to_mel(tokens, seconds=0.5)
        assert mel.shape == (2, 80, 32)  # cropped to the clip's 32 frames (the grid decodes to 4 x 8 = 32)
        assert pipe.tokens_to_mel(tokens).shape == (2, 80, 32)
        assert pipe.vocode(mel).shape == (2, 1, 32 * 256)
        audio = pipe(PROMPTS, seconds=0.3, seed=1)
        assert audio.shape == (2, 1, 4800) and audio.dtype == torch.float32 and audio.abs().max() <= 1.0
    assert isinstance(diff_pipe.vocoder, GriffinLimVocoder) and isinstance(ar_pipe.vocoder, MelGAN)


def test_the_diffsound_pipeline_samples_the_decoders_own_generate(diff_pipe, parts):
    text = parts["text"].encode(PROMPTS)
    expected = parts["diffsound"].generate(text.embeddings, text.mask, 4, steps=5, cfg_scale=2.0, truncation=0.9,
                                           generator=torch.Generator().manual_seed(7))
    got = diff_pipe.generate_tokens(PROMPTS, seconds=0.5, steps=5, cfg_scale=2.0, truncation=0.9, seed=7)
    assert torch.equal(got, expected)


def test_the_ar_pipeline_generates_time_major_sequences(ar_pipe, parts):
    text = parts["text"].encode(PROMPTS)
    seq = generate(parts["ar"], text.embeddings, text.mask, 40, top_k=None, top_p=0.9, cfg_scale=2.0,
                   generator=torch.Generator().manual_seed(7))
    got = ar_pipe.generate_tokens(PROMPTS, seconds=0.5, cfg_scale=2.0, truncation=0.9, seed=7)
    assert torch.equal(got, sequence_to_grid(seq, 10)) and torch.equal(grid_to_sequence(got), seq)
    greedy = ar_pipe.generate_tokens(PROMPTS, seconds=0.5, top_k=1, seed=3)
    assert torch.equal(greedy, ar_pipe.generate_tokens(PROMPTS, seconds=0.5, top_k=1, seed=4))  # no randomness


def test_tokenize_is_the_vqvae_encoder(diff_pipe, parts):
    torch.manual_seed(0)
    audio = 0.3 * torch.randn(2, 1, 8000)
    tokens = diff_pipe.tokenize(audio)
    vq = parts["vqvae"]
    assert tokens.shape == (2, 10, 4)  # 0.5 s: 32 frames
    assert torch.equal(tokens, vq.encode(vq.features(audio)))
    assert torch.equal(diff_pipe.tokenize(audio[:, 0].numpy(), sample_rate=SR), tokens)


def test_load_decoder_tells_the_two_decoders_apart(parts):
    assert isinstance(load_decoder(parts["root"] / "diffsound"), DiffsoundModel)
    assert isinstance(load_decoder(str(parts["root"] / "ar")), AudioLM)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a shipped model"):
        load_decoder("no_such_decoder")


def test_errors_say_what_was_expected(diff_pipe, ar_pipe, parts):
    with pytest.raises(ValueError, match="non-empty list of captions"):
        diff_pipe([], seconds=0.5)
    with pytest.raises(TypeError, match="wrap it as"):
        diff_pipe("a bell", seconds=0.5)
    with pytest.raises(ValueError, match="seconds must be a positive number"):
        diff_pipe(["a bell"], seconds=0)
    with pytest.raises(ValueError, match=r"needs 24 token columns, more than this decoder generates \(16\): at most "
                                         r"2.05 s"):
        diff_pipe(["a bell"], seconds=3.0)
    with pytest.raises(ValueError, match="steps is for the Diffsound decoder"):
        ar_pipe(["a bell"], seconds=0.5, steps=5)
    with pytest.raises(ValueError, match="top_k is for the AR baseline"):
        diff_pipe(["a bell"], seconds=0.5, top_k=5)
    with pytest.raises(ValueError, match=r"truncation must be a probability mass in \(0, 1\]"):
        diff_pipe(["a bell"], seconds=0.5, truncation=1.5)
    with pytest.raises(ValueError, match="22050 Hz but the VQ-VAE runs at 16000 Hz; resample"):
        diff_pipe.tokenize(torch.zeros(1, 8000), sample_rate=22050)
    with pytest.raises(ValueError, match="mono"):
        diff_pipe.tokenize(torch.zeros(1, 2, 8000))
    with pytest.raises(ValueError, match=r"codes in \[0, 255\].*a \[MASK\] left"):
        diff_pipe.tokens_to_mel(torch.full((1, 10, 4), 256))
    vq, voc, text = parts["vqvae"], diff_pipe.vocoder, parts["text"]
    wide = AudioLM(AudioLMConfig(n_q=1, codebook_size=256, dim=32, num_layers=1, num_heads=2, text_dim=64))
    with pytest.raises(ValueError, match="128-d ones: use the text encoder the decoder was trained with"):
        DiffsoundPipeline(wide, vq, voc, text)
    with pytest.raises(ValueError, match="must have n_q=1"):
        DiffsoundPipeline(AudioLM(AudioLMConfig(n_q=4, dim=32, num_layers=1, num_heads=2, text_dim=128)), vq, voc,
                          text)
    with pytest.raises(ValueError, match="5-row grids but the VQ-VAE's grid has 10 rows"):
        DiffsoundPipeline(DiffsoundModel(DiffsoundConfig(grid_rows=5, dim=32, num_layers=1, num_heads=2)), vq, voc,
                          text)
    with pytest.raises(ValueError, match="another mel front end"):
        DiffsoundPipeline(parts["diffsound"], vq, GriffinLimVocoder(MelGANConfig().mel_config()), text)  # 22.05 kHz
    with pytest.raises(TypeError, match="decoder must be a DiffsoundModel or an AudioLM"):
        DiffsoundPipeline(vq, vq, voc, text)


def test_measure_diffsound_runs_for_both_decoders_and_is_deterministic(parts, monkeypatch):
    # an untrained class probe stands in for the real one (trained once per process, ~5-20 s): this test pins
    # the measurement's plumbing; the probes themselves are tested in test_probes.py
    torch.manual_seed(0)
    monkeypatch.setitem(measures._CLASSIFIERS, (1.0, SR), EventClassifier(EventClassifierConfig()).eval())
    vocoder = GriffinLimVocoder(parts["vqvae"].config.mel_config(), n_iter=4)
    kwargs = dict(n_prompts=2, seconds=1.0, vqvae=parts["vqvae"], vocoder=vocoder, text_encoder="course",
                  batch_size=1)
    keys = {"class_accuracy", "count_accuracy", "pitch_band_accuracy"}
    for decoder, extra in ((parts["diffsound"], {"steps": 4}), (parts["ar"], {})):
        first = measure_diffsound(decoder, **kwargs, **extra)
        # test clips 0-1: siren (pitched), bell (pitched, counted)
        assert set(first) == keys | {f"ceiling_{k}" for k in keys} | {"seconds_per_clip"}
        assert all(0.0 <= v <= 1.0 for k, v in first.items() if k != "seconds_per_clip")
        assert first["seconds_per_clip"] > 0
    again = measure_diffsound(parts["ar"], **kwargs)  # the same draws (seed + batch index) give the same rates
    assert {k: v for k, v in again.items() if k != "seconds_per_clip"} == \
           {k: v for k, v in first.items() if k != "seconds_per_clip"}
    with pytest.raises(ValueError, match="n_prompts must be a positive int"):
        measure_diffsound(parts["ar"], n_prompts=0)


def test_measure_diffsound_on_version_2_prompts_adds_the_heldout_grammar(parts, monkeypatch):
    # version 2: the prompts are v2 test captions, read by the version 2 class probe (an untrained stand-in here)
    torch.manual_seed(0)
    probe = EventClassifier(EventClassifierConfig()).eval()
    monkeypatch.setitem(measures._VERSION_PROBES, ("event", 2, 1.0, SR), probe)
    monkeypatch.setitem(measures._VERSION_PROBES, ("instrument", 2, 1.0, SR), probe)
    vocoder = GriffinLimVocoder(parts["vqvae"].config.mel_config(), n_iter=4)
    kwargs = dict(n_prompts=2, seconds=1.0, vqvae=parts["vqvae"], vocoder=vocoder,
                  text_encoder="course:text_encoder_v2", batch_size=1, timing=False, version=2)
    seen = measure_diffsound(parts["ar"], **kwargs)
    both = measure_diffsound(parts["ar"], heldout_grammar=True, **kwargs)
    heldout = {k for k in both if k.startswith("heldout_")}
    assert heldout and {k[len("heldout_"):] for k in heldout} <= {k for k in seen if not k.startswith("ceiling_")}
    assert {k: v for k, v in both.items() if k not in heldout} == seen  # the seen-grammar rates are unchanged
    # the held-out prompts are the same clips under other words, so each rate counts the same prompts
    clips = measures.prompt_clips("diffsound_ar_v2", {"n_prompts": 2, "seconds": 1.0, "version": 2})
    counts = measures.rate_counts(both, clips)
    assert set(counts) == set(both) and all(counts[f"heldout_{k}"] == counts[k] for k in seen if f"heldout_{k}" in both)
    with pytest.raises(ValueError, match="needs version=2"):
        measure_diffsound(parts["ar"], n_prompts=2, heldout_grammar=True)


def test_heldout_captions_use_words_no_training_caption_has():
    from course_lib.data import sound_events
    from course_lib.data.captions_v2 import HELD_OUT_WORDS

    seen = list(sound_events.generate_clips("test", 4, 1.0, SR, version=2))
    held = list(sound_events.generate_clips("test", 4, 1.0, SR, version=2, grammar="heldout"))
    for a, b in zip(seen, held):  # the same clip index synthesised twice by the same NumPy code: exact by construction
        assert a.attributes["class"] == b.attributes["class"] and torch.equal(torch.as_tensor(a.audio),
                                                                              torch.as_tensor(b.audio))
        assert a.caption != b.caption
    assert any(w in HELD_OUT_WORDS for c in held for w in c.caption.lower().replace(",", " ").split())


def test_from_pretrained_pairs_a_shipped_decoder_with_its_own_tokenizer_and_text_encoder(monkeypatch):
    from course_lib.pipelines import diffsound as ds

    loaded = {}
    monkeypatch.setattr(ds, "load_vqvae", lambda spec: loaded.setdefault("vqvae", spec) and (_ for _ in ()).throw(
        RuntimeError("stop")))
    for decoder, vqvae in (("diffsound_course", "mel_vqvae_course"), ("pretrained:diffsound_v2", "mel_vqvae_v2"),
                           ("diffsound_ar_v2", "mel_vqvae_v2")):
        loaded.clear()
        with pytest.raises(RuntimeError, match="stop"):
            DiffsoundPipeline.from_pretrained(decoder=decoder)
        assert loaded["vqvae"] == vqvae
    loaded.clear()
    with pytest.raises(RuntimeError, match="stop"):  # an explicit choice wins
        DiffsoundPipeline.from_pretrained(decoder="diffsound_v2", vqvae="some_folder")
    assert loaded["vqvae"] == "some_folder"
    assert ds.DECODER_TOOLS["diffsound_v2"][1] == "course:text_encoder_v2"
