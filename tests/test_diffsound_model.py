"""Diffsound's token decoder (course_lib.diffusion.diffsound): shapes, bidirectionality, text, CFG, files, errors,
and a tiny overfit that must learn a grid and then generate it."""

from __future__ import annotations

import time

import pytest
import torch

from course_lib.diffusion.diffsound import DiffsoundConfig, DiffsoundModel
from course_lib.nn.guidance import null_mask_like

TINY = dict(codebook_size=16, grid_rows=4, max_cols=8, dim=32, num_layers=2, num_heads=4, text_dim=12, num_steps=20)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> DiffsoundModel:
    torch.manual_seed(0)
    return DiffsoundModel(DiffsoundConfig(**(TINY | overrides))).eval()


def inputs(batch: int = 2, cols: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, 17, (batch, 4, cols), generator=gen)  # codes and [MASK] = 16
    t = torch.randint(1, 21, (batch,), generator=gen)
    text = torch.randn(batch, 5, 12, generator=gen)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return x_t, t, text, mask


def test_forward_shape_and_bidirectional_attention():
    model = tiny()
    x_t, t, text, mask = inputs()
    logits = model(x_t, t, text, mask)
    assert logits.shape == (2, 16, 4, 6) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    changed = x_t.clone()
    changed[:, 3, 5] = (changed[:, 3, 5] + 1) % 16  # the last token of the grid
    other = model(changed, t, text, mask)
    # non-causal: an earlier position (row 0, col 0) sees the change too
    assert not torch.allclose(logits[:, :, 0, 0], other[:, :, 0, 0])
    assert model.mask_id == 16 and model.num_steps == 20


def test_text_changes_the_output_and_the_null_condition_ignores_it():
    model = tiny()
    x_t, t, text, mask = inputs()
    base = model(x_t, t, text, mask)
    assert not torch.allclose(base, model(x_t, t, text + 1.0, mask))
    null = null_mask_like(mask)
    torch.testing.assert_close(model(x_t, t, text, null), model(x_t, t, torch.randn_like(text), null))


