"""Vocos (course_lib.vocoders.vocos) and its training family ``vocos``: shapes, the iSTFT head as an exact inverse,
the phase advance, save/load, gradients, clear errors, the ``data.version`` key, and the tiny config trained and
resumed through ``python -m course_lib.train``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.audio import MelConfig, log_mel, mel_filterbank, stft
from course_lib.train import ConfigError, get_family, load_from_run, train
from course_lib.train import checkpoint as ckpt
from course_lib.train.config import config_to_dict
from course_lib.vocoders import Vocoder
from course_lib.vocoders.vocos import ISTFTHead, Vocos, VocosConfig, mel_prior_init

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = VocosConfig(sample_rate=16_000, n_fft=256, hop_length=64, n_mels=32, dim=16, intermediate_dim=32, num_layers=2,
                   max_magnitude=1000.0, phase_advance=True, mel_prior=True, use_discriminator=True, mpd_periods=(2, 3),
                   mpd_channels=(4, 8, 16),
                   mrd_resolutions=((256, 64, 256),), mrd_channels=4)
FAST = ["train.progress=false", "train.tensorboard=false", "data.train_size=8", "data.eval_size=2", "data.batch_size=2",
        "train.num_threads=1"]


def _model(config: VocosConfig = TINY, seed: int = 0) -> Vocos:
    torch.manual_seed(seed)
    return Vocos(config)


def test_output_is_frames_times_hop_and_features_are_the_course_log_mel():
    model = _model().eval()
    audio = 0.3 * torch.randn(2, 1, 1000)
    mel = model.features(audio)
    assert mel.shape == (2, 32, 1 + 1000 // 64)
    torch.testing.assert_close(mel, log_mel(audio[:, 0], model.mel_config), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        for frames in (1, 5, 16):
            out = model(torch.randn(3, 32, frames))
            assert out.shape == (3, 1, frames * 64)
            assert torch.isfinite(out).all()
    assert isinstance(model, Vocoder) and model.hop_length == 64 and model.mel_config == MelConfig(
        sample_rate=16_000, n_fft=256, hop_length=64, n_mels=32)


def test_istft_head_fed_an_exact_stft_gives_the_signal_back():
    """Magnitude and phase of a centred STFT through the head's iSTFT: the same signal (first T samples)."""
    torch.manual_seed(0)
    head = ISTFTHead(dim=8, n_fft=1024, hop_length=256)
    T = 16_000
    t = torch.arange(T) / 16_000
    x = 0.5 * torch.sin(2 * math.pi * 441.3 * t) + 0.05 * torch.randn(T)
    spec = stft(x[None], 1024, 256)  # (1, 513, 1 + T // 256)
    frames = spec.shape[-1]
    y = head.istft(spec.abs(), spec.angle())
    assert y.shape == (1, 1, frames * 256)
    torch.testing.assert_close(y[0, 0, :T], x, atol=1e-5, rtol=0)


def test_head_forms_exp_magnitude_clipped_and_cos_sin_phase():
    head = ISTFTHead(dim=4, n_fft=16, hop_length=4, max_magnitude=100.0)
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.zero_()
        head.out.bias[:9] = torch.linspace(-2.0, 6.0, 9)  # log-magnitudes; exp(6) = 403 is clipped to 100
        head.out.bias[9:] = 7.0  # an unwrapped phase is fine: only cos and sin of it are used
        magnitude, phase = head.spectrum(torch.zeros(1, 3, 4))
    torch.testing.assert_close(magnitude[0, :, 0], torch.linspace(-2.0, 6.0, 9).exp().clamp(max=100.0))
    assert float(magnitude.max()) == 100.0 and torch.allclose(phase, torch.full_like(phase, 7.0))


