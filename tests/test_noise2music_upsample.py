"""Noise2MusicStageConfig.upsample: the U-Net's sub-pixel upsampling (the default, the shipped course stages) has
per-phase weights that put a fixed pattern with the stride's period into every output (spectral lines at
multiples of rate / 4, rate / 16: the 1.6, 4 and 7 kHz lines of the shipped cascade); resize-convolution
("nearest" / "linear") has none. Also: the default is unchanged, old configs load, the option round-trips and
the training families read it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from course_lib.pipelines.noise2music import Noise2MusicStage, Noise2MusicStageConfig, ResizeConvUp
from course_lib.pretrained import path as path_of
from course_lib.train import get_family

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

FAST = ["train.progress=false", "train.tensorboard=false"]


def randomised(upsample: str, seed: int = 0) -> Noise2MusicStage:
    """The tiny generator with ``upsample``, every parameter random (as after training: the sub-pixel phases no
    longer equal, the zero-initialised output conv no longer zero)."""
    cfg = get_family("n2m_generator").load_config("tiny", FAST).model
    torch.manual_seed(seed)
    stage = Noise2MusicStage(dataclasses.replace(cfg, upsample=upsample)).eval()
    with torch.no_grad():
        for p in stage.parameters():
            p.normal_(0.0, 0.3)
    return stage


def periodic_part(stage: Noise2MusicStage) -> float:
    """The U-Net's output for a constant input, away from the edges: the RMS of its pattern with the period of
    the total stride (its mean over whole periods minus the overall mean), over the output's RMS."""
    period = stage.config.unet.total_stride  # 16 for the tiny config
    n = 64 * period
    with torch.no_grad():
        y = stage(torch.full((1, 1, n), 0.3), torch.tensor([0.5]))[0, 0]
    middle = y[n // 4: 3 * n // 4]  # a whole number of periods, starting at a multiple of the period
    template = middle.view(-1, period).mean(0)
    return float((template - template.mean()).pow(2).mean().sqrt() / middle.pow(2).mean().sqrt())


def test_subpixel_upsampling_makes_a_fixed_periodic_pattern():
    assert periodic_part(randomised("subpixel")) > 1e-2


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_convolution_makes_no_fixed_pattern(mode):
    stage = randomised(mode)
    assert all(isinstance(up, ResizeConvUp) and up.mode == mode for up in stage.unet.upsamples)
    assert periodic_part(stage) < 1e-5


def test_default_and_shipped_stages_keep_subpixel_upsampling(tmp_path):
    assert Noise2MusicStageConfig().upsample == "subpixel" and "upsample" not in Noise2MusicStageConfig().to_dict()
    for name in ("n2m_generator_course", "n2m_cascader_course"):
        saved = json.loads((path_of(name) / "config.json").read_text())
        assert "upsample" not in saved
        assert Noise2MusicStageConfig.from_dict(saved).upsample == "subpixel"
    for family in ("n2m_generator", "n2m_cascader"):
        assert get_family(family).load_config("course", FAST).model.upsample == "subpixel"


def test_resize_stage_round_trips_and_trains(tmp_path):
    stage = randomised("linear")
    stage.save_pretrained(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "config.json").read_text())["upsample"] == "linear"
    loaded = Noise2MusicStage.from_pretrained(tmp_path / "s")
    assert loaded.config == stage.config and isinstance(loaded.unet.upsamples[0], ResizeConvUp)
    x = torch.randn(2, 1, 256)
    # a float32 round trip of the same weights, run on the same input by the same kernels: exact by construction
    assert torch.equal(loaded(x, torch.tensor([0.3, 0.7])), stage(x, torch.tensor([0.3, 0.7])))
    # wrapping a U-Net keeps its own upsampling
    assert Noise2MusicStage(Noise2MusicStageConfig(), unet=stage.unet).config.upsample == "linear"
    # the families read model.upsample, and a step of each trains
    from course_lib.train.data import TRAIN_SPLIT, build_dataset, default_collate

    for family in ("n2m_generator", "n2m_cascader"):
        fam = get_family(family)
        cfg = fam.load_config("tiny", [*FAST, "model.upsample=nearest", "data.clip_seconds=1.0"])
        assert cfg.model.upsample == "nearest"
        model = fam.build_model(cfg.model).train()
        data = build_dataset(cfg.data, TRAIN_SPLIT, cfg.train.seed)
        batch = default_collate(data)([data[i] for i in range(2)])
        loss, _ = fam.loss_step(model, batch, cfg)
        loss.backward()
        assert torch.isfinite(loss) and model.unet.upsamples[-1].conv.weight.grad is not None
    with pytest.raises(ValueError, match="upsample: expected one of"):
        dataclasses.replace(Noise2MusicStageConfig(), upsample="bilinear").validate()
