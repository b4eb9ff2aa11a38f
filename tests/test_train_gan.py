"""GAN (multi-optimizer) training in the engine, through the ``melgan`` family: exact resume, both networks
train, each group keeps its own optimizer/schedule, the EMA covers the generator only, both phases see the
same crops, bad groups and configs are refused, and a short run lowers the mel distance."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.audio import MelConfig
from course_lib.train import ConfigError, TrainingError, get_family, load_from_run, register_family, train
from course_lib.train import checkpoint as ckpt
from course_lib.train.__main__ import main
from course_lib.train.families import OptimizerGroup
from course_lib.train.families.melgan import MelGANFamily

FAST = ["train.progress=false", "train.tensorboard=false", "eval.every=0", "eval.at_end=false",
        "data.train_size=8", "data.eval_size=2", "data.batch_size=2"]


def tiny(tmp_path, *overrides, name="run"):
    return get_family("melgan").load_config("tiny", [f"train.run_dir={tmp_path / name}", *FAST, *overrides])


def records(run_dir, kind="train"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def initial_model(cfg):
    torch.manual_seed(cfg.train.seed)  # the engine seeds exactly so before building
    return get_family("melgan").build_model(cfg.model)


def _params(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_gan_resume_is_bitwise_exact_and_both_networks_train(tmp_path):
    common = ["train.ckpt_every=2", "train.ema_decay=0.5", "optim.grad_accum=2", "disc_optim.grad_accum=2",
              "disc_optim.warmup_steps=4", "train.log_every=1"]
    straight = tiny(tmp_path, *common, "train.max_steps=4", name="straight")
    train("melgan", straight)
    train("melgan", tiny(tmp_path, *common, "train.max_steps=2", name="resumed"))
    with pytest.warns(UserWarning, match="train.max_steps"):
        out = train("melgan", tiny(tmp_path, *common, "train.max_steps=4", name="resumed"))
    assert out["resumed_from_step"] == 2 and out["steps_this_session"] == 2
    for which in ("last", "ema"):
        a, b = load_from_run(tmp_path / "straight", which), load_from_run(tmp_path / "resumed", which)
        assert ckpt.state_dict_sha256(a) == ckpt.state_dict_sha256(b), which

    # both networks moved away from their initial weights
    init, last, ema = initial_model(straight), load_from_run(tmp_path / "straight"), \
        load_from_run(tmp_path / "straight", "ema")
    for part in ("generator", "discriminator"):
        assert ckpt.state_dict_sha256(getattr(init, part)) != ckpt.state_dict_sha256(getattr(last, part)), part
    # the EMA averages the generator only: its discriminator is the trained one, its generator is not
    assert ckpt.state_dict_sha256(ema.discriminator) == ckpt.state_dict_sha256(last.discriminator)
    assert ckpt.state_dict_sha256(ema.generator) != ckpt.state_dict_sha256(last.generator)

    # one optimizer, scheduler and scaler slot per group in the checkpoint; own schedules in the logs
    state = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path / "straight"))
    assert sorted(state["optimizers"]) == sorted(state["schedulers"]) == ["discriminator", "generator"]
    assert "optimizer" not in state
    logs = records(tmp_path / "straight")
    assert [r["train/lr_discriminator"] for r in logs] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # warmup 4
    assert [r["train/lr_generator"] for r in logs] == pytest.approx([1e-3] * 4)
    assert all({"train/loss_discriminator", "train/grad_norm_generator", "train/d_real"} <= set(r) for r in logs)
    assert [r["loss"] for r in logs] == pytest.approx([r["train/loss_generator"] for r in logs])


def test_discriminator_waits_for_disc_start_step(tmp_path):
    cfg = tiny(tmp_path, "gan.disc_start_step=2", "train.max_steps=3", "train.ckpt_every=2", "train.keep_last=5",
               "train.log_every=1")
    train("melgan", cfg)
    logs = records(tmp_path / "run")
    assert ["train/loss_discriminator" in r for r in logs] == [False, False, True]
    assert "train/g_adv" not in logs[0] and "train/g_adv" in logs[2]  # mel loss only during the warm-up
    init = initial_model(cfg)
    at_2 = get_family("melgan").build_model(cfg.model)
    ckpt.load_weights(at_2, ckpt.list_checkpoints(tmp_path / "run")[0] / ckpt.MODEL_FILE)
    assert ckpt.state_dict_sha256(at_2.discriminator) == ckpt.state_dict_sha256(init.discriminator)
    assert ckpt.state_dict_sha256(at_2.generator) != ckpt.state_dict_sha256(init.generator)
    last = load_from_run(tmp_path / "run")
    assert ckpt.state_dict_sha256(last.discriminator) != ckpt.state_dict_sha256(init.discriminator)
    with pytest.raises(ConfigError, match="needs gan.lambda_mel > 0"):
        tiny(tmp_path, "gan.disc_start_step=2", "gan.lambda_mel=0")


class PhaseProbe(MelGANFamily):
    """melgan that records what audio each phase saw."""

    name = "melgan_phase_probe"
    seen: list = []

    def loss_step(self, model, batch, config, phase="generator"):
        type(self).seen.append((phase, batch["audio"].clone()))
        return super().loss_step(model, batch, config, phase=phase)


def test_both_phases_see_the_same_random_crops(tmp_path):
    register_family(PhaseProbe)
    PhaseProbe.seen = []
    train("melgan_phase_probe", tiny(tmp_path, "train.max_steps=2"))
    phases = [p for p, _ in PhaseProbe.seen]
    assert phases == ["discriminator", "generator"] * 2
    crops = [a for _, a in PhaseProbe.seen]
    assert crops[0].shape == (2, 1, 2048)  # gan.segment_samples of the tiny config, cut from 1 s clips
    assert torch.equal(crops[0], crops[1]) and torch.equal(crops[2], crops[3])
    assert not torch.equal(crops[0], crops[2])


class SharedGroups(MelGANFamily):
    name = "melgan_shared_groups"

    def optimizer_groups(self, model, config):
        return [OptimizerGroup("all", model, config.disc_optim), OptimizerGroup("generator", model.generator, config.optim)]


def test_overlapping_optimizer_groups_are_refused(tmp_path):
    register_family(SharedGroups)
    with pytest.raises(TrainingError, match="a parameter is in optimizer groups 'all' and 'generator'"):
        train("melgan_shared_groups", tiny(tmp_path, "train.max_steps=1"))


def test_melgan_configs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"multiply to 32, but hop_length is 64"):
        tiny(tmp_path, "model.upsample_ratios=4,4,2")
    with pytest.raises(ConfigError, match=r"gan.segment_samples \(32000\) is longer than the clips"):
        tiny(tmp_path, "gan.segment_samples=32000")
    with pytest.raises(ConfigError, match="disc_optim.grad_accum"):
        tiny(tmp_path, "optim.grad_accum=2")
    family = get_family("melgan")
    for size in ("tiny", "course", "paper"):  # every packaged config loads and validates
        cfg = family.load_config(size)
        assert cfg.model.sample_rate == cfg.data.sample_rate and cfg.gan.segment_samples % cfg.model.hop_length == 0
    paper = family.load_config("paper")
    assert (paper.model.sample_rate, paper.model.hop_length, paper.model.n_mels) == (22_050, 256, 80)
    assert (paper.optim.lr, tuple(paper.optim.betas), paper.gan.lambda_fm, paper.gan.lambda_mel) == \
        (1e-4, (0.5, 0.9), 10.0, 0.0)
    assert (paper.disc_optim.lr, tuple(paper.disc_optim.betas), paper.gan.segment_samples) == (1e-4, (0.5, 0.9), 8192)
    course = family.load_config("course")
    assert course.model.mel_config() == MelConfig()  # the course's 16 kHz mel front end


def test_command_line_knows_the_course_config(capsys):
    assert main(["melgan", "--config", "course", "--print-config", "train.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "family: melgan" in out and "lambda_mel: 45.0" in out and "max_steps: 3" in out


@pytest.mark.slow
def test_a_short_gan_run_lowers_the_mel_distance(tmp_path):
    cfg = tiny(tmp_path, "data.source=generated:music", "train.max_steps=40", "data.train_size=16",
               "data.batch_size=4", "eval.at_end=true", "eval.batches=1", "data.eval_size=4")
    family = get_family("melgan")
    from course_lib.train.data import build_dataset, default_collate

    eval_ds = build_dataset(cfg.data, "valid", cfg.train.seed)
    batch = default_collate(eval_ds)([eval_ds[i] for i in range(4)])
    with torch.no_grad():
        before = family.evaluate(initial_model(cfg).eval(), [batch], cfg).metrics
    summary = train(family, cfg)
    after = summary["eval"]
    assert after["griffin_lim_mel_l1_db"] == pytest.approx(before["griffin_lim_mel_l1_db"])  # same clips
    assert after["mel_l1_db"] < 0.9 * before["mel_l1_db"], (before, after)
    wavs = sorted(p.name for p in (tmp_path / "run" / "samples" / "step_00000040").iterdir())
    assert wavs == ["0_griffin_lim.wav", "0_melgan.wav", "0_real.wav"]


@pytest.mark.slow
def test_torchrun_two_ranks_train_the_gan_to_identical_weights(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    run = tmp_path / "ddp"
    # the warm-up step leaves the discriminator unused, grad_accum=2 takes DDP's no_sync path
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "course_lib.train", "melgan", "--config", "tiny", f"train.run_dir={run}", *FAST, "train.num_threads=1",
           "train.max_steps=3", "gan.disc_start_step=1", "optim.grad_accum=2", "disc_optim.grad_accum=2"]
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["replicas_identical"]
    assert ckpt.state_dict_sha256(load_from_run(run)) == summary["replica_sha256"][0]
