"""The RVQ waveform codec: length/frame/bitrate arithmetic, receptive field against brute force, round trips,
save/load, losses with known answers, the MS-STFT discriminator's shapes, and the ``codec`` training family."""

from __future__ import annotations

import json
import math

import pytest
import torch

from course_lib.codecs.codec import Codec, CodecConfig
from course_lib.codecs.losses import MultiScaleMelLoss, MultiScaleSTFTDiscriminator, si_sdr, waveform_l1
from course_lib.codecs.seanet import SEANetEncoder
from course_lib.nn.gan import feature_matching_loss
from course_lib.train import ConfigError, get_family, load_from_run, train
from course_lib.train.data import EVAL_SPLIT, build_dataset, default_collate
from course_lib.train.families.codec import CodecGAN, codec_of

TINY = dict(n_filters=2, dimension=8, lstm=1, n_q=3, codebook_size=16, kmeans_iters=5)


def tiny_codec(**overrides) -> Codec:
    torch.manual_seed(0)
    return Codec(CodecConfig(**{**TINY, **overrides}))


def clip(batch: int = 2, length: int = 3200, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16_000
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t)
    return (tone + 0.05 * torch.randn(batch, 1, length, generator=gen)).float()


# ---- arithmetic ------------------------------------------------------------------------------------------


def test_output_length_equals_input_length_for_any_length():
    model = tiny_codec().eval()
    hop = model.hop_length
    for length in (1, 2, hop - 1, hop, hop + 1, 1001, 3 * hop + 7):
        x = clip(2, length, seed=length)
        recon, q = model(x)
        frames = math.ceil(length / hop)
        assert recon.shape == (2, 1, length), length
        assert q.codes.shape == (2, 3, frames) and q.codes.dtype == torch.long
        codes = model.encode(x)
        assert codes.shape == (2, 3, frames) == (2, 3, model.num_frames(length))
        assert model.decode(codes).shape == (2, 1, frames * hop)
        assert model.encode(x, n_q=2).shape == (2, 2, frames)


def test_hop_frame_rate_and_bitrate():
    course = CodecConfig()
    assert course.ratios == (8, 5, 4, 2) and course.hop_length == 320 and course.frame_rate == 50.0
    audiogen = Codec(CodecConfig(n_filters=2, dimension=8, lstm=0, n_q=4, codebook_size=2048))
    assert audiogen.frame_rate == 50.0 and audiogen.bitrate() == 2200.0  # 50 × 4 × 11 bits
    for n_q in range(1, 5):
        assert audiogen.bitrate(n_q) == audiogen.frame_rate * n_q * math.log2(2048)
    encodec24 = Codec(CodecConfig(sample_rate=24_000, n_filters=2, dimension=8, lstm=0, n_q=32,
                                  codebook_size=1024))
    assert encodec24.frame_rate == 75.0
    assert [encodec24.bitrate(n) for n in (2, 4, 8, 16, 32)] == [1500, 3000, 6000, 12000, 24000]  # EnCodec's kbps
    with pytest.raises(ValueError, match=r"n_q must be an int in \[1, 4\]"):
        audiogen.bitrate(5)
    assert tiny_codec(quantizer_dropout=True).quantizer.quantizer_dropout is True


def test_receptive_field_closed_form_and_brute_force():
    # 7 + 2 + 3 (stride 2) + 2·2 + 7·2 (stride 4) + 2·8 + 9·8 (stride 5) + 2·40 + 15·40 (stride 8) + 6·320
    assert SEANetEncoder(n_filters=2, dimension=4, lstm=0).receptive_field == 2718
    assert CodecConfig().hop_length == 320
    for causal in (False, True):
        torch.manual_seed(1)
        enc = SEANetEncoder(n_filters=2, dimension=3, ratios=(4, 2), lstm=0, n_residual_layers=2,
                            causal=causal).double()
        x = torch.randn(1, 1, 8 * 40, dtype=torch.float64, requires_grad=True)
        frame = 20
        enc(x)[0, :, frame].sum().backward()
        support = (x.grad[0, 0] != 0).nonzero().flatten()
        assert len(support) == support[-1] - support[0] + 1 == enc.receptive_field  # contiguous, as predicted
        if causal:
            assert int(support[-1]) == (frame + 1) * 8 - 1  # the frame's last sample, nothing later


