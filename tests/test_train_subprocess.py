"""The engine as a real process: SIGKILL mid-run then resume (bitwise exact), and torchrun with 2 ranks.

These are the slow engine tests (a few Python start-ups each): about 15-25 s together on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from course_lib.train import checkpoint as ckpt
from course_lib.train import get_family, train

REPO = Path(__file__).resolve().parents[1]
COMMON = ["train.progress=false", "train.tensorboard=false", "model.channels=8", "data.batch_size=4",
          "train.num_threads=1", "eval.num_samples=1", "eval.batches=1"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "course_lib.train", "mel_autoencoder", "--config", "tiny", *args]


@pytest.mark.slow
def test_sigkill_then_resume_gives_bitwise_the_same_weights(tmp_path):
    # 10 clips / batch 4 = 2 batches per epoch, 2 micro-batches per step: checkpoints land mid-epoch and
    # steps span epochs; dropout and EMA make the result depend on the RNG and EMA state being restored.
    args = [*COMMON, "train.max_steps=18", "train.ckpt_every=6", "optim.grad_accum=2", "model.dropout=0.1",
            "train.ema_decay=0.9", "data.train_size=10", "eval.every=9", "train.log_every=1", "optim.warmup_steps=3"]
    killed_dir, ref_dir = tmp_path / "killed", tmp_path / "reference"
    proc = subprocess.Popen(_cli(f"train.run_dir={killed_dir}", *args, "train.sleep_per_step=0.25"), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the uninterrupted reference run, in this process, while the other one sleeps between steps
        cfg = get_family("mel_autoencoder").load_config("tiny", [f"train.run_dir={ref_dir}", *args])
        reference = train("mel_autoencoder", cfg)
        first = killed_dir / "checkpoints" / "step_00000006" / ckpt.CONFIG_FILE
        deadline = time.monotonic() + 90
        while not first.is_file():
            assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 90 s"
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = ckpt.latest_checkpoint(killed_dir)
    assert latest is not None and int(latest.name.split("_")[1]) < 18 and not (killed_dir / "summary.json").exists()

    done = subprocess.run(_cli(f"train.run_dir={killed_dir}", *args, "--resume"), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((killed_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == int(latest.name.split("_")[1]) and summary["steps"] == 18
    for name in (ckpt.MODEL_FILE, ckpt.EMA_FILE):
        a = load_file(ckpt.latest_checkpoint(killed_dir) / name)
        b = load_file(ckpt.latest_checkpoint(ref_dir) / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after kill + resume"
    # the logged losses read as one uninterrupted run, and match the reference step for step
    lines = [json.loads(x) for x in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in lines if r["kind"] == "train"]
    assert losses == [(r["step"], r["loss"]) for r in ref if r["kind"] == "train"]
    assert [s for s, _ in losses] == list(range(1, 19))
    assert reference["steps"] == 18


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_weights(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "course_lib.train", "mel_autoencoder", "--config", "tiny", f"train.run_dir={run}", *COMMON,
           "train.max_steps=12", "train.ckpt_every=6", "data.train_size=16", "eval.every=6", "train.ema_decay=0.5"]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 8 and summary["steps"] == 12
    hashes = summary["replica_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and summary["replicas_identical"]
    # the saved weights are those replicas' weights
    assert ckpt.state_dict_sha256(ckpt.load_from_run(run)) == hashes[0]
    # one process wrote the files: one log line per step, and 16 clips / (2 ranks x 4) = 2 steps per epoch
    train_lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_lines if r["kind"] == "train"] == [10, 12]
    assert summary["epochs"] == pytest.approx(6.0)
    assert (run / "samples" / "step_00000012" / "0_reconstruction.wav").is_file()