def test_constant_mel_repeats_every_hop_without_phase_advance_and_not_with_it():
    """The backbone is a convolution over frames, so a steady mel gives identical frames: Vocos' direct phase makes
    a signal of period hop (partials on multiples of sample_rate / hop). The phase advance (initialised to each
    bin's centre frequency) rotates the phase from frame to frame instead."""
    hop = TINY.hop_length
    frame = torch.randn(1, TINY.n_mels, 1)
    mel = frame.expand(-1, -1, 40).contiguous()
    for advance in (False, True):
        model = _model(VocosConfig(**{**TINY.__dict__, "phase_advance": advance})).eval()
        with torch.no_grad():
            out = model(mel)[0, 0]
        middle = out[12 * hop:28 * hop]  # frames whose receptive field (±12 frames) sees no edge
        scale = float(middle.abs().max())
        assert scale > 1e-4
        repeat = float((middle[hop:] - middle[:-hop]).abs().max()) / scale
        assert (repeat < 1e-4) if not advance else (repeat > 0.05), (advance, repeat)


def test_phase_advance_starts_at_the_bin_centre_frequency():
    head = ISTFTHead(dim=8, n_fft=64, hop_length=16, phase_advance=True)
    with torch.no_grad():
        _, phase = head.spectrum(torch.randn(1, 1, 8).expand(1, 5, 8))
    step = 2 * math.pi * torch.arange(33, dtype=torch.float32) * 16 / 64  # bin k turns at k * sample_rate / n_fft
    diff = phase[0, :, 1:] - phase[0, :, :-1] - step[:, None]  # a multiple of 2 pi
    torch.testing.assert_close(torch.cos(diff), torch.ones_like(diff), atol=1e-5, rtol=0)


def test_mel_prior_inverts_the_mel_bank_for_a_flat_spectrum_and_starts_the_magnitude():
    mel_config = MelConfig()
    weight, bias = mel_prior_init(mel_config)
    assert weight.shape == (513, 80) and bias.shape == (513,)
    flat = torch.full((513, 3), 0.25, dtype=torch.float64)
    mel = torch.log(mel_filterbank(mel_config).double().T @ flat).float()  # (80, 3)
    torch.testing.assert_close(weight @ mel + bias[:, None], torch.full((513, 3), math.log(0.25)), atol=1e-4, rtol=0)
    config = VocosConfig(sample_rate=16_000, n_mels=80, dim=16, intermediate_dim=32, num_layers=1, mel_prior=True,
                         max_magnitude=1000.0, use_discriminator=False)
    model = _model(config).eval()
    audio = 0.5 * torch.sin(2 * math.pi * 440.0 * torch.arange(8000) / 16_000)[None]
    log_mel_in = model.features(audio)
    with torch.no_grad():
        magnitude, _ = model.generator.head.spectrum(model.generator.backbone(log_mel_in), log_mel_in)
    # an untrained model's magnitude is the prior's: the tone's peak bin within 10 dB (the prior spreads one
    # partial's energy over its band, so a pure tone's peak comes out about 6.5 dB low)
    spec = stft(audio, 1024, 256).abs()
    peak = spec[0].argmax(dim=0)
    ratio_db = 20 * torch.log10(magnitude[0].gather(0, peak[None]) / spec[0].gather(0, peak[None]))
    assert float(ratio_db[0, 2:-2].abs().max()) < 10.0
    with pytest.raises(ValueError, match="needs the log-mel"):
        model.generator.head.spectrum(model.generator.backbone(log_mel_in))


def test_save_and_load_give_identical_weights_and_outputs(tmp_path):
    model = _model().eval()
    model.save_pretrained(tmp_path / "v")
    again = Vocos.from_pretrained(tmp_path / "v")
    assert again.config == model.config and not again.training
    assert ckpt.state_dict_sha256(again) == ckpt.state_dict_sha256(model)
    mel = torch.randn(1, 32, 12)
    with torch.no_grad():
        torch.testing.assert_close(again(mel), model(mel), atol=0, rtol=0)
    raw = json.loads((tmp_path / "v" / "config.json").read_text())
    (tmp_path / "v" / "config.json").write_text(json.dumps({**raw, "channels": 3}))
    with pytest.raises(ValueError, match="unknown VocosConfig keys"):
        Vocos.from_pretrained(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="not a saved Vocos"):
        Vocos.from_pretrained(tmp_path / "nothing")