def test_causal_codec_frames_do_not_see_the_future():
    model = tiny_codec(causal=True, lstm=1).eval()
    x = clip(1, 3200)
    later = x.clone()
    later[..., 1000:] += 0.5 * torch.randn(1, 1, 2200)
    z, z_later = model.encode_latent(x), model.encode_latent(later)
    assert torch.equal(z[..., :3], z_later[..., :3])  # frames 0-2 end at sample 959 < 1000
    assert not torch.equal(z[..., 3:], z_later[..., 3:])
    noncausal = tiny_codec(causal=False).eval()
    assert not torch.equal(noncausal.encode_latent(x)[..., :3], noncausal.encode_latent(later)[..., :3])


def test_wrong_inputs_are_refused_with_what_was_expected():
    model = tiny_codec()
    with pytest.raises(ValueError, match=r"\(B, 1, T\).*got \(2, 100\).*wav\[:, None, :\]"):
        model(torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"\(B, 1, T\) \(1 channel\), got \(2, 2, 100\)"):
        model.encode(torch.zeros(2, 2, 100))
    with pytest.raises(TypeError, match="float audio"):
        model.encode(torch.zeros(1, 1, 100, dtype=torch.int16))
    with pytest.raises(ValueError, match="at 44100 Hz but this codec runs at 16000 Hz; resample"):
        model.encode(torch.zeros(1, 1, 100), sample_rate=44_100)
    with pytest.raises(ValueError, match=r"integer codes of shape \(B, K, frames\)"):
        model.decode(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="K=4 stages but this quantizer has n_q=3"):
        model.decode(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        model.decode(torch.full((1, 3, 4), 16))
    with pytest.raises(ValueError, match="model.ratios"):
        CodecConfig(ratios=()).validate()
    with pytest.raises(ValueError, match="model.codebook_size: must be >= 2"):
        Codec(CodecConfig(codebook_size=1))


# ---- round trips -----------------------------------------------------------------------------------------


def _trained_a_little(model: Codec) -> Codec:
    model.train()
    model(clip(4, 3200, seed=5))  # k-means init and one EMA update change the codebook buffers
    return model.eval()


def test_codes_round_trip_equals_the_forward_reconstruction():
    model = _trained_a_little(tiny_codec())
    x = clip(2, 1000, seed=3)
    recon, q = model(x)
    codes = model.encode(x)
    assert torch.equal(codes, q.codes)
    torch.testing.assert_close(model.decode(codes)[..., :1000], recon, rtol=1e-5, atol=1e-6)
    # residual VQ: the first n codebooks of the full code are the n-codebook code
    assert torch.equal(model.encode(x, n_q=2), codes[:, :2])
    assert not torch.allclose(model.decode(codes[:, :1]), model.decode(codes))


def test_save_and_load_give_identical_outputs(tmp_path):
    model = _trained_a_little(tiny_codec(causal=True))
    model.save_pretrained(tmp_path / "codec")
    config = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert config["ratios"] == [8, 5, 4, 2] and config["causal"] is True
    loaded = Codec.from_pretrained(tmp_path / "codec")
    assert not loaded.training and loaded.config == model.config
    x = clip(2, 2000, seed=9)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded(x)[0], model(x)[0])
    with pytest.raises(FileNotFoundError, match="does not hold a saved Codec"):
        Codec.from_pretrained(tmp_path)


# ---- losses ----------------------------------------------------------------------------------------------


def test_mel_loss_zero_for_identical_inputs_positive_otherwise_and_its_formula():
    x = clip(2, 4000)
    loss = MultiScaleMelLoss()
    assert loss.n_ffts == (64, 128, 256, 512, 1024)
    assert float(loss(x, x)) == 0.0
    assert float(loss(0.5 * x, x)) > 0 and float(loss(x + 0.01 * torch.randn_like(x), x)) > 0
    for mel in loss.mels:  # no empty mel band at any scale
        assert mel.filters.sum(dim=1).min() > 0
    # one scale by hand: L1 on the power mel + 1 × MSE on log10(mel + 1e-5), halved (two terms)
    single = MultiScaleMelLoss(n_ffts=(256,))
    assert single.mels[0].config.power == 2.0 and single.mels[0].config.n_mels == 64
    y = x * 0.7
    s_x, s_y = single.mels[0](y), single.mels[0](x)
    by_hand = ((s_x - s_y).abs().mean() + ((s_x + 1e-5).log10() - (s_y + 1e-5).log10()).pow(2).mean()) / 2
    torch.testing.assert_close(single(y, x), by_hand)
    assert float(waveform_l1(y, x)) == pytest.approx(float((0.3 * x).abs().mean()), rel=1e-6)
    with pytest.raises(ValueError, match="at least 513 samples"):
        loss(x[..., :500], x[..., :500])
    with pytest.raises(ValueError, match="same shape"):
        loss(x, x[..., :3000])


