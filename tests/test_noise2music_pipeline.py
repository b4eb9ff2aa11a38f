"""Noise2MusicPipeline and Noise2MusicStage with tiny random stages: shapes and lengths, determinism, what the
cascader is conditioned on at sampling, save/load in one call, clear errors, and the measures' keys."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from course_lib.audio import resample
from course_lib.diffusion import alpha_sigma
from course_lib.pipelines import Noise2MusicPipeline, Noise2MusicStage, Noise2MusicStageConfig
from course_lib.pipelines.audiogen import load_text
from course_lib.pipelines.noise2music import scale_to_peak, to_low_rate
from course_lib.pretrained import measures
from course_lib.train import get_family

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def random_stage(family: str, seed: int) -> Noise2MusicStage:
    """The tiny config's stage with random weights, its zero-initialised output conv made non-zero."""
    torch.manual_seed(seed)
    stage = Noise2MusicStage(get_family(family).load_config("tiny").model)
    torch.nn.init.normal_(stage.unet.out_conv.weight, std=0.05)
    return stage.eval()


@pytest.fixture(scope="module")
def text():
    return load_text("course")


@pytest.fixture(scope="module")
def pipe(text):
    return Noise2MusicPipeline(random_stage("n2m_generator", 0), random_stage("n2m_cascader", 1), text)


PROMPTS = ["a calm piano melody in C major at 80 bpm", "a tense organ piece in D minor at 140 bpm"]


# ---- shapes, lengths, determinism --------------------------------------------------------------------------------


def test_shapes_and_lengths(pipe):
    assert (pipe.low_rate, pipe.sample_rate) == (3200, 16000)
    low = pipe.generate_low(PROMPTS, seconds=0.301, steps=2)  # 963 samples: sampled at 976 (16 | 976), cropped
    assert low.shape == (2, 1, 963) and low.dtype == torch.float32 and low.abs().max() <= 1.0
    high = pipe.upsample(low, PROMPTS, steps=2)
    assert high.shape == (2, 1, 963 * 5) and high.abs().max() <= 1.0
    both = pipe.generate(PROMPTS, seconds=0.25, steps=2, casc_steps=2, return_low=True)
    assert [tuple(x.shape) for x in both] == [(2, 1, 800), (2, 1, 4000)]
    assert pipe(PROMPTS[:1], seconds=0.25, steps=2, casc_steps=2, sampler="ddpm").shape == (1, 1, 4000)
    audio, timing = pipe.time_generation(PROMPTS[:1], seconds=0.25, steps=2, casc_steps=2)
    assert audio.shape == (1, 1, 4000) and set(timing) == {"generator", "cascader", "total"}
    assert timing["total"] == pytest.approx(timing["generator"] + timing["cascader"])


def test_sampling_is_deterministic_given_the_seed(pipe):
    a = pipe.generate_low(PROMPTS, seconds=0.2, steps=3, seed=4)
    assert torch.equal(a, pipe.generate_low(PROMPTS, seconds=0.2, steps=3, seed=4))
    assert not torch.equal(a, pipe.generate_low(PROMPTS, seconds=0.2, steps=3, seed=5))
    assert not torch.equal(a, pipe.generate_low(PROMPTS, seconds=0.2, steps=3, seed=4, cfg_scale=1.0))
    b = pipe.upsample(a, PROMPTS, steps=2, seed=4)
    assert torch.equal(b, pipe.upsample(a, PROMPTS, steps=2, seed=4))
    assert not torch.equal(b, pipe.upsample(a, PROMPTS, steps=2, seed=4, aug_level=0.3))


def test_the_cascader_is_conditioned_on_the_upsampled_low_rate_audio(pipe):
    """At sampling, the U-Net's second input channel is the low-rate audio upsampled (clean at aug_level 0, q(c_s|c)
    noise of the cascader's schedule at aug_level s), and aug_level reaches it; the text is guided, not the audio."""
    calls = []
    unet = pipe.cascader.unet
    forward = unet.forward
    unet.forward = lambda x, t, text=None, text_mask=None, aug_level=None: (
        calls.append((x.clone(), text_mask, aug_level)) or forward(x, t, text, text_mask, aug_level))
    try:
        low = pipe.generate_low(PROMPTS, seconds=0.25, steps=2)
        pipe.upsample(low, PROMPTS, steps=2, cfg_scale=3.0, aug_level=0.0)
        up = resample(low, 3200, 16000)
        assert len(calls) == 4  # 2 steps x (conditional, unconditional)
        for x, _, level in calls:
            assert torch.equal(x[:, 1:], up) and torch.equal(level, torch.zeros(2))
        assert calls[0][1].any(dim=1).all() and not calls[1][1].any()  # the null text for the CFG branch
        calls.clear()
        pipe.upsample(low, PROMPTS, steps=1, cfg_scale=1.0, aug_level=0.25)
        (x, _, level), = calls
        a, s = alpha_sigma("linear", torch.tensor(0.25))
        eps = (x[:, 1:] - a * up) / s
        assert torch.equal(level, torch.full((2,), 0.25)) and 0.9 < float(eps.std()) < 1.1
    finally:
        del unet.forward


