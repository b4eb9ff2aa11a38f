"""The 1-D Efficient U-Net (course_lib.diffusion.unet1d): lengths, the length error, zero-initialised output,
live cross-attention that ignores masked tokens, the augmentation-level input, the efficient ordering and the
1/√2 skips (read through hooks), files, configs, and a tiny overfit with the diffusion loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib.diffusion.gaussian import GaussianDiffusion
from course_lib.diffusion.unet1d import PAPER_CONFIGS, UNet1D, UNet1DConfig

torch.set_num_threads(1)
TEXT_DIM, L = 8, 5


def _config(**overrides) -> UNet1DConfig:
    base = dict(in_channels=1, out_channels=1, channels=16, channel_mults=[1, 2, 2], strides=[2, 2, 4],
                num_res_blocks=1, self_attn_stages=[False, False, True], cross_attn_stages=[False, True, True],
                text_dim=TEXT_DIM, num_heads=2, num_groups=4)
    return UNet1DConfig(**{**base, **overrides})


def _model(seed: int = 0, **overrides) -> UNet1D:
    """A small U-Net whose zero-initialised output conv is re-randomised, so inputs can show in the output."""
    torch.manual_seed(seed)
    model = UNet1D(_config(**overrides)).eval()
    nn.init.normal_(model.out_conv.weight, std=0.2)
    return model


def _text(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, L, dtype=torch.bool)
    mask[0, 3:] = False
    return torch.randn(batch, L, TEXT_DIM, generator=g), mask


def test_fresh_model_outputs_exactly_zero():
    torch.manual_seed(0)
    model = UNet1D(_config())
    text, mask = _text()
    out = model(torch.randn(2, 1, 64), torch.rand(2), text, mask)
    assert out.shape == (2, 1, 64) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("length", [16, 48, 160, 336])
def test_output_shape_for_valid_lengths(length):
    model = _model(in_channels=3, out_channels=2)
    text, mask = _text(3)
    out = model(torch.randn(3, 3, length), torch.rand(3), text, mask)
    assert out.shape == (3, 2, length) and torch.isfinite(out).all()


def test_bad_length_gives_a_clear_error_and_valid_length_rounds_up():
    model = _model()
    assert model.config.total_stride == 16
    with pytest.raises(ValueError, match=r"multiple of 16.*got 50, nearest valid: 48 and 64"):
        model(torch.randn(1, 1, 50), torch.rand(1))
    with pytest.raises(ValueError, match=r"got 7, nearest valid: 16"):
        model(torch.randn(1, 1, 7), torch.rand(1))
    assert [model.valid_length(n) for n in (0, 1, 16, 17, 50, 64)] == [16, 16, 16, 32, 64, 64]
    default = UNet1DConfig()
    assert default.total_stride == 64 and default.valid_length(15990) == 16000
    with pytest.raises(ValueError, match=r"in_channels=1"):
        model(torch.randn(1, 2, 64), torch.rand(1))


def test_text_is_live_and_masked_tokens_are_ignored():
    model = _model()
    x, t = torch.randn(2, 1, 64), torch.tensor([0.3, 0.7])
    text, mask = _text()
    out = model(x, t, text, mask)
    other = text.clone()
    other[:, 0] += 1.0  # a real token of both items changes
    assert (model(x, t, other, mask) - out).abs().amax(dim=(1, 2)).min() > 1e-4
    padded = text.clone()
    padded[0, 3:] = torch.randn(2, TEXT_DIM) * 10  # only item 0's masked-out tokens change
    torch.testing.assert_close(model(x, t, padded, mask), out, rtol=0, atol=1e-6)
    # null condition: an all-False mask row is the same as no text at all
    null = torch.zeros_like(mask)
    torch.testing.assert_close(model(x, t, text, null), model(x, t), rtol=0, atol=1e-6)


def test_time_and_aug_level_condition_the_output():
    model = _model(aug_conditioning=True)
    x = torch.randn(2, 1, 32)
    aug = torch.tensor([0.0, 0.0])
    a = model(x, torch.tensor([0.2, 0.2]), aug_level=aug)
    assert (model(x, torch.tensor([0.8, 0.8]), aug_level=aug) - a).abs().max() > 1e-4
    assert (model(x, torch.tensor([0.2, 0.2]), aug_level=torch.tensor([0.5, 0.5])) - a).abs().max() > 1e-4
    # integer steps are t / num_train_steps
    torch.testing.assert_close(model(x, torch.tensor([200, 200]), aug_level=aug), a)
    with pytest.raises(ValueError, match="aug_level"):
        model(x, torch.rand(2))
    with pytest.raises(ValueError, match="aug_conditioning=False"):
        _model()(x, torch.rand(2), aug_level=aug)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(x, torch.tensor([0.5, 1.5]), aug_level=aug)


def test_efficient_ordering_and_scaled_skips():
    """Down stages run their res blocks AFTER downsampling, up stages upsample AFTER theirs, and the skip
    enters the up stage multiplied by 1/√2."""
    model = _model(cross_attn_stages=False, self_attn_stages=False, text_dim=None)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].detach(), output.detach())
        return hook

    model.down_stages[0].blocks[0].register_forward_hook(record("down0_block"))
    model.down_stages[2].register_forward_hook(record("down2"))
    model.up_stages[0].blocks[0].register_forward_hook(record("up2_block"))
    model.upsamples[0].register_forward_hook(record("up2_upsample"))
    model(torch.randn(1, 1, 128), torch.rand(1))
    assert seen["down0_block"][0].shape[-1] == 64  # 128 / stride 2: downsampled before the block
    up_in = seen["up2_block"][0]
    assert up_in.shape[-1] == 128 // 16  # the deepest up stage runs at the coarsest rate
    assert seen["up2_upsample"][1].shape[-1] == 128 // 4  # and is upsampled by its stride afterwards
    skip = seen["down2"][1]
    torch.testing.assert_close(up_in[:, -skip.shape[1]:], skip / math.sqrt(2))


def test_save_and_load_give_identical_outputs(tmp_path):
    model = _model(in_channels=2, aug_conditioning=True)
    x, t, aug = torch.randn(2, 2, 32), torch.rand(2), torch.rand(2)
    text, mask = _text()
    out = model(x, t, text, mask, aug)
    folder = model.save_pretrained(tmp_path / "unet")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    loaded = UNet1D.from_pretrained(folder)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded(x, t, text, mask, aug), out)
    with pytest.raises(FileNotFoundError, match="UNet1D"):
        UNet1D.from_pretrained(tmp_path / "nothing")


def test_config_validation_and_paper_size():
    cfg = UNet1DConfig(num_res_blocks=2)
    assert cfg.num_res_blocks == [2, 2, 2] and UNet1DConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="channel_mults"):
        UNet1D(UNet1DConfig(channel_mults=[1, 2]))
    with pytest.raises(ValueError, match="num_groups"):
        UNet1D(UNet1DConfig(channels=12))
    with pytest.raises(ValueError, match="unknown UNet1DConfig keys"):
        UNet1DConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="text_dim=None"):
        _model(text_dim=None, cross_attn_stages=False)(torch.randn(1, 1, 16), torch.rand(1), *_text(1))
    assert set(PAPER_CONFIGS) == {"imagen-sr-efficient-1d"}
    with torch.device("meta"):
        big = UNet1D(UNet1DConfig.paper())
    assert 1e8 < big.num_parameters() < 1e9


def test_tiny_overfit_reduces_the_diffusion_loss():
    torch.manual_seed(0)
    model = UNet1D(_config(strides=[2, 2, 2], text_dim=None, cross_attn_stages=False))
    gd = GaussianDiffusion(schedule="cosine", parameterisation="eps")
    n = 128
    tt = torch.arange(n) / n
    x0 = (0.6 * torch.sin(2 * math.pi * 4 * tt) + 0.2 * torch.sin(2 * math.pi * 11 * tt)).view(1, 1, n)
    g = torch.Generator().manual_seed(1)
    t_eval, noise_eval = torch.rand(64, generator=g), torch.randn(64, 1, n, generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            return gd.loss(model, x0.expand(64, 1, n), t=t_eval, noise=noise_eval)[0].item()

    before = eval_loss()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(80):
        loss, _ = gd.loss(model, x0.expand(4, 1, n), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert before == pytest.approx(1.0, abs=0.05)  # zero output: the ε loss is E[ε²]
    assert after < before / 5