def test_si_sdr_known_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 8000, generator=gen, dtype=torch.float64)
    x = x - x.mean()
    noise = torch.randn(1, 1, 8000, generator=gen, dtype=torch.float64)
    noise = noise - noise.mean()
    noise = noise - (noise * x).sum() / (x * x).sum() * x  # orthogonal to x
    noise = noise * (x.norm() / noise.norm())  # same energy as x
    assert float(si_sdr(x + noise, x)) == pytest.approx(0.0, abs=1e-4)
    assert float(si_sdr(x + noise / math.sqrt(10), x)) == pytest.approx(10.0, abs=1e-4)
    assert float(si_sdr(3 * (x + noise / 10), x)) == pytest.approx(20.0, abs=1e-4)  # scale-invariant
    assert float(si_sdr(x, x)) > 100
    assert si_sdr(clip(3, 500), clip(3, 500, seed=1)).shape == (3,)


def test_discriminator_output_shapes_per_scale():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(filters=4)
    x = clip(2, 4096)
    logits, fmaps = disc(x)
    # (n_fft, hop) → frames = 1 + (T - n_fft) // hop; freq bins n_fft/2 + 1 halved (rounding up) three times
    expected = {1024: (13, 65), 2048: (5, 129), 512: (29, 33), 256: (61, 17), 128: (125, 9)}
    assert len(logits) == len(fmaps) == 5
    for (n_fft, (frames, freq)), logit, fmap, sub in zip(expected.items(), logits, fmaps, disc.discriminators):
        assert sub.n_fft == n_fft and sub.hop_length == n_fft // 4
        assert logit.shape == (2, 1, frames, freq) == (2, 1, *sub.output_shape(4096))
        assert len(fmap) == 5 and all(f.shape[:2] == (2, 4) for f in fmap)
        assert fmap[0].shape[-1] == n_fft // 2 + 1 and fmap[-1].shape[-2:] == (frames, freq)
    with pytest.raises(ValueError, match="needs clips of at least 2048 samples"):
        disc(x[..., :2000])


def test_feature_matching_on_a_hand_example_and_the_generator_loss_weights():
    real = [[torch.ones(1, 2, 3, 3)], [torch.zeros(1, 1, 4, 2), torch.full((1, 1, 2, 2), 2.0)]]
    fake = [[torch.zeros(1, 2, 3, 3, requires_grad=True)],
            [torch.full((1, 1, 4, 2), 1.0), torch.full((1, 1, 2, 2), -1.0)]]
    # scale 0: mean |0 − 1| = 1; scale 1: mean of layer means (1, 3) = 2; mean over scales = 1.5
    assert float(feature_matching_loss(real, fake).detach()) == pytest.approx(1.5)
    # the family's generator phase is λ_t·L1 + λ_f·mel + vq + λ_adv·(−D) + λ_feat·FM, with audiocraft's weights
    family = get_family("codec")
    cfg = family.load_config("tiny", ["model.adversarial=true", "model.disc_filters=2",
                                      "model.disc_n_ffts=[256,128]", "model.disc_hop_lengths=[64,32]"])
    assert (cfg.loss.l1, cfg.loss.mel, cfg.loss.adv, cfg.loss.feat) == (0.1, 2.0, 4.0, 4.0)
    torch.manual_seed(0)
    model = family.build_model(cfg.model)
    assert isinstance(model, CodecGAN) and codec_of(model) is model.codec
    x = clip(2, 16000)
    torch.manual_seed(3)
    loss, logs = family.loss_step(model, {"audio": x}, cfg, phase="generator")
    by_hand = 0.1 * logs["l1"] + 2.0 * logs["mel"] + logs["vq"] + 4.0 * logs["g_adv"] + 4.0 * logs["g_feat"]
    assert float(loss.detach()) == pytest.approx(by_hand, rel=1e-5)
    d_loss, d_logs = family.loss_step(model, {"audio": x}, cfg, phase="discriminator")
    assert 0 < float(d_loss.detach()) == pytest.approx(d_logs["d_hinge"])


