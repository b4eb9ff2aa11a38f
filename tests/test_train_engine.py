"""The training engine in one process: a real tiny run, schedule/EMA/accumulation closed forms, exact
in-process resume, and the errors it must give (bad data, wrong rate, NaN loss, foreign checkpoints)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import Dataset

from course_lib.train import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    Trainer,
    TrainingError,
    get_family,
    load_from_run,
    register_family,
    train,
)
from course_lib.train import checkpoint as ckpt
from course_lib.train.__main__ import main
from course_lib.train.engine import LRSchedule, ema_update
from course_lib.train.families.mel_autoencoder import MelAutoencoderFamily

FAST = ["train.progress=false", "train.tensorboard=false", "model.channels=8", "data.batch_size=4",
        "data.train_size=12", "data.eval_size=4", "eval.every=0", "eval.at_end=false"]


def tiny(tmp_path, *overrides, name="run"):
    family = get_family("mel_autoencoder")
    return family.load_config("tiny", [f"train.run_dir={tmp_path / name}", *FAST, *overrides])


def metrics(run_dir, kind="train"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


class Tones(Dataset):
    """A stand-in dataset of sine tones (1, T), with a declared sample rate."""

    def __init__(self, n: int, sample_rate: int = 16_000, seconds: float = 1.0) -> None:
        self.n, self.sample_rate, self.length = n, sample_rate, int(seconds * sample_rate)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        t = torch.arange(self.length) / self.sample_rate
        audio = 0.5 * torch.sin(2 * math.pi * (220.0 + 40 * i) * t)
        return {"audio": audio[None].float(), "caption": f"tone {i}", "attributes": {}, "id": str(i)}


def test_tiny_run_learns_and_writes_everything(tmp_path):
    cfg = tiny(tmp_path, "train.max_steps=16", "train.ckpt_every=8", "eval.every=8", "eval.at_end=true",
               "train.tensorboard=true", "train.ema_decay=0.5", "train.log_every=1", "optim.warmup_steps=2")
    summary = train("mel_autoencoder", cfg)
    run = tmp_path / "run"
    assert summary["steps"] == 16 and summary["steps_this_session"] == 16 and summary["world_size"] == 1
    assert summary["steps_per_second"] > 0 and summary["precision"] == "fp32"
    assert json.loads((run / "summary.json").read_text())["steps"] == 16
    losses = [r["loss"] for r in metrics(run)]
    assert len(losses) == 16 and np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])  # it learns
    lrs = [r["lr"] for r in metrics(run)]
    assert lrs[0] == pytest.approx(cfg.optim.lr / 2)  # warmup: step 1 of 2 uses lr/2
    assert [r["step"] for r in metrics(run, "eval")] == [8, 16]
    wav, rate = sf.read(run / "samples" / "step_00000016" / "0_reconstruction.wav")
    assert rate == 16_000 and wav.shape == (16_000,) and np.abs(wav).max() > 0
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000008", "step_00000016"]
    assert ckpt.read_best(run)["metric"] == "loss"
    # the three ways back into a notebook
    last, ema, best = (load_from_run(run, w) for w in ("last", "ema", "best"))
    assert ckpt.state_dict_sha256(last) != ckpt.state_dict_sha256(ema)
    assert ckpt.state_dict_sha256(best) == ckpt.state_dict_sha256(ema)  # eval (and best) use the EMA weights
    assert summary["best"]["step"] in (8, 16)
    # running the finished run again trains nothing and keeps its summary
    assert train("mel_autoencoder", cfg)["steps_this_session"] == 16


def test_lr_schedule_closed_form():
    s = LRSchedule(warmup_steps=4, max_steps=14, schedule="cosine", min_ratio=0.1)
    assert [s(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0 and s(9) == pytest.approx(0.1 + 0.9 * 0.5) and s(14) == pytest.approx(0.1)
    assert s(100) == pytest.approx(0.1)
    assert LRSchedule(0, 10, "constant")(7) == 1.0


def test_ema_update_closed_form():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    old = [p.clone() for p in a.parameters()]
    ema_update(a, b, 0.9)
    for e, o, p in zip(a.parameters(), old, b.parameters()):
        torch.testing.assert_close(e, 0.9 * o + 0.1 * p)


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    common = ["train.max_steps=3", "train.log_every=1", "data.shuffle=false", "optim.grad_clip=0.05",
              "data.train_size=16"]
    big = train("mel_autoencoder", tiny(tmp_path, *common, "data.batch_size=8", name="big"))
    acc = train("mel_autoencoder", tiny(tmp_path, *common, "data.batch_size=4", "optim.grad_accum=2", name="acc"))
    assert big["global_batch_size"] == acc["global_batch_size"] == 8
    # the gradient norm (before clipping) is the same: micro-batch losses are averaged, not summed
    g_big = [r["grad_norm"] for r in metrics(tmp_path / "big")]
    g_acc = [r["grad_norm"] for r in metrics(tmp_path / "acc")]
    assert g_big == pytest.approx(g_acc, rel=1e-4)
    a, b = load_from_run(tmp_path / "big"), load_from_run(tmp_path / "acc")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_in_process_is_bitwise_exact(tmp_path):
    # dropout makes the loss depend on the torch RNG: only a restored RNG state gives the same weights
    common = ["model.dropout=0.2", "optim.schedule=constant", "train.ckpt_every=3", "train.ema_decay=0.8",
              "data.train_size=10", "optim.grad_accum=2"]
    train("mel_autoencoder", tiny(tmp_path, *common, "train.max_steps=8", name="straight"))
    train("mel_autoencoder", tiny(tmp_path, *common, "train.max_steps=5", name="resumed"))
    with pytest.warns(UserWarning, match="train.max_steps"):
        out = train("mel_autoencoder", tiny(tmp_path, *common, "train.max_steps=8", name="resumed"))
    assert out["resumed_from_step"] == 5 and out["steps_this_session"] == 3
    for which in ("last", "ema"):
        a = load_from_run(tmp_path / "straight", which)
        b = load_from_run(tmp_path / "resumed", which)
        assert ckpt.state_dict_sha256(a) == ckpt.state_dict_sha256(b), which


def test_empty_dataset_and_too_few_clips_are_refused(tmp_path):
    with pytest.raises(TrainingError, match="empty train split"):
        Trainer("mel_autoencoder", tiny(tmp_path), train_dataset=Tones(0)).fit()
    with pytest.raises(TrainingError, match="fewer than one batch of data.batch_size=4"):
        Trainer("mel_autoencoder", tiny(tmp_path), train_dataset=Tones(3)).fit()


def test_audio_at_the_wrong_sample_rate_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="delivers audio at 8000 Hz but data.sample_rate is 16000 Hz"):
        Trainer("mel_autoencoder", tiny(tmp_path), train_dataset=Tones(8, sample_rate=8000)).fit()
    with pytest.raises(ConfigError, match=r"model.sample_rate \(8000 Hz\) must equal data.sample_rate"):
        tiny(tmp_path, "model.sample_rate=8000")
    # a stand-in at the right rate trains
    out = Trainer("mel_autoencoder", tiny(tmp_path, "train.max_steps=2"), train_dataset=Tones(8)).fit()
    assert out["steps"] == 2


_NAN_AT_STEP = 7


class NanAtStep(MelAutoencoderFamily):
    """mel_autoencoder whose loss turns NaN at optimizer step 7; it records the step-5 checkpoint's bytes
    just before, so the test can check the NaN did not touch it."""

    name = "nan_test"
    calls = 0
    before: dict = {}

    def loss_step(self, model, batch, config):
        loss, logs = super().loss_step(model, batch, config)
        type(self).calls += 1
        if type(self).calls == _NAN_AT_STEP:
            folder = ckpt.latest_checkpoint(config.train.run_dir)
            type(self).before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
            return loss * float("nan"), logs
        return loss, logs


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    register_family(NanAtStep)
    cfg = tiny(tmp_path, "train.max_steps=10", "train.ckpt_every=5")
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 7") as err:
        train("nan_test", cfg)
    assert err.value.step == 7 and "step_00000005" in str(err.value) and "intact" in str(err.value)
    folder = ckpt.latest_checkpoint(tmp_path / "run")
    assert folder.name == "step_00000005"
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert NanAtStep.before and after == NanAtStep.before
    assert all(torch.isfinite(p).all() for p in load_from_run(tmp_path / "run").parameters())


def test_checkpoints_of_another_family_or_config_are_refused(tmp_path):
    train("mel_autoencoder", tiny(tmp_path, "train.max_steps=2"))
    register_family(NanAtStep)
    with pytest.raises(CheckpointError, match=f"run_dir {tmp_path / 'run'} holds a checkpoint of family "
                                              f"'mel_autoencoder', not 'nan_test'"):
        train("nan_test", tiny(tmp_path, "train.max_steps=4"))
    with pytest.raises(CheckpointError, match=r"incompatible config: model.channels \(8 -> 16\)"):
        train("mel_autoencoder", tiny(tmp_path, "train.max_steps=4", "model.channels=16"))
    with pytest.raises(CheckpointError, match="already holds checkpoints .* --resume"):
        train("mel_autoencoder", tiny(tmp_path, "train.max_steps=4"), resume="never")
    with pytest.raises(CheckpointError, match="holds no checkpoint to resume from"):
        train("mel_autoencoder", tiny(tmp_path, "train.max_steps=4", name="fresh"), resume="always")
    with pytest.raises(ConfigError, match="needs a MelAutoencoderRunConfig"):
        Trainer("mel_autoencoder", get_family("mel_autoencoder").config_class.__mro__[1]())


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA GPU"):
        train("mel_autoencoder", tiny(tmp_path, "train.precision=fp16"))


def test_command_line(tmp_path, capsys):
    assert main(["--list"]) == 0
    assert "mel_autoencoder" in capsys.readouterr().out
    assert main(["mel_autoencoder", "--config", "tiny", "optim.lr=fast"]) == 2
    assert capsys.readouterr().err.strip() == "error: optim.lr: expected float, got 'fast'"
    assert main(["mel_autoencoder", "model.chanels=3"]) == 2
    assert "unknown key model.chanels (did you mean model.channels?)" in capsys.readouterr().err
    assert main(["mel_autoencoder", "--print-config", "train.max_steps=3"]) == 0
    assert "max_steps: 3" in capsys.readouterr().out
    run = tmp_path / "cli"
    assert main(["mel_autoencoder", f"train.run_dir={run}", *FAST, "train.max_steps=2", "--no-resume"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert main(["mel_autoencoder", f"train.run_dir={run}", *FAST, "train.max_steps=2", "--no-resume"]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err


def test_files_at_another_rate_are_resampled_on_load(tmp_path):
    from course_lib.data.export import export_course_dataset

    corpus = export_course_dataset("sound_events", tmp_path / "corpus", sizes={"train": 4, "valid": 2},
                                   clip_seconds=1.0, sample_rate=22_050)
    cfg = tiny(tmp_path, f"data.source={corpus}", "train.max_steps=2", "eval.at_end=true", "eval.num_samples=1")
    assert train("mel_autoencoder", cfg)["steps"] == 2
    wav, rate = sf.read(tmp_path / "run" / "samples" / "step_00000002" / "0_input.wav")
    assert rate == 16_000 and wav.shape == (16_000,)  # 1 s stored at 22.05 kHz, trained on at 16 kHz
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="data.source .*empty.*, split 'train': no captioned data"):
        train("mel_autoencoder", tiny(tmp_path, f"data.source={tmp_path / 'empty'}", name="r2"))


def test_log_lines_go_to_stderr_in_a_terminal_and_stdout_in_a_notebook(monkeypatch):
    import sys
    import types

    from course_lib.train import engine

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert engine._log_stream() is sys.stderr  # the CLI's stdout is its JSON summary

    class ZMQInteractiveShell:  # the shell of a Jupyter kernel
        pass

    class TerminalInteractiveShell:  # plain ipython in a terminal
        pass

    for shell, stream in ((ZMQInteractiveShell(), sys.stdout), (TerminalInteractiveShell(), sys.stderr)):
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda s=shell: s))
        assert engine._log_stream() is stream  # a notebook shows stderr as a pink error box