def test_timestep_reaches_the_output_once_the_adaptive_norms_are_trained():
    model = tiny()
    x_t, _, text, mask = inputs()
    one, ten = torch.ones(2, dtype=torch.long), torch.full((2,), 10)
    # adaptive LayerNorm is zero-initialised: at initialisation t has no effect, after a step it has
    torch.testing.assert_close(model(x_t, one, text, mask), model(x_t, ten, text, mask))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss, _ = model.loss(x_t.clamp_max(15), text, mask, generator=torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    model.eval()
    assert not torch.allclose(model(x_t, one, text, mask), model(x_t, ten, text, mask))


def test_loss_metrics_gradient_and_reproducibility():
    model = tiny().train()
    tokens = torch.randint(0, 16, (3, 4, 5), generator=torch.Generator().manual_seed(1))
    _, _, text, mask = inputs(batch=3)
    loss, metrics = model.loss(tokens, text, mask, generator=torch.Generator().manual_seed(2))
    again, _ = model.loss(tokens, text, mask, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(loss) and float(loss.detach()) > 0 and torch.equal(loss, again)
    assert set(metrics) >= {"vb", "aux_ce", "accuracy", "mask_rate"}
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.token_embedding.weight.grad.abs().sum() > 0 and model.to_logits.weight.grad.abs().sum() > 0
    fixed, _ = model.loss(tokens, text, mask, t=torch.tensor([1, 10, 20]))
    assert torch.isfinite(fixed)


def test_cfg_scale_one_is_the_conditional_path_and_guidance_mixes_log_probs():
    model = tiny()
    _, _, text, mask = inputs()
    out = model.generate(text, mask, cols=5, steps=4, cfg_scale=1.0, truncation=0.86,
                         generator=torch.Generator().manual_seed(3))
    manual = model.diffusion.sample(lambda x, t: model(x, t, text, mask), (2, 4, 5), steps=4, truncation=0.86,
                                    generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, manual)
    assert out.shape == (2, 4, 5) and int(out.max()) < 16 and int(out.min()) >= 0
    x_t, t, _, _ = inputs(cols=5)
    cond = torch.log_softmax(model(x_t, t, text, mask), 1)
    uncond = torch.log_softmax(model(x_t, t, text, null_mask_like(mask)), 1)
    torch.testing.assert_close(model.guided_log_probs(x_t, t, text, mask, 0.0), uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.guided_log_probs(x_t, t, text, mask, 3.0),
                               torch.log_softmax(uncond + 3.0 * (cond - uncond), 1), atol=1e-5, rtol=1e-5)
    explicit_null = (text, null_mask_like(mask))
    torch.testing.assert_close(model.guided_log_probs(x_t, t, text, mask, 3.0, null_text=explicit_null),
                               model.guided_log_probs(x_t, t, text, mask, 3.0), atol=1e-5, rtol=1e-5)
    guided = model.generate(text, mask, cols=5, steps=4, cfg_scale=3.0, generator=torch.Generator().manual_seed(3),
                            return_trajectory=True)
    assert len(guided[1]) == 5 and bool((guided[0] < 16).all())


def test_save_load_roundtrip(tmp_path):
    model = tiny()
    x_t, t, text, mask = inputs()
    folder = model.save_pretrained(tmp_path / "diffsound")
    loaded = DiffsoundModel.from_pretrained(folder)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded(x_t, t, text, mask), model(x_t, t, text, mask))
    assert "diffusion.log_a" not in model.state_dict()  # the schedule is rebuilt from the config
    with pytest.raises(FileNotFoundError, match="does not hold a saved DiffsoundModel"):
        DiffsoundModel.from_pretrained(tmp_path / "nothing")


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    x_t, t, text, mask = inputs()
    with pytest.raises(ValueError, match=r"ids must be in \[0, 16\]"):
        model(x_t + 17, t, text, mask)
    with pytest.raises(ValueError, match=r"tokens ids must be in \[0, 15\]"):
        model.loss(torch.full((2, 4, 6), 16), text, mask)
    with pytest.raises(ValueError, match="text_dim = 12"):
        model(x_t, t, torch.randn(2, 5, 7), None)
    with pytest.raises(ValueError, match=r"t must be in \[1, T=20\]"):
        model(x_t, torch.tensor([0, 3]), text, mask)
    with pytest.raises(ValueError, match=r"t must be in \[1, T=20\]"):
        model(x_t, torch.tensor([21, 3]), text, mask)
    with pytest.raises(ValueError, match="4 token rows"):
        model(x_t[:, :3], t, text, mask)
    with pytest.raises(ValueError, match="max_cols=8"):
        model(torch.zeros(2, 4, 9, dtype=torch.long), t, text, mask)
    with pytest.raises(ValueError, match="max_cols=8"):
        model.generate(text, mask, cols=9)
    with pytest.raises(ValueError, match=r"text_mask must be a bool tensor \(B, L\)"):
        model(x_t, t, text, mask.float())


@pytest.mark.parametrize("field, value, pattern", [
    ("dim", 30, "divisible by num_heads"),
    ("codebook_size", 0, "DiffsoundConfig.codebook_size"),
    ("dropout", 1.0, "DiffsoundConfig.dropout"),
    ("gamma_bar_end", 0.99999999, "alpha_bar_end \\+ gamma_bar_end"),
    ("num_steps", 1, "DiffsoundConfig.num_steps"),
    ("aux_weight", -1.0, "DiffsoundConfig.aux_weight"),
])
def test_config_validation(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        DiffsoundConfig(**(TINY | {field: value})).validate()
    with pytest.raises(ValueError, match="unknown DiffsoundConfig keys"):
        DiffsoundConfig.from_dict({"width": 3})
    assert DiffsoundConfig.from_dict(DiffsoundConfig(**TINY).to_dict()) == DiffsoundConfig(**TINY)


def test_paper_config_builds_on_the_meta_device():
    cfg = DiffsoundConfig.paper()
    assert (cfg.num_layers, cfg.dim, cfg.num_heads, cfg.text_dim, cfg.gamma_bar_end) == (19, 1024, 16, 512, 0.9)
    with torch.device("meta"):
        model = DiffsoundModel(cfg)
    assert len(model.transformer.blocks) == 19


def test_tiny_overfit_learns_the_grid_and_generates_it():
    torch.manual_seed(0)
    model = DiffsoundModel(DiffsoundConfig(**(TINY | dict(dim=64))))
    tokens = torch.randint(0, 16, (1, 4, 8), generator=torch.Generator().manual_seed(7))
    text = torch.randn(1, 3, 12, generator=torch.Generator().manual_seed(8))
    mask = torch.ones(1, 3, dtype=torch.bool)
    batch = 8
    x0 = tokens.expand(batch, -1, -1)
    half = torch.full((batch,), 10)

    def accuracy_at_half() -> float:
        model.eval()
        with torch.no_grad():
            x_t = model.diffusion.q_sample(x0.reshape(batch, -1), half, generator=torch.Generator().manual_seed(9))
            pred = model(x_t.view_as(x0), half, text.expand(batch, -1, -1), mask.expand(batch, -1)).argmax(1)
        model.train()
        return float((pred == x0).float().mean())

    before = accuracy_at_half()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(10)
    start = time.perf_counter()
    for _ in range(120):
        loss, _ = model.loss(x0, text.expand(batch, -1, -1), mask.expand(batch, -1), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    after = accuracy_at_half()
    assert before < 0.3 and after > 0.9, (before, after)  # chance is 1/16
    out = model.generate(text, mask, cols=8, steps=5, generator=torch.Generator().manual_seed(11))
    assert float((out == tokens).float().mean()) > 0.9
    assert elapsed < 30, elapsed