# ---- the training family ---------------------------------------------------------------------------------

FAST = ["train.progress=false", "train.tensorboard=false"]


def test_configs_load_and_refuse_what_cannot_work(tmp_path):
    family = get_family("codec")
    tiny = family.load_config("tiny")
    assert not tiny.model.adversarial and tiny.model.hop_length == 320
    course = family.load_config("course")
    # the course codec is CodecConfig's defaults plus quantizer dropout (one model for 0.4-1.6 kbit/s)
    assert course.model.codec_config() == CodecConfig(quantizer_dropout=True)
    assert course.loss.autoencoder_warmup_steps > 0 and course.data.source == "generated:mixed"
    assert Codec(course.model.codec_config()).bitrate() == 1600.0  # 50 frames/s × 4 × log2(256)
    paper = family.load_config("paper")
    m = paper.model
    assert (m.n_filters, m.dimension, m.ratios, m.lstm, m.n_q, m.codebook_size) == (64, 128, (8, 5, 4, 2), 2, 4, 2048)
    assert m.frame_rate == 50.0 and not m.quantizer_dropout and not m.causal and m.adversarial
    assert paper.disc_optim.betas == (0.5, 0.9) and paper.optim.lr == 3e-4
    with pytest.raises(ConfigError, match="gives 16000 samples, fewer than the 32768 that the discriminator"):
        family.load_config("tiny", ["model.adversarial=true", "model.disc_n_ffts=[32768]",
                                    "model.disc_hop_lengths=[8192]"])
    with pytest.raises(ConfigError, match=r"disc_optim.grad_accum \(1\) must equal optim.grad_accum \(2\)"):
        family.load_config("tiny", ["model.adversarial=true", "optim.grad_accum=2"])
    with pytest.raises(ConfigError, match=r"eval.n_q_levels: every level must be in \[1, model.n_q=2\], got \[3\]"):
        family.load_config("tiny", ["eval.n_q_levels=[1,3]"])
    with pytest.raises(ConfigError, match="model.n_filters: must be a positive int"):
        family.load_config("tiny", ["model.n_filters=0"])


@pytest.mark.slow
def test_tiny_config_trains_the_loss_falls_and_the_run_loads_back(tmp_path):
    family = get_family("codec")
    cfg = family.load_config("tiny", [f"train.run_dir={tmp_path / 'run'}", "train.log_every=1", *FAST])
    summary = train("codec", cfg)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in lines if r["kind"] == "train"]) == cfg.train.max_steps
    ev = summary["eval"]
    # it learns: the eval batch's mel distance is well below the untrained model's (≈ 0.65× for seeds 0-2)
    eval_set = build_dataset(cfg.data, EVAL_SPLIT, cfg.train.seed)
    batch = default_collate(eval_set)([eval_set[i] for i in range(cfg.data.batch_size)])
    torch.manual_seed(cfg.train.seed)
    with torch.no_grad():
        before = family.evaluate(family.build_model(cfg.model).eval(), [batch], cfg).metrics
    assert ev["mel_distance"] < 0.8 * before["mel_distance"]
    for key in ("mel_distance", "si_sdr", "waveform_l1", "perplexity", "mel_distance_q1", "si_sdr_q2"):
        assert math.isfinite(ev[key]), key
    assert ev["kbps"] == pytest.approx(0.6)  # 50 frames/s × 2 × log2(64)
    samples = tmp_path / "run" / "samples" / f"step_{cfg.train.max_steps:08d}"
    assert {p.name for p in samples.iterdir()} == {"0_input.wav", "0_reconstruction.wav",
                                                   "0_reconstruction_1_codebook.wav"}
    model = load_from_run(tmp_path / "run")
    assert isinstance(model, Codec) and model.encode(clip(1, 16000)).shape == (1, 2, 50)