def test_a_residual_cascader_adds_its_sample_to_the_clean_upsampled_input(pipe, text):
    """model.residual: an untrained residual cascader (zero output conv, x0-prediction) is sinc upsampling,
    exactly; a trained one returns the upsampled input plus what it samples, at any augmentation level."""
    config = dataclasses.replace(pipe.cascader.config, residual=True)
    torch.manual_seed(2)
    fresh = Noise2MusicPipeline(None, Noise2MusicStage(config).eval(), text)
    low = 0.5 * to_low_rate(torch.randn(2, 4000), 16000)
    up = resample(low, 3200, 16000)
    assert torch.equal(fresh.upsample(low, PROMPTS, steps=3, aug_level=0.2), up.clamp(-1, 1))
    trained = Noise2MusicPipeline(None, Noise2MusicStage(config, pipe.cascader.unet).eval(), text)
    plain = pipe.upsample(low, PROMPTS, steps=2, seed=3)  # the same U-Net and draws, not residual
    high = plain - resample(resample(plain, 16000, 3200), 3200, 16000)
    out = trained.upsample(low, PROMPTS, steps=2, seed=3)
    assert torch.allclose(out, (up + high).clamp(-1, 1), atol=1e-6) and torch.equal(trained.high_band(plain), high)
    assert float(high.abs().max()) > 0.01  # the sample does add something
    t = torch.arange(8000) / 16000  # high_band keeps what lies above 1.6 kHz and removes what lies below
    low_tone, high_tone = torch.sin(2 * math.pi * 400 * t), 0.5 * torch.sin(2 * math.pi * 5000 * t)
    kept = trained.high_band((low_tone + high_tone)[None, None])[0, 0, 500:-500]
    assert float((kept - high_tone[500:-500]).abs().max()) < 0.01
    with pytest.raises(ValueError, match="multiple of 5"):
        trained.high_band(torch.zeros(1, 1, 4001))
    with pytest.raises(ValueError, match="residual"):
        dataclasses.replace(pipe.generator.config, residual=True).validate()


def test_the_residual_cascader_family_diffuses_the_clip_minus_its_upsampled_input():
    family = get_family("n2m_cascader")
    plain, residual = family.load_config("tiny"), family.load_config("tiny", ["model.residual=true"])
    audio = 0.3 * torch.randn(2, 1, round(plain.data.clip_seconds * 16000), generator=torch.Generator().manual_seed(0))
    batch = {"audio": audio, "caption": PROMPTS}
    a = family.training_inputs(batch, plain, torch.Generator().manual_seed(1))
    b = family.training_inputs(batch, residual, torch.Generator().manual_seed(1))
    assert torch.equal(b["x0"], a["x0"] - a["clean_cond"]) and torch.equal(b["cond"], a["cond"])


# ---- building and loading ----------------------------------------------------------------------------------------


def test_save_and_load_in_one_call(pipe, text, tmp_path):
    pipe.generator.save_pretrained(tmp_path / "gen")
    pipe.cascader.save_pretrained(tmp_path / "casc")
    loaded = Noise2MusicPipeline.from_pretrained(generator=tmp_path / "gen", cascader=str(tmp_path / "casc"),
                                                 text_encoder="course")
    assert loaded.generator.config == pipe.generator.config and loaded.cascader.config == pipe.cascader.config
    assert loaded.cascader.config.diffusion.schedule == "linear" and loaded.cascader.config.aug_level == 0.03
    kwargs = dict(seconds=0.25, steps=2, casc_steps=2, seed=3)
    assert torch.equal(loaded.generate(PROMPTS, **kwargs), pipe.generate(PROMPTS, **kwargs))
    only_casc = Noise2MusicPipeline.from_pretrained(generator=None, cascader=tmp_path / "casc")
    with pytest.raises(ValueError, match="this pipeline has no generator"):
        only_casc.generate_low(PROMPTS, seconds=0.25)
    # a bare UNet1D folder is refused by the stage loader, with the way out named
    pipe.generator.unet.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match=r"bare UNet1D folder.*Noise2MusicStage\(config, unet=unet\)"):
        Noise2MusicStage.from_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a shipped model"):
        Noise2MusicPipeline.from_pretrained(generator="no_such_model", cascader=None)