def test_gradients_reach_every_parameter():
    family = get_family("vocos")
    cfg = family.load_config("tiny", ["train.run_dir=unused"])
    model = family.build_model(cfg.model)
    audio = 0.3 * torch.randn(2, 1, cfg.loss.segment_samples)
    loss, logs = family.loss_step(model, {"audio": audio}, cfg, phase="generator", step=0)  # warm-up: reconstruction
    loss.backward()
    for name, p in model.generator.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert {"mel_l1_db", "mrmel_l1_db", "stft_sc", "stft_log_mag"} <= set(logs)
    model.zero_grad(set_to_none=True)
    loss, logs = family.loss_step(model, {"audio": audio}, cfg, phase="discriminator", step=5)
    loss.backward()
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert all(p.grad is None for p in model.generator.parameters())  # the generator ran without gradients
    # (at initialisation every logit lies in (-1, 1), where the hinge's gradients on real and fake cancel in the last
    # layers' biases; the generator phase below reaches every discriminator parameter)
    model.zero_grad(set_to_none=True)
    loss, logs = family.loss_step(model, {"audio": audio}, cfg, phase="generator", step=5)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert {"g_adv", "feature_matching"} <= set(logs)


def test_wrong_mel_shape_is_a_clear_error():
    model = _model().eval()
    with pytest.raises(ValueError, match="expects 32 mel bands"):
        model(torch.randn(1, 80, 10))
    with pytest.raises(ValueError, match=r"log-mel \(B, n_mels=32, frames\)"):
        model(torch.randn(1, 1, 32, 10))
    with pytest.raises(TypeError, match="real floating-point"):
        model(torch.zeros(1, 32, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="mono audio"):
        model.features(torch.randn(1, 2, 1000))
    with pytest.raises(ValueError, match="hop_length"):
        VocosConfig(n_fft=256, hop_length=200).validate()


def test_config_checks_and_data_version(tmp_path):
    family = get_family("vocos")
    base = [f"train.run_dir={tmp_path / 'r'}"]
    for override, message in (
        ("loss.segment_samples=99999", "longer than the clips"),
        ("loss.segment_samples=64", "loss.segment_samples: must be >="),
        ("model.kernel_size=4", "kernel_size must be odd"),
        ("loss.lambda_mel=-1", "loss.lambda_mel: must be >= 0"),
        ("data.version=3", "data.version: the course generators have versions 1, 2, got 3"),
        ("eval.best_metric=loss", "eval.best_metric"),
    ):
        with pytest.raises(ConfigError, match=message):
            family.load_config("tiny", [*base, override])
    with pytest.raises(ConfigError, match="data.version: picks the generator of the generated"):
        family.load_config("tiny", [*base, f"data.source={tmp_path}"])  # the tiny config asks for version 2
    # version 1 is the default and is written without the key, as before it existed
    cfg = family.load_config("tiny", [*base, "data.version=1"])
    assert "version" not in config_to_dict(cfg)["data"]
    assert config_to_dict(family.load_config("tiny", base))["data"]["version"] == 2
    assert config_to_dict(get_family("melgan").load_config("course", base))["data"].get("version") is None
    course = family.load_config("course", base)
    assert course.data.version == 2 and course.model.use_discriminator is False
    paper = family.load_config("paper", base)
    assert paper.model.sample_rate == 24_000 and paper.model.n_mels == 100 and not paper.model.phase_advance
    model = Vocos(VocosConfig(**{**paper.model.__dict__, "use_discriminator": False}))
    assert abs(model.num_parameters() - 13.5e6) / 13.5e6 < 0.02  # Vocos' 13.5 M generator parameters


def test_version_2_data_reaches_the_dataset():
    from course_lib.train.data import build_dataset

    family = get_family("vocos")
    cfg = family.load_config("tiny", ["train.run_dir=unused"])
    ds = build_dataset(cfg.data, "train")
    assert [d.version for d in ds.datasets] == [2, 2] and ds[0]["audio"].shape == (1, 16_000)
    cfg1 = family.load_config("tiny", ["train.run_dir=unused", "data.version=1"])
    assert [d.version for d in build_dataset(cfg1.data, "train").datasets] == [None, None]  # exactly as before


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


@pytest.mark.slow
def test_tiny_config_trains_through_the_command_line_and_resumes_exactly(tmp_path):
    """3 steps through ``python -m course_lib.train vocos --config tiny``, then 3 more resumed (the GAN joins at
    step 2, so both phases are checkpointed): bitwise the weights of 6 uninterrupted steps in this process."""
    run = tmp_path / "cli"
    common = [*FAST, "train.ckpt_every=3", "eval.every=0"]
    cli = [sys.executable, "-m", "course_lib.train", "vocos", "--config", "tiny", f"train.run_dir={run}", *common]
    first = subprocess.run([*cli, "train.max_steps=3", "eval.at_end=false"], cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    second = subprocess.run([*cli, "train.max_steps=6"], cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 6
    assert set(summary["eval"]) == {"mel_l1_db", "griffin_lim_mel_l1_db"}
    assert sorted(p.name for p in (run / "samples" / "step_00000006").iterdir()) == [
        "0_griffin_lim.wav", "0_real.wav", "0_vocos.wav"]
    straight = get_family("vocos").load_config("tiny", [f"train.run_dir={tmp_path / 'straight'}", *common,
                                                        "train.max_steps=6", "eval.at_end=false"])
    train("vocos", straight)
    assert ckpt.state_dict_sha256(load_from_run(run)) == ckpt.state_dict_sha256(load_from_run(tmp_path / "straight"))


def test_reconstruction_only_config_has_one_optimizer_and_lowers_the_loss(tmp_path):
    overrides = [f"train.run_dir={tmp_path / 'r'}", *FAST, "model.use_discriminator=false", "train.max_steps=8",
                 "eval.every=0", "eval.at_end=false", "train.log_every=1", "train.ckpt_every=8"]
    cfg = get_family("vocos").load_config("tiny", overrides)
    train("vocos", cfg)
    model = load_from_run(tmp_path / "r")
    assert model.discriminator is None and model.num_parameters("discriminator") == 0
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r["kind"] == "train"]
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_measure_vocoder_scores_a_vocoder_against_griffin_lim():
    from course_lib.pretrained.measures import measure_vocoder
    from course_lib.vocoders import GriffinLimVocoder

    same = measure_vocoder(GriffinLimVocoder(n_iter=4), n_clips=2, clip_seconds=1.0, griffin_lim_iters=4, vqvae=None,
                           versions=(1, 2), probes=False, timing=False)
    assert set(same) == {"v1_mel_db", "v1_griffin_lim_mel_db", "v2_mel_db", "v2_griffin_lim_mel_db"}
    assert same["v1_mel_db"] == same["v1_griffin_lim_mel_db"] and same["v2_mel_db"] == same["v2_griffin_lim_mel_db"]
    timed = measure_vocoder(_model(VocosConfig(**{**TINY.__dict__, "use_discriminator": False})).eval(), n_clips=2,
                            clip_seconds=1.0, griffin_lim_iters=2, vqvae=None, versions=(1,), probes=False)
    assert timed["rtf_1_thread"] > 0 and timed["rtf_1_thread_cpu"] > 0 and timed["v1_mel_db"] > 0


def _tiny_vqvae(folder: Path) -> Path:
    """A mel VQ-VAE on the tiny config's front end (n_fft 256, hop 64, 32 mels), saved as a folder."""
    from course_lib.codecs.mel_vqvae import MelVQVAE, MelVQVAEConfig

    torch.manual_seed(0)
    MelVQVAE(MelVQVAEConfig(n_fft=256, hop_length=64, n_mels=32, channels=4, ch_mult=(1, 2), embed_dim=8,
                            codebook_size=16)).save_pretrained(folder)
    return folder


def test_vqvae_input_swaps_the_chosen_clips_for_the_vqvae_reconstruction(tmp_path):
    """``loss.vqvae_input``: with probability 1 every clip's input is the VQ-VAE's rendering of its log-mel, with 0
    none is, and the loss still compares against the real clip; a VQ-VAE on another front end is refused."""
    from course_lib.pipelines.diffsound import load_vqvae

    folder = _tiny_vqvae(tmp_path / "vq")
    family = get_family("vocos")
    base = [f"train.run_dir={tmp_path / 'r'}", f"loss.vqvae_input={folder}"]
    target = torch.randn(3, 32, 33) - 3.0
    vq = load_vqvae(folder)
    with torch.no_grad():
        rebuilt = vq(target)[0]
    always = family.load_config("tiny", [*base, "loss.vqvae_input_prob=1.0"])
    torch.testing.assert_close(family._vocoder_input(target, always), rebuilt)
    never = family.load_config("tiny", [*base, "loss.vqvae_input_prob=0.0"])
    assert torch.equal(family._vocoder_input(target, never), target)
    torch.manual_seed(3)
    half = family._vocoder_input(target, family.load_config("tiny", base))
    swapped = [bool(torch.allclose(half[i], rebuilt[i])) for i in range(3)]
    kept = [bool(torch.equal(half[i], target[i])) for i in range(3)]
    assert all(s != k for s, k in zip(swapped, kept, strict=True))  # each clip is one or the other
    assert not torch.allclose(rebuilt, target)  # so the check above can tell them apart
    with pytest.raises(ConfigError, match="loss.vqvae_input_prob: must be in"):
        family.load_config("tiny", [*base, "loss.vqvae_input_prob=1.5"])
    with pytest.raises(ConfigError, match="must share the mel front end"):
        family.load_config("tiny", [f"train.run_dir={tmp_path / 'r'}", "loss.vqvae_input=mel_vqvae_course"])


def test_init_from_fine_tunes_from_another_run_and_refuses_another_family(tmp_path):
    """``train.init_from``: a fresh run starts from the other run's EMA weights (not its own seed's), with its own
    optimizer; resuming that run ignores it; a run of another family is refused by name."""
    common = [*FAST, "model.use_discriminator=false", "eval.every=0", "eval.at_end=false", "train.ckpt_every=2",
              "train.ema_decay=0.9"]
    family = get_family("vocos")
    train("vocos", family.load_config("tiny", [f"train.run_dir={tmp_path / 'a'}", *common, "train.max_steps=2"]))
    source = load_from_run(tmp_path / "a", which="ema")
    folder = _tiny_vqvae(tmp_path / "vq")
    ft = [f"train.run_dir={tmp_path / 'b'}", *common, f"train.init_from={tmp_path / 'a'}", f"loss.vqvae_input={folder}"]
    train("vocos", family.load_config("tiny", [*ft, "train.max_steps=1", "optim.lr=1e-12"]))
    tuned = load_from_run(tmp_path / "b")
    for (name, a), (_, b) in zip(source.state_dict().items(), tuned.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)  # lr 1e-12: one step moves nothing visible
    scratch = get_family("vocos").build_model(family.load_config("tiny", ft).model)
    assert not all(torch.allclose(a, b) for a, b in zip(scratch.state_dict().values(), tuned.state_dict().values(),
                                                         strict=True))
    with pytest.warns(UserWarning, match="changed settings"):  # max_steps grew: resumed, not re-initialised
        summary = train("vocos", family.load_config("tiny", [*ft, "train.max_steps=2", "optim.lr=1e-12"]))
    assert summary["resumed_from_step"] == 1
    mel = tmp_path / "melgan"
    train("melgan", get_family("melgan").load_config("tiny", [f"train.run_dir={mel}", *FAST[:2], "train.max_steps=1",
                                                              "eval.every=0", "eval.at_end=false"]))
    with pytest.raises(ConfigError, match="is a 'melgan' run"):
        train("vocos", family.load_config("tiny", [f"train.run_dir={tmp_path / 'c'}", *common, "train.max_steps=1",
                                                   f"train.init_from={mel}", "train.init_which=last"]))
    with pytest.raises(ConfigError, match="train.init_which: expected one of"):
        family.load_config("tiny", [*ft, "train.init_which=first"])


def test_rate_counts_per_data_version_strip_the_path_and_count_each_version_s_clips():
    """A vocoder card's rates (``v1_vqvae_griffin_lim_count_accuracy`` ...) are shares of the clips of their data
    version with that attribute: the count comes from those clips' labels, not from the audio."""
    from course_lib.pretrained.measures import heldout_clips, prompt_clips, rate_counts

    clips = {v: heldout_clips("sound_events", 6, 1.0, 16_000, v) for v in (1, 2)}
    metrics = {"v1_class_accuracy": 1.0, "v2_vqvae_griffin_lim_count_accuracy": 0.5, "v1_real_pitch_band_accuracy": 1.0,
               "v2_mel_db": 2.0, "rtf_1_thread": 100.0}
    counts = rate_counts(metrics, clips)
    assert set(counts) == {"v1_class_accuracy", "v2_vqvae_griffin_lim_count_accuracy", "v1_real_pitch_band_accuracy"}
    assert counts["v1_class_accuracy"] == 6
    assert counts["v2_vqvae_griffin_lim_count_accuracy"] == sum(c.attributes.get("count") is not None for c in clips[2])
    assert counts["v1_real_pitch_band_accuracy"] == sum(c.attributes.get("pitch_band") is not None for c in clips[1])
    settings = {"n_clips": 6, "clip_seconds": 1.0, "versions": [1, 2]}
    assert {v: [c.attributes for c in cs] for v, cs in prompt_clips("vocos_course", settings).items()} == {
        v: [c.attributes for c in cs] for v, cs in clips.items()}
    assert prompt_clips("vocos_course", {**settings, "probes": False}) == []


def test_diffsound_load_vocoder_tells_a_vocos_folder_from_a_melgan_one(tmp_path):
    from course_lib.pipelines.diffsound import load_vocoder
    from course_lib.vocoders.melgan import MelGAN, MelGANConfig

    _model(VocosConfig(**{**TINY.__dict__, "use_discriminator": False})).save_pretrained(tmp_path / "vocos")
    assert isinstance(load_vocoder(tmp_path / "vocos"), Vocos)
    torch.manual_seed(0)
    MelGAN(MelGANConfig(sample_rate=16_000, n_fft=256, hop_length=64, n_mels=32, ngf=4,
                        upsample_ratios=(8, 8))).save_pretrained(
        tmp_path / "melgan")
    assert isinstance(load_vocoder(str(tmp_path / "melgan")), MelGAN)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_vocoder(tmp_path)


def test_tokenizer_probe_cards_count_events_and_music_per_version_and_codec_levels():
    """``codec_v2`` / ``mel_vqvae_v2`` card rates (``v2_q4_instrument_accuracy``, ``v2_vocos_class_accuracy`` ...)
    are shares of that version's event + music clips carrying the attribute; no probes setting: no rates."""
    from course_lib.pretrained.measures import heldout_clips, prompt_clips, rate_counts

    settings = {"probes": {"n_clips": 4, "clip_seconds": 1.0, "versions": [2]}}
    pool = prompt_clips("codec_v2", settings)
    events = heldout_clips("sound_events", 4, 1.0, 16_000, 2)
    assert set(pool) == {2} and len(pool[2]) == 8
    metrics = {"v2_q4_instrument_accuracy": 0.5, "v2_q1_class_accuracy": 1.0, "v2_vocos_count_accuracy": 1.0,
               "v2_real_tempo_error_bpm": 0.3, "mel_db_q1": 3.0}
    counts = rate_counts(metrics, pool)
    assert counts == {"v2_q4_instrument_accuracy": 4, "v2_q1_class_accuracy": 4,
                      "v2_vocos_count_accuracy": sum(c.attributes["count"] is not None for c in events)}
    assert prompt_clips("mel_vqvae_v2", {}) == []