@pytest.mark.slow
def test_adversarial_training_steps_both_optimizers(tmp_path):
    family = get_family("codec")
    cfg = family.load_config("tiny", [
        f"train.run_dir={tmp_path / 'gan'}", "train.max_steps=2", "train.log_every=1", "train.ema_decay=0.5",
        "model.adversarial=true", "model.disc_filters=2", "model.disc_n_ffts=[256,128]",
        "model.disc_hop_lengths=[64,32]", "eval.at_end=false", *FAST])
    torch.manual_seed(cfg.train.seed)
    initial = family.build_model(cfg.model).discriminator.state_dict()
    train("codec", cfg)
    rec = [json.loads(s) for s in (tmp_path / "gan" / "metrics.jsonl").read_text().splitlines()][-1]
    for key in ("loss_discriminator", "loss_generator", "d_hinge", "g_adv", "g_feat", "mel"):
        assert math.isfinite(rec[f"train/{key}"]), key
    trained = load_from_run(tmp_path / "gan")
    assert isinstance(trained, CodecGAN)
    changed = [k for k, v in trained.discriminator.state_dict().items() if not torch.equal(v, initial[k])]
    assert changed  # the discriminator's optimizer stepped
    ema = load_from_run(tmp_path / "gan", "ema")
    assert all(torch.equal(a, b) for a, b in zip(ema.discriminator.state_dict().values(),
                                                 trained.discriminator.state_dict().values()))  # not averaged


# ---- the autoencoder warm-up (quantizer bypassed) --------------------------------------------------------


def test_unquantized_forward_decodes_the_latent_and_leaves_the_codebooks_alone():
    codec = tiny_codec().train()
    x = clip()
    before = {k: v.clone() for k, v in codec.quantizer.state_dict().items()}
    recon, q = codec(x, quantize=False)
    assert recon.shape == x.shape and q.codes.shape == (2, 0, codec.num_frames(x.shape[-1]))
    assert float(q.loss) == 0.0
    z = codec.encode_latent(x)
    assert torch.equal(q.quantized, z) and torch.allclose(recon, codec.decoder(z)[..., : x.shape[-1]])
    after = codec.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the warm-up must not touch the codebooks"


def test_warmup_steps_train_without_the_quantizer_then_switch_it_on(tmp_path):
    family = get_family("codec")
    cfg = family.load_config("tiny", [f"train.run_dir={tmp_path / 'run'}", "train.log_every=1", "train.max_steps=4",
                                      "loss.autoencoder_warmup_steps=2", *FAST])
    model = family.build_model(cfg.model).train()
    batch = {"audio": clip(2, 16000)}
    _, logs = family.loss_step(model, batch, cfg, step=1)
    assert "perplexity" not in logs and logs["vq"] == 0.0  # step 1 < 2: bypassed
    _, logs = family.loss_step(model, batch, cfg, step=2)
    assert "perplexity" in logs  # quantizer on (k-means initialised now, on the warmed-up latents)
    with pytest.raises(ConfigError, match="autoencoder_warmup_steps"):
        family.load_config("tiny", ["loss.autoencoder_warmup_steps=-1"])


def test_the_engine_passes_the_step_so_the_warmup_ends_on_time(tmp_path):
    family = get_family("codec")
    cfg = family.load_config("tiny", [f"train.run_dir={tmp_path / 'run'}", "train.log_every=1", "train.max_steps=3",
                                      "loss.autoencoder_warmup_steps=2", "eval.every=0", *FAST])
    train("codec", cfg)
    rows = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert "train/perplexity" not in logged[1] and "train/perplexity" not in logged[2]  # steps 0, 1: bypassed
    assert "train/perplexity" in logged[3]  # step 2: the quantizer is on


# ---- the iSTFT decoder (codec_v2) --------------------------------------------------------------------------


