"""Checkpoints: atomic writes, keep-last-N, weights_only training state, RNG round trips, load_from_run."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from course_lib.train import CheckpointError, config_to_dict, get_family, load_from_run
from course_lib.train import checkpoint as ckpt


@pytest.fixture()
def setup(tmp_path):
    family = get_family("mel_autoencoder")
    cfg = family.load_config("tiny", [f"train.run_dir={tmp_path / 'run'}", "model.channels=8"])
    torch.manual_seed(0)
    model = family.build_model(cfg.model)
    return family, cfg, model, tmp_path / "run"


def _save(run_dir, step, family, cfg, model, keep_last=2, ema=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, cfg.model.n_mels, 5)).sum().backward()
    opt.step()
    state = {"step": step, "optimizer": opt.state_dict(), "rng": [ckpt.capture_rng_state()]}
    return ckpt.save_checkpoint(run_dir, step, family=family.name, config=config_to_dict(cfg), model=model,
                                state=state, ema_model=ema, keep_last=keep_last)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.txt"
    ckpt.atomic_write_text(path, "good")

    def half_then_crash(p):
        p.write_text("half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(path, half_then_crash)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_keep_last_and_latest(setup):
    family, cfg, model, run_dir = setup
    for step in (5, 10, 15):
        _save(run_dir, step, family, cfg, model, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step_00000010", "step_00000015"]
    assert ckpt.latest_checkpoint(run_dir).name == "step_00000015"
    meta = ckpt.read_checkpoint_meta(ckpt.latest_checkpoint(run_dir))
    assert meta["family"] == "mel_autoencoder" and meta["step"] == 15
    assert meta["config"]["model"]["channels"] == 8


def test_a_crash_while_writing_a_checkpoint_loses_nothing(setup, monkeypatch):
    family, cfg, model, run_dir = setup
    first = _save(run_dir, 5, family, cfg, model)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt("killed while writing state.pt")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(run_dir, 10, family, cfg, model)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step_00000005"]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    # a temp folder left by a killed process (no cleanup ran) is ignored, then removed by the next save
    (run_dir / "checkpoints" / ".tmp-step_00000010-abc").mkdir()
    assert ckpt.latest_checkpoint(run_dir).name == "step_00000005"
    _save(run_dir, 10, family, cfg, model)
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_training_state_loads_with_weights_only_and_restores_rng(setup):
    family, cfg, model, run_dir = setup
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    folder = _save(run_dir, 5, family, cfg, model)
    draws = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    state = torch.load(folder / ckpt.STATE_FILE, weights_only=True)  # only tensors / plain containers
    assert state["step"] == 5 and "exp_avg" in state["optimizer"]["state"][0]
    ckpt.restore_rng_state(state["rng"][0])
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])


def test_load_from_run_rebuilds_the_model(setup):
    family, cfg, model, run_dir = setup
    ema = family.build_model(cfg.model)
    _save(run_dir, 5, family, cfg, model, ema=ema)
    loaded = load_from_run(run_dir)
    assert type(loaded).__name__ == "MelAutoencoder" and not loaded.training
    assert ckpt.state_dict_sha256(loaded) == ckpt.state_dict_sha256(model)
    assert ckpt.state_dict_sha256(load_from_run(run_dir, "ema")) == ckpt.state_dict_sha256(ema)
    ckpt.save_best(run_dir, 5, family=family.name, config=config_to_dict(cfg), model=ema, metric="loss", value=1.0)
    ckpt.save_best(run_dir, 9, family=family.name, config=config_to_dict(cfg), model=model, metric="loss", value=0.5)
    assert ckpt.read_best(run_dir)["step"] == 9
    assert [p.name for p in (run_dir / "checkpoints").glob("best_step_*")] == ["best_step_00000009"]
    assert ckpt.state_dict_sha256(load_from_run(run_dir, "best")) == ckpt.state_dict_sha256(model)
    x = torch.randn(2, cfg.model.n_mels, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_load_from_run_errors(setup):
    family, cfg, model, run_dir = setup
    with pytest.raises(CheckpointError, match="does not exist"):
        load_from_run(run_dir)
    run_dir.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds no checkpoint yet"):
        load_from_run(run_dir)
    _save(run_dir, 5, family, cfg, model)
    with pytest.raises(CheckpointError, match="trained without EMA"):
        load_from_run(run_dir, "ema")
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        load_from_run(run_dir, "best")
    with pytest.raises(ValueError, match="which must be"):
        load_from_run(run_dir, "first")


def test_weights_that_do_not_fit_are_refused(setup, tmp_path):
    family, cfg, model, run_dir = setup
    folder = _save(run_dir, 5, family, cfg, model)
    wider = family.build_model(family.load_config("tiny", ["model.channels=16"]).model)
    with pytest.raises(CheckpointError, match="does not fit the model built from its config: size mismatch"):
        ckpt.load_weights(wider, folder / ckpt.MODEL_FILE)


def test_state_hash_sees_one_changed_value(setup):
    _, _, model, _ = setup
    before = ckpt.state_dict_sha256(model)
    with torch.no_grad():
        p = next(model.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1e9))
    assert ckpt.state_dict_sha256(model) != before


def test_model_save_pretrained_round_trip(setup, tmp_path):
    from course_lib.train.families.mel_autoencoder import MelAutoencoder

    _, cfg, model, _ = setup
    folder = model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    back = MelAutoencoder.from_pretrained(folder)
    assert back.config == cfg.model and ckpt.state_dict_sha256(back) == ckpt.state_dict_sha256(model)


def test_state_dict_digest_covers_0_dim_buffers_such_as_batchnorm_counters():
    """BatchNorm keeps ``num_batches_tracked``, a 0-dim int64 buffer: the digest must read it (it failed to, and the
    end-of-run replica check of a codec with the iSTFT decoder crashed after its last checkpoint)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 1), torch.nn.BatchNorm1d(3))
    before = ckpt.state_dict_sha256(model)
    model.train()(torch.randn(4, 2, 5))  # updates the running statistics and the counter
    after = ckpt.state_dict_sha256(model)
    assert before != after
    model[1].num_batches_tracked += 1  # the counter alone changes the digest
    assert ckpt.state_dict_sha256(model) != after