def test_bare_unets_with_their_diffusion_configs(pipe, text):
    gen_cfg = dataclasses.replace(pipe.generator.config.diffusion)
    bare = Noise2MusicPipeline(pipe.generator.unet, pipe.cascader.unet, text, gen_cfg, pipe.cascader.config.diffusion)
    assert isinstance(bare.generator, Noise2MusicStage) and bare.generator.unet is pipe.generator.unet
    kwargs = dict(seconds=0.25, steps=2, casc_steps=2, seed=1)
    assert torch.equal(bare.generate(PROMPTS, **kwargs), pipe.generate(PROMPTS, **kwargs))
    with pytest.raises(ValueError, match=r"bare UNet1D generator needs its GaussianDiffusionConfig \(gen_diffusion_cfg"):
        Noise2MusicPipeline(pipe.generator.unet, None, text)
    # a given config replaces the stage's own (here: 1 default step)
    one_step = Noise2MusicPipeline(pipe.generator, None, text, dataclasses.replace(gen_cfg, num_steps=1))
    assert one_step.generator.unet is pipe.generator.unet and one_step.generator.config.diffusion.num_steps == 1
    assert torch.equal(one_step.generate_low(PROMPTS, 0.25), pipe.generate_low(PROMPTS, 0.25, steps=1))


def test_stage_config_round_trip_and_checks():
    cfg = Noise2MusicStageConfig.cascader(aug_level=0.2)
    assert Noise2MusicStageConfig.from_dict(cfg.to_dict()) == cfg and cfg.output_rate == 16000
    assert Noise2MusicStageConfig().output_rate == 3200
    with pytest.raises(ValueError, match="unknown Noise2MusicStageConfig keys"):
        Noise2MusicStageConfig.from_dict({"stage": "generator", "rate": 1})
    with pytest.raises(ValueError, match="a generator needs unet.in_channels=1"):
        Noise2MusicStage(dataclasses.replace(cfg, stage="generator"))
    with pytest.raises(ValueError, match="aug_level: a diffusion time in"):
        Noise2MusicStageConfig.cascader(aug_level=1.0).validate()
    with pytest.raises(TypeError, match="unet must be a UNet1D"):
        Noise2MusicStage(cfg, unet=torch.nn.Linear(2, 2))


def test_to_low_rate():
    x = torch.randn(3, 16000) * 0.1
    low = to_low_rate(x, 16000)
    assert low.shape == (3, 1, 3200)
    assert torch.allclose(low, resample(scale_to_peak(x[:, None], 0.9), 16000, 3200))
    assert torch.equal(to_low_rate(x[0].numpy(), 16000, peak=None), resample(x[:1, None], 16000, 3200))


# ---- clear errors ------------------------------------------------------------------------------------------------