def test_istft_decoder_shapes_round_trip_save_load_and_gradients(tmp_path):
    """``decoder="istft"``: F frames give F · hop samples, decode(encode(x)) is the forward's reconstruction,
    save/load keeps the outputs, every decoder parameter gets a gradient, and the old default still builds SEANet."""
    from course_lib.codecs.istft_decoder import ISTFTDecoder
    from course_lib.codecs.seanet import SEANetDecoder

    codec = tiny_codec(decoder="istft", decoder_dim=16, decoder_intermediate_dim=32, decoder_layers=2)
    assert isinstance(codec.decoder, ISTFTDecoder) and isinstance(tiny_codec().decoder, SEANetDecoder)
    assert codec.decoder.head.n_fft == 4 * 320  # decoder_n_fft 0: four hops
    x = clip(2, 3000)
    codec.eval()
    with torch.no_grad():
        recon, _ = codec(x)
        codes = codec.encode(x)
        assert recon.shape == x.shape and codes.shape == (2, 3, 10)
        assert codec.decode(codes).shape == (2, 1, 10 * 320)
        torch.testing.assert_close(codec.decode(codes)[..., :3000], recon)
    codec.save_pretrained(tmp_path / "c")
    again = Codec.from_pretrained(tmp_path / "c").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], recon)
    codec.train()
    out, q = codec(x)
    (out.square().mean() + q.loss).backward()
    missing = [n for n, p in codec.decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_istft_decoder_config_errors():
    for overrides, message in (
        (dict(decoder="wavenet"), "model.decoder: must be 'seanet' or 'istft'"),
        (dict(decoder="istft", channels=2), "'istft' makes mono audio"),
        (dict(decoder="istft", decoder_n_fft=400), "model.decoder_n_fft: must be 0"),
        (dict(decoder="istft", decoder_layers=0), "model.decoder_layers: must be > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            CodecConfig(**{**TINY, **overrides}).validate()
    family = get_family("codec")
    with pytest.raises(ConfigError, match="loss.mrmel: weights must be >= 0"):
        family.load_config("tiny", ["loss.mrmel=-1"])
    with pytest.raises(ConfigError, match="loss.stft_resolutions: need a list"):
        family.load_config("tiny", ["loss.stft=1", "loss.stft_resolutions=[[128, 32, 256]]"])
    v2 = family.load_config("v2")
    assert v2.model.decoder == "istft" and v2.data.version == 2 and v2.loss.mrmel > 0 and v2.loss.stft > 0
    assert Codec(v2.model.codec_config()).bitrate() == 3200.0  # 50 frames/s × 8 × log2(256)


def test_spectral_loss_terms_are_added_and_logged(tmp_path):
    """``loss.mrmel`` and ``loss.stft`` add their weighted terms to the generator loss (0 leaves it unchanged)."""
    family = get_family("codec")
    base = family.load_config("tiny", [f"train.run_dir={tmp_path}", "loss.autoencoder_warmup_steps=5"])
    extra = family.load_config("tiny", [f"train.run_dir={tmp_path}", "loss.autoencoder_warmup_steps=5",
                                        "loss.mrmel=2.0", "loss.stft=3.0", "loss.mrmel_resolutions=[[256, 64, 32]]",
                                        "loss.stft_resolutions=[[256, 32, 128]]"])
    model = family.build_model(base.model)
    batch = {"audio": clip(2, 16000)}
    torch.manual_seed(0)
    plain, logs0 = family.loss_step(model, batch, base, step=0)
    torch.manual_seed(0)
    more, logs = family.loss_step(model, batch, extra, step=0)
    assert "mrmel_db" not in logs0 and {"mrmel_db", "stft_sc", "stft_log_mag"} <= set(logs)
    expected = float(plain.detach()) + 2.0 * logs["mrmel_db"] / (20 / math.log(10)) + 3.0 * (logs["stft_sc"] + logs["stft_log_mag"])
    assert float(more.detach()) == pytest.approx(expected, rel=1e-4)


def test_istft_codec_trains_through_the_engine_and_loads_back(tmp_path):
    """The tiny config with ``model.decoder=istft`` and the spectral terms: two steps end to end (its BatchNorm
    counter once crashed the engine's end-of-run replica digest), then the run loads back as a Codec."""
    family = get_family("codec")
    cfg = family.load_config("tiny", [f"train.run_dir={tmp_path / 'run'}", "train.max_steps=2", "eval.every=0",
                                      "model.decoder=istft", "model.decoder_dim=16", "model.decoder_intermediate_dim=32",
                                      "model.decoder_layers=1", "loss.mrmel=1.0", "loss.stft=1.0",
                                      "loss.mrmel_resolutions=[[256, 64, 32]]", "loss.stft_resolutions=[[256, 32, 128]]",
                                      *FAST])
    summary = train("codec", cfg)
    assert summary["steps"] == 2 and math.isfinite(summary["eval"]["mel_distance"])
    model = load_from_run(tmp_path / "run")
    assert isinstance(model, Codec) and model.config.decoder == "istft"
