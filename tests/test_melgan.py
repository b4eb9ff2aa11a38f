"""MelGAN and Griffin-Lim vocoders, and the shared GAN losses: closed forms, shapes, a measured receptive
field, save/load, the paper's parameter count, and the errors a wrong input must give."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.audio import MelConfig, log_mel
from course_lib.nn.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from course_lib.vocoders import (
    GriffinLimVocoder,
    MelGAN,
    MelGANConfig,
    MelGANGenerator,
    ResidualStack,
    Vocoder,
    generator_output_length,
    receptive_field,
)

TINY = MelGANConfig(sample_rate=16_000, n_fft=256, hop_length=64, n_mels=32, ngf=4, upsample_ratios=(4, 4, 4),
                    dilations=(1, 3), num_scales=2, disc_channels=4, disc_layers=2, disc_max_channels=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tone(seconds: float = 0.5, sr: int = 16_000, freq: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (0.5 * torch.sin(2 * math.pi * freq * t))[None, None]


# ---- the shared GAN losses (course_lib.nn.gan) --------------------------------------------------------------


def test_hinge_losses_on_hand_made_logits():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([[-1.0]])]
    fake = [torch.tensor([-2.0, 0.0]), torch.tensor([[3.0]])]
    # scale 0: mean(relu(1 - [2, .5])) = .25, mean(relu(1 + [-2, 0])) = .5; scale 1: relu(2) + relu(4) = 6
    assert float(discriminator_hinge_loss(real, fake)) == pytest.approx((0.75 + 6.0) / 2)
    assert float(discriminator_hinge_loss(real, fake, reduction="sum")) == pytest.approx(6.75)
    # generator: -D(G(s)) averaged per scale: -(-1) and -(3)
    assert float(generator_hinge_loss(fake)) == pytest.approx((1.0 - 3.0) / 2)
    assert float(generator_hinge_loss(fake, reduction="sum")) == pytest.approx(-2.0)
    # confident and right: no discriminator loss at all (the hinge)
    assert float(discriminator_hinge_loss([torch.full((3,), 5.0)], [torch.full((3,), -5.0)])) == 0.0


def test_feature_matching_is_mean_l1_over_layers_and_scales_with_real_detached():
    real = [[torch.zeros(2, 3), torch.ones(1, 4)], [torch.zeros(5)]]
    fake = [[torch.full((2, 3), 2.0, requires_grad=True), torch.full((1, 4), 1.5)], [torch.full((5,), -3.0)]]
    # scale 0: layers 2 and 0.5 -> 1.25; scale 1: 3 -> mean of scales (1.25 + 3) / 2
    loss = feature_matching_loss(real, fake)
    assert float(loss.detach()) == pytest.approx(2.125)
    r = torch.zeros(2, 3, requires_grad=True)
    f = torch.ones(2, 3, requires_grad=True)
    feature_matching_loss([[r]], [[f]]).backward()
    assert r.grad is None and f.grad is not None  # only the generator side gets gradients


def test_gan_losses_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="real_logits has 2 scales but fake_logits has 1"):
        discriminator_hinge_loss([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])
    with pytest.raises(TypeError, match="list of tensors"):
        generator_hinge_loss(torch.zeros(3))
    with pytest.raises(ValueError, match=r"scale 0, feature map 0: real has shape \(2,\) but fake has \(3,\)"):
        feature_matching_loss([[torch.zeros(2)]], [[torch.zeros(3)]])
    with pytest.raises(ValueError, match="reduction must be one of"):
        generator_hinge_loss([torch.zeros(1)], reduction="max")


# ---- arithmetic -------------------------------------------------------------------------------------------


def test_receptive_field_matches_an_impulse_response_measurement():
    assert receptive_field(3, (1, 3, 9)) == 27
    for kernel, dilations in [(3, (1, 3, 9)), (5, (1, 2)), (3, (1,))]:
        torch.manual_seed(0)
        stack = ResidualStack(4, kernel, dilations).double()
        x = torch.randn(1, 4, 129, dtype=torch.float64, requires_grad=True)
        stack(x)[0, :, 64].sum().backward()  # which input samples influence output sample 64?
        touched = (x.grad.abs().sum(dim=1)[0] > 0).nonzero().flatten()
        measured = int(touched.max() - touched.min() + 1)
        assert measured == receptive_field(kernel, dilations) == stack.receptive_field, (kernel, dilations)
        assert len(touched) == measured  # a contiguous window, centred on the output sample
        assert int(touched.min()) == 64 - measured // 2


def test_generator_output_is_frames_times_hop():
    assert generator_output_length(10, (8, 8, 2, 2)) == 2560
    assert generator_output_length(7, (5, 3)) == 105
    torch.manual_seed(0)
    for config in (TINY, MelGANConfig(n_mels=16, ngf=2), MelGANConfig(hop_length=75, upsample_ratios=(5, 5, 3),
                                                                         n_mels=16, ngf=2)):
        gen = MelGANGenerator(config)  # the generator alone: the paper discriminator is slow to build
        for frames in (4, 9, 33):
            out = gen(torch.randn(2, config.n_mels, frames))
            assert out.shape == (2, 1, frames * config.hop_length)
            assert out.abs().max() < 1  # tanh
    # a mel of T samples has 1 + T // hop frames: the generator makes a little more than T
    model = MelGAN(TINY)
    mel = model.features(tone(0.25))
    assert mel.shape == (1, 32, 1 + 4000 // 64) and model(mel).shape[-1] == (1 + 4000 // 64) * 64


def test_discriminator_scales_shapes_for_the_paper_config():
    torch.manual_seed(0)
    disc = MelGAN(MelGANConfig()).discriminator
    logits, feats = disc(torch.randn(2, 1, 8192))
    assert [t.shape for t in logits] == [(2, 1, 32), (2, 1, 16), (2, 1, 8)]  # 8192 / 4**4, then halved twice
    assert [len(f) for f in feats] == [6, 6, 6]
    assert [tuple(t.shape) for t in feats[0]] == [(2, 16, 8192), (2, 64, 2048), (2, 256, 512), (2, 1024, 128),
                                                  (2, 1024, 32), (2, 1024, 32)]
    assert [t.shape[-1] for t in feats[2]] == [2048, 512, 128, 32, 8, 8]
    groups = [m.groups for m in disc.scales[0].modules() if isinstance(m, torch.nn.Conv1d)]
    assert groups == [1, 4, 16, 64, 256, 1, 1]  # groups = in_channels / 4 for the strided convs


def test_generator_parameter_count_matches_the_paper():
    model = MelGAN(MelGANConfig())
    n = model.num_parameters("generator")
    assert n == 4_266_050  # weight norm's g and v counted, as the official code's count
    assert abs(n - 4.26e6) / 4.26e6 < 0.005  # paper: 4.26 M


# ---- inputs, outputs, persistence ---------------------------------------------------------------------------


def test_features_are_the_course_log_mel():
    model = MelGAN(TINY)
    audio = tone(0.3)
    torch.testing.assert_close(model.features(audio), log_mel(audio[:, 0], model.mel_config))
    assert model.mel_config == MelConfig(sample_rate=16_000, n_fft=256, hop_length=64, n_mels=32)


def test_wrong_number_of_mel_bands_is_a_clear_error():
    model = MelGAN(TINY)
    with pytest.raises(ValueError, match=r"expects 32 mel bands \(B, 32, frames\), got 80"):
        model(torch.zeros(1, 80, 10))
    with pytest.raises(ValueError, match="expects 32 mel bands.*got 80"):
        GriffinLimVocoder(model.mel_config)(torch.zeros(1, 80, 10))
    with pytest.raises(ValueError, match="needs at least 4 mel frames, got 2"):
        model(torch.zeros(1, 32, 2))
    with pytest.raises(ValueError, match=r"upsample_ratios \[8, 8, 2\] multiply to 128, but hop_length is 256"):
        MelGANConfig(upsample_ratios=(8, 8, 2)).validate()


def test_save_and_load_give_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = MelGAN(TINY).eval()
    mel = torch.randn(2, 32, 8)
    audio = torch.randn(1, 1, 2048)
    with torch.no_grad():
        before, (logits, _) = model(mel), model.discriminator(audio)
    model.save_pretrained(tmp_path / "vocoder")
    loaded = MelGAN.from_pretrained(tmp_path / "vocoder")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(mel), before)
        assert all(torch.equal(a, b) for a, b in zip(loaded.discriminator(audio)[0], logits))
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        (tmp_path / "vocoder" / "model.safetensors").unlink()
        MelGAN.from_pretrained(tmp_path / "vocoder")


def test_griffin_lim_inverts_a_harmonic_tone_and_shares_the_vocoder_interface():
    config = MelConfig(n_fft=512, hop_length=128, n_mels=64)
    t = torch.arange(8000) / 16_000
    audio = sum(0.2 / k * torch.sin(2 * math.pi * 220 * k * t) for k in range(1, 20))[None]  # (1, T)
    mel = log_mel(audio, config)

    def distance_db(wav):
        return float((log_mel(wav[..., :8000], config) - mel).abs().mean()) * 20 / math.log(10)

    out = GriffinLimVocoder(config, n_iter=32)(mel)
    assert out.shape == (1, 1, mel.shape[-1] * 128)
    rough = distance_db(GriffinLimVocoder(config, n_iter=4)(mel)[:, 0])
    # measured: 4.6 dB after 32 iterations, worse after 4, about 32 dB for white noise of the same level
    assert distance_db(out[:, 0]) < 5.0 < distance_db(0.5 * torch.randn(1, 8000)) and distance_db(out[:, 0]) < rough
    gl = GriffinLimVocoder(config, n_iter=32)
    assert torch.equal(gl(mel), out)  # zero initial phase: deterministic
    assert isinstance(gl, Vocoder) and isinstance(MelGAN(TINY), Vocoder)
    assert gl.hop_length == 128 and MelGAN(TINY).hop_length == 64


def test_mel_loss_gradient_reaches_the_generator():
    torch.manual_seed(0)
    model = MelGAN(TINY)
    audio = tone(0.128)
    target = model.features(audio)
    fake = model(target)[..., : audio.shape[-1]]
    torch.nn.functional.l1_loss(model.features(fake), target).backward()
    assert all(p.grad is not None for p in model.generator.parameters())
    assert all(p.grad is None for p in model.discriminator.parameters())


def test_mel_loss_floor_ignores_differences_below_top_db_and_matches_the_course_metric():
    from course_lib.metrics import log_mel_distance_db
    from course_lib.train.families.melgan import NATS_TO_DB, mel_l1

    model = MelGAN(TINY)
    audio = torch.cat([tone(0.25), torch.zeros(1, 1, 4000)], dim=-1)  # a tone, then digital silence
    hiss = audio + 3e-4 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    target = model.features(audio)
    plain, floored = float(mel_l1(model, hiss, target)), float(mel_l1(model, hiss, target, top_db=80.0))
    assert plain * NATS_TO_DB > 8.0 and floored * NATS_TO_DB < 1.5  # the hiss: far above −100 dB, ~−80 dB
    assert float(mel_l1(model, audio, target, top_db=80.0)) == 0.0
    metric = float(log_mel_distance_db(hiss, audio, model.mel_config))
    assert math.isclose(floored * NATS_TO_DB, metric, rel_tol=1e-4)


def test_mel_top_db_must_be_positive():
    from course_lib.train import ConfigError, get_family

    with pytest.raises(ConfigError, match="mel_top_db"):
        get_family("melgan").load_config("tiny", ["gan.mel_top_db=0"])
    assert get_family("melgan").load_config("tiny", ["gan.mel_top_db=80"]).gan.mel_top_db == 80.0


def test_spectral_convergence_is_zero_for_the_target_and_dominated_by_loud_bins():
    from course_lib.train.families.melgan import spectral_convergence

    model = MelGAN(TINY)
    audio = tone(0.25)
    target = model.features(audio)
    assert float(spectral_convergence(model, audio, target)) < 1e-5
    assert float(spectral_convergence(model, 0.5 * audio, target)) == pytest.approx(0.5, abs=0.02)  # −6 dB: half
    quiet_error = audio + 1e-3 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    assert float(spectral_convergence(model, quiet_error, target)) < 0.05  # faint noise barely counts


def test_lambda_sc_adds_the_term_in_warmup_and_gan_steps(tmp_path):
    from course_lib.train import get_family

    family = get_family("melgan")
    cfg = family.load_config("tiny", ["gan.lambda_sc=2.0", "gan.disc_start_step=1"])
    torch.manual_seed(0)
    model = family.build_model(cfg.model)
    batch = {"audio": tone(0.128)}
    _, warm = family.loss_step(model, batch, cfg, phase="generator", step=0)
    _, gan = family.loss_step(model, batch, cfg, phase="generator", step=5)
    assert "spectral_convergence" in warm and "spectral_convergence" in gan
    with pytest.raises(Exception, match="lambda_sc"):
        family.load_config("tiny", ["gan.lambda_sc=-1"])


# ---- why steady notes are hard: a convolutional generator repeats itself every hop --------------------------


def test_a_constant_mel_gives_an_output_that_repeats_every_hop_exactly():
    """The structural fact lesson 03 teaches: a steady tone has the same log-mel in every frame, and a stack of
    (transposed) convolutions is shift-equivariant by one hop per frame, so away from the clip's edges the
    output is periodic with the hop (partials only on multiples of sample_rate / hop)."""
    torch.manual_seed(0)
    generator = MelGANGenerator(TINY).eval()
    hop = TINY.hop_length
    frame = torch.randn(1, TINY.n_mels, 1)
    with torch.no_grad():
        out = generator(frame.expand(-1, -1, 40).contiguous())[0, 0]
        varied = generator(frame.expand(-1, -1, 40) + 0.5 * torch.randn(1, TINY.n_mels, 40))[0, 0]
    middle = out[10 * hop:30 * hop]
    middle = middle - middle.mean()  # an untrained generator's output is mostly a constant offset
    scale = float(middle.abs().max())
    assert scale > 1e-5
    assert float((middle[hop:] - middle[:-hop]).abs().max()) < 1e-5 * scale  # repeats every hop ...
    assert float((middle[hop - 1:] - middle[:-(hop - 1)]).abs().max()) > 0.05 * scale  # ... and not every hop - 1
    wiggle = varied[10 * hop:30 * hop]
    wiggle = wiggle - wiggle.mean()
    assert float((wiggle[hop:] - wiggle[:-hop]).abs().max()) > 0.05 * float(wiggle.abs().max())  # input varies


# ---- options beyond the paper: snake activations, Parallel WaveGAN's multi-resolution STFT loss ------------


def test_snake_is_x_plus_sin_squared_over_alpha_and_learns_alpha():
    from course_lib.vocoders.melgan import Snake

    snake = Snake(2)
    with torch.no_grad():
        snake.log_alpha[0, 1, 0] = math.log(2.0)
    x = torch.tensor([[[0.0, 1.0, -2.0], [0.0, 1.0, -2.0]]])
    expected = torch.stack([x[0, 0] + torch.sin(x[0, 0]) ** 2, x[0, 1] + torch.sin(2 * x[0, 1]) ** 2 / 2])[None]
    assert torch.allclose(snake(x), expected)
    snake(x).sum().backward()
    assert snake.log_alpha.grad is not None and float(snake.log_alpha.grad.abs().sum()) > 0


def test_snake_generator_builds_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    config = MelGANConfig(**{**TINY.__dict__, "activation": "snake"})
    model = MelGAN(config).eval()
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in model.generator.modules())
    assert MelGAN(TINY).num_parameters() < model.num_parameters()  # one alpha per channel per activation
    mel = torch.randn(1, 32, 8)
    model.save_pretrained(tmp_path / "snake")
    loaded = MelGAN.from_pretrained(tmp_path / "snake")
    assert loaded.config.activation == "snake"
    with torch.no_grad():
        assert torch.equal(loaded(mel), model(mel))
    with pytest.raises(ValueError, match="activation: must be one of"):
        MelGANConfig(activation="relu").validate()


def test_multi_resolution_stft_loss_closed_forms():
    from course_lib.train.families.melgan import multi_resolution_stft_loss

    audio = 0.3 * torch.randn(2, 1, 4096, generator=torch.Generator().manual_seed(0))
    resolutions = ((512, 128, 512), (256, 64, 200))
    sc, log_mag = multi_resolution_stft_loss(audio, audio, resolutions)
    assert float(sc) == 0.0 and float(log_mag) == 0.0
    sc, log_mag = multi_resolution_stft_loss(0.5 * audio, audio, resolutions)  # every magnitude halved
    assert float(sc) == pytest.approx(0.5, abs=1e-5) and float(log_mag) == pytest.approx(math.log(2.0), abs=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        multi_resolution_stft_loss(audio[..., :4000], audio)


def test_lambda_stft_reaches_the_generator_and_is_validated():
    from course_lib.train import ConfigError, get_family

    family = get_family("melgan")
    cfg = family.load_config("tiny", ["gan.lambda_stft=1.0", "gan.lambda_mel=0", "gan.disc_start_step=2",
                                      "gan.stft_resolutions=[[256, 64, 256], [128, 32, 100]]"])
    torch.manual_seed(0)
    model = family.build_model(cfg.model)
    loss, logs = family.loss_step(model, {"audio": tone(0.128)}, cfg, phase="generator", step=0)
    assert {"stft_sc", "stft_log_mag", "mel_l1_db"} <= set(logs)
    assert float(loss.detach()) == pytest.approx(logs["stft_sc"] + logs["stft_log_mag"], rel=1e-5)  # mel L1 logged, not used
    loss.backward()
    assert all(p.grad is not None for p in model.generator.parameters())
    for bad, key in (("gan.lambda_stft=-1", "lambda_stft"), ("gan.stft_resolutions=[[128, 32, 256]]", "stft_resolutions"),
                     ("gan.stft_resolutions=[[4096, 256, 1024]]", "twice gan.segment_samples")):
        with pytest.raises(ConfigError, match=key):
            family.load_config("tiny", [bad])