def test_clear_errors(pipe, text):
    with pytest.raises(TypeError, match="wrap it as"):
        pipe.generate_low("a piano", seconds=0.25)
    with pytest.raises(ValueError, match="non-empty list of captions"):
        pipe.generate_low([], seconds=0.25)
    with pytest.raises(ValueError, match="seconds must be a positive number"):
        pipe.generate_low(PROMPTS, seconds=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        pipe.generate_low(PROMPTS, seconds=0.25, sampler="euler")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        pipe.generate_low(PROMPTS, seconds=0.25, seed=-1)
    with pytest.raises(ValueError, match="low holds 3 clips but 2 prompts"):
        pipe.upsample(torch.zeros(3, 1, 800), PROMPTS)
    with pytest.raises(ValueError, match=r"mono audio \(T,\), \(B, T\) or \(B, 1, T\)"):
        pipe.upsample(torch.zeros(2, 2, 800), PROMPTS)
    with pytest.raises(TypeError, match="float audio"):
        pipe.upsample(torch.zeros(2, 1, 800, dtype=torch.long), PROMPTS)
    with pytest.raises(ValueError, match=r"aug_level must be a diffusion time in \[0, 1\)"):
        pipe.upsample(torch.zeros(2, 1, 800), PROMPTS, aug_level=1.5)
    with pytest.raises(ValueError, match="Noise2MusicPipeline needs a generator, a cascader or both"):
        Noise2MusicPipeline(None, None, text)
    with pytest.raises(ValueError, match="the generator argument holds a cascader stage"):
        Noise2MusicPipeline(pipe.cascader, None, text)
    other_rate = Noise2MusicStage(dataclasses.replace(pipe.cascader.config, low_rate=4000))
    with pytest.raises(ValueError, match="makes 3200 Hz audio but the cascader was trained on 4000 Hz"):
        Noise2MusicPipeline(pipe.generator, other_rate, text)
    narrow = Noise2MusicStage(dataclasses.replace(pipe.generator.config,
                                                  unet=dataclasses.replace(pipe.generator.config.unet, text_dim=64)))
    with pytest.raises(ValueError, match="64-d text embeddings but the text encoder gives 128-d"):
        Noise2MusicPipeline(narrow, None, text)
    with pytest.raises(TypeError, match="must be a Noise2MusicStage, a UNet1D or None"):
        Noise2MusicPipeline(torch.nn.Linear(1, 1), None, text)
    with pytest.raises(TypeError, match="GaussianDiffusionConfig"):
        Noise2MusicPipeline(pipe.generator, None, text, gen_diffusion_cfg={"schedule": "cosine"})


# ---- the measures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_probes():
    """Tiny instrument probes put in the measures' per-process cache, so the measures do not train full ones."""
    from course_lib.data.music_probes import train_instrument_classifier

    saved = dict(measures._INSTRUMENT_PROBES)
    for rate in (3200, 16000):
        measures._INSTRUMENT_PROBES[(1.0, rate)] = train_instrument_classifier(4, 0, 30, 1.0, rate)
        measures._INSTRUMENT_PROBES[(1.0, rate, 2)] = train_instrument_classifier(4, 0, 30, 1.0, rate, version=2)
    yield
    measures._INSTRUMENT_PROBES.clear()
    measures._INSTRUMENT_PROBES.update(saved)


ADHERENCE = {"tempo_accuracy", "tempo_error_bpm", "mode_accuracy", "instrument_accuracy"}


def test_measures_keys_and_determinism(pipe, small_probes):
    def timeless(m):
        return {k: v for k, v in m.items() if not k.startswith("seconds_per")}

    kw = dict(n_prompts=2, seconds=1.0, steps=2, batch_size=1)
    gen = measures.measure_n2m_generator(pipe.generator, **kw)
    assert set(gen) == ADHERENCE | {f"ceiling_{k}" for k in ADHERENCE} | {"seconds_per_clip"}
    assert timeless(gen) == timeless(measures.measure_n2m_generator(pipe.generator, **kw))
    casc = measures.measure_n2m_cascader(pipe.cascader, **kw)
    assert set(casc) == ADHERENCE | {f"ceiling_{k}" for k in ADHERENCE} | {"mel_db", "input_mel_db", "high_band_db",
                                                                           "seconds_per_clip"}
    assert 0 < casc["input_mel_db"] < casc["mel_db"]  # a random cascader is worse than plain sinc upsampling
    assert casc["high_band_db"] > 3  # ... it adds noise above 1.6 kHz
    full = measures.measure_noise2music(pipe.generator, pipe.cascader, casc_steps=2, **kw)
    prefixes = ("", "low_", "ceiling_", "cascade_ceiling_")
    assert set(full) == {p + k for p in prefixes for k in ADHERENCE} | {
        "seconds_per_clip_generator", "seconds_per_clip_cascader", "seconds_per_audio_second"}
    assert full["ceiling_mode_accuracy"] == gen["ceiling_mode_accuracy"]  # the same real clips
    with pytest.raises(ValueError, match="n_prompts must be a positive int"):
        measures.measure_n2m_generator(pipe.generator, n_prompts=0)
    with pytest.raises(ValueError, match="seconds must be a number >= 1"):
        measures.measure_n2m_cascader(pipe.cascader, seconds=0.5)


def test_measures_read_version_2_prompts_with_the_version_2_probe(pipe, small_probes):
    kw = dict(n_prompts=2, seconds=1.0, steps=2, batch_size=1, timing=False)
    v1 = measures.measure_n2m_generator(pipe.generator, **kw)
    v2 = measures.measure_n2m_generator(pipe.generator, version=2, text_encoder="course:text_encoder_v2", **kw)
    assert set(v1) == set(v2)
    clips = measures.prompt_clips("n2m_generator_v2", {"n_prompts": 2, "seconds": 1.0, "version": 2})
    assert [c.caption for c in clips] == [c.caption for c in measures._n2m_setup(2, 1.0, 1, version=2)]
    assert clips[0].caption != measures._n2m_setup(2, 1.0, 1)[0].caption  # the v2 grammar, not v1's
    assert measures.instrument_probe(1.0, 3200, 2) is measures._INSTRUMENT_PROBES[(1.0, 3200, 2)]


def test_high_band_energy_closed_form():
    t = torch.arange(16000) / 16000
    loud = torch.sin(2 * torch.pi * 3000 * t)[None, None] + torch.sin(2 * torch.pi * 500 * t)  # (1, 1, T)
    quiet = 0.5 * torch.sin(2 * torch.pi * 3000 * t)[None, None] + torch.sin(2 * torch.pi * 500 * t)
    # only the band above 1.6 kHz counts: half the amplitude there is -6.02 dB, whatever the low band holds
    assert float(measures._band_energy_db(quiet, loud, 1600, 16000)[0]) == pytest.approx(-6.0206, abs=0.01)
