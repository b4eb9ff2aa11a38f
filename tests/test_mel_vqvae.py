"""The mel VQ-VAE (Diffsound stage 1) and its training family: shapes, padding, round trips, save/load, a
short engine run that must lower the loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from course_lib.audio import MelConfig, log_mel
from course_lib.codecs.mel_vqvae import LOG_FLOOR, MelVQVAE, MelVQVAEConfig, griffin_lim, reconstruction_loss
from course_lib.train import ConfigError, get_family, load_from_run, train


def small(**kw) -> MelVQVAEConfig:
    base = dict(n_fft=256, hop_length=64, n_mels=16, channels=8, ch_mult=(1, 2), embed_dim=8, codebook_size=16)
    base.update(kw)
    return MelVQVAEConfig(**base)


def test_diffsound_grid_80x848_becomes_5x53():
    cfg = get_family("mel_vqvae").load_config("paper").model
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.codebook_size) == (22050, 1024, 256, 80, 256)
    assert cfg.downsample_factor == 16
    light = MelVQVAE(MelVQVAEConfig(**{**cfg.to_dict(), "channels": 4, "embed_dim": 4, "num_res_blocks": 0,
                                       "attention": False}))
    assert light.token_grid_shape(848) == (5, 53)
    assert light.encode(torch.randn(1, 80, 848)).shape == (1, 5, 53)


@pytest.mark.parametrize("frames", [1, 7, 8, 37])
def test_any_number_of_frames_round_trips_in_shape(frames):
    torch.manual_seed(0)
    model = MelVQVAE(small(ch_mult=(1, 2, 2))).eval()  # 4x: grid 4 x ceil(frames / 4)
    x = torch.randn(2, 16, frames) - 5
    recon, vq = model(x)
    assert recon.shape == x.shape
    assert vq.codes.shape == (2, 4, math.ceil(frames / 4)) == (2, *model.token_grid_shape(frames))
    assert model.decode(vq.codes, frames=frames).shape == x.shape
    assert model.decode(vq.codes).shape == (2, 16, 4 * math.ceil(frames / 4))


def test_padding_is_silence_at_the_log_floor():
    torch.manual_seed(1)
    model = MelVQVAE(small(ch_mult=(1, 2, 2))).eval()
    x = torch.randn(1, 16, 30) - 4
    padded = torch.cat([x, torch.full((1, 16, 2), LOG_FLOOR)], dim=-1)
    assert torch.allclose(model.encode_latent(x), model.encode_latent(padded), atol=1e-5)
    # n_mels that is not a multiple of the factor is padded too, and cropped back
    odd = MelVQVAE(small(n_mels=18, ch_mult=(1, 2, 2))).eval()
    assert odd(torch.randn(1, 18, 9))[0].shape == (1, 18, 9)
    assert odd.encode(torch.randn(1, 18, 9)).shape == (1, 5, 3)


def test_decode_of_encode_equals_forward_and_grad_reaches_the_encoder():
    torch.manual_seed(2)
    model = MelVQVAE(small())
    x = torch.randn(2, 16, 12) - 5
    model.eval()
    recon, vq = model(x)
    assert torch.equal(model.encode(x), vq.codes)
    assert torch.allclose(model.decode(model.encode(x), frames=12), recon, atol=1e-5)
    model.train()
    loss, parts = model.loss(x)
    loss.backward()
    first_conv = model.encoder.net[0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0  # straight-through
    assert set(parts) >= {"recon", "vq", "perplexity", "usage"}


def test_features_match_course_log_mel():
    cfg = small()
    model = MelVQVAE(cfg)
    wav = 0.3 * torch.sin(2 * math.pi * 440 * torch.arange(4000) / 16000)
    expected = log_mel(wav, MelConfig(sample_rate=16000, n_fft=256, hop_length=64, n_mels=16))
    assert torch.allclose(model.features(wav[None, None])[0], expected, atol=1e-5)
    assert model.features(wav).shape == (1, 16, 1 + 4000 // 64)


def test_reconstruction_loss_closed_forms():
    a, b = torch.zeros(1, 2, 2), torch.tensor([[[1.0, -1.0], [2.0, 0.0]]])
    assert reconstruction_loss(b, a, "l1").item() == pytest.approx(1.0)
    assert reconstruction_loss(b, a, "mse").item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(a, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="'l1' or 'mse'"):
        reconstruction_loss(a, a, "l2")


def test_save_pretrained_round_trip_keeps_codebook_statistics(tmp_path):
    torch.manual_seed(3)
    model = MelVQVAE(small(kmeans_init=True, dead_code_threshold=0.5)).train()
    x = torch.randn(4, 16, 20) - 5
    model.loss(x)[0].backward()  # k-means init + one EMA update: buffers differ from a fresh model
    model.eval()
    folder = model.save_pretrained(tmp_path / "mvq")
    assert json.loads((folder / "config.json").read_text())["ch_mult"] == [1, 2]
    loaded = MelVQVAE.from_pretrained(folder)
    assert not loaded.training and bool(loaded.quantizer.initialized)
    r1, v1 = model(x)
    r2, v2 = loaded(x)
    assert torch.equal(v1.codes, v2.codes) and torch.equal(r1, r2)
    assert torch.equal(model.quantizer.cluster_size, loaded.quantizer.cluster_size)
    with pytest.raises(FileNotFoundError, match="config.json"):
        MelVQVAE.from_pretrained(tmp_path / "nothing")


def test_bad_inputs_and_configs_give_clear_errors():
    model = MelVQVAE(small())
    with pytest.raises(ValueError, match=r"\(B, n_mels=16, frames\)"):
        model(torch.randn(2, 20, 10))
    with pytest.raises(ValueError, match=r"\(B, n_mels=16, frames\)"):
        model.encode(torch.randn(16, 10))
    with pytest.raises(ValueError, match="rows"):
        model.decode(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="mono"):
        model.features(torch.randn(2, 2, 1000))
    with pytest.raises(ValueError, match="ch_mult"):
        MelVQVAE(small(ch_mult=()))
    with pytest.raises(ValueError, match="unknown MelVQVAEConfig keys"):
        MelVQVAEConfig.from_dict({"chanels": 3})
    family = get_family("mel_vqvae")
    with pytest.raises(ConfigError, match="model.ch_mult"):
        family.load_config("tiny", ["model.ch_mult=1,0"])
    with pytest.raises(ConfigError, match="model.recon_loss"):
        family.load_config("tiny", ["model.recon_loss=l3"])


def test_griffin_lim_recovers_a_tone():
    cfg = MelConfig(sample_rate=16000, n_fft=512, hop_length=128, n_mels=64)
    wav = 0.5 * torch.sin(2 * math.pi * 1000 * torch.arange(8000) / 16000)
    out = griffin_lim(log_mel(wav, cfg)[None], cfg, n_iter=8, length=8000)
    assert out.shape == (1, 8000) and torch.isfinite(out).all()
    spectrum = torch.fft.rfft(out[0]).abs()
    peak_hz = float(spectrum.argmax()) * 16000 / 8000
    assert abs(peak_hz - 1000) < 60


def test_mixed_generated_source_gives_both_kinds():
    from course_lib.train.config import DataConfig
    from course_lib.train.families.mel_vqvae import mixed_generated

    ds = mixed_generated(DataConfig(train_size=4, clip_seconds=1.0), "train")
    assert len(ds) == 4 and ds.sample_rate == 16000
    items = [ds[i] for i in range(4)]
    assert all(it["audio"].shape == (1, 16000) for it in items)
    assert [it["id"].split("-")[0] for it in items] == ["sound_events", "sound_events", "music", "music"]


@pytest.mark.slow
def test_tiny_engine_run_lowers_the_loss_and_reports_codebook_use(tmp_path):
    family = get_family("mel_vqvae")
    cfg = family.load_config("tiny", [f"train.run_dir={tmp_path / 'run'}", "train.progress=false",
                                      "train.tensorboard=false", "train.max_steps=24", "train.log_every=1",
                                      "data.train_size=16", "data.batch_size=4", "data.eval_size=4",
                                      "eval.every=0", "eval.griffin_lim_iters=4", "train.ckpt_every=24"])
    summary = train("mel_vqvae", cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 24 and np.mean(losses[-6:]) < 0.8 * np.mean(losses[:3])
    ev = summary["eval"]
    assert 1.0 <= ev["perplexity"] <= 64 and 0 < ev["usage"] <= 1
    assert ev["mel_l1_db"] == pytest.approx(ev["mel_l1"] * 20 / math.log(10))
    wav, rate = sf.read(next((tmp_path / "run" / "samples").glob("step_*")) / "0_reconstruction.wav")
    assert rate == 16000 and wav.shape == (16000,) and np.abs(wav).max() > 0
    model = load_from_run(tmp_path / "run")
    assert isinstance(model, MelVQVAE) and bool(model.quantizer.initialized)
