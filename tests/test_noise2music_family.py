"""The ``n2m_generator`` and ``n2m_cascader`` training families: engine runs with checkpoint and exact resume,
the audio levels and lengths each stage trains on, the cascader's noise-conditioning augmentation (levels in
range, the noise formula, what the U-Net receives), condition dropout, validation and the shipped configs.

Every model here is tiny and random; only the shipped course text encoder is loaded."""

from __future__ import annotations

import pytest
import torch

from course_lib.audio import resample
from course_lib.diffusion import alpha_sigma
from course_lib.pipelines.noise2music import Noise2MusicStage
from course_lib.train import CheckpointError, ConfigError, get_family, load_from_run, train
from course_lib.train.data import TRAIN_SPLIT, build_dataset, default_collate

FAST = ["train.progress=false", "train.tensorboard=false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny(family, *overrides):
    return get_family(family).load_config("tiny", [*FAST, *overrides])


def a_batch(cfg, size=4):
    data = build_dataset(cfg.data, TRAIN_SPLIT, cfg.train.seed)
    return default_collate(data)([data[i] for i in range(size)])


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


class Recorder:
    """Wraps a stage's U-Net forward and keeps what it was called with."""

    def __init__(self, stage: Noise2MusicStage) -> None:
        self.calls: list[dict] = []
        forward = stage.unet.forward

        def record(x, t, text=None, text_mask=None, aug_level=None):
            self.calls.append({"x": x.detach().clone(), "t": t, "text_mask": text_mask, "aug_level": aug_level})
            return forward(x, t, text, text_mask, aug_level)

        stage.unet.forward = record


# ---- engine runs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["n2m_generator", "n2m_cascader"])
def test_tiny_stage_trains_checkpoints_and_resumes_exactly(family, tmp_path):
    straight = tiny(family, f"train.run_dir={tmp_path / 'a'}", "train.max_steps=4", "train.ckpt_every=2",
                    "eval.at_end=false")
    train(family, straight)
    first = tiny(family, f"train.run_dir={tmp_path / 'b'}", "train.max_steps=2", "train.ckpt_every=2")
    summary = train(family, first)
    expected = {"loss", "x0_mse"} | ({"aug_level"} if family == "n2m_cascader" else set())
    assert set(summary["eval"]) == expected
    names = sorted(p.name for p in next((tmp_path / "b" / "samples").iterdir()).iterdir())
    suffixes = ["_generated.wav", "_real_low.wav"] if family == "n2m_generator" else \
        ["_input.wav", "_real.wav", "_upsampled.wav"]
    assert len(names) == len(suffixes) and all(n.endswith(s) for n, s in zip(names, suffixes))
    resumed = tiny(family, f"train.run_dir={tmp_path / 'b'}", "train.max_steps=4", "train.ckpt_every=2",
                   "eval.at_end=false")
    with pytest.warns(UserWarning, match="changed settings .*eval.at_end, train.max_steps"):
        assert train(family, resumed)["steps"] == 4
    a, b = load_from_run(tmp_path / "a"), load_from_run(tmp_path / "b")
    assert isinstance(b, Noise2MusicStage) and b.config == resumed.model  # the stage with its sampling settings
    assert same_weights(a, b)
    # the weights belong to this model config (rates, diffusion, sampling level): changing one is refused
    with pytest.raises(CheckpointError, match=r"model.diffusion.schedule .*use a new train.run_dir"):
        train(family, tiny(family, f"train.run_dir={tmp_path / 'b'}", "train.max_steps=5",
                           "model.diffusion.schedule=" + ("linear" if family == "n2m_generator" else "cosine")))


def test_tiny_generator_learns(tmp_path):
    """The evaluation-style loss (fixed t and noise: the evaluation's seeded draws) on the 4 training clips falls
    well below a fresh model's (whose zero-initialised output conv predicts v = 0). (The tiny cascader needs
    far more steps: most of its loss is at small t, where v ≈ ε must be told from x_t at a 1/σ gain.)"""
    family = "n2m_generator"
    cfg = tiny(family, f"train.run_dir={tmp_path}", "train.max_steps=16", "eval.num_samples=0", "data.train_size=4",
               "optim.lr=5e-3")
    train(family, cfg)
    fam, batch = get_family(family), a_batch(cfg)
    torch.manual_seed(cfg.train.seed)
    fresh, trained = fam.build_model(cfg.model).eval(), load_from_run(tmp_path)
    with torch.no_grad():
        before, after = (float(fam.loss_step(m, batch, cfg, torch.Generator().manual_seed(0))[0])
                         for m in (fresh, trained))
    assert after < 0.7 * before, (before, after)


# ---- what each stage trains on --------------------------------------------------------------------------------


def test_generator_trains_on_peak_scaled_low_rate_clips_of_a_valid_length():
    family = get_family("n2m_generator")
    cfg = tiny("n2m_generator", "data.clip_seconds=1.3")  # 4160 low-rate samples -> cut down to 4160 // 16 * 16
    batch = a_batch(cfg)
    high, low = family.levels(batch["audio"], cfg)
    assert torch.allclose(high.abs().amax(dim=-1), torch.full((4, 1), 0.9))
    assert torch.allclose(low, resample(high, 16000, 3200))
    x0 = family.training_inputs(batch, cfg)["x0"]
    assert x0.shape == (4, 1, 4160 // 16 * 16) and torch.equal(x0, low[..., :4160 // 16 * 16])
    assert family.train_length(cfg) % cfg.model.unet.total_stride == 0


def test_cascader_crops_and_noise_augmentation():
    family = get_family("n2m_cascader")
    cfg = tiny("n2m_cascader", "cascade.aug_max=0.4")
    batch = a_batch(cfg)
    inputs = family.training_inputs(batch, cfg, torch.Generator().manual_seed(3))
    x0, cond, clean, levels = inputs["x0"], inputs["cond"], inputs["clean_cond"], inputs["aug_level"]
    crop = family.crop_length(cfg)
    assert crop == 4000 and x0.shape == cond.shape == clean.shape == (4, 1, crop)
    # the crops are the same window of the peak-scaled clip and of its low-rate version upsampled again
    high, low = family.levels(batch["audio"], cfg)
    up = resample(low, 3200, 16000)
    offsets = torch.randint(0, 16000 - crop + 1, (4,), generator=torch.Generator().manual_seed(3))
    for i, o in enumerate(offsets.tolist()):
        assert torch.equal(x0[i], high[i, :, o:o + crop]) and torch.equal(clean[i], up[i, :, o:o + crop])
    # levels uniform in [0, aug_max], one per clip; the conditioning is q(c_s | c) of the cascader's schedule
    assert levels.shape == (4,) and bool(((levels >= 0) & (levels <= 0.4)).all()) and levels.unique().numel() == 4
    a, s = alpha_sigma(cfg.model.diffusion.schedule, levels)
    eps = (cond - a.view(-1, 1, 1) * clean) / s.view(-1, 1, 1)
    assert eps.std(dim=-1).flatten().tolist() == pytest.approx([1.0] * 4, abs=0.06)
    assert abs(float(eps.mean())) < 0.05
    # aug_max = 0: the conditioning is the clean upsampled audio
    clean_only = family.training_inputs(batch, tiny("n2m_cascader", "cascade.aug_max=0", "model.aug_level=0"))
    assert torch.equal(clean_only["cond"], clean_only["clean_cond"]) and not clean_only["aug_level"].any()


def test_the_cascader_unet_receives_the_noisy_conditioning_and_its_level():
    family = get_family("n2m_cascader")
    cfg = tiny("n2m_cascader")
    batch = a_batch(cfg)
    torch.manual_seed(0)
    stage = family.build_model(cfg.model).train()
    rec = Recorder(stage)
    expected = family.training_inputs(batch, cfg, torch.Generator().manual_seed(7))
    loss, metrics = family.loss_step(stage, batch, cfg, torch.Generator().manual_seed(7))
    (call,) = rec.calls
    assert call["x"].shape == (4, 2, 4000)
    assert torch.equal(call["x"][:, 1:], expected["cond"])  # channel 2: the noisy upsampled low-rate audio
    assert torch.equal(call["aug_level"], expected["aug_level"])
    assert metrics["aug_level"] == pytest.approx(float(expected["aug_level"].mean()))
    assert loss.shape == () and loss.requires_grad


def test_condition_dropout_in_training_only():
    family = get_family("n2m_generator")
    cfg = tiny("n2m_generator", "model.diffusion.cond_drop=1.0")
    batch = a_batch(cfg)
    stage = family.build_model(cfg.model)
    rec = Recorder(stage)
    _, metrics = family.loss_step(stage.train(), batch, cfg)
    assert metrics["cond_dropped"] == 1.0 and not rec.calls[-1]["text_mask"].any()  # the null condition
    _, metrics = family.loss_step(stage.eval(), batch, cfg)
    assert metrics["cond_dropped"] == 0.0 and rec.calls[-1]["text_mask"].any(dim=1).all()
    cfg = tiny("n2m_generator", "model.diffusion.cond_drop=0.0")
    family.loss_step(stage.train(), batch, cfg)
    assert rec.calls[-1]["text_mask"].any(dim=1).all()


# ---- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, overrides, message", [
    ("n2m_generator", ["model.stage=cascader"], "model: a cascader needs unet.in_channels=2"),
    ("n2m_cascader", ["model.stage=generator", "model.unet.in_channels=1", "model.unet.aug_conditioning=false"],
     "model.stage: the n2m_cascader family trains a cascader"),
    ("n2m_generator", ["model.unet.text_dim=64"], r"model.unet.text_dim=64 must equal .*\(128\)"),
    ("n2m_generator", ["model.high_rate=22050"], "data.sample_rate=16000 must equal model.high_rate=22050"),
    ("n2m_generator", ["model.low_rate=16000"], "low_rate .* must be below high_rate"),
    ("n2m_generator", ["model.diffusion.parameterisation=score"], "model.diffusion.parameterisation"),
    ("n2m_generator", ["model.unet.strides=[16,16,16]", "model.unet.channel_mults=[1,2,2]",
                       "model.unet.num_res_blocks=[1,1,1]", "model.unet.self_attn_stages=[false,false,true]",
                       "model.unet.cross_attn_stages=[false,false,true]"],
     "3200 samples at model.low_rate=3200, shorter than the U-Net's total stride 4096"),
    ("n2m_cascader", ["cascade.crop_seconds=1.5"], "cascade.crop_seconds=1.5 gives 24000 samples"),
    ("n2m_cascader", ["model.aug_level=0.6"], r"model.aug_level=0.6 .* above cascade.aug_max=0.5"),
    ("n2m_cascader", ["eval.sample_seconds=2.0"], "eval.sample_seconds=2.0 must be <= data.clip_seconds"),
    ("n2m_generator", ["eval.steps=0"], "eval.steps"),
])
def test_bad_configs_are_named(family, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(family, *overrides)


@pytest.mark.parametrize("family", ["n2m_generator", "n2m_cascader"])
@pytest.mark.parametrize("size", ["tiny", "course", "paper"])
def test_packaged_configs_load(family, size):
    cfg = get_family(family).load_config(size, validate=False)
    cfg.model.validate()
    assert cfg.model.stage == family.split("_")[1] and cfg.model.diffusion.cond_drop == 0.1
    if size != "paper":
        get_family(family).validate(cfg)  # the course text encoder is 128-d; the paper's T5 is checked on a GPU box
    if size == "course":
        assert cfg.train.num_threads == 1 and cfg.model.unet.valid_length(12800) == 12800


@pytest.mark.parametrize("name", ["audiogen", "diffsound", "n2m_generator"])
def test_a_batch_without_captions_is_a_clear_error_in_every_text_family(name):
    from course_lib.train import TrainingError

    family = get_family(name)
    config = family.load_config("tiny")
    with pytest.raises(TrainingError, match=f"the {name} family needs a caption"):
        family.embed(None, config, torch.device("cpu"))
    assert family.embed(["a bell rings twice", ""], config, torch.device("cpu")).embeddings.shape[0] == 2
